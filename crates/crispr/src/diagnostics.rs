//! Activation diagnostics: which residual-stream dimensions carry *massive activations* (Sun et
//! al., arXiv 2402.17762), and how large each neuron's output is relative to its module.
//!
//! Why a bias-neuron tool needs this: attribution is activation × gradient, so a row that writes
//! a dimension holding values in the thousands scores high whatever its role. Such rows are the
//! model's internal bias terms; zeroing them breaks every skill at once. The report names them,
//! and `exclude_massive` keeps them out of the candidates.
//!
//! The residual stream is rebuilt from the hooks: it is the embedding plus the sum of every
//! residual-writing module's output (attention output projections and FFN down projections). The
//! embedding is left out — its entries are O(1) and cannot make or hide a massive dimension.

use std::collections::BTreeMap;

use crate::model::{LanguageModel, SiteInfo};

/// A residual dimension counts as massive where its magnitude exceeds this many times the median
/// magnitude of the residual stream at the same layer (Sun et al. use ~1000× the median and an
/// absolute floor of 100; the ratio alone works across model scales and random test models).
pub const MASSIVE_RATIO: f64 = 100.0;

/// Module kinds whose output is added to the residual stream (row `r` writes dimension `r`).
pub fn writes_residual(kind: &str) -> bool {
    matches!(kind, "o" | "cross_o" | "down" | "wo")
}

/// What one or more forward passes showed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivationStats {
    /// Per site: mean |output| of every row over the probed positions (empty for unprobed sites).
    pub mean_abs: Vec<Vec<f64>>,
    /// Per stack (`decoder`, `encoder`): massive residual dimension → its largest |value| seen.
    pub massive: BTreeMap<String, BTreeMap<usize, f64>>,
    /// Per stack: the largest median |residual| of any layer (the scale `massive` is measured by).
    pub median: BTreeMap<String, f64>,
    /// Prompts probed.
    pub prompts: usize,
}

impl ActivationStats {
    /// Whether row `row` of `site` writes a massive residual dimension of its stack.
    pub fn writes_massive(&self, site: &SiteInfo, row: usize) -> bool {
        writes_residual(site.kind) && self.massive.get(site.stack).is_some_and(|m| m.contains_key(&row))
    }

    /// A neuron's mean |output| divided by the median over its module's rows (1 = typical).
    pub fn relative_magnitude(&self, site: usize, row: usize) -> Option<f64> {
        let v = self.mean_abs.get(site)?;
        let x = *v.get(row)?;
        let med = median(v.clone());
        (med > 0.0).then(|| x / med)
    }

    /// Every massive dimension of any stack, ascending.
    pub fn massive_dims(&self) -> Vec<usize> {
        let mut d: Vec<usize> = self.massive.values().flat_map(|m| m.keys().copied()).collect();
        d.sort_unstable();
        d.dedup();
        d
    }
}

/// Median of `v` (0 for an empty vector).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// Probe `prompts` (token ids) with one forward pass each and collect [`ActivationStats`].
pub fn probe(model: &dyn LanguageModel<f32>, prompts: &[Vec<u32>]) -> ActivationStats {
    let sites = model.sites();
    let mut sums: Vec<Vec<f64>> = vec![Vec::new(); sites.len()];
    let mut counts = vec![0usize; sites.len()];
    let mut massive: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    let mut medians: BTreeMap<String, f64> = BTreeMap::new();
    for prompt in prompts {
        // Residual stream per stack, rebuilt as the hooks fire (in forward order).
        let mut residual: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let mut hook = |site: usize, out: &mut [f32]| {
            let info = &sites[site];
            let w = info.width;
            if w == 0 || !out.len().is_multiple_of(w) {
                return;
            }
            let sum = &mut sums[site];
            if sum.is_empty() {
                sum.resize(w, 0.0);
            }
            for row in out.chunks_exact(w) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += (x as f64).abs();
                }
            }
            counts[site] += out.len() / w;
            if !writes_residual(info.kind) {
                return;
            }
            let r = residual.entry(info.stack).or_default();
            if r.len() != out.len() {
                // First residual write of this stack (or a new segment length): start afresh.
                *r = vec![0.0; out.len()];
            }
            for (a, &x) in r.iter_mut().zip(out.iter()) {
                *a += x as f64;
            }
            let med = median(r.iter().map(|x| x.abs()).collect());
            let best = medians.entry(info.stack.to_string()).or_insert(0.0);
            *best = best.max(med);
            if med <= 0.0 {
                return;
            }
            let found = massive.entry(info.stack.to_string()).or_default();
            for t in r.chunks_exact(w) {
                for (d, &x) in t.iter().enumerate() {
                    if x.abs() > MASSIVE_RATIO * med {
                        let e = found.entry(d).or_insert(0.0);
                        *e = e.max(x.abs());
                    }
                }
            }
        };
        model.next_token_logits(prompt, Some(&mut hook));
    }
    let mean_abs = sums
        .into_iter()
        .zip(counts)
        .map(|(s, c)| if c == 0 { s } else { s.into_iter().map(|x| x / c as f64).collect() })
        .collect();
    massive.retain(|_, m| !m.is_empty());
    ActivationStats { mean_abs, massive, median: medians, prompts: prompts.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
