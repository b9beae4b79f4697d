//! `crispr run`: the whole job. Attribute on a dev sample, choose the number of pruned neurons
//! on dev, evaluate the original model, the CRISPR-pruned model and a random-pruning control on
//! test (target task and every retained task), export the pruned model, and report.
//!
//! Every stage's result is cached in the run directory as soon as it is complete (atomically), so
//! a killed run resumed with the same configuration skips finished work; every computation is
//! deterministic, so the resumed run's results equal an uninterrupted one's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::attribution::{combine, instruction_score, Scores};
use crate::data::{self, split::sample_indices, split_indices, InstructionSet, Split, Task};
use crate::diagnostics::{probe, ActivationStats};
use crate::error::{Error, Result};
use crate::evaluate::{Evaluation, Mode, RecheckReport};
use crate::executor::{Executor, InProcess};
use crate::export::{write_pruned, RowsByModule};
use crate::files::{atomic_write, read_f64_scores, write_f64_scores, write_scores};
use crate::loader::{LoadedModel, ModelFormat};
use crate::metrics::{instruction_metrics, metrics_json, summarize, Outcome};
use crate::provenance::attribution_metadata;
use crate::prune::{prune, random_neurons, Neuron};
use crate::retention::{mean_kl, neutral_distributions, RetentionConstraint};
use crate::score::encode;
use crate::selection::{rank_candidates, top_skill_neurons, Excluded};
use crate::verdict::{judge, means, paired_deltas, Outcomes, TaskDeltas, Verdict};
use crate::work::{
    chunks, neuron_pairs, read_attribution, read_kl, read_outcomes, read_recheck, Unit, WorkerSetup, Workspace,
    WORKER_SETUP,
};

pub use crate::run_config::{AttributionConfig, Chunks, RunConfig, SearchConfig, SearchMethod, TestConfig};
pub use crate::work::Progress;

/// Results of a run (the content of `metrics.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub config: RunConfig,
    pub model: Value,
    pub n_selected: usize,
    /// Every n the search evaluated, with dev accuracy (mean over instructions).
    pub search: Vec<(usize, f64)>,
    /// Per task: `original`, `crispr`, `random` (one metrics.json document per random seed).
    pub tasks: BTreeMap<String, TaskResults>,
    pub bias_neurons: Vec<crate::files::RankedNeuron>,
    /// The pruned model's file or directory name inside the run directory.
    pub pruned_model: String,
    /// Wall-clock seconds per stage (for the report; kept in `timings.json`, not in
    /// `metrics.json`, whose bytes depend on the inputs only).
    #[serde(skip_serializing, default)]
    pub seconds: BTreeMap<String, f64>,
    /// Retention measures at every n the search evaluated (constrained searches only).
    #[serde(default)]
    pub search_points: Vec<SearchPoint>,
    /// What the activation probe found, and what it means for the pruned neurons.
    #[serde(default)]
    pub diagnostics: Option<Diagnostics>,
    /// Neurons left out of the candidates, by reason.
    #[serde(default)]
    pub excluded: BTreeMap<String, usize>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// bf16 runs: the re-check of evaluation choices in f32, over every evaluation unit (counts
    /// added up; `margin` is the largest a unit used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck: Option<RecheckReport>,
}

/// One evaluated n of the search: the target's dev accuracy and, under a retention constraint,
/// every measure the constraint checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchPoint {
    pub n: usize,
    /// Target dev accuracy (mean over instructions, ×100).
    pub acc: f64,
    /// BBQ: the target's disambiguated dev accuracy.
    pub acc_disambig: Option<f64>,
    /// Retained tasks' dev accuracy.
    pub retained: BTreeMap<String, f64>,
    /// Mean KL(original ‖ pruned) on the neutral prompts.
    pub kl: Option<f64>,
    /// Whether this n respects the constraint (against n = lo, the unpruned model).
    pub feasible: bool,
}

/// The activation probe's findings about the pruned neurons.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Massive residual dimensions (per stack) with their largest |value|.
    pub massive: BTreeMap<String, BTreeMap<usize, f64>>,
    pub median: BTreeMap<String, f64>,
    pub prompts: usize,
    /// Per pruned neuron (in rank order): its output size relative to its module's median row,
    /// and whether it writes a massive dimension.
    pub pruned: Vec<NeuronDiagnostics>,
    /// One sentence for the report.
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NeuronDiagnostics {
    pub id: String,
    pub relative_magnitude: Option<f64>,
    pub writes_massive: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResults {
    pub original: Value,
    pub crispr: Value,
    pub random: Vec<Value>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
    atomic_write(path, text.as_bytes())
}

fn first_k(set: &InstructionSet, k: usize) -> InstructionSet {
    let items = if k == 0 { set.items.clone() } else { set.items.iter().take(k).cloned().collect() };
    InstructionSet { name: set.name.clone(), items }
}

fn subset(pool: Vec<usize>, limit: usize, seed: u64) -> Vec<usize> {
    if limit == 0 || limit >= pool.len() {
        pool
    } else {
        sample_indices(&pool, limit, seed)
    }
}

struct Env<'a> {
    dir: &'a Path,
    cfg: &'a RunConfig,
    data_dir: PathBuf,
    progress: &'a mut dyn Progress,
    executor: &'a mut dyn Executor,
}

/// Run (or resume) the job described by `cfg` in `dir` on the already loaded model, computing
/// every unit of work in this process.
pub fn run(
    cfg: &RunConfig,
    loaded: &mut LoadedModel,
    dir: &Path,
    data_dir: PathBuf,
    progress: &mut dyn Progress,
) -> Result<RunResult> {
    run_with(cfg, loaded, dir, data_dir, progress, &mut InProcess)
}

/// [`run`] with the units of attribution, search and test computed by `executor`. The results
/// are the same bytes whatever the executor.
pub fn run_with(
    cfg: &RunConfig,
    loaded: &mut LoadedModel,
    dir: &Path,
    data_dir: PathBuf,
    progress: &mut dyn Progress,
    executor: &mut dyn Executor,
) -> Result<RunResult> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg_path = dir.join("config.toml");
    let cfg_text = toml::to_string_pretty(cfg).map_err(|e| Error::msg(format!("config: {e}")))?;
    match std::fs::read_to_string(&cfg_path) {
        Ok(existing) => {
            let old: RunConfig = toml::from_str(&existing)
                .map_err(|e| Error::format(&cfg_path, format!("invalid run configuration: {e}")))?;
            if &old != cfg {
                return Err(Error::format(
                    &cfg_path,
                    "this directory holds a run with different settings; resume it with `crispr run --config` or choose another --out",
                ));
            }
            progress.note(&format!("resuming the run in {}", dir.display()));
        }
        Err(_) => atomic_write(&cfg_path, cfg_text.as_bytes())?,
    }
    // What worker processes need to load the same model and data.
    let setup = WorkerSetup {
        model: std::path::absolute(loaded.format.path()).map_err(|e| Error::io(loaded.format.path(), e))?,
        data_dir: std::path::absolute(&data_dir).map_err(|e| Error::io(&data_dir, e))?,
    };
    write_json(&dir.join(WORKER_SETUP), &json!(setup))?;
    let mut env = Env { dir, cfg, data_dir, progress, executor };
    let mut seconds = Timings::load(&env.dir.join("timings.json"));
    let task = data::load_task(&cfg.task, &env.data_dir)?;
    let set = data::default_instructions(&task, &env.data_dir)?;

    let t = std::time::Instant::now();
    let scores = attribution_stage(&mut env, loaded, &task, &set)?;
    seconds.add("attribution", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let stats = diagnostics_stage(&mut env, loaded, &task, &set)?;
    let protected = protect_stage(&mut env, loaded)?;
    let (mut ranked, excluded_list) =
        rank_candidates(&scores, loaded.model.sites(), &cfg.selection, Some(&stats), &protected);
    let ablation_rejected = if cfg.selection.ablate_top > 0 {
        let (kept, rejected) = ablation_stage(&mut env, loaded, &task, &set, &ranked)?;
        ranked = kept;
        rejected
    } else {
        0
    };
    let mut excluded = BTreeMap::new();
    for (_, why) in &excluded_list {
        let key = match why {
            Excluded::MassiveActivation => "massive-activation",
            Excluded::Protected => "protected",
        };
        *excluded.entry(key.to_string()).or_insert(0) += 1;
    }
    if ablation_rejected > 0 {
        excluded.insert("ablation".to_string(), ablation_rejected);
    }
    seconds.add("selection", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let (n_selected, points) = search_stage(&mut env, loaded, &ranked)?;
    let search: Vec<(usize, f64)> = points.iter().map(|p| (p.n, p.acc)).collect();
    seconds.add("search", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let mut tasks = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let crispr_neurons = &ranked[..n_selected.min(ranked.len())];
    for (name, (res, outs)) in test_stage(&mut env, loaded, crispr_neurons, scores.universe)? {
        tasks.insert(name.clone(), res);
        outcomes.insert(name, outs);
    }
    seconds.add("test", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let pruned_model = export_stage(&mut env, loaded, crispr_neurons)?;
    seconds.add("export", t.elapsed().as_secs_f64())?;

    let sites = loaded.model.sites();
    let bias_neurons: Vec<crate::files::RankedNeuron> = crispr_neurons
        .iter()
        .map(|n| {
            let module = sites[n.site].name.clone();
            crate::files::RankedNeuron {
                id: format!("{module}:{}", n.row),
                module,
                row: n.row,
                score: scores.per_site[n.site][n.row],
            }
        })
        .collect();
    let diagnostics = Some(describe_pruned(&stats, sites, crispr_neurons));
    let verdict = build_verdict(&env, &outcomes, n_selected)?;
    let model = {
        let mut m = loaded.model.describe();
        if let Some(o) = m.as_object_mut() {
            o.insert("path".into(), json!(loaded.format.path().display().to_string()));
            o.insert("name".into(), json!(display_model_name(&cfg.model)));
            let (linear, ffn) = crate::model::universe_sizes(sites);
            o.insert("universe".into(), json!({"linear": linear, "ffn": ffn}));
        }
        m
    };
    let seconds = seconds.seconds;
    let recheck = collect_rechecks(env.dir)?;
    Ok(RunResult {
        config: cfg.clone(),
        model,
        n_selected,
        search,
        tasks,
        bias_neurons,
        pruned_model,
        seconds,
        search_points: if cfg.search.constraint.is_some() { points } else { Vec::new() },
        diagnostics,
        excluded,
        verdict,
        recheck,
    })
}

/// The model as the user named it (`default` is the built-in model).
pub fn display_model_name(model: &str) -> String {
    if model == "default" {
        format!("{} (default)", crate::resolve::DefaultModel::NAME)
    } else {
        model.to_string()
    }
}

/// Wall-clock seconds per stage, summed over every invocation that worked on the run and kept in
/// `timings.json`, so that a resumed run reports the time its work took rather than the moment it
/// took to find that work cached.
struct Timings {
    path: PathBuf,
    seconds: BTreeMap<String, f64>,
}

impl Timings {
    fn load(path: &Path) -> Timings {
        // A missing or unreadable file only loses earlier timings, never results: start afresh.
        let seconds = read_json(path).and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
        Timings { path: path.to_path_buf(), seconds }
    }

    fn add(&mut self, stage: &str, secs: f64) -> Result<()> {
        *self.seconds.entry(stage.to_string()).or_insert(0.0) += secs;
        write_json(&self.path, &json!(self.seconds))
    }
}

/// Hand `units` to the run's executor.
fn run_units(env: &mut Env<'_>, loaded: &mut LoadedModel, stage: &str, units: &[Unit]) -> Result<()> {
    let Env { dir, cfg, data_dir, progress, executor } = env;
    let mut ws = Workspace::new(dir, cfg, data_dir, loaded);
    executor.run(stage, units, &mut ws, &mut **progress)
}

/// The re-checks of every evaluation unit in the run directory (search and test), added up in
/// path order — from the files, so that a resumed run counts the units an earlier invocation
/// computed.
fn collect_rechecks(dir: &Path) -> Result<Option<RecheckReport>> {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(path) else { return Ok(()) };
        for entry in entries {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            if p.is_dir() {
                walk(&p, files)?;
            } else if p.extension().is_some_and(|e| e == "json") {
                files.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for stage in ["search", "eval"] {
        walk(&dir.join(stage), &mut files)?;
    }
    files.sort();
    let mut total: Option<RecheckReport> = None;
    for f in files {
        if let Some(r) = read_recheck(&f)? {
            total.get_or_insert_with(RecheckReport::default).absorb(&r);
        }
    }
    Ok(total)
}

/// A task name as a folder name.
fn slug(task: &str) -> String {
    task.replace([':', '/'], "_")
}

/// Attribution on the dev sample: one unit per (seed, instruction, chunk of instances), each an
/// unnormalised f64 sum in `attribution/partial/`; the parts of an instruction are added in order
/// and divided by its instance count, then averaged over instructions and seeds.
fn attribution_stage(env: &mut Env<'_>, loaded: &mut LoadedModel, task: &Task, set: &InstructionSet) -> Result<Scores> {
    let cfg = env.cfg.attribution.clone();
    let out = env.dir.join("attribution");
    let set = first_k(set, cfg.instructions);
    let dev = split_indices(task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
    if cfg.samples > dev.len() {
        return Err(Error::msg(format!(
            "{} has {} dev instances, fewer than the {} to attribute",
            task.name,
            dev.len(),
            cfg.samples
        )));
    }
    let mut units = Vec::new();
    // Per seed: per instruction, the range of its units and its instance count.
    let mut groups: Vec<Vec<(std::ops::Range<usize>, usize)>> = Vec::new();
    for &seed in &cfg.seeds {
        let indices = sample_indices(&dev, cfg.samples, seed);
        let mut per_instruction = Vec::new();
        for k in 0..set.items.len() {
            let start = units.len();
            for (c, part) in chunks(&indices, env.cfg.chunks.attribution).into_iter().enumerate() {
                units.push(Unit::Attribute {
                    instruction: k,
                    indices: part,
                    out: format!("attribution/partial/seed{seed}-instruction{k}-part{c}.safetensors"),
                });
            }
            per_instruction.push((start..units.len(), indices.len()));
        }
        groups.push(per_instruction);
    }
    run_units(env, loaded, "attribution", &units)?;
    let sites = loaded.model.sites();
    let universe = cfg.settings.universe;
    let mut per_seed = Vec::new();
    for per_instruction in groups {
        let mut scores = Vec::new();
        for (range, n) in per_instruction {
            let parts = units[range]
                .iter()
                .map(|u| read_attribution(env.dir, u, sites, universe))
                .collect::<Result<Vec<_>>>()?;
            scores.push(instruction_score(parts, n).ok_or_else(|| Error::msg("an instruction without units"))?);
        }
        per_seed.push(scores);
    }
    let scores = combine(per_seed).ok_or_else(|| Error::msg("no attribution seeds or instructions"))?;
    let samples: Vec<(u64, Vec<usize>)> =
        cfg.seeds.iter().map(|&s| (s, sample_indices(&dev, cfg.samples, s))).collect();
    let meta = attribution_metadata(loaded, task, &set, &cfg.settings, env.cfg.split_seed, &samples);
    write_scores(&out, sites, &scores, meta, 1000)?;
    Ok(scores)
}

/// Units that evaluate `task` under its instructions `0..k` on `indices` with `neurons` pruned,
/// written under `prefix` (one per instruction and chunk of instances).
fn eval_units(env: &Env<'_>, task: &str, k: usize, indices: &[usize], neurons: &[Neuron], prefix: &str) -> Vec<Unit> {
    let pairs = neuron_pairs(neurons);
    let mut units = Vec::new();
    for i in 0..k {
        for (c, part) in chunks(indices, env.cfg.chunks.eval).into_iter().enumerate() {
            units.push(Unit::Evaluate {
                task: task.to_string(),
                instruction: i,
                indices: part,
                neurons: pairs.clone(),
                out: format!("{prefix}/i{i}-c{c}.json"),
            });
        }
    }
    units
}

/// The evaluation that `units` (from [`eval_units`], all done) make up, as [`evaluate`] returns it.
fn merge_eval(dir: &Path, task: &Task, set: &InstructionSet, units: &[Unit]) -> Result<Evaluation> {
    let mut out: Vec<Vec<Outcome>> = vec![Vec::new(); set.items.len()];
    for unit in units {
        if let Unit::Evaluate { instruction, .. } = unit {
            let slot = out.get_mut(*instruction).ok_or_else(|| Error::msg("unit outside the instruction set"))?;
            slot.extend(read_outcomes(dir, unit)?);
        }
    }
    Ok(set.items.iter().zip(out).map(|(ins, o)| (instruction_metrics(task, &ins.id, &o), o)).collect())
}

/// Mean accuracy over instructions, and the mean disambiguated accuracy where the task has one.
fn mean_accuracy(result: &Evaluation) -> (f64, Option<f64>) {
    let k = result.len().max(1) as f64;
    let acc = result.iter().map(|(m, _)| m.acc).sum::<f64>() / k;
    let dis: Vec<f64> = result.iter().filter_map(|(m, _)| m.acc_disambig).collect();
    let disambig = (!dis.is_empty()).then(|| dis.iter().sum::<f64>() / dis.len() as f64);
    (acc, disambig)
}

/// One task evaluated on dev during the search.
struct DevTask {
    name: String,
    task: Task,
    set: InstructionSet,
    indices: Vec<usize>,
}

impl DevTask {
    fn new(env: &Env<'_>, name: &str, instructions: usize, limit: usize, seed: u64) -> Result<DevTask> {
        let task = data::load_task(name, &env.data_dir)?;
        let set = first_k(&data::default_instructions(&task, &env.data_dir)?, instructions);
        let dev = split_indices(&task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
        Ok(DevTask { name: name.to_string(), task, indices: subset(dev, limit, seed), set })
    }

    fn units(&self, env: &Env<'_>, n: usize, neurons: &[Neuron]) -> Vec<Unit> {
        let prefix = format!("search/n{n}/{}", slug(&self.name));
        eval_units(env, &self.name, self.set.items.len(), &self.indices, neurons, &prefix)
    }
}

/// Evaluates values of n on dev (the target and, under a retention constraint, every measure the
/// constraint checks), a batch at a time, remembering every point in `search.json`.
struct Searcher {
    target: DevTask,
    constraint: Option<RetentionConstraint>,
    /// Retained tasks (when the constraint bounds their drop).
    retained: Vec<DevTask>,
    memo: BTreeMap<usize, SearchPoint>,
    path: PathBuf,
}

impl Searcher {
    fn new(env: &Env<'_>, target: DevTask) -> Result<Searcher> {
        let constraint = env.cfg.search.constraint.clone();
        let mut retained = Vec::new();
        if let Some(c) = constraint.as_ref().filter(|c| c.max_drop.is_some()) {
            for name in &env.cfg.retain {
                retained.push(DevTask::new(env, name, c.retain_instructions, c.retain_dev_limit, env.cfg.search.seed)?);
            }
        }
        let path = env.dir.join("search.json");
        let memo = read_json(&path)
            .and_then(|v| serde_json::from_value::<Vec<SearchPoint>>(v).ok())
            .map(|v| v.into_iter().map(|p| (p.n, p)).collect())
            .unwrap_or_default();
        Ok(Searcher { target, constraint, retained, memo, path })
    }

    /// The points of `ns` (evaluating, in one batch of units, those not seen before).
    fn points(
        &mut self,
        env: &mut Env<'_>,
        loaded: &mut LoadedModel,
        ranked: &[Neuron],
        ns: &[usize],
    ) -> Result<Vec<SearchPoint>> {
        let mut todo: Vec<usize> = ns.iter().copied().filter(|n| !self.memo.contains_key(n)).collect();
        todo.sort_unstable();
        todo.dedup();
        if !todo.is_empty() {
            // Per n: target units, retained units per task, KL unit.
            let mut plan = Vec::new();
            let mut all = Vec::new();
            for &n in &todo {
                let neurons = &ranked[..n];
                let target = self.target.units(env, n, neurons);
                let retained: Vec<Vec<Unit>> = self.retained.iter().map(|t| t.units(env, n, neurons)).collect();
                let kl = self.constraint.as_ref().and_then(|c| c.max_kl.map(|_| c.kl_prompts)).map(|prompts| {
                    Unit::Kl { prompts, neurons: neuron_pairs(neurons), out: format!("search/n{n}/kl.json") }
                });
                all.extend(target.iter().cloned());
                all.extend(retained.iter().flatten().cloned());
                all.extend(kl.iter().cloned());
                plan.push((n, target, retained, kl));
            }
            let label = todo.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            run_units(env, loaded, &format!("search n={label}"), &all)?;
            for (n, target, retained, kl) in plan {
                let (acc, acc_disambig) =
                    mean_accuracy(&merge_eval(env.dir, &self.target.task, &self.target.set, &target)?);
                let mut accs = BTreeMap::new();
                for (t, units) in self.retained.iter().zip(&retained) {
                    accs.insert(t.name.clone(), mean_accuracy(&merge_eval(env.dir, &t.task, &t.set, units)?).0);
                }
                let kl = kl.map(|u| read_kl(env.dir, &u)).transpose()?;
                self.memo.insert(n, SearchPoint { n, acc, acc_disambig, retained: accs, kl, feasible: true });
            }
            let list: Vec<&SearchPoint> = self.memo.values().collect();
            write_json(&self.path, &json!(list))?;
        }
        Ok(ns.iter().map(|n| self.memo[n].clone()).collect())
    }

    /// How far `p` exceeds the constraint relative to its limits (0: feasible).
    fn violation(&self, p: &SearchPoint, base: &SearchPoint) -> f64 {
        let Some(c) = &self.constraint else { return 0.0 };
        let mut v: f64 = 0.0;
        if let Some(eps) = c.max_drop {
            let eps_scale = eps.max(0.5);
            for (name, acc) in &p.retained {
                if let Some(b) = base.retained.get(name) {
                    v = v.max((b - acc - eps) / eps_scale);
                }
            }
            if let (Some(d), Some(b)) = (p.acc_disambig, base.acc_disambig) {
                v = v.max((b - d - eps) / eps_scale);
            }
        }
        if let (Some(delta), Some(kl)) = (c.max_kl, p.kl) {
            v = v.max((kl - delta) / delta.max(1e-6));
        }
        v.max(0.0)
    }
}

/// Golden-section search for the best n on dev (or `grid:K`: K values at once, then K around the
/// best), then a sweep of the final bracket. Under a retention constraint, an n that breaks it
/// scores below every n that keeps it (worse the more it breaks it), so the search moves back
/// into the feasible range, and the chosen n is the best *feasible* one evaluated — n = 0 always
/// is. Every evaluated n is cached in `search.json`.
fn search_stage(env: &mut Env<'_>, loaded: &mut LoadedModel, ranked: &[Neuron]) -> Result<(usize, Vec<SearchPoint>)> {
    let cfg = env.cfg.search.clone();
    if cfg.lo > cfg.hi {
        return Err(Error::msg(format!("search range [{}, {}] is empty (lo > hi)", cfg.lo, cfg.hi)));
    }
    let target = DevTask::new(env, &env.cfg.task, cfg.instructions, cfg.dev_limit, cfg.seed)?;
    let mut searcher = Searcher::new(env, target)?;
    let hi = cfg.hi.min(ranked.len());
    let lo = cfg.lo.min(hi);
    let constrained = cfg.constraint.is_some();
    // The unpruned model is the constraint's reference (and always feasible).
    let base = if constrained { Some(searcher.points(env, loaded, ranked, &[0])?.remove(0)) } else { None };
    let judge = |s: &Searcher, p: &SearchPoint| -> (bool, f64) {
        match &base {
            Some(base) => {
                let v = s.violation(p, base);
                (v == 0.0, if v == 0.0 { p.acc } else { -1000.0 - v })
            }
            None => (true, p.acc),
        }
    };
    // (feasible, value to maximise) of each n.
    let mut f = |env: &mut Env<'_>, loaded: &mut LoadedModel, ns: &[usize]| -> Result<Vec<(bool, f64)>> {
        let pts = searcher.points(env, loaded, ranked, ns)?;
        Ok(pts.iter().map(|p| judge(&searcher, p)).collect())
    };
    // Pruning the fewest neurons allowed (normally none) is always a candidate: if no n helps on
    // dev the run keeps the original.
    f(env, loaded, &[lo])?;
    // Under a constraint, first find where it starts to break: how far a model moves is not
    // monotone in n from one neuron to the next, so a search on the penalised objective alone can
    // wander away from the feasible range near lo. A doubling ladder (lo+1, lo+2, lo+4, …) stops
    // at the first n that breaks the constraint, and the search then runs below it.
    let mut upper = hi;
    if constrained {
        let mut step = 1;
        while lo + step < hi {
            let n = lo + step;
            if !f(env, loaded, &[n])?[0].0 {
                upper = n;
                break;
            }
            step *= 2;
        }
    }
    let (mut a, mut b) = (lo, upper);
    let width = cfg.final_width.max(2);
    match cfg.method {
        SearchMethod::Golden => {
            let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
            while b - a > width {
                let span = (b - a) as f64;
                let c = b - (span * inv_phi).round() as usize;
                let d = a + (span * inv_phi).round() as usize;
                let (c, d) = if c < d { (c, d) } else { (a + (b - a) / 3, b - (b - a) / 3) };
                let v = f(env, loaded, &[c, d])?;
                // Ties keep the smaller n (fewer neurons pruned).
                if v[0].1 >= v[1].1 {
                    b = d;
                } else {
                    a = c;
                }
            }
        }
        SearchMethod::Grid(k) => {
            while b - a > width {
                let mut grid: Vec<usize> =
                    (0..k).map(|i| a + ((b - a) as f64 * i as f64 / (k - 1) as f64).round() as usize).collect();
                grid.dedup();
                let v = f(env, loaded, &grid)?;
                // The best value; ties keep the smaller n.
                let j = (0..grid.len()).fold(0, |best, i| if v[i].1 > v[best].1 { i } else { best });
                let (na, nb) = (grid[j.saturating_sub(1)], grid[(j + 1).min(grid.len() - 1)]);
                if (na, nb) == (a, b) {
                    break;
                }
                (a, b) = (na, nb);
            }
        }
    }
    f(env, loaded, &(a..=b).collect::<Vec<_>>())?;
    // The best feasible n of everything evaluated; ties keep the smaller n.
    let mut points: Vec<SearchPoint> = searcher.memo.values().cloned().collect();
    for p in &mut points {
        p.feasible = judge(&searcher, p).0;
    }
    // The cache was written as points came in, before any was judged: store the verdicts too.
    write_json(&searcher.path, &json!(points))?;
    let best = points
        .iter()
        .filter(|p| p.feasible && p.n >= lo && p.n <= hi)
        .fold(None::<&SearchPoint>, |best, p| match best {
            Some(b) if b.acc >= p.acc => Some(b),
            _ => Some(p),
        })
        .map_or(0, |p| p.n);
    let acc = points.iter().find(|p| p.n == best).map_or(f64::NAN, |p| p.acc);
    env.progress.note(&format!("chose n = {best} (dev accuracy {acc:.2})"));
    Ok((best, points))
}

/// Outcomes of every configuration of one task (`original`, `crispr`, `random-seed<S>`), where
/// the cached evaluation kept them.
type TaskOutcomes = BTreeMap<String, Outcomes>;

/// Original, CRISPR and random-control evaluations of every task (target and retained) on its
/// test split: all their units in one batch, then one document per configuration, cached in
/// `eval/<task>/<config>.json` with every choice (for paired comparisons).
fn test_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    crispr_neurons: &[Neuron],
    universe: crate::model::Universe,
) -> Result<BTreeMap<String, (TaskResults, TaskOutcomes)>> {
    let cfg = env.cfg.test.clone();
    let mut targets = vec![(env.cfg.task.clone(), cfg.limit, cfg.instructions)];
    targets.extend(env.cfg.retain.iter().map(|r| (r.clone(), cfg.retain_limit, cfg.retain_instructions)));
    let mut configs: Vec<(String, Vec<Neuron>)> =
        vec![("original".into(), vec![]), ("crispr".into(), crispr_neurons.to_vec())];
    for &s in &cfg.random_seeds {
        configs
            .push((format!("random-seed{s}"), random_neurons(loaded.model.sites(), universe, crispr_neurons.len(), s)));
    }
    // Per task: the task, its instructions and indices, and the units of each configuration
    // whose document is not cached yet.
    let mut plans = Vec::new();
    let mut all = Vec::new();
    let mut queued = std::collections::HashSet::new();
    for (name, limit, k) in targets {
        let task = data::load_task(&name, &env.data_dir)?;
        let set = first_k(&data::default_instructions(&task, &env.data_dir)?, k);
        let indices = {
            let mut v = subset(
                split_indices(&task, Split::Test, env.cfg.split_seed, data::split::DEV_FRACTION),
                limit,
                cfg.seed,
            );
            v.sort_unstable();
            v
        };
        let dir = env.dir.join("eval").join(slug(&name));
        let mut pending = Vec::new();
        for (config, neurons) in &configs {
            if dir.join(format!("{config}.json")).exists() {
                continue;
            }
            // Pruning nothing (n = 0) is the original model: those configurations read the
            // original's units instead of computing the same choices again.
            let source = if neurons.is_empty() { "original" } else { config.as_str() };
            let prefix = format!("eval/{}/units/{source}", slug(&name));
            let units = eval_units(env, &name, set.items.len(), &indices, neurons, &prefix);
            for u in &units {
                if queued.insert(u.out().to_string()) {
                    all.push(u.clone());
                }
            }
            pending.push((config.clone(), neurons.len(), units));
        }
        plans.push((name, task, set, indices, dir, pending));
    }
    run_units(env, loaded, "test", &all)?;
    let mut out = BTreeMap::new();
    for (name, task, set, indices, dir, pending) in plans {
        for (config, pruned, units) in pending {
            let result = merge_eval(env.dir, &task, &set, &units)?;
            let summary = summarize(&task, &result, cfg.seed);
            let per: Vec<_> = result.iter().map(|(m, _)| m.clone()).collect();
            let mut doc = metrics_json(&task, Mode::Scoring.as_str(), "test", &per, &summary);
            if let Some(o) = doc.as_object_mut() {
                o.insert("pruned_neurons".into(), json!(pruned));
                o.insert(
                    "outcomes".into(),
                    json!({
                        "examples": indices,
                        "choices": result.iter().map(|(_, outs)| outs.iter().map(|o| o.choice).collect::<Vec<_>>()).collect::<Vec<_>>(),
                    }),
                );
            }
            write_json(&dir.join(format!("{config}.json")), &doc)?;
        }
        let mut docs = BTreeMap::new();
        let mut outcomes = BTreeMap::new();
        for (config, _) in &configs {
            let path = dir.join(format!("{config}.json"));
            let v = read_json(&path).ok_or_else(|| Error::format(&path, "unreadable evaluation document"))?;
            if let Some(o) = outcomes_from_doc(&v) {
                outcomes.insert(config.clone(), o);
            }
            docs.insert(config.clone(), v);
        }
        let original = docs.remove("original").unwrap_or(Value::Null);
        let crispr = docs.remove("crispr").unwrap_or(Value::Null);
        out.insert(name, (TaskResults { original, crispr, random: docs.into_values().collect() }, outcomes));
    }
    Ok(out)
}

/// The choices kept in a cached evaluation document, as outcomes (scores are not kept).
fn outcomes_from_doc(doc: &Value) -> Option<Outcomes> {
    let o = doc.get("outcomes")?;
    let examples: Vec<usize> = serde_json::from_value(o.get("examples")?.clone()).ok()?;
    let choices: Vec<Vec<Option<usize>>> = serde_json::from_value(o.get("choices")?.clone()).ok()?;
    choices
        .into_iter()
        .map(|cs| {
            (cs.len() == examples.len()).then(|| {
                examples
                    .iter()
                    .zip(cs)
                    .map(|(&example, choice)| Outcome { example, choice, ..Outcome::default() })
                    .collect()
            })
        })
        .collect()
}

/// Paired deltas of every task and the verdict built from them.
fn build_verdict(env: &Env<'_>, outcomes: &BTreeMap<String, TaskOutcomes>, n: usize) -> Result<Option<Verdict>> {
    let seed = env.cfg.test.seed;
    let deltas = |name: &str| -> Result<Option<TaskDeltas>> {
        let Some(outs) = outcomes.get(name) else { return Ok(None) };
        let (Some(orig), Some(crispr)) = (outs.get("original"), outs.get("crispr")) else { return Ok(None) };
        let random: Vec<&Outcomes> = outs.iter().filter(|(k, _)| k.starts_with("random")).map(|(_, v)| v).collect();
        let task = data::load_task(name, &env.data_dir)?;
        let resamples = crate::verdict::RESAMPLES;
        Ok(Some(TaskDeltas {
            original: means(&task, &[orig]),
            crispr: means(&task, &[crispr]),
            crispr_delta: paired_deltas(&task, &[orig], &[crispr], seed, resamples),
            random_delta: if random.is_empty() {
                BTreeMap::new()
            } else {
                paired_deltas(&task, &[orig], &random, seed, resamples)
            },
            majority_baseline: crate::verdict::majority_baseline(&task, orig),
            dominant_answer: crate::verdict::dominant_answer_share(orig)
                .zip(crate::verdict::dominant_answer_share(crispr)),
        }))
    };
    let Some(target) = deltas(&env.cfg.task)? else { return Ok(None) };
    let mut retained = BTreeMap::new();
    for name in &env.cfg.retain {
        if let Some(d) = deltas(name)? {
            retained.insert(name.clone(), d);
        }
    }
    Ok(Some(judge(&env.cfg.task, target, retained, n)))
}

/// One candidate's effect when zeroed alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AblationResult {
    pub id: String,
    /// Change of the mean margin `log P(gold) − max_{c≠gold} log P(c)` on the probe instances
    /// (positive: the target moves the right way).
    pub margin_change: f64,
    /// Mean KL on neutral prompts.
    pub kl: f64,
    pub kept: bool,
}

/// Instances probed per ablated candidate, and neutral prompts for its KL.
const ABLATION_INSTANCES: usize = 8;
const ABLATION_KL_PROMPTS: usize = 8;

/// Zero each of the first `ablate_top` candidates alone and keep it only if the target's margin
/// rises and the model's neutral next-token distributions barely move (KL at most a tenth of the
/// constraint's budget, or 0.01 without one). Candidates past `ablate_top` are dropped: the
/// checked ones are the pool the search chooses from. Results are cached in `ablation.json`.
fn ablation_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task: &Task,
    set: &InstructionSet,
    ranked: &[Neuron],
) -> Result<(Vec<Neuron>, usize)> {
    let k = env.cfg.selection.ablate_top.min(ranked.len());
    let kl_budget = env.cfg.search.constraint.as_ref().and_then(|c| c.max_kl).map_or(0.01, |d| d / 10.0);
    let path = env.dir.join("ablation.json");
    let sites = loaded.model.sites().to_vec();
    let id = |n: &Neuron| format!("{}:{}", sites[n.site].name, n.row);
    let cached: Vec<AblationResult> = read_json(&path).and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    let results = if cached.len() == k && cached.iter().zip(ranked).all(|(r, n)| r.id == id(n)) {
        cached
    } else {
        // Probe instances: the attribution sample under the first two instructions.
        let acfg = &env.cfg.attribution;
        let dev = split_indices(task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
        let seed = acfg.seeds.first().copied().unwrap_or(0);
        let indices = sample_indices(&dev, acfg.samples.min(dev.len()).min(ABLATION_INSTANCES), seed);
        let style = loaded.prompt_style(false);
        let mut probes = Vec::new();
        for ins in first_k(set, 2).items.iter() {
            for &i in &indices {
                let p = ins.render(&task.examples[i])?;
                let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
                probes.push((enc, p.label));
            }
        }
        let margin = |loaded: &LoadedModel| -> f64 {
            let items: Vec<(&[u32], &[Vec<u32>])> =
                probes.iter().map(|(e, _)| (e.prompt.as_slice(), e.candidates.as_slice())).collect();
            let all = loaded.model.score_many(&items);
            let total: f64 = all
                .iter()
                .zip(&probes)
                .map(|(lps, (_, gold))| {
                    let best_wrong = lps
                        .iter()
                        .enumerate()
                        .filter(|&(c, _)| c != *gold)
                        .map(|(_, &x)| x)
                        .fold(f64::NEG_INFINITY, f64::max);
                    let m = lps[*gold] - best_wrong;
                    if m.is_finite() {
                        m
                    } else {
                        0.0
                    }
                })
                .sum();
            total / probes.len().max(1) as f64
        };
        let reference = neutral_distributions(loaded, ABLATION_KL_PROMPTS)?;
        let base = margin(loaded);
        env.progress.stage("ablation check", k as u64);
        let mut out = Vec::with_capacity(k);
        for n in &ranked[..k] {
            let pruned = prune(loaded.model.as_mut(), std::slice::from_ref(n));
            let m = margin(loaded);
            let kl = mean_kl(loaded, &reference);
            pruned.restore(loaded.model.as_mut());
            let kl = kl?;
            let margin_change = m - base;
            out.push(AblationResult { id: id(n), margin_change, kl, kept: margin_change > 0.0 && kl <= kl_budget });
            env.progress.tick();
        }
        write_json(&path, &json!(out))?;
        out
    };
    let kept: Vec<Neuron> = ranked[..k].iter().zip(&results).filter(|(_, r)| r.kept).map(|(n, _)| *n).collect();
    let rejected = k - kept.len();
    env.progress.note(&format!("ablation check kept {} of the top {k} candidates", kept.len()));
    Ok((kept, rejected))
}

/// Probe the activations on (up to 8 of) the attribution prompts.
fn diagnostics_stage(
    env: &mut Env<'_>,
    loaded: &LoadedModel,
    task: &Task,
    set: &InstructionSet,
) -> Result<ActivationStats> {
    let cfg = &env.cfg.attribution;
    let set = first_k(set, cfg.instructions);
    let dev = split_indices(task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
    let seed = cfg.seeds.first().copied().unwrap_or(0);
    let indices = sample_indices(&dev, cfg.samples.min(dev.len()), seed);
    let style = loaded.prompt_style(false);
    let mut prompts = Vec::new();
    for (j, &i) in indices.iter().take(PROBE_PROMPTS).enumerate() {
        let ins = &set.items[j % set.items.len().max(1)];
        let p = ins.render(&task.examples[i])?;
        prompts.push(encode(&loaded.text, style, &p.text, &p.candidates)?.prompt);
    }
    env.progress.note(&format!("probing activations on {} prompts", prompts.len()));
    Ok(probe(loaded.model.as_ref(), &prompts))
}

/// Attribution prompts probed for massive activations.
const PROBE_PROMPTS: usize = 8;

/// The top skill neurons of every protected task (gold-answer attribution on its dev split),
/// each task's scores cached in `protect/<task>.safetensors`.
fn protect_stage(env: &mut Env<'_>, loaded: &mut LoadedModel) -> Result<std::collections::HashSet<Neuron>> {
    let sel = env.cfg.selection.clone();
    let mut protected = std::collections::HashSet::new();
    if sel.protect.is_empty() || sel.protect_top == 0 {
        return Ok(protected);
    }
    let universe = env.cfg.attribution.settings.universe;
    let seed = env.cfg.attribution.seeds.first().copied().unwrap_or(0);
    // Per task: its cache and, when that is missing, one unit per instruction.
    let mut plans = Vec::new();
    let mut all = Vec::new();
    for name in &sel.protect {
        let cache = env.dir.join("protect").join(format!("{}.safetensors", slug(name)));
        let mut units = Vec::new();
        if !cache.is_file() {
            let task = data::load_task(name, &env.data_dir)?;
            let set = first_k(&data::default_instructions(&task, &env.data_dir)?, sel.protect_instructions);
            let dev = split_indices(&task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
            let indices = sample_indices(&dev, sel.protect_samples.min(dev.len()), seed);
            for k in 0..set.items.len() {
                units.push(Unit::Skill {
                    task: name.clone(),
                    instruction: k,
                    indices: indices.clone(),
                    out: format!("protect/{}/i{k}.safetensors", slug(name)),
                });
            }
        }
        all.extend(units.iter().cloned());
        plans.push((name, cache, units));
    }
    run_units(env, loaded, "skills", &all)?;
    let sites = loaded.model.sites();
    for (name, cache, units) in plans {
        let skill = if units.is_empty() {
            read_f64_scores(&cache, sites, universe)?
        } else {
            let parts =
                units.iter().map(|u| read_attribution(env.dir, u, sites, universe)).collect::<Result<Vec<_>>>()?;
            let s = Scores::mean(&parts).ok_or_else(|| Error::msg(format!("{name}: no instructions")))?;
            write_f64_scores(&cache, sites, &s)?;
            s
        };
        protected.extend(top_skill_neurons(&skill, sel.protect_top));
    }
    Ok(protected)
}

/// Diagnostics of the pruned neurons, with a sentence for the report.
fn describe_pruned(stats: &ActivationStats, sites: &[crate::model::SiteInfo], pruned: &[Neuron]) -> Diagnostics {
    let list: Vec<NeuronDiagnostics> = pruned
        .iter()
        .map(|n| NeuronDiagnostics {
            id: format!("{}:{}", sites[n.site].name, n.row),
            relative_magnitude: stats.relative_magnitude(n.site, n.row),
            writes_massive: stats.writes_massive(&sites[n.site], n.row),
        })
        .collect();
    let dims = stats.massive_dims();
    let hits: std::collections::BTreeSet<usize> =
        pruned.iter().filter(|n| stats.writes_massive(&sites[n.site], n.row)).map(|n| n.row).collect();
    let count = list.iter().filter(|d| d.writes_massive).count();
    let dim_list = |d: &mut dyn Iterator<Item = &usize>| d.map(usize::to_string).collect::<Vec<_>>().join("/");
    let summary = if dims.is_empty() {
        format!("No residual dimension carries massive activations on the {} probed prompts.", stats.prompts)
    } else if count == 0 {
        format!(
            "Residual dimensions {} carry massive activations (over {}× the median); none of the {} pruned neurons writes them.",
            dim_list(&mut dims.iter()),
            crate::diagnostics::MASSIVE_RATIO,
            pruned.len()
        )
    } else {
        format!(
            "{count} of {} pruned neurons write residual dimensions {}, which carry massive activations (over {}× the median): pruning them removes the model's internal bias terms and tends to break it.",
            pruned.len(),
            dim_list(&mut hits.iter()),
            crate::diagnostics::MASSIVE_RATIO,
        )
    };
    Diagnostics {
        massive: stats.massive.clone(),
        median: stats.median.clone(),
        prompts: stats.prompts,
        pruned: list,
        summary,
    }
}

/// The CRISPR-pruned model, in the input's format.
fn export_stage(env: &mut Env<'_>, loaded: &LoadedModel, neurons: &[Neuron]) -> Result<String> {
    let out = match &loaded.format {
        ModelFormat::Gguf(_) => env.dir.join("model-pruned.gguf"),
        ModelFormat::Checkpoint(_) => env.dir.join("model-pruned"),
    };
    // Reported relative to the run directory, so results do not depend on where the run lives.
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if out.exists() {
        return Ok(name);
    }
    env.progress.note(&format!("exporting the pruned model to {}", out.display()));
    let mut rows = RowsByModule::new();
    for n in neurons {
        rows.entry(loaded.model.prune_target_name(n.site)).or_default().push(n.row);
    }
    write_pruned(&loaded.format, &rows, &out)?;
    Ok(name)
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_only_retain_changes_selection() {
        let retain = vec!["mrpc".to_string(), "rte".to_string()];
        for name in ["quick", "paper", "retain"] {
            let cfg = RunConfig::preset(name, "default", "bbq:Age", retain.clone()).unwrap();
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let faithful = cfg.selection.is_faithful() && cfg.search.constraint.is_none();
            assert_eq!(faithful, name != "retain", "{name}");
        }
        let r = RunConfig::preset("retain", "default", "bbq:Age", retain.clone()).unwrap();
        assert_eq!(r.selection.protect, retain);
        assert_eq!(r.attribution, RunConfig::preset("paper", "default", "bbq:Age", vec![]).unwrap().attribution);
    }
}
