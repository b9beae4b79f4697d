//! The real SmolLM2-135M-Instruct (Q4_1 GGUF, the built-in default model) against transformers
//! loading the same file dequantised to f32 (fixture: scripts/make_fixtures.py).
//!
//! The model is fetched into the tool's cache on first use (see `crispr::resolve`).

mod common;

use crispr::score::{encode, PromptStyle};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load() -> (crispr::loader::LoadedModel, serde_json::Value) {
    let path = crispr::resolve::default_model().expect("the default model can be fetched");
    assert_eq!(crispr::resolve::sha256_file(&path).unwrap(), crispr::resolve::DefaultModel::SHA256);
    let fixture = common::fixtures().join("smollm2").join("parity.json");
    let meta = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    (crispr::loader::load(&path).unwrap(), meta)
}

#[test]
fn smollm2_tokens_logprobs_and_greedy_generation_match_transformers() {
    let (loaded, meta) = load();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut worst = 0f64;
    for (i, c) in cases.iter().enumerate() {
        let cands: Vec<String> =
            c["candidates"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let enc = encode(&loaded.text, PromptStyle::Chat, c["prompt"].as_str().unwrap(), &cands).unwrap();
        assert_eq!(enc.prompt, ids(&c["prompt_ids"]), "case {i}: prompt token ids");
        assert!(enc.prompt.len() >= 100, "case {i}: prompts are 100+ tokens");
        for (j, cid) in c["candidate_ids"].as_array().unwrap().iter().enumerate() {
            assert_eq!(enc.candidates[j], ids(cid), "case {i}: candidate {j} token ids");
        }
        let got = loaded.model.score(&enc.prompt, &enc.candidates);
        for (j, want) in c["logprobs"].as_array().unwrap().iter().enumerate() {
            let d = (got[j] - want.as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(d <= 1e-3, "case {i} candidate {j}: {} vs {want} (diff {d})", got[j]);
        }
    }
    eprintln!("worst log-probability difference: {worst:e}");
    let eot = loaded.text.end_of_turn.unwrap();
    for g in meta["generations"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        let enc = encode(&loaded.text, PromptStyle::Chat, g["prompt"].as_str().unwrap(), &[]).unwrap();
        assert_eq!(enc.prompt, prompt);
        let out = loaded.model.generate(&prompt, 32, &[eot]);
        assert_eq!(out, ids(&g["generated"]), "greedy continuation of {:?}", g["prompt"]);
    }
}
