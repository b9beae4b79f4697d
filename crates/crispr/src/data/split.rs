//! Dev/test splits and attribution samples.
//!
//! BBQ has no training split, and the NLU files here are already the GLUE/BoolQ development sets,
//! so every task is split the same way (method.md, "Data splits"): the examples of each group are
//! shuffled with [`SplitMix64`] seeded with `seed`, the first `dev_fraction` of them form the dev
//! split and the rest the test split. Groups are BBQ categories (a file normally holds one; each
//! category is shuffled by its own generator seeded with `seed`, so a category's split does not
//! depend on what else shares its file); any other task is one group.
//!
//! Dev size per group = ⌊`dev_fraction` × n⌋, but at least one example when `dev_fraction` > 0
//! and the group has two or more, so tiny custom tasks still get a dev set. `dev_fraction` is
//! clamped to [0, 1] (NaN counts as 0).
//!
//! Returned indices are positions in `task.examples`, sorted in file order.

use std::collections::BTreeMap;

use super::Task;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Which part of a task to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Dev,
    Test,
    /// Every example, in file order.
    All,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Dev => "dev",
            Split::Test => "test",
            Split::All => "all",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dev" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            other => Err(Error::msg(format!("unknown split {other:?}: expected dev, test or all"))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default dev fraction (10 %).
pub const DEV_FRACTION: f64 = 0.1;

/// Indices of `split` (see the module documentation).
pub fn split_indices(task: &Task, split: Split, seed: u64, dev_fraction: f64) -> Vec<usize> {
    if split == Split::All {
        return (0..task.examples.len()).collect();
    }
    let frac = if dev_fraction.is_nan() { 0.0 } else { dev_fraction.clamp(0.0, 1.0) };
    // Group by BBQ category. Each group has its own generator, so the order groups are visited in
    // does not matter; within a group, members start in file order.
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, ex) in task.examples.iter().enumerate() {
        let key = ex.bbq.as_ref().map_or("", |b| b.category.as_str());
        groups.entry(key).or_default().push(i);
    }
    let mut dev = vec![false; task.examples.len()];
    for members in groups.values_mut() {
        let n = members.len();
        // The small epsilon keeps e.g. 0.1 × 70 = 7.000000000000001 from depending on rounding
        // direction; ⌊x⌋ matches the re-release's int(0.1 · len).
        let mut n_dev = (frac * n as f64 + 1e-9).floor() as usize;
        if frac > 0.0 && n >= 2 {
            n_dev = n_dev.max(1);
        }
        SplitMix64::new(seed).shuffle(members);
        for &i in &members[..n_dev.min(n)] {
            dev[i] = true;
        }
    }
    let want_dev = split == Split::Dev;
    (0..task.examples.len()).filter(|&i| dev[i] == want_dev).collect()
}

/// `n` indices drawn without replacement from `pool` with a seeded [`SplitMix64`], returned
/// sorted (file order); all of `pool` when `n` ≥ its size. For attribution samples.
pub fn sample_indices(pool: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let mut out: Vec<usize> = if n >= pool.len() {
        pool.to_vec()
    } else {
        SplitMix64::new(seed).sample(pool.len(), n).into_iter().map(|k| pool[k]).collect()
    };
    out.sort_unstable();
    out
}
