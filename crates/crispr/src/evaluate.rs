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
        let mut cf_cache: HashMap<(String, Vec<String>), Vec<f64>> = HashMap::new();
        let mut score_cf = |ex: &crate::data::Example| -> Result<Vec<f64>> {
            let p = instruction.render(ex)?;
            let key = (p.text.clone(), p.candidates.clone());
            if let Some(v) = cf_cache.get(&key) {
                return Ok(v.clone());
            }
            let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
            let v = model.score(&enc.prompt, &enc.candidates);
            cf_cache.insert(key, v.clone());
            Ok(v)
        };
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
                for (&i, mut lps) in indices.iter().zip(all) {
                    let ex = &task.examples[i];
                    match opts.calibration {
                        None => {}
                        Some(Calibration::Cc) => {
                            let cf = score_cf(&cc_content_free(task, ex))?;
                            lps = calibrate(&lps, &cf);
                        }
                        Some(Calibration::Dc) => {
                            // The same seeded draws for every example: for fixed-label tasks the
                            // content-free prompts then repeat and are scored once.
                            let mut rng = SplitMix64::new(opts.seed);
                            let pool = pool.as_ref().expect("built for DC");
                            let samples = (0..opts.dc_samples)
                                .map(|_| score_cf(&pool.content_free(ex, &mut rng)))
                                .collect::<Result<Vec<_>>>()?;
                            lps = calibrate(&lps, &mean_content_free(&samples));
                        }
                    }
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
