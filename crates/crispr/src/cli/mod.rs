//! Argument parsing and dispatch: one module per subcommand.

mod attribute;
mod common;
mod data;
mod eval;
mod info;
mod prune;
mod run;
mod score;
mod worker;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use crispr::precision::Precision;

#[derive(Parser)]
#[command(name = "crispr", version, about = "Find and remove bias neurons in instruction-following language models")]
struct Cli {
    /// Worker threads for matrix products (default: all cores; at most 1024).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Never download anything (datasets, models); fail with what to put where instead.
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, sizes, neuron-universe sizes and chat template of a model.
    Info(info::InfoArgs),
    /// Teacher-forced log-probabilities of candidate answers (JSONL in, JSONL out).
    Score(score::ScoreArgs),
    /// Greedy generation for one prompt.
    Generate(score::GenerateArgs),
    /// The whole job: attribute, choose n on dev, evaluate original / CRISPR / random on test, export, report.
    Run(run::RunArgs),
    /// What `run` would compute with the same arguments: units per stage, their cost timed on
    /// this model, worker-hours and wall time on `--workers 1,8,64` (= `run --dry-run`).
    Plan(run::RunArgs),
    /// Compute units of a run's stage (started by `run --executor local|slurm`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Attribute bias to neurons on a task (writes scores.safetensors and neurons.json).
    Attribute(attribute::AttributeArgs),
    /// Evaluate on a task under many instructions (writes metrics.json).
    Eval(eval::EvalArgs),
    /// Write a copy of the model with the top-N neurons of a scores file zeroed, in its own format.
    Prune(prune::PruneArgs),
    /// The named datasets: `data list` (cached or missing, size, license), `data fetch [NAME…]`.
    Data(data::DataArgs),
}

/// How a model is named on the command line.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Checkpoint directory, .gguf file, or Hub id org/name[@revision]. Default: SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<String>,
}

impl ModelArgs {
    /// Load in f32, after checking it fits in memory.
    pub fn load(&self) -> Result<crispr::loader::LoadedModel> {
        self.load_at(Precision::F32)
    }

    /// Load with weight matrices at `precision`, after checking it fits in memory.
    pub fn load_at(&self, precision: Precision) -> Result<crispr::loader::LoadedModel> {
        let path = self.path()?;
        crispr::loader::load_checked(&path, precision).with_context(|| "loading the model".to_string())
    }

    /// The model's local path (resolving and downloading a Hub id or the default model).
    pub fn path(&self) -> Result<PathBuf> {
        resolve_model(self.model.as_deref())
    }
}

/// [`crispr::resolve::resolve_model`], except that a missing path that can only be a local one
/// (its first folder exists here, or it names a .gguf/.safetensors file) is reported as a missing
/// file instead of being looked up on the Hub as `org/name`.
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    if let Some(a) = arg {
        let p = std::path::Path::new(a);
        if !p.exists() {
            let repo = a.split('@').next().unwrap_or(a);
            let org = repo.split('/').next().unwrap_or("");
            let why = if repo.contains('/') && !org.is_empty() && std::path::Path::new(org).is_dir() {
                Some(format!("{org}/ is a folder here, so this is a local path"))
            } else if [".gguf", ".ggf", ".safetensors", ".json"].iter().any(|x| repo.ends_with(x)) {
                Some("it names a model file".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                anyhow::bail!("{a}: no such file or directory ({why}, not a Hub id)");
            }
        }
    }
    Ok(crispr::resolve::resolve_model(arg)?)
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.offline {
        crispr::datasets::set_offline(true);
    }
    let threads =
        cli.threads.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build_global().context("starting the thread pool")?;
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Score(a) => score::run(a),
        Command::Generate(a) => score::run_generate(a),
        Command::Prune(a) => prune::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Run(a) => run::run(a),
        Command::Plan(a) => run::run(a.dry()),
        Command::Worker(a) => worker::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Data(a) => data::run(a),
    }
}
