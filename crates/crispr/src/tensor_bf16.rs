//! Products with bf16 weights (`--precision bf16`).
//!
//! Forward: `y = bf16(x) · Wᵀ` with the activations rounded to bf16 (nearest, ties to even) and
//! every sum accumulated in f32 — on CPUs with AVX-512 BF16 by `vdpbf16ps` (two bf16 products
//! per f32 lane and instruction, half the bytes per weight), elsewhere by widening blocks of the
//! weight to f32 (exact) and running the f32 GEMM on the rounded activations. Both compute the
//! same exact products; they differ only in the order of the f32 additions.
//!
//! Backward (`dx += dy · W`, the input gradient attribution needs): `dy` stays f32 and the weight
//! is widened exactly, so the only rounding beyond f32 arithmetic is the weights' own.

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use crate::tensor::{matmul, Mat, MatMut};

/// Which implementation of the bf16 forward product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` (x86-64 with AVX-512 BF16, F and BW).
    Avx512Bf16,
    /// Weights widened to f32 block by block, then the f32 GEMM: any CPU.
    Widen,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512-bf16",
            Kernel::Widen => "widened-f32",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Widen => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512bf16")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 => false,
        }
    }
}

/// The fastest kernel this CPU has (detected once). `CRISPR_BF16_KERNEL=widen` forces the
/// portable one, to compare the two on one machine.
pub fn best_kernel() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    *BEST.get_or_init(|| {
        let forced = std::env::var("CRISPR_BF16_KERNEL").is_ok_and(|v| v == "widen");
        if !forced && Kernel::Avx512Bf16.available() {
            Kernel::Avx512Bf16
        } else {
            Kernel::Widen
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

/// Weight rows widened per block in the portable kernel and the backward product: at most this
/// many bytes of f32 at a time, so the widened block stays in cache while the GEMM reads it.
const WIDEN_BLOCK_BYTES: usize = 2 << 20;

fn widen_rows(in_dim: usize, out_dim: usize) -> usize {
    (WIDEN_BLOCK_BYTES / (4 * in_dim.max(1))).clamp(16, out_dim.max(16))
}

/// Widen `w` (exact) into `dst`, in parallel for large blocks.
fn widen_into(dst: &mut [f32], w: &[bf16]) {
    const CHUNK: usize = 1 << 14;
    let work = |(d, s): (&mut [f32], &[bf16])| {
        for (a, b) in d.iter_mut().zip(s) {
            *a = b.to_f32();
        }
    };
    if w.len() >= 4 * CHUNK {
        dst.par_chunks_mut(CHUNK).zip(w.par_chunks(CHUNK)).for_each(work);
    } else {
        work((dst, w));
    }
}

/// `y[t] = bf16(x[t]) · wᵀ` for a row-major `w` of shape `out × in`, on the best kernel.
pub fn linear(x: &[f32], rows: usize, w: &[bf16], out_dim: usize) -> Vec<f32> {
    linear_with(best_kernel(), x, rows, w, out_dim)
}

/// [`linear`] on a chosen kernel; panics if the CPU lacks it (a programming error: check
/// [`Kernel::available`]).
pub fn linear_with(kernel: Kernel, x: &[f32], rows: usize, w: &[bf16], out_dim: usize) -> Vec<f32> {
    assert!(out_dim > 0 && w.len().is_multiple_of(out_dim), "weight is out × in");
    let in_dim = w.len() / out_dim;
    assert_eq!(x.len(), rows * in_dim, "input is rows × in");
    match kernel {
        Kernel::Widen => linear_widen(x, rows, w, out_dim, in_dim),
        Kernel::Avx512Bf16 => {
            assert!(Kernel::Avx512Bf16.available(), "this CPU has no AVX-512 BF16");
            #[cfg(target_arch = "x86_64")]
            {
                avx512::linear(x, rows, w, out_dim, in_dim)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!()
        }
    }
}

fn linear_widen(x: &[f32], rows: usize, w: &[bf16], out_dim: usize, in_dim: usize) -> Vec<f32> {
    let xr = round_slice(x);
    let mut y = vec![0f32; rows * out_dim];
    if rows == 0 || in_dim == 0 {
        return y;
    }
    let block = widen_rows(in_dim, out_dim);
    let mut wide = vec![0f32; block * in_dim];
    let mut n0 = 0;
    while n0 < out_dim {
        let nb = block.min(out_dim - n0);
        let wb = &mut wide[..nb * in_dim];
        widen_into(wb, &w[n0 * in_dim..(n0 + nb) * in_dim]);
        matmul(
            MatMut::strided(&mut y, n0, rows, nb, out_dim),
            Mat::rows(&xr, rows, in_dim),
            Mat::rows_t(wb, nb, in_dim),
            1.0,
            false,
        );
        n0 += nb;
    }
    y
}

/// `dx += dy · w` for a row-major `w` of shape `out × in`; `dy` is not rounded.
pub fn backward_into(dx: &mut [f32], dy: &[f32], rows: usize, w: &[bf16], out_dim: usize) {
    assert!(out_dim > 0 && w.len().is_multiple_of(out_dim), "weight is out × in");
    let in_dim = w.len() / out_dim;
    assert_eq!(dy.len(), rows * out_dim, "gradient is rows × out");
    assert_eq!(dx.len(), rows * in_dim, "input gradient is rows × in");
    if rows == 0 || in_dim == 0 {
        return;
    }
    let block = widen_rows(in_dim, out_dim);
    let mut wide = vec![0f32; block * in_dim];
    let mut n0 = 0;
    while n0 < out_dim {
        let nb = block.min(out_dim - n0);
        let wb = &mut wide[..nb * in_dim];
        widen_into(wb, &w[n0 * in_dim..(n0 + nb) * in_dim]);
        matmul(
            MatMut::rows(dx, rows, in_dim),
            Mat::strided(dy, n0, rows, nb, out_dim, 1),
            Mat::rows(wb, nb, in_dim),
            1.0,
            true,
        );
        n0 += nb;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::bf16;
    use rayon::prelude::*;

    /// Weight rows per parallel task: 64 rows of 4,096 bf16 are 512 KiB, within a Zen 4 L2.
    const CHUNK: usize = 64;
    /// Activation rows and weight rows of one register tile (16 accumulators).
    const TR: usize = 4;
    const TC: usize = 4;

    pub fn linear(x: &[f32], rows: usize, w: &[bf16], out_dim: usize, k: usize) -> Vec<f32> {
        let xb: Vec<u16> = x.iter().map(|&v| super::round(v).to_bits()).collect();
        // SAFETY: bf16 is a transparent u16.
        let wb: &[u16] = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()) };
        // Computed transposed (`[out × rows]`) so that every task owns a contiguous slice.
        let mut yt = vec![0f32; out_dim * rows];
        if rows == 0 || k == 0 {
            return yt;
        }
        let work = |(yc, wc): (&mut [f32], &[u16])| {
            // SAFETY: only reached after AVX-512 BF16, F and BW were detected at run time
            // (`linear_with` asserts it).
            unsafe { chunk(&xb, rows, k, wc, yc) }
        };
        if out_dim * k * rows >= super::PARALLEL_THRESHOLD {
            yt.par_chunks_mut(CHUNK * rows).zip(wb.par_chunks(CHUNK * k)).for_each(work);
        } else {
            yt.chunks_mut(CHUNK * rows).zip(wb.chunks(CHUNK * k)).for_each(work);
        }
        let mut y = vec![0f32; rows * out_dim];
        for (n, col) in yt.chunks_exact(rows).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                y[r * out_dim + n] = v;
            }
        }
        y
    }

    /// `yt[n·rows + r] = x[r] · w[n]` for every row `n` of the chunk `w`, tile by tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn chunk(x: &[u16], rows: usize, k: usize, w: &[u16], yt: &mut [f32]) {
        let n_rows = w.len() / k;
        let mut r = 0;
        while r < rows {
            let tr = TR.min(rows - r);
            let mut n = 0;
            while n < n_rows {
                let tc = TC.min(n_rows - n);
                // SAFETY: r + tr <= rows and n + tc <= n_rows, the bounds `tile` relies on.
                unsafe {
                    match (tr, tc) {
                        (TR, TC) => tile::<TR, TC>(x, r, k, w, n, rows, yt),
                        (TR, _) => {
                            for c in 0..tc {
                                tile::<TR, 1>(x, r, k, w, n + c, rows, yt)
                            }
                        }
                        (_, TC) => {
                            for i in 0..tr {
                                tile::<1, TC>(x, r + i, k, w, n, rows, yt)
                            }
                        }
                        _ => {
                            for i in 0..tr {
                                for c in 0..tc {
                                    tile::<1, 1>(x, r + i, k, w, n + c, rows, yt)
                                }
                            }
                        }
                    }
                }
                n += tc;
            }
            r += tr;
        }
    }

    /// The 32 bf16 lanes of a 512-bit integer vector.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Dot products of activation rows `r0..r0+R` with weight rows `n0..n0+C`, 32 bf16 at a time
    /// (the tail by a masked load), written to `yt`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16; `r0 + R <= x.len() / k` and `n0 + C <= w.len() / k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const C: usize>(
        x: &[u16],
        r0: usize,
        k: usize,
        w: &[u16],
        n0: usize,
        rows: usize,
        yt: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = k / 32 * 32;
        let mut j = 0;
        while j < k {
            // The last, partial step loads its lanes under a mask (the rest read as zero).
            let mask: __mmask32 = if j < full { u32::MAX } else { (1u32 << (k - full)) - 1 };
            let mut wv = [_mm512_setzero_si512(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                // SAFETY: lanes j..j+32 of row n0 + c, those past its end masked off.
                *v = unsafe { _mm512_maskz_loadu_epi16(mask, w.as_ptr().add((n0 + c) * k + j).cast()) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: as above, row r0 + i of x.
                let xv = unsafe { _mm512_maskz_loadu_epi16(mask, x.as_ptr().add((r0 + i) * k + j).cast()) };
                let xv: __m512bh = bh(xv);
                for (a, &v) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, xv, bh(v));
                }
            }
            j += 32;
        }
        for (i, row) in acc.iter().enumerate() {
            for (c, &a) in row.iter().enumerate() {
                yt[(n0 + c) * rows + r0 + i] = _mm512_reduce_add_ps(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 0.7311).sin() * (1.0 + (i % 7) as f32)).collect()
    }

    /// The exact value of `bf16(x) · wᵀ` in f64, and the sum of |products| (for the error bound).
    fn reference(x: &[f32], rows: usize, w: &[bf16], out: usize) -> (Vec<f64>, Vec<f64>) {
        let k = w.len() / out;
        let mut y = vec![0f64; rows * out];
        let mut mag = vec![0f64; rows * out];
        for r in 0..rows {
            for n in 0..out {
                for j in 0..k {
                    let p = round(x[r * k + j]).to_f64() * w[n * k + j].to_f64();
                    y[r * out + n] += p;
                    mag[r * out + n] += p.abs();
                }
            }
        }
        (y, mag)
    }

    #[test]
    fn both_kernels_match_an_f64_reference() {
        assert!(
            Kernel::Avx512Bf16.available() || std::env::var_os("CRISPR_NO_AVX512BF16").is_some(),
            "this CPU lacks AVX-512 BF16; set CRISPR_NO_AVX512BF16=1 to test the portable kernel only"
        );
        let kernels: Vec<Kernel> = [Kernel::Avx512Bf16, Kernel::Widen].into_iter().filter(|k| k.available()).collect();
        // Odd shapes: tails after 32-wide steps, partial 4×4 tiles, a last chunk shorter than 64.
        for (rows, k, out) in [(1, 31, 3), (3, 64, 70), (5, 100, 131), (9, 768, 67), (130, 33, 65)] {
            let x = data(rows * k, 1.0);
            let w: Vec<bf16> = data(out * k, 2.0).into_iter().map(round).collect();
            let (want, mag) = reference(&x, rows, &w, out);
            for &kernel in &kernels {
                let got = linear_with(kernel, &x, rows, &w, out);
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
        // 1 + 2⁻¹⁰ is not a bf16: it rounds to 1, so the product with 1 is exactly 1.
        let x = vec![1.0 + 2f32.powi(-10); 40];
        let w = vec![bf16::ONE; 40];
        for kernel in [Kernel::Avx512Bf16, Kernel::Widen].into_iter().filter(|k| k.available()) {
            assert_eq!(linear_with(kernel, &x, 1, &w, 1), vec![40.0], "{}", kernel.name());
        }
    }

    #[test]
    fn backward_matches_an_f64_reference() {
        for (rows, k, out) in [(1, 31, 3), (4, 100, 131), (7, 64, 5000)] {
            let dy = data(rows * out, 3.0);
            let w: Vec<bf16> = data(out * k, 4.0).into_iter().map(round).collect();
            let mut dx = vec![0.5f32; rows * k];
            backward_into(&mut dx, &dy, rows, &w, out);
            for r in 0..rows {
                for j in 0..k {
                    let (mut e, mut m) = (0.5f64, 0.5f64);
                    for n in 0..out {
                        let p = dy[r * out + n] as f64 * w[n * k + j].to_f64();
                        e += p;
                        m += p.abs();
                    }
                    let g = dx[r * k + j] as f64;
                    assert!((g - e).abs() <= out as f64 * f32::EPSILON as f64 * m, "rows {rows} k {k} out {out}");
                }
            }
        }
    }
}
