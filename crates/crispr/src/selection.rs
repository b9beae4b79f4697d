//! From bias scores to the ranked list of pruning candidates.
//!
//! The paper ranks every neuron of the universe by its bias score, globally and unnormalised
//! ([`SelectionConfig::default`] does exactly that). On today's chat models that ranking is led
//! by rows that write massive-activation dimensions, and pruning them breaks the model (see
//! [`crate::diagnostics`]). The options here keep skills intact, each one a switch beside the
//! faithful default:
//! - `normalize`: divide each module's scores by their root mean square, so that one module with
//!   huge activations cannot fill the top of the list;
//! - `exclude_massive`: drop rows that write a massive residual dimension;
//! - `protect`: drop the top skill neurons of other tasks (their gold-answer attribution; a set
//!   difference in the spirit of Wei et al. 2024, arXiv 2402.05162);
//! - `ablate_top`: zero each of the first candidates alone and keep it only if that helps the
//!   target without disturbing the model (gradient attribution mis-ranks effects; AtP*,
//!   arXiv 2403.00745). Run by the pipeline, which owns the model.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::attribution::Scores;
use crate::diagnostics::ActivationStats;
use crate::model::SiteInfo;
use crate::prune::Neuron;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectionConfig {
    /// Divide each module's scores by their root mean square before ranking.
    pub normalize: bool,
    /// Leave out rows that write a massive-activation residual dimension.
    pub exclude_massive: bool,
    /// Tasks whose skill neurons are never pruned.
    pub protect: Vec<String>,
    /// Skill neurons protected per task (its top this many by gold-answer attribution).
    pub protect_top: usize,
    /// Dev instances and instructions of each protected task's skill attribution.
    pub protect_samples: usize,
    pub protect_instructions: usize,
    /// Check the first this many candidates one by one by ablation (0: off).
    pub ablate_top: usize,
}

impl SelectionConfig {
    /// Whether the ranking is the paper's (global, unnormalised, unfiltered).
    pub fn is_faithful(&self) -> bool {
        *self == SelectionConfig::default()
    }
}

/// Scores with every module divided by the root mean square of its own scores (modules whose
/// scores are all zero stay zero).
pub fn normalize_per_module(scores: &Scores) -> Scores {
    let per_site = scores
        .per_site
        .iter()
        .map(|v| {
            let rms = (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt();
            if rms > 0.0 && rms.is_finite() {
                v.iter().map(|x| x / rms).collect()
            } else {
                v.clone()
            }
        })
        .collect();
    Scores { universe: scores.universe, per_site }
}

/// Why a neuron was left out of the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Excluded {
    MassiveActivation,
    Protected,
}

/// The ranked candidates: every neuron of the universe by (possibly normalised) score, descending,
/// minus the excluded ones. Also returns how many were excluded for each reason.
pub fn rank_candidates(
    scores: &Scores,
    sites: &[SiteInfo],
    cfg: &SelectionConfig,
    stats: Option<&ActivationStats>,
    protected: &HashSet<Neuron>,
) -> (Vec<Neuron>, Vec<(Neuron, Excluded)>) {
    let normalized;
    let scores = if cfg.normalize {
        normalized = normalize_per_module(scores);
        &normalized
    } else {
        scores
    };
    let mut kept = Vec::new();
    let mut excluded = Vec::new();
    for (site, row, _) in scores.ranked() {
        let n = Neuron { site, row };
        if cfg.exclude_massive && stats.is_some_and(|s| s.writes_massive(&sites[site], row)) {
            excluded.push((n, Excluded::MassiveActivation));
        } else if protected.contains(&n) {
            excluded.push((n, Excluded::Protected));
        } else {
            kept.push(n);
        }
    }
    (kept, excluded)
}

/// The top `k` neurons of a skill-score table (its gold-answer attribution).
pub fn top_skill_neurons(skill: &Scores, k: usize) -> Vec<Neuron> {
    skill.ranked().into_iter().take(k).map(|(site, row, _)| Neuron { site, row }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Universe;

    fn site(name: &str, kind: &'static str, width: usize) -> SiteInfo {
        SiteInfo { name: name.into(), layer: 0, kind, stack: "decoder", width, universe: Universe::Linear }
    }

    #[test]
    fn default_ranking_is_the_papers() {
        let sites = [site("a", "q", 3), site("b", "down", 2)];
        let scores = Scores { universe: Universe::Linear, per_site: vec![vec![0.1, 3.0, -1.0], vec![5.0, 0.2]] };
        let (kept, excluded) = rank_candidates(&scores, &sites, &SelectionConfig::default(), None, &HashSet::new());
        let want: Vec<Neuron> = scores.ranked().into_iter().map(|(site, row, _)| Neuron { site, row }).collect();
        assert_eq!(kept, want);
        assert!(excluded.is_empty());
    }

    #[test]
    fn normalisation_evens_out_modules() {
        let sites = [site("a", "q", 2), site("b", "down", 2)];
        // Module b's scale is 1000× a's; after normalisation a's best neuron leads.
        let scores = Scores { universe: Universe::Linear, per_site: vec![vec![1.0, 0.01], vec![1000.0, 900.0]] };
        let cfg = SelectionConfig { normalize: true, ..Default::default() };
        let (kept, _) = rank_candidates(&scores, &sites, &cfg, None, &HashSet::new());
        assert_eq!(kept[0], Neuron { site: 0, row: 0 });
    }

    #[test]
    fn protected_and_massive_rows_are_never_candidates() {
        let sites = [site("a", "q", 3), site("b", "down", 3)];
        let scores = Scores { universe: Universe::Linear, per_site: vec![vec![1.0, 2.0, 3.0], vec![9.0, 8.0, 7.0]] };
        let mut stats = ActivationStats::default();
        stats.massive.insert("decoder".into(), [(0usize, 5000.0)].into_iter().collect());
        let protected: HashSet<Neuron> = [Neuron { site: 0, row: 2 }].into_iter().collect();
        let cfg = SelectionConfig { exclude_massive: true, ..Default::default() };
        let (kept, excluded) = rank_candidates(&scores, &sites, &cfg, Some(&stats), &protected);
        // Row 0 of the q module is not residual-writing: dimension 0 being massive does not matter.
        assert!(kept.contains(&Neuron { site: 0, row: 0 }));
        assert!(!kept.contains(&Neuron { site: 1, row: 0 }));
        assert!(!kept.contains(&Neuron { site: 0, row: 2 }));
        assert_eq!(kept.len() + excluded.len(), 6);
        assert_eq!(excluded[0], (Neuron { site: 1, row: 0 }, Excluded::MassiveActivation));
    }
}
