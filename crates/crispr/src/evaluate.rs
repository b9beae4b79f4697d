//! Evaluating a model on a task under a set of instructions: scoring mode (highest
//! log-probability candidate, optionally calibrated with CC or DC) or generation mode (greedy,
//! normalised exact match).

use std::collections::HashMap;

use crate::data::{match_generation, InstructionSet, Task};
use crate::error::{Error, Result};
use crate::loader::LoadedModel;
use crate::metrics::{
    argmax, calibrate, cc_content_free, instruction_metrics, mean_content_free, DomainWords, InstructionMetrics,
    Outcome,
};
use crate::rng::SplitMix64;
use crate::score::encode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Scoring,
    Generation,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Scoring => "scoring",
            Mode::Generation => "generation",
        }
    }
}

/// Zero-shot calibration baselines (scoring mode only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Calibration {
    /// Contextual calibration (Zhao et al. 2021): content-free input "N/A".
    Cc,
    /// Domain-context calibration (Fei et al. 2023): random in-domain words.
    Dc,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalOptions {
    pub mode: Mode,
    pub calibration: Option<Calibration>,
    /// Generation mode: tokens to generate at most.
    pub max_new_tokens: usize,
    /// Decoder-only models: score the plain prompt instead of the chat template.
    pub raw: bool,
    /// Seed of DC's random words and of bootstrap resampling.
    pub seed: u64,
    /// DC: content-free inputs averaged per example.
    pub dc_samples: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { mode: Mode::Scoring, calibration: None, max_new_tokens: 24, raw: false, seed: 0, dc_samples: 5 }
    }
}

/// Per instruction: its metrics and the outcome of every example.
pub type Evaluation = Vec<(InstructionMetrics, Vec<Outcome>)>;

/// The smallest top-two gap below which a bf16 choice is re-scored in f32 (log-probability units).
///
/// bf16 rounding moves a candidate's log-probability by up to a few tenths of a nat on SmolLM2
/// (measured: README, "Precision"), so no fixed margin fits every model; `crispr eval` widens
/// this floor to four times the largest difference it measures on a calibration sample (see
/// [`recheck`]).
pub const BF16_RECHECK_MARGIN: f64 = 0.1;

/// Examples of the first instruction re-scored in f32 to measure the bf16 error of a run.
pub const RECHECK_CALIBRATION: usize = 16;

/// The `(margin floor, calibration examples)` that [`recheck`] takes for a user's margin: a fixed
/// margin is used as given, uncalibrated; `None` (auto) calibrates above [`BF16_RECHECK_MARGIN`].
pub fn recheck_settings(fixed_margin: Option<f64>) -> (f64, usize) {
    match fixed_margin {
        Some(m) => (m, 0),
        None => (BF16_RECHECK_MARGIN, RECHECK_CALIBRATION),
    }
}

/// What [`recheck`] did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecheckReport {
    /// The top-two gap below which an example was re-scored (after calibration).
    pub margin: f64,
    /// Examples re-scored first, unconditionally, to measure the error.
    pub calibration_examples: usize,
    /// Largest |bf16 − f32| candidate score difference among them.
    pub calibration_max_difference: f64,
    /// (instruction, example) pairs scored.
    pub examples: usize,
    /// Pairs re-scored in f32 (calibration included).
    pub rescored: usize,
    /// Re-scored pairs whose choice changed.
    pub changed: usize,
    /// Largest |bf16 − f32| difference of a (calibrated) candidate score among all re-scored.
    pub max_score_difference: f64,
}

impl RecheckReport {
    /// Add another evaluation's re-check to this one (a run's units): counts add up; margins
    /// and differences keep the largest.
    pub fn absorb(&mut self, other: &RecheckReport) {
        self.margin = self.margin.max(other.margin);
        self.calibration_examples += other.calibration_examples;
        self.calibration_max_difference = self.calibration_max_difference.max(other.calibration_max_difference);
        self.examples += other.examples;
        self.rescored += other.rescored;
        self.changed += other.changed;
        self.max_score_difference = self.max_score_difference.max(other.max_score_difference);
    }
}

/// The gap between the best and second-best score (infinite with fewer than two).
pub fn top_two_gap(scores: &[f64]) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &s in scores {
        if s > a {
            b = a;
            a = s;
        } else if s > b {
            b = s;
        }
    }
    a - b
}

/// Make the choices of a bf16 scoring evaluation those of the f32 engine: every example whose
/// top-two gap is below the margin is scored again by `reference` (the same model, pruned the
/// same way, in f32), its scores and choice replaced, and the metrics recomputed.
///
/// The margin: a candidate score moves by at most `e` between bf16 and f32, so a gap moves by at
/// most `2e` and a choice can only flip below it. With `calibrate > 0`, the first `calibrate`
/// examples of the first instruction are re-scored first, whatever their gap, and the margin
/// becomes the larger of `margin` and 4 × the largest difference measured on them (2e with a
/// factor 2 for what the sample did not show). Generation-mode results are left as they are.
#[allow(clippy::too_many_arguments)]
pub fn recheck(
    result: &mut Evaluation,
    reference: &LoadedModel,
    task: &Task,
    set: &InstructionSet,
    indices: &[usize],
    opts: &EvalOptions,
    margin: f64,
    calibrate: usize,
) -> Result<RecheckReport> {
    let mut report = RecheckReport { margin, ..RecheckReport::default() };
    report.examples = result.iter().map(|(_, o)| o.len()).sum();
    if opts.mode != Mode::Scoring {
        return Ok(report);
    }
    let style = reference.prompt_style(opts.raw);
    let pool = (opts.calibration == Some(Calibration::Dc)).then(|| DomainWords::from_task(task, indices));
    for (n, (instruction, (metrics, outcomes))) in set.items.iter().zip(result.iter_mut()).enumerate() {
        let mut cf_cache = HashMap::new();
        let mut touched = false;
        let forced = if n == 0 { calibrate.min(outcomes.len()) } else { 0 };
        for (k, o) in outcomes.iter_mut().enumerate() {
            if k >= forced && top_two_gap(&o.scores) >= report.margin {
                continue;
            }
            let ex = &task.examples[o.example];
            let p = instruction.render(ex)?;
            let enc = encode(&reference.text, style, &p.text, &p.candidates)?;
            let raw = reference.model.score(&enc.prompt, &enc.candidates);
            let scores = calibrated(reference, style, instruction, task, ex, raw, opts, pool.as_ref(), &mut cf_cache)?;
            let diff = scores.iter().zip(&o.scores).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            report.max_score_difference = report.max_score_difference.max(diff);
            if k < forced {
                report.calibration_examples += 1;
                report.calibration_max_difference = report.calibration_max_difference.max(diff);
                if k + 1 == forced {
                    report.margin = report.margin.max(4.0 * report.calibration_max_difference);
                }
            }
            let choice = argmax(&scores);
            report.rescored += 1;
            report.changed += usize::from(choice != o.choice);
            o.choice = choice;
            o.scores = scores;
            touched = true;
        }
        if touched {
            *metrics = instruction_metrics(task, &instruction.id, outcomes);
        }
    }
    Ok(report)
}

type CfCache = HashMap<(String, Vec<String>), Vec<f64>>;

/// Content-free scores of `ex` rendered by `instruction`, memoised per instruction (they depend
/// only on the rendered prompt and candidates).
fn score_content_free(
    loaded: &LoadedModel,
    style: crate::score::PromptStyle,
    instruction: &crate::data::Instruction,
    ex: &crate::data::Example,
    cache: &mut CfCache,
) -> Result<Vec<f64>> {
    let p = instruction.render(ex)?;
    let key = (p.text.clone(), p.candidates.clone());
    if let Some(v) = cache.get(&key) {
        return Ok(v.clone());
    }
    let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
    let v = loaded.model.score(&enc.prompt, &enc.candidates);
    cache.insert(key, v.clone());
    Ok(v)
}

/// `lps` after the calibration `opts` asks for.
#[allow(clippy::too_many_arguments)]
fn calibrated(
    loaded: &LoadedModel,
    style: crate::score::PromptStyle,
    instruction: &crate::data::Instruction,
    task: &Task,
    ex: &crate::data::Example,
    lps: Vec<f64>,
    opts: &EvalOptions,
    pool: Option<&DomainWords>,
    cf_cache: &mut CfCache,
) -> Result<Vec<f64>> {
    Ok(match opts.calibration {
        None => lps,
        Some(Calibration::Cc) => {
            let cf = score_content_free(loaded, style, instruction, &cc_content_free(task, ex), cf_cache)?;
            calibrate(&lps, &cf)
        }
        Some(Calibration::Dc) => {
            // The same seeded draws for every example: for fixed-label tasks the content-free
            // prompts then repeat and are scored once.
            let mut rng = SplitMix64::new(opts.seed);
            let pool = pool.expect("built for DC");
            let samples = (0..opts.dc_samples)
                .map(|_| score_content_free(loaded, style, instruction, &pool.content_free(ex, &mut rng), cf_cache))
                .collect::<Result<Vec<_>>>()?;
            calibrate(&lps, &mean_content_free(&samples))
        }
    })
}

/// Evaluate `indices` of `task` under every instruction of `set`. `progress` is called once per
/// (instruction, example).
pub fn evaluate(
    loaded: &LoadedModel,
    task: &Task,
    set: &InstructionSet,
    indices: &[usize],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(),
) -> Result<Evaluation> {
    // An accuracy over nothing would print as 0.00 and look like a result.
    if indices.is_empty() {
        return Err(Error::format(
            &task.source,
            format!("{}: no instances to evaluate (empty split or limit 0)", task.name),
        ));
    }
    if set.items.is_empty() {
        return Err(Error::msg(format!("{}: no instructions to evaluate with", task.name)));
    }
    let style = loaded.prompt_style(opts.raw);
    let model = loaded.model.as_ref();
    let stop = loaded.stop_tokens();
    let mut out = Vec::with_capacity(set.items.len());
    // DC's word pool: the evaluated inputs' own words, built once.
    let pool = (opts.calibration == Some(Calibration::Dc)).then(|| DomainWords::from_task(task, indices));
    for instruction in &set.items {
        // Content-free scores depend only on the rendered content-free prompt and candidates;
        // for fixed-label tasks that is one computation per instruction.
        let mut cf_cache = CfCache::new();
        let mut outcomes = Vec::with_capacity(indices.len());
        match opts.mode {
            Mode::Scoring => {
                let prompts = indices
                    .iter()
                    .map(|&i| {
                        let p = instruction.render(&task.examples[i])?;
                        encode(&loaded.text, style, &p.text, &p.candidates)
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Sorted by tokens so that prompts sharing a prefix are neighbours (see
                // `score_many`); scored in chunks so that progress moves.
                let mut order: Vec<usize> = (0..prompts.len()).collect();
                order.sort_by(|&a, &b| prompts[a].prompt.cmp(&prompts[b].prompt));
                let mut all = vec![Vec::new(); prompts.len()];
                for chunk in order.chunks(16) {
                    let items: Vec<(&[u32], &[Vec<u32>])> = chunk
                        .iter()
                        .map(|&k| (prompts[k].prompt.as_slice(), prompts[k].candidates.as_slice()))
                        .collect();
                    for (&k, lps) in chunk.iter().zip(model.score_many(&items)) {
                        all[k] = lps;
                        progress();
                    }
                }
                for (&i, lps) in indices.iter().zip(all) {
                    let ex = &task.examples[i];
                    let lps =
                        calibrated(loaded, style, instruction, task, ex, lps, opts, pool.as_ref(), &mut cf_cache)?;
                    outcomes.push(Outcome { example: i, choice: argmax(&lps), scores: lps, generated: None });
                }
            }
            Mode::Generation => {
                for &i in indices {
                    let prompt = instruction.render(&task.examples[i])?;
                    let enc = encode(&loaded.text, style, &prompt.text, &[])?;
                    let ids = model.generate(&enc.prompt, opts.max_new_tokens, &stop);
                    let text = loaded.text.decode(&ids, true)?;
                    let choice = match_generation(&text, &prompt.candidates);
                    outcomes.push(Outcome { example: i, choice, scores: Vec::new(), generated: Some(text) });
                    progress();
                }
            }
        }
        out.push((instruction_metrics(task, &instruction.id, &outcomes), outcomes));
    }
    Ok(out)
}
