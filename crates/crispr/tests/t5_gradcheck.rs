//! Central finite differences in f64 against the hand-written T5 backward pass, at every site kind
//! of both stacks: self- and cross-attention q/k/v/o (cross k/v on encoder positions, through which
//! the gradient reaches the encoder), the FFN projections and the gated activation. A silently
//! missing backward term cannot pass this.

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

/// log P(candidate | prompt) with `delta` added to one unit of one site at one position.
fn perturbed(model: &T5Model<f64>, prompt: &[u32], cand: &[u32], at: (usize, usize, usize), delta: f64) -> f64 {
    let (target, pos, unit) = at;
    let width = model.sites()[target].width;
    let mut hook = |id: usize, y: &mut [f64]| {
        if id == target {
            y[pos * width + unit] += delta;
        }
    };
    model.logprob_with_grads(prompt, cand, Some(&mut hook), &mut |_, _, _| {})
}

fn check(label: &str, model: &T5Model<f64>) -> f64 {
    // Long enough that relative distances reach the logarithmic buckets (≥ 8 in the encoder).
    let prompt: Vec<u32> = (0..24).map(|i| (i * 7919 + 11) % 32100).chain([1]).collect();
    let cand = vec![37u32, 23214, 49, 1];
    let mut grads = Vec::new();
    let lp = model.logprob_with_grads(&prompt, &cand, None, &mut |id, _a, g| grads.push((id, g.to_vec())));
    let plain = perturbed(model, &prompt, &cand, (0, 0, 0), 0.0);
    assert!((lp - plain).abs() < 1e-12, "{label}: the hook path changes nothing by itself");
    assert_eq!(grads.len(), model.sites().len(), "{label}: every site visited");
    let eps = 1e-4;
    let mut worst = 0f64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |m: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m as u64) as usize
    };
    for (id, g) in &grads {
        let site = &model.sites()[*id];
        let width = site.width;
        let rows = g.len() / width;
        let scale = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{label} {}: gradient is identically zero", site.name);
        for _ in 0..4 {
            let (pos, unit) = (next(rows), next(width));
            let f = |delta: f64| perturbed(model, &prompt, &cand, (*id, pos, unit), delta);
            // Fourth-order central stencil: with |log P| ≈ 45 the round-off of a plain central
            // difference at a step small enough for its truncation error is already ~1e-6.
            let fd = (8.0 * (f(eps) - f(-eps)) - (f(2.0 * eps) - f(-2.0 * eps))) / (12.0 * eps);
            let an = g[pos * width + unit];
            let rel = (fd - an).abs() / an.abs().max(1e-2 * scale);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-6,
                "{label} {} pos {pos} unit {unit}: analytic {an:e} vs finite difference {fd:e} (rel {rel:e})",
                site.name
            );
        }
    }
    eprintln!("{label}: worst relative error {worst:e} over {} sites", grads.len());
    worst
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
