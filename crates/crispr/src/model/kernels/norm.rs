//! RMS normalisation and its backward.

use crate::tensor::Float;

/// `y = w ⊙ x / rms(x)` per row; returns `y` and `1/rms` per row.
pub fn rms_norm<F: Float>(x: &[F], w: &[F], eps: f64) -> (Vec<F>, Vec<F>) {
    let d = w.len();
    let mut y = vec![F::ZERO; x.len()];
    let mut inv = Vec::with_capacity(x.len() / d);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mut ss = F::ZERO;
        for &v in xr {
            ss += v * v;
        }
        let r = F::ONE / (ss / F::from_f64(d as f64) + F::from_f64(eps)).sqrt();
        for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *yv = wv * (xv * r);
        }
        inv.push(r);
    }
    (y, inv)
}

/// `dx += ∂(w ⊙ x·r)/∂x · dy` with `r = (mean(x²)+eps)^-½`:
/// `dx_j = r·w_j·dy_j − x_j·r³·mean(w ⊙ dy ⊙ x)`.
pub fn rms_norm_backward<F: Float>(dx: &mut [F], dy: &[F], x: &[F], inv_rms: &[F], w: &[F]) {
    let d = w.len();
    for (((dxr, dyr), xr), &r) in dx.chunks_exact_mut(d).zip(dy.chunks_exact(d)).zip(x.chunks_exact(d)).zip(inv_rms) {
        let mut dot = F::ZERO;
        for ((&dyv, &xv), &wv) in dyr.iter().zip(xr).zip(w) {
            dot += wv * dyv * xv;
        }
        let c = dot * r * r * r / F::from_f64(d as f64);
        for (((dxv, &dyv), &xv), &wv) in dxr.iter_mut().zip(dyr).zip(xr).zip(w) {
            *dxv += r * wv * dyv - xv * c;
        }
    }
}
