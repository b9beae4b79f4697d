//! The bf16 kernels for x86-64 CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 2/3, Intel
//! before Ice Lake, most laptops): the same packed panels and blocking as `avx512`, with
//! 256-bit register tiles. A pair of a panel is four 256-bit vectors (8 output units each); a
//! forward tile covers half a panel (16 units) so that its accumulators, the raw and widened
//! weight vectors, a broadcast and the mask fit the 16 registers.

use std::arch::x86_64::*;

use super::x86::{self, round_bits, tile_rows, BwTile, Out, PanelRows, Tile};
use super::{PackedBf16, PANEL};

/// Activation rows of one register tile: 4 rows × 2 vectors = 8 accumulators, the fewest that
/// cover two FMA pipes' 4-cycle latency. (6 rows, the f32 GEMMs' usual 6 × 16, leaves no
/// register for the raw weights: the compiler spilled an accumulator and the tile ran at 48 % of
/// the FMA peak on a Zen 3; 4 and 5 rows run at ~75 %.)
const MR: usize = 4;
/// Activation rows per parallel task (a multiple of MR), kept in L2 while the task runs.
const ROW_BLOCK: usize = 32 * MR;
/// Input pairs per pass over a row block: the panel's slice (16 KiB) stays in L1.
const PAIRS_BLOCK: usize = 128;

/// `bf16(x) · wᵀ` by FMA on weights widened in registers. The caller checked the CPU.
pub fn linear(x: &[f32], rows: usize, w: &PackedBf16) -> Vec<f32> {
    let (out_dim, k) = (w.out_dim, w.in_dim);
    let pairs = w.pairs();
    // SAFETY: AVX2 was detected (`linear_with` asserts it).
    let xw = unsafe { x86::rounded_words(x, rows, k, round_row_f32) };
    let panel_len = w.panel_len();
    let data = w.data();
    let task = |r0: usize, r1: usize, p: usize, y: Out| {
        let cols = PANEL.min(out_dim - p * PANEL);
        let panel = &data[p * panel_len..(p + 1) * panel_len];
        let x = PanelRows { x: &xw, ldx: 2 * pairs, words: 2, pairs, r0, r1 };
        x86::panel_tiles(x, PAIRS_BLOCK, panel, y.0, out_dim, cols, |t, left| {
            for half in 0..2 {
                if t.cols > 16 * half {
                    // SAFETY: AVX2 and FMA were detected; the tile covers `R <= left` rows of
                    // the block, the panel's slice and the half's existing columns.
                    tile_rows!(left, MR, |R| unsafe { tile::<R>(t, half) }, [3, 2]);
                }
            }
            MR.min(left)
        });
    };
    // SAFETY: `task` writes exactly its rectangle (both halves of every existing column; the
    // first block of pairs stores, later ones add; k > 0, as `linear_with` returns zeros
    // before reaching here otherwise).
    unsafe { x86::forward_tasks(w, rows, ROW_BLOCK, task) }
}

/// One row of [`x86::rounded_words`].
#[target_feature(enable = "avx2")]
unsafe fn round_row_f32(src: &[f32], dst: &mut [u32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = round_bits(v);
    }
}

/// Lane masks for a vector of 8 whose first `n` lanes exist (all when `n >= 8`).
#[target_feature(enable = "avx2")]
fn lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// `R` activation rows × 16 weight rows (half `half` of the panel), over a block of pairs.
///
/// # Safety
/// AVX2 and FMA; `x` holds `R` rows of stride `ldx` with the block's pairs (2 words each);
/// `panel` is the block's pairs of one panel; `y` has `R` rows of stride `ldy` with `cols`
/// writable columns, more than `16 · half`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(t: Tile<'_>, half: usize) {
    debug_assert!(t.x.len() >= (R - 1) * t.ldx + 2 * t.pairs && t.panel.len() == t.pairs * 2 * PANEL);
    let cols = t.cols - 16 * half;
    let full = cols >= 16;
    let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(8)));
    // SAFETY (loads and stores of `y`): row i < R of the tile, columns 16·half + (0 .. 16),
    // only the existing ones when the half is partial.
    let y = t.y.wrapping_add(16 * half);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if t.more {
        for (i, a) in acc.iter_mut().enumerate() {
            let row = y.wrapping_add(i * t.ldy);
            // SAFETY: see above.
            unsafe {
                if full {
                    *a = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
                } else {
                    *a = [_mm256_maskload_ps(row, m0), _mm256_maskload_ps(row.add(8), m1)];
                }
            }
        }
    }
    // Pair q of the panel is vectors 4q .. 4q + 4 (32-byte aligned: panels and pairs are whole
    // cache lines); this half's are 4q + 2·half and the next.
    let b = t.panel.as_ptr().cast::<__m256i>().wrapping_add(2 * half);
    let xs = t.x.as_ptr().cast::<f32>();
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for q in 0..t.pairs {
        // SAFETY: pair q < t.pairs of the block's slice; x[i·ldx + 2q + 1] is in bounds.
        unsafe {
            let v0 = _mm256_load_si256(b.add(4 * q));
            let v1 = _mm256_load_si256(b.add(4 * q + 1));
            // Lane l holds w[l][2q] in its low half and w[l][2q + 1] in its high half: a shift
            // and a mask give each as an f32.
            let e0 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v0));
            let e1 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v1));
            for (i, a) in acc.iter_mut().enumerate() {
                let xe = _mm256_set1_ps(*xs.add(i * t.ldx + 2 * q));
                a[0] = _mm256_fmadd_ps(xe, e0, a[0]);
                a[1] = _mm256_fmadd_ps(xe, e1, a[1]);
            }
            let o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
            let o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
            for (i, a) in acc.iter_mut().enumerate() {
                let xo = _mm256_set1_ps(*xs.add(i * t.ldx + 2 * q + 1));
                a[0] = _mm256_fmadd_ps(xo, o0, a[0]);
                a[1] = _mm256_fmadd_ps(xo, o1, a[1]);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let row = y.wrapping_add(i * t.ldy);
        // SAFETY: see above.
        unsafe {
            if full {
                _mm256_storeu_ps(row, a[0]);
                _mm256_storeu_ps(row.add(8), a[1]);
            } else {
                _mm256_maskstore_ps(row, m0, a[0]);
                _mm256_maskstore_ps(row.add(8), m1, a[1]);
            }
        }
    }
}

/// Input pairs per backward task: a 64-pair slice of every panel (8 KiB each) stays in L2.
const BW_PAIRS: usize = 64;
/// Backward register tile: 2 rows × 3 pairs, an even and an odd accumulator each (12), plus
/// 2 gradient vectors, a widened weight and the mask, within the 16 registers.
const BR: usize = 2;
const BQ: usize = 3;

/// `dx += dy · w` by FMA, straight from the packed panels: a lane of a tile's accumulator sums
/// one output unit of each group of 8, and the 8 lanes are added at the end. `dy` is not
/// rounded.
pub fn backward(dx: &mut [f32], dy: &[f32], rows: usize, w: &PackedBf16) {
    x86::backward_tiles(dx, dy, rows, w, (BW_PAIRS, BR, BQ), |t, br, bq| {
        // SAFETY: AVX2 and FMA were detected (`backward_with` asserts it); the tile is within
        // `dy`, the panels and the task's columns of `dx`.
        unsafe {
            match (br, bq) {
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

/// The sum of the 8 lanes.
#[target_feature(enable = "avx2")]
fn reduce(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `dx[r .. r + R][2q .. 2q + 2Q] += dy[r .. r + R] · w[..][2q .. 2q + 2Q]`.
///
/// # Safety
/// AVX2 and FMA; `dy` has `R` rows of `out_dim` values; pairs `q .. q + Q` exist in every
/// panel; `dx` has rows `r .. r + R` of `k` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn bw_tile<const R: usize, const Q: usize>(t: BwTile<'_>) {
    debug_assert!(t.dy.len() >= R * t.out_dim);
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let mut even = [[_mm256_setzero_ps(); Q]; R];
    let mut odd = [[_mm256_setzero_ps(); Q]; R];
    let dy = t.dy.as_ptr();
    let mut n0 = 0;
    while n0 < t.out_dim {
        // The panel holding unit n0, as vectors of 8 lanes.
        let panel = t.panels.as_ptr().wrapping_add(n0 / PANEL * t.panel_len).cast::<__m256i>();
        // Whole panels load the gradient plainly (masked loads are slower), the last one masks.
        let whole = n0 + PANEL <= t.out_dim;
        for c in 0..4 {
            let n = n0 + 8 * c;
            if n >= t.out_dim {
                break;
            }
            let m = lanes(t.out_dim - n);
            let mut g = [_mm256_setzero_ps(); R];
            for (i, gi) in g.iter_mut().enumerate() {
                // SAFETY: units n .. n + 8 of row i, those past out_dim masked off.
                *gi = unsafe {
                    let p = dy.add(i * t.out_dim + n);
                    if whole {
                        _mm256_loadu_ps(p)
                    } else {
                        _mm256_maskload_ps(p, m)
                    }
                };
            }
            for j in 0..Q {
                // SAFETY: vector c of pair q + j of this panel (whole, aligned lines).
                let v = unsafe { _mm256_load_si256(panel.add(4 * (t.q + j) + c)) };
                let e = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                for i in 0..R {
                    even[i][j] = _mm256_fmadd_ps(g[i], e, even[i][j]);
                }
                let o = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                for i in 0..R {
                    odd[i][j] = _mm256_fmadd_ps(g[i], o, odd[i][j]);
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
                *row.add(c) += reduce(even[i][j]);
                if c + 1 < t.k {
                    *row.add(c + 1) += reduce(odd[i][j]);
                }
            }
        }
    }
}
