//! What every family does with its output logits: log-probabilities of targets, their gradient,
//! and greedy choice.

use crate::tensor::Float;

/// `log softmax(logits)[target]`, accumulated in f64.
pub fn log_prob_of<F: Float>(logits: &[F], target: u32) -> f64 {
    let m = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b.to_f64()));
    let lse = m + logits.iter().map(|&x| (x.to_f64() - m).exp()).sum::<f64>().ln();
    logits[target as usize].to_f64() - lse
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
