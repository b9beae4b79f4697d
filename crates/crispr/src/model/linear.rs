//! A linear layer with row-level pruning support.

use crate::tensor::{linear, linear_backward_into, Float};

/// One linear layer, weight `[out × in]` (row = output unit), optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear<F> {
    pub weight: Vec<F>,
    pub bias: Option<Vec<F>>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl<F: Float> Linear<F> {
    pub fn forward(&self, x: &[F], tokens: usize) -> Vec<F> {
        linear(x, tokens, &self.weight, self.bias.as_deref(), self.out_dim)
    }

    /// `dx += dy · W`; the weight gradient is never formed.
    pub fn backward_into(&self, dx: &mut [F], dy: &[F], tokens: usize) {
        linear_backward_into(dx, dy, tokens, &self.weight, self.out_dim);
    }

    /// Row `r` of the weight and its bias entry.
    pub fn row(&self, r: usize) -> (Vec<F>, Option<F>) {
        (self.weight[r * self.in_dim..(r + 1) * self.in_dim].to_vec(), self.bias.as_ref().map(|b| b[r]))
    }

    /// Overwrite row `r` (and its bias entry, if the layer has a bias).
    pub fn set_row(&mut self, r: usize, weights: &[F], bias: Option<F>) {
        self.weight[r * self.in_dim..(r + 1) * self.in_dim].copy_from_slice(weights);
        if let (Some(b), Some(v)) = (self.bias.as_mut(), bias) {
            b[r] = v;
        }
    }

    /// Make output unit `r` output 0 at every position.
    pub fn zero_row(&mut self, r: usize) {
        self.weight[r * self.in_dim..(r + 1) * self.in_dim].fill(F::ZERO);
        if let Some(b) = self.bias.as_mut() {
            b[r] = F::ZERO;
        }
    }
}
