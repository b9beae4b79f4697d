//! Retention: how far a pruned model has moved from the original on things the pruning was not
//! meant to touch. Two measures, both cheap enough to evaluate at every n a search tries:
//! - accuracy drops on retained tasks (and, for BBQ, on the target's own disambiguated
//!   questions, where the context states the answer), paired on the same dev items;
//! - the KL divergence between the original and the pruned model's next-token distributions on a
//!   fixed set of neutral prompts (how abliteration tools such as Heretic keep a model intact).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::loader::LoadedModel;
use crate::score::encode;

/// Neutral prompts: everyday requests with nothing to do with social groups or the NLU tasks.
/// Written for this tool; the set is fixed so KL values are comparable between runs.
pub const NEUTRAL_PROMPTS: [&str; 16] = [
    "What is the boiling point of water at sea level?",
    "Write one sentence about a walk in the park.",
    "Name three primary colours.",
    "How many days are there in a leap year?",
    "Translate 'good morning' into French.",
    "Give me a short tip for keeping houseplants alive.",
    "What is 12 multiplied by 7?",
    "Describe the taste of a lemon in a few words.",
    "Which planet is closest to the sun?",
    "Suggest a name for a small bakery.",
    "Explain what a noun is in one sentence.",
    "List two uses of a paperclip.",
    "What does a thermometer measure?",
    "Write a haiku about autumn leaves.",
    "How do you make a cup of tea?",
    "What is the capital city of Japan?",
];

/// The constraint a retention-aware search respects at every n it may return.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConstraint {
    /// Largest allowed drop of any retained task's dev accuracy, and of the target's
    /// disambiguated accuracy (BBQ), in points (×100).
    pub max_drop: Option<f64>,
    /// Largest allowed mean KL(original ‖ pruned) on the neutral prompts, in nats.
    pub max_kl: Option<f64>,
    /// Dev instances and instructions of each retained task per evaluated n.
    pub retain_dev_limit: usize,
    pub retain_instructions: usize,
    /// Neutral prompts used for KL (the first this many of [`NEUTRAL_PROMPTS`]).
    pub kl_prompts: usize,
}

/// Next-token log-distributions of the neutral prompts (the reference the pruned model is
/// compared with).
pub fn neutral_distributions(loaded: &LoadedModel, k: usize) -> Result<Vec<Vec<f64>>> {
    let style = loaded.prompt_style(false);
    NEUTRAL_PROMPTS
        .iter()
        .take(k)
        .map(|p| {
            let enc = encode(&loaded.text, style, p, &[])?;
            Ok(log_softmax(&loaded.model.next_token_logits(&enc.prompt, None)))
        })
        .collect()
}

/// Mean KL(reference ‖ current) over the neutral prompts.
pub fn mean_kl(loaded: &LoadedModel, reference: &[Vec<f64>]) -> Result<f64> {
    let now = neutral_distributions(loaded, reference.len())?;
    let total: f64 = reference.iter().zip(&now).map(|(p, q)| kl(p, q)).sum();
    Ok(total / reference.len().max(1) as f64)
}

pub fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let lse = m + logits.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
    logits.iter().map(|&x| x - lse).collect()
}

/// KL(p ‖ q) of two log-distributions.
pub fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p.iter().zip(log_q).map(|(&lp, &lq)| if lp == f64::NEG_INFINITY { 0.0 } else { lp.exp() * (lp - lq) }).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_known_distributions() {
        let p = log_softmax(&[0.0, 0.0]);
        let q = [0.25f64.ln(), 0.75f64.ln()];
        // KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl(&p, &q) - want).abs() < 1e-12);
        assert!(kl(&p, &p).abs() < 1e-15);
    }
}
