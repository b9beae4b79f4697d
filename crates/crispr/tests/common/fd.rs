//! The finite-difference harness every family's gradient test uses: central differences in f64
//! of `log P(candidate | prompt)`, perturbing one unit of one site's output through the forward
//! hook, against the gradient the hand-written backward pass reports for that unit.

use crispr::model::LanguageModel;

/// log P(candidate | prompt) with `delta` added to one unit of one site at one position.
fn perturbed(
    model: &dyn LanguageModel<f64>,
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
    model.logprob_with_grads(prompt, cand, Some(&mut hook), &mut |_, _, _| {})
}

/// Check `samples` random (position, unit) pairs of every site: relative error (against the
/// larger of the analytic value and 1 % of the site's largest gradient) at most `tol`. Every site
/// must be visited once with a gradient that is not identically zero. Returns the worst error.
pub fn check_gradients(
    label: &str,
    model: &dyn LanguageModel<f64>,
    prompt: &[u32],
    cand: &[u32],
    samples: usize,
    tol: f64,
) -> f64 {
    let mut grads = Vec::new();
    let lp = model.logprob_with_grads(prompt, cand, None, &mut |id, _a, g| grads.push((id, g.to_vec())));
    let plain = perturbed(model, prompt, cand, (0, 0, 0), 0.0);
    assert!((lp - plain).abs() < 1e-12, "{label}: the hook path changes nothing by itself");
    assert_eq!(grads.len(), model.sites().len(), "{label}: every site visited");
    let mut ids: Vec<usize> = grads.iter().map(|g| g.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), grads.len(), "{label}: each site visited once");
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
        // Positions include the prompt (gradients flow back through attention) and the answer.
        for _ in 0..samples {
            let (pos, unit) = (next(rows), next(width));
            let f = |delta: f64| perturbed(model, prompt, cand, (*id, pos, unit), delta);
            // Fourth-order central stencil: with |log P| ≈ 45 the round-off of a plain central
            // difference at a step small enough for its truncation error is already ~1e-6.
            let fd = (8.0 * (f(eps) - f(-eps)) - (f(2.0 * eps) - f(-2.0 * eps))) / (12.0 * eps);
            let an = g[pos * width + unit];
            let rel = (fd - an).abs() / an.abs().max(1e-2 * scale);
            worst = worst.max(rel);
            assert!(
                rel <= tol,
                "{label} {} pos {pos} unit {unit}: analytic {an:e} vs finite difference {fd:e} (rel {rel:e})",
                site.name
            );
        }
    }
    eprintln!("{label}: worst relative error {worst:e} over {} sites", grads.len());
    worst
}
