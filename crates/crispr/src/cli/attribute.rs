use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::common::{progress, LoadedTask, PrecisionArgs, Samples, TaskArgs};
use super::ModelArgs;
use crispr::attribution::{
    attribute_sum, combine, instruction_score, Disentangle, Instance, Objective, Scores, Settings, TokenAgg,
};
use crispr::data::{split_indices, Split};
use crispr::files::write_scores;
use crispr::loader::LoadedModel;
use crispr::model::Universe;
use crispr::precision::{score_agreement, Precision};
use crispr::provenance::attribution_metadata;
use crispr::score::encode;
use crispr::tensor_bf16;

#[derive(Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Output directory (scores.safetensors, neurons.json).
    #[arg(long)]
    out: PathBuf,
    /// Instances drawn from the dev split per seed, or `all` (every instance, in file order).
    #[arg(long, default_value = "20")]
    samples: Samples,
    /// Seeds of the attribution sample; several seeds are averaged.
    #[arg(long, value_delimiter = ',', default_value = "2026")]
    seed: Vec<u64>,
    #[arg(long, value_enum, default_value = "linear")]
    universe: UniverseArg,
    #[arg(long, value_enum, default_value = "prob")]
    objective: ObjectiveArg,
    #[arg(long, value_enum, default_value = "max")]
    token_agg: TokenAggArg,
    #[arg(long, value_enum, default_value = "per-instance")]
    disentangle: DisentangleArg,
    /// Weight of the gold answer's attribution in skill disentanglement.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// Do not weight instances by their confusion score α.
    #[arg(long)]
    no_alpha: bool,
    /// Reproduce another implementation's computation: `biasneuron` (the authors' re-release).
    #[arg(long)]
    compat: Option<String>,
    /// Neurons listed in neurons.json (the scores file always holds all of them).
    #[arg(long, default_value_t = 1000)]
    keep: usize,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// With --precision bf16: attribute again in f32 and record the agreement of the two
    /// (top-100 overlap, Spearman over every neuron) in neurons.json. Doubles the work.
    #[arg(long)]
    check_f32: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UniverseArg {
    Linear,
    Ffn,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectiveArg {
    Prob,
    Logprob,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum TokenAggArg {
    Max,
    Mean,
}
#[derive(Clone, Copy, clap::ValueEnum)]
enum DisentangleArg {
    PerInstance,
    PerToken,
    Off,
}

impl AttributeArgs {
    fn settings(&self) -> Result<Settings> {
        if !self.lambda.is_finite() {
            bail!("--lambda {} is not a finite number (every score would be NaN)", self.lambda);
        }
        let universe = match self.universe {
            UniverseArg::Linear => Universe::Linear,
            UniverseArg::Ffn => Universe::Ffn,
        };
        match self.compat.as_deref() {
            Some("biasneuron") => return Ok(Settings::biasneuron(universe)),
            Some(other) => bail!("unknown --compat {other:?} (known: biasneuron)"),
            None => {}
        }
        Ok(Settings {
            universe,
            objective: match self.objective {
                ObjectiveArg::Prob => Objective::Prob,
                ObjectiveArg::Logprob => Objective::Logprob,
            },
            token_agg: match self.token_agg {
                TokenAggArg::Max => TokenAgg::Max,
                TokenAggArg::Mean => TokenAgg::Mean,
            },
            disentangle: match self.disentangle {
                DisentangleArg::PerInstance => Disentangle::PerInstance,
                DisentangleArg::PerToken => Disentangle::PerToken,
                DisentangleArg::Off => Disentangle::Off,
            },
            lambda: self.lambda,
            alpha: !self.no_alpha,
            compat: None,
        })
    }
}

pub fn run(args: AttributeArgs) -> Result<()> {
    let settings = args.settings()?;
    super::common::check_out_dir(&args.out)?;
    let lt = args.task.load()?;
    let precision = args.precision.precision;
    if args.check_f32 && precision != Precision::Bf16 {
        bail!("--check-f32 compares a --precision bf16 attribution with f32");
    }
    let loaded = args.model.load_at(precision)?;
    let sample_sets: Vec<(u64, Vec<usize>)> = match args.samples {
        Samples::All => vec![(0, (0..lt.task.examples.len()).collect())],
        Samples::Drawn(0) => bail!("--samples 0 attributes nothing; give a positive number or `all`"),
        Samples::Drawn(n) => {
            let dev = split_indices(&lt.task, Split::Dev, args.task.split_seed, crispr::data::split::DEV_FRACTION);
            if n > dev.len() {
                bail!("--samples {n} exceeds the {} dev instances of {}", dev.len(), lt.task.name);
            }
            args.seed.iter().map(|&s| (s, crispr::data::split::sample_indices(&dev, n, s))).collect()
        }
    };
    let total: usize = sample_sets.iter().map(|s| s.1.len()).sum::<usize>() * lt.instructions.items.len();
    let bar = progress(total as u64, "attribute");
    let started = std::time::Instant::now();
    let scores = attribute_all(&loaded, &lt, &sample_sets, &settings, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let check = if args.check_f32 {
        let reference = args.model.load_at(Precision::F32).context("loading the f32 model for --check-f32")?;
        let bar = progress(total as u64, "attribute f32");
        let f32_started = std::time::Instant::now();
        let want = attribute_all(&reference, &lt, &sample_sets, &settings, &mut || bar.inc(1))?;
        bar.finish_and_clear();
        let flat = |s: &Scores| s.per_site.concat();
        let a = score_agreement(&flat(&scores), &flat(&want), 100);
        eprintln!("crispr: bf16 vs f32 attribution: top-100 overlap {}, Spearman {:.5}", a.top_overlap, a.spearman);
        Some(json!({"against": "f32", "agreement": a, "f32_seconds": f32_started.elapsed().as_secs_f64()}))
    } else {
        None
    };
    let mut meta =
        attribution_metadata(&loaded, &lt.task, &lt.instructions, &settings, args.task.split_seed, &sample_sets);
    if let Some(m) = meta.as_object_mut() {
        m.insert("seconds".into(), json!(seconds));
        m.insert("precision".into(), json!(precision));
        if precision == Precision::Bf16 {
            m.insert("bf16_kernel".into(), json!(tensor_bf16::best_kernel().name()));
        }
        m.insert("precision_check".into(), json!(check));
    }
    write_scores(&args.out, loaded.model.sites(), &scores, meta, args.keep)?;
    eprintln!(
        "crispr: attributed {} neurons over {total} (instance, instruction) pairs in {:.1} s → {}",
        scores.len(),
        seconds,
        args.out.display()
    );
    Ok(())
}

/// Scores of every sample set (seed) and instruction, combined as `crispr run` combines them.
fn attribute_all(
    loaded: &LoadedModel,
    lt: &LoadedTask,
    sample_sets: &[(u64, Vec<usize>)],
    settings: &Settings,
    tick: &mut dyn FnMut(),
) -> Result<Scores> {
    let style = loaded.prompt_style(false);
    let mut per_seed = Vec::new();
    for (_, indices) in sample_sets {
        let mut per_instruction = Vec::new();
        for ins in &lt.instructions.items {
            let instances = indices
                .iter()
                .map(|&i| {
                    let p = ins.render(&lt.task.examples[i])?;
                    let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
                    Ok(Instance { prompt: enc.prompt, candidates: enc.candidates, gold: p.label })
                })
                .collect::<crispr::Result<Vec<_>>>()
                .with_context(|| format!("preparing instruction {}", ins.id))?;
            let sum = attribute_sum(loaded.model.as_ref(), &instances, settings, &mut |_| tick());
            per_instruction.push(instruction_score([sum], instances.len()).context("no instances")?);
        }
        per_seed.push(per_instruction);
    }
    combine(per_seed).context("no samples or instructions")
}
