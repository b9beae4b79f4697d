//! Pruning round trips: pruning in memory equals loading a copy pruned on disk, the copy differs
//! from the input only in the pruned rows, and restoring gives back the original numbers bit for
//! bit. Run on the real SmolLM2 GGUF (q/k rows are permuted in GGUF), on a Qwen2 checkpoint
//! (q/k/v biases must be zeroed too) and on tiny T5 checkpoints of both FFN layouts.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use crispr::export::{write_pruned, RowsByModule};
use crispr::model::LanguageModel;
use crispr::prune::{prune, random_neurons, Neuron};
use crispr::score::encode;

fn prompts(loaded: &crispr::loader::LoadedModel) -> Vec<crispr::score::Encoded> {
    let cands: Vec<String> = ["The grandfather", "The grandson", "Can't be determined"].map(String::from).to_vec();
    [
        "I saw a grandson and their grandfather last week outside the Walmart trying to book a cab on Uber. Who was not comfortable using the phone?",
        "Is the following review positive or negative? The film was a tedious, overlong mess.",
    ]
    .iter()
    .map(|p| encode(&loaded.text, loaded.prompt_style(false), p, &cands).unwrap())
    .collect()
}

fn all_scores(model: &dyn LanguageModel<f32>, encs: &[crispr::score::Encoded]) -> Vec<f64> {
    encs.iter().flat_map(|e| model.score(&e.prompt, &e.candidates)).collect()
}

/// One neuron of every site kind in a few layers, plus random ones.
fn neuron_set(model: &dyn LanguageModel<f32>) -> Vec<Neuron> {
    let sites = model.sites();
    let mut v: Vec<Neuron> = sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.layer < 2)
        .map(|(i, s)| Neuron { site: i, row: (7 * i + 3) % s.width })
        .collect();
    v.extend(random_neurons(sites, crispr::model::Universe::Linear, 40, 11));
    v
}

fn rows_by_module(model: &dyn LanguageModel<f32>, neurons: &[Neuron]) -> RowsByModule {
    let mut m: RowsByModule = BTreeMap::new();
    for n in neurons {
        m.entry(model.prune_target_name(n.site)).or_default().push(n.row);
    }
    m
}

fn round_trip(input: &Path, out_name: &str) {
    let mut loaded = crispr::loader::load(input).unwrap();
    let encs = prompts(&loaded);
    let original = all_scores(loaded.model.as_ref(), &encs);
    let neurons = neuron_set(loaded.model.as_ref());
    let rows = rows_by_module(loaded.model.as_ref(), &neurons);

    let pruned = prune(loaded.model.as_mut(), &neurons);
    let in_memory = all_scores(loaded.model.as_ref(), &encs);
    assert_ne!(in_memory, original, "pruning changed nothing");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(out_name);
    write_pruned(&loaded.format, &rows, &out).unwrap();
    let mut reloaded = crispr::loader::load(&out).unwrap();
    let on_disk = all_scores(reloaded.model.as_ref(), &encs);
    assert_eq!(on_disk, in_memory, "pruned on disk vs in memory");
    for n in &neurons {
        let (w, b) = reloaded.model.prune_target(n.site).row(n.row);
        assert!(
            w.iter().all(|&x| x == 0.0) && b.is_none_or(|b| b == 0.0),
            "site {} row {} is zero on disk",
            n.site,
            n.row
        );
    }

    pruned.restore(loaded.model.as_mut());
    assert_eq!(all_scores(loaded.model.as_ref(), &encs), original, "restore is exact");

    // Writing over an existing path is refused; nothing partial is left behind.
    assert!(write_pruned(&loaded.format, &rows, &out).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn gguf_prune_round_trip_on_smollm2() {
    let input = crispr::resolve::default_model().unwrap();
    round_trip(&input, "pruned.gguf");
}

#[test]
fn gguf_export_changes_only_pruned_rows() {
    let input = crispr::resolve::default_model().unwrap();
    let loaded = crispr::loader::load(&input).unwrap();
    let neurons = neuron_set(loaded.model.as_ref());
    let rows = rows_by_module(loaded.model.as_ref(), &neurons);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.gguf");
    write_pruned(&loaded.format, &rows, &out).unwrap();
    let a = std::fs::read(&input).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len());
    // Expected changed byte ranges: each pruned row of each tensor, located independently of the
    // exporter through the GGUF directory (q/k rows via llama.cpp's permutation).
    let f = crispr::gguf::GgufFile::open(&input).unwrap();
    let mut allowed = vec![false; a.len()];
    for (module, rs) in &rows {
        let id = crispr::model::ModuleId::parse(module).unwrap();
        let t = f.tensor(&format!("blk.{}.{}.weight", id.layer, id.proj.gguf_stem())).unwrap();
        let (_, n_rows) = t.row_shape();
        for &r in rs {
            let g = match id.proj {
                crispr::model::Proj::Q => crispr::weights::gguf_row_of_hf_row(r, n_rows / 9),
                crispr::model::Proj::K => crispr::weights::gguf_row_of_hf_row(r, n_rows / 3),
                _ => r,
            };
            let s = t.offset as usize + g * t.row_bytes();
            allowed[s..s + t.row_bytes()].iter_mut().for_each(|x| *x = true);
            assert!(b[s..s + t.row_bytes()].iter().all(|&x| x == 0), "{module} row {r} is zero on disk");
        }
    }
    let stray = a.iter().zip(&b).enumerate().filter(|(i, (x, y))| x != y && !allowed[*i]).count();
    assert_eq!(stray, 0, "bytes changed outside pruned rows");
    // And the reloaded weights of pruned rows are exactly zero.
    let re = crispr::loader::load(&out).unwrap();
    let mut model = re.model;
    for n in &neurons {
        let lin = model.prune_target(n.site);
        let (w, b) = lin.row(n.row);
        assert!(w.iter().all(|&x| x == 0.0) && b.is_none_or(|b| b == 0.0));
    }
}

#[test]
fn checkpoint_prune_round_trip_with_biases() {
    round_trip(&common::fixtures().join("tiny").join("qwen2"), "pruned-qwen2");
}

#[test]
fn checkpoint_prune_round_trip_qwen3() {
    round_trip(&common::fixtures().join("tiny").join("qwen3"), "pruned-qwen3");
}

#[test]
fn checkpoint_prune_round_trip_gemma() {
    for family in ["gemma2", "gemma3"] {
        round_trip(&common::fixtures().join("tiny").join(family), &format!("pruned-{family}"));
    }
}

#[test]
fn checkpoint_prune_round_trip_phi3() {
    round_trip(&common::fixtures().join("tiny").join("phi3"), "pruned-phi3");
}

/// Phi-3's neurons are rows of the fused matrices under their own names; an FFN activation unit
/// is pruned through the gate half of `gate_up_proj` (same row). The exported checkpoint differs
/// from the input in exactly those rows, which are zero.
#[test]
fn phi3_fused_rows_are_exactly_the_pruned_rows() {
    let input = common::fixtures().join("tiny").join("phi3");
    let loaded = crispr::loader::load(&input).unwrap();
    let sites = loaded.model.sites();
    let site = |name: &str| sites.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no site {name}"));
    // q rows are 0..64, k rows 64..96, v rows 96..128; gate rows 0..96, up rows 96..192.
    let neurons = [
        Neuron { site: site("model.layers.0.self_attn.qkv_proj"), row: 70 },
        Neuron { site: site("model.layers.1.self_attn.qkv_proj"), row: 127 },
        Neuron { site: site("model.layers.0.mlp.gate_up_proj"), row: 150 },
        Neuron { site: site("model.layers.1.mlp.act_fn"), row: 5 },
    ];
    let rows = rows_by_module(loaded.model.as_ref(), &neurons);
    let want: BTreeMap<String, Vec<usize>> = [
        ("model.layers.0.self_attn.qkv_proj", vec![70]),
        ("model.layers.1.self_attn.qkv_proj", vec![127]),
        ("model.layers.0.mlp.gate_up_proj", vec![150]),
        ("model.layers.1.mlp.gate_up_proj", vec![5]),
    ]
    .into_iter()
    .map(|(m, r)| (m.to_string(), r))
    .collect();
    assert_eq!(rows, want);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    write_pruned(&loaded.format, &rows, &out).unwrap();
    let before = common::read_safetensors(&input.join("model.safetensors"));
    let after = common::read_safetensors(&out.join("model.safetensors"));
    assert_eq!(before.len(), after.len());
    for (name, (shape, a)) in &before {
        let b = &after[name].1;
        let cols: usize = shape[1..].iter().product();
        let pruned = want.get(name.trim_end_matches(".weight")).cloned().unwrap_or_default();
        for r in 0..shape[0] {
            let (x, y) = (&a[r * cols..(r + 1) * cols], &b[r * cols..(r + 1) * cols]);
            if pruned.contains(&r) {
                assert!(y.iter().all(|&v| v == 0.0), "{name} row {r} is not zero");
            } else {
                assert_eq!(x, y, "{name} row {r} changed");
            }
        }
    }
}

/// A tiny T5 checkpoint with deterministic weights: the relu, tied-head variant of the T5 fixtures
/// (original T5) or the same shape with a gated-GELU FFN and its own head (T5 v1.1, Flan-T5), so
/// that both FFN layouts (`wi`; `wi_0`/`wi_1`) are pruned and exported.
fn tiny_t5(dir: &Path, gated: bool) -> std::path::PathBuf {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("t5").join("expected.json")).unwrap())
            .unwrap();
    let mut config = meta["models"]["tiny_relu"]["config"].clone();
    if gated {
        config["feed_forward_proj"] = "gated-gelu".into();
        config["tie_word_embeddings"] = false.into();
    }
    let out = dir.join(if gated { "t5-gated" } else { "t5-relu" });
    std::fs::create_dir_all(&out).unwrap();
    let tokenizer = common::data_dir().join("tokenizers").join("t5").join("tokenizer.json");
    crispr::model::t5::synthetic::write_checkpoint(&out, &config, 7, &tokenizer).unwrap();
    out
}

#[test]
fn t5_checkpoint_prune_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for gated in [false, true] {
        let input = tiny_t5(dir.path(), gated);
        assert_eq!(crispr::loader::load(&input).unwrap().model.family(), crispr::model::Family::EncoderDecoder);
        round_trip(&input, if gated { "pruned-gated" } else { "pruned-relu" });
    }
}
