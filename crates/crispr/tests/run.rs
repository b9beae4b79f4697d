//! `crispr run` end to end on the tiny Llama checkpoint: a complete run writes its report files;
//! a run stopped by SIGTERM mid-attribution and resumed with the same command gives the same metrics.json as
//! an uninterrupted one; a directory holding a different configuration is refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path) -> std::path::PathBuf {
    let model = common::fixtures().join("tiny").join("llama");
    common::SmallRun {
        model: &model,
        attribution: "samples = 24\nseeds = [2026]\ninstructions = 4",
        search: (0, 12),
        test_limit: 6,
        chunks: None,
    }
    .write(dir)
}

fn crispr_run(cfg: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(common::crispr_bin());
    cmd.args(["run", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env("CRISPR_DATA_DIR", common::data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// metrics.json without wall-clock times.
fn metrics(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn run_reports_resumes_identically_and_refuses_other_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let a = tmp.path().join("a");
    let o = crispr_run(&cfg, &a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "metrics.json",
        "report.md",
        "report.html",
        "config.toml",
        "attribution/scores.safetensors",
        "attribution/neurons.json",
        "search.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("bbq:Age") && !html.contains("src=\"http"), "self-contained report");
    // The reports state the sample sizes the numbers rest on.
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    let sizes = "Attribution on 24 dev instances × 4 instructions (seed 2026); n searched over [0, 12] on 6 dev \
                 instances × 2 instructions; test on 6 test instances × 2 instructions for the target task and 4 \
                 test instances × 2 instructions for each retained task; random control over 2 seeds.";
    assert!(md.contains(sizes) && html.contains(sizes), "protocol sentence missing:\n{md}");
    let m = metrics(&a);
    let n = m["n_selected"].as_u64().unwrap() as usize;
    // The search always considers pruning nothing; the pruned export is written whatever n is,
    // and loads with exactly the selected neurons' rows zero.
    assert!(m["search"].as_array().unwrap().iter().any(|p| p[0] == 0));
    let exported = crispr::loader::load(&a.join("model-pruned")).expect("the pruned export loads");
    let selected = m["bias_neurons"].as_array().unwrap();
    assert_eq!(selected.len(), n, "metrics list the {n} pruned neurons");
    let mut model = exported.model;
    for neuron in selected {
        let site = model.sites().iter().position(|s| s.name == neuron["module"].as_str().unwrap()).unwrap();
        let (w, _) = model.prune_target(site).row(neuron["row"].as_u64().unwrap() as usize);
        assert!(w.iter().all(|&x| x == 0.0), "{neuron} is zero in the export");
    }
    assert_eq!(m["tasks"]["bbq:Age"]["random"].as_array().unwrap().len(), 2);

    // Rerunning a finished run redoes nothing and keeps the time the work took.
    let seconds = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("timings.json")).unwrap()).unwrap()
    };
    let before = seconds(&a);
    let o = crispr_run(&cfg, &a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = seconds(&a);
    for stage in ["attribution", "search", "test"] {
        let (x, y) = (before[stage].as_f64().unwrap(), after[stage].as_f64().unwrap());
        assert!(x > 0.0 && y >= x && y < x + 5.0, "{stage}: {x} s before the rerun, {y} s after");
    }

    // Kill a second run as soon as its first attribution checkpoint exists, then resume it.
    let b = tmp.path().join("b");
    let mut child = crispr_run(&cfg, &b).spawn().unwrap();
    let partial = b.join("attribution").join("partial");
    let start = Instant::now();
    loop {
        let done = std::fs::read_dir(&partial).map(|r| r.count()).unwrap_or(0);
        if done >= 1 || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGTERM, as `kill` and `timeout` send (Ctrl-C's SIGINT takes the same path): the run
    // computes in-process, so it must stop at once, not at the end of a stage.
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopped.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("crispr run ignored SIGTERM for 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "exit status after SIGTERM");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("interrupted; finished work is kept"), "{err}");
    assert!(!b.join("metrics.json").exists(), "killed before finishing");
    let checkpoints = std::fs::read_dir(&partial).unwrap().count();
    assert!((1..4).contains(&checkpoints), "killed mid-attribution ({checkpoints} of 4 instructions done)");
    let o = crispr_run(&cfg, &b).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    assert_eq!(metrics(&a), metrics(&b), "resumed run equals the uninterrupted one");

    // A different configuration in the same directory is refused.
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&cfg).unwrap().replace("samples = 24", "samples = 23")).unwrap();
    let o = crispr_run(&other, &b).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different settings"));
}

#[test]
fn crispr_attribute_and_crispr_run_compute_the_same_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    // Every instruction of the set, as `crispr attribute` uses.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("samples = 24\nseeds = [2026]\ninstructions = 4", "samples = 8\nseeds = [2026]\ninstructions = 0");
    std::fs::write(&cfg, text).unwrap();
    let run = tmp.path().join("run");
    let o = crispr_run(&cfg, &run).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alone = tmp.path().join("attribute");
    let model = common::fixtures().join("tiny").join("llama");
    let o = Command::new(common::crispr_bin())
        .args(["attribute", "--task", "bbq:Age", "--samples", "8", "--seed", "2026", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&alone)
        .env("CRISPR_DATA_DIR", common::data_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(
        read(&run.join("attribution").join("scores.safetensors")) == read(&alone.join("scores.safetensors")),
        "the run's attribution differs from crispr attribute's"
    );
    let meta = |p: &Path| -> serde_json::Value { serde_json::from_slice(&read(&p.join("neurons.json"))).unwrap() };
    let (a, b) = (meta(&run.join("attribution")), meta(&alone));
    for key in ["model", "task", "instructions", "settings", "split_seed", "samples", "neurons"] {
        assert_eq!(a[key], b[key], "neurons.json: {key}");
    }
    assert!(a["model"]["sha256"].as_str().is_some_and(|s| s.contains("model.safetensors:")), "{}", a["model"]);
}

/// The choices of every test unit of a run (`eval/<task>/units/<config>/…`), by file.
fn test_choices(dir: &Path) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut out = std::collections::BTreeMap::new();
    let eval = dir.join("eval");
    for task in std::fs::read_dir(&eval).unwrap() {
        let units = task.unwrap().path().join("units").join("original");
        for f in std::fs::read_dir(&units).unwrap() {
            let f = f.unwrap().path();
            let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            let choices = doc["outcomes"].as_array().unwrap().iter().map(|o| o["choice"].clone()).collect();
            out.insert(f.strip_prefix(dir).unwrap().display().to_string(), choices);
        }
    }
    out
}

#[test]
fn a_bf16_run_makes_the_f32_choices_and_says_what_it_rechecked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (f32_dir, bf16_dir) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    let o = crispr_run(&cfg, &f32_dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = crispr_run(&cfg, &bf16_dir).args(["--precision", "bf16"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = std::fs::read_to_string(bf16_dir.join("config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "the precision is part of the run's configuration:\n{config}");

    // The unpruned model's test choices do not depend on the attribution: after the re-check
    // they are the f32 run's, instance by instance.
    let (a, b) = (test_choices(&f32_dir), test_choices(&bf16_dir));
    assert!(a.len() >= 4, "test units of both tasks: {:?}", a.keys());
    assert_eq!(a, b);

    let m = metrics(&bf16_dir);
    let r = &m["recheck"];
    let examples = r["examples"].as_u64().unwrap();
    // Every evaluation unit (search and test) calibrated on its first instances.
    assert!(r["calibration_examples"].as_u64().unwrap() >= 8, "{r}");
    assert!(r["rescored"].as_u64().unwrap() >= r["calibration_examples"].as_u64().unwrap(), "{r}");
    assert!(examples > 100, "{r}");
    assert!(r["margin"].as_f64().unwrap() >= 0.1, "{r}");
    assert!(metrics(&f32_dir).get("recheck").is_none(), "f32 runs have no re-check");
    let md = std::fs::read_to_string(bf16_dir.join("report.md")).unwrap();
    assert!(md.contains("Weights in bf16") && md.contains(&format!("of {examples} evaluation choices")), "{md}");

    // Without the re-check nothing is re-scored, and the report says the choices may differ.
    let c = tmp.path().join("bf16-no-recheck");
    let o = crispr_run(&cfg, &c).args(["--precision", "bf16", "--recheck-margin", "0"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(metrics(&c).get("recheck").is_none());
    // A fixed margin re-scores only the close calls (no calibration), with the same choices.
    let d = tmp.path().join("bf16-margin");
    let o = crispr_run(&cfg, &d).args(["--precision", "bf16", "--recheck-margin", "0.3"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = &metrics(&d)["recheck"];
    let rescored = r["rescored"].as_u64().unwrap();
    assert!(rescored > 0 && rescored < examples / 2 && r["calibration_examples"] == 0, "{r}");
    assert_eq!(r["margin"], 0.3);
    assert_eq!(test_choices(&d), a);
    assert!(std::fs::read_to_string(c.join("report.md")).unwrap().contains("may differ"));
    // A margin without bf16 is a mistake, said before anything runs.
    let o = crispr_run(&cfg, &tmp.path().join("x")).args(["--recheck-margin", "0.5"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("recheck_margin applies to precision"));
}

/// A bf16 evaluation unit with neurons pruned and every choice re-checked (an infinite margin)
/// holds exactly the scores of the f32 unit: the f32 reference is pruned like the bf16 model.
#[test]
fn the_f32_recheck_prunes_the_reference_like_the_unit() {
    use crispr::precision::Precision;
    use crispr::work::{Unit, Workspace};
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let data = common::data_dir();
    let unit = Unit::Evaluate {
        task: "bbq:Age".into(),
        instruction: 1,
        indices: vec![3, 40, 41, 97, 150],
        neurons: vec![(0, 3), (2, 7), (5, 1)],
        out: "u.json".into(),
    };
    let outcomes = |precision: Precision, dir: &Path| {
        let mut cfg = crispr::run_config::RunConfig::preset("quick", "x", "bbq:Age", vec![]).unwrap();
        cfg.precision = precision;
        cfg.recheck_margin = (precision == Precision::Bf16).then_some(1e9);
        let mut loaded = crispr::loader::load_at(&model, precision).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        Workspace::new(dir, &cfg, &data, &mut loaded).compute(&unit, &mut || {}).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("u.json")).unwrap()).unwrap();
        doc
    };
    let f = outcomes(Precision::F32, &tmp.path().join("f32"));
    let b = outcomes(Precision::Bf16, &tmp.path().join("bf16"));
    assert_eq!(b["recheck"]["rescored"], 5, "{}", b["recheck"]);
    assert_eq!(f["outcomes"], b["outcomes"]);
    // …and the pruning matters: unpruned, the f32 scores are others.
    let mut cfg = crispr::run_config::RunConfig::preset("quick", "x", "bbq:Age", vec![]).unwrap();
    cfg.precision = Precision::F32;
    let mut loaded = crispr::loader::load_at(&model, Precision::F32).unwrap();
    let plain = Unit::Evaluate {
        task: "bbq:Age".into(),
        instruction: 1,
        indices: vec![3, 40, 41, 97, 150],
        neurons: vec![],
        out: "plain.json".into(),
    };
    let dir = tmp.path().join("f32");
    Workspace::new(&dir, &cfg, &data, &mut loaded).compute(&plain, &mut || {}).unwrap();
    let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plain.json")).unwrap()).unwrap();
    assert_ne!(p["outcomes"], f["outcomes"]);
}

#[test]
fn a_run_that_prunes_nothing_evaluates_the_original_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = common::SmallRun {
        model: &model,
        attribution: "samples = 4\nseeds = [2026]\ninstructions = 2",
        search: (0, 0),
        test_limit: 6,
        chunks: None,
    }
    .write(tmp.path());
    let out = tmp.path().join("run");
    let o = crispr_run(&cfg, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(metrics(&out)["n_selected"], 0);
    let mut tasks = 0;
    for task in std::fs::read_dir(out.join("eval")).unwrap() {
        let task = task.unwrap().path();
        tasks += 1;
        // With n = 0 the CRISPR and random configurations are the original model: only the
        // original's units are computed, and every configuration reports its choices.
        let units: Vec<String> = std::fs::read_dir(task.join("units"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(units, ["original"], "{}", task.display());
        let doc = |config: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(task.join(format!("{config}.json"))).unwrap()).unwrap()
        };
        let original = doc("original");
        assert!(!original["outcomes"]["choices"].as_array().unwrap().is_empty());
        for config in ["crispr", "random-seed1", "random-seed2"] {
            assert_eq!(doc(config)["outcomes"], original["outcomes"], "{config} of {}", task.display());
        }
    }
    assert_eq!(tasks, 2, "the target and the retained task");
}
