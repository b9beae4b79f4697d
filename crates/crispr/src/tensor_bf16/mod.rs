//! Products with bf16 weights (`--precision bf16`).
//!
//! Storage: a weight matrix `[out × in]` is kept packed ([`PackedBf16`]) in panels of
//! [`PANEL`] rows, the layout the x86 microkernels read straight into registers (no
//! per-call packing: a decoder's 4-row products would pay for it on every token).
//!
//! Forward: `y = bf16(x) · Wᵀ` with the activations rounded to bf16 (nearest, ties to even) and
//! every sum accumulated in f32 — on x86-64 by register-blocked microkernels that read the
//! panels directly (f32 FMA on weights widened in registers, 512-bit with AVX-512 or 256-bit
//! with AVX2, or `vdpbf16ps`: see [`best_kernel`]), elsewhere by widening panels of the weight to f32 (exact)
//! and running the f32 GEMM on the rounded activations. All compute the same exact products (a
//! product of two bf16 values is exact in f32); they differ only in the order of the f32
//! additions (and in that `vdpbf16ps` treats subnormal inputs as zero).
//!
//! Backward (`dx += dy · W`, the input gradient attribution needs): `dy` stays f32 and the weight
//! is widened exactly (in registers on x86-64, block by block elsewhere), so the only rounding
//! beyond f32 arithmetic is the weights' own.

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use crate::tensor::{matmul, Mat, MatMut};

/// Weight rows per packed panel: the two 16-lane f32 accumulators of one microkernel row.
pub const PANEL: usize = 32;

/// A row-major weight matrix `[out × in]` in bf16, stored panel by panel.
///
/// Panel `p` holds rows `32p .. 32p + 32` (the last one zero-padded). Within it, input columns
/// come in pairs `(2q, 2q + 1)` (an odd width is zero-padded), and pair `q` is 64 values:
/// `w[32p + l][2q], w[32p + l][2q + 1]` for `l = 0 .. 32`. So one pair of one panel is two
/// 512-bit vectors, each lane the two weights `vdpbf16ps` multiplies with a broadcast pair of
/// activations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedBf16 {
    out_dim: usize,
    in_dim: usize,
    /// The panels, in cache lines so that every vector load is aligned (a pair of a panel is
    /// exactly two lines).
    lines: Vec<Line>,
}

/// One 64-byte cache line of 32 bf16.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct Line([bf16; 32]);

impl PackedBf16 {
    /// Round a row-major `[out × in]` f32 matrix to bf16 (nearest, ties to even) and pack it.
    pub fn from_f32(v: &[f32], out_dim: usize, in_dim: usize) -> Self {
        assert_eq!(v.len(), out_dim * in_dim, "weight is out × in");
        let mut m = PackedBf16 { out_dim, in_dim, lines: Vec::new() };
        let panel_len = m.panel_len();
        m.lines = vec![Line([bf16::ZERO; 32]); out_dim.div_ceil(PANEL) * panel_len / 32];
        if panel_len == 0 {
            return m;
        }
        let fill = |(p, dst): (usize, &mut [bf16])| {
            let n0 = p * PANEL;
            for l in 0..PANEL.min(out_dim - n0) {
                let row = &v[(n0 + l) * in_dim..(n0 + l + 1) * in_dim];
                for (j, &x) in row.iter().enumerate() {
                    dst[(j / 2) * 2 * PANEL + l * 2 + j % 2] = round(x);
                }
            }
        };
        if v.len() >= 1 << 16 {
            m.data_mut().par_chunks_mut(panel_len).enumerate().for_each(fill);
        } else {
            m.data_mut().chunks_mut(panel_len).enumerate().for_each(fill);
        }
        m
    }

    /// The panels as one slice of bf16.
    fn data(&self) -> &[bf16] {
        // SAFETY: `Line` is `repr(C)` around `[bf16; 32]`: its size is 64 bytes with no padding,
        // so `lines` is `32 · len` contiguous, initialised bf16.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<bf16>(), self.lines.len() * 32) }
    }

    fn data_mut(&mut self) -> &mut [bf16] {
        // SAFETY: as in `data`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<bf16>(), self.lines.len() * 32) }
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The number of weights (without the padding).
    pub fn len(&self) -> usize {
        self.out_dim * self.in_dim
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pairs(&self) -> usize {
        self.in_dim.div_ceil(2)
    }

    fn panel_len(&self) -> usize {
        self.pairs() * 2 * PANEL
    }

    fn index(&self, n: usize, j: usize) -> usize {
        (n / PANEL) * self.panel_len() + (j / 2) * 2 * PANEL + (n % PANEL) * 2 + j % 2
    }

    /// `w[n][j]`.
    pub fn get(&self, n: usize, j: usize) -> bf16 {
        assert!(n < self.out_dim && j < self.in_dim, "index out of the matrix");
        self.data()[self.index(n, j)]
    }

    /// Row `n`, widened to f32 (exact).
    pub fn row_f32(&self, n: usize) -> impl Iterator<Item = f32> + '_ {
        assert!(n < self.out_dim, "row out of the matrix");
        let data = self.data();
        (0..self.in_dim).map(move |j| data[self.index(n, j)].to_f32())
    }

    /// Overwrite row `n` with `values` rounded to bf16.
    pub fn set_row(&mut self, n: usize, values: impl IntoIterator<Item = f32>) {
        assert!(n < self.out_dim, "row out of the matrix");
        let mut written = 0;
        for (j, v) in values.into_iter().take(self.in_dim).enumerate() {
            let i = self.index(n, j);
            self.data_mut()[i] = round(v);
            written += 1;
        }
        assert_eq!(written, self.in_dim, "a row has in_dim values");
    }

    /// Set row `n` to zero.
    pub fn zero_row(&mut self, n: usize) {
        self.set_row(n, std::iter::repeat_n(0.0, self.in_dim));
    }

    /// Every weight, row-major, widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.widen_rows(0, self.out_dim, &mut out);
        out
    }

    /// Rows `n0 .. n0 + nb` widened (exact) into the row-major `dst`; `n0` is a panel boundary.
    fn widen_rows(&self, n0: usize, nb: usize, dst: &mut [f32]) {
        debug_assert!(n0.is_multiple_of(PANEL) && n0 + nb <= self.out_dim);
        let (k, panel_len) = (self.in_dim, self.panel_len());
        if k == 0 {
            return;
        }
        let work = |(i, rows): (usize, &mut [f32])| {
            let n = n0 + i * PANEL;
            let panel = &self.data()[(n / PANEL) * panel_len..][..panel_len];
            // A lane's pair is one 32-bit word: the low half widens by a shift, the high half
            // by a mask (bf16 is the top half of an f32), no per-element conversion call.
            for (l, row) in rows.chunks_exact_mut(k).enumerate() {
                let mut pairs = row.chunks_exact_mut(2);
                for (q, d) in pairs.by_ref().enumerate() {
                    let i = q * 2 * PANEL + l * 2;
                    let word = u32::from(panel[i].to_bits()) | (u32::from(panel[i + 1].to_bits()) << 16);
                    d[0] = f32::from_bits(word << 16);
                    d[1] = f32::from_bits(word & 0xffff_0000);
                }
                if let [last] = pairs.into_remainder() {
                    *last = panel[(k / 2) * 2 * PANEL + l * 2].to_f32();
                }
            }
        };
        let dst = &mut dst[..nb * k];
        if dst.len() >= 1 << 16 {
            dst.par_chunks_mut(PANEL * k).enumerate().for_each(work);
        } else {
            dst.chunks_mut(PANEL * k).enumerate().for_each(work);
        }
    }
}

/// Which implementation of the bf16 forward product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Weights widened to f32 in registers, f32 FMA (x86-64 with AVX-512 F and BW).
    Avx512Fma,
    /// `vdpbf16ps` (x86-64 with AVX-512 BF16, F and BW).
    Avx512Bf16,
    /// Weights widened to f32 in registers, f32 FMA in 256-bit tiles (x86-64 with AVX2 and FMA).
    Avx2Fma,
    /// Weights widened to f32 block by block in memory, then the f32 GEMM: any CPU.
    Widen,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Fma => "avx512-fma",
            Kernel::Avx512Bf16 => "avx512-dpbf16",
            Kernel::Avx2Fma => "avx2-fma",
            Kernel::Widen => "widened-f32",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Widen => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Fma => {
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512bf16")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Fma | Kernel::Avx512Bf16 | Kernel::Avx2Fma => false,
        }
    }
}

/// The kernel bf16 products run on (chosen once): AVX-512 FMA where the CPU has AVX-512, else
/// AVX2 FMA where it has AVX2, else the portable one. `CRISPR_BF16_KERNEL=fma|dpbf16|avx2|widen`
/// picks one, to compare them on
/// one machine (an unavailable choice falls back to the default).
///
/// Why FMA and not `vdpbf16ps` by default: on the Xeon (Sapphire/Emerald Rapids) this was
/// measured on, one `vdpbf16ps` (32 multiply-adds) issues for every four 512-bit f32 FMAs (16
/// each), so it does half their multiply-adds per cycle; widening the bf16 weights in registers
/// is faster even in the compute-bound products, and both read half the bytes of f32 weights
/// (`cargo bench --bench gemm -- peaks`, BENCHMARKS.md).
pub fn best_kernel() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        let forced = match std::env::var("CRISPR_BF16_KERNEL").as_deref() {
            Ok("widen") => Some(Kernel::Widen),
            Ok("dpbf16") => Some(Kernel::Avx512Bf16),
            Ok("fma") => Some(Kernel::Avx512Fma),
            Ok("avx2") => Some(Kernel::Avx2Fma),
            _ => None,
        };
        match forced.filter(|k| k.available()) {
            Some(k) => k,
            None if Kernel::Avx512Fma.available() => Kernel::Avx512Fma,
            None if Kernel::Avx2Fma.available() => Kernel::Avx2Fma,
            None => Kernel::Widen,
        }
    })
}

/// Round to bf16, nearest with ties to even (NaN stays NaN).
#[inline]
pub fn round(x: f32) -> bf16 {
    bf16::from_f32(x)
}

/// `x` rounded to bf16 and widened back: the activations the bf16 products see.
pub fn round_slice(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| round(v).to_f32()).collect()
}

/// Work below this many multiply-adds runs on one thread.
const PARALLEL_THRESHOLD: usize = 1 << 18;

/// Weight rows widened per block in the portable kernel and the backward product: about this
/// many bytes of f32 at a time (whole panels), so the widened block stays in cache while the
/// GEMM reads it.
const WIDEN_BLOCK_BYTES: usize = 2 << 20;

fn widen_block_rows(in_dim: usize, out_dim: usize) -> usize {
    let panels = (WIDEN_BLOCK_BYTES / (4 * PANEL * in_dim.max(1))).max(1);
    (panels * PANEL).min(out_dim.max(1))
}

/// `y[t] = bf16(x[t]) · wᵀ`, on the best kernel.
pub fn linear(x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    linear_with(best_kernel(), x, rows, w)
}

/// [`linear`] on a chosen kernel; panics if the CPU lacks it (a programming error: check
/// [`Kernel::available`]).
pub fn linear_with(kernel: Kernel, x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    assert_eq!(x.len(), rows * w.in_dim, "input is rows × in");
    if rows == 0 || w.is_empty() {
        return vec![0f32; rows * w.out_dim];
    }
    assert!(kernel.available(), "this CPU cannot run {}", kernel.name());
    match kernel {
        Kernel::Widen => linear_widen(x, rows, w),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Fma | Kernel::Avx512Bf16 => avx512::linear(kernel == Kernel::Avx512Fma, x, rows, w),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => avx2::linear(x, rows, w),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("x86 kernels are never available elsewhere"),
    }
}

fn linear_widen(x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    let out_dim = w.out_dim;
    let xr = round_slice(x);
    let mut y = vec![0f32; rows * out_dim];
    for_each_widened_block(w, |n0, nb, wb| {
        // The f32 engine's product, with its few-rows path (a candidate's tokens).
        let yb = crate::tensor::linear(&xr, rows, wb, None, nb);
        for (dst, src) in y.chunks_exact_mut(out_dim).zip(yb.chunks_exact(nb)) {
            dst[n0..n0 + nb].copy_from_slice(src);
        }
    });
    y
}

/// `f(n0, nb, rows)` for consecutive blocks of `w`'s rows, each widened (exactly) to row-major
/// f32 in one reused buffer of [`WIDEN_BLOCK_BYTES`].
fn for_each_widened_block(w: &PackedBf16, mut f: impl FnMut(usize, usize, &[f32])) {
    let (out_dim, in_dim) = (w.out_dim, w.in_dim);
    let block = widen_block_rows(in_dim, out_dim);
    let mut wide = vec![0f32; block * in_dim];
    let mut n0 = 0;
    while n0 < out_dim {
        let nb = block.min(out_dim - n0);
        let wb = &mut wide[..nb * in_dim];
        w.widen_rows(n0, nb, wb);
        f(n0, nb, wb);
        n0 += nb;
    }
}

/// Up to this many rows the AVX2 kernel reads the input gradient's weights straight from the
/// panels; above, widening blocks of the weight once for the f32 GEMM is faster (its 16
/// registers leave the direct tile 5 loads per 12 FMAs). Zen 3, 2 threads, flan-t5-base `wi`
/// (`cargo bench --bench gemm -- backward`): 12 rows 0.55 ms direct / 0.97 widened, 32 rows 1.5 /
/// 2.1, 113 rows 5.0 / 3.1.
#[cfg(target_arch = "x86_64")]
const AVX2_DIRECT_BACKWARD_ROWS: usize = 64;

/// `dx += dy · w`; `dy` is not rounded. Both AVX-512 kernels run it by FMA (there is no
/// bf16 product to use: `dy` stays f32), the AVX2 one too up to [`AVX2_DIRECT_BACKWARD_ROWS`]
/// rows, the portable one (and AVX2 above) by the f32 GEMM on widened blocks.
pub fn backward_into(dx: &mut [f32], dy: &[f32], rows: usize, w: &PackedBf16) {
    backward_with(best_kernel(), dx, dy, rows, w)
}

/// [`backward_into`] on a chosen kernel; panics if the CPU lacks it.
pub fn backward_with(kernel: Kernel, dx: &mut [f32], dy: &[f32], rows: usize, w: &PackedBf16) {
    let (out_dim, in_dim) = (w.out_dim, w.in_dim);
    assert_eq!(dy.len(), rows * out_dim, "gradient is rows × out");
    assert_eq!(dx.len(), rows * in_dim, "input gradient is rows × in");
    assert!(kernel.available(), "this CPU cannot run {}", kernel.name());
    if rows == 0 || w.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Kernel::Avx512Fma | Kernel::Avx512Bf16 => return avx512::backward(dx, dy, rows, w),
        Kernel::Avx2Fma if rows <= AVX2_DIRECT_BACKWARD_ROWS => return avx2::backward(dx, dy, rows, w),
        Kernel::Avx2Fma | Kernel::Widen => {}
    }
    for_each_widened_block(w, |n0, nb, wb| {
        matmul(
            MatMut::rows(dx, rows, in_dim),
            Mat::strided(dy, n0, rows, nb, out_dim, 1),
            Mat::rows(wb, nb, in_dim),
            1.0,
            true,
        )
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 0.7311).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    /// The exact value of `bf16(x) · wᵀ` in f64, and the sum of |products| (for the error bound).
    fn reference(x: &[f32], rows: usize, w: &[f32], out: usize) -> (Vec<f64>, Vec<f64>) {
        let k = w.len() / out;
        let mut y = vec![0f64; rows * out];
        let mut mag = vec![0f64; rows * out];
        for r in 0..rows {
            for n in 0..out {
                for j in 0..k {
                    let p = round(x[r * k + j]).to_f64() * round(w[n * k + j]).to_f64();
                    y[r * out + n] += p;
                    mag[r * out + n] += p.abs();
                }
            }
        }
        (y, mag)
    }

    #[test]
    fn packing_keeps_every_weight_in_its_place() {
        for (out, k) in [(1, 1), (3, 31), (33, 4), (70, 65), (64, 2)] {
            let v = data(out * k, 5.0);
            let m = PackedBf16::from_f32(&v, out, k);
            let rounded: Vec<f32> = v.iter().map(|&x| round(x).to_f32()).collect();
            assert_eq!(m.to_f32(), rounded, "out {out} k {k}");
            for n in 0..out {
                assert_eq!(m.row_f32(n).collect::<Vec<_>>(), rounded[n * k..(n + 1) * k]);
                for j in 0..k {
                    assert_eq!(m.get(n, j), round(v[n * k + j]));
                }
            }
            // Padding stays zero: the kernels read it.
            let real: usize = out * k;
            assert_eq!(
                m.data().iter().filter(|b| b.to_f32() != 0.0).count(),
                rounded.iter().filter(|&&x| x != 0.0).count()
            );
            assert!(m.data().len() >= real);
        }
    }

    #[test]
    fn rows_can_be_overwritten_and_zeroed() {
        let (out, k) = (40, 7);
        let v = data(out * k, 6.0);
        let mut m = PackedBf16::from_f32(&v, out, k);
        let new_row = data(k, 9.0);
        m.set_row(33, new_row.iter().copied());
        m.zero_row(2);
        for n in 0..out {
            let want: Vec<f32> = match n {
                2 => vec![0.0; k],
                33 => new_row.iter().map(|&x| round(x).to_f32()).collect(),
                _ => v[n * k..(n + 1) * k].iter().map(|&x| round(x).to_f32()).collect(),
            };
            assert_eq!(m.row_f32(n).collect::<Vec<_>>(), want, "row {n}");
        }
    }

    /// The kernels this test run must cover: every kernel, less those the environment declares
    /// absent — `CRISPR_NO_AVX512=1` both AVX-512 ones, `CRISPR_NO_AVX512BF16=1` the `vdpbf16ps`
    /// one (`.ci/run` sets them from `/proc/cpuinfo` and prints that it did). A CPU that cannot run
    /// a kernel not declared absent fails here instead of passing untested.
    fn kernels_under_test() -> Vec<Kernel> {
        // AVX2 and FMA: every x86-64 CPU of the last decade, and every host this ran on.
        #[cfg(target_arch = "x86_64")]
        let all = vec![Kernel::Avx512Fma, Kernel::Avx512Bf16, Kernel::Avx2Fma, Kernel::Widen];
        #[cfg(not(target_arch = "x86_64"))]
        let all = vec![Kernel::Widen];
        let declared = |var: &str| std::env::var_os(var).is_some_and(|v| v == "1");
        let absent = |k: &Kernel| match k {
            Kernel::Avx512Fma => declared("CRISPR_NO_AVX512"),
            Kernel::Avx512Bf16 => declared("CRISPR_NO_AVX512") || declared("CRISPR_NO_AVX512BF16"),
            Kernel::Avx2Fma | Kernel::Widen => false,
        };
        let all: Vec<Kernel> = all.into_iter().filter(|k| !absent(k)).collect();
        for &k in &all {
            let declare = if k == Kernel::Avx512Bf16 { "CRISPR_NO_AVX512BF16=1" } else { "CRISPR_NO_AVX512=1" };
            assert!(k.available(), "this CPU cannot run the {} kernel; {declare} declares it absent", k.name());
        }
        all
    }

    #[test]
    fn every_kernel_matches_an_f64_reference() {
        let kernels = kernels_under_test();
        // Odd shapes: odd widths, every row-tile remainder, partial and several panels, a row
        // count above one parallel row block, a product large enough to run in parallel.
        for (rows, k, out) in
            [(1, 31, 3), (3, 64, 70), (5, 100, 131), (13, 768, 67), (130, 33, 65), (200, 257, 96), (23, 1, 33)]
        {
            let x = data(rows * k, 1.0);
            let w = data(out * k, 2.0);
            let packed = PackedBf16::from_f32(&w, out, k);
            let (want, mag) = reference(&x, rows, &w, out);
            for &kernel in &kernels {
                let got = linear_with(kernel, &x, rows, &packed);
                assert_eq!(got.len(), rows * out);
                for (i, ((g, e), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    // f32 accumulation of k exact products: |error| <= k·2⁻²⁴·Σ|p| (loose).
                    let bound = k as f64 * f32::EPSILON as f64 * m + 1e-30;
                    assert!(
                        (*g as f64 - e).abs() <= bound,
                        "{} rows {rows} k {k} out {out} at {i}: {g} vs {e}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn activations_are_rounded_to_bf16() {
        // 1 + 2⁻¹⁰ is not a bf16: it rounds to 1, so the product with 1 is exactly 1 (40 values:
        // two 16-wide conversions and a scalar tail).
        let x = vec![1.0 + 2f32.powi(-10); 40];
        let w = PackedBf16::from_f32(&[1.0; 40], 1, 40);
        for kernel in kernels_under_test() {
            assert_eq!(linear_with(kernel, &x, 1, &w), vec![40.0], "{}", kernel.name());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_fma_kernels_rounding_is_halfs() {
        let ties = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -(1.0 + 2f32.powi(-8))];
        let edges = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-40, -3e-39];
        let many = data(10_000, 8.0).into_iter().map(|v| v * 1e3);
        for v in ties.into_iter().chain(edges).chain(many) {
            assert_eq!(x86::round_bits(v), round(v).to_f32().to_bits(), "{v:e}");
        }
        let nan = f32::from_bits(x86::round_bits(f32::NAN));
        assert!(nan.is_nan());
    }

    #[test]
    fn backward_matches_an_f64_reference() {
        // (The backward product has no `vdpbf16ps` form: both AVX-512 kernels run the FMA one.)
        let kernels: Vec<Kernel> = kernels_under_test().into_iter().filter(|&k| k != Kernel::Avx512Bf16).collect();
        // Tails of the 32-column tiles, every row-tile remainder, several widened blocks.
        for (rows, k, out) in [(1, 31, 3), (4, 100, 131), (7, 64, 5000), (13, 33, 40), (200, 47, 70), (5, 300, 48)] {
            let dy = data(rows * out, 3.0);
            let wf = data(out * k, 4.0);
            let w = PackedBf16::from_f32(&wf, out, k);
            for &kernel in &kernels {
                let mut dx = vec![0.5f32; rows * k];
                backward_with(kernel, &mut dx, &dy, rows, &w);
                for r in 0..rows {
                    for j in 0..k {
                        let (mut e, mut m) = (0.5f64, 0.5f64);
                        for n in 0..out {
                            let p = dy[r * out + n] as f64 * round(wf[n * k + j]).to_f64();
                            e += p;
                            m += p.abs();
                        }
                        let g = dx[r * k + j] as f64;
                        assert!(
                            (g - e).abs() <= out as f64 * f32::EPSILON as f64 * m,
                            "{} rows {rows} k {k} out {out} at ({r}, {j}): {g} vs {e}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
}
