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

/// Largest |bf16 − f32| log-probability of a candidate on the parity prompts (100+ token prompts,
/// multi-token candidates): measured 0.35 on this model, whose Q4_1 weights are not bf16 values
/// (rounding the weights alone moves them by up to 0.11). See README, "Precision".
const BF16_PARITY_BOUND: f64 = 0.5;

#[test]
fn smollm2_in_bf16_stays_near_f32_and_its_choices_equal_f32_after_the_recheck() {
    use crispr::evaluate::{evaluate, recheck, EvalOptions, BF16_RECHECK_MARGIN, RECHECK_CALIBRATION};
    use crispr::precision::Precision;

    let path = crispr::resolve::default_model().expect("the default model can be fetched");
    let f32_model = crispr::loader::load_at(&path, Precision::F32).unwrap();
    let bf16_model = crispr::loader::load_at(&path, Precision::Bf16).unwrap();
    let fixture = common::fixtures().join("smollm2").join("parity.json");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let (mut worst, mut sum, mut n) = (0f64, 0f64, 0usize);
    for c in meta["cases"].as_array().unwrap() {
        let cands: Vec<String> =
            c["candidates"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let enc = encode(&f32_model.text, PromptStyle::Chat, c["prompt"].as_str().unwrap(), &cands).unwrap();
        let a = f32_model.model.score(&enc.prompt, &enc.candidates);
        let b = bf16_model.model.score(&enc.prompt, &enc.candidates);
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
            sum += (x - y).abs();
            n += 1;
        }
    }
    eprintln!("bf16 vs f32 log-probabilities: worst {worst:.4}, mean {:.4} over {n}", sum / n as f64);
    assert!(worst <= BF16_PARITY_BOUND, "bf16 moved a log-probability by {worst}");
    assert!(worst > 0.0, "bf16 must actually differ from f32 (is the bf16 path used?)");

    // A small BBQ sample: after the re-check every choice is the f32 engine's.
    let data = common::data_dir();
    let task = crispr::data::load_task("bbq:Age", &data).unwrap();
    let mut set = crispr::data::load_instructions("default", &task, &data).unwrap();
    set.items.truncate(2);
    let indices: Vec<usize> = (0..12).map(|i| i * 37).collect();
    let opts = EvalOptions::default();
    let want = evaluate(&f32_model, &task, &set, &indices, &opts, &mut || {}).unwrap();
    let mut got = evaluate(&bf16_model, &task, &set, &indices, &opts, &mut || {}).unwrap();
    let report =
        recheck(&mut got, &f32_model, &task, &set, &indices, &opts, BF16_RECHECK_MARGIN, RECHECK_CALIBRATION).unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.examples, 24);
    assert!(report.calibration_examples == 12 && report.margin >= 4.0 * report.calibration_max_difference);
    for ((_, a), (_, b)) in want.iter().zip(&got) {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                x.choice, y.choice,
                "example {}: f32 {:?}, bf16 after re-check {:?}",
                x.example, x.scores, y.scores
            );
        }
    }
}
