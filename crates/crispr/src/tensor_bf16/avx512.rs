//! Both AVX-512 kernels share the blocking (`x86`) and differ in the register tile: `fma` widens each
//! loaded weight vector into the even and odd inputs' f32 weights (a shift and a mask) and
//! multiplies them with broadcast f32 activations; `dpbf16` multiplies the bf16 pairs with a
//! broadcast bf16 pair in one `vdpbf16ps`.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::x86::{self, round_bits, tile_rows, BwTile, Out, PanelRows, Tile};
use super::{PackedBf16, PANEL};

/// Activation rows of one register tile: 12 rows × 2 vectors = 24 accumulators, plus the
/// weight vectors (two bf16, or four widened) and a broadcast, within the 32 registers.
const MR: usize = 12;
/// Activation rows per parallel task (a multiple of MR), kept in L2 while the task runs.
const ROW_BLOCK: usize = 16 * MR;
/// Input pairs per pass over a row block: the panel's slice is 16 KiB and stays in L1
/// while every register tile of the block reads it.
const PAIRS_BLOCK: usize = 128;

/// `bf16(x) · wᵀ`, by FMA (`fma`) or by `vdpbf16ps`. The caller checked the CPU.
pub fn linear(fma: bool, x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    let (out_dim, k) = (w.out_dim, w.in_dim);
    let pairs = w.pairs();
    // FMA reads the rounded activations as f32 (two words a pair), `vdpbf16ps` as bf16
    // pairs (one word).
    let (xw, ldx) = if fma {
        // SAFETY: AVX-512 F was detected (`linear_with` asserts it).
        (unsafe { x86::rounded_words(x, rows, k, round_row_f32) }, 2 * pairs)
    } else {
        (pair_words(x, rows, k), pairs)
    };
    let panel_len = w.panel_len();
    let data = w.data();
    let task = |r0: usize, r1: usize, p: usize, y: Out| {
        let cols = PANEL.min(out_dim - p * PANEL);
        let panel = &data[p * panel_len..(p + 1) * panel_len];
        let x = PanelRows { x: &xw, ldx, words: if fma { 2 } else { 1 }, pairs, r0, r1 };
        x86::panel_tiles(x, PAIRS_BLOCK, panel, y.0, out_dim, cols, |t, left| {
            // SAFETY: the CPU features were detected (`linear_with` asserts it); the tile
            // covers `R <= left` rows of the block, the panel's slice and `cols` columns.
            match fma {
                true => tile_rows!(left, MR, |R| unsafe { tile_fma::<R>(t) }, [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]),
                false => tile_rows!(left, MR, |R| unsafe { tile_dpbf16::<R>(t) }, [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]),
            }
            MR.min(left)
        });
    };
    // SAFETY: `task` writes exactly its rectangle (the first block of pairs stores, later ones
    // add; k > 0, as `linear_with` returns zeros before reaching here otherwise).
    unsafe { x86::forward_tasks(w, rows, ROW_BLOCK, task) }
}

/// One row of [`x86::rounded_words`].
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
    x86::backward_tiles(dx, dy, rows, w, (BW_PAIRS, BR, BQ), |t, br, bq| {
        // SAFETY: AVX-512 F and BW were detected (`backward_with` asserts it); the tile is
        // within `dy`, the panels and the task's columns of `dx`.
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
    });
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
