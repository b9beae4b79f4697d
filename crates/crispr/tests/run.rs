//! `crispr run` end to end on the tiny Llama checkpoint: a complete run writes its report files;
//! a run killed mid-attribution and resumed with the same command gives the same metrics.json as
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
    child.kill().unwrap();
    let _ = child.wait();
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
