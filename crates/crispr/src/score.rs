//! Teacher-forced scoring of candidate answers and greedy generation.

use crate::error::{Error, Result};
use crate::model::llama::LlamaModel;
use crate::tensor::Float;
use crate::text::TextCodec;

/// How prompts and candidates become token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptStyle {
    /// The model's chat template: user turn = prompt, generation prompt added; every candidate is
    /// followed by the template's end-of-turn token.
    Chat,
    /// Plain text with the tokenizer's own special tokens (e.g. BOS); candidates are scored as a
    /// bare continuation.
    Raw,
    /// Encoder–decoder: encoder input = prompt + the tokenizer's end token (`</s>` for T5),
    /// decoder target = candidate + `</s>`, both as the tokenizer's post-processor adds them.
    Seq2Seq,
}

/// A prompt and its candidates as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub candidates: Vec<Vec<u32>>,
}

/// Longest token, in bytes, assumed when refusing an over-long prompt before tokenizing it.
const MAX_BYTES_PER_TOKEN: usize = 64;

pub fn encode(text: &TextCodec, style: PromptStyle, prompt: &str, candidates: &[String]) -> Result<Encoded> {
    let too_long = |what: String, limit: usize| {
        Error::msg(format!("{what}, longer than the model's context of {limit} tokens ({})", text.source.display()))
    };
    // A multi-megabyte line would take gigabytes to tokenize and run: refuse it up front.
    if let Some(limit) = text.max_tokens {
        if prompt.len() > limit.saturating_mul(MAX_BYTES_PER_TOKEN) {
            return Err(too_long(format!("the prompt is {} bytes, far more than {limit} tokens", prompt.len()), limit));
        }
    }
    let prompt_ids = match style {
        PromptStyle::Chat => text.chat_prompt(prompt)?,
        PromptStyle::Raw | PromptStyle::Seq2Seq => text.encode(prompt, true)?,
    };
    if prompt_ids.is_empty() {
        return Err(Error::msg("the prompt encodes to no tokens"));
    }
    let mut cands = Vec::with_capacity(candidates.len());
    for c in candidates {
        let mut ids = text.encode(c, style == PromptStyle::Seq2Seq)?;
        if style == PromptStyle::Chat {
            let eot = text
                .end_of_turn
                .ok_or_else(|| Error::format(&text.source, "the chat template has no end-of-turn token"))?;
            ids.push(eot);
        }
        if ids.is_empty() {
            return Err(Error::msg(format!("candidate {c:?} encodes to no tokens")));
        }
        cands.push(ids);
    }
    if let Some(limit) = text.max_tokens {
        let longest = cands.iter().map(Vec::len).max().unwrap_or(0);
        let total = match style {
            // The encoder reads the prompt, the decoder the candidate: each has the whole context.
            PromptStyle::Seq2Seq => prompt_ids.len().max(longest),
            PromptStyle::Chat | PromptStyle::Raw => prompt_ids.len() + longest,
        };
        if total > limit {
            return Err(too_long(format!("the prompt with its longest candidate is {total} tokens"), limit));
        }
    }
    Ok(Encoded { prompt: prompt_ids, candidates: cands })
}

/// `log softmax(logits)[target]`, accumulated in f64.
pub fn log_prob_of<F: Float>(logits: &[F], target: u32) -> f64 {
    let m = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b.to_f64()));
    let lse = m + logits.iter().map(|&x| (x.to_f64() - m).exp()).sum::<f64>().ln();
    logits[target as usize].to_f64() - lse
}

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
    cache: &mut crate::model::llama::KvCache<F>,
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

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax<F: Float>(v: &[F]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
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

/// Gradient of `Σ_i log softmax(logits_i)[targets_i]` with respect to the logits:
/// `onehot(target) − softmax(z)` per row.
pub fn d_logprob_d_logits<F: Float>(logits: &[F], targets: &[u32], vocab: usize) -> Vec<F> {
    let mut d_logits = vec![F::ZERO; logits.len()];
    for (i, &t) in targets.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let m = row.iter().fold(F::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = F::ZERO;
        let d = &mut d_logits[i * vocab..(i + 1) * vocab];
        for (dv, &z) in d.iter_mut().zip(row) {
            *dv = (z - m).exp();
            sum += *dv;
        }
        for dv in d.iter_mut() {
            *dv = -*dv / sum;
        }
        d[t as usize] += F::ONE;
    }
    d_logits
}
