//! Parity with PyTorch/transformers on tiny random checkpoints of every decoder-only family
//! (fixtures from scripts/make_fixtures.py): token ids, logits, and the activation and gradient
//! of a candidate's log-probability at every linear output. Newer fixtures keep only the last
//! `tail` positions (`expected.json`), compared row for row.

mod common;

use std::collections::BTreeSet;

use common::{fixtures, max_abs_diff, read_safetensors, rel_err};
use crispr::model::llama::scoring::logprob_with_grads;
use crispr::model::LanguageModel;
use crispr::score::{encode, PromptStyle};

fn check_family(family: &str) {
    let dir = fixtures().join("tiny").join(family);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let expected = read_safetensors(&dir.join("expected.safetensors"));
    let (model, text) = common::load_decoder(&dir);
    let model = &model;
    // The last `tail` rows of a `[tokens × width]` tensor (all of them without `tail`).
    let tail = |v: &[f32], width: usize| -> Vec<f32> {
        let keep = meta.get("tail").and_then(|t| t.as_u64()).map_or(v.len() / width, |t| t as usize);
        v[v.len() - keep.min(v.len() / width) * width..].to_vec()
    };

    // Token ids from our tokenizer and chat-template rendering equal transformers'.
    let user = meta["user"].as_str().unwrap();
    let cand = meta["candidate"].as_str().unwrap().to_string();
    let enc = encode(&text, PromptStyle::Chat, user, &[cand]).unwrap();
    let ids =
        |k: &str| -> Vec<u32> { meta[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    assert_eq!(enc.prompt, ids("prompt_ids"), "{family}: prompt ids");
    assert_eq!(enc.candidates[0], ids("candidate_ids"), "{family}: candidate ids");

    // Logits at every position.
    let tokens: Vec<u32> = enc.prompt.iter().chain(&enc.candidates[0]).copied().collect();
    let trace = model.forward_traced(&tokens, None);
    let rows: Vec<usize> = (0..tokens.len()).collect();
    let logits = model.logits(&trace.hidden, &rows);
    let (shape, want) = &expected["logits"];
    let logits = tail(&logits, model.cfg.vocab_size);
    assert_eq!(shape, &vec![logits.len() / model.cfg.vocab_size, model.cfg.vocab_size]);
    let d = max_abs_diff(&logits, want);
    assert!(d <= 1e-4, "{family}: logits differ by {d}");

    // Activations and gradients at every hooked module.
    let mut seen = BTreeSet::new();
    let lp = logprob_with_grads(model, &enc.prompt, &enc.candidates[0], None, &mut |id, act, grad| {
        let name = model.sites()[id].name.clone();
        let width = model.sites()[id].width;
        let (_, want_act) = &expected[&format!("act.{name}")];
        let (_, want_grad) = &expected[&format!("grad.{name}")];
        let ea = rel_err(&tail(act, width), want_act);
        let eg = rel_err(&tail(grad, width), want_grad);
        assert!(ea <= 1e-4, "{family} {name}: activation relative error {ea}");
        assert!(eg <= 1e-4, "{family} {name}: gradient relative error {eg}");
        seen.insert(name);
    });
    let want_lp = meta["logprob"].as_f64().unwrap();
    assert!((lp - want_lp).abs() <= 1e-4 * want_lp.abs().max(1.0), "{family}: logprob {lp} vs {want_lp}");
    assert_eq!(seen.len(), model.sites().len(), "{family}: every site visited once");
    // And the cached scoring path agrees with the traced one.
    let scored = crispr::model::llama::scoring::score(model, &enc.prompt, &enc.candidates);
    assert!((scored[0] - lp).abs() <= 1e-4, "{family}: cached scoring {} vs traced {lp}", scored[0]);
}

#[test]
fn llama_tied_with_llama3_rope_matches_transformers() {
    check_family("llama");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check_family("qwen2");
}

#[test]
fn mistral_with_sliding_window_matches_transformers() {
    check_family("mistral");
}

#[test]
fn qwen3_with_qk_norm_matches_transformers() {
    check_family("qwen3");
}

#[test]
fn gemma2_with_softcaps_and_local_layers_matches_transformers() {
    check_family("gemma2");
}

#[test]
fn gemma3_with_qk_norm_and_local_rope_matches_transformers() {
    check_family("gemma3");
}

#[test]
fn phi3_with_fused_projections_matches_transformers() {
    check_family("phi3");
}

#[test]
fn prefix_reusing_batch_scoring_equals_independent_scoring() {
    let dir = fixtures().join("tiny").join("mistral");
    let (model, text) = crispr::loader::load_llama(&dir).unwrap();
    let cands: Vec<String> = vec!["The grandson".into(), "Unknown".into()];
    let users = [
        "Context: A grandson and a grandfather.\nQuestion: Who forgot?",
        "Context: A grandson and a grandfather. The grandson lost his phone.\nQuestion: Who forgot?",
        "Context: A grandson and a grandfather.\nQuestion: Who remembered?",
        "Something else entirely",
        "Context: A grandson and a grandfather.\nQuestion: Who forgot?",
    ];
    let encs: Vec<_> = users.iter().map(|u| encode(&text, PromptStyle::Chat, u, &cands).unwrap()).collect();
    let items: Vec<(&[u32], &[Vec<u32>])> =
        encs.iter().map(|e| (e.prompt.as_slice(), e.candidates.as_slice())).collect();
    let batched = model.score_many(&items);
    for (e, b) in encs.iter().zip(&batched) {
        let single = model.score(&e.prompt, &e.candidates);
        for (x, y) in single.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

/// `log P(candidate | prompt)` from one uncached causal pass over `prompt ++ candidate` (no cache,
/// no packing), with the log-softmax written out here.
fn logprob_alone(model: &crispr::model::llama::LlamaModel<f64>, prompt: &[u32], cand: &[u32]) -> f64 {
    let vocab = model.cfg.vocab_size;
    let tokens: Vec<u32> = prompt.iter().chain(cand).copied().collect();
    let trace = model.forward_traced(&tokens, None);
    let rows: Vec<usize> = (prompt.len() - 1..tokens.len() - 1).collect();
    let logits = model.logits(&trace.hidden, &rows);
    cand.iter()
        .enumerate()
        .map(|(i, &t)| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            row[t as usize] - lse
        })
        .sum()
}

/// Candidates scored side by side in packed passes (each seeing the prompt and itself only)
/// score exactly as each alone, in f64: in every family (windows of 7 and 16 tokens shorter than
/// the sequences, local RoPE bases, fused projections, soft-caps), with one-token candidates
/// (no pass), several passes (more candidate tokens than one pass takes) and a candidate longer
/// than a pass.
#[test]
fn packed_candidates_score_as_each_alone() {
    let mut models: Vec<(String, crispr::model::llama::LlamaModel<f64>)> =
        ["llama", "qwen2", "mistral", "qwen3", "gemma2", "gemma3", "phi3"]
            .iter()
            .map(|f| (f.to_string(), common::load_decoder(&fixtures().join("tiny").join(f)).0.cast()))
            .collect();
    models.push(("every-option".into(), common::synthetic::every_option_model(false)));
    models.push(("every-option-fused".into(), common::synthetic::every_option_model(true)));
    for (family, model) in &models {
        let vocab = model.cfg.vocab_size as u32;
        let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % vocab).collect();
        let other: Vec<u32> = prompt[..20].iter().copied().chain([3, 1, 4, 1]).collect();
        let candidates: Vec<Vec<u32>> = [1usize, 3, 5, 2, 7, 4, 9, 20]
            .iter()
            .enumerate()
            .map(|(c, &len)| (0..len).map(|i| ((c * 53 + i * 29 + 7) as u32) % vocab).collect())
            .collect();
        let check = |what: &str, prompt: &[u32], got: &[f64]| {
            for (cand, g) in candidates.iter().zip(got) {
                let want = logprob_alone(model, prompt, cand);
                assert!(
                    (g - want).abs() <= 1e-10 * want.abs().max(1.0),
                    "{family} {what}: {}-token candidate {g} vs alone {want}",
                    cand.len()
                );
            }
        };
        check("score", &prompt, &model.score(&prompt, &candidates));
        let batched = model.score_many(&[(&prompt, &candidates), (&other, &candidates)]);
        check("score_many", &prompt, &batched[0]);
        check("score_many (shared prefix)", &other, &batched[1]);
        let diff = model.score_and_differentiate(&prompt, &candidates, &mut |_| Vec::new(), &mut |_, _, _, _| {});
        check("score_and_differentiate", &prompt, &diff);
    }
}
