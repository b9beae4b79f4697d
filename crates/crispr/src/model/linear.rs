//! A linear layer with row-level pruning support, and the storage of weight matrices.

use std::any::TypeId;
use std::borrow::Cow;

use crate::precision::Precision;
use crate::tensor::{linear, linear_backward_into, Float};
use crate::tensor_bf16::{self, PackedBf16};

/// A row-major weight matrix `[out × in]`, in the engine's float type or in bf16.
#[derive(Clone, Debug)]
pub enum Weights<F> {
    /// In `F`: the reference path, bit for bit what it always was.
    Full(Vec<F>),
    /// In bf16 (`--precision bf16`): products round the activations to bf16 and accumulate in
    /// f32 (see [`crate::tensor_bf16`]).
    Bf16(PackedBf16),
}

impl<F> Default for Weights<F> {
    fn default() -> Self {
        Weights::Full(Vec::new())
    }
}

impl Weights<f32> {
    /// Keep the row-major `v` (rows of width `in_dim`) at precision `p` (rounding to nearest
    /// even for bf16).
    pub fn with_precision(v: Vec<f32>, in_dim: usize, p: Precision) -> Self {
        match p {
            Precision::F32 => Weights::Full(v),
            Precision::Bf16 => {
                Weights::Bf16(PackedBf16::from_f32(&v, v.len().checked_div(in_dim).unwrap_or(0), in_dim))
            }
        }
    }
}

/// `v` itself when `F` is f32 (the engine's type: no copy per product), else an f32 copy.
fn as_f32<F: Float>(v: &[F]) -> Cow<'_, [f32]> {
    if TypeId::of::<F>() == TypeId::of::<f32>() {
        // SAFETY: F is f32, so the slice is one of f32.
        Cow::Borrowed(unsafe { &*(v as *const [F] as *const [f32]) })
    } else {
        Cow::Owned(v.iter().map(|x| x.to_f64() as f32).collect())
    }
}

/// `v` itself when `F` is f32, else `None`.
fn as_f32_mut<F: Float>(v: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: F is f32, so the slice is one of f32.
    (TypeId::of::<F>() == TypeId::of::<f32>()).then(|| unsafe { &mut *(v as *mut [F] as *mut [f32]) })
}

impl<F> Weights<F> {
    pub fn len(&self) -> usize {
        match self {
            Weights::Full(v) => v.len(),
            Weights::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn precision(&self) -> Precision {
        match self {
            Weights::Full(_) => Precision::F32,
            Weights::Bf16(_) => Precision::Bf16,
        }
    }
}

impl<F: Float> Weights<F> {
    /// `y[t] = x[t] · Wᵀ (+ bias)`.
    pub fn linear(&self, x: &[F], tokens: usize, bias: Option<&[F]>, out_dim: usize) -> Vec<F> {
        match self {
            Weights::Full(w) => linear(x, tokens, w, bias, out_dim),
            Weights::Bf16(w) => {
                debug_assert_eq!(w.out_dim(), out_dim);
                let y = tensor_bf16::linear(&as_f32(x), tokens, w);
                let mut y: Vec<F> = y.into_iter().map(F::from_f32).collect();
                if let Some(b) = bias {
                    for row in y.chunks_exact_mut(out_dim) {
                        for (v, &bv) in row.iter_mut().zip(b) {
                            *v += bv;
                        }
                    }
                }
                y
            }
        }
    }

    /// `dx += dy · W`: the input gradient of [`Self::linear`]; the weight gradient is never formed.
    pub fn backward_into(&self, dx: &mut [F], dy: &[F], tokens: usize, out_dim: usize) {
        match self {
            Weights::Full(w) => linear_backward_into(dx, dy, tokens, w, out_dim),
            Weights::Bf16(w) => {
                debug_assert_eq!(w.out_dim(), out_dim);
                let dy = as_f32(dy);
                if let Some(dx) = as_f32_mut(dx) {
                    // The kernel adds to `dx` in place.
                    tensor_bf16::backward_into(dx, &dy, tokens, w);
                } else {
                    let mut d = vec![0f32; dx.len()];
                    tensor_bf16::backward_into(&mut d, &dy, tokens, w);
                    for (a, b) in dx.iter_mut().zip(d) {
                        *a += F::from_f32(b);
                    }
                }
            }
        }
    }

    /// Row `r` (of width `width`) in `F`.
    pub fn row(&self, r: usize, width: usize) -> Vec<F> {
        match self {
            Weights::Full(v) => v[r * width..(r + 1) * width].to_vec(),
            Weights::Bf16(v) => v.row_f32(r).map(F::from_f32).collect(),
        }
    }

    /// Append row `r` to `out` (an embedding lookup).
    pub fn extend_with_row(&self, out: &mut Vec<F>, r: usize, width: usize) {
        match self {
            Weights::Full(v) => out.extend_from_slice(&v[r * width..(r + 1) * width]),
            Weights::Bf16(v) => out.extend(v.row_f32(r).map(F::from_f32)),
        }
    }

    /// Overwrite row `r` (rounded to bf16 when stored in bf16).
    pub fn set_row(&mut self, r: usize, width: usize, values: &[F]) {
        match self {
            Weights::Full(v) => v[r * width..(r + 1) * width].copy_from_slice(values),
            Weights::Bf16(v) => v.set_row(r, values.iter().map(|s| s.to_f64() as f32)),
        }
    }

    /// Set row `r` to zero (exact at either precision).
    pub fn zero_row(&mut self, r: usize, width: usize) {
        match self {
            Weights::Full(v) => v[r * width..(r + 1) * width].fill(F::ZERO),
            Weights::Bf16(v) => v.zero_row(r),
        }
    }

    /// The same matrix for another float type; bf16 storage stays bf16.
    pub fn cast<G: Float>(&self) -> Weights<G> {
        match self {
            Weights::Full(v) => Weights::Full(v.iter().map(|x| G::from_f64(x.to_f64())).collect()),
            Weights::Bf16(v) => Weights::Bf16(v.clone()),
        }
    }

    /// Every element in `F`, for comparisons and tests.
    pub fn to_vec(&self) -> Vec<F> {
        match self {
            Weights::Full(v) => v.clone(),
            Weights::Bf16(v) => v.to_f32().into_iter().map(F::from_f32).collect(),
        }
    }
}

/// One linear layer, weight `[out × in]` (row = output unit), optional bias `[out]`.
#[derive(Clone, Debug)]
pub struct Linear<F> {
    pub weight: Weights<F>,
    pub bias: Option<Vec<F>>,
    pub out_dim: usize,
    pub in_dim: usize,
}

impl<F: Float> Linear<F> {
    pub fn forward(&self, x: &[F], tokens: usize) -> Vec<F> {
        self.weight.linear(x, tokens, self.bias.as_deref(), self.out_dim)
    }

    /// `dx += dy · W`; the weight gradient is never formed.
    pub fn backward_into(&self, dx: &mut [F], dy: &[F], tokens: usize) {
        self.weight.backward_into(dx, dy, tokens, self.out_dim);
    }

    /// Row `r` of the weight and its bias entry.
    pub fn row(&self, r: usize) -> (Vec<F>, Option<F>) {
        (self.weight.row(r, self.in_dim), self.bias.as_ref().map(|b| b[r]))
    }

    /// Overwrite row `r` (and its bias entry, if the layer has a bias).
    pub fn set_row(&mut self, r: usize, weights: &[F], bias: Option<F>) {
        self.weight.set_row(r, self.in_dim, weights);
        if let (Some(b), Some(v)) = (self.bias.as_mut(), bias) {
            b[r] = v;
        }
    }

    /// Make output unit `r` output 0 at every position.
    pub fn zero_row(&mut self, r: usize) {
        self.weight.zero_row(r, self.in_dim);
        if let Some(b) = self.bias.as_mut() {
            b[r] = F::ZERO;
        }
    }

    /// The same layer for another float type (bf16 weights stay bf16).
    pub fn cast<G: Float>(&self) -> Linear<G> {
        Linear {
            weight: self.weight.cast(),
            bias: self.bias.as_ref().map(|b| b.iter().map(|x| G::from_f64(x.to_f64())).collect()),
            out_dim: self.out_dim,
            in_dim: self.in_dim,
        }
    }
}
