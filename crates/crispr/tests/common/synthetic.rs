//! A random decoder model with every option of the engine switched on, for the tests that need
//! each option exercised whether or not a fixture family uses it.

use crispr::model::llama::LlamaModel;

/// A random model with every option of the decoder engine switched on at once (q/k norms,
/// sandwich norms, GeGLU, scaled embeddings, a custom query scale, both soft-caps, one local and
/// one global layer with their own RoPE bases, linear RoPE scaling, a window shorter than the
/// sequence), so that each option's backward is checked whether or not a fixture family uses it.
///
/// With `fused`, q/k/v and gate/up are single matrices (Phi-3's layout): hooked, differentiated
/// and visited as one site each.
pub fn every_option_model(fused: bool) -> LlamaModel<f64> {
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
