//! Gated activations `act(gate) ⊙ up` of the decoder FFNs (SwiGLU, GeGLU), with their backward.

use crate::tensor::Float;

/// The nonlinearity applied to the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAct {
    /// `x·σ(x)` (Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// transformers' `gelu_pytorch_tanh` / `gelu_new`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    /// (Gemma, T5 v1.1).
    GeluTanh,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

impl GateAct {
    /// `act(x)`.
    #[inline]
    pub fn value<F: Float>(self, x: F) -> F {
        match self {
            GateAct::Silu => x * (F::ONE / (F::ONE + (-x).exp())),
            GateAct::GeluTanh => {
                let t = (F::from_f64(SQRT_2_OVER_PI) * (x + F::from_f64(GELU_C) * x * x * x)).tanh();
                F::from_f64(0.5) * x * (F::ONE + t)
            }
        }
    }

    /// `act'(x)`.
    #[inline]
    pub fn derivative<F: Float>(self, x: F) -> F {
        match self {
            GateAct::Silu => {
                let sig = F::ONE / (F::ONE + (-x).exp());
                sig * (F::ONE + x * (F::ONE - sig))
            }
            GateAct::GeluTanh => {
                let c = F::from_f64(SQRT_2_OVER_PI);
                let t = (c * (x + F::from_f64(GELU_C) * x * x * x)).tanh();
                let half = F::from_f64(0.5);
                half * (F::ONE + t) + half * x * (F::ONE - t * t) * c * (F::ONE + F::from_f64(3.0 * GELU_C) * x * x)
            }
        }
    }
}

/// `act(gate) ⊙ up`, elementwise.
pub fn gated<F: Float>(act: GateAct, gate: &[F], up: &[F]) -> Vec<F> {
    gate.iter().zip(up).map(|(&g, &u)| act.value(g) * u).collect()
}

/// Gradients of `gate` and `up` from that of `act(gate) ⊙ up`.
pub fn gated_backward<F: Float>(act: GateAct, d_out: &[F], gate: &[F], up: &[F]) -> (Vec<F>, Vec<F>) {
    let mut d_gate = vec![F::ZERO; d_out.len()];
    let mut d_up = vec![F::ZERO; d_out.len()];
    for i in 0..d_out.len() {
        let g = gate[i];
        match act {
            // Written out in this order so results stay bit-identical to the engine's earlier
            // releases (pinned by the faithful-run fixture).
            GateAct::Silu => {
                let sig = F::ONE / (F::ONE + (-g).exp());
                d_up[i] = d_out[i] * g * sig;
                d_gate[i] = d_out[i] * up[i] * sig * (F::ONE + g * (F::ONE - sig));
            }
            GateAct::GeluTanh => {
                d_up[i] = d_out[i] * act.value(g);
                d_gate[i] = d_out[i] * up[i] * act.derivative(g);
            }
        }
    }
    (d_gate, d_up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            for x in [-4.0f64, -1.3, -0.2, 0.0, 0.7, 2.5] {
                let h = 1e-6;
                let fd = (act.value(x + h) - act.value(x - h)) / (2.0 * h);
                assert!((fd - act.derivative(x)).abs() < 1e-8, "{act:?} at {x}: {fd} vs {}", act.derivative(x));
            }
        }
    }
}
