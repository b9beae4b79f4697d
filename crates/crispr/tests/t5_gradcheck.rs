//! Central finite differences in f64 against the hand-written T5 backward pass, at every site kind
//! of both stacks: self- and cross-attention q/k/v/o (cross k/v on encoder positions, through which
//! the gradient reaches the encoder), the FFN projections and the gated activation. A silently
//! missing backward term cannot pass this.

mod common;

use crispr::model::t5::{synthetic, T5Config, T5Model};
use crispr::model::LanguageModel;
use serde_json::json;

fn tiny(tied: bool, decoder_layers: usize) -> T5Model<f64> {
    let cfg = T5Config::from_json(
        std::path::Path::new("config.json"),
        &json!({"model_type": "t5", "vocab_size": 32128, "d_model": 64, "d_kv": 16, "d_ff": 96, "num_heads": 4,
                "num_layers": 2, "num_decoder_layers": decoder_layers, "feed_forward_proj": "gated-gelu",
                "tie_word_embeddings": tied, "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "decoder_start_token_id": 0, "eos_token_id": 1}),
    )
    .unwrap();
    synthetic::model(&cfg, 7).unwrap().cast()
}

fn check(label: &str, model: &T5Model<f64>) -> f64 {
    // Long enough that relative distances reach the logarithmic buckets (≥ 8 in the encoder).
    let prompt: Vec<u32> = (0..24).map(|i| (i * 7919 + 11) % 32100).chain([1]).collect();
    common::fd::check_gradients(label, model, &prompt, &[37, 23214, 49, 1], 4, 1e-6)
}

#[test]
fn t5_v1_1_gradients_match_finite_differences() {
    check("gated-gelu, untied", &tiny(false, 2));
}

#[test]
fn t5_tied_rescaled_head_gradients_match_finite_differences() {
    // Also an asymmetric stack (2 encoder, 3 decoder blocks).
    check("gated-gelu, tied and rescaled, 3 decoder blocks", &tiny(true, 3));
}

/// One visitor call: site, activation, gradient.
type Visit = (usize, Vec<f64>, Vec<f64>);

#[test]
fn shared_encoder_pass_gives_the_same_gradients() {
    // score_and_differentiate runs the encoder once for all candidates; it must agree with one
    // independent logprob_with_grads call per chosen candidate.
    let model = tiny(false, 2);
    let prompt: Vec<u32> = (0..20).map(|i| (i * 104729 + 5) % 32100).chain([1]).collect();
    let cands = vec![vec![37u32, 23214, 49, 1], vec![933, 631, 2845, 1], vec![37, 3, 29702, 1]];
    let mut shared: Vec<Vec<Visit>> = vec![Vec::new(), Vec::new()];
    let lps = model.score_and_differentiate(&prompt, &cands, &mut |_| vec![2, 0], &mut |k, site, a, g| {
        shared[k].push((site, a.to_vec(), g.to_vec()))
    });
    let scored = model.score(&prompt, &cands);
    for (k, &c) in [2usize, 0].iter().enumerate() {
        let mut single = Vec::new();
        let lp = model.logprob_with_grads(&prompt, &cands[c], None, &mut |site, a, g| {
            single.push((site, a.to_vec(), g.to_vec()))
        });
        assert!((lp - lps[c]).abs() < 1e-12 && (scored[c] - lps[c]).abs() < 1e-12, "{lp} {} {}", lps[c], scored[c]);
        assert_eq!(single.len(), shared[k].len());
        for ((s1, a1, g1), (s2, a2, g2)) in single.iter().zip(&shared[k]) {
            assert_eq!(s1, s2);
            let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()));
            assert!(close(a1, a2) && close(g1, g2), "site {s1}");
        }
    }
}

#[test]
fn pruning_an_activation_unit_silences_it() {
    let mut model = tiny(false, 2);
    let site = model.sites().iter().position(|s| s.name == "decoder.block.1.layer.2.DenseReluDense.act").unwrap();
    assert_eq!(model.prune_target_name(site), "decoder.block.1.layer.2.DenseReluDense.wi_1");
    model.prune_target(site).zero_row(5);
    let width = model.sites()[site].width;
    let prompt: Vec<u32> = vec![100, 200, 300, 1];
    let mut seen = false;
    model.logprob_with_grads(&prompt, &[37, 1], None, &mut |id, a, _| {
        if id == site {
            seen = true;
            assert!(a.chunks(width).all(|row| row[5] == 0.0));
        }
    });
    assert!(seen);
}
