//! Pruning neurons: in memory (exactly reversible, so a search can try many `n` on one loaded
//! model) and on disk (a pruned copy in the input's own format).

use crate::model::{LanguageModel, SiteInfo, Universe};
use crate::rng::SplitMix64;
use crate::tensor::Float;

/// A neuron: unit `row` of site `site`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neuron {
    pub site: usize,
    pub row: usize,
}

/// The original rows of pruned neurons, to restore them bit for bit.
#[must_use = "restore the model with Pruned::restore"]
pub struct Pruned<F> {
    saved: Vec<(usize, usize, Vec<F>, Option<F>)>,
}

/// Zero the rows behind `neurons`, remembering the originals.
pub fn prune<F: Float>(model: &mut dyn LanguageModel<F>, neurons: &[Neuron]) -> Pruned<F> {
    let mut saved = Vec::with_capacity(neurons.len());
    for n in neurons {
        let lin = model.prune_target(n.site);
        let (w, b) = lin.row(n.row);
        saved.push((n.site, n.row, w, b));
        lin.zero_row(n.row);
    }
    Pruned { saved }
}

impl<F: Float> Pruned<F> {
    /// Put the original rows back (in reverse order, so a row pruned twice ends as it began).
    pub fn restore(self, model: &mut dyn LanguageModel<F>) {
        for (site, row, w, b) in self.saved.into_iter().rev() {
            model.prune_target(site).set_row(row, &w, b);
        }
    }
}

/// `n` neurons drawn uniformly without replacement from a universe.
pub fn random_neurons(sites: &[SiteInfo], universe: Universe, n: usize, seed: u64) -> Vec<Neuron> {
    let members: Vec<(usize, usize)> =
        sites.iter().enumerate().filter(|(_, s)| s.universe == universe).map(|(i, s)| (i, s.width)).collect();
    let total: usize = members.iter().map(|m| m.1).sum();
    let mut rng = SplitMix64::new(seed);
    let mut picks = rng.sample(total, n.min(total));
    picks.sort_unstable();
    let mut out = Vec::with_capacity(picks.len());
    let (mut m, mut base) = (0, 0);
    for p in picks {
        while p >= base + members[m].1 {
            base += members[m].1;
            m += 1;
        }
        out.push(Neuron { site: members[m].0, row: p - base });
    }
    out
}
