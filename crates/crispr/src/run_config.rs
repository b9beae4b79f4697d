//! The configuration of a run (`config.toml`): everything that determines its results, and the
//! presets that fill it.

use serde::{Deserialize, Serialize};

use crate::attribution::Settings;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::retention::RetentionConstraint;
use crate::selection::SelectionConfig;

/// Everything that determines a run's results. Written as `config.toml`; `crispr run --config`
/// replays it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Model as given (`default` for the built-in one).
    pub model: String,
    pub task: String,
    pub retain: Vec<String>,
    pub preset: String,
    pub split_seed: u64,
    pub attribution: AttributionConfig,
    pub search: SearchConfig,
    pub test: TestConfig,
    /// How candidates are ranked and filtered (the default is the paper's global ranking).
    #[serde(default, skip_serializing_if = "SelectionConfig::is_faithful")]
    pub selection: SelectionConfig,
    /// How stages are cut into units of work (see `work.rs`).
    #[serde(default, skip_serializing_if = "Chunks::is_default")]
    pub chunks: Chunks,
    /// Weight precision of every unit of work. Under `bf16` the evaluation choices are re-checked
    /// in f32 (see `recheck_margin`), so they are the f32 engine's; attribution scores, KL values
    /// and therefore the chosen neurons are bf16's own.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// `bf16` only: the top-two gap (nats) below which an evaluation choice is re-scored in f32.
    /// Absent: measured per unit of work (at least 0.1, and 4 × the largest bf16 error on its
    /// first 16 instances); `0`: no re-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_margin: Option<f64>,
}

/// Instances per unit of work. The cut is part of the configuration, never of the executor: a
/// stage's result is the same bytes whether one process or a hundred Slurm tasks compute it, but
/// attribution sums and batched scoring round differently when cut differently, so a run that
/// changes its chunks is a different run. `0` (the default) keeps each (seed, instruction) of
/// attribution and each (task, configuration, instruction) of evaluation in one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunks {
    #[serde(default)]
    pub attribution: usize,
    #[serde(default)]
    pub eval: usize,
}

impl Chunks {
    pub fn is_default(&self) -> bool {
        self == &Chunks::default()
    }
}

/// How the search visits values of n.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchMethod {
    /// Golden-section search (the paper's; two new values per step).
    #[default]
    Golden,
    /// `grid:K`: K values across the bracket at once, then again around the best, so that a
    /// cluster can evaluate them in parallel.
    Grid(usize),
}

impl SearchMethod {
    pub fn is_golden(&self) -> bool {
        *self == SearchMethod::Golden
    }
}

impl std::str::FromStr for SearchMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "golden" => Ok(SearchMethod::Golden),
            _ => match s.strip_prefix("grid:").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 3 => Ok(SearchMethod::Grid(k)),
                Some(Ok(k)) => Err(format!("grid:{k} needs at least 3 values per round")),
                _ => Err(format!("search method {s:?} is unknown (golden, or grid:K with K ≥ 3)")),
            },
        }
    }
}

impl std::fmt::Display for SearchMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchMethod::Golden => f.write_str("golden"),
            SearchMethod::Grid(k) => write!(f, "grid:{k}"),
        }
    }
}

impl Serialize for SearchMethod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SearchMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    /// Dev instances per seed.
    pub samples: usize,
    pub seeds: Vec<u64>,
    /// Use the first this many instructions of the task's set (`0` = all).
    pub instructions: usize,
    pub settings: Settings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub lo: usize,
    pub hi: usize,
    /// Golden-section search stops at a bracket this wide, then sweeps it.
    pub final_width: usize,
    /// Dev instances evaluated per candidate n (`0` = the whole dev split).
    pub dev_limit: usize,
    pub instructions: usize,
    pub seed: u64,
    /// Retention constraint: n is chosen among the values that respect it on dev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<RetentionConstraint>,
    #[serde(default, skip_serializing_if = "SearchMethod::is_golden")]
    pub method: SearchMethod,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Test instances of the target task (`0` = all).
    pub limit: usize,
    pub instructions: usize,
    /// Test instances of each retained task (`0` = all).
    pub retain_limit: usize,
    pub retain_instructions: usize,
    /// Seeds of the random-pruning control.
    pub random_seeds: Vec<u64>,
    pub seed: u64,
}

impl RunConfig {
    /// `quick`: documented subsets that finish in minutes on 2 cores for a 135M model.
    /// `paper`: the paper's protocol (20 dev instances × 10 instructions for attribution, the whole
    /// dev split for the search over [0, 500], the whole test split, 3 random seeds).
    pub fn preset(name: &str, model: &str, task: &str, retain: Vec<String>) -> Result<RunConfig> {
        let base = |attribution, search, test| RunConfig {
            model: model.to_string(),
            task: task.to_string(),
            retain: retain.clone(),
            preset: name.to_string(),
            split_seed: 0,
            attribution,
            search,
            test,
            selection: SelectionConfig::default(),
            chunks: Chunks::default(),
            precision: Precision::F32,
            recheck_margin: None,
        };
        match name {
            "quick" => Ok(base(
                AttributionConfig { samples: 8, seeds: vec![2026], instructions: 3, settings: Settings::default() },
                SearchConfig {
                    lo: 0,
                    hi: 48,
                    final_width: 4,
                    dev_limit: 16,
                    instructions: 2,
                    seed: 0,
                    constraint: None,
                    method: SearchMethod::Golden,
                },
                TestConfig {
                    limit: 32,
                    instructions: 2,
                    // 16 × 2 per retained task, paid for by the packed candidate scoring (at
                    // 8 × 2 one prompt moved a retained task's accuracy by 6.25 points).
                    retain_limit: 16,
                    retain_instructions: 2,
                    random_seeds: vec![1, 2],
                    seed: 0,
                },
            )),
            "paper" => Ok(base(
                AttributionConfig { samples: 20, seeds: vec![2026], instructions: 0, settings: Settings::default() },
                SearchConfig {
                    lo: 0,
                    hi: 500,
                    final_width: 4,
                    dev_limit: 0,
                    instructions: 0,
                    seed: 0,
                    constraint: None,
                    method: SearchMethod::Golden,
                },
                TestConfig {
                    limit: 0,
                    instructions: 0,
                    retain_limit: 0,
                    retain_instructions: 0,
                    random_seeds: vec![1, 2, 3],
                    seed: 0,
                },
            )),
            "retain" => {
                // The paper's attribution, then selection that keeps skills: no rows writing
                // massive-activation dimensions, the retained
                // tasks' top skill neurons protected, and n searched under a retention constraint
                // (no checked skill drops by more than 1 point on dev; KL on neutral prompts).
                let mut cfg = base(
                    AttributionConfig {
                        samples: 20,
                        seeds: vec![2026],
                        instructions: 0,
                        settings: Settings::default(),
                    },
                    SearchConfig {
                        lo: 0,
                        hi: 200,
                        final_width: 4,
                        dev_limit: 40,
                        instructions: 3,
                        seed: 0,
                        constraint: Some(RetentionConstraint {
                            max_drop: Some(1.0),
                            max_kl: Some(0.1),
                            retain_dev_limit: 30,
                            retain_instructions: 2,
                            kl_prompts: 16,
                        }),
                        method: SearchMethod::Golden,
                    },
                    TestConfig {
                        limit: 100,
                        instructions: 10,
                        retain_limit: 30,
                        retain_instructions: 5,
                        random_seeds: vec![1, 2],
                        seed: 0,
                    },
                );
                cfg.selection = SelectionConfig {
                    // Per-module normalisation stays a switch: it was not measured at size.
                    normalize: false,
                    exclude_massive: true,
                    protect: retain.clone(),
                    protect_top: 200,
                    protect_samples: 8,
                    protect_instructions: 2,
                    ablate_top: 0,
                };
                Ok(cfg)
            }
            other => Err(Error::msg(format!("unknown preset {other:?} (quick, paper or retain)"))),
        }
    }

    /// Reject settings that would crash a stage or silently compute something else than asked
    /// (a hand-edited config.toml). Returns the first problem, naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let a = &self.attribution;
        if self.task.trim().is_empty() {
            return Err("task is empty".into());
        }
        if a.samples == 0 {
            return Err("attribution.samples is 0: nothing would be attributed".into());
        }
        if a.seeds.is_empty() {
            return Err("attribution.seeds is empty".into());
        }
        if !a.settings.lambda.is_finite() {
            return Err(format!("attribution.settings.lambda = {} is not a finite number", a.settings.lambda));
        }
        match a.settings.compat.as_deref() {
            None | Some("biasneuron") => {}
            Some(other) => {
                return Err(format!("attribution.settings.compat = {other:?} is unknown (known: biasneuron)"))
            }
        }
        if let Some(m) = self.recheck_margin {
            if self.precision != Precision::Bf16 {
                return Err("recheck_margin applies to precision = \"bf16\" only".into());
            }
            if !m.is_finite() || m < 0.0 {
                return Err(format!("recheck_margin = {m} must be a non-negative number of nats"));
            }
        }
        let s = &self.search;
        if s.lo > s.hi {
            return Err(format!("search.lo = {} is larger than search.hi = {}", s.lo, s.hi));
        }
        if s.final_width == 0 {
            return Err("search.final_width must be at least 1".into());
        }
        let batch = crate::attribution::COMPAT_BATCH;
        if a.settings.is_compat() && !self.chunks.attribution.is_multiple_of(batch) {
            return Err(format!(
                "chunks.attribution = {} must be a multiple of {batch} under compat (the re-release's batches)",
                self.chunks.attribution
            ));
        }
        Ok(())
    }
}
