//! One run, three executors, the same bytes: `crispr run` in one process, with `--executor local
//! --jobs 2` (worker processes), and with `--executor slurm` on a real single-node Slurm cluster
//! (started by `.ci/run` with `scripts/slurm-local.sh`; `SLURM_CONF` points at it). Then a Slurm
//! run whose array task is cancelled mid-stage: the driver re-submits it and the result is the
//! same again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cluster the tests submit to; they fail (never skip) without one.
fn slurm_conf() -> String {
    let conf = std::env::var("SLURM_CONF").unwrap_or_default();
    assert!(
        !conf.is_empty() && Path::new(&conf).is_file(),
        "these tests need a Slurm cluster: run `scripts/slurm-local.sh start DIR` and export the SLURM_CONF it \
         prints (.ci/run does both)"
    );
    let ok = Command::new("sinfo").arg("-h").env("SLURM_CONF", &conf).output().map(|o| o.status.success());
    assert_eq!(ok.ok(), Some(true), "sinfo fails with SLURM_CONF={conf}: is the cluster up?");
    conf
}

/// A small run; `search_hi` bounds the search (from n = 3), `limit` the target's test instances.
fn config(
    dir: &Path,
    model: &Path,
    attribution: &str,
    search_hi: usize,
    limit: usize,
    chunks: (usize, usize),
) -> PathBuf {
    common::SmallRun { model, attribution, search: (3, search_hi), test_limit: limit, chunks: Some(chunks) }.write(dir)
}

fn crispr_run(cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::crispr_bin());
    cmd.args(["run", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("CRISPR_DATA_DIR", common::data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn succeed(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

/// Every file of a folder (recursively), relative path → bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if dir.is_file() {
        return vec![(PathBuf::new(), std::fs::read(dir).unwrap())];
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The result files that must be byte-identical whatever computed them.
fn assert_same_results(a: &Path, b: &Path) {
    for f in ["metrics.json", "attribution/scores.safetensors", "attribution/neurons.json", "search.json"] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{}: {e}", d.join(f).display()));
        let (x, y) = (read(a), read(b));
        assert!(x == y, "{f} differs between {} and {}", a.display(), b.display());
    }
    // `model-pruned` (a checkpoint folder) or `model-pruned.gguf`.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("metrics.json")).unwrap()).unwrap();
    let name = m["pruned_model"].as_str().unwrap();
    let (x, y) = (tree(&a.join(name)), tree(&b.join(name)));
    assert!(!x.is_empty() && x == y, "the pruned models differ");
}

fn batches(dir: &Path, stage: &str) -> usize {
    std::fs::read_dir(dir.join("jobs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(stage))
        .count()
}

#[test]
fn one_process_worker_processes_and_slurm_arrays_give_the_same_bytes() {
    let conf = slurm_conf();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    // 24 instances × 4 instructions in chunks of 8: 12 attribution units; evaluation in chunks of
    // 3: 2 units per instruction and configuration.
    let cfg = config(tmp.path(), &model, "samples = 24\nseeds = [2026]\ninstructions = 4", 12, 6, (8, 3));
    let one = tmp.path().join("one");
    succeed(crispr_run(&cfg, &one, &[]).output().unwrap());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(one.join("metrics.json")).unwrap()).unwrap();
    assert!(m["n_selected"].as_u64().unwrap() >= 3, "search.lo = 3: something is pruned");

    let local = tmp.path().join("local");
    succeed(crispr_run(&cfg, &local, &["--executor", "local", "--jobs", "2"]).output().unwrap());
    assert_same_results(&one, &local);
    // The workers did the work: each batch folder holds two worker logs.
    let logs = std::fs::read_dir(local.join("jobs").join("attribution-001")).unwrap().count();
    assert_eq!(logs, 3, "units.json and two worker logs");

    let slurm = tmp.path().join("slurm");
    let err = succeed(
        crispr_run(&cfg, &slurm, &["--executor", "slurm", "--max-parallel", "4"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap(),
    );
    assert!(err.contains("attribution: Slurm job") && err.contains("12 array task(s)"), "{err}");
    assert!(err.contains("test: Slurm job"), "{err}");
    assert_same_results(&one, &slurm);
    // Each array task wrote its own log in the batch folder.
    let attribution_logs = std::fs::read_dir(slurm.join("jobs").join("attribution-001"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("task-"))
        .count();
    assert_eq!(attribution_logs, 12);
    assert_eq!(batches(&slurm, "attribution"), 1, "no unit needed a retry");
}

/// Attribution array tasks of the run in `run_dir` as (task id, state), e.g. ("57_3", "RUNNING").
fn queue(conf: &str, run_dir: &Path) -> Vec<(String, String)> {
    let name = crispr::executor::job_name("attribution", run_dir);
    let o = Command::new("squeue")
        .args(["--noheader", "--array", &format!("--name={name}"), "--format=%i %T"])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.trim().to_string(), b.trim().to_string())))
        .collect()
}

#[test]
fn a_cancelled_array_task_is_resubmitted_and_the_run_ends_with_the_same_result() {
    let conf = slurm_conf();
    let tmp = tempfile::tempdir().unwrap();
    // The real default model, so that an attribution unit runs for seconds and can be cancelled
    // while it runs.
    let model = crispr::resolve::default_model().expect("the default model can be fetched");
    // Attribution: 8 instances × 3 instructions in chunks of 4 (6 units); the rest kept small.
    let cfg = config(tmp.path(), &model, "samples = 8\nseeds = [2026]\ninstructions = 3", 3, 4, (4, 0));
    let one = tmp.path().join("one");
    succeed(crispr_run(&cfg, &one, &[]).output().unwrap());

    let slurm = tmp.path().join("slurm-cancel");
    let child = crispr_run(&cfg, &slurm, &["--executor", "slurm", "--max-parallel", "2"])
        .env("SLURM_CONF", &conf)
        .spawn()
        .unwrap();
    // Cancel the first attribution array task seen running.
    let start = Instant::now();
    let cancelled = loop {
        assert!(start.elapsed() < Duration::from_secs(300), "no attribution array task ever ran");
        if let Some((id, _)) = queue(&conf, &slurm).into_iter().find(|(_, state)| state == "RUNNING") {
            let ok = Command::new("scancel").arg(&id).env("SLURM_CONF", &conf).status().unwrap();
            assert!(ok.success());
            break id;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = succeed(child.wait_with_output().unwrap());
    assert!(err.contains("did not finish; re-submitting"), "task {cancelled} was cancelled, yet:\n{err}");
    assert_eq!(batches(&slurm, "attribution"), 2, "one retry batch");
    // The retry batch holds exactly the cancelled unit.
    let retry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slurm.join("jobs").join("attribution-002").join("units.json")).unwrap())
            .unwrap();
    assert_eq!(retry.as_array().unwrap().len(), 1, "{retry}");
    assert_same_results(&one, &slurm);
}

#[test]
fn interrupting_the_driver_cancels_its_array_and_the_same_command_resumes() {
    let conf = slurm_conf();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = config(tmp.path(), &model, "samples = 24\nseeds = [2026]\ninstructions = 4", 6, 4, (4, 0));
    let one = tmp.path().join("one");
    succeed(crispr_run(&cfg, &one, &[]).output().unwrap());

    // Two array tasks at a time, so the array is still queued when the driver is stopped.
    let slurm = tmp.path().join("slurm-interrupt");
    let args = ["--executor", "slurm", "--max-parallel", "2"];
    let child = crispr_run(&cfg, &slurm, &args).env("SLURM_CONF", &conf).spawn().unwrap();
    let start = Instant::now();
    while queue(&conf, &slurm).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "the attribution array never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("interrupted: cancelled Slurm job"), "{err}");
    let start = Instant::now();
    while !queue(&conf, &slurm).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "the array outlived its driver: {:?}", queue(&conf, &slurm));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!slurm.join("metrics.json").exists());

    // The same command again finishes the run, skipping what is done, with the same result.
    let err = succeed(crispr_run(&cfg, &slurm, &args).env("SLURM_CONF", &conf).output().unwrap());
    assert!(err.contains("resuming"), "{err}");
    assert_same_results(&one, &slurm);
}

#[test]
fn grid_search_evaluates_k_values_per_round_in_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = config(tmp.path(), &model, "samples = 8\nseeds = [2026]\ninstructions = 2", 12, 4, (0, 0));
    let out = tmp.path().join("grid");
    succeed(crispr_run(&cfg, &out, &["--search", "grid:4", "--jobs", "2"]).output().unwrap());
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("method = \"grid:4\""), "{saved}");
    // n = 3 (search.lo) first, then the grid 3, 6, 9, 12 in one batch of worker processes.
    assert!(out.join("jobs").join("search_n_6_9_12-001").is_dir());
    let points: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("search.json")).unwrap()).unwrap();
    let ns: Vec<u64> = points.iter().map(|p| p["n"].as_u64().unwrap()).collect();
    for n in [3, 6, 9, 12] {
        assert!(ns.contains(&n), "{ns:?}");
    }
    // A bad method is refused before anything runs.
    let o = crispr_run(&cfg, &tmp.path().join("bad"), &["--search", "grid:1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("grid:1 needs at least 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `scores.safetensors` of a run as one vector.
fn scores(dir: &Path) -> Vec<f32> {
    let mut all: Vec<(String, Vec<f32>)> =
        common::read_safetensors(&dir.join("attribution").join("scores.safetensors"))
            .into_iter()
            .map(|(k, (_, v))| (k, v))
            .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter().flat_map(|(_, v)| v).collect()
}

#[test]
fn attribution_cut_into_chunks_equals_the_uncut_sum_up_to_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let attribution = "samples = 24\nseeds = [2026]\ninstructions = 2";
    for (name, compat) in [("default", ""), ("compat", "compat = \"biasneuron\"\n")] {
        let mut runs = Vec::new();
        for chunk in [0, 8] {
            let dir = tmp.path().join(format!("{name}-{chunk}"));
            std::fs::create_dir_all(&dir).unwrap();
            let cfg = config(&dir, &model, attribution, 3, 2, (chunk, 0));
            let text =
                std::fs::read_to_string(&cfg).unwrap().replace("lambda = 1.0\n", &format!("lambda = 1.0\n{compat}"));
            std::fs::write(&cfg, text).unwrap();
            succeed(crispr_run(&cfg, &dir.join("run"), &[]).output().unwrap());
            runs.push(scores(&dir.join("run")));
        }
        let scale = runs[0].iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        let worst = runs[0].iter().zip(&runs[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6 * scale, "{name}: chunks of 8 differ from one sum by {worst} (scale {scale})");
    }
    // Under compat, chunks that would split the re-release's batches of 4 are refused.
    let cfg = config(tmp.path(), &model, attribution, 3, 2, (6, 0));
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("lambda = 1.0\n", "lambda = 1.0\ncompat = \"biasneuron\"\n");
    std::fs::write(&cfg, text).unwrap();
    let o = crispr_run(&cfg, &tmp.path().join("bad"), &[]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("must be a multiple of 4"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_unit_failing_every_attempt_stops_the_run_naming_it_and_its_log() {
    let conf = slurm_conf();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = config(tmp.path(), &model, "samples = 8\nseeds = [2026]\ninstructions = 2", 3, 2, (0, 0));
    let out = tmp.path().join("run");
    // Every array task is given a standard input that does not exist, so none ever starts.
    let o =
        crispr_run(&cfg, &out, &["--executor", "slurm", "--retries", "1", "--sbatch-arg=--input=/nonexistent/crispr"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("re-submitting"), "{err}");
    let line = err.lines().find(|l| l.contains("failed 2 time(s)")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("attribution/partial/seed2026-instruction") && line.contains("log: "), "{line}");
    let log = line.split("log: ").nth(1).unwrap().split(';').next().unwrap();
    assert!(log.contains("jobs/attribution-002/task-"), "{log}");
    assert!(line.contains("the task did not start"), "{line}");
    assert!(!out.join("metrics.json").exists());
}

#[test]
fn slurm_without_sbatch_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = config(tmp.path(), &model, "samples = 8\nseeds = [2026]\ninstructions = 2", 3, 2, (0, 0));
    let o = crispr_run(&cfg, &tmp.path().join("run"), &["--executor", "slurm"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot run sbatch"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
