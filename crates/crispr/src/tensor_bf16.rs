//! Products with bf16 weights (`--precision bf16`).
//!
//! Storage: a weight matrix `[out × in]` is kept packed ([`PackedBf16`]) in panels of
//! [`PANEL`] rows, the layout the AVX-512 microkernels read straight into registers (no
//! per-call packing: a decoder's 4-row products would pay for it on every token).
//!
//! Forward: `y = bf16(x) · Wᵀ` with the activations rounded to bf16 (nearest, ties to even) and
//! every sum accumulated in f32 — on x86-64 with AVX-512 by register-blocked microkernels that
//! read the panels directly (f32 FMA on weights widened in registers by default, or
//! `vdpbf16ps`: see [`best_kernel`]), elsewhere by widening panels of the weight to f32 (exact)
//! and running the f32 GEMM on the rounded activations. All compute the same exact products (a
//! product of two bf16 values is exact in f32); they differ only in the order of the f32
//! additions (and in that `vdpbf16ps` treats subnormal inputs as zero).
//!
//! Backward (`dx += dy · W`, the input gradient attribution needs): `dy` stays f32 and the weight
//! is widened exactly (in registers on AVX-512, block by block elsewhere), so the only rounding
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
    /// Weights widened to f32 block by block in memory, then the f32 GEMM: any CPU.
    Widen,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Fma => "avx512-fma",
            Kernel::Avx512Bf16 => "avx512-dpbf16",
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
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Fma | Kernel::Avx512Bf16 => false,
        }
    }
}

/// The kernel bf16 products run on (chosen once): AVX-512 FMA where the CPU has AVX-512,
/// else the portable one. `CRISPR_BF16_KERNEL=fma|dpbf16|widen` picks one, to compare them on
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
            _ => None,
        };
        match forced.filter(|k| k.available()) {
            Some(k) => k,
            None if Kernel::Avx512Fma.available() => Kernel::Avx512Fma,
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
    match kernel {
        Kernel::Widen => linear_widen(x, rows, w),
        Kernel::Avx512Fma | Kernel::Avx512Bf16 => {
            assert!(kernel.available(), "this CPU cannot run {}", kernel.name());
            #[cfg(target_arch = "x86_64")]
            {
                avx512::linear(kernel == Kernel::Avx512Fma, x, rows, w)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!()
        }
    }
}

fn linear_widen(x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    let (out_dim, in_dim) = (w.out_dim, w.in_dim);
    let xr = round_slice(x);
    let mut y = vec![0f32; rows * out_dim];
    let block = widen_block_rows(in_dim, out_dim);
    let mut wide = vec![0f32; block * in_dim];
    let mut n0 = 0;
    while n0 < out_dim {
        let nb = block.min(out_dim - n0);
        let wb = &mut wide[..nb * in_dim];
        w.widen_rows(n0, nb, wb);
        // The f32 engine's product, with its few-rows path (a candidate's tokens).
        let yb = crate::tensor::linear(&xr, rows, wb, None, nb);
        for (dst, src) in y.chunks_exact_mut(out_dim).zip(yb.chunks_exact(nb)) {
            dst[n0..n0 + nb].copy_from_slice(src);
        }
        n0 += nb;
    }
    y
}

/// `dx += dy · w`; `dy` is not rounded. Both AVX-512 kernels run it by FMA (there is no
/// bf16 product to use: `dy` stays f32), the portable one by the f32 GEMM.
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
    if kernel != Kernel::Widen {
        #[cfg(target_arch = "x86_64")]
        return avx512::backward(dx, dy, rows, w);
    }
    let block = widen_block_rows(in_dim, out_dim);
    let mut wide = vec![0f32; block * in_dim];
    let mut n0 = 0;
    while n0 < out_dim {
        let nb = block.min(out_dim - n0);
        let wb = &mut wide[..nb * in_dim];
        w.widen_rows(n0, nb, wb);
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
    //! Both x86 kernels share the blocking and differ in the register tile: `fma` widens each
    //! loaded weight vector into the even and odd inputs' f32 weights (a shift and a mask) and
    //! multiplies them with broadcast f32 activations; `dpbf16` multiplies the bf16 pairs with a
    //! broadcast bf16 pair in one `vdpbf16ps`.

    use std::arch::x86_64::*;

    use half::bf16;
    use rayon::prelude::*;

    use super::{PackedBf16, PANEL};

    /// Activation rows of one register tile: 12 rows × 2 vectors = 24 accumulators, plus the
    /// weight vectors (two bf16, or four widened) and a broadcast, within the 32 registers.
    const MR: usize = 12;
    /// Activation rows per parallel task (a multiple of MR), kept in L2 while the task runs.
    const ROW_BLOCK: usize = 16 * MR;
    /// Input pairs per pass over a row block: the panel's slice is 16 KiB and stays in L1
    /// while every register tile of the block reads it.
    const PAIRS_BLOCK: usize = 128;

    /// Runs `$call` with the const `$r` = the register tile's row count for `$left` rows left
    /// (MR, or the remainder), so that every tile height is its own unrolled function.
    macro_rules! tile_rows {
        ($left:expr, |$r:ident| $call:expr) => {
            match $left {
                m if m >= MR => {
                    const $r: usize = MR;
                    $call
                }
                11 => {
                    const $r: usize = 11;
                    $call
                }
                10 => {
                    const $r: usize = 10;
                    $call
                }
                9 => {
                    const $r: usize = 9;
                    $call
                }
                8 => {
                    const $r: usize = 8;
                    $call
                }
                7 => {
                    const $r: usize = 7;
                    $call
                }
                6 => {
                    const $r: usize = 6;
                    $call
                }
                5 => {
                    const $r: usize = 5;
                    $call
                }
                4 => {
                    const $r: usize = 4;
                    $call
                }
                3 => {
                    const $r: usize = 3;
                    $call
                }
                2 => {
                    const $r: usize = 2;
                    $call
                }
                _ => {
                    const $r: usize = 1;
                    $call
                }
            }
        };
    }

    /// The output, written by tasks that own disjoint rectangles of it.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: every task writes a rectangle no other task touches (see `linear`).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    /// `bf16(x) · wᵀ`, by FMA (`fma`) or by `vdpbf16ps`. The caller checked the CPU.
    pub fn linear(fma: bool, x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
        let (out_dim, k) = (w.out_dim, w.in_dim);
        let pairs = w.pairs();
        // FMA reads the rounded activations as f32 (two words a pair), `vdpbf16ps` as bf16
        // pairs (one word).
        let (xw, ldx) = if fma { (rounded_words(x, rows, k), 2 * pairs) } else { (pair_words(x, rows, k), pairs) };
        // Not zeroed: the tiles write every element once (the first block of pairs stores,
        // later ones add), and the length is set after they have.
        let mut y: Vec<f32> = Vec::with_capacity(rows * out_dim);
        let out = Out(y.as_mut_ptr());
        let panels = out_dim.div_ceil(PANEL);
        let row_blocks = rows.div_ceil(ROW_BLOCK);
        let panel_len = w.panel_len();
        let data = w.data();
        // Row block outer: the tasks one thread runs in a row share their activations.
        let task = |t: usize| {
            let (b, p) = (t / panels, t % panels);
            let (r0, r1) = (b * ROW_BLOCK, ((b + 1) * ROW_BLOCK).min(rows));
            let cols = PANEL.min(out_dim - p * PANEL);
            let panel = &data[p * panel_len..(p + 1) * panel_len];
            let y = out;
            // SAFETY: the CPU features were detected (`linear_with` asserts it); the task
            // writes rows r0..r1 × columns p·32 .. p·32 + cols of `y`, which no other task
            // writes, and `y` outlives the loop.
            unsafe {
                let y = y.0.add(p * PANEL);
                if fma {
                    panel_rows::<true>(&xw, ldx, pairs, r0, r1, panel, y, out_dim, cols)
                } else {
                    panel_rows::<false>(&xw, ldx, pairs, r0, r1, panel, y, out_dim, cols)
                }
            }
        };
        let tasks = panels * row_blocks;
        if rows * out_dim * k >= super::PARALLEL_THRESHOLD {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        // SAFETY: the tasks covered every (row block, panel) and so wrote all rows × out_dim
        // values (k > 0: `linear_with` returns zeros before reaching here otherwise).
        unsafe { y.set_len(rows * out_dim) };
        y
    }

    /// `round_bits(v)`: the bits of `v` rounded to bf16 (nearest, ties to even) as an f32 —
    /// the same value as `half`'s rounding, written without branches so that it vectorises.
    #[inline(always)]
    pub(super) fn round_bits(v: f32) -> u32 {
        let b = v.to_bits();
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
        // NaN stays a (quiet) NaN instead of rounding into infinity.
        if v.is_nan() {
            (b | 0x0040_0000) & 0xffff_0000
        } else {
            rounded
        }
    }

    /// The activations rounded to bf16, as f32 bits, each row padded to an even width.
    fn rounded_words(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
        let ld = 2 * k.div_ceil(2);
        let mut xw = vec![0u32; rows * ld];
        let work = |(src, dst): (&[f32], &mut [u32])| {
            // SAFETY: AVX-512 F was detected (`linear_with` asserts it).
            unsafe { round_row_f32(src, dst) }
        };
        if rows * k >= 1 << 16 {
            x.par_chunks(k).zip(xw.par_chunks_mut(ld)).for_each(work);
        } else {
            x.chunks(k).zip(xw.chunks_mut(ld)).for_each(work);
        }
        xw
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn round_row_f32(src: &[f32], dst: &mut [u32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = round_bits(v);
        }
    }

    /// The activations rounded to bf16, each row as pairs in 32-bit words (element 2q in the
    /// low half), an odd width padded with a zero.
    fn pair_words(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
        let pairs = k.div_ceil(2);
        let mut xw = vec![0u32; rows * pairs];
        let work = |(src, dst): (&[f32], &mut [u32])| {
            // SAFETY: AVX-512 F was detected (`linear_with` asserts it).
            unsafe { round_row_pairs(src, dst) }
        };
        if rows * k >= 1 << 16 {
            x.par_chunks(k).zip(xw.par_chunks_mut(pairs)).for_each(work);
        } else {
            x.chunks(k).zip(xw.chunks_mut(pairs)).for_each(work);
        }
        xw
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn round_row_pairs(src: &[f32], dst: &mut [u32]) {
        for (d, p) in dst.iter_mut().zip(src.chunks(2)) {
            let hi = p.get(1).map_or(0, |&v| round_bits(v));
            *d = (round_bits(p[0]) >> 16) | hi;
        }
    }

    /// Rows `r0 .. r1` of the product with one panel: PAIRS_BLOCK input pairs at a time, and
    /// within those MR rows at a time.
    ///
    /// # Safety
    /// The CPU runs the tile (AVX-512 F and BW, and BF16 unless `FMA`); `x` has at least `r1`
    /// rows of stride `ldx`; `y` points at column 0 of the panel in a row-major output of
    /// stride `ldy` with at least `r1` rows, `cols <= 32` of which belong to the panel.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn panel_rows<const FMA: bool>(
        x: &[u32],
        ldx: usize,
        pairs: usize,
        r0: usize,
        r1: usize,
        panel: &[bf16],
        y: *mut f32,
        ldy: usize,
        cols: usize,
    ) {
        let words = if FMA { 2 } else { 1 };
        let mut q0 = 0;
        while q0 < pairs {
            let q1 = (q0 + PAIRS_BLOCK).min(pairs);
            let slice = &panel[q0 * 2 * PANEL..q1 * 2 * PANEL];
            let mut r = r0;
            while r < r1 {
                let t = Tile {
                    x: &x[r * ldx + words * q0..],
                    ldx,
                    pairs: q1 - q0,
                    panel: slice,
                    // SAFETY: row r < r1 of the output.
                    y: unsafe { y.add(r * ldy) },
                    ldy,
                    cols,
                    more: q0 > 0,
                };
                // SAFETY: as this function's contract, for rows r .. r + m <= r1.
                tile_rows!(r1 - r, |R| unsafe { tile::<R, FMA>(t) });
                r += MR.min(r1 - r);
            }
            q0 = q1;
        }
    }

    /// A register tile's operands.
    struct Tile<'a> {
        /// Activation rows, starting at the block's first pair.
        x: &'a [u32],
        ldx: usize,
        /// Pairs in the block.
        pairs: usize,
        /// The panel's slice for those pairs.
        panel: &'a [bf16],
        /// The tile's first output row, column 0 of the panel.
        y: *mut f32,
        ldy: usize,
        /// Columns of the panel that exist.
        cols: usize,
        /// Add to the output (a later block of pairs) instead of overwriting it.
        more: bool,
    }

    /// `R` activation rows × the panel's 32 weight rows, over a block of pairs.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW (and BF16 unless `FMA`); `x` holds `R` rows of stride `ldx`
    /// with the block's pairs (2 words each with `FMA`, else 1); `panel` is the block's pairs of
    /// one panel; `y` has `R` rows of stride `ldy` with `cols` writable columns.
    #[inline(always)]
    unsafe fn tile<const R: usize, const FMA: bool>(t: Tile<'_>) {
        // SAFETY: the contract above.
        unsafe {
            if FMA {
                tile_fma::<R>(t)
            } else {
                tile_dpbf16::<R>(t)
            }
        }
    }

    fn masks(cols: usize) -> (__mmask16, __mmask16) {
        let m0 = if cols >= 16 { u16::MAX } else { (1u16 << cols) - 1 };
        let m1 = if cols >= 32 {
            u16::MAX
        } else if cols > 16 {
            (1u16 << (cols - 16)) - 1
        } else {
            0
        };
        (m0, m1)
    }

    /// The accumulators' start: zero, or the output so far.
    #[target_feature(enable = "avx512f")]
    unsafe fn start<const R: usize>(t: &Tile<'_>, m: (__mmask16, __mmask16)) -> [[__m512; 2]; R] {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if t.more {
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: row i of the tile, the masked-off lanes are not read.
                unsafe {
                    let row = t.y.add(i * t.ldy);
                    a[0] = _mm512_maskz_loadu_ps(m.0, row);
                    a[1] = _mm512_maskz_loadu_ps(m.1, row.add(16));
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn finish<const R: usize>(t: &Tile<'_>, m: (__mmask16, __mmask16), acc: &[[__m512; 2]; R]) {
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row i of the tile, the masked-off lanes are not written.
            unsafe {
                let row = t.y.add(i * t.ldy);
                _mm512_mask_storeu_ps(row, m.0, a[0]);
                _mm512_mask_storeu_ps(row.add(16), m.1, a[1]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile_fma<const R: usize>(t: Tile<'_>) {
        debug_assert!(t.x.len() >= (R - 1) * t.ldx + 2 * t.pairs && t.panel.len() == t.pairs * 2 * PANEL);
        let m = masks(t.cols);
        // SAFETY: the caller's contract.
        let mut acc = unsafe { start::<R>(&t, m) };
        let b = t.panel.as_ptr().cast::<__m512i>();
        let xs = t.x.as_ptr().cast::<f32>();
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        for q in 0..t.pairs {
            // SAFETY: pair q of the panel is vectors 2q and 2q + 1 (64-byte aligned: panels
            // and pairs are whole cache lines); x[i·ldx + 2q + 1] is in bounds.
            unsafe {
                let v0 = _mm512_load_si512(b.add(2 * q));
                let v1 = _mm512_load_si512(b.add(2 * q + 1));
                // Lane l holds w[l][2q] in its low half and w[l][2q + 1] in its high half: a
                // shift and a mask give each as an f32.
                let e0 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v0));
                let o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, high));
                let e1 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v1));
                let o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, high));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xe = _mm512_set1_ps(*xs.add(i * t.ldx + 2 * q));
                    let xo = _mm512_set1_ps(*xs.add(i * t.ldx + 2 * q + 1));
                    a[0] = _mm512_fmadd_ps(xe, e0, a[0]);
                    a[1] = _mm512_fmadd_ps(xe, e1, a[1]);
                    a[0] = _mm512_fmadd_ps(xo, o0, a[0]);
                    a[1] = _mm512_fmadd_ps(xo, o1, a[1]);
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { finish::<R>(&t, m, &acc) }
    }

    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 512-bit vectors.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_dpbf16<const R: usize>(t: Tile<'_>) {
        debug_assert!(t.x.len() >= (R - 1) * t.ldx + t.pairs && t.panel.len() == t.pairs * 2 * PANEL);
        let m = masks(t.cols);
        // SAFETY: the caller's contract.
        let mut acc = unsafe { start::<R>(&t, m) };
        let b = t.panel.as_ptr().cast::<__m512i>();
        let xs = t.x.as_ptr();
        for q in 0..t.pairs {
            // SAFETY: as in `tile_fma`, with one word per pair.
            unsafe {
                let b0 = bh(_mm512_load_si512(b.add(2 * q)));
                let b1 = bh(_mm512_load_si512(b.add(2 * q + 1)));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = bh(_mm512_set1_epi32(*xs.add(i * t.ldx + q) as i32));
                    a[0] = _mm512_dpbf16_ps(a[0], xv, b0);
                    a[1] = _mm512_dpbf16_ps(a[1], xv, b1);
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { finish::<R>(&t, m, &acc) }
    }

    /// Input pairs per backward task: a 64-pair (128-column) slice of every panel, 8 KiB per
    /// panel, stays in L2 while every row tile of the task reads it.
    const BW_PAIRS: usize = 64;
    /// Backward register tile: 4 rows × 3 pairs, an even and an odd accumulator each (24),
    /// plus 4 gradient vectors and the widened weights, within the 32 registers.
    const BR: usize = 4;
    const BQ: usize = 3;

    /// `dx += dy · w` by FMA, straight from the packed panels (no widened copy of `w`): a lane
    /// of a tile's accumulator sums one output unit of each panel, `dy` is loaded 16 units at
    /// a time, and the 16 lanes are added at the end. `dy` is not rounded.
    pub fn backward(dx: &mut [f32], dy: &[f32], rows: usize, w: &PackedBf16) {
        let (out_dim, k) = (w.out_dim, w.in_dim);
        let pairs = w.pairs();
        let blocks = pairs.div_ceil(BW_PAIRS);
        let out = Out(dx.as_mut_ptr());
        let data = w.data();
        let panel_len = w.panel_len();
        let task = |b: usize| {
            let (q0, q1) = (b * BW_PAIRS, ((b + 1) * BW_PAIRS).min(pairs));
            let dx = out;
            let mut r = 0;
            while r < rows {
                let br = BR.min(rows - r);
                let mut q = q0;
                while q < q1 {
                    let bq = BQ.min(q1 - q);
                    let t = BwTile { dy: &dy[r * out_dim..], out_dim, panels: data, panel_len, q, dx: dx.0, r, k };
                    // SAFETY: AVX-512 F and BW were detected (`backward_with` asserts it); the
                    // task adds to columns 2·q0 .. 2·q1 (within k) of `dx`, which no other
                    // task touches, and `dx` outlives the loop.
                    unsafe {
                        match (br, bq) {
                            (4, 3) => bw_tile::<4, 3>(t),
                            (4, 2) => bw_tile::<4, 2>(t),
                            (4, _) => bw_tile::<4, 1>(t),
                            (3, 3) => bw_tile::<3, 3>(t),
                            (3, 2) => bw_tile::<3, 2>(t),
                            (3, _) => bw_tile::<3, 1>(t),
                            (2, 3) => bw_tile::<2, 3>(t),
                            (2, 2) => bw_tile::<2, 2>(t),
                            (2, _) => bw_tile::<2, 1>(t),
                            (_, 3) => bw_tile::<1, 3>(t),
                            (_, 2) => bw_tile::<1, 2>(t),
                            _ => bw_tile::<1, 1>(t),
                        }
                    }
                    q += bq;
                }
                r += br;
            }
        };
        if rows * out_dim * k >= super::PARALLEL_THRESHOLD {
            (0..blocks).into_par_iter().for_each(task);
        } else {
            (0..blocks).for_each(task);
        }
    }

    /// A backward register tile's operands.
    #[derive(Clone, Copy)]
    struct BwTile<'a> {
        /// `dy` from the tile's first row, and its row stride (the output units).
        dy: &'a [f32],
        out_dim: usize,
        /// Every panel of `w`, and the length of one.
        panels: &'a [bf16],
        panel_len: usize,
        /// The tile's first pair.
        q: usize,
        /// `dx` (row 0, column 0), the tile's first row, and the row stride (`w`'s width).
        dx: *mut f32,
        r: usize,
        k: usize,
    }

    /// `dx[r .. r + R][2q .. 2q + 2Q] += dy[r .. r + R] · w[..][2q .. 2q + 2Q]`.
    ///
    /// # Safety
    /// AVX-512 F and BW; `dy` has `R` rows of `out_dim` values; pairs `q .. q + Q` exist in
    /// every panel; `dx` has rows `r .. r + R` of `k` values.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn bw_tile<const R: usize, const Q: usize>(t: BwTile<'_>) {
        debug_assert!(t.dy.len() >= (R - 1) * t.out_dim + t.out_dim);
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut even = [[_mm512_setzero_ps(); Q]; R];
        let mut odd = [[_mm512_setzero_ps(); Q]; R];
        let dy = t.dy.as_ptr();
        let mut n0 = 0;
        while n0 < t.out_dim {
            // SAFETY: the panel holding unit n0.
            let panel = unsafe { t.panels.as_ptr().add(n0 / PANEL * t.panel_len) }.cast::<__m512i>();
            let (m0, m1) = masks(t.out_dim - n0);
            for (h, m) in [(0, m0), (1, m1)] {
                if m == 0 {
                    continue;
                }
                let mut g = [_mm512_setzero_ps(); R];
                for (i, gi) in g.iter_mut().enumerate() {
                    // SAFETY: units n0 + 16h .. of row i, those past out_dim masked off.
                    *gi = unsafe { _mm512_maskz_loadu_ps(m, dy.add(i * t.out_dim + n0 + 16 * h)) };
                }
                for j in 0..Q {
                    // SAFETY: half h of pair q + j of this panel (whole, aligned lines).
                    let v = unsafe { _mm512_load_si512(panel.add(2 * (t.q + j) + h)) };
                    let e = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    let o = _mm512_castsi512_ps(_mm512_and_si512(v, high));
                    for i in 0..R {
                        even[i][j] = _mm512_fmadd_ps(g[i], e, even[i][j]);
                        odd[i][j] = _mm512_fmadd_ps(g[i], o, odd[i][j]);
                    }
                }
            }
            n0 += PANEL;
        }
        for i in 0..R {
            for j in 0..Q {
                let c = 2 * (t.q + j);
                // SAFETY: row r + i of `dx`, columns c and c + 1 when they exist (an odd width's
                // padded last column has no place in `dx`).
                unsafe {
                    let row = t.dx.add((t.r + i) * t.k);
                    *row.add(c) += _mm512_reduce_add_ps(even[i][j]);
                    if c + 1 < t.k {
                        *row.add(c + 1) += _mm512_reduce_add_ps(odd[i][j]);
                    }
                }
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

    /// The kernels this test run must cover: every kernel, unless the environment says the CPU
    /// lacks the AVX-512 ones (`.ci/run` sets `CRISPR_NO_AVX512BF16` from `/proc/cpuinfo` and
    /// prints that it did). A CPU without them fails here instead of passing untested.
    fn kernels_under_test() -> Vec<Kernel> {
        let all = [Kernel::Avx512Fma, Kernel::Avx512Bf16, Kernel::Widen];
        if std::env::var_os("CRISPR_NO_AVX512BF16").is_some() {
            return all.into_iter().filter(|k| !k.name().starts_with("avx512")).collect();
        }
        for k in all {
            assert!(
                k.available(),
                "this CPU cannot run the {} kernel; set CRISPR_NO_AVX512BF16=1 to test the others only",
                k.name()
            );
        }
        all.to_vec()
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
            assert_eq!(avx512::round_bits(v), round(v).to_f32().to_bits(), "{v:e}");
        }
        let nan = f32::from_bits(avx512::round_bits(f32::NAN));
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
