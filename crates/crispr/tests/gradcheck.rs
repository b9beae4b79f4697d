//! Central finite differences in f64 against the hand-written backward pass, at every hooked
//! linear output of every family. A silently missing backward term cannot pass this.

mod common;

use crispr::model::llama::scoring::logprob_with_grads;
use crispr::model::llama::LlamaModel;
use crispr::model::LanguageModel;

/// log P(candidate | prompt) with `delta` added to one unit of one module's output at one position.
fn perturbed_logprob(
    model: &LlamaModel<f64>,
    prompt: &[u32],
    cand: &[u32],
    at: (usize, usize, usize),
    delta: f64,
) -> f64 {
    let (target, pos, unit) = at;
    let width = model.sites()[target].width;
    let mut hook = |id: usize, y: &mut [f64]| {
        if id == target {
            y[pos * width + unit] += delta;
        }
    };
    logprob_with_grads(model, prompt, cand, Some(&mut hook), &mut |_, _, _| {})
}

fn check(family: &str) {
    let dir = common::fixtures().join("tiny").join(family);
    let (model, _) = crispr::loader::load_llama(&dir).unwrap();
    let model: LlamaModel<f64> = model.cast();
    // A short sequence keeps the 2·(samples) extra forward passes cheap.
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % model.cfg.vocab_size as u32).collect();
    let cand = vec![5u32, 77, 123];
    let n = prompt.len() + cand.len();
    let mut grads = Vec::new();
    logprob_with_grads(&model, &prompt, &cand, None, &mut |id, _act, g| grads.push((id, g.to_vec())));
    assert_eq!(grads.len(), model.sites().len(), "every site (7 linear + the FFN activation per layer) visited");
    let eps = 1e-5;
    let mut worst = 0f64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |m: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m as u64) as usize
    };
    for (id, g) in &grads {
        let width = model.sites()[*id].width;
        let name = &model.sites()[*id].name;
        let module_scale = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(module_scale > 0.0, "{family} {name}: gradient is identically zero");
        // Positions include the prompt (gradients flow back through attention) and the answer.
        for _ in 0..4 {
            let (pos, unit) = (next(n), next(width));
            let plus = perturbed_logprob(&model, &prompt, &cand, (*id, pos, unit), eps);
            let minus = perturbed_logprob(&model, &prompt, &cand, (*id, pos, unit), -eps);
            let fd = (plus - minus) / (2.0 * eps);
            let an = g[pos * width + unit];
            let rel = (fd - an).abs() / an.abs().max(1e-2 * module_scale);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-6,
                "{family} {name} pos {pos} unit {unit}: analytic {an:e} vs finite difference {fd:e} (rel {rel:e})"
            );
        }
    }
    eprintln!("{family}: worst relative error {worst:e}");
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
