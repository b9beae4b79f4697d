//! Units of work: the independent pieces a run's stages split into, each computed on its own
//! (in the driver, in a worker process, or in a Slurm array task) into one file of the run
//! directory.
//!
//! A unit carries everything that determines its result (which instances, which instruction,
//! which neurons are pruned), so any process that loads the same model and configuration computes
//! the same bytes. The stages merge the files in a fixed order, and how units are cut depends on
//! the configuration only — never on how many workers there are — so a run's results are
//! bit-identical whatever executes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::attribution::{attribute_skill, attribute_sum, Instance, Scores};
use crate::data::{self, InstructionSet, Task};
use crate::error::{Error, Result};
use crate::evaluate::{evaluate, recheck, recheck_settings, EvalOptions, RecheckReport};
use crate::files::{atomic_write, read_f64_scores, read_json, write_f64_scores};
use crate::loader::LoadedModel;
use crate::metrics::Outcome;
use crate::model::{SiteInfo, Universe};
use crate::precision::Precision;
use crate::prune::{prune, Neuron};
use crate::retention::{mean_kl, neutral_distributions};
use crate::run_config::RunConfig;
use crate::score::encode;

/// Progress reporting, implemented by the command line (bars with ETA).
pub trait Progress {
    fn stage(&mut self, name: &str, total: u64);
    fn tick(&mut self);
    fn note(&mut self, msg: &str);
}

/// One independent piece of a stage. `out` is the unit's result file, relative to the run
/// directory; a unit is done when that file exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Unit {
    /// Attribution of the run's target task: the unnormalised sum over `indices` (dev examples)
    /// under instruction `instruction` of the task's set.
    Attribute { instruction: usize, indices: Vec<usize>, out: String },
    /// Choices of `task` on `indices` under instruction `instruction`, with `neurons` pruned.
    Evaluate { task: String, instruction: usize, indices: Vec<usize>, neurons: Vec<(usize, usize)>, out: String },
    /// Skill (gold-answer) attribution of `task` on `indices` under instruction `instruction`: the
    /// mean over the instances, for protecting that task's skill neurons.
    Skill { task: String, instruction: usize, indices: Vec<usize>, out: String },
    /// Mean KL(original ‖ pruned) over the first `prompts` neutral prompts with `neurons` pruned.
    Kl { prompts: usize, neurons: Vec<(usize, usize)>, out: String },
}

impl Unit {
    pub fn out(&self) -> &str {
        match self {
            Unit::Attribute { out, .. }
            | Unit::Evaluate { out, .. }
            | Unit::Skill { out, .. }
            | Unit::Kl { out, .. } => out,
        }
    }

    /// Scorings (or attribution steps, or forward passes) the unit performs: its progress weight
    /// and the basis of `crispr plan`'s estimates.
    pub fn work(&self) -> usize {
        match self {
            Unit::Attribute { indices, .. } | Unit::Evaluate { indices, .. } | Unit::Skill { indices, .. } => {
                indices.len()
            }
            Unit::Kl { prompts, .. } => 2 * prompts,
        }
    }

    pub fn is_done(&self, dir: &Path) -> bool {
        dir.join(self.out()).is_file()
    }

    /// For messages: what the unit computes.
    pub fn describe(&self) -> String {
        match self {
            Unit::Attribute { instruction, indices, .. } => {
                format!("attribution, instruction {instruction}, {} instances", indices.len())
            }
            Unit::Evaluate { task, instruction, indices, neurons, .. } => format!(
                "evaluation of {task}, instruction {instruction}, {} instances, {} neurons pruned",
                indices.len(),
                neurons.len()
            ),
            Unit::Skill { task, instruction, indices, .. } => {
                format!("skill attribution of {task}, instruction {instruction}, {} instances", indices.len())
            }
            Unit::Kl { neurons, .. } => format!("KL on neutral prompts, {} neurons pruned", neurons.len()),
        }
    }
}

pub fn neuron_pairs(neurons: &[Neuron]) -> Vec<(usize, usize)> {
    neurons.iter().map(|n| (n.site, n.row)).collect()
}

fn neurons_of(pairs: &[(usize, usize)], sites: &[SiteInfo]) -> Result<Vec<Neuron>> {
    pairs
        .iter()
        .map(|&(site, row)| match sites.get(site) {
            Some(s) if row < s.width => Ok(Neuron { site, row }),
            _ => Err(Error::msg(format!("unit names neuron ({site}, {row}), which this model does not have"))),
        })
        .collect()
}

/// `pool` cut into consecutive chunks of `size` (`0`: one chunk).
pub fn chunks(pool: &[usize], size: usize) -> Vec<Vec<usize>> {
    if size == 0 || size >= pool.len() {
        return vec![pool.to_vec()];
    }
    pool.chunks(size).map(<[usize]>::to_vec).collect()
}

/// What a unit needs besides itself: the model, the run's configuration and its data.
pub struct Workspace<'a> {
    pub dir: &'a Path,
    pub cfg: &'a RunConfig,
    pub data_dir: &'a Path,
    pub loaded: &'a mut LoadedModel,
    tasks: BTreeMap<String, (Task, InstructionSet)>,
    /// The model in f32 for re-checking bf16 choices, loaded when first needed.
    reference: Option<LoadedModel>,
}

impl<'a> Workspace<'a> {
    pub fn new(dir: &'a Path, cfg: &'a RunConfig, data_dir: &'a Path, loaded: &'a mut LoadedModel) -> Self {
        Workspace { dir, cfg, data_dir, loaded, tasks: BTreeMap::new(), reference: None }
    }

    /// A task and its full default instruction set (loaded once).
    fn task(&mut self, name: &str) -> Result<&(Task, InstructionSet)> {
        if !self.tasks.contains_key(name) {
            let task = data::load_task(name, self.data_dir)?;
            let set = data::default_instructions(&task, self.data_dir)?;
            self.tasks.insert(name.to_string(), (task, set));
        }
        Ok(&self.tasks[name])
    }

    /// `indices` of `task` under its instruction `k`, tokenised.
    fn instances(&mut self, name: &str, k: usize, indices: &[usize]) -> Result<Vec<Instance>> {
        let style = self.loaded.prompt_style(false);
        self.task(name)?;
        let (task, set) = &self.tasks[name];
        let ins = instruction_at(set, k)?;
        indices
            .iter()
            .map(|&i| {
                let p = ins.render(example(task, i)?)?;
                let enc = encode(&self.loaded.text, style, &p.text, &p.candidates)?;
                Ok(Instance { prompt: enc.prompt, candidates: enc.candidates, gold: p.label })
            })
            .collect()
    }

    /// Compute `unit` and write its result file (atomically). `tick` is called once per unit of
    /// [`Unit::work`].
    pub fn compute(&mut self, unit: &Unit, tick: &mut dyn FnMut()) -> Result<()> {
        let path = self.dir.join(unit.out());
        match unit {
            Unit::Attribute { instruction, indices, .. } => {
                let target = self.cfg.task.clone();
                let instances = self.instances(&target, *instruction, indices)?;
                let settings = &self.cfg.attribution.settings;
                let sum = attribute_sum(self.loaded.model.as_ref(), &instances, settings, &mut |_| tick());
                write_f64_scores(&path, self.loaded.model.sites(), &sum)
            }
            Unit::Skill { task, instruction, indices, .. } => {
                let instances = self.instances(task, *instruction, indices)?;
                let skill = attribute_skill(self.loaded.model.as_ref(), &instances, &self.cfg.attribution.settings);
                for _ in 0..instances.len() {
                    tick();
                }
                write_f64_scores(&path, self.loaded.model.sites(), &skill)
            }
            Unit::Evaluate { task: name, instruction, indices, neurons, .. } => {
                let neurons = neurons_of(neurons, self.loaded.model.sites())?;
                self.task(name)?;
                let (task, set) = &self.tasks[name.as_str()];
                if let Some(&i) = indices.iter().find(|&&i| i >= task.examples.len()) {
                    return Err(Error::msg(format!("{name} has no example {i}")));
                }
                let one =
                    InstructionSet { name: set.name.clone(), items: vec![instruction_at(set, *instruction)?.clone()] };
                let pruned = prune(self.loaded.model.as_mut(), &neurons);
                let result = evaluate(self.loaded, task, &one, indices, &EvalOptions::default(), &mut *tick);
                pruned.restore(self.loaded.model.as_mut());
                let mut result = result?;
                let report = match (self.cfg.precision, self.cfg.recheck_margin) {
                    (Precision::F32, _) | (Precision::Bf16, Some(0.0)) => None,
                    (Precision::Bf16, margin) => {
                        // The same choices as the f32 engine: close calls scored again in f32,
                        // on a reference pruned like the bf16 model.
                        let reference = f32_reference(&mut self.reference, self.loaded.format.path())?;
                        let pruned = prune(reference.model.as_mut(), &neurons);
                        let (floor, calibrate) = recheck_settings(margin);
                        let opts = EvalOptions::default();
                        let report = recheck(&mut result, reference, task, &one, indices, &opts, floor, calibrate);
                        pruned.restore(reference.model.as_mut());
                        Some(report?)
                    }
                };
                let outcomes: Vec<Outcome> = result.into_iter().flat_map(|(_, o)| o).collect();
                let mut doc = json!({ "outcomes": outcomes });
                if let Some(r) = report {
                    doc["recheck"] = json!(r);
                }
                write_json(&path, &doc)
            }
            Unit::Kl { prompts, neurons, .. } => {
                let neurons = neurons_of(neurons, self.loaded.model.sites())?;
                let reference = neutral_distributions(self.loaded, *prompts)?;
                for _ in 0..*prompts {
                    tick();
                }
                let pruned = prune(self.loaded.model.as_mut(), &neurons);
                let kl = mean_kl(self.loaded, &reference);
                pruned.restore(self.loaded.model.as_mut());
                for _ in 0..*prompts {
                    tick();
                }
                write_json(&path, &json!({ "kl": kl? }))
            }
        }
    }
}

/// The f32 copy of the model at `path`, loaded into `slot` on first use (after the same memory
/// check as every load: with the bf16 model already resident, a model too large for both fails
/// here, with the numbers).
fn f32_reference<'r>(slot: &'r mut Option<LoadedModel>, path: &Path) -> Result<&'r mut LoadedModel> {
    if slot.is_none() {
        let reference = crate::loader::load_checked(path, Precision::F32).map_err(|e| {
            Error::msg(format!(
                "loading the f32 model to re-check bf16 choices: {e} (recheck_margin = 0 in config.toml, or \
                 --recheck-margin 0, skips the re-check)"
            ))
        })?;
        *slot = Some(reference);
    }
    Ok(slot.as_mut().expect("loaded above"))
}

fn instruction_at(set: &InstructionSet, k: usize) -> Result<&crate::data::Instruction> {
    set.items.get(k).ok_or_else(|| Error::msg(format!("instruction set {} has no instruction {k}", set.name)))
}

fn example(task: &Task, i: usize) -> Result<&crate::data::Example> {
    task.examples.get(i).ok_or_else(|| Error::msg(format!("{} has no example {i}", task.name)))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string(v).map_err(|e| Error::msg(e.to_string()))?;
    atomic_write(path, text.as_bytes())
}

/// The outcomes an [`Unit::Evaluate`] wrote.
pub fn read_outcomes(dir: &Path, unit: &Unit) -> Result<Vec<Outcome>> {
    let path = dir.join(unit.out());
    let v = read_json(&path)?;
    serde_json::from_value(v["outcomes"].clone()).map_err(|e| Error::format(&path, format!("bad outcomes: {e}")))
}

/// The re-check recorded in `path`, when it is the result of an [`Unit::Evaluate`] of a bf16
/// run (`None` for any other file).
pub fn read_recheck(path: &Path) -> Result<Option<RecheckReport>> {
    let v = read_json(path)?;
    match (v.get("outcomes"), v.get("recheck")) {
        (Some(_), Some(r)) => serde_json::from_value(r.clone())
            .map(Some)
            .map_err(|e| Error::format(path, format!("bad recheck record: {e}"))),
        _ => Ok(None),
    }
}

/// The divergence a [`Unit::Kl`] wrote.
pub fn read_kl(dir: &Path, unit: &Unit) -> Result<f64> {
    let path = dir.join(unit.out());
    read_json(&path)?["kl"].as_f64().ok_or_else(|| Error::format(&path, "no kl value"))
}

/// The sum an [`Unit::Attribute`] (or the mean a [`Unit::Skill`]) wrote.
pub fn read_attribution(dir: &Path, unit: &Unit, sites: &[SiteInfo], universe: Universe) -> Result<Scores> {
    read_f64_scores(&dir.join(unit.out()), sites, universe)
}

/// The file a batch of units is handed to worker processes in.
pub fn write_units(path: &Path, units: &[Unit]) -> Result<()> {
    let text = serde_json::to_string(units).map_err(|e| Error::msg(e.to_string()))?;
    atomic_write(path, text.as_bytes())
}

pub fn read_units(path: &Path) -> Result<Vec<Unit>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a list of units: {e}")))
}

/// What a worker process needs to rebuild the driver's workspace: written by the driver into
/// `jobs/worker.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSetup {
    /// The resolved model (a local file or folder).
    pub model: PathBuf,
    pub data_dir: PathBuf,
}

pub const JOBS_DIR: &str = "jobs";
pub const WORKER_SETUP: &str = "jobs/worker.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_depends_on_the_size_only() {
        let pool: Vec<usize> = (10..17).collect();
        assert_eq!(chunks(&pool, 0), vec![pool.clone()]);
        assert_eq!(chunks(&pool, 3), vec![vec![10, 11, 12], vec![13, 14, 15], vec![16]]);
        assert_eq!(chunks(&pool, 7), vec![pool.clone()]);
    }

    #[test]
    fn units_round_trip_through_json() {
        let u = vec![
            Unit::Attribute { instruction: 2, indices: vec![1, 5], out: "a".into() },
            Unit::Evaluate {
                task: "bbq:Age".into(),
                instruction: 0,
                indices: vec![3],
                neurons: vec![(1, 2)],
                out: "b".into(),
            },
            Unit::Kl { prompts: 4, neurons: vec![], out: "c".into() },
        ];
        let text = serde_json::to_string(&u).unwrap();
        let back: Vec<Unit> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, u);
        assert_eq!(u[2].work(), 8);
    }
}
