//! Central finite differences in f64 against the hand-written backward pass, at every hooked
//! linear output of every family. A silently missing backward term cannot pass this.

mod common;

use crispr::model::llama::LlamaModel;
use crispr::model::LanguageModel;

fn check(family: &str) {
    let dir = common::fixtures().join("tiny").join(family);
    let (model, _) = common::load_decoder(&dir);
    check_model(family, &model.cast());
}

fn check_model(family: &str, model: &LlamaModel<f64>) {
    // A short sequence keeps the extra forward passes cheap; longer than the windows (7, 16, 24)
    // of the models that have one.
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % model.cfg.vocab_size as u32).collect();
    common::fd::check_gradients(family, model, &prompt, &[5, 77, 123], 4, 1e-6);
}

#[test]
fn llama_gradients_match_finite_differences() {
    check("llama");
}

#[test]
fn qwen2_gradients_match_finite_differences() {
    check("qwen2");
}

#[test]
fn mistral_gradients_match_finite_differences() {
    check("mistral");
}

#[test]
fn qwen3_gradients_match_finite_differences() {
    check("qwen3");
}

#[test]
fn gemma2_gradients_match_finite_differences() {
    check("gemma2");
}

#[test]
fn gemma3_gradients_match_finite_differences() {
    check("gemma3");
}

#[test]
fn phi3_gradients_match_finite_differences() {
    check("phi3");
}

#[test]
fn every_engine_option_matches_finite_differences() {
    check_model("every-option", &common::synthetic::every_option_model(false));
}

#[test]
fn fused_projections_match_finite_differences() {
    let model = common::synthetic::every_option_model(true);
    let kinds: Vec<&str> = model.sites().iter().map(|s| s.kind).collect();
    assert_eq!(kinds[..5], ["qkv", "o", "gate_up", "act", "down"]);
    check_model("fused", &model);
}
