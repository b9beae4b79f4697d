//! Minimal dense linear algebra on row-major buffers.
//!
//! The engine owns its math instead of using an autograd framework: every backward formula is
//! written out (see `model::llama`), so no op can silently drop out of the gradient graph and no
//! weight gradient is ever computed. Everything is generic over [`Float`] so the same code runs in
//! f32 for real work and in f64 for finite-difference checks.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The scalar types the engine computes in.
pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + PartialOrd
    + Default
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// [`linear`] for a handful of rows by the fast path of this type and CPU, if it has one.
    fn linear_few_rows(x: &[Self], rows: usize, w: &[Self], out_dim: usize) -> Option<Vec<Self>>;
}

/// `e^x` for f32 without a libm call, so loops over it vectorise: Cody–Waite range reduction
/// `x = n·ln 2 + r` and Cephes' degree-6 polynomial for `e^r` (relative error ~1e-7, about one
/// ulp, on the whole range). Below −87.3 the result underflows to ~1e-38 rather than 0; NaN
/// passes through.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.37;
    const LO: f32 = -87.33;
    // `clamp` keeps NaN as NaN.
    let x = x.clamp(LO, HI);
    // Round x/ln2 to the nearest integer by the float-magic trick (no floor call).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp_impl(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn linear_few_rows(x: &[Self], rows: usize, w: &[Self], out_dim: usize) -> Option<Vec<Self>> {
                <$t as FewRowsImpl>::few_rows(x, rows, w, out_dim)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// Which `exp` each float type uses.
trait ExpImpl {
    fn exp_impl(self) -> Self;
}

impl ExpImpl for f32 {
    #[inline(always)]
    fn exp_impl(self) -> f32 {
        exp_f32(self)
    }
}

impl ExpImpl for f64 {
    /// f64 is the precision of the gradient checks: keep libm.
    #[inline(always)]
    fn exp_impl(self) -> f64 {
        f64::exp(self)
    }
}

/// Which types have a few-rows kernel: f32 on x86-64 CPUs with AVX2 and FMA.
trait FewRowsImpl: Sized {
    fn few_rows(x: &[Self], rows: usize, w: &[Self], out_dim: usize) -> Option<Vec<Self>>;
}

impl FewRowsImpl for f64 {
    /// f64 serves the gradient checks, where speed does not matter.
    fn few_rows(_: &[f64], _: usize, _: &[f64], _: usize) -> Option<Vec<f64>> {
        None
    }
}

impl FewRowsImpl for f32 {
    fn few_rows(x: &[f32], rows: usize, w: &[f32], out_dim: usize) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(few_rows::linear(x, rows, w, out_dim));
        }
        let _ = (x, rows, w, out_dim);
        None
    }
}

/// `y = x · wᵀ` for at most [`FEW_ROWS`] rows of `x`: every weight row is read once and dotted
/// with all rows of `x` (kept in L1), so nothing is packed. A GEMM kernel packs the whole weight
/// matrix first, which for a candidate's few tokens after a cached prompt costs more than the
/// arithmetic (measured on a SmolLM2-sized layer stack: 2.0–2.8× faster for 2–4 rows, 1.3× for 8;
/// raising the limit from 8 to 16 rows, so that a prompt's packed candidates stay here, made a
/// SmolLM2 BBQ evaluation ~6 % faster end to end, on a Zen 3).
#[cfg(target_arch = "x86_64")]
mod few_rows {
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    use super::FEW_ROWS;

    /// Weight rows per parallel task.
    const CHUNK: usize = 64;

    pub fn linear(x: &[f32], rows: usize, w: &[f32], out_dim: usize) -> Vec<f32> {
        assert!(rows <= FEW_ROWS, "at most {FEW_ROWS} rows");
        let k = w.len() / out_dim;
        assert_eq!(x.len(), rows * k, "input is rows × in");
        // Computed transposed (`[out × rows]`) so that every task owns a contiguous slice.
        let mut yt = vec![0f32; out_dim * rows];
        let work = |(yc, wc): (&mut [f32], &[f32])| {
            // SAFETY: only reached after AVX2 and FMA were detected at run time.
            unsafe { dots(x, rows, k, wc, yc) }
        };
        if out_dim * k * rows >= super::PARALLEL_THRESHOLD {
            yt.par_chunks_mut(CHUNK * rows).zip(w.par_chunks(CHUNK * k)).for_each(work);
        } else {
            yt.chunks_mut(CHUNK * rows).zip(w.chunks(CHUNK * k)).for_each(work);
        }
        let mut y = vec![0f32; rows * out_dim];
        for (n, col) in yt.chunks_exact(rows.max(1)).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                y[r * out_dim + n] = v;
            }
        }
        y
    }

    /// Rows of `x` dotted with a weight row per pass: an accumulator each, within the 16
    /// registers. More rows take further passes over the same weight row, then in L1.
    const ROWS_PER_PASS: usize = 8;

    /// `yt[n·rows + r] = x[r] · w[n]` for every row `n` of `w` (`[n × k]`).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots(x: &[f32], rows: usize, k: usize, w: &[f32], yt: &mut [f32]) {
        let kv = k / 8 * 8;
        for (n, wr) in w.chunks_exact(k).enumerate() {
            let mut r0 = 0;
            while r0 < rows {
                let pass = ROWS_PER_PASS.min(rows - r0);
                let xp = &x[r0 * k..(r0 + pass) * k];
                let mut acc = [_mm256_setzero_ps(); ROWS_PER_PASS];
                let mut j = 0;
                while j < kv {
                    // SAFETY: j + 8 <= kv <= k, the length of `wr` and of every row of `xp`.
                    let wv = unsafe { _mm256_loadu_ps(wr.as_ptr().add(j)) };
                    for (r, a) in acc.iter_mut().enumerate().take(pass) {
                        let xv = unsafe { _mm256_loadu_ps(xp.as_ptr().add(r * k + j)) };
                        *a = _mm256_fmadd_ps(xv, wv, *a);
                    }
                    j += 8;
                }
                for (r, &a) in acc.iter().enumerate().take(pass) {
                    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                    let mut total = _mm_cvtss_f32(s);
                    for t in kv..k {
                        total += xp[r * k + t] * wr[t];
                    }
                    yt[n * rows + r0 + r] = total;
                }
                r0 += pass;
            }
        }
    }
}

/// Row counts up to this go through the type's few-rows kernel, if it has one.
const FEW_ROWS: usize = 16;

/// A read-only strided matrix view into a slice.
#[derive(Clone, Copy)]
pub struct Mat<'a, F> {
    data: &'a [F],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, F: Float> Mat<'a, F> {
    /// A row-major `rows × cols` matrix occupying the start of `data`.
    pub fn rows(data: &'a [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, 0, rows, cols, cols, 1)
    }

    /// The transpose of a row-major `rows × cols` matrix, i.e. a `cols × rows` view.
    pub fn rows_t(data: &'a [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, 0, cols, rows, 1, cols)
    }

    /// A general strided view; panics (a programming error, never user input) if it reaches past `data`.
    pub fn strided(
        data: &'a [F],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = offset + (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "matrix view {rows}x{cols} (strides {row_stride},{col_stride}, offset {offset}) exceeds buffer of {}",
                data.len()
            );
        }
        Mat { data, offset, rows, cols, row_stride, col_stride }
    }

    pub fn transpose(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// A mutable strided destination.
pub struct MatMut<'a, F> {
    data: &'a mut [F],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, F: Float> MatMut<'a, F> {
    pub fn rows(data: &'a mut [F], rows: usize, cols: usize) -> Self {
        Self::strided(data, 0, rows, cols, cols)
    }

    /// Rows are `row_stride` apart, columns contiguous.
    pub fn strided(data: &'a mut [F], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = offset + (rows - 1) * row_stride + cols - 1;
            assert!(last < data.len(), "destination view exceeds buffer");
        }
        MatMut { data, offset, rows, cols, row_stride }
    }
}

/// Work below this many multiply-adds runs on one thread: spawning costs more than it saves.
const PARALLEL_THRESHOLD: usize = 1 << 18;

/// `dst = scale · a · b` (or `dst += scale · a · b` when `accumulate`).
pub fn matmul<F: Float>(dst: MatMut<'_, F>, a: Mat<'_, F>, b: Mat<'_, F>, scale: F, accumulate: bool) {
    matmul_with(dst, a, b, scale, accumulate, true)
}

/// As [`matmul`], single-threaded: for callers that already run in parallel.
pub fn matmul_serial<F: Float>(dst: MatMut<'_, F>, a: Mat<'_, F>, b: Mat<'_, F>, scale: F, accumulate: bool) {
    matmul_with(dst, a, b, scale, accumulate, false)
}

fn matmul_with<F: Float>(
    dst: MatMut<'_, F>,
    a: Mat<'_, F>,
    b: Mat<'_, F>,
    scale: F,
    accumulate: bool,
    allow_parallel: bool,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!(dst.rows, a.rows, "row counts differ");
    assert_eq!(dst.cols, b.cols, "column counts differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                let start = dst.offset + r * dst.row_stride;
                dst.data[start..start + n].fill(F::ZERO);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if allow_parallel && threads > 1 && m * n * k >= PARALLEL_THRESHOLD {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views were bounds-checked at construction; `dst` is uniquely borrowed and
    // cannot alias `a` or `b` (shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            F::ONE,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `y[t] = x[t] · wᵀ (+ bias)` for a row-major weight `w` of shape `out × in`.
pub fn linear<F: Float>(x: &[F], tokens: usize, w: &[F], bias: Option<&[F]>, out_dim: usize) -> Vec<F> {
    let in_dim = w.len() / out_dim;
    let few = if (2..=FEW_ROWS).contains(&tokens) { F::linear_few_rows(x, tokens, w, out_dim) } else { None };
    let mut y = match few {
        Some(y) => y,
        None => {
            let mut y = vec![F::ZERO; tokens * out_dim];
            matmul(
                MatMut::rows(&mut y, tokens, out_dim),
                Mat::rows(x, tokens, in_dim),
                Mat::rows_t(w, out_dim, in_dim),
                F::ONE,
                false,
            );
            y
        }
    };
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(out_dim) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    y
}

/// `dx += dy · w`: the input gradient of [`linear`]; the weight gradient is never formed.
pub fn linear_backward_into<F: Float>(dx: &mut [F], dy: &[F], tokens: usize, w: &[F], out_dim: usize) {
    let in_dim = w.len() / out_dim;
    matmul(
        MatMut::rows(dx, tokens, in_dim),
        Mat::rows(dy, tokens, out_dim),
        Mat::rows(w, out_dim, in_dim),
        F::ONE,
        true,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_with_transposes_and_accumulation() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let expect = naive(&a, &b, m, k, n);
        let mut c = vec![1.0; m * n];
        matmul(MatMut::rows(&mut c, m, n), Mat::rows(&a, m, k), Mat::rows(&b, k, n), 1.0, true);
        for (x, e) in c.iter().zip(&expect) {
            assert!((x - 1.0 - e).abs() < 1e-12);
        }
        // b given as the transpose of an n × k row-major buffer.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c2 = vec![0.0; m * n];
        matmul(MatMut::rows(&mut c2, m, n), Mat::rows(&a, m, k), Mat::rows_t(&bt, n, k), 2.0, false);
        for (x, e) in c2.iter().zip(&expect) {
            assert!((x - 2.0 * e).abs() < 1e-12);
        }
    }

    fn avx2_fma() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    #[test]
    fn few_rows_kernel_matches_the_gemm_path() {
        // Odd sizes: a tail after the 8-wide loop, a last chunk shorter than the others.
        for (k, n) in [(37usize, 150usize), (576, 200), (8, 3)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.613).sin()).collect();
            for rows in 1..=FEW_ROWS {
                let x: Vec<f32> = (0..rows * k).map(|i| ((i as f32) * 0.271).cos()).collect();
                let mut want = vec![0f32; rows * n];
                matmul(MatMut::rows(&mut want, rows, n), Mat::rows(&x, rows, k), Mat::rows_t(&w, n, k), 1.0, false);
                // The kernel runs exactly where the CPU has AVX2 and FMA (every machine of this
                // project); elsewhere `linear` must fall back to the GEMM path, checked below.
                let got = f32::linear_few_rows(&x, rows, &w, n);
                assert_eq!(got.is_some(), avx2_fma(), "few-rows kernel dispatch");
                for (g, e) in got.iter().flatten().zip(&want) {
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "k {k} n {n} rows {rows}: {g} vs {e}");
                }
                // And through `linear`, bias included.
                let b: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let y = linear(&x, rows, &w, Some(&b), n);
                for (i, (v, e)) in y.iter().zip(&want).enumerate() {
                    assert!((v - e - b[i % n]).abs() <= 1e-4 * (1.0 + v.abs()), "linear with bias");
                }
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    #[should_panic(expected = "exceeds buffer")]
    fn out_of_bounds_view_is_refused() {
        let a = vec![0.0f32; 10];
        let _ = Mat::rows(&a, 3, 4);
    }
}
