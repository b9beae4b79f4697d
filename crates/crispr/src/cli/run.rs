use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::common::{self, progress};
use crispr::files::atomic_write;
use crispr::pipeline::{run_with, Progress, RunConfig};
use crispr::retention::RetentionConstraint;
use crispr::rundir::Inputs;

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
    /// `quick` (subsets; minutes on 2 cores for a 135M model), `paper` (the paper's protocol), or
    /// `retain` (the paper's attribution with skill-preserving selection and a retention-constrained
    /// search).
    #[arg(long, default_value = "quick")]
    preset: String,
    /// Never prune the top skill neurons of these tasks (gold-answer attribution on their dev split).
    #[arg(long, value_delimiter = ',')]
    protect: Vec<String>,
    /// Skill neurons protected per task.
    #[arg(long)]
    protect_top: Option<usize>,
    /// Leave out rows that write residual dimensions carrying massive activations.
    #[arg(long)]
    exclude_massive: bool,
    /// Rank neurons by scores divided by their module's root mean square.
    #[arg(long)]
    normalize_scores: bool,
    /// Choose n only among values where no retained task (nor BBQ's disambiguated accuracy) drops
    /// by more than this many points on dev.
    #[arg(long)]
    max_drop: Option<f64>,
    /// … and where the mean KL divergence on neutral prompts stays below this (nats).
    #[arg(long)]
    max_kl: Option<f64>,
    /// Run directory (created; an interrupted run in it is resumed).
    #[arg(long, default_value = "crispr-run")]
    out: PathBuf,
    /// Replay a run from its config.toml (overrides --model/--task/--retain/--preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where named datasets live (default: $CRISPR_DATA_DIR, else the cache, fetched on first use).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How the search visits n: `golden` (the paper's golden-section search) or `grid:K` (K values
    /// evaluated at once, then K around the best: fills a cluster).
    #[arg(long)]
    search: Option<crispr::pipeline::SearchMethod>,
    /// Evaluation units hold at most this many instances (default: a whole split per
    /// instruction). Part of the run's configuration: see "Running on a cluster" in the README.
    #[arg(long)]
    eval_chunk: Option<usize>,
    /// Attribution units hold at most this many instances (default: the whole sample).
    #[arg(long)]
    attribution_chunk: Option<usize>,
    /// Weight matrices in f32 (the default) or bf16 (half the memory; evaluation choices are
    /// re-checked in f32, see README, "Precision"). Part of the run's configuration.
    #[arg(long, value_enum)]
    precision: Option<crispr::precision::Precision>,
    /// bf16 runs: re-score in f32 every choice whose top-two gap is below this many nats (`auto`:
    /// measured per unit of work; `0`: no re-check, and no f32 copy of the model is loaded).
    #[arg(long)]
    recheck_margin: Option<super::common::Margin>,
    /// Print the units of work of each stage, their estimated cost and the wall time on 1, 8 and
    /// 64 workers, then stop (nothing is computed or written).
    #[arg(long)]
    dry_run: bool,
    /// `--dry-run` / `crispr plan`: the worker counts to estimate wall times for.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    workers: Vec<usize>,
    #[command(flatten)]
    exec: ExecArgs,
}

/// Where the units of work run. The results are the same bytes whichever is chosen.
#[derive(Args)]
pub struct ExecArgs {
    /// `local` (this machine: in this process, or `--jobs` worker processes) or `slurm` (one
    /// Slurm job array per batch of units, on a run directory every node can reach).
    #[arg(long, value_enum, default_value = "local")]
    executor: ExecutorKind,
    /// `--executor local`: worker processes (1: everything in this process).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Slurm partition of the arrays.
    #[arg(long)]
    partition: Option<String>,
    /// At most this many array tasks running at once.
    #[arg(long)]
    max_parallel: Option<usize>,
    /// Time limit per array task (`sbatch --time`, e.g. `2:00:00`).
    #[arg(long)]
    time: Option<String>,
    /// Memory per array task (`sbatch --mem`, e.g. `8G`).
    #[arg(long)]
    mem: Option<String>,
    /// CPUs per array task (each worker uses that many threads).
    #[arg(long, default_value_t = 1)]
    cpus_per_task: usize,
    /// Passed to sbatch as it is (repeatable), e.g. `--sbatch-arg=--account=lab`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// Re-runs of a failed unit before the run stops.
    #[arg(long, default_value_t = 2)]
    retries: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorKind {
    Local,
    Slurm,
}

impl ExecArgs {
    fn executor(&self) -> Result<Box<dyn crispr::executor::Executor>> {
        use crispr::executor::{InProcess, Local, Slurm, SlurmOptions};
        if self.jobs == 0 {
            anyhow::bail!("--jobs must be at least 1");
        }
        Ok(match self.executor {
            ExecutorKind::Local if self.jobs == 1 => Box::new(InProcess),
            ExecutorKind::Local => Box::new(Local::new(self.jobs, self.retries)?),
            ExecutorKind::Slurm => Box::new(Slurm::new(SlurmOptions {
                partition: self.partition.clone(),
                max_parallel: self.max_parallel,
                time: self.time.clone(),
                mem: self.mem.clone(),
                cpus_per_task: self.cpus_per_task,
                sbatch_args: self.sbatch_args.clone(),
                retries: self.retries,
                poll: std::time::Duration::from_secs(1),
            })?),
        })
    }
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

/// Selection and constraint flags on top of a preset or a replayed configuration.
fn apply_selection_flags(mut cfg: RunConfig, args: &RunArgs) -> Result<RunConfig> {
    let protect: Vec<String> = args.protect.iter().filter(|s| !s.is_empty()).cloned().collect();
    if !protect.is_empty() {
        cfg.selection.protect = protect;
        if cfg.selection.protect_top == 0 {
            cfg.selection.protect_top = 200;
            cfg.selection.protect_samples = 8;
            cfg.selection.protect_instructions = 2;
        }
    }
    if let Some(k) = args.protect_top {
        cfg.selection.protect_top = k;
    }
    if let Some(m) = args.search {
        cfg.search.method = m;
    }
    if let Some(c) = args.eval_chunk {
        cfg.chunks.eval = c;
    }
    if let Some(c) = args.attribution_chunk {
        cfg.chunks.attribution = c;
    }
    if let Some(p) = args.precision {
        cfg.precision = p;
    }
    if let Some(m) = args.recheck_margin {
        cfg.recheck_margin = m.fixed();
    }
    cfg.selection.exclude_massive |= args.exclude_massive;
    cfg.selection.normalize |= args.normalize_scores;
    for (name, v) in [("--max-drop", args.max_drop), ("--max-kl", args.max_kl)] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                anyhow::bail!("{name} must be a non-negative number, got {v}");
            }
        }
    }
    if args.max_drop.is_some() || args.max_kl.is_some() {
        let c = cfg.search.constraint.get_or_insert(RetentionConstraint {
            max_drop: None,
            max_kl: None,
            retain_dev_limit: 30,
            retain_instructions: 2,
            kl_prompts: 16,
        });
        if args.max_drop.is_some() {
            c.max_drop = args.max_drop;
        }
        if args.max_kl.is_some() {
            c.max_kl = args.max_kl;
        }
    }
    Ok(cfg)
}

impl RunArgs {
    /// The same arguments as a dry run (`crispr plan`).
    pub fn dry(mut self) -> RunArgs {
        self.dry_run = true;
        self
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            let mut cfg = toml::from_str::<RunConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid run configuration: {e}", path.display()))?;
            cfg.validate().map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))?;
            // Relative paths in a configuration file are relative to the file's folder.
            let base = path.parent().unwrap_or(Path::new(""));
            map_local_paths(&mut cfg, |p| (!p.is_absolute()).then(|| base.join(p)).filter(|p| p.exists()));
            cfg
        }
        None => RunConfig::preset(
            &args.preset,
            args.model.as_deref().unwrap_or("default"),
            &args.task,
            args.retain.iter().filter(|s| !s.is_empty()).cloned().collect(),
        )?,
    };
    let mut cfg = apply_selection_flags(cfg, &args)?;
    // config.toml records local paths absolute, so `run --config` works from any folder.
    map_local_paths(&mut cfg, |p| p.exists().then(|| std::path::absolute(p).ok()).flatten());
    cfg.validate().map_err(|m| anyhow::anyhow!("run settings: {m}"))?;
    // Every task the run reads (target, retained, protected) must be in one data folder.
    let specs: Vec<&str> =
        std::iter::once(&cfg.task).chain(&cfg.retain).chain(&cfg.selection.protect).map(String::as_str).collect();
    let data_dir = crispr::datasets::data_dir_for(args.data_dir.as_deref(), &specs)?;
    // Before any computation: --out must be a new, empty or crispr run directory, writable and
    // not in use by another crispr process (the lock is held until this function returns). A dry
    // run writes nothing.
    let _lock = if args.dry_run { None } else { Some(crispr::rundir::open(&args.out)?) };
    // Fail on a bad task name before loading the model.
    let mut tasks = std::collections::BTreeMap::new();
    for t in std::iter::once(&cfg.task).chain(&cfg.retain).chain(&cfg.selection.protect) {
        let task = crispr::data::load_task(t, &data_dir).with_context(|| format!("task {t}"))?;
        tasks.insert(t.clone(), task.sha256);
    }
    let model_arg = (cfg.model != "default").then_some(cfg.model.as_str());
    let path = super::resolve_model(model_arg)?;

    if args.dry_run {
        return plan(&cfg, &path, &data_dir, &args.workers);
    }
    // A resumed run must see the inputs its cached results were computed from.
    crispr::rundir::check_inputs(&args.out, &Inputs { model: common::model_checksum(&path), tasks })?;
    let mut loaded = crispr::loader::load_checked(&path, cfg.precision).context("loading the model")?;
    let started = std::time::Instant::now();
    let mut bars = Bars { bar: None };
    let mut executor = args.exec.executor()?;
    crispr::executor::catch_interrupts();
    let result = run_with(&cfg, &mut loaded, &args.out, data_dir, &mut bars, executor.as_mut())?;
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
    if let Some(v) = &result.verdict {
        eprintln!("crispr: {}", v.headline);
    }
    eprintln!("crispr: done in {:.0} s", started.elapsed().as_secs_f64());
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}

/// `--dry-run`: the plan of the run, with per-step costs timed on its model.
fn plan(cfg: &RunConfig, model: &Path, data_dir: &Path, workers: &[usize]) -> Result<()> {
    if workers.is_empty() || workers.contains(&0) {
        anyhow::bail!("--workers takes positive worker counts, e.g. 1,8,64");
    }
    let t = std::time::Instant::now();
    let loaded = crispr::loader::load_checked(model, cfg.precision).context("loading the model")?;
    let startup = t.elapsed().as_secs_f64();
    eprintln!("crispr: timing a few steps of {} on this machine…", crispr::pipeline::display_model_name(&cfg.model));
    let (sizes, costs) = crispr::plan::measure(cfg, &loaded, data_dir, startup)?;
    let stages = crispr::plan::plan(cfg, &sizes, &costs);
    println!(
        "plan: {} on {} (retained: {}), preset {}, search {}",
        crispr::pipeline::display_model_name(&cfg.model),
        cfg.task,
        cfg.retain.join(", "),
        cfg.preset,
        cfg.search.method
    );
    print!("{}", crispr::plan::render(&stages, &costs, workers));
    Ok(())
}

/// Apply `f` to every local path in the configuration (the model unless it is `default` or a Hub
/// id, `jsonl:<path>` tasks and BBQ-format `.jsonl` tasks); `f` returns the replacement, if any.
fn map_local_paths(cfg: &mut RunConfig, f: impl Fn(&Path) -> Option<PathBuf>) {
    let apply = |s: &str| f(Path::new(s)).map(|p| p.to_string_lossy().into_owned());
    if cfg.model != "default" {
        if let Some(p) = apply(&cfg.model) {
            cfg.model = p;
        }
    }
    for t in std::iter::once(&mut cfg.task).chain(cfg.retain.iter_mut()).chain(cfg.selection.protect.iter_mut()) {
        if let Some(rest) = t.strip_prefix("jsonl:") {
            if let Some(p) = apply(rest) {
                *t = format!("jsonl:{p}");
            }
        } else if t.ends_with(".jsonl") {
            if let Some(p) = apply(t) {
                *t = p;
            }
        }
    }
}
