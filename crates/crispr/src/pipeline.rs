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

use crate::attribution::{attribute_instruction, attribute_skill, Instance, Scores, Settings};
use crate::data::{self, split::sample_indices, split_indices, InstructionSet, Split, Task};
use crate::diagnostics::{probe, ActivationStats};
use crate::error::{Error, Result};
use crate::evaluate::{evaluate, EvalOptions, Mode};
use crate::export::{write_pruned, RowsByModule};
use crate::files::{atomic_write, write_scores};
use crate::loader::{LoadedModel, ModelFormat};
use crate::metrics::{metrics_json, summarize, Outcome};
use crate::prune::{prune, random_neurons, Neuron};
use crate::retention::{mean_kl, neutral_distributions, RetentionConstraint};
use crate::score::encode;
use crate::selection::{rank_candidates, top_skill_neurons, Excluded, SelectionConfig};
use crate::verdict::{judge, means, paired_deltas, Outcomes, TaskDeltas, Verdict};

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
                },
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
                SearchConfig {
                    lo: 0,
                    hi: 500,
                    final_width: 4,
                    dev_limit: 0,
                    instructions: 0,
                    seed: 0,
                    constraint: None,
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
        let s = &self.search;
        if s.lo > s.hi {
            return Err(format!("search.lo = {} is larger than search.hi = {}", s.lo, s.hi));
        }
        if s.final_width == 0 {
            return Err("search.final_width must be at least 1".into());
        }
        Ok(())
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
    pub bias_neurons: Vec<crate::files::RankedNeuron>,
    /// The pruned model's file or directory name inside the run directory.
    pub pruned_model: String,
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
    let (n_selected, points) = search_stage(&mut env, loaded, &task, &set, &ranked)?;
    let search: Vec<(usize, f64)> = points.iter().map(|p| (p.n, p.acc)).collect();
    seconds.add("search", t.elapsed().as_secs_f64())?;

    let t = std::time::Instant::now();
    let mut tasks = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let crispr_neurons = &ranked[..n_selected.min(ranked.len())];
    let mut targets = vec![(cfg.task.clone(), cfg.test.limit, cfg.test.instructions)];
    targets.extend(cfg.retain.iter().map(|r| (r.clone(), cfg.test.retain_limit, cfg.test.retain_instructions)));
    for (name, limit, k) in targets {
        let (res, outs) = test_stage(&mut env, loaded, &name, limit, k, crispr_neurons, scores.universe)?;
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

/// Dev accuracy (mean over instructions) of a task with `neurons` pruned, and the mean
/// disambiguated accuracy where the task has one (BBQ).
fn dev_accuracy(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task: &Task,
    set: &InstructionSet,
    indices: &[usize],
    neurons: &[Neuron],
) -> Result<(f64, Option<f64>)> {
    let pruned = prune(loaded.model.as_mut(), neurons);
    let progress = &mut *env.progress;
    let result = evaluate(loaded, task, set, indices, &EvalOptions::default(), &mut || progress.tick());
    pruned.restore(loaded.model.as_mut());
    let result = result?;
    let k = result.len().max(1) as f64;
    let acc = result.iter().map(|(m, _)| m.acc).sum::<f64>() / k;
    let dis: Vec<f64> = result.iter().filter_map(|(m, _)| m.acc_disambig).collect();
    let disambig = (!dis.is_empty()).then(|| dis.iter().sum::<f64>() / dis.len() as f64);
    Ok((acc, disambig))
}

/// What a retention-constrained search evaluates besides the target.
struct RetentionProbe {
    constraint: RetentionConstraint,
    /// (name, task, instructions, dev indices) of every retained task.
    tasks: Vec<(String, Task, InstructionSet, Vec<usize>)>,
    /// The original model's neutral next-token distributions.
    reference: Vec<Vec<f64>>,
}

impl RetentionProbe {
    fn new(env: &Env<'_>, loaded: &LoadedModel, constraint: &RetentionConstraint) -> Result<RetentionProbe> {
        let mut tasks = Vec::new();
        if constraint.max_drop.is_some() {
            for name in &env.cfg.retain {
                let task = data::load_task(name, &env.data_dir)?;
                let set = first_k(&data::default_instructions(&task, &env.data_dir)?, constraint.retain_instructions);
                let dev = split_indices(&task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
                let indices = subset(dev, constraint.retain_dev_limit, env.cfg.search.seed);
                tasks.push((name.clone(), task, set, indices));
            }
        }
        let reference = match constraint.max_kl {
            Some(_) => neutral_distributions(loaded, constraint.kl_prompts)?,
            None => Vec::new(),
        };
        Ok(RetentionProbe { constraint: constraint.clone(), tasks, reference })
    }

    fn evaluations_per_point(&self) -> usize {
        self.tasks.iter().map(|(_, _, set, idx)| set.items.len() * idx.len()).sum()
    }

    /// Retained accuracies and KL with `neurons` pruned.
    fn measure(
        &self,
        env: &mut Env<'_>,
        loaded: &mut LoadedModel,
        neurons: &[Neuron],
    ) -> Result<(BTreeMap<String, f64>, Option<f64>)> {
        let mut retained = BTreeMap::new();
        for (name, task, set, indices) in &self.tasks {
            retained.insert(name.clone(), dev_accuracy(env, loaded, task, set, indices, neurons)?.0);
        }
        let kl = if self.reference.is_empty() {
            None
        } else {
            let pruned = prune(loaded.model.as_mut(), neurons);
            let kl = mean_kl(loaded, &self.reference);
            pruned.restore(loaded.model.as_mut());
            Some(kl?)
        };
        Ok((retained, kl))
    }

    /// How far `p` exceeds the constraint relative to its limits (0: feasible).
    fn violation(&self, p: &SearchPoint, base: &SearchPoint) -> f64 {
        let mut v: f64 = 0.0;
        if let Some(eps) = self.constraint.max_drop {
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
        if let (Some(delta), Some(kl)) = (self.constraint.max_kl, p.kl) {
            v = v.max((kl - delta) / delta.max(1e-6));
        }
        v.max(0.0)
    }
}

/// Golden-section search for the best n on dev, then a sweep of the final bracket. Under a
/// retention constraint, an n that breaks it scores below every n that keeps it (worse the more
/// it breaks it), so the search moves back into the feasible range, and the chosen n is the best
/// *feasible* one evaluated — n = 0 always is. Every evaluated n is cached in `search.json`.
fn search_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task: &Task,
    set: &InstructionSet,
    ranked: &[Neuron],
) -> Result<(usize, Vec<SearchPoint>)> {
    let cfg = env.cfg.search.clone();
    if cfg.lo > cfg.hi {
        return Err(Error::msg(format!("search range [{}, {}] is empty (lo > hi)", cfg.lo, cfg.hi)));
    }
    let set = first_k(set, cfg.instructions);
    let dev = split_indices(task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
    let indices = subset(dev, cfg.dev_limit, cfg.seed);
    let path = env.dir.join("search.json");
    let mut memo: BTreeMap<usize, SearchPoint> = read_json(&path)
        .and_then(|v| serde_json::from_value::<Vec<SearchPoint>>(v).ok())
        .map(|v| v.into_iter().map(|p| (p.n, p)).collect())
        .unwrap_or_default();
    let probe = match &cfg.constraint {
        Some(c) => Some(RetentionProbe::new(env, loaded, c)?),
        None => None,
    };
    let hi = cfg.hi.min(ranked.len());
    let lo = cfg.lo.min(hi);
    // Upper bound on evaluations, for the progress bar: golden steps plus the final sweep.
    let steps = (((hi - lo).max(1) as f64 / cfg.final_width.max(1) as f64).ln() / 1.618f64.ln()).ceil() as u64 + 4;
    let per_point = indices.len() * set.items.len() + probe.as_ref().map_or(0, |p| p.evaluations_per_point());
    env.progress.stage("search n", (steps + cfg.final_width as u64) * per_point as u64);
    let mut eval = |env: &mut Env<'_>, loaded: &mut LoadedModel, n: usize| -> Result<SearchPoint> {
        if let Some(p) = memo.get(&n) {
            return Ok(p.clone());
        }
        let (acc, acc_disambig) = dev_accuracy(env, loaded, task, &set, &indices, &ranked[..n])?;
        let (retained, kl) = match &probe {
            Some(p) => p.measure(env, loaded, &ranked[..n])?,
            None => (BTreeMap::new(), None),
        };
        let point = SearchPoint { n, acc, acc_disambig, retained, kl, feasible: true };
        memo.insert(n, point.clone());
        let list: Vec<&SearchPoint> = memo.values().collect();
        write_json(&path, &json!(list))?;
        Ok(point)
    };
    // The unpruned model is the constraint's reference (and always feasible).
    let base = match &probe {
        Some(_) => Some(eval(env, loaded, 0)?),
        None => None,
    };
    let judge = |p: &SearchPoint| -> (bool, f64) {
        match (&probe, &base) {
            (Some(pr), Some(base)) => {
                let v = pr.violation(p, base);
                (v == 0.0, if v == 0.0 { p.acc } else { -1000.0 - v })
            }
            _ => (true, p.acc),
        }
    };
    // (feasible, value to maximise) of n.
    let mut f = |env: &mut Env<'_>, loaded: &mut LoadedModel, n: usize| -> Result<(bool, f64)> {
        let p = eval(env, loaded, n)?;
        Ok(judge(&p))
    };
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    // Pruning the fewest neurons allowed (normally none) is always a candidate: if no n helps on
    // dev the run keeps the original.
    f(env, loaded, lo)?;
    // Under a constraint, first find where it starts to break: how far a model moves is not
    // monotone in n from one neuron to the next, so a golden-section search on the penalised
    // objective alone can wander away from the feasible range near lo. A doubling ladder
    // (lo+1, lo+2, lo+4, …) stops at the first n that breaks the constraint, and the search then
    // runs below it.
    let mut upper = hi;
    if probe.is_some() {
        let mut step = 1;
        while lo + step < hi {
            let n = lo + step;
            if !f(env, loaded, n)?.0 {
                upper = n;
                break;
            }
            step *= 2;
        }
    }
    let (mut a, mut b) = (lo, upper);
    while b - a > cfg.final_width.max(2) {
        let span = (b - a) as f64;
        let c = b - (span * inv_phi).round() as usize;
        let d = a + (span * inv_phi).round() as usize;
        let (c, d) = if c < d { (c, d) } else { (a + (b - a) / 3, b - (b - a) / 3) };
        let (fc, fd) = (f(env, loaded, c)?.1, f(env, loaded, d)?.1);
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
    // The best feasible n of everything evaluated; ties keep the smaller n.
    let mut points: Vec<SearchPoint> = memo.into_values().collect();
    for p in &mut points {
        p.feasible = judge(p).0;
    }
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

/// Original, CRISPR and random-control evaluations of one task on its test split, each cached in
/// `eval/<task>/<config>.json` with every choice (for paired comparisons).
fn test_stage(
    env: &mut Env<'_>,
    loaded: &mut LoadedModel,
    task_name: &str,
    limit: usize,
    k: usize,
    crispr_neurons: &[Neuron],
    universe: crate::model::Universe,
) -> Result<(TaskResults, TaskOutcomes)> {
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
    let mut outcomes = BTreeMap::new();
    for (name, neurons) in configs {
        let path = dir.join(format!("{name}.json"));
        if let Some(v) = read_json(&path) {
            if let Some(o) = outcomes_from_doc(&v) {
                outcomes.insert(name.clone(), o);
            }
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
            o.insert(
                "outcomes".into(),
                json!({
                    "examples": indices,
                    "choices": result.iter().map(|(_, outs)| outs.iter().map(|o| o.choice).collect::<Vec<_>>()).collect::<Vec<_>>(),
                }),
            );
        }
        write_json(&path, &doc)?;
        outcomes.insert(name.clone(), result.into_iter().map(|(_, o)| o).collect());
        docs.insert(name, doc);
    }
    let original = docs.remove("original").unwrap_or(Value::Null);
    let crispr = docs.remove("crispr").unwrap_or(Value::Null);
    Ok((TaskResults { original, crispr, random: docs.into_values().collect() }, outcomes))
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
fn protect_stage(env: &mut Env<'_>, loaded: &LoadedModel) -> Result<std::collections::HashSet<Neuron>> {
    let sel = env.cfg.selection.clone();
    let mut protected = std::collections::HashSet::new();
    if sel.protect.is_empty() || sel.protect_top == 0 {
        return Ok(protected);
    }
    let dir = env.dir.join("protect");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let sites = loaded.model.sites();
    let settings = env.cfg.attribution.settings.clone();
    let style = loaded.prompt_style(false);
    let seed = env.cfg.attribution.seeds.first().copied().unwrap_or(0);
    for name in &sel.protect {
        let cache = dir.join(format!("{}.safetensors", name.replace([':', '/'], "_")));
        let skill = match read_f64_scores(&cache, sites, settings.universe) {
            Ok(s) => s,
            Err(_) => {
                let task = data::load_task(name, &env.data_dir)?;
                let set = first_k(&data::default_instructions(&task, &env.data_dir)?, sel.protect_instructions);
                let dev = split_indices(&task, Split::Dev, env.cfg.split_seed, data::split::DEV_FRACTION);
                let indices = sample_indices(&dev, sel.protect_samples.min(dev.len()), seed);
                env.progress.stage(&format!("skills of {name}"), (set.items.len() * indices.len()) as u64);
                let mut per_instruction = Vec::new();
                for ins in &set.items {
                    let instances = indices
                        .iter()
                        .map(|&i| {
                            let p = ins.render(&task.examples[i])?;
                            let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
                            Ok(Instance { prompt: enc.prompt, candidates: enc.candidates, gold: p.label })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    per_instruction.push(attribute_skill(loaded.model.as_ref(), &instances, &settings));
                    for _ in 0..instances.len() {
                        env.progress.tick();
                    }
                }
                let s = Scores::mean(&per_instruction).ok_or_else(|| Error::msg(format!("{name}: no instructions")))?;
                write_f64_scores(&cache, sites, &s)?;
                s
            }
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
