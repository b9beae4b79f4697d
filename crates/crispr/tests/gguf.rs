//! GGUF reading: dequantisation of every supported type against gguf-py, and clean errors on
//! truncated or foreign files.

mod common;

use std::path::Path;

use common::gguf_build::{self, f32_tensor, set_meta, Meta};
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
/// permutes them for the llama architecture only) built from the tiny checkpoint in `dir`, with
/// `extra` metadata keys (under the family's prefix). Gemma's tensors are converted as llama.cpp's
/// converter does: its sandwich norms get their own names, and every norm weight is stored as
/// `1 + w`.
fn gguf_from_checkpoint(family: &str, dir: &Path, extra: &[(&str, Meta)], out: &Path) {
    gguf_with_tokenizer(family, dir, extra, None, out)
}

/// [`gguf_from_checkpoint`] with the `tokenizer.*` metadata given (else the byte-level one of
/// [`gguf_build::tiny_llama`]).
fn gguf_with_tokenizer(family: &str, dir: &Path, extra: &[(&str, Meta)], tok: Option<&[(String, Meta)]>, out: &Path) {
    let gemma = family.starts_with("gemma");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let get = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (mut meta, _) = gguf_build::tiny_llama();
    meta.retain(|(k, _)| !k.starts_with("llama."));
    if let Some(tok) = tok {
        meta.retain(|(k, _)| !k.starts_with("tokenizer."));
        meta.extend(tok.iter().cloned());
    }
    set_meta(&mut meta, "general.architecture", Meta::Str(family.into()));
    let head_dim = cfg["head_dim"].as_u64().map_or(get("hidden_size") / get("num_attention_heads"), |h| h as u32);
    let keys = [
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
    for (key, value) in keys {
        set_meta(&mut meta, &format!("{family}.{key}"), Meta::U32(value));
    }
    for (key, value) in extra {
        set_meta(&mut meta, &format!("{family}.{key}"), value.clone());
    }
    // Gemma 3 nests RoPE per layer type; the file's base is the global layers'.
    let rope = &cfg["rope_parameters"];
    let theta = rope["full_attention"]["rope_theta"].as_f64().or(rope["rope_theta"].as_f64()).unwrap() as f32;
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
            "post_attention_layernorm" if gemma => "post_attention_norm",
            "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
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
        .map(|(name, (shape, mut values))| {
            if gemma && name.ends_with("norm.weight") {
                values.iter_mut().for_each(|w| *w += 1.0);
            }
            // GGUF lists dimensions fastest first.
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            f32_tensor(&rename(&name), &dims, &values)
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    gguf_build::write(out, &meta, &tensors);
}

/// The GGUF of the checkpoint in `dir` scores exactly like it, and a copy pruned in its own
/// format scores as the model pruned in memory.
fn gguf_matches_checkpoint(family: &str, dir: &Path, extra: &[(&str, Meta)]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("{family}.gguf"));
    gguf_from_checkpoint(family, dir, extra, &path);
    let from_gguf = crispr::loader::load(&path).unwrap();
    let from_dir = crispr::loader::load(dir).unwrap();
    assert_eq!(from_gguf.model.describe()["architecture"], family);
    assert_eq!(from_gguf.model.sites(), from_dir.model.sites());
    // `crispr info` (and the memory check before a load) reads the same model from the headers.
    let info = crispr::loader::inspect(&path).unwrap();
    assert_eq!((&info.sites[..], &info.describe["architecture"]), (from_gguf.model.sites(), &family.into()));
    let a = from_gguf.model.score(&PROMPT, &candidates());
    assert_eq!(a, from_dir.model.score(&PROMPT, &candidates()), "{family}: GGUF and checkpoint log-probabilities");

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
    let in_memory = loaded.model.score(&PROMPT, &candidates());
    assert_ne!(in_memory, a, "{family}: pruning changed the scores");
    let pruned = crispr::loader::load(&out).unwrap();
    assert_eq!(pruned.model.score(&PROMPT, &candidates()), in_memory, "{family}: pruned on disk vs in memory");
}

/// 40 positions: longer than the fixtures' sliding windows.
const PROMPT: [u32; 40] = {
    let mut p = [0u32; 40];
    let mut i = 0;
    while i < 40 {
        p[i] = (i as u32 * 37 + 11) % 300;
        i += 1;
    }
    p
};

fn candidates() -> Vec<Vec<u32>> {
    vec![vec![5, 77, 123], vec![9, 2]]
}

fn tiny(family: &str) -> std::path::PathBuf {
    common::fixtures().join("tiny").join(family)
}

#[test]
fn qwen3_gguf_scores_like_its_checkpoint() {
    gguf_matches_checkpoint("qwen3", &tiny("qwen3"), &[]);
}

#[test]
fn phi3_gguf_with_fused_projections_scores_like_its_checkpoint() {
    // The fixture rotates whole heads and has a 24-position window.
    let extra = [("rope.dimension_count", Meta::U32(16)), ("attention.sliding_window", Meta::U32(24))];
    gguf_matches_checkpoint("phi3", &tiny("phi3"), &extra);
}

/// A copy of a tiny Gemma checkpoint with `query_pre_attn_scalar` = `head_dim`. GGUF has no such
/// key: llama.cpp scales queries by 1/√head_dim (below 27B), which is what every released model
/// below 27B sets, whereas the fixtures use other values to test the checkpoint path.
fn gemma_as_gguf_represents_it(family: &str, into: &Path) -> std::path::PathBuf {
    let src = tiny(family);
    let dir = into.join(family);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::copy(src.join(&name), dir.join(&name)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_ne!(cfg["query_pre_attn_scalar"], cfg["head_dim"], "the fixture no longer tests the scale");
    cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// The GGUF of the original fixture (its own `query_pre_attn_scalar`) scores differently: the
/// comparison above depends on the attention scale.
fn scale_matters(family: &str, extra: &[(&str, Meta)]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("g.gguf");
    gguf_from_checkpoint(family, &tiny(family), extra, &path);
    let gguf = crispr::loader::load(&path).unwrap();
    let original = crispr::loader::load(&tiny(family)).unwrap();
    assert_ne!(gguf.model.score(&PROMPT, &candidates()), original.model.score(&PROMPT, &candidates()));
}

#[test]
fn gemma2_gguf_scores_like_its_checkpoint() {
    // Soft-caps 5 / 10 (not llama.cpp's defaults 50 / 30) and a 16-token window; the default
    // pattern (every 2nd layer global) is the fixture's.
    let extra = [
        ("attn_logit_softcapping", Meta::F32(5.0)),
        ("final_logit_softcapping", Meta::F32(10.0)),
        ("attention.sliding_window", Meta::U32(16)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_checkpoint("gemma2", &gemma_as_gguf_represents_it("gemma2", tmp.path()), &extra);
    scale_matters("gemma2", &extra);
}

#[test]
fn gemma3_gguf_scores_like_its_checkpoint() {
    // The fixture's two layers are local then global, stated per layer (llama.cpp's default,
    // every 6th layer global, would make both local); local RoPE base 10000, global 1e6.
    let extra = [
        ("final_logit_softcapping", Meta::F32(10.0)),
        ("attention.sliding_window", Meta::U32(16)),
        ("attention.sliding_window_pattern", Meta::bools(&[true, false])),
    ];
    let tmp = tempfile::tempdir().unwrap();
    gguf_matches_checkpoint("gemma3", &gemma_as_gguf_represents_it("gemma3", tmp.path()), &extra);
    scale_matters("gemma3", &extra);
}

#[test]
fn gemma_gguf_with_its_sentencepiece_vocabulary_loads_and_scores_a_chat_prompt() {
    // A Gemma file as llama.cpp writes it: SentencePiece vocabulary, Gemma's chat template.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gemma2.gguf");
    let dir = gemma_as_gguf_represents_it("gemma2", tmp.path());
    gguf_with_tokenizer(
        "gemma2",
        &dir,
        &[("attention.sliding_window", Meta::U32(16))],
        Some(&gemma_vocab_meta()),
        &path,
    );
    let loaded = crispr::loader::load(&path).unwrap();
    let end_of_turn = loaded.text.end_of_turn.and_then(|id| loaded.text.token(id));
    assert_eq!(end_of_turn.as_deref(), Some("<end_of_turn>"));
    let cands = ["unknown".to_string(), "the grandson".to_string()];
    let enc = crispr::score::encode(&loaded.text, crispr::score::PromptStyle::Chat, "Who was crying?", &cands).unwrap();
    assert_eq!(loaded.text.token(enc.prompt[0]).as_deref(), Some("<bos>"));
    assert_eq!(enc.prompt.iter().filter(|&&t| t == enc.prompt[0]).count(), 1, "one BOS");
    let scores = loaded.model.score(&enc.prompt, &enc.candidates);
    assert!(scores.iter().all(|s| s.is_finite() && *s < 0.0), "{scores:?}");
}

/// A metadata-only `gemma2`/`gemma3` GGUF (sizes of a released model, no tensors unless given)
/// with `extra` keys, read by the Gemma family's GGUF configuration.
fn gemma_config(
    dir: &Path,
    arch: &str,
    sizes: [u32; 4],
    extra: &[(&str, Meta)],
    tensors: &[&str],
) -> crispr::Result<crispr::model::LlamaConfig> {
    let [layers, hidden, heads, head_dim] = sizes;
    let mut meta = vec![("general.architecture".to_string(), Meta::Str(arch.into()))];
    let keys = [
        ("block_count", layers),
        ("embedding_length", hidden),
        ("attention.head_count", heads),
        ("attention.head_count_kv", heads / 2),
        ("attention.key_length", head_dim),
        ("feed_forward_length", 4 * hidden),
        ("vocab_size", 262_144),
    ];
    for (k, v) in keys {
        set_meta(&mut meta, &format!("{arch}.{k}"), Meta::U32(v));
    }
    for (k, v) in extra {
        set_meta(&mut meta, &format!("{arch}.{k}"), v.clone());
    }
    let tensors: Vec<_> = tensors.iter().map(|name| f32_tensor(name, &[2], &[1.0, 1.0])).collect();
    let path = dir.join("meta.gguf");
    gguf_build::write(&path, &meta, &tensors);
    crispr::model::gemma::config::config_from_gguf(&GgufFile::open(&path)?)
}

#[test]
fn gemma_gguf_metadata_is_read_as_llama_cpp_reads_it() {
    use crispr::model::RopeScaling;
    let tmp = tempfile::tempdir().unwrap();
    // 1/√d, to the last bits (powf and sqrt may round differently).
    let scale = |d: f64| (1.0 / d.sqrt() * 1e12).round();
    let of = |c: &crispr::model::LlamaConfig| (c.attn_scale * 1e12).round();
    // gemma-2-9b without soft-cap or window keys: llama.cpp's defaults, every 2nd layer global.
    let c = gemma_config(tmp.path(), "gemma2", [42, 3584, 16, 256], &[], &[]).unwrap();
    assert_eq!((c.attn_softcap, c.final_softcap, c.sliding_window), (Some(50.0), Some(30.0), Some(4096)));
    assert_eq!(c.sliding_layers.as_deref().unwrap()[..4], [true, false, true, false]);
    assert_eq!((of(&c), c.local_rope_theta, c.qk_norm), (scale(256.0), None, false));
    assert!(c.post_norms && c.tie_word_embeddings && (c.embed_scale - 3584f64.sqrt()).abs() < 1e-12);
    // gemma-2-27b: queries scaled by 1/√(hidden/heads) = 1/√144, not 1/√head_dim.
    let c = gemma_config(tmp.path(), "gemma2", [46, 4608, 32, 128], &[], &[]).unwrap();
    assert_eq!(of(&c), scale(144.0));
    // gemma-3-27b: 1/√168; every 6th layer global; local base 10000; linear scaling (global).
    let extra = [
        ("attention.sliding_window", Meta::U32(1024)),
        ("rope.freq_base", Meta::F32(1e6)),
        ("rope.scaling.type", Meta::Str("linear".into())),
        ("rope.scaling.factor", Meta::F32(8.0)),
    ];
    let c = gemma_config(tmp.path(), "gemma3", [62, 5376, 32, 128], &extra, &[]).unwrap();
    assert_eq!(of(&c), scale(168.0));
    let sliding = c.sliding_layers.as_deref().unwrap();
    assert_eq!(sliding[..12], [true, true, true, true, true, false, true, true, true, true, true, false]);
    assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(10000.0)));
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
    assert_eq!((c.attn_softcap, c.final_softcap, c.sliding_window, c.qk_norm), (None, None, Some(1024), true));
    // gemma-3-1b (head_dim 256, hidden/heads 288): 1/√256.
    let c = gemma_config(tmp.path(), "gemma3", [26, 1152, 4, 256], &extra[..1], &[]).unwrap();
    assert_eq!(of(&c), scale(256.0));
    // No window: every layer global, on the global base; a file's own period and local base.
    let c = gemma_config(tmp.path(), "gemma3", [26, 1152, 4, 256], &[], &[]).unwrap();
    assert_eq!((c.sliding_window, c.local_rope_theta), (None, None));
    let own = [
        ("attention.sliding_window", Meta::U32(512)),
        ("attention.sliding_window_pattern", Meta::U32(3)),
        ("rope.freq_base_swa", Meta::F32(20000.0)),
    ];
    let c = gemma_config(tmp.path(), "gemma3", [6, 1152, 4, 256], &own, &[]).unwrap();
    assert_eq!(c.sliding_layers.as_deref().unwrap(), [true, true, false, true, true, false]);
    assert_eq!(c.local_rope_theta, Some(20000.0));
}

#[test]
fn gemma_gguf_refusals_name_the_file_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = [4, 64, 4, 16];
    // (architecture, keys, tensors, what the error must name)
    type Case<'a> = (&'a str, Vec<(&'a str, Meta)>, &'a [&'a str], &'a str);
    let cases: [Case; 7] = [
        ("gemma3", vec![], &["v.blk.0.attn_q.weight"], "v.blk.0.attn_q.weight"),
        ("gemma2", vec![], &["output.weight"], "output.weight"),
        ("gemma3", vec![("rope.scaling.type", Meta::Str("yarn".into()))], &[], "gemma3.rope.scaling.type"),
        ("gemma2", vec![("rope.scaling.type", Meta::Str("linear".into()))], &[], "gemma2.rope.scaling.type"),
        ("gemma3", vec![("rope.scaling.type", Meta::Str("linear".into()))], &[], "gemma3.rope.scaling.factor"),
        ("gemma2", vec![("attention.value_length", Meta::U32(32))], &[], "gemma2.attention.value_length"),
        (
            "gemma3",
            vec![
                ("attention.sliding_window", Meta::U32(8)),
                ("attention.sliding_window_pattern", Meta::bools(&[true])),
            ],
            &[],
            "gemma3.attention.sliding_window_pattern",
        ),
    ];
    for (arch, extra, tensors, named) in cases {
        let e = gemma_config(tmp.path(), arch, sizes, &extra, tensors).unwrap_err().to_string();
        assert!(e.contains("meta.gguf") && e.contains(named), "{named}: {e}");
    }
    // Through the loader: a vision tower bundled in the file is one clear error, not a panic.
    let path = tmp.path().join("mm.gguf");
    gguf_from_checkpoint("gemma3", &tiny("gemma3"), &[], &path);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(14).position(|w| w == b"blk.0.attn_k.w").unwrap();
    bytes[at..at + 2].copy_from_slice(b"v.");
    std::fs::write(&path, bytes).unwrap();
    let e = crispr::loader::load(&path).err().expect("a vision tensor is refused").to_string();
    assert!(e.contains("mm.gguf") && e.contains("vision"), "{e}");
}

/// SentencePiece vocabularies as llama.cpp stores them (no merges; Gemma's runs of spaces spelled
/// with real spaces and its scores against its merge order; Llama's and Phi-3's scores against
/// their token order; an `<unk>` of type "unknown"): token ids as transformers gives them on the
/// same files (`scripts/make_sentencepiece_fixtures.py`), with and without the BOS it adds, and
/// chat prompts as its `apply_chat_template` encodes them.
#[test]
fn sentencepiece_vocabularies_tokenize_like_transformers() {
    let dir = common::fixtures().join("gguf");
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    for arch in ["gemma3", "phi3", "llama"] {
        let file = GgufFile::open(&dir.join(format!("spm_{arch}.gguf"))).unwrap();
        let codec = crispr::text::TextCodec::from_gguf(&file).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("spm_{arch}.json"))).unwrap()).unwrap();
        assert_eq!(codec.vocab_size() as u64, expected["tokens"].as_u64().unwrap(), "{arch}");
        let texts = expected["texts"].as_array().unwrap();
        assert!(texts.len() >= 10);
        for case in texts {
            let text = case["text"].as_str().unwrap();
            assert_eq!(codec.encode(text, true).unwrap(), ids(&case["ids"]), "{arch}: {text:?}");
            assert_eq!(codec.encode(text, false).unwrap(), ids(&case["ids_no_special"]), "{arch}: {text:?}, no BOS");
        }
        // The chat template writes the one BOS; the turn closes with the template's marker.
        let chat = &expected["chat"];
        if arch != "llama" {
            assert_eq!(codec.chat_prompt(chat["user"].as_str().unwrap()).unwrap(), ids(&chat["ids"]), "{arch}");
            assert_eq!(codec.end_of_turn.map(u64::from), chat["end_of_turn"].as_u64(), "{arch}");
        }
    }
    // A tokenizer of another kind is refused, naming the file.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bert.gguf");
    let mut meta = gemma_vocab_meta();
    set_meta(&mut meta, "tokenizer.ggml.model", Meta::Str("bert".into()));
    gguf_build::write(&path, &meta, &[]);
    let e = crispr::text::TextCodec::from_gguf(&GgufFile::open(&path).unwrap()).err().unwrap().to_string();
    assert!(e.contains("bert.gguf") && e.contains("\"bert\""), "{e}");
}

/// The `tokenizer.*` metadata of the Gemma SentencePiece fixture, to give a model file Gemma's
/// tokenizer layout.
fn gemma_vocab_meta() -> Vec<(String, Meta)> {
    use crispr::gguf::Value;
    let file = GgufFile::open(&common::fixtures().join("gguf").join("spm_gemma3.gguf")).unwrap();
    let item = |v: &Value| -> (u32, Vec<u8>) {
        match v {
            Value::String(s) => (8, gguf_build::str_bytes(s)),
            Value::F32(x) => (6, x.to_le_bytes().to_vec()),
            Value::I32(x) => (5, x.to_le_bytes().to_vec()),
            Value::U32(x) => (4, x.to_le_bytes().to_vec()),
            Value::Bool(b) => (7, vec![*b as u8]),
            other => panic!("unexpected metadata value {other:?}"),
        }
    };
    file.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| {
            let meta = match v {
                Value::Array(items) => {
                    let items: Vec<(u32, Vec<u8>)> = items.iter().map(item).collect();
                    Meta::Array(items.first().map_or(8, |i| i.0), items.into_iter().map(|i| i.1).collect())
                }
                v => {
                    let (t, payload) = item(v);
                    Meta::Raw(t, payload)
                }
            };
            (k.clone(), meta)
        })
        .collect()
}
