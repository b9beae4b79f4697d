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

use crate::attribution::{attribute_instruction, Instance, Scores, Settings};
use crate::data::{self, split::sample_indices, split_indices, InstructionSet, Split, Task};
use crate::error::{Error, Result};
use crate::evaluate::{evaluate, EvalOptions, Mode};
use crate::export::{write_pruned, RowsByModule};
use crate::loader::{LoadedModel, ModelFormat};
use crate::metrics::{metrics_json, summarize};
use crate::neurons::{atomic_write, ranked_neurons, write_scores};
use crate::prune::{prune, random_neurons, Neuron};
use crate::score::encode;

/// Everything that determines a run's results. Written as `config.toml`; `crispr run --config`
/// replays it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributionConfig {
    /// Dev instances per seed.
    pub samples: usize,
    pub seeds: Vec<u64>,
    /// Use the first this many instructions of the task's set (`0` = all).
    pub instructions: usize,
    pub settings: Settings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    pub lo: usize,
    pub hi: usize,
    /// Golden-section search stops at a bracket this wide, then sweeps it.
    pub final_width: usize,
    /// Dev instances evaluated per candidate n (`0` = the whole dev split).
    pub dev_limit: usize,
    pub instructions: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
        };
        match name {
            "quick" => Ok(base(
                AttributionConfig { samples: 8, seeds: vec![2026], instructions: 3, settings: Settings::default() },
                SearchConfig { lo: 0, hi: 48, final_width: 4, dev_limit: 16, instructions: 2, seed: 0 },
                TestConfig {
                    limit: 32,
                    instructions: 2,
                    retain_limit: 8,
                    retain_instructions: 2,
                    random_seeds: vec![1, 2],
                    seed: 0,
                },
            )),
            "paper" => Ok(base(
                AttributionConfig { samples: 20, seeds: vec![2026], instructions: 0, settings: Settings::default() },
                SearchConfig { lo: 0, hi: 500, final_width: 4, dev_limit: 0, instructions: 0, seed: 0 },
                TestConfig {
                    limit: 0,
                    instructions: 0,
                    retain_limit: 0,
                    retain_instructions: 0,
                    random_seeds: vec![1, 2, 3],
                    seed: 0,
                },
            )),
            other => Err(Error::msg(format!("unknown preset {other:?} (quick or paper)"))),
        }
    }
}

/// Progress reporting, implemented by the command line (bars with ETA).
pub trait Progress {
    fn stage(&mut self, name: &str, total: u64);
    fn tick(&mut self);
    fn note(&mut self, msg: &str);
}

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
    pub bias_neurons: Vec<crate::neurons::RankedNeuron>,
    /// The pruned model's file or directory name inside the run directory.
    pub pruned_model: String,
    pub seconds: BTreeMap<String, f64>,
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
}

/// Run (or resume) the job described by `cfg` in `dir` on the already loaded model.
pub fn run(
    cfg: &RunConfig,
    loaded: &mut LoadedModel,
    dir: &Path,
    data_dir: PathBuf,
    progress: &mut dyn Progress,
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
    let mut env = Env { dir, cfg, data_dir, progress };
    let mut seconds = Timings::load(&env.dir.join("timings.json"));
    let task = data::load_task(&cfg.task, &env.data_dir)?;
    let set = data::default_instructions(&task, &env.data_dir)?;

    let t = std::time::Instant::now();
    let scores = attribution_stage(&mut env, loaded, &task, &set)?;
    seconds.add("attribution", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let ranked: Vec<Neuron> = scores.ranked().into_iter().map(|(site, row, _)| Neuron { site, row }).collect();
    let (n_selected, search) = search_stage(&mut env, loaded, &task, &set, &ranked)?;
    seconds.add("search", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let mut tasks = BTreeMap::new();
    let crispr_neurons = &ranked[..n_selected.min(ranked.len())];
    let mut targets = vec![(cfg.task.clone(), cfg.test.limit, cfg.test.instructions)];
    targets.extend(cfg.retain.iter().map(|r| (r.clone(), cfg.test.retain_limit, cfg.test.retain_instructions)));
    for (name, limit, k) in targets {
        let res = test_stage(&mut env, loaded, &name, limit, k, crispr_neurons, scores.universe)?;
        tasks.insert(name, res);
    }
    seconds.add("test", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let pruned_model = export_stage(&mut env, loaded, crispr_neurons)?;
    seconds.add("export", t.elapsed().as_secs_f64())?;

    let sites = loaded.model.sites();
    let bias_neurons = ranked_neurons(sites, &scores, n_selected);
    let model = {
        let mut m = loaded.model.describe();
        if let Some(o) = m.as_object_mut() {
            o.insert("path".into(), json!(loaded.format.path().display().to_string()));
            let (linear, ffn) = crate::model::universe_sizes(sites);
            o.insert("universe".into(), json!({"linear": linear, "ffn": ffn}));
        }
        m
    };
    let seconds = seconds.seconds;
    Ok(RunResult { config: cfg.clone(), model, n_selected, search, tasks, bias_neurons, pruned_model, seconds })
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

/// Attribution on the dev sample, cached per (seed, instruction) in `attribution/partial/`.
fn attribution_stage(env: &mut Env<'_>, loaded: &LoadedModel, task: &Task, set: &InstructionSet) -> Result<Scores> {
    let cfg = &env.cfg.attribution;
    let out = env.dir.join("attribution");
    let partial = out.join("partial");
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
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
    let sites = loaded.model.sites();
    let style = loaded.prompt_style(false);
    env.progress.stage("attribution", (cfg.seeds.len() * set.items.len() * cfg.samples) as u64);
    let mut per_seed = Vec::new();
    for &seed in &cfg.seeds {
        let indices = sample_indices(&dev, cfg.samples, seed);
        let mut per_instruction = Vec::new();
        for (k, ins) in set.items.iter().enumerate() {
            let cache = partial.join(format!("seed{seed}-instruction{k}.safetensors"));
            if let Ok(s) = read_f64_scores(&cache, sites, cfg.settings.universe) {
                for _ in 0..indices.len() {
                    env.progress.tick();
                }
                per_instruction.push(s);
                continue;
            }
            let instances = indices
                .iter()
                .map(|&i| {
                    let p = ins.render(&task.examples[i])?;
                    let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
                    Ok(Instance { prompt: enc.prompt, candidates: enc.candidates, gold: p.label })
                })
                .collect::<Result<Vec<_>>>()?;
            let progress = &mut *env.progress;
            let s = attribute_instruction(loaded.model.as_ref(), &instances, &cfg.settings, &mut |_| progress.tick());
            write_f64_scores(&cache, sites, &s)?;
            per_instruction.push(s);
        }
        per_seed.push(Scores::mean(&per_instruction).ok_or_else(|| Error::msg("no instructions"))?);
    }
    let scores = Scores::mean(&per_seed).ok_or_else(|| Error::msg("no attribution seeds"))?;
    let meta = json!({
        "tool": {"name": "crispr", "version": env!("CARGO_PKG_VERSION")},
        "model": {"path": loaded.format.path().display().to_string()},
        "task": {"name": task.name, "source": task.source.display().to_string(), "sha256": task.sha256},
        "instructions": set.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        "settings": cfg.settings,
        "samples": cfg.seeds.iter().map(|&s| json!({"seed": s, "indices": sample_indices(&dev, cfg.samples, s)})).collect::<Vec<_>>(),
    });
    write_scores(&out, sites, &scores, meta, 1000)?;
    Ok(scores)
}

/// Per-instruction partial scores, kept in f64 so a resumed run is bit-identical.
fn write_f64_scores(path: &Path, sites: &[crate::model::SiteInfo], scores: &Scores) -> Result<()> {
    let tensors: Vec<(String, Vec<u8>, usize)> = sites
        .iter()
        .zip(&scores.per_site)
        .filter(|(s, _)| s.universe == scores.universe)
        .map(|(s, v)| (s.name.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
        .collect();
    let views = tensors
        .iter()
        .map(|(n, b, len)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![*len], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::msg(format!("{e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &None).map_err(|e| Error::msg(format!("{e:?}")))?;
    atomic_write(path, &bytes)
}

fn read_f64_scores(path: &Path, sites: &[crate::model::SiteInfo], universe: crate::model::Universe) -> Result<Scores> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("{e:?}")))?;
    let mut scores = Scores::zeros(sites, universe);
    for (i, s) in sites.iter().enumerate().filter(|(_, s)| s.universe == universe) {
        let v = st.tensor(&s.name).map_err(|e| Error::format(path, format!("{e:?}")))?;
        if v.shape() != [s.width] || v.dtype() != safetensors::Dtype::F64 {
            return Err(Error::format(path, "shape mismatch"));
        }
        scores.per_site[i] = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect();
    }
    Ok(scores)
}

/// Mean dev accuracy over instructions with the top `n` neurons pruned.
fn dev_accuracy(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task: &Task,
    set: &InstructionSet,
    indices: &[usize],
    neurons: &[Neuron],
) -> Result<f64> {
    let pruned = prune(loaded.model.as_mut(), neurons);
    let progress = &mut *env.progress;
    let result = evaluate(loaded, task, set, indices, &EvalOptions::default(), &mut || progress.tick());
    pruned.restore(loaded.model.as_mut());
    let result = result?;
    Ok(result.iter().map(|(m, _)| m.acc).sum::<f64>() / result.len().max(1) as f64)
}

/// Golden-section search for the best n on dev, then a sweep of the final bracket. Every
/// evaluated n is cached in `search.json`.
fn search_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task: &Task,
    set: &InstructionSet,
    ranked: &[Neuron],
) -> Result<(usize, Vec<(usize, f64)>)> {
    let cfg = env.cfg.search.clone();
    let set = first_k(set, cfg.instructions);
    let dev = split_indices(task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
    let indices = subset(dev, cfg.dev_limit, cfg.seed);
    let path = env.dir.join("search.json");
    let mut memo: BTreeMap<usize, f64> = read_json(&path)
        .and_then(|v| serde_json::from_value::<Vec<(usize, f64)>>(v).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default();
    let hi = cfg.hi.min(ranked.len());
    // Upper bound on evaluations, for the progress bar: golden steps plus the final sweep.
    let steps = (((hi - cfg.lo).max(1) as f64 / cfg.final_width.max(1) as f64).ln() / 1.618f64.ln()).ceil() as u64 + 3;
    env.progress.stage("search n", (steps + cfg.final_width as u64) * (indices.len() * set.items.len()) as u64);
    let mut f = |env: &mut Env<'_>, loaded: &mut LoadedModel, n: usize| -> Result<f64> {
        if let Some(&v) = memo.get(&n) {
            return Ok(v);
        }
        let v = dev_accuracy(env, loaded, task, &set, &indices, &ranked[..n])?;
        memo.insert(n, v);
        let list: Vec<(usize, f64)> = memo.iter().map(|(&a, &b)| (a, b)).collect();
        write_json(&path, &json!(list))?;
        Ok(v)
    };
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    // Pruning nothing is always a candidate: if no n helps on dev, the run keeps the original.
    f(env, loaded, cfg.lo)?;
    let (mut a, mut b) = (cfg.lo, hi);
    while b - a > cfg.final_width.max(2) {
        let span = (b - a) as f64;
        let c = b - (span * inv_phi).round() as usize;
        let d = a + (span * inv_phi).round() as usize;
        let (c, d) = if c < d { (c, d) } else { (a + (b - a) / 3, b - (b - a) / 3) };
        let (fc, fd) = (f(env, loaded, c)?, f(env, loaded, d)?);
        // Ties keep the smaller n (fewer neurons pruned).
        if fc >= fd {
            b = d;
        } else {
            a = c;
        }
    }
    for n in a..=b {
        f(env, loaded, n)?;
    }
    // The best of everything evaluated; ties keep the smaller n.
    let curve: Vec<(usize, f64)> = memo.iter().map(|(&a, &b)| (a, b)).collect();
    let best = curve.iter().fold((cfg.lo, f64::NEG_INFINITY), |best, &(n, v)| if v > best.1 { (n, v) } else { best });
    env.progress.note(&format!("chose n = {} (dev accuracy {:.2})", best.0, best.1));
    Ok((best.0, curve))
}

/// Original, CRISPR and random-control evaluations of one task on its test split, each cached in
/// `eval/<task>/<config>.json`.
fn test_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task_name: &str,
    limit: usize,
    k: usize,
    crispr_neurons: &[Neuron],
    universe: crate::model::Universe,
) -> Result<TaskResults> {
    let task = data::load_task(task_name, &env.data_dir)?;
    let set = first_k(&data::default_instructions(&task, &env.data_dir)?, k);
    let cfg = env.cfg.test.clone();
    let indices = {
        let mut v =
            subset(split_indices(&task, Split::Test, env.cfg.split_seed, data::split::DEV_FRACTION), limit, cfg.seed);
        v.sort_unstable();
        v
    };
    let dir = env.dir.join("eval").join(task_name.replace([':', '/'], "_"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut configs: Vec<(String, Vec<Neuron>)> =
        vec![("original".into(), vec![]), ("crispr".into(), crispr_neurons.to_vec())];
    for &s in &cfg.random_seeds {
        configs
            .push((format!("random-seed{s}"), random_neurons(loaded.model.sites(), universe, crispr_neurons.len(), s)));
    }
    let todo = configs.iter().filter(|(name, _)| !dir.join(format!("{name}.json")).exists()).count();
    env.progress.stage(&format!("test {task_name}"), (todo * indices.len() * set.items.len()) as u64);
    let mut docs = BTreeMap::new();
    for (name, neurons) in configs {
        let path = dir.join(format!("{name}.json"));
        if let Some(v) = read_json(&path) {
            docs.insert(name, v);
            continue;
        }
        let pruned = prune(loaded.model.as_mut(), &neurons);
        let progress = &mut *env.progress;
        let result = evaluate(loaded, &task, &set, &indices, &EvalOptions::default(), &mut || progress.tick());
        pruned.restore(loaded.model.as_mut());
        let result = result?;
        let summary = summarize(&task, &result, cfg.seed);
        let per: Vec<_> = result.iter().map(|(m, _)| m.clone()).collect();
        let mut doc = metrics_json(&task, Mode::Scoring.as_str(), "test", &per, &summary);
        if let Some(o) = doc.as_object_mut() {
            o.insert("pruned_neurons".into(), json!(neurons.len()));
        }
        write_json(&path, &doc)?;
        docs.insert(name, doc);
    }
    let original = docs.remove("original").unwrap_or(Value::Null);
    let crispr = docs.remove("crispr").unwrap_or(Value::Null);
    Ok(TaskResults { original, crispr, random: docs.into_values().collect() })
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
