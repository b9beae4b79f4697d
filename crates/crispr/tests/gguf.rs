//! GGUF reading: dequantisation of every supported type against gguf-py, and clean errors on
//! truncated or foreign files.

mod common;

use crispr::gguf::GgufFile;

#[test]
fn every_quant_type_dequantizes_like_gguf_py() {
    let path = common::fixtures().join("gguf").join("quants.gguf");
    let f = GgufFile::open(&path).unwrap();
    let mut checked = Vec::new();
    for t in f.tensors.iter().filter(|t| !t.name.ends_with(".expected")) {
        let exp = f.tensor(&format!("{}.expected", t.name)).expect("expected tensor");
        let got = f.dequantize(t);
        let want = f.dequantize(exp);
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{} element {i}: {a} vs {b}", t.name);
        }
        checked.push(t.dtype.name());
    }
    checked.sort();
    assert_eq!(checked, ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]);
}

#[test]
fn truncated_gguf_is_an_error_naming_file_and_tensor() {
    let path = common::fixtures().join("gguf").join("quants.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = GgufFile::open(&cut).err().expect("truncated file must fail").to_string();
    assert!(err.contains("cut.gguf") && err.contains("truncated") && err.contains("tensor"), "{err}");
    std::fs::write(&cut, &bytes[..40]).unwrap();
    let err = GgufFile::open(&cut).err().expect("header-only file must fail").to_string();
    assert!(err.contains("cut.gguf"), "{err}");
    std::fs::write(&cut, b"not a gguf file at all").unwrap();
    let err = GgufFile::open(&cut).err().unwrap().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}

/// A GGUF in llama.cpp's naming and metadata (f32; q/k rows as in the checkpoint: llama.cpp
/// permutes them for the llama architecture only) built from a tiny checkpoint, with `extra`
/// metadata keys.
fn gguf_from_checkpoint(family: &str, extra: &[(&str, u32)], out: &std::path::Path) {
    use common::gguf_build::{self, f32_tensor, set_meta, Meta};
    let dir = common::fixtures().join("tiny").join(family);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let get = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (mut meta, _) = gguf_build::tiny_llama();
    meta.retain(|(k, _)| !k.starts_with("llama."));
    set_meta(&mut meta, "general.architecture", Meta::Str(family.into()));
    let head_dim = cfg["head_dim"].as_u64().map_or(get("hidden_size") / get("num_attention_heads"), |h| h as u32);
    let mut keys = vec![
        ("embedding_length", get("hidden_size")),
        ("feed_forward_length", get("intermediate_size")),
        ("block_count", get("num_hidden_layers")),
        ("attention.head_count", get("num_attention_heads")),
        ("attention.head_count_kv", get("num_key_value_heads")),
        ("attention.key_length", head_dim),
        ("attention.value_length", head_dim),
        ("context_length", get("max_position_embeddings")),
        ("vocab_size", get("vocab_size")),
    ];
    keys.extend_from_slice(extra);
    for (key, value) in keys {
        set_meta(&mut meta, &format!("{family}.{key}"), Meta::U32(value));
    }
    let theta = cfg["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32;
    set_meta(&mut meta, &format!("{family}.rope.freq_base"), Meta::F32(theta));
    let eps = cfg["rms_norm_eps"].as_f64().unwrap() as f32;
    set_meta(&mut meta, &format!("{family}.attention.layer_norm_rms_epsilon"), Meta::F32(eps));
    let rename = |hf: &str| -> String {
        let name = match hf {
            "model.embed_tokens.weight" => return "token_embd.weight".into(),
            "model.norm.weight" => return "output_norm.weight".into(),
            "lm_head.weight" => return "output.weight".into(),
            _ => hf.strip_prefix("model.layers.").unwrap(),
        };
        let (layer, rest) = name.split_once('.').unwrap();
        let stem = match rest.strip_suffix(".weight").unwrap() {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.qkv_proj" => "attn_qkv",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => panic!("unexpected tensor {other}"),
        };
        format!("blk.{layer}.{stem}.weight")
    };
    let mut tensors: Vec<_> = common::read_safetensors(&dir.join("model.safetensors"))
        .into_iter()
        .map(|(name, (shape, values))| {
            // GGUF lists dimensions fastest first.
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            f32_tensor(&rename(&name), &dims, &values)
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    gguf_build::write(out, &meta, &tensors);
}

/// The GGUF scores exactly like its checkpoint, and a copy pruned in its own format scores as
/// the model pruned in memory.
fn gguf_matches_checkpoint(family: &str, extra: &[(&str, u32)]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("{family}.gguf"));
    gguf_from_checkpoint(family, extra, &path);
    let from_gguf = crispr::loader::load(&path).unwrap();
    let from_dir = crispr::loader::load(&common::fixtures().join("tiny").join(family)).unwrap();
    assert_eq!(from_gguf.model.describe()["architecture"], family);
    assert_eq!(from_gguf.model.sites(), from_dir.model.sites());
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 300).collect();
    let cands = vec![vec![5u32, 77, 123], vec![9, 2]];
    let a = from_gguf.model.score(&prompt, &cands);
    assert_eq!(a, from_dir.model.score(&prompt, &cands), "{family}: GGUF and checkpoint log-probabilities");

    let mut loaded = from_gguf;
    let sites = loaded.model.sites().len();
    let neurons: Vec<crispr::prune::Neuron> =
        [(0, 3), (1, 20), (sites - 2, 50)].map(|(site, row)| crispr::prune::Neuron { site, row }).to_vec();
    let mut rows = crispr::export::RowsByModule::new();
    for n in &neurons {
        rows.entry(loaded.model.prune_target_name(n.site)).or_default().push(n.row);
    }
    let out = tmp.path().join("pruned.gguf");
    crispr::export::write_pruned(&loaded.format, &rows, &out).unwrap();
    let _restore = crispr::prune::prune(loaded.model.as_mut(), &neurons);
    let in_memory = loaded.model.score(&prompt, &cands);
    assert_ne!(in_memory, a, "{family}: pruning changed the scores");
    let pruned = crispr::loader::load(&out).unwrap();
    assert_eq!(pruned.model.score(&prompt, &cands), in_memory, "{family}: pruned on disk vs in memory");
}

#[test]
fn qwen3_gguf_scores_like_its_checkpoint() {
    gguf_matches_checkpoint("qwen3", &[]);
}

#[test]
fn phi3_gguf_with_fused_projections_scores_like_its_checkpoint() {
    // The fixture rotates whole heads and has a 24-position window.
    gguf_matches_checkpoint("phi3", &[("rope.dimension_count", 16), ("attention.sliding_window", 24)]);
}
