//! `crispr plan` (= `crispr run --dry-run`): the units of work of each stage of a run, their cost
//! estimated from per-step times measured on the run's own model and tasks, the CPU time in all,
//! and the wall time on a given number of workers.
//!
//! The attribution and test stages are known exactly from the configuration and the split sizes.
//! The search is sequential in rounds (golden-section: two new values of n per round, or K with
//! `grid:K`), so its round count is estimated from the bracket widths; within a round, units run
//! in parallel.

use std::collections::BTreeMap;

use serde::Serialize;

use std::path::Path;
use std::time::Instant;

use crate::attribution::{attribute_sum, Instance};
use crate::data::{self, split_indices, InstructionSet, Split};
use crate::error::{Error, Result};
use crate::evaluate::{evaluate, EvalOptions};
use crate::loader::LoadedModel;
use crate::retention::neutral_distributions;
use crate::run_config::{RunConfig, SearchMethod};
use crate::score::encode;

/// Measured seconds per step on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Costs {
    /// Loading the model (paid by every worker process, per unit).
    pub startup: f64,
    /// One attribution step (one instance: scoring plus backward passes).
    pub attribution_step: f64,
    /// One scoring (one instance under one instruction), per task.
    pub scoring: BTreeMap<String, f64>,
    /// One forward pass over a neutral prompt (the KL check).
    pub forward: f64,
    /// Threads the steps were timed with (a worker in the estimates is this fast).
    pub threads: usize,
}

/// Split sizes the stages draw from.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Per task: (dev, test) examples.
    pub splits: BTreeMap<String, (usize, usize)>,
    /// Per task: instructions in its set.
    pub instructions: BTreeMap<String, usize>,
}

/// One stage: rounds that run one after another, each a set of independent units (their
/// estimated seconds, without the model load).
#[derive(Clone, Debug, Serialize)]
pub struct StagePlan {
    pub stage: String,
    pub rounds: Vec<Vec<f64>>,
    /// Steps (scorings, attribution steps, forward passes) in all.
    pub steps: usize,
    /// Whether the round count is an estimate (the search).
    pub estimated_rounds: bool,
}

impl StagePlan {
    pub fn units(&self) -> usize {
        self.rounds.iter().map(Vec::len).sum()
    }

    /// CPU seconds: every unit, plus a model load per unit when units run in worker processes.
    pub fn cpu_seconds(&self, startup: f64, workers: usize) -> f64 {
        let per_unit = if workers > 1 { startup } else { 0.0 };
        self.rounds.iter().flatten().map(|c| c + per_unit).sum()
    }

    /// Wall seconds on `workers` (one worker: in the driver, no model loads).
    pub fn wall(&self, startup: f64, workers: usize) -> f64 {
        self.rounds.iter().map(|r| makespan(r, workers, if workers > 1 { startup } else { 0.0 })).sum()
    }
}

/// Longest-processing-time-first schedule of `costs` on `workers`: a good estimate of a job
/// array's wall time (each unit also pays `startup`).
pub fn makespan(costs: &[f64], workers: usize, startup: f64) -> f64 {
    let mut sorted: Vec<f64> = costs.iter().map(|c| c + startup).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut load = vec![0.0f64; workers.max(1).min(sorted.len().max(1))];
    for c in sorted {
        let (i, _) = load.iter().enumerate().fold((0, f64::INFINITY), |b, (i, &l)| if l < b.1 { (i, l) } else { b });
        load[i] += c;
    }
    load.into_iter().fold(0.0, f64::max)
}

/// Sizes of the units `n` instances are cut into (the run's own rule, [`crate::work::chunks`]).
fn chunked(n: usize, chunk: usize) -> Vec<usize> {
    crate::work::chunks(&(0..n).collect::<Vec<_>>(), chunk).iter().map(Vec::len).collect()
}

/// `limit` of `pool` (`0`: all).
fn take(pool: usize, limit: usize) -> usize {
    if limit == 0 {
        pool
    } else {
        limit.min(pool)
    }
}

/// `k` of `set` instructions (`0`: all).
fn first(set: usize, k: usize) -> usize {
    if k == 0 {
        set
    } else {
        k.min(set)
    }
}

/// Number of new values of n the search evaluates per round (before the final sweep, which is
/// one more round of `final_width + 1` values).
fn search_rounds(cfg: &RunConfig) -> Vec<usize> {
    let s = &cfg.search;
    let span = s.hi.saturating_sub(s.lo);
    let width = s.final_width.max(2);
    let mut rounds = vec![1];
    let mut upper = span;
    if s.constraint.is_some() {
        // The unpruned reference, then the doubling ladder (at worst up to hi).
        if s.lo != 0 {
            rounds.push(1);
        }
        let mut step = 1;
        while step < span {
            rounds.push(1);
            step *= 2;
        }
        upper = span;
    }
    let mut w = upper as f64;
    match s.method {
        SearchMethod::Golden => {
            let mut first = true;
            while w > width as f64 {
                // Two values per round; after the first, one of them is already known.
                rounds.push(if first { 2 } else { 1 });
                first = false;
                w *= (5f64.sqrt() - 1.0) / 2.0;
            }
        }
        SearchMethod::Grid(k) => {
            let mut first = true;
            while w > width as f64 {
                // K values per round; after the first, the bracket's ends and centre are known.
                rounds.push(if first { k } else { k.saturating_sub(3).max(1) });
                first = false;
                w = (2.0 * w / (k - 1) as f64).max(1.0);
                if k <= 3 {
                    break;
                }
            }
        }
    }
    rounds.push((w.round() as usize).min(width) + 1);
    rounds
}

/// The stages of `cfg` with their units' estimated costs.
pub fn plan(cfg: &RunConfig, sizes: &Sizes, costs: &Costs) -> Vec<StagePlan> {
    let scoring = |task: &str| costs.scoring.get(task).copied().unwrap_or(0.0);
    let n_ins = |task: &str, k: usize| first(sizes.instructions.get(task).copied().unwrap_or(1), k);
    let mut out = Vec::new();

    // Attribution: seeds × instructions × chunks.
    let a = &cfg.attribution;
    let mut units = Vec::new();
    for _ in &a.seeds {
        for _ in 0..n_ins(&cfg.task, a.instructions) {
            for c in chunked(a.samples, cfg.chunks.attribution) {
                units.push(c as f64 * costs.attribution_step);
            }
        }
    }
    let steps = a.seeds.len() * n_ins(&cfg.task, a.instructions) * a.samples;
    out.push(StagePlan { stage: "attribution".into(), rounds: vec![units], steps, estimated_rounds: false });

    // Search: per evaluated n, the target on dev (and the retained tasks and KL under a constraint).
    let s = &cfg.search;
    let mut point = Vec::new();
    let mut point_steps = 0;
    let mut eval_units = |task: &str, instructions: usize, limit: usize| {
        let (d, _) = sizes.splits.get(task).copied().unwrap_or((0, 0));
        let n = take(d, limit);
        for _ in 0..n_ins(task, instructions) {
            for c in chunked(n, cfg.chunks.eval) {
                point.push(c as f64 * scoring(task));
                point_steps += c;
            }
        }
    };
    eval_units(&cfg.task, s.instructions, s.dev_limit);
    if let Some(c) = &s.constraint {
        if c.max_drop.is_some() {
            for r in &cfg.retain {
                eval_units(r, c.retain_instructions, c.retain_dev_limit);
            }
        }
        if c.max_kl.is_some() {
            point.push(2.0 * c.kl_prompts as f64 * costs.forward);
            point_steps += 2 * c.kl_prompts;
        }
    }
    let mut rounds = Vec::new();
    let mut steps = 0;
    for k in search_rounds(cfg) {
        rounds.push((0..k).flat_map(|_| point.iter().copied()).collect::<Vec<f64>>());
        steps += k * point_steps;
    }
    out.push(StagePlan { stage: "search".into(), rounds, steps, estimated_rounds: true });

    // Test: tasks × configurations × instructions × chunks, one round.
    let t = &cfg.test;
    let configs = 2 + t.random_seeds.len();
    let mut units = Vec::new();
    let mut steps = 0;
    let mut targets = vec![(cfg.task.as_str(), t.limit, t.instructions)];
    targets.extend(cfg.retain.iter().map(|r| (r.as_str(), t.retain_limit, t.retain_instructions)));
    for (task, limit, k) in targets {
        let (_, tn) = sizes.splits.get(task).copied().unwrap_or((0, 0));
        let n = take(tn, limit);
        for _ in 0..configs {
            for _ in 0..n_ins(task, k) {
                for c in chunked(n, cfg.chunks.eval) {
                    units.push(c as f64 * scoring(task));
                    steps += c;
                }
            }
        }
    }
    out.push(StagePlan { stage: "test".into(), rounds: vec![units], steps, estimated_rounds: false });
    out
}

/// Instances timed per task (after one untimed warm-up).
const TIMED: usize = 3;

/// Split sizes of every task of `cfg`, and per-step costs timed on `loaded` (`startup`: how long
/// loading it took).
pub fn measure(cfg: &RunConfig, loaded: &LoadedModel, data_dir: &Path, startup: f64) -> Result<(Sizes, Costs)> {
    let mut sizes = Sizes { splits: BTreeMap::new(), instructions: BTreeMap::new() };
    let mut scoring = BTreeMap::new();
    let mut attribution_step = 0.0;
    for (i, name) in std::iter::once(&cfg.task).chain(&cfg.retain).enumerate() {
        let task = data::load_task(name, data_dir)?;
        let set = data::default_instructions(&task, data_dir)?;
        let dev = split_indices(&task, Split::Dev, cfg.split_seed, data::split::DEV_FRACTION);
        let test = split_indices(&task, Split::Test, cfg.split_seed, data::split::DEV_FRACTION);
        sizes.splits.insert(name.clone(), (dev.len(), test.len()));
        sizes.instructions.insert(name.clone(), set.items.len());
        let one = InstructionSet { name: set.name.clone(), items: set.items.iter().take(1).cloned().collect() };
        let sample: Vec<usize> = dev.iter().take(TIMED + 1).copied().collect();
        if sample.len() < 2 {
            return Err(Error::msg(format!("{name}: too few dev examples to time")));
        }
        let opts = EvalOptions::default();
        evaluate(loaded, &task, &one, &sample[..1], &opts, &mut || {})?;
        let t = Instant::now();
        evaluate(loaded, &task, &one, &sample[1..], &opts, &mut || {})?;
        scoring.insert(name.clone(), t.elapsed().as_secs_f64() / (sample.len() - 1) as f64);
        if i == 0 {
            let style = loaded.prompt_style(false);
            let instances = sample[1..]
                .iter()
                .map(|&k| {
                    let p = one.items[0].render(&task.examples[k])?;
                    let enc = encode(&loaded.text, style, &p.text, &p.candidates)?;
                    Ok(Instance { prompt: enc.prompt, candidates: enc.candidates, gold: p.label })
                })
                .collect::<Result<Vec<_>>>()?;
            let t = Instant::now();
            attribute_sum(loaded.model.as_ref(), &instances, &cfg.attribution.settings, &mut |_| {});
            attribution_step = t.elapsed().as_secs_f64() / instances.len() as f64;
        }
    }
    let t = Instant::now();
    neutral_distributions(loaded, 4)?;
    let forward = t.elapsed().as_secs_f64() / 4.0;
    Ok((sizes, Costs { startup, attribution_step, scoring, forward, threads: rayon::current_num_threads() }))
}

/// The plan as a table: per stage, units, steps, CPU hours and wall time on each of `workers`.
pub fn render(stages: &[StagePlan], costs: &Costs, workers: &[usize]) -> String {
    let hours = |s: f64| s / 3600.0;
    let fmt_wall = |s: f64| {
        if s >= 3600.0 {
            format!("{:.1} h", s / 3600.0)
        } else if s >= 60.0 {
            format!("{:.1} min", s / 60.0)
        } else {
            format!("{s:.0} s")
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "measured: model load {:.1} s, attribution step {:.2} s, forward pass {:.3} s, scoring per task: {}\n\n",
        costs.startup,
        costs.attribution_step,
        costs.forward,
        costs.scoring.iter().map(|(t, s)| format!("{t} {s:.3} s")).collect::<Vec<_>>().join(", ")
    ));
    let mut header = format!("{:<12} {:>7} {:>7} {:>9} {:>10}", "stage", "rounds", "units", "steps", "worker-h");
    for w in workers {
        header.push_str(&format!(" {:>12}", format!("wall on {w}")));
    }
    out.push_str(&header);
    out.push('\n');
    let mut totals = vec![0.0; workers.len()];
    let (mut units, mut steps, mut cpu) = (0, 0, 0.0);
    for s in stages {
        let rounds = if s.estimated_rounds { format!("~{}", s.rounds.len()) } else { s.rounds.len().to_string() };
        // CPU time as the most parallel column would spend it (model loads included).
        let c = s.cpu_seconds(costs.startup, *workers.last().unwrap_or(&1));
        let mut line = format!("{:<12} {:>7} {:>7} {:>9} {:>10.2}", s.stage, rounds, s.units(), s.steps, hours(c));
        for (i, &w) in workers.iter().enumerate() {
            let wall = s.wall(costs.startup, w);
            totals[i] += wall;
            line.push_str(&format!(" {:>12}", fmt_wall(wall)));
        }
        out.push_str(&line);
        out.push('\n');
        units += s.units();
        steps += s.steps;
        cpu += c;
    }
    let mut line = format!("{:<12} {:>7} {:>7} {:>9} {:>10.2}", "total", "", units, steps, hours(cpu));
    for t in totals {
        line.push_str(&format!(" {:>12}", fmt_wall(t)));
    }
    out.push_str(&line);
    let longest = stages.iter().flat_map(|s| s.rounds.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
    out.push_str(&format!(
        "\n\nA worker is as fast as this process was ({} threads); worker-hours count a model load per unit \
         (as on a cluster); wall times assume no queueing delay; the search's round count is estimated (~). \
         The longest unit takes {}: more workers than units do not help, a smaller `[chunks]` in config.toml \
         cuts units finer.\n",
        costs.threads,
        fmt_wall(longest)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makespan_is_longest_processing_time_first() {
        // LPT: 3 | 3, then 2 → 5 | 5, then 2 → 7 (the optimum, 3+3 | 2+2+2 = 6, is within LPT's 4/3 bound).
        assert_eq!(makespan(&[3.0, 3.0, 2.0, 2.0, 2.0], 2, 0.0), 7.0);
        assert_eq!(makespan(&[4.0, 3.0, 2.0, 1.0], 2, 0.0), 5.0);
        assert_eq!(makespan(&[5.0, 1.0, 1.0], 8, 1.0), 6.0);
        assert_eq!(makespan(&[1.0; 10], 1, 0.0), 10.0);
        assert_eq!(makespan(&[], 4, 0.0), 0.0);
    }

    #[test]
    fn chunks_cover_every_instance() {
        assert_eq!(chunked(10, 4), vec![4, 4, 2]);
        assert_eq!(chunked(10, 0), vec![10]);
        assert_eq!(chunked(3, 8), vec![3]);
    }

    #[test]
    fn the_paper_preset_plans_every_unit_of_attribution_and_test() {
        let cfg = RunConfig::preset("paper", "default", "bbq:Age", vec!["rte".into()]).unwrap();
        let sizes = Sizes {
            splits: [("bbq:Age".to_string(), (368, 1840)), ("rte".to_string(), (27, 139))].into_iter().collect(),
            instructions: [("bbq:Age".to_string(), 10), ("rte".to_string(), 10)].into_iter().collect(),
        };
        let costs = Costs {
            startup: 2.0,
            attribution_step: 1.0,
            scoring: [("bbq:Age".to_string(), 0.1), ("rte".to_string(), 0.2)].into_iter().collect(),
            forward: 0.05,
            threads: 2,
        };
        let p = plan(&cfg, &sizes, &costs);
        // 20 instances × 10 instructions, one unit per instruction.
        assert_eq!((p[0].units(), p[0].steps), (10, 200));
        assert!((p[0].wall(2.0, 1) - 200.0).abs() < 1e-9);
        assert!((p[0].wall(2.0, 64) - 22.0).abs() < 1e-9, "one unit of 20 steps + a model load");
        // Test: (1840 + 139) × 10 instructions × 5 configurations.
        assert_eq!(p[2].steps, (1840 + 139) * 10 * 5);
        assert_eq!(p[2].units(), 2 * 10 * 5);
        // Search: every round evaluates the whole dev split under 10 instructions.
        assert_eq!(p[1].steps % (368 * 10), 0);
        assert!(p[1].rounds.len() >= 10, "golden-section over [0, 500] down to width 4");
        let text = render(&p, &costs, &[1, 8, 64]);
        assert!(text.contains("wall on 64") && text.contains("attribution"), "{text}");
    }
}
