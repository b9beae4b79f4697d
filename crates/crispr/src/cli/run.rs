use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::common::{self, progress};
use crispr::files::atomic_write;
use crispr::pipeline::{run as run_pipeline, Progress, RunConfig};
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
    // not in use by another crispr process (the lock is held until this function returns).
    let _lock = crispr::rundir::open(&args.out)?;
    // Fail on a bad task name before loading the model.
    let mut tasks = std::collections::BTreeMap::new();
    for t in std::iter::once(&cfg.task).chain(&cfg.retain).chain(&cfg.selection.protect) {
        let task = crispr::data::load_task(t, &data_dir).with_context(|| format!("task {t}"))?;
        tasks.insert(t.clone(), task.sha256);
    }
    let model_arg = (cfg.model != "default").then_some(cfg.model.as_str());
    let path = super::resolve_model(model_arg)?;
    // A resumed run must see the inputs its cached results were computed from.
    crispr::rundir::check_inputs(&args.out, &Inputs { model: common::model_checksum(&path), tasks })?;
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
    if let Some(v) = &result.verdict {
        eprintln!("crispr: {}", v.headline);
    }
    eprintln!("crispr: done in {:.0} s", started.elapsed().as_secs_f64());
    println!("report: {}", args.out.join("report.html").display());
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
