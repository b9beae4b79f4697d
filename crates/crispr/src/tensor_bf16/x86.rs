//! What the x86 kernels share: how the output is split into tasks, and the rounded activations.
//! The register tiles are each instruction set's own (`avx512`, `avx2`).

use half::bf16;
use rayon::prelude::*;

use super::{PackedBf16, PANEL, PARALLEL_THRESHOLD};

/// An output, written by tasks that own disjoint rectangles of it.
#[derive(Clone, Copy)]
pub(super) struct Out(pub *mut f32);
// SAFETY: every task writes a rectangle no other task touches (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

// Methods, not field reads, in closures: a closure capturing `out.0` alone would capture the bare
// pointer, which is not `Sync`.
impl Out {
    /// The same output `n` elements on.
    pub fn offset(self, n: usize) -> Out {
        Out(self.0.wrapping_add(n))
    }

    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The forward product `[rows × out_dim]`, computed by `task(r0, r1, p, y)` for every row block
/// `r0 .. r1` (of `row_block` rows) and panel `p`, with `y` at row 0, column `32p` of the
/// row-major output. Row blocks are the outer order: tasks one thread runs in a row share
/// their activations. Parallel above [`PARALLEL_THRESHOLD`] multiply-adds.
///
/// # Safety
/// Each task must write every element of rows `r0 .. r1` × the panel's existing columns
/// (`min(32, out_dim − 32p)`), and nothing else: the output is not zeroed beforehand.
pub(super) unsafe fn forward_tasks(
    w: &PackedBf16,
    rows: usize,
    row_block: usize,
    task: impl Fn(usize, usize, usize, Out) + Sync,
) -> Vec<f32> {
    let out_dim = w.out_dim;
    let mut y: Vec<f32> = Vec::with_capacity(rows * out_dim);
    let out = Out(y.as_mut_ptr());
    let panels = out_dim.div_ceil(PANEL);
    let run = |t: usize| {
        let (b, p) = (t / panels, t % panels);
        let (r0, r1) = (b * row_block, ((b + 1) * row_block).min(rows));
        task(r0, r1, p, out.offset(p * PANEL));
    };
    let tasks = panels * rows.div_ceil(row_block);
    if rows * out_dim * w.in_dim >= PARALLEL_THRESHOLD {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
    // SAFETY: the tasks covered every (row block, panel) and, by the caller's contract, wrote
    // all rows × out_dim values.
    unsafe { y.set_len(rows * out_dim) };
    y
}

/// The input-gradient product `dx += dy · w` in register tiles of up to `br` rows × `bq` input
/// pairs: `tile(t, rows, pairs)` adds `dy[t.r ..][..] · w[..][2·t.q ..]` to `dx` for that many
/// rows and pairs. Tasks over blocks of `block_pairs` input pairs (parallel above
/// [`PARALLEL_THRESHOLD`] multiply-adds) each own columns `2·q0 .. 2·q1` of every row of `dx`.
pub(super) fn backward_tiles(
    dx: &mut [f32],
    dy: &[f32],
    rows: usize,
    w: &PackedBf16,
    (block_pairs, br, bq): (usize, usize, usize),
    tile: impl Fn(BwTile<'_>, usize, usize) + Sync,
) {
    let (out_dim, k, pairs) = (w.out_dim, w.in_dim, w.pairs());
    let out = Out(dx.as_mut_ptr());
    let (panels, panel_len) = (w.data(), w.panel_len());
    let task = |b: usize| {
        let (q0, q1) = (b * block_pairs, ((b + 1) * block_pairs).min(pairs));
        let mut r = 0;
        while r < rows {
            let rs = br.min(rows - r);
            let mut q = q0;
            while q < q1 {
                let qs = bq.min(q1 - q);
                let dy = &dy[r * out_dim..];
                tile(BwTile { dy, out_dim, panels, panel_len, q, dx: out.ptr(), r, k }, rs, qs);
                q += qs;
            }
            r += rs;
        }
    };
    let blocks = pairs.div_ceil(block_pairs);
    if rows * out_dim * k >= PARALLEL_THRESHOLD {
        (0..blocks).into_par_iter().for_each(task);
    } else {
        (0..blocks).for_each(task);
    }
}

/// A backward register tile's operands.
#[derive(Clone, Copy)]
pub(super) struct BwTile<'a> {
    /// `dy` from the tile's first row, and its row stride (the output units).
    pub dy: &'a [f32],
    pub out_dim: usize,
    /// Every panel of `w`, and the length of one.
    pub panels: &'a [bf16],
    pub panel_len: usize,
    /// The tile's first pair.
    pub q: usize,
    /// `dx` (row 0, column 0), the tile's first row, and the row stride (`w`'s width).
    pub dx: *mut f32,
    pub r: usize,
    pub k: usize,
}

/// Activation rows `r0 .. r1` of a forward task, `words` per input pair (row stride `ldx`).
#[derive(Clone, Copy)]
pub(super) struct PanelRows<'a> {
    pub x: &'a [u32],
    pub ldx: usize,
    pub words: usize,
    pub pairs: usize,
    pub r0: usize,
    pub r1: usize,
}

/// A register tile's operands.
#[derive(Clone, Copy)]
pub(super) struct Tile<'a> {
    /// Activation rows, starting at the block's first pair.
    pub x: &'a [u32],
    pub ldx: usize,
    /// Pairs in the block.
    pub pairs: usize,
    /// The panel's slice for those pairs.
    pub panel: &'a [bf16],
    /// The tile's first output row, column 0 of the panel.
    pub y: *mut f32,
    pub ldy: usize,
    /// Columns of the panel that exist.
    pub cols: usize,
    /// Add to the output (a later block of pairs) instead of overwriting it.
    pub more: bool,
}

/// Rows `r0 .. r1` of the product with one panel: `pairs_block` input pairs at a time (the
/// panel's slice stays in L1), and within those `tile(t, rows_left)` on the next rows, which
/// returns how many rows it covered. `y` is column 0 of the panel in a row-major output of
/// stride `ldy`, `cols <= 32` of whose columns belong to the panel.
#[inline(always)]
pub(super) fn panel_tiles(
    x: PanelRows<'_>,
    pairs_block: usize,
    panel: &[bf16],
    y: *mut f32,
    ldy: usize,
    cols: usize,
    mut tile: impl FnMut(Tile<'_>, usize) -> usize,
) {
    let mut q0 = 0;
    while q0 < x.pairs {
        let q1 = (q0 + pairs_block).min(x.pairs);
        let slice = &panel[q0 * 2 * PANEL..q1 * 2 * PANEL];
        let mut r = x.r0;
        while r < x.r1 {
            let t = Tile {
                x: &x.x[r * x.ldx + x.words * q0..],
                ldx: x.ldx,
                pairs: q1 - q0,
                panel: slice,
                y: y.wrapping_add(r * ldy),
                ldy,
                cols,
                more: q0 > 0,
            };
            r += tile(t, x.r1 - r);
        }
        q0 = q1;
    }
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

/// The activations rounded to bf16, as f32 bits, each row padded to an even width, by
/// `round_row` (the same loop compiled for the caller's vector unit).
///
/// # Safety
/// The CPU runs `round_row`.
pub(super) unsafe fn rounded_words(
    x: &[f32],
    rows: usize,
    k: usize,
    round_row: unsafe fn(&[f32], &mut [u32]),
) -> Vec<u32> {
    let ld = 2 * k.div_ceil(2);
    let mut xw = vec![0u32; rows * ld];
    // SAFETY: the caller's contract.
    let work = |(src, dst): (&[f32], &mut [u32])| unsafe { round_row(src, dst) };
    if rows * k >= 1 << 16 {
        x.par_chunks(k).zip(xw.par_chunks_mut(ld)).for_each(work);
    } else {
        x.chunks(k).zip(xw.chunks_mut(ld)).for_each(work);
    }
    xw
}

/// Runs `$call` with the const `$r` = the register tile's row count for `$left` rows left
/// (`$mr`, or the remainder below it), so that every tile height is its own unrolled function.
macro_rules! tile_rows {
    ($left:expr, $mr:expr, |$r:ident| $call:expr, [$($n:literal),*]) => {
        match $left {
            m if m >= $mr => {
                const $r: usize = $mr;
                $call
            }
            $($n => {
                const $r: usize = $n;
                $call
            })*
            _ => {
                const $r: usize = 1;
                $call
            }
        }
    };
}
pub(super) use tile_rows;
