use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::common::Margin;
use super::common::{model_checksum, progress, PrecisionArgs, TaskArgs};
use super::ModelArgs;
use crispr::data::{split_indices, InstructionSet, Split, Task};
use crispr::evaluate::{
    evaluate, recheck, recheck_settings, top_two_gap, Calibration, EvalOptions, Evaluation, Mode, RecheckReport,
};
use crispr::files::{atomic_write, read_scores, top_neurons};
use crispr::metrics::{metrics_json, summarize};
use crispr::precision::Precision;
use crispr::prune::{prune, random_neurons};
use crispr::tensor_bf16;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Output directory (metrics.json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "test")]
    split: Split,
    #[arg(long, value_enum, default_value = "scoring")]
    mode: Mode,
    /// Evaluate at most this many instances of the split (a seeded subset, kept in file order).
    #[arg(long)]
    limit: Option<usize>,
    /// Prune the top --top neurons of this scores directory before evaluating.
    #[arg(long, requires = "top")]
    scores: Option<PathBuf>,
    #[arg(long, requires = "scores")]
    top: Option<usize>,
    /// Prune this many random neurons (of the universe in --universe) before evaluating.
    #[arg(long, conflicts_with = "scores")]
    random: Option<usize>,
    /// Seed of --random, DC's words and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Universe --random draws from.
    #[arg(long, default_value = "linear")]
    universe: String,
    #[arg(long, value_enum)]
    calibrate: Option<Calibration>,
    /// Decoder-only models: score the plain prompt instead of the chat template.
    #[arg(long)]
    raw: bool,
    /// Generation mode: maximum new tokens.
    #[arg(long, default_value_t = 24)]
    max_new_tokens: usize,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// bf16 scoring: examples whose two best candidates are closer than this many nats are
    /// re-scored in f32, so that every choice is the f32 engine's. `auto`: measured per run (at
    /// least 0.1, and 4 × the largest bf16 error on 16 calibration examples); `0`: no re-check
    /// (and no f32 model loaded).
    #[arg(long, default_value = "auto")]
    recheck_margin: Margin,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.calibrate.is_some() && args.mode == Mode::Generation {
        bail!("--calibrate applies to scoring mode only");
    }
    if args.limit == Some(0) {
        bail!("--limit 0 selects no instances; give a positive number or leave it out for the whole split");
    }
    super::common::check_out_dir(&args.out)?;
    let lt = args.task.load()?;
    let precision = args.precision.precision;
    let mut loaded = args.model.load_at(precision)?;
    let mut indices = split_indices(&lt.task, args.split, args.task.split_seed, 0.1);
    if let Some(n) = args.limit {
        if n < indices.len() {
            indices = crispr::data::split::sample_indices(&indices, n, args.seed);
            indices.sort_unstable();
        }
    }
    let mut pruned = Vec::new();
    let pruning = if let (Some(dir), Some(top)) = (&args.scores, args.top) {
        let scores = read_scores(dir, loaded.model.sites())?;
        if top > scores.len() {
            bail!(
                "--top {top} exceeds the {} neurons of the {} universe in {}",
                scores.len(),
                scores.universe.name(),
                dir.display()
            );
        }
        let neurons = top_neurons(&scores, top);
        let _ = prune(loaded.model.as_mut(), &neurons);
        pruned = neurons;
        json!({"kind": "scores", "scores": dir.display().to_string(), "top": top, "universe": scores.universe.name()})
    } else if let Some(n) = args.random {
        let universe = match args.universe.as_str() {
            "linear" => crispr::model::Universe::Linear,
            "ffn" => crispr::model::Universe::Ffn,
            other => bail!("unknown --universe {other:?} (linear or ffn)"),
        };
        let size: usize = loaded.model.sites().iter().filter(|s| s.universe == universe).map(|s| s.width).sum();
        if n > size {
            bail!("--random {n} exceeds the {size} neurons of the {} universe", universe.name());
        }
        let neurons = random_neurons(loaded.model.sites(), universe, n, args.seed);
        let _ = prune(loaded.model.as_mut(), &neurons);
        pruned = neurons;
        json!({"kind": "random", "n": n, "seed": args.seed, "universe": universe.name()})
    } else {
        json!(null)
    };
    let opts = EvalOptions {
        mode: args.mode,
        calibration: args.calibrate,
        max_new_tokens: args.max_new_tokens,
        raw: args.raw,
        seed: args.seed,
        ..EvalOptions::default()
    };
    let bar = progress((indices.len() * lt.instructions.items.len()) as u64, "eval");
    let started = std::time::Instant::now();
    let mut result = evaluate(&loaded, &lt.task, &lt.instructions, &indices, &opts, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    let recheck = if precision == Precision::Bf16 && args.mode == Mode::Scoring {
        Some(recheck_in_f32(&args, &mut result, &lt.task, &lt.instructions, &indices, &opts, &pruned)?)
    } else {
        None
    };
    let summary = summarize(&lt.task, &result, args.seed);
    let per: Vec<_> = result.iter().map(|(m, _)| m.clone()).collect();
    let mut doc = metrics_json(&lt.task, args.mode.as_str(), args.split.as_str(), &per, &summary);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "model".into(),
            json!({"path": loaded.format.path().display().to_string(), "sha256": model_checksum(loaded.format.path())}),
        );
        obj.insert("pruning".into(), pruning);
        obj.insert("calibration".into(), json!(args.calibrate));
        obj.insert("instructions".into(), json!(lt.instructions.name));
        obj.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
        obj.insert("precision".into(), json!(precision));
        if precision == Precision::Bf16 {
            obj.insert("bf16_kernel".into(), json!(tensor_bf16::best_kernel().name()));
        }
        if let Some(r) = &recheck {
            obj.insert("recheck".into(), json!(r));
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    atomic_write(&args.out.join("metrics.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
    atomic_write(&args.out.join("predictions.jsonl"), predictions(&lt.task, &lt.instructions, &result)?.as_bytes())?;
    let acc = doc["mean"]["acc"].as_f64().unwrap_or(f64::NAN);
    let std = doc["std"]["acc"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "crispr: {} {} ({} instances × {} instructions): accuracy {acc:.2} ± {std:.2} in {:.1} s → {}",
        lt.task.name,
        args.split.as_str(),
        indices.len(),
        lt.instructions.items.len(),
        started.elapsed().as_secs_f64(),
        args.out.join("metrics.json").display()
    );
    Ok(())
}

/// Re-score, in f32, the bf16 choices closer than the margin (see `evaluate::recheck`): the f32
/// model is loaded, and pruned like the bf16 one, only if some choice needs it.
#[allow(clippy::too_many_arguments)]
fn recheck_in_f32(
    args: &EvalArgs,
    result: &mut Evaluation,
    task: &Task,
    set: &InstructionSet,
    indices: &[usize],
    opts: &EvalOptions,
    pruned: &[crispr::prune::Neuron],
) -> Result<RecheckReport> {
    let (margin, calibrate) = recheck_settings(args.recheck_margin.fixed());
    let near = result.iter().flat_map(|(_, o)| o).filter(|o| top_two_gap(&o.scores) < margin).count();
    if near == 0 && calibrate == 0 {
        let examples = result.iter().map(|(_, o)| o.len()).sum();
        return Ok(RecheckReport { margin, examples, ..RecheckReport::default() });
    }
    let mut reference = args.model.load_at(Precision::F32).context("loading the f32 model for the re-check")?;
    let _ = prune(reference.model.as_mut(), pruned);
    let report = recheck(result, &reference, task, set, indices, opts, margin, calibrate)?;
    eprintln!(
        "crispr: re-scored {} of {} bf16 choices in f32 (margin {:.3}; {} changed)",
        report.rescored, report.examples, report.margin, report.changed
    );
    Ok(report)
}

/// One JSON line per (instruction, example): the candidates, the gold answer, the choice, and the
/// candidate scores (scoring mode) or the generated text (generation mode) — for error analysis
/// and for comparing choices with other evaluators instance by instance.
fn predictions(task: &Task, set: &InstructionSet, result: &Evaluation) -> Result<String> {
    let mut out = String::new();
    for (instruction, (_, outcomes)) in set.items.iter().zip(result) {
        for o in outcomes {
            let ex = &task.examples[o.example];
            let mut line = json!({
                "instruction": instruction.id,
                "index": ex.index,
                "id": ex.id,
                "candidates": instruction.render(ex)?.candidates,
                "gold": ex.label,
                "choice": o.choice,
            });
            if !o.scores.is_empty() {
                line["scores"] = json!(o.scores);
            }
            if let Some(text) = &o.generated {
                line["generated"] = json!(text);
            }
            out.push_str(&serde_json::to_string(&line)?);
            out.push('\n');
        }
    }
    Ok(out)
}
