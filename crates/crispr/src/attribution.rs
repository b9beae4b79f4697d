//! Bias attribution (method.md, "Attribution" to "Bias score of a neuron").
//!
//! For each instruction ι and instance x: score the candidates, take the most probable wrong
//! answer ŷ and its probability α, differentiate ŷ and the gold answer y, and fold
//! `activation × gradient` into one f64 accumulator per neuron. Memory is one accumulator per
//! neuron whatever the number of instances.

use crate::model::{LanguageModel, SiteInfo, Universe};

/// What is differentiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// `∂P(a)/∂h` (the paper).
    Prob,
    /// `∂log P(a)/∂h` (the authors' re-release).
    Logprob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenAgg {
    Max,
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disentangle {
    /// `agg_t A(ŷ) − λ·max(0, agg_t A(y))`
    PerInstance,
    /// `agg_t (A_t(ŷ) − λ·max(0, A_t(y)))`
    PerToken,
    /// `agg_t A(ŷ)`
    Off,
}

/// Every switch of the method. `compat` reproduces the authors' re-release and overrides the
/// objective, disentanglement and weighting (see [`Settings::biasneuron`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub universe: Universe,
    pub objective: Objective,
    pub token_agg: TokenAgg,
    pub disentangle: Disentangle,
    pub lambda: f64,
    /// Weight each instance by its confusion score α (`--no-alpha` turns this off).
    pub alpha: bool,
    /// `Some("biasneuron")`: the re-release's computation.
    pub compat: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            universe: Universe::Linear,
            objective: Objective::Prob,
            token_agg: TokenAgg::Max,
            disentangle: Disentangle::PerInstance,
            lambda: 1.0,
            alpha: true,
            compat: None,
        }
    }
}

impl Settings {
    /// The re-release's computation: `log P` gradients scaled by α (of ŷ, for both answers), max
    /// over tokens, batches of [`COMPAT_BATCH`] instances with the clamp on the batch sums.
    pub fn biasneuron(universe: Universe) -> Self {
        Settings {
            universe,
            objective: Objective::Logprob,
            token_agg: TokenAgg::Max,
            disentangle: Disentangle::PerInstance,
            lambda: 1.0,
            alpha: true,
            compat: Some("biasneuron".into()),
        }
    }

    pub fn is_compat(&self) -> bool {
        self.compat.as_deref() == Some("biasneuron")
    }
}

/// Instances per batch in the re-release (the clamp of the gold term applies per batch).
pub const COMPAT_BATCH: usize = 4;

/// One instance under one instruction, tokenised.
#[derive(Clone, Debug)]
pub struct Instance {
    pub prompt: Vec<u32>,
    pub candidates: Vec<Vec<u32>>,
    pub gold: usize,
}

/// What attribution learned about one instance (for logs and reports).
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceTrace {
    pub gold: usize,
    pub biased: usize,
    pub alpha: f64,
    pub logprobs: Vec<f64>,
}

/// Per-neuron scores: one vector per site (empty for sites outside the universe).
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    pub universe: Universe,
    pub per_site: Vec<Vec<f64>>,
}

impl Scores {
    pub fn zeros(sites: &[SiteInfo], universe: Universe) -> Self {
        let per_site =
            sites.iter().map(|s| if s.universe == universe { vec![0.0; s.width] } else { Vec::new() }).collect();
        Scores { universe, per_site }
    }

    /// `self += other`, element by element.
    pub fn add(&mut self, other: &Scores) {
        self.add_scaled(other, 1.0);
    }

    fn add_scaled(&mut self, other: &Scores, w: f64) {
        for (a, b) in self.per_site.iter_mut().zip(&other.per_site) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += w * y;
            }
        }
    }

    /// The mean of several score sets (instructions, or seeds).
    pub fn mean(all: &[Scores]) -> Option<Scores> {
        let first = all.first()?;
        let mut out =
            Scores { universe: first.universe, per_site: first.per_site.iter().map(|v| vec![0.0; v.len()]).collect() };
        for s in all {
            out.add_scaled(s, 1.0 / all.len() as f64);
        }
        Some(out)
    }

    /// Number of neurons in the universe.
    pub fn len(&self) -> usize {
        self.per_site.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every neuron `(site, row, score)` ranked by score, descending; ties by (site, row).
    pub fn ranked(&self) -> Vec<(usize, usize, f64)> {
        let mut v: Vec<(usize, usize, f64)> = self
            .per_site
            .iter()
            .enumerate()
            .flat_map(|(s, vals)| vals.iter().enumerate().map(move |(r, &x)| (s, r, x)))
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        v
    }
}

/// `(ŷ, α)`: the most probable wrong candidate and its raw sequence probability.
pub fn biased_answer(logprobs: &[f64], gold: usize) -> Option<(usize, f64)> {
    logprobs
        .iter()
        .enumerate()
        .filter(|&(c, _)| c != gold)
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(c, &lp)| (c, lp.exp()))
}

/// Reduce `act ⊙ grad` over positions for every unit: `[tokens × width]` → `[width]`.
fn reduce_tokens(act: &[f32], grad: &[f32], width: usize, agg: TokenAgg, out: &mut [f64]) {
    let tokens = act.len() / width;
    match agg {
        TokenAgg::Max => {
            out.fill(f64::NEG_INFINITY);
            for (ar, gr) in act.chunks_exact(width).zip(grad.chunks_exact(width)) {
                for ((o, &a), &g) in out.iter_mut().zip(ar).zip(gr) {
                    *o = o.max(a as f64 * g as f64);
                }
            }
        }
        TokenAgg::Mean => {
            out.fill(0.0);
            for (ar, gr) in act.chunks_exact(width).zip(grad.chunks_exact(width)) {
                for ((o, &a), &g) in out.iter_mut().zip(ar).zip(gr) {
                    *o += a as f64 * g as f64;
                }
            }
            for o in out.iter_mut() {
                *o /= tokens.max(1) as f64;
            }
        }
    }
}

/// Attribute one instruction: `B_i(ι)` over `instances` (method.md steps 1–2, or the re-release's
/// batched form under `compat`). `progress` is called after each instance.
pub fn attribute_instruction(
    model: &dyn LanguageModel<f32>,
    instances: &[Instance],
    settings: &Settings,
    progress: &mut dyn FnMut(&InstanceTrace),
) -> Scores {
    let mut total = attribute_sum(model, instances, settings, progress);
    let n = instances.len().max(1) as f64;
    for v in total.per_site.iter_mut().flatten() {
        *v /= n;
    }
    total
}

/// `Σ` over `instances` of what [`attribute_instruction`] averages: sums of consecutive chunks,
/// added in order and divided by the total count, give the per-instruction score (chunk sizes a
/// multiple of [`COMPAT_BATCH`] under `compat`, so that the batches fall where one pass over all
/// instances puts them).
pub fn attribute_sum(
    model: &dyn LanguageModel<f32>,
    instances: &[Instance],
    settings: &Settings,
    progress: &mut dyn FnMut(&InstanceTrace),
) -> Scores {
    let sites = model.sites();
    let universe = settings.universe;
    let mut total = Scores::zeros(sites, universe);
    let compat = settings.is_compat();
    // Per-instance terms (reused buffers).
    let mut bias_term = Scores::zeros(sites, universe);
    let mut gold_term = Scores::zeros(sites, universe);
    // Compat: sums over the current batch.
    let mut batch_bias = Scores::zeros(sites, universe);
    let mut batch_gold = Scores::zeros(sites, universe);
    let mut in_batch = 0;
    // Per-token disentanglement keeps A_t(ŷ) of every site until y's gradients arrive.
    let per_token = !compat && settings.disentangle == Disentangle::PerToken;
    let mut stored_bias: Vec<Vec<f32>> = vec![Vec::new(); sites.len()];

    for inst in instances {
        // Set by `pick` (after scoring), read by the visitor (during the backward passes).
        let chosen = std::cell::Cell::new((0usize, 0f64));
        let p_gold = std::cell::Cell::new(0f64);
        let gold = inst.gold;
        let logprobs = model.score_and_differentiate(
            &inst.prompt,
            &inst.candidates,
            &mut |lps: &[f64]| {
                let (b, alpha) = biased_answer(lps, gold).unwrap_or((gold, 0.0));
                chosen.set((b, alpha));
                p_gold.set(lps[gold].exp());
                if settings.disentangle == Disentangle::Off && !compat {
                    vec![b]
                } else {
                    vec![b, gold]
                }
            },
            &mut |k, site, act, grad| {
                let info = &sites[site];
                if info.universe != universe {
                    return;
                }
                // α = P(ŷ). The visitor receives ∂log P gradients; this scale turns them into the
                // configured objective's (∂P = P·∂log P), or the re-release's α-weighting.
                let alpha = chosen.get().1;
                let scale = match (compat, settings.objective, k) {
                    (true, _, _) => alpha,
                    (false, Objective::Logprob, _) => 1.0,
                    (false, Objective::Prob, 0) => alpha,
                    (false, Objective::Prob, _) => p_gold.get(),
                };
                let w = info.width;
                if per_token {
                    if k == 0 {
                        stored_bias[site] =
                            act.iter().zip(grad).map(|(&a, &g)| (a as f64 * g as f64 * scale) as f32).collect();
                    } else {
                        // Pair positions by index; a position only ŷ's sequence has counts with A(y) = 0.
                        let a_hat = &stored_bias[site];
                        let n = a_hat.len() / w;
                        let ny = act.len() / w;
                        let out = &mut bias_term.per_site[site];
                        let combined: Vec<f32> = (0..n * w)
                            .map(|i| {
                                let ay = if i / w < ny { act[i] as f64 * grad[i] as f64 * scale } else { 0.0 };
                                (a_hat[i] as f64 - settings.lambda * ay.max(0.0)) as f32
                            })
                            .collect();
                        let ones = vec![1f32; combined.len()];
                        reduce_tokens(&combined, &ones, w, settings.token_agg, out);
                    }
                    return;
                }
                let out = if k == 0 { &mut bias_term.per_site[site] } else { &mut gold_term.per_site[site] };
                reduce_tokens(act, grad, w, settings.token_agg, out);
                for v in out.iter_mut() {
                    *v *= scale;
                }
            },
        );
        let (biased, alpha) = chosen.get();
        let disentangle = if compat { Disentangle::PerInstance } else { settings.disentangle };
        if compat {
            batch_bias.add_scaled(&bias_term, 1.0);
            batch_gold.add_scaled(&gold_term, 1.0);
            in_batch += 1;
            if in_batch == COMPAT_BATCH {
                fold_batch(&mut total, &batch_bias, &batch_gold, settings.lambda);
                batch_bias = Scores::zeros(sites, universe);
                batch_gold = Scores::zeros(sites, universe);
                in_batch = 0;
            }
        } else {
            let weight = if settings.alpha { alpha } else { 1.0 };
            for (site, acc) in total.per_site.iter_mut().enumerate() {
                let b = &bias_term.per_site[site];
                let g = &gold_term.per_site[site];
                for (i, a) in acc.iter_mut().enumerate() {
                    let term = match disentangle {
                        Disentangle::PerInstance => b[i] - settings.lambda * g[i].max(0.0),
                        Disentangle::PerToken | Disentangle::Off => b[i],
                    };
                    *a += weight * term;
                }
            }
        }
        progress(&InstanceTrace { gold, biased, alpha, logprobs });
    }
    if compat && in_batch > 0 {
        fold_batch(&mut total, &batch_bias, &batch_gold, settings.lambda);
    }
    total
}

/// Skill attribution: `(1/N) Σ_x agg_t A_i,t(y)`, the gold answer's attribution (the term the
/// method subtracts in its skill disentanglement), for protecting other tasks' skill neurons.
/// The objective and token aggregation follow `settings`; nothing is weighted by α.
pub fn attribute_skill(model: &dyn LanguageModel<f32>, instances: &[Instance], settings: &Settings) -> Scores {
    let sites = model.sites();
    let universe = settings.universe;
    let mut total = Scores::zeros(sites, universe);
    let mut term = vec![0.0; sites.iter().map(|s| s.width).max().unwrap_or(0)];
    for inst in instances {
        let p_gold = std::cell::Cell::new(0f64);
        let gold = inst.gold;
        model.score_and_differentiate(
            &inst.prompt,
            &inst.candidates,
            &mut |lps: &[f64]| {
                p_gold.set(lps[gold].exp());
                vec![gold]
            },
            &mut |_, site, act, grad| {
                let info = &sites[site];
                if info.universe != universe {
                    return;
                }
                let scale = match settings.objective {
                    Objective::Prob => p_gold.get(),
                    Objective::Logprob => 1.0,
                };
                let out = &mut term[..info.width];
                reduce_tokens(act, grad, info.width, settings.token_agg, out);
                for (a, &t) in total.per_site[site].iter_mut().zip(out.iter()) {
                    *a += scale * t;
                }
            },
        );
    }
    let n = instances.len().max(1) as f64;
    for v in total.per_site.iter_mut().flatten() {
        *v /= n;
    }
    total
}

/// Re-release batch rule: `Σ_batch bias − λ·max(0, Σ_batch gold)`.
fn fold_batch(total: &mut Scores, bias: &Scores, gold: &Scores, lambda: f64) {
    for ((t, b), g) in total.per_site.iter_mut().zip(&bias.per_site).zip(&gold.per_site) {
        for ((t, &b), &g) in t.iter_mut().zip(b).zip(g) {
            *t += b - lambda * g.max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn biased_answer_is_the_best_wrong_candidate() {
        let lps = [-0.1f64, -2.0, -1.0];
        assert_eq!(biased_answer(&lps, 0).map(|x| x.0), Some(2));
        let (b, a) = biased_answer(&lps, 2).unwrap();
        assert_eq!(b, 0);
        assert!((a - (-0.1f64).exp()).abs() < 1e-15);
        assert_eq!(biased_answer(&[-1.0], 0), None);
    }

    #[test]
    fn token_reduction() {
        // 3 tokens × 2 units
        let act = [1.0f32, 2.0, -1.0, 0.5, 3.0, -2.0];
        let grad = [1.0f32, 1.0, 2.0, 2.0, -1.0, 1.0];
        let mut out = [0.0; 2];
        reduce_tokens(&act, &grad, 2, TokenAgg::Max, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        reduce_tokens(&act, &grad, 2, TokenAgg::Mean, &mut out);
        assert_eq!(out, [(1.0 - 2.0 - 3.0) / 3.0, (2.0 + 1.0 - 2.0) / 3.0]);
    }
}
