//! Retention-aware selection (issue: "Debias without breaking the model").
//! - The activation probe finds a massive residual dimension planted in the tiny Llama, and flags
//!   exactly the rows that write it.
//! - A `crispr run` with protected tasks, excluded massive rows, normalised scores and a retention
//!   constraint never prunes a protected neuron, and the n it returns keeps the constraint on dev
//!   (checked here from the run's own measurements, independently of the search code).
//! - The faithful (paper) selection is unchanged: a run's bias neurons, search curve and n equal
//!   those stored from the code before retention-aware selection existed.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crispr::diagnostics::{probe, writes_residual};
use crispr::score::encode;

fn tiny_llama() -> PathBuf {
    common::fixtures().join("tiny").join("llama")
}

#[test]
fn planted_massive_dimension_is_found_and_its_writers_flagged() {
    let mut loaded = crispr::loader::load(&tiny_llama()).unwrap();
    let style = loaded.prompt_style(false);
    let prompts: Vec<Vec<u32>> = ["The cat sat on the mat.", "Who was not comfortable using the phone?"]
        .iter()
        .map(|p| encode(&loaded.text, style, p, &[]).unwrap().prompt)
        .collect();
    let clean = probe(loaded.model.as_ref(), &prompts);
    assert!(clean.massive.is_empty(), "random tiny model has no massive dimension: {:?}", clean.massive);

    // Plant one: row 5 of layer 0's down projection, scaled up 10,000×, writes a huge value into
    // residual dimension 5 at every position (as the super weights of real models do).
    let (site, width) = {
        let sites = loaded.model.sites();
        let i = sites.iter().position(|s| s.name == "model.layers.0.mlp.down_proj").unwrap();
        (i, sites[i].width)
    };
    assert!(width > 5);
    {
        let lin = loaded.model.prune_target(site);
        let (w, b) = lin.row(5);
        let scaled: Vec<f32> = w.iter().map(|x| x * 1.0e4).collect();
        lin.set_row(5, &scaled, b);
    }
    let stats = probe(loaded.model.as_ref(), &prompts);
    let dims = stats.massive_dims();
    assert_eq!(dims, vec![5], "massive dimensions found: {:?}", stats.massive);
    let sites = loaded.model.sites();
    for (i, s) in sites.iter().enumerate() {
        for row in [4usize, 5] {
            if row >= s.width {
                continue;
            }
            let want = row == 5 && writes_residual(s.kind);
            assert_eq!(stats.writes_massive(s, row), want, "{}:{row}", s.name);
        }
        if i == site {
            let rel = stats.relative_magnitude(i, 5).unwrap();
            assert!(rel > 100.0, "the planted row's output is {rel}× its module's median");
        }
    }
}

fn write_config(dir: &Path, task: &str, retain: &str, extra: &str, preset: &str) -> PathBuf {
    let settings = common::ATTRIBUTION_SETTINGS_TOML;
    let text = format!(
        r#"model = "{}"
task = "{task}"
retain = {retain}
preset = "{preset}"
split_seed = 0

[attribution]
samples = 12
seeds = [2026]
instructions = 2

{settings}

[search]
lo = 0
hi = 40
final_width = 3
dev_limit = 8
instructions = 2
seed = 0
{extra}
[test]
limit = 8
instructions = 2
retain_limit = 6
retain_instructions = 2
random_seeds = [1, 2]
seed = 0
"#,
        tiny_llama().display()
    );
    let path = dir.join(format!("{preset}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cfg: &Path, out: &Path) -> serde_json::Value {
    let o = Command::new(common::crispr_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env("CRISPR_DATA_DIR", common::data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn protected_neurons_are_never_pruned_and_the_constraint_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = r#"
[search.constraint]
max_drop = 5.0
max_kl = 0.02
retain_dev_limit = 6
retain_instructions = 2
kl_prompts = 6

[selection]
normalize = true
exclude_massive = true
protect = ["rte", "sst2"]
protect_top = 300
protect_samples = 4
protect_instructions = 2
ablate_top = 40
"#;
    let cfg = write_config(tmp.path(), "bbq:Age", r#"["rte", "sst2"]"#, extra, "retain-test");
    let out = tmp.path().join("run");
    let m = run(&cfg, &out);

    // Protected: the top 300 skill neurons of each protected task, recomputed from the cached
    // skill scores, are disjoint from the pruned neurons.
    let mut protected = HashSet::new();
    for task in ["rte", "sst2"] {
        let path = out.join("protect").join(format!("{task}.safetensors"));
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut all: Vec<(String, usize, f64)> = Vec::new();
        for (name, view) in st.tensors() {
            for (row, c) in view.data().chunks_exact(8).enumerate() {
                all.push((name.clone(), row, f64::from_le_bytes(c.try_into().unwrap())));
            }
        }
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        assert!(all[0].2 > 0.0, "{task}: skill attribution produced no positive score");
        protected.extend(all.into_iter().take(300).map(|(n, r, _)| format!("{n}:{r}")));
    }
    assert!(protected.len() > 300, "two tasks' protected sets");
    let pruned: Vec<&str> = m["bias_neurons"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(pruned.len(), m["n_selected"].as_u64().unwrap() as usize);
    for id in &pruned {
        assert!(!protected.contains(*id), "protected neuron {id} was pruned");
    }
    assert!(m["excluded"]["protected"].as_u64().unwrap() > 0);

    // The ablation check: every candidate the search could choose was zeroed alone, raised the
    // target's margin and kept KL within a tenth of the budget.
    let ablation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    let ablation = ablation.as_array().unwrap();
    assert_eq!(ablation.len(), 40);
    let kept: HashSet<&str> =
        ablation.iter().filter(|r| r["kept"] == true).map(|r| r["id"].as_str().unwrap()).collect();
    for r in ablation {
        let ok = r["margin_change"].as_f64().unwrap() > 0.0 && r["kl"].as_f64().unwrap() <= 0.002;
        assert_eq!(r["kept"].as_bool().unwrap(), ok, "{r}");
        assert!(!protected.contains(r["id"].as_str().unwrap()), "protected neurons are not even candidates");
    }
    assert!(!kept.is_empty() && kept.len() < 40, "the check keeps some candidates and rejects others");
    for id in &pruned {
        assert!(kept.contains(id), "{id} was pruned without passing the ablation check");
    }

    // The constraint, checked from the measurements at every evaluated n.
    let points = m["search_points"].as_array().unwrap();
    let base = points.iter().find(|p| p["n"] == 0).expect("n = 0 evaluated");
    let feasible = |p: &serde_json::Value| -> bool {
        let retained_ok = p["retained"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| base["retained"][k].as_f64().unwrap() - v.as_f64().unwrap() <= 5.0 + 1e-9);
        let dis_ok = match (p["acc_disambig"].as_f64(), base["acc_disambig"].as_f64()) {
            (Some(d), Some(b)) => b - d <= 5.0 + 1e-9,
            _ => true,
        };
        retained_ok && dis_ok && p["kl"].as_f64().unwrap() <= 0.02
    };
    assert!(points.len() >= 4, "the search evaluated several n");
    // search.json (what a user opens) says the same as metrics.json, feasibility included.
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("search.json")).unwrap()).unwrap();
    assert_eq!(&cached, &m["search_points"], "search.json and metrics.json disagree");
    for p in points {
        assert_eq!(p["feasible"].as_bool().unwrap(), feasible(p), "feasibility of n = {}", p["n"]);
        assert_eq!(p["retained"].as_object().unwrap().len(), 2);
    }
    let chosen = m["n_selected"].as_u64().unwrap();
    let cp = points.iter().find(|p| p["n"].as_u64() == Some(chosen)).unwrap();
    assert!(feasible(cp), "the chosen n = {chosen} breaks the constraint: {cp}");
    // And it is the best feasible one (ties: smaller n).
    for p in points.iter().filter(|p| feasible(p)) {
        let (acc, n) = (p["acc"].as_f64().unwrap(), p["n"].as_u64().unwrap());
        let best = cp["acc"].as_f64().unwrap();
        assert!(acc < best || (acc == best && n >= chosen), "n = {n} (acc {acc}) beats the chosen n");
    }
    assert!(points.iter().any(|p| !feasible(p)), "this tight constraint should rule some n out");

    // The verdict's paired deltas agree with the plain means of the evaluations (a different code
    // path), and every interval contains its estimate.
    let verdict = &m["verdict"];
    for (task, d) in std::iter::once(("bbq:Age", &verdict["target"]))
        .chain(verdict["retained"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v)))
    {
        let t = &m["tasks"][task];
        let want = t["crispr"]["mean"]["acc"].as_f64().unwrap() - t["original"]["mean"]["acc"].as_f64().unwrap();
        let got = &d["crispr_delta"]["acc"];
        assert!((got["delta"].as_f64().unwrap() - want).abs() < 1e-9, "{task}: {got} vs {want}");
        let (lo, hi) = (got["ci95"][0].as_f64().unwrap(), got["ci95"][1].as_f64().unwrap());
        assert!(lo <= want + 1e-9 && want <= hi + 1e-9, "{task}: {want} outside [{lo}, {hi}]");
    }
    // The verdict and diagnostics are in the results and at the top of both reports.
    assert!(verdict["headline"].as_str().unwrap().len() > 20);
    assert!(m["diagnostics"]["summary"].as_str().is_some());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(md.contains("**Verdict:") && html.contains("id=\"verdict\""));
    assert!(html.contains("Retention trade-off") && html.contains("KL divergence against n"));
    // The title names the model as given, not a cache path.
    assert!(html.contains(&format!("bias neurons of <code>{}</code>", tiny_llama().display())));
}

#[test]
fn faithful_selection_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "rte", r#"["boolq"]"#, "", "paper-subset");
    let m = run(&cfg, &tmp.path().join("run"));
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("faithful_run").join("expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["n_selected"], want["n_selected"]);
    assert_eq!(m["search"], want["search"], "dev accuracy at every evaluated n");
    // The neurons and their order exactly; the scores to f32 round-off (the fixture was made on
    // another CPU, whose cache sizes give the GEMM another blocking and so another order of
    // additions: seen 7e-7 relative on a Zen 3 against the fixture's host). The fixture's
    // scores are 2 % or more apart, so the order does not hang on that round-off.
    let (got, exp) = (m["bias_neurons"].as_array().unwrap(), want["bias_neurons"].as_array().unwrap());
    assert_eq!(got.len(), exp.len(), "the number of pruned neurons");
    for (g, e) in got.iter().zip(exp) {
        for key in ["id", "module", "row"] {
            assert_eq!(g[key], e[key], "the pruned neurons, in order: {g} vs {e}");
        }
        let (gs, es) = (g["score"].as_f64().unwrap(), e["score"].as_f64().unwrap());
        assert!((gs - es).abs() <= 1e-4 * es.abs(), "score of {}: {gs:e} vs {es:e}", e["id"]);
    }
    assert!(m["n_selected"].as_u64().unwrap() > 0, "the fixture prunes something");
    for task in ["rte", "boolq"] {
        for k in ["original", "crispr"] {
            assert_eq!(m["tasks"][task][k]["mean"], want["tasks"][task][k]["mean"], "{task} {k}");
        }
    }
}
