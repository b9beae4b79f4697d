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

/// Candidate log-probabilities given the prompt's last logits and its cache (left as it was).
pub fn score_candidates_after<F: Float>(
    model: &LlamaModel<F>,
    last: &[F],
    cache: &mut KvCache<F>,
    candidates: &[Vec<u32>],
) -> Vec<f64> {
    let vocab = model.cfg.vocab_size;
    let base = cache.len();
    candidates
        .iter()
        .map(|cand| {
            let mut total = log_prob_of(last, cand[0]);
            if cand.len() > 1 {
                let h = model.forward(&cand[..cand.len() - 1], cache, None);
                let rows: Vec<usize> = (0..cand.len() - 1).collect();
                let logits = model.logits(&h, &rows);
                for (i, &t) in cand[1..].iter().enumerate() {
                    total += log_prob_of(&logits[i * vocab..(i + 1) * vocab], t);
                }
                model.truncate_cache(cache, base);
            }
            total
        })
        .collect()
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
