use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{self, progress};
use crispr::neurons::atomic_write;
use crispr::pipeline::{run as run_pipeline, Progress, RunConfig};

#[derive(Args)]
pub struct RunArgs {
    /// Checkpoint directory, .gguf file, or Hub id. Default: SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<String>,
    /// The task whose bias neurons are found and removed.
    #[arg(long, default_value = "bbq:Age")]
    task: String,
    /// Tasks evaluated before and after pruning to check that other skills stay.
    #[arg(long, value_delimiter = ',', default_value = "mrpc,rte,qnli,sst2,boolq")]
    retain: Vec<String>,
    /// `quick` (subsets; minutes on 2 cores for a 135M model) or `paper` (the paper's protocol).
    #[arg(long, default_value = "quick")]
    preset: String,
    /// Run directory (created; an interrupted run in it is resumed).
    #[arg(long, default_value = "crispr-run")]
    out: PathBuf,
    /// Replay a run from its config.toml (overrides --model/--task/--retain/--preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where named datasets live (default: $CRISPR_DATA_DIR, the cache, or a shared/data folder above).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct Bars {
    bar: Option<common::Progress>,
}

impl Progress for Bars {
    fn stage(&mut self, name: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.bar = Some(progress(total, name));
    }
    fn tick(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("crispr: {msg}")),
            None => eprintln!("crispr: {msg}"),
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            toml::from_str::<RunConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid run configuration: {e}", path.display()))?
        }
        None => RunConfig::preset(
            &args.preset,
            args.model.as_deref().unwrap_or("default"),
            &args.task,
            args.retain.iter().filter(|s| !s.is_empty()).cloned().collect(),
        )?,
    };
    let data_dir = crispr::data::resolve_data_dir(args.data_dir.as_deref())?;
    // Fail on a bad task name before loading the model.
    for t in std::iter::once(&cfg.task).chain(&cfg.retain) {
        crispr::data::load_task(t, &data_dir).with_context(|| format!("task {t}"))?;
    }
    let model_arg = (cfg.model != "default").then_some(cfg.model.as_str());
    let path = crispr::resolve::resolve_model(model_arg)?;
    let mut loaded =
        crispr::loader::load_checked(&path, crispr::precision::Precision::F32).context("loading the model")?;
    let started = std::time::Instant::now();
    let mut bars = Bars { bar: None };
    let result = run_pipeline(&cfg, &mut loaded, &args.out, data_dir, &mut bars)?;
    if let Some(b) = bars.bar.take() {
        b.finish_and_clear();
    }
    let metrics = serde_json::to_string_pretty(&result)?;
    atomic_write(&args.out.join("metrics.json"), metrics.as_bytes())?;
    atomic_write(&args.out.join("report.md"), crispr::report::markdown(&result).as_bytes())?;
    atomic_write(&args.out.join("report.html"), crispr::report::html(&result).as_bytes())?;
    if let Some(t) = result.tasks.get(&cfg.task) {
        let g = |d: &serde_json::Value| d["mean"]["acc"].as_f64().unwrap_or(f64::NAN);
        let rnd: Vec<f64> = t.random.iter().map(g).collect();
        eprintln!(
            "crispr: {}: accuracy {:.1} → {:.1} with {} neurons pruned (random: {:.1})",
            cfg.task,
            g(&t.original),
            g(&t.crispr),
            result.n_selected,
            rnd.iter().sum::<f64>() / rnd.len().max(1) as f64
        );
    }
    eprintln!("crispr: done in {:.0} s", started.elapsed().as_secs_f64());
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
