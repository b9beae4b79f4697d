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

/// A random model with every option of the decoder engine switched on at once (q/k norms,
/// sandwich norms, GeGLU, scaled embeddings, a custom query scale, both soft-caps, one local and
/// one global layer with their own RoPE bases, linear RoPE scaling, a window shorter than the
/// sequence), so that each option's backward is checked whether or not a fixture family uses it.
///
/// With `fused`, q/k/v and gate/up are single matrices (Phi-3's layout): hooked, differentiated
/// and visited as one site each.
fn every_option_model(fused: bool) -> LlamaModel<f64> {
    use crispr::model::kernels::GateAct;
    use crispr::model::linear::Weights;
    use crispr::model::llama::Layer;
    use crispr::model::{Arch, Linear, LlamaConfig, RopeScaling};
    let cfg = LlamaConfig {
        arch: Arch::Other("synthetic"),
        vocab_size: 130,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 12,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: Some(RopeScaling::Linear { factor: 2.0 }),
        tie_word_embeddings: false,
        sliding_window: Some(7),
        attention_bias: false,
        max_position_embeddings: 64,
        qk_norm: true,
        post_norms: true,
        activation: GateAct::GeluTanh,
        embed_scale: 32f64.sqrt(),
        attn_scale: 0.2,
        attn_softcap: Some(3.0),
        final_softcap: Some(4.0),
        sliding_layers: Some(vec![true, false]),
        local_rope_theta: Some(100.0),
        fused,
    };
    cfg.validate().unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = |n: usize, half: f64| -> Vec<f64> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                half * (2.0 * (state >> 11) as f64 / (1u64 << 53) as f64 - 1.0)
            })
            .collect()
    };
    let (d, f, q, kv) = (32, 48, 4 * 12, 2 * 12);
    let mut lin = |out_dim: usize, in_dim: usize| Linear {
        weight: Weights::Full(uniform(out_dim * in_dim, (3.0 / in_dim as f64).sqrt())),
        bias: None,
        out_dim,
        in_dim,
    };
    let layers = (0..2)
        .map(|_| {
            let (q, k, v) =
                if fused { (lin(q + 2 * kv, d), lin(0, d), lin(0, d)) } else { (lin(q, d), lin(kv, d), lin(kv, d)) };
            let (gate, up) = if fused { (lin(2 * f, d), lin(0, d)) } else { (lin(f, d), lin(f, d)) };
            (q, k, v, gate, up)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(q_, k, v, gate, up)| Layer {
            q: q_,
            k,
            v,
            o: lin(d, q),
            gate,
            up,
            down: lin(d, f),
            attn_norm: vec![1.1; d],
            mlp_norm: vec![0.9; d],
            q_norm: (0..12).map(|i| 0.8 + 0.03 * i as f64).collect(),
            k_norm: (0..12).map(|i| 1.2 - 0.03 * i as f64).collect(),
            post_attn_norm: vec![1.3; d],
            post_mlp_norm: vec![0.7; d],
        })
        .collect::<Vec<_>>();
    let embed = lin(130, d).weight;
    let head = lin(130, d).weight;
    LlamaModel::new(cfg, embed, layers, vec![1.05; d], Some(head))
}

#[test]
fn every_engine_option_matches_finite_differences() {
    check_model("every-option", &every_option_model(false));
}

#[test]
fn fused_projections_match_finite_differences() {
    let model = every_option_model(true);
    let kinds: Vec<&str> = model.sites().iter().map(|s| s.kind).collect();
    assert_eq!(kinds[..5], ["qkv", "o", "gate_up", "act", "down"]);
    check_model("fused", &model);
}
