//! FFN activations with their backward: gated `act(gate) ⊙ up` (SwiGLU, GeGLU: Llama, Gemma,
//! T5 v1.1) and plain `act(x)` (T5 v1.0's ReLU). The tanh GELU's transcendental term is computed
//! once per unit and shared by the value and the derivative.

use rayon::prelude::*;

use crate::tensor::Float;

/// The nonlinearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAct {
    /// `x·σ(x)` (Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// transformers' `gelu_pytorch_tanh` / `gelu_new`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    /// (Gemma, T5 v1.1).
    GeluTanh,
    /// `max(x, 0)` (T5 v1.0).
    Relu,
}

/// Rows of at least this many elements in all are processed in parallel.
const PAR_ELEMS: usize = 1 << 15;

/// `f(i, chunk)` over consecutive chunks of `width` values, in parallel when there is enough work.
pub fn par_rows<F: Float>(data: &mut [F], width: usize, f: impl Fn(usize, &mut [F]) + Sync + Send) {
    if data.len() >= PAR_ELEMS {
        data.par_chunks_mut(width).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(width).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// Element `i` of a shared-term table, or 0 when the activation keeps none.
#[inline]
pub fn term<F: Float>(t: &[F], i: usize) -> F {
    t.get(i).copied().unwrap_or(F::ZERO)
}

impl GateAct {
    /// What the value and the derivative share, computed once per unit in the forward pass:
    /// `tanh(√(2/π)·(x + 0.044715·x³))` for the GELU, nothing otherwise.
    pub fn terms<F: Float>(self, x: &[F], width: usize) -> Vec<F> {
        match self {
            GateAct::Silu | GateAct::Relu => Vec::new(),
            GateAct::GeluTanh => {
                let c = F::from_f64((2.0 / std::f64::consts::PI).sqrt());
                let k = F::from_f64(0.044715);
                let mut t = x.to_vec();
                par_rows(&mut t, width, |_, row| {
                    for v in row.iter_mut() {
                        let u = c * (*v + k * *v * *v * *v);
                        // tanh(u) = 1 − 2/(e^{2u} + 1): one exp, several times cheaper than libm
                        // tanh; exact limits ±1 when e^{2u} overflows or underflows.
                        *v = F::ONE - F::from_f64(2.0) / ((u + u).exp() + F::ONE);
                    }
                });
                t
            }
        }
    }

    /// `act(x)`, given its shared term `t` (see [`Self::terms`]).
    #[inline]
    pub fn value<F: Float>(self, x: F, t: F) -> F {
        match self {
            GateAct::Silu => x * (F::ONE / (F::ONE + (-x).exp())),
            GateAct::GeluTanh => F::from_f64(0.5) * x * (F::ONE + t),
            GateAct::Relu => x.max(F::ZERO),
        }
    }

    /// `act'(x)`, given its shared term `t`.
    #[inline]
    pub fn derivative<F: Float>(self, x: F, t: F) -> F {
        match self {
            GateAct::Silu => {
                let sig = F::ONE / (F::ONE + (-x).exp());
                sig * (F::ONE + x * (F::ONE - sig))
            }
            GateAct::GeluTanh => {
                let c = F::from_f64((2.0 / std::f64::consts::PI).sqrt());
                let k = F::from_f64(0.044715);
                let half = F::from_f64(0.5);
                half * (F::ONE + t) + half * x * (F::ONE - t * t) * c * (F::ONE + F::from_f64(3.0) * k * x * x)
            }
            GateAct::Relu => {
                if x > F::ZERO {
                    F::ONE
                } else {
                    F::ZERO
                }
            }
        }
    }
}

/// `act(gate) ⊙ up` over rows of `width`, and the shared terms of `gate` (for the backward).
pub fn gated<F: Float>(act: GateAct, gate: &[F], up: &[F], width: usize) -> (Vec<F>, Vec<F>) {
    let terms = act.terms(gate, width);
    let mut out = gate.to_vec();
    // One loop per activation, with nothing but arithmetic in it, so that it vectorises (a
    // match or a table lookup per element kept it scalar: 6 % of a SmolLM2 evaluation).
    // `value`'s formulas, unchanged: the results are the same bits.
    par_rows(&mut out, width, |r, row| {
        let up = &up[r * width..(r + 1) * width];
        match act {
            GateAct::Silu => {
                for (a, &b) in row.iter_mut().zip(up) {
                    *a = *a * (F::ONE / (F::ONE + (-*a).exp())) * b;
                }
            }
            GateAct::GeluTanh => {
                let half = F::from_f64(0.5);
                for ((a, &b), &t) in row.iter_mut().zip(up).zip(&terms[r * width..(r + 1) * width]) {
                    *a = half * *a * (F::ONE + t) * b;
                }
            }
            GateAct::Relu => {
                for (a, &b) in row.iter_mut().zip(up) {
                    *a = a.max(F::ZERO) * b;
                }
            }
        }
    });
    (out, terms)
}

/// `act(x)` over rows of `width`, and the shared terms.
pub fn activate<F: Float>(act: GateAct, x: &[F], width: usize) -> (Vec<F>, Vec<F>) {
    let terms = act.terms(x, width);
    let mut out = x.to_vec();
    par_rows(&mut out, width, |r, row| {
        for (j, a) in row.iter_mut().enumerate() {
            *a = act.value(*a, term(&terms, r * width + j));
        }
    });
    (out, terms)
}

/// Gradients of `gate` and `up` from that of `act(gate) ⊙ up`.
pub fn gated_backward<F: Float>(
    act: GateAct,
    d_out: &[F],
    gate: &[F],
    up: &[F],
    terms: &[F],
    width: usize,
) -> (Vec<F>, Vec<F>) {
    let mut d_gate = d_out.to_vec();
    let mut d_up = d_out.to_vec();
    match act {
        // Written out in this order so results stay bit-identical to the engine's earlier
        // releases (pinned by the faithful-run fixture).
        GateAct::Silu => {
            for i in 0..d_out.len() {
                let g = gate[i];
                let sig = F::ONE / (F::ONE + (-g).exp());
                d_up[i] = d_out[i] * g * sig;
                d_gate[i] = d_out[i] * up[i] * sig * (F::ONE + g * (F::ONE - sig));
            }
        }
        GateAct::GeluTanh | GateAct::Relu => {
            par_rows(&mut d_gate, width, |r, row| {
                for (j, dg) in row.iter_mut().enumerate() {
                    let i = r * width + j;
                    *dg = *dg * up[i] * act.derivative(gate[i], term(terms, i));
                }
            });
            par_rows(&mut d_up, width, |r, row| {
                for (j, du) in row.iter_mut().enumerate() {
                    let i = r * width + j;
                    *du *= act.value(gate[i], term(terms, i));
                }
            });
        }
    }
    (d_gate, d_up)
}

/// Gradient of `x` from that of `act(x)`.
pub fn activate_backward<F: Float>(act: GateAct, d_out: &[F], x: &[F], terms: &[F], width: usize) -> Vec<F> {
    let mut dx = d_out.to_vec();
    par_rows(&mut dx, width, |r, row| {
        for (j, dv) in row.iter_mut().enumerate() {
            let i = r * width + j;
            *dv *= act.derivative(x[i], term(terms, i));
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [GateAct::Silu, GateAct::GeluTanh, GateAct::Relu] {
            for x in [-4.0f64, -1.3, -0.2, 0.3, 0.7, 2.5] {
                let h = 1e-6;
                let f = |x: f64| act.value(x, term(&act.terms(&[x], 1), 0));
                let fd = (f(x + h) - f(x - h)) / (2.0 * h);
                let an = act.derivative(x, term(&act.terms(&[x], 1), 0));
                assert!((fd - an).abs() < 1e-8, "{act:?} at {x}: {fd} vs {an}");
            }
        }
    }
}
