//! The command line on real files: outputs, and one-line errors naming the file for bad input.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{crispr_bin, fixtures};

fn crispr(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(crispr_bin());
    cmd.args(args).env("CRISPR_CACHE_DIR", std::env::temp_dir().join("crispr-cli-test-cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("crispr runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tiny() -> PathBuf {
    fixtures().join("tiny").join("llama")
}

/// A copy of the tiny Llama checkpoint that a test may damage.
fn tiny_copy(dir: &Path) -> PathBuf {
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got success");
    let err = stderr(o);
    assert_eq!(err.trim().lines().count(), 1, "one-line error expected: {err}");
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}

#[test]
fn info_and_score_on_a_checkpoint() {
    let model = tiny();
    let o = crispr(&["info", "--model", model.to_str().unwrap(), "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    // 2 layers × (q 64 + k 32 + v 32 + o 64 + gate 96 + up 96 + down 64)
    assert_eq!(v["universe"]["linear"], 2 * (64 + 32 + 32 + 64 + 96 + 96 + 64));
    assert_eq!(v["universe"]["ffn"], 2 * 96);
    assert_eq!(v["chat_template"], true);

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let line = serde_json::json!({"prompt": meta["user"], "candidates": [meta["candidate"], "someone else"]});
    std::fs::write(&input, format!("{line}\n\n{line}\n")).unwrap();
    let o = crispr(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "blank lines are skipped");
    let lp = lines[0]["logprobs"][0].as_f64().unwrap();
    let want = meta["logprob"].as_f64().unwrap();
    assert!((lp - want).abs() < 1e-3, "{lp} vs transformers {want}");
    assert_eq!(lines[0]["logprobs"].as_array().unwrap().len(), 2);
}

#[test]
fn malformed_score_input_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"prompt\": \"a\", \"candidates\": [\"b\"]}\n{\"prompt\": \"a\", \"candidates\": \n")
        .unwrap();
    let o = crispr(&["score", "--model", tiny().to_str().unwrap(), "--input", input.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["bad.jsonl", "line 2"]);
    std::fs::write(&input, "{\"prompt\": \"a\", \"candidates\": []}\n").unwrap();
    let o = crispr(&["score", "--model", tiny().to_str().unwrap(), "--input", input.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["bad.jsonl", "line 1", "empty"]);
    let o = crispr(&["score", "--model", tiny().to_str().unwrap(), "--input", "/nonexistent/x.jsonl"], &[]);
    assert_fails_with(&o, &["/nonexistent/x.jsonl"]);
}

#[test]
fn bad_models_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = crispr(&["info", "--model", "/no/such/model.gguf"], &[]);
    assert_fails_with(&o, &["/no/such/model.gguf", "no such file"]);

    let m = tiny_copy(dir.path());
    let cfg_path = m.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\"")).unwrap();
    let o = crispr(&["info", "--model", m.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["config.json", "unknown architecture", "gpt_neox"]);

    std::fs::write(&cfg_path, cfg.replace("\"intermediate_size\": 96", "\"intermediate_size\": 95")).unwrap();
    let o = crispr(&["info", "--model", m.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["model.safetensors", "model.layers.0.mlp.gate_proj.weight", "[95, 64]"]);
    std::fs::write(&cfg_path, &cfg).unwrap();

    let st = m.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let o = crispr(&["info", "--model", m.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["model.safetensors"]);
    std::fs::write(&st, &bytes).unwrap();

    // A tokenizer from another model (32,100 tokens for a 400-row embedding).
    let shared_t5 = common::data_dir().join("tokenizers").join("t5").join("tokenizer.json");
    assert!(shared_t5.is_file(), "{} is missing (shared data)", shared_t5.display());
    std::fs::copy(&shared_t5, m.join("tokenizer.json")).unwrap();
    let o = crispr(&["info", "--model", m.to_str().unwrap()], &[]);
    assert_fails_with(&o, &["tokenizer.json", "does not match"]);
}

/// Serve `dir` as `/<repo>/resolve/main/<file>` until `requests` have been answered.
fn stand_in_hub(dir: PathBuf, repo: &'static str, requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.push(path.clone());
            let prefix = format!("/{repo}/resolve/main/");
            let file = path.strip_prefix(&prefix).map(|f| dir.join(f));
            match file.filter(|f| f.is_file()) {
                Some(f) => {
                    let body = std::fs::read(f).unwrap();
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                        .unwrap();
                    stream.write_all(&body).unwrap();
                }
                None => {
                    write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap()
                }
            }
        }
        seen
    });
    (addr, handle)
}

#[test]
fn hub_ids_download_once_into_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    // Requests: config, tokenizer, tokenizer_config, chat_template.jinja, generation_config,
    // the index (404), model.safetensors.
    let (endpoint, server) = stand_in_hub(tiny(), "test-org/tiny-llama", 7);
    let mut cmd = Command::new(crispr_bin());
    cmd.args(["info", "--json", "--model", "test-org/tiny-llama"])
        .env("HF_ENDPOINT", &endpoint)
        .env("CRISPR_CACHE_DIR", cache.path());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = server.join().unwrap();
    assert!(seen.iter().any(|p| p.ends_with("/model.safetensors")), "{seen:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    // The server is gone: a second run must be served from the cache.
    let o = Command::new(crispr_bin())
        .args(["info", "--model", "test-org/tiny-llama"])
        .env("HF_ENDPOINT", &endpoint)
        .env("CRISPR_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "cached run failed: {}", stderr(&o));
    // No partial downloads left behind.
    let snapshot = cache.path().join("hub/test-org--tiny-llama/main");
    for e in std::fs::read_dir(&snapshot).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".part"), "{name}");
    }
}

#[test]
fn unknown_hub_repo_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let (endpoint, _server) = stand_in_hub(tiny(), "test-org/tiny-llama", 1);
    let o = Command::new(crispr_bin())
        .args(["info", "--model", "test-org/missing"])
        .env("HF_ENDPOINT", &endpoint)
        .env("CRISPR_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert_fails_with(&o, &["test-org/missing", "not found"]);
}

#[test]
fn attribute_prune_eval_chain_on_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data_dir();
    let model = tiny();
    let scores = dir.path().join("attr");
    let run = |args: &[&str]| {
        let o = Command::new(crispr_bin()).args(args).env("CRISPR_DATA_DIR", &data).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    run(&[
        "attribute",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "bbq:Age",
        "--samples",
        "3",
        "--instructions",
        "paper",
        "--out",
        scores.to_str().unwrap(),
    ]);
    let neurons: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scores.join("neurons.json")).unwrap()).unwrap();
    assert_eq!(neurons["universe_size"], 2 * (64 + 32 + 32 + 64 + 96 + 96 + 64));
    assert_eq!(neurons["samples"][0]["indices"].as_array().unwrap().len(), 3);
    assert_eq!(neurons["task"]["name"], "bbq:Age");
    let first = &neurons["neurons"][0];
    assert_eq!(first["id"].as_str().unwrap(), format!("{}:{}", first["module"].as_str().unwrap(), first["row"]));

    // --samples all on an explicit instance file (the re-release parity mode).
    let subset = dir.path().join("subset.jsonl");
    let age = std::fs::read_to_string(data.join("bbq/data/Age.jsonl")).unwrap();
    std::fs::write(&subset, age.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    let compat = dir.path().join("compat");
    run(&[
        "attribute",
        "--model",
        model.to_str().unwrap(),
        "--task",
        subset.to_str().unwrap(),
        "--samples",
        "all",
        "--compat",
        "biasneuron",
        "--out",
        compat.to_str().unwrap(),
    ]);
    let n: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(compat.join("neurons.json")).unwrap()).unwrap();
    assert_eq!(n["samples"][0]["indices"], serde_json::json!([0, 1]));
    assert_eq!(n["settings"]["compat"], "biasneuron");

    let pruned = dir.path().join("pruned");
    run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--scores",
        scores.to_str().unwrap(),
        "--top",
        "5",
        "--out",
        pruned.to_str().unwrap(),
    ]);
    assert!(pruned.join("model.safetensors").is_file() && pruned.join("tokenizer.json").is_file());

    // Evaluating the exported model equals evaluating the in-memory pruned one.
    let e1 = dir.path().join("e1");
    let e2 = dir.path().join("e2");
    let o = run(&[
        "eval",
        "--model",
        pruned.to_str().unwrap(),
        "--task",
        "rte",
        "--limit",
        "5",
        "--out",
        e1.to_str().unwrap(),
    ]);
    // stderr is not a terminal here: progress comes as plain lines, the last one at 100 %.
    assert!(stderr(&o).contains("crispr: eval 50/50 (100 %)"), "{}", stderr(&o));
    // predictions.jsonl: one line per (instruction, example); each choice is the argmax of its
    // scores, and the accuracy recomputed from the lines is the reported one.
    let metrics1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e1.join("metrics.json")).unwrap()).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(e1.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    for per in metrics1["per_instruction"].as_array().unwrap() {
        let mine: Vec<_> = lines.iter().filter(|l| l["instruction"] == per["instruction"]).collect();
        assert_eq!(mine.len(), 5);
        let mut correct = 0;
        for l in &mine {
            let scores: Vec<f64> = l["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(scores.len(), l["candidates"].as_array().unwrap().len());
            let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
            assert_eq!(l["choice"], best);
            correct += usize::from(l["choice"] == l["gold"]);
        }
        assert!((per["acc"].as_f64().unwrap() - 100.0 * correct as f64 / 5.0).abs() < 1e-9);
    }
    run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "rte",
        "--limit",
        "5",
        "--scores",
        scores.to_str().unwrap(),
        "--top",
        "5",
        "--out",
        e2.to_str().unwrap(),
    ]);
    let m = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("metrics.json")).unwrap()).unwrap()
    };
    assert_eq!(m(&e1)["per_instruction"], m(&e2)["per_instruction"]);
    assert_eq!(m(&e1)["n_examples"], 5);
    assert_eq!(m(&e1)["per_instruction"].as_array().unwrap().len(), 10);

    // Bad arguments are one-line errors.
    let o = Command::new(crispr_bin())
        .args(["attribute", "--model", model.to_str().unwrap(), "--task", "bbq:Nope", "--out", "/tmp/x"])
        .env("CRISPR_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_fails_with(&o, &["bbq:Nope"]);
    let o = Command::new(crispr_bin())
        .args([
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--scores",
            "/nonexistent",
            "--top",
            "3",
            "--out",
            "/tmp/y",
        ])
        .output()
        .unwrap();
    assert_fails_with(&o, &["/nonexistent"]);
}
