//! Rotate-half rotary position embeddings (transformers' convention); the backward of a rotation
//! is the inverse rotation.

use crate::model::RopeScaling;
use crate::tensor::Float;

/// Rotate-half rotary embedding tables, computed in f64.
#[derive(Clone, Debug)]
pub struct RopeTable {
    inv_freq: Vec<f64>,
    /// `(cos, sin)` of position `p`, frequency `j` at `p · head_dim/2 + j`.
    table: Vec<(f64, f64)>,
}

impl RopeTable {
    /// Tables for heads of `dim` with base `theta`, optional scaling, and the first
    /// `positions` positions precomputed.
    pub fn new(dim: usize, theta: f64, scaling: Option<RopeScaling>, positions: usize) -> Self {
        let mut inv_freq: Vec<f64> = (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64)).collect();
        if let Some(RopeScaling::Linear { factor }) = scaling {
            inv_freq.iter_mut().for_each(|f| *f /= factor);
        }
        if let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) = scaling
        {
            let old = original_max_position as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for f in &mut inv_freq {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        // cos/sin of the first positions, computed once (a forward pass needs them 2 × layers times).
        let positions = positions.min(8192);
        let table = (0..positions)
            .flat_map(|p| inv_freq.iter().map(move |f| ((p as f64 * f).cos(), (p as f64 * f).sin())))
            .collect();
        RopeTable { inv_freq, table }
    }

    /// Rotate `x` (`[n × heads·head_dim]`, positions `pos0..pos0+n`) in place; `inverse` applies
    /// the transpose rotation, which is the backward of the forward rotation.
    pub fn apply<F: Float>(&self, x: &mut [F], n: usize, heads: usize, head_dim: usize, pos0: usize, inverse: bool) {
        let half = head_dim / 2;
        let mut cos = vec![F::ZERO; half];
        let mut sin = vec![F::ZERO; half];
        for i in 0..n {
            let pos = pos0 + i;
            for j in 0..half {
                let (c, s) = match self.table.get(pos * half + j) {
                    Some(&cs) => cs,
                    None => {
                        let a = pos as f64 * self.inv_freq[j];
                        (a.cos(), a.sin())
                    }
                };
                cos[j] = F::from_f64(c);
                sin[j] = F::from_f64(if inverse { -s } else { s });
            }
            for h in 0..heads {
                let base = i * heads * head_dim + h * head_dim;
                for j in 0..half {
                    let a = x[base + j];
                    let b = x[base + half + j];
                    x[base + j] = a * cos[j] - b * sin[j];
                    x[base + half + j] = b * cos[j] + a * sin[j];
                }
            }
        }
    }
}
