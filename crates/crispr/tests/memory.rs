//! `crispr info` reads headers only, and every command refuses a model that does not fit in
//! memory with one line — on a crafted checkpoint whose header describes 1.1 G bf16 weights
//! backed by a sparse file (2.3 GB that take no disk and are never read).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{crispr_bin, fixtures};

const HIDDEN: usize = 4096;
const FF: usize = 14336;
const LAYERS: usize = 4;
const VOCAB: usize = 32000;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;

/// A Llama checkpoint directory with the tiny fixture's tokenizer and a sparse bf16 safetensors
/// file whose header lists every tensor of the large shape.
fn crafted(dir: &Path) -> u64 {
    let tiny = fixtures().join("tiny").join("llama");
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false,
        "max_position_embeddings": 2048,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let hd = HIDDEN / HEADS;
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]), ("lm_head.weight".into(), vec![VOCAB, HIDDEN])];
    tensors.push(("model.norm.weight".into(), vec![HIDDEN]));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        tensors.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        tensors.push((format!("{p}.self_attn.q_proj.weight"), vec![HEADS * hd, HIDDEN]));
        tensors.push((format!("{p}.self_attn.k_proj.weight"), vec![KV_HEADS * hd, HIDDEN]));
        tensors.push((format!("{p}.self_attn.v_proj.weight"), vec![KV_HEADS * hd, HIDDEN]));
        tensors.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HEADS * hd]));
        tensors.push((format!("{p}.mlp.gate_proj.weight"), vec![FF, HIDDEN]));
        tensors.push((format!("{p}.mlp.up_proj.weight"), vec![FF, HIDDEN]));
        tensors.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, FF]));
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    let mut elements = 0u64;
    for (name, shape) in &tensors {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        elements += n;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}),
        );
        offset += 2 * n;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    // The data: a hole, read as zeros, taking no disk.
    f.set_len(8 + text.len() as u64 + offset).unwrap();
    elements
}

#[test]
fn info_reads_headers_only_and_loading_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let elements = crafted(dir.path());
    let model = dir.path().to_str().unwrap();

    // info: instant, small, and the parameter count comes from the header.
    let started = std::time::Instant::now();
    let o = Command::new(crispr_bin()).args(["info", "--json", "--model", model]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"].as_u64(), Some(elements));
    let (f32_bytes, bf16_bytes) =
        (v["memory"]["f32_bytes"].as_u64().unwrap(), v["memory"]["bf16_bytes"].as_u64().unwrap());
    assert!(f32_bytes > 4 * elements && bf16_bytes > 2 * elements && bf16_bytes < f32_bytes / 2 + (300 << 20));
    assert!(started.elapsed().as_secs() < 20, "info took {:?}", started.elapsed());

    // Under a 6 GiB address-space limit the f32 model (4.6 GiB + the 2.1 GiB mapped file) does
    // not fit and bf16 (2.3 GiB + the file) does: one line naming both.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"hi\", \"candidates\": [\"a\"]}\n").unwrap();
    let script = format!(
        "ulimit -v {}; exec \"$0\" score --model \"$1\" --input \"$2\"",
        6u64 << 20 // KiB
    );
    let o = Command::new("sh")
        .args(["-c", &script, crispr_bin().to_str().unwrap(), model, input.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "f32 must be refused: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for needle in [model, "needs", "in f32", "RLIMIT_AS", "--precision bf16"] {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    // info under the same limit still works: it maps but never reads or copies the weights.
    let script = "ulimit -v 4194304; exec \"$0\" info --model \"$1\"";
    let o = Command::new("sh").args(["-c", script, crispr_bin().to_str().unwrap(), model]).output().unwrap();
    assert!(o.status.success(), "info under a 4 GiB limit: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("in bf16"));
}

/// `--precision bf16` end to end on the tiny Llama fixture: attribution with `--check-f32`
/// records its agreement with f32, and eval records the re-check.
#[test]
fn bf16_attribution_and_eval_report_their_agreement_with_f32() {
    let model = fixtures().join("tiny").join("llama");
    let data = common::data_dir();
    let dir = tempfile::tempdir().unwrap();
    let subset = dir.path().join("age.jsonl");
    let age = std::fs::read_to_string(data.join("bbq").join("data").join("Age.jsonl")).unwrap();
    std::fs::write(&subset, age.lines().take(4).collect::<Vec<_>>().join("\n")).unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(crispr_bin()).args(args).env("CRISPR_DATA_DIR", &data).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let out = dir.path().join("attr");
    let (m, t, o) = (model.to_str().unwrap(), subset.to_str().unwrap(), out.to_str().unwrap());
    run(&[
        "attribute",
        "--model",
        m,
        "--task",
        t,
        "--samples",
        "all",
        "--precision",
        "bf16",
        "--check-f32",
        "--out",
        o,
    ]);
    let n: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("neurons.json")).unwrap()).unwrap();
    let meta = &n;
    assert_eq!(meta["precision"], "bf16", "{meta}");
    // Which kernel ran is recorded: this CPU's default (the binary runs where the test does).
    let kernel = crispr::tensor_bf16::best_kernel().name();
    assert_eq!(meta["bf16_kernel"], kernel, "{meta}");
    let agreement = &meta["precision_check"]["agreement"];
    assert!(agreement["top_overlap"].as_u64().unwrap() >= 80, "{agreement}");
    assert!(agreement["spearman"].as_f64().unwrap() > 0.95, "{agreement}");

    let ev = dir.path().join("eval");
    run(&["eval", "--model", m, "--task", t, "--split", "all", "--precision", "bf16", "--out", ev.to_str().unwrap()]);
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(ev.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["precision"], "bf16");
    assert_eq!(metrics["bf16_kernel"], kernel);
    let r = &metrics["recheck"];
    assert_eq!(r["examples"], 40, "{r}");
    assert!(r["rescored"].as_u64().unwrap() >= 4 && r["margin"].as_f64().unwrap() >= 0.1, "{r}");
}
