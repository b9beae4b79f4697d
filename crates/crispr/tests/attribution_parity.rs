//! Bias scores against an independent PyTorch implementation of the method
//! (scripts/reference_crispr.py) on the tiny random Llama: default settings, a variant exercising
//! every other switch, the re-release compatibility mode, and the ffn universe.

mod common;

use std::collections::HashMap;

use crispr::attribution::{attribute_instruction, Disentangle, Instance, Objective, Scores, Settings, TokenAgg};
use crispr::model::{LanguageModel, Universe};

fn read_f64(path: &std::path::Path) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F64);
            (n, v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
        })
        .collect()
}

/// `{"instructions": [[{"prompt_ids", "candidate_ids", "gold"}, …], …]}` as instances.
fn parse_instances(v: &serde_json::Value) -> Vec<Vec<Instance>> {
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
    };
    v["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|items| {
            items
                .as_array()
                .unwrap()
                .iter()
                .map(|it| Instance {
                    prompt: ids(&it["prompt_ids"]),
                    candidates: it["candidate_ids"].as_array().unwrap().iter().map(ids).collect(),
                    gold: it["gold"].as_u64().unwrap() as usize,
                })
                .collect()
        })
        .collect()
}

fn read_json(name: &str) -> serde_json::Value {
    let path = common::fixtures().join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Attribute every instruction, average, and compare with the reference scores in `fixture`:
/// every score within 1e-4 relative to the largest score of its site (floored at 1 % of the
/// largest overall, so a site of near-zero scores is not held to its own rounding noise), and an
/// identical top-50 ranking.
fn compare(model: &dyn LanguageModel<f32>, instructions: &[Vec<Instance>], settings: &Settings, fixture: &str) {
    let per: Vec<Scores> =
        instructions.iter().map(|items| attribute_instruction(model, items, settings, &mut |_| {})).collect();
    let scores = Scores::mean(&per).unwrap();
    let want = read_f64(&common::fixtures().join("attribution").join(format!("{fixture}.safetensors")));
    let global = want.values().flatten().fold(0f64, |m, x| m.max(x.abs()));
    assert!(global > 0.0, "{fixture}: reference scores are all zero");
    let mut worst = 0f64;
    let mut expected_flat = Vec::new();
    for (i, s) in model.sites().iter().enumerate() {
        if s.universe != settings.universe {
            assert!(scores.per_site[i].is_empty());
            continue;
        }
        let w = want.get(&s.name).unwrap_or_else(|| panic!("{fixture}: no reference scores for {}", s.name));
        assert_eq!(w.len(), scores.per_site[i].len(), "{}", s.name);
        let scale = w.iter().fold(0.01 * global, |m, x| m.max(x.abs()));
        for (r, (&a, &b)) in scores.per_site[i].iter().zip(w).enumerate() {
            worst = worst.max((a - b).abs() / scale);
            expected_flat.push((i, r, b));
        }
    }
    assert!(worst <= 1e-4, "{fixture}: worst relative difference {worst:e}");
    expected_flat.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let ours: Vec<(usize, usize)> = scores.ranked().iter().take(50).map(|x| (x.0, x.1)).collect();
    let theirs: Vec<(usize, usize)> = expected_flat.iter().take(50).map(|x| (x.0, x.1)).collect();
    assert_eq!(ours, theirs, "{fixture}: top-50 ranking");
    eprintln!("{fixture}: worst relative difference {worst:e}");
}

fn check(settings: Settings, fixture: &str) {
    check_family("llama", settings, fixture);
}

/// The tiny fixture of `family` on the instances of attribution/llama.json (one tokenizer).
fn check_family(family: &str, settings: Settings, fixture: &str) {
    let (model, _) = common::load_decoder(&common::fixtures().join("tiny").join(family));
    compare(&model, &parse_instances(&read_json("attribution/llama.json")), &settings, &format!("{family}_{fixture}"));
}

/// The settings of the reference's `default` and `variant` modes, and the ffn universe.
fn check_new_family(family: &str) {
    check_family(family, Settings::default(), "default_linear");
    let variant = Settings {
        objective: Objective::Logprob,
        token_agg: TokenAgg::Mean,
        disentangle: Disentangle::PerToken,
        alpha: false,
        ..Settings::default()
    };
    check_family(family, variant, "variant_linear");
    check_family(family, Settings { universe: Universe::Ffn, ..Settings::default() }, "default_ffn");
}

#[test]
fn qwen3_matches_reference() {
    check_new_family("qwen3");
}

#[test]
fn gemma2_matches_reference() {
    check_new_family("gemma2");
}

#[test]
fn gemma3_matches_reference() {
    check_new_family("gemma3");
}

#[test]
fn phi3_matches_reference() {
    check_new_family("phi3");
}

#[test]
fn default_settings_match_reference() {
    check(Settings::default(), "default_linear");
}

#[test]
fn every_other_switch_matches_reference() {
    let s = Settings {
        objective: Objective::Logprob,
        token_agg: TokenAgg::Mean,
        disentangle: Disentangle::PerToken,
        alpha: false,
        ..Settings::default()
    };
    check(s, "variant_linear");
}

#[test]
fn biasneuron_compat_matches_reference() {
    check(Settings::biasneuron(Universe::Linear), "compat_linear");
}

#[test]
fn ffn_universe_matches_reference() {
    check(Settings { universe: Universe::Ffn, ..Settings::default() }, "default_ffn");
}

/// The tiny original-T5 model of the T5 fixtures (deterministic weights), on the instances of
/// scripts/reference_crispr_t5.py.
fn check_t5(settings: Settings, fixture: &str) {
    let meta = read_json("t5/expected.json");
    let inputs = read_json("attribution/t5.json");
    let key = inputs["config"].as_str().unwrap();
    let cfg =
        crispr::model::t5::T5Config::from_json(std::path::Path::new("config.json"), &meta["models"][key]["config"])
            .unwrap();
    let model = crispr::model::t5::synthetic::model(&cfg, inputs["seed"].as_u64().unwrap()).unwrap();
    compare(&model, &parse_instances(&inputs), &settings, &format!("t5_{fixture}"));
}

#[test]
fn t5_default_settings_match_reference() {
    check_t5(Settings::default(), "default_linear");
}

#[test]
fn t5_biasneuron_compat_matches_reference() {
    check_t5(Settings::biasneuron(Universe::Linear), "compat_linear");
}
