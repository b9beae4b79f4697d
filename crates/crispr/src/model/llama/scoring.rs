//! Teacher-forced scoring of candidate answers, greedy generation, and the gradients of a
//! candidate's log-probability, for the Llama family.

use super::{KvCache, LlamaModel};
use crate::model::logits::{argmax, d_logprob_d_logits, log_prob_of};
use crate::tensor::Float;

/// Log-probability of every candidate continuation of `prompt`. The prompt is run once; each
/// candidate continues from its cached keys and values.
pub fn score<F: Float>(model: &LlamaModel<F>, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64> {
    let mut cache = model.new_cache();
    let hidden = model.forward(prompt, &mut cache, None);
    let last = model.logits(&hidden, &[prompt.len() - 1]);
    score_candidates_after(model, &last, &mut cache, candidates)
}

/// Rows of one packed candidate pass: past this, candidates go into further passes (one long
/// candidate still gets a pass of its own). Small enough that a pass stays in the few-rows
/// product, which reads each weight once for all its rows.
const PACK_ROWS: usize = 16;

/// Candidate log-probabilities given the prompt's last logits and its cache (left as it was).
///
/// A candidate's first token is scored from `last`; its later tokens need a pass over its own
/// earlier tokens. Those passes are packed ([`LlamaModel::forward_packed`]): the candidates of one
/// prompt run side by side in one pass, each seeing the prompt and itself only, so the weights
/// stream from memory once per prompt instead of once per candidate (BBQ's three answers of 2–5
/// tokens each: one pass instead of three).
pub fn score_candidates_after<F: Float>(
    model: &LlamaModel<F>,
    last: &[F],
    cache: &mut KvCache<F>,
    candidates: &[Vec<u32>],
) -> Vec<f64> {
    let vocab = model.cfg.vocab_size;
    let base = cache.len();
    let mut totals: Vec<f64> = candidates.iter().map(|cand| log_prob_of(last, cand[0])).collect();
    // Each candidate with more than one token: its index, and the tokens its pass runs.
    let tails: Vec<(usize, &[u32])> =
        candidates.iter().enumerate().filter(|(_, c)| c.len() > 1).map(|(i, c)| (i, &c[..c.len() - 1])).collect();
    for group in pack(&tails, PACK_ROWS) {
        let segments: Vec<&[u32]> = group.iter().map(|&(_, t)| t).collect();
        let hidden = model.forward_packed(&segments, cache);
        let rows: Vec<usize> = (0..segments.iter().map(|s| s.len()).sum()).collect();
        let logits = model.logits(&hidden, &rows);
        let mut row = 0;
        for &(i, _) in group {
            for &t in &candidates[i][1..] {
                totals[i] += log_prob_of(&logits[row * vocab..(row + 1) * vocab], t);
                row += 1;
            }
        }
        model.truncate_cache(cache, base);
    }
    totals
}

/// Consecutive groups of `items` (candidate index, tokens) whose token counts add up to at most `max_rows` (an item longer
/// than that is a group of its own).
fn pack<'a>(items: &'a [(usize, &'a [u32])], max_rows: usize) -> Vec<&'a [(usize, &'a [u32])]> {
    let mut groups = Vec::new();
    let (mut start, mut rows) = (0, 0);
    for (i, (_, tokens)) in items.iter().enumerate() {
        if i > start && rows + tokens.len() > max_rows {
            groups.push(&items[start..i]);
            (start, rows) = (i, 0);
        }
        rows += tokens.len();
    }
    if start < items.len() {
        groups.push(&items[start..]);
    }
    groups
}

/// Greedy decoding of up to `max_new` tokens; stops after any of `stop` (which is included).
pub fn generate<F: Float>(model: &LlamaModel<F>, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
    let vocab = model.cfg.vocab_size;
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut hidden = model.forward(prompt, &mut cache, None);
    let mut row = prompt.len() - 1;
    while out.len() < max_new {
        let logits = model.logits(&hidden, &[row]);
        let next = argmax(&logits[..vocab]) as u32;
        out.push(next);
        if stop.contains(&next) {
            break;
        }
        hidden = model.forward(&[next], &mut cache, None);
        row = 0;
    }
    out
}

/// `log P(candidate | prompt)` and its gradient with respect to every hooked linear output, from
/// one forward and one backward pass over `prompt ++ candidate`. `visit` receives, per module,
/// the activations and gradients at every position (`[tokens × out]`).
pub fn logprob_with_grads<F: Float>(
    model: &LlamaModel<F>,
    prompt: &[u32],
    candidate: &[u32],
    hook: Option<crate::model::ForwardHook<'_, F>>,
    visit: crate::model::GradVisitor<'_, F>,
) -> f64 {
    let vocab = model.cfg.vocab_size;
    let tokens: Vec<u32> = prompt.iter().chain(candidate).copied().collect();
    let trace = model.forward_traced(&tokens, hook);
    let rows: Vec<usize> = (prompt.len() - 1..tokens.len() - 1).collect();
    let logits = model.logits(&trace.hidden, &rows);
    let total = candidate.iter().enumerate().map(|(i, &t)| log_prob_of(&logits[i * vocab..(i + 1) * vocab], t)).sum();
    let d_logits = d_logprob_d_logits(&logits, candidate, vocab);
    model.backward(&trace, &rows, &d_logits, visit);
    total
}
