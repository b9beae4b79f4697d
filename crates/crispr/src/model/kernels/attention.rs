//! Causal grouped-query attention over `n` new queries and every cached key, and its backward,
//! side by side. Options cover the decoder families: a sliding window (Mistral, Gemma's local
//! layers), a query scale other than 1/√head_dim (Gemma's `query_pre_attn_scalar`) and
//! soft-capped logits (`cap · tanh(s / cap)`, Gemma 2).

use std::ops::Range;

use rayon::prelude::*;

use crate::tensor::{matmul_serial, Float, Mat, MatMut};

/// Shape and options of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before any cap.
    pub scale: f64,
    /// Keys further back than this many positions are invisible; `None`: unlimited.
    pub window: Option<usize>,
    /// Logit soft-cap: `s ← cap · tanh(s / cap)`.
    pub softcap: Option<f64>,
}

/// What the backward pass needs from the forward pass.
pub struct AttnTrace<F> {
    /// Probabilities `[heads × n × keys]`.
    pub probs: Vec<F>,
    /// `tanh(s / cap)` per logit, same layout, when the logits are capped (else empty).
    pub caps: Vec<F>,
}

/// Numerically stable softmax; `-inf` entries get probability exactly 0.
pub fn softmax_in_place<F: Float>(row: &mut [F]) {
    let mut m = F::NEG_INFINITY;
    for &v in row.iter() {
        m = m.max(v);
    }
    // The exponentials first, then their sum in order: a loop that did both could not
    // vectorise (the sum's order is fixed), and this one does (the values are the same bits).
    for v in row.iter_mut() {
        *v = if *v == F::NEG_INFINITY { F::ZERO } else { (*v - m).exp() };
    }
    let mut sum = F::ZERO;
    for &v in row.iter() {
        sum += v;
    }
    let inv = F::ONE / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// One head over one block of rows: `s = init + scale · q kᵀ` (`q`: `[n × head_dim]`, `k`, `v`:
/// `[m × head_dim]`, both strided views), soft-capped, masked where `visible(i, j)` is false, then
/// `softmax(s) v`. `init` is an additive bias `[n × m]` (T5's relative positions), or zeros.
/// Returns the head output `[n × head_dim]`, the probabilities and the caps (`tanh(s/cap)`,
/// empty without a cap), each `[n × m]`.
#[allow(clippy::too_many_arguments)]
pub fn head_attention<F: Float>(
    spec: &AttnSpec,
    q: Mat<'_, F>,
    k: Mat<'_, F>,
    v: Mat<'_, F>,
    n: usize,
    m: usize,
    init: Option<&[F]>,
    visible: impl Fn(usize, usize) -> bool,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let hd = spec.head_dim;
    let mut s = match init {
        Some(b) => b.to_vec(),
        None => vec![F::ZERO; n * m],
    };
    matmul_serial(MatMut::rows(&mut s, n, m), q, k.transpose(), F::from_f64(spec.scale), init.is_some());
    let mut tanhs = Vec::new();
    if let Some(c) = spec.softcap.map(F::from_f64) {
        tanhs = s.iter().map(|&x| (x / c).tanh()).collect();
        for (x, &t) in s.iter_mut().zip(&tanhs) {
            *x = c * t;
        }
    }
    if m > 0 {
        for (i, row) in s.chunks_exact_mut(m).enumerate() {
            for (j, val) in row.iter_mut().enumerate() {
                if !visible(i, j) {
                    *val = F::NEG_INFINITY;
                }
            }
            softmax_in_place(row);
        }
    }
    let mut out = vec![F::ZERO; n * hd];
    matmul_serial(MatMut::rows(&mut out, n, hd), Mat::rows(&s, n, m), v, F::ONE, false);
    (out, s, tanhs)
}

/// Where `n` new query rows sit: after `base` cached positions, in consecutive segments that
/// each continue the cache on their own. One segment is the ordinary causal pass (row `i` at
/// position `base + i`). Several are continuations packed into one pass — the candidate answers
/// of one prompt: a segment's rows see the cache and their own segment's earlier rows only, and
/// each segment starts again at position `base` (a tree of depth one over the prompt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRows {
    base: usize,
    /// For every row, the index (among the new rows) of its segment's first row.
    first: Vec<usize>,
}

impl QueryRows {
    /// `n` rows continuing `base` cached positions, causally.
    pub fn causal(base: usize, n: usize) -> Self {
        QueryRows { base, first: vec![0; n] }
    }

    /// Segments of the given lengths, each continuing `base` cached positions.
    pub fn packed(base: usize, lens: &[usize]) -> Self {
        let mut first = Vec::with_capacity(lens.iter().sum());
        for &len in lens {
            let start = first.len();
            first.extend(std::iter::repeat_n(start, len));
        }
        QueryRows { base, first }
    }

    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// The cached positions every row sees.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Position of row `i` (what RoPE rotates it by).
    pub fn position(&self, i: usize) -> usize {
        self.base + i - self.first[i]
    }

    /// The segments as `(first row, rows)`, in order.
    pub fn segments(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let start = i;
            while i < self.first.len() && self.first[i] == start {
                i += 1;
            }
            (i > start).then_some((start, i - start))
        })
    }

    /// The keys row `i` sees (keys `0 .. base` are the cache, `base + r` is new row `r`): a
    /// range of the cache and a range of its own segment up to itself, both within `window`
    /// positions of it.
    pub fn visible_keys(&self, i: usize, window: Option<usize>) -> (Range<usize>, Range<usize>) {
        let own = self.base + i;
        let w = window.unwrap_or(usize::MAX);
        // Key j is `position(i) − j` positions back in the cache and `own − j` in the segment.
        let cache = (self.position(i) + 1).saturating_sub(w).min(self.base)..self.base;
        let segment = (self.base + self.first[i]).max((own + 1).saturating_sub(w))..own + 1;
        (cache, segment)
    }

    /// Whether row `i` sees key `j` (see [`Self::visible_keys`]).
    pub fn visible(&self, i: usize, j: usize, window: Option<usize>) -> bool {
        let (cache, segment) = self.visible_keys(i, window);
        cache.contains(&j) || segment.contains(&j)
    }
}

/// Attention of the new query rows (`q`: `[rows × heads·head_dim]`, rotated) over keys and values
/// `[keys × kv_heads·head_dim]` — the cache, then the new rows' own — masked as [`QueryRows`]
/// says (causal, windowed, segments apart). Returns the concatenated head outputs
/// `[rows × heads·head_dim]` and the trace.
pub fn attention<F: Float>(spec: &AttnSpec, q: &[F], k: &[F], v: &[F], rows: &QueryRows) -> (Vec<F>, AttnTrace<F>) {
    let (nh, hd) = (spec.heads, spec.head_dim);
    let group = nh / spec.kv_heads;
    let kvw = spec.kv_heads * hd;
    let keys = k.len() / kvw;
    let n = rows.len();
    // Worked out once per row: the mask is asked for every (row, key) of every head.
    let ranges: Vec<_> = (0..n).map(|i| rows.visible_keys(i, spec.window)).collect();
    let visible = |i: usize, j: usize| ranges[i].0.contains(&j) || ranges[i].1.contains(&j);
    let per_head: Vec<(Vec<F>, Vec<F>, Vec<F>)> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            head_attention(
                spec,
                Mat::strided(q, h * hd, n, hd, nh * hd, 1),
                Mat::strided(k, kvh * hd, keys, hd, kvw, 1),
                Mat::strided(v, kvh * hd, keys, hd, kvw, 1),
                n,
                keys,
                None,
                visible,
            )
        })
        .collect();
    let mut attn = vec![F::ZERO; n * nh * hd];
    let mut probs = Vec::with_capacity(nh * n * keys);
    let mut caps = Vec::new();
    for (h, (out, p, t)) in per_head.into_iter().enumerate() {
        for i in 0..n {
            attn[i * nh * hd + h * hd..i * nh * hd + (h + 1) * hd].copy_from_slice(&out[i * hd..(i + 1) * hd]);
        }
        probs.extend_from_slice(&p);
        caps.extend_from_slice(&t);
    }
    (attn, AttnTrace { probs, caps })
}

/// Gradients of the attention inputs from that of its output `d_attn` (`[n × heads·head_dim]`):
/// `n` queries (`q`, rotated) over `m` keys and values (`k`, `v`: `[m × kv_heads·head_dim]`), with
/// the probabilities and caps of the forward pass (see [`AttnTrace`]), `[heads × n × m]`. An additive bias or mask
/// is a constant and needs no term. Returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Float>(
    spec: &AttnSpec,
    (probs, caps): (&[F], &[F]),
    q: &[F],
    k: &[F],
    v: &[F],
    d_attn: &[F],
    n: usize,
    m: usize,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (nh, hd) = (spec.heads, spec.head_dim);
    let group = nh / spec.kv_heads;
    let kvw = spec.kv_heads * hd;
    let scale = F::from_f64(spec.scale);
    let per_head: Vec<(Vec<F>, Vec<F>, Vec<F>)> = (0..nh)
        .into_par_iter()
        .map(|h| {
            let kvh = h / group;
            let p = &probs[h * n * m..(h + 1) * n * m];
            let d_out = Mat::strided(d_attn, h * hd, n, hd, nh * hd, 1);
            // dV = Pᵀ dO
            let mut dv = vec![F::ZERO; m * hd];
            matmul_serial(MatMut::rows(&mut dv, m, hd), Mat::rows(p, n, m).transpose(), d_out, F::ONE, false);
            // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale (· (1 − tanh²) under a cap)
            let mut ds = vec![F::ZERO; n * m];
            matmul_serial(
                MatMut::rows(&mut ds, n, m),
                d_out,
                Mat::strided(v, kvh * hd, m, hd, kvw, 1).transpose(),
                F::ONE,
                false,
            );
            let tanhs = (!caps.is_empty()).then(|| &caps[h * n * m..(h + 1) * n * m]);
            if m > 0 {
                for (i, (prow, drow)) in p.chunks_exact(m).zip(ds.chunks_exact_mut(m)).enumerate() {
                    let mut dot = F::ZERO;
                    for (&pv, &dv) in prow.iter().zip(drow.iter()) {
                        dot += pv * dv;
                    }
                    for (dv, &pv) in drow.iter_mut().zip(prow) {
                        *dv = pv * (*dv - dot) * scale;
                    }
                    if let Some(t) = tanhs {
                        for (dv, &tv) in drow.iter_mut().zip(&t[i * m..(i + 1) * m]) {
                            *dv *= F::ONE - tv * tv;
                        }
                    }
                }
            }
            // dQ = dS K, dK = dSᵀ Q
            let mut dq = vec![F::ZERO; n * hd];
            matmul_serial(
                MatMut::rows(&mut dq, n, hd),
                Mat::rows(&ds, n, m),
                Mat::strided(k, kvh * hd, m, hd, kvw, 1),
                F::ONE,
                false,
            );
            let mut dk = vec![F::ZERO; m * hd];
            matmul_serial(
                MatMut::rows(&mut dk, m, hd),
                Mat::rows(&ds, n, m).transpose(),
                Mat::strided(q, h * hd, n, hd, nh * hd, 1),
                F::ONE,
                false,
            );
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![F::ZERO; n * nh * hd];
    let mut dk = vec![F::ZERO; m * kvw];
    let mut dv = vec![F::ZERO; m * kvw];
    for (h, (q_h, k_h, v_h)) in per_head.into_iter().enumerate() {
        let kvh = h / group;
        for i in 0..n {
            dq[i * nh * hd + h * hd..i * nh * hd + (h + 1) * hd].copy_from_slice(&q_h[i * hd..(i + 1) * hd]);
        }
        for j in 0..m {
            for c in 0..hd {
                dk[j * kvw + kvh * hd + c] += k_h[j * hd + c];
                dv[j * kvw + kvh * hd + c] += v_h[j * hd + c];
            }
        }
    }
    (dq, dk, dv)
}

/// One `[heads × n × n]` table from a head segment (`[heads × a × a]`, rows seeing `a` keys) and
/// a tail segment traced after it (`[heads × b × (a+b)]`); head rows are padded with zeros (the
/// probability of keys they could not see, and an unused cap).
pub fn join_tables<F: Float>(heads: usize, a: usize, b: usize, head: &[F], tail: &[F]) -> Vec<F> {
    if head.is_empty() && tail.is_empty() {
        return Vec::new();
    }
    let n = a + b;
    let mut out = vec![F::ZERO; heads * n * n];
    for h in 0..heads {
        for i in 0..a {
            out[h * n * n + i * n..h * n * n + i * n + a]
                .copy_from_slice(&head[h * a * a + i * a..h * a * a + (i + 1) * a]);
        }
        for i in 0..b {
            out[h * n * n + (a + i) * n..h * n * n + (a + i + 1) * n]
                .copy_from_slice(&tail[h * b * n + i * n..h * b * n + (i + 1) * n]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::QueryRows;

    #[test]
    fn one_segment_is_the_causal_mask() {
        for window in [None, Some(1), Some(3)] {
            let rows = QueryRows::causal(5, 4);
            for i in 0..4 {
                assert_eq!(rows.position(i), 5 + i);
                for j in 0..9 {
                    let want = j <= 5 + i && window.is_none_or(|w| 5 + i - j < w);
                    assert_eq!(rows.visible(i, j, window), want, "row {i} key {j} window {window:?}");
                }
            }
            assert_eq!(rows.segments().collect::<Vec<_>>(), vec![(0, 4)]);
        }
    }

    #[test]
    fn packed_segments_see_the_cache_and_themselves() {
        // Cache of 3 positions, then segments of 2, 1 and 3 rows (keys 3-4, 5, 6-8).
        let rows = QueryRows::packed(3, &[2, 1, 3]);
        assert_eq!(rows.segments().collect::<Vec<_>>(), vec![(0, 2), (2, 1), (3, 3)]);
        let positions: Vec<usize> = (0..6).map(|i| rows.position(i)).collect();
        assert_eq!(positions, vec![3, 4, 3, 3, 4, 5]);
        let seen = |i: usize, window| (0..9).filter(|&j| rows.visible(i, j, window)).collect::<Vec<_>>();
        assert_eq!(seen(0, None), vec![0, 1, 2, 3]);
        assert_eq!(seen(1, None), vec![0, 1, 2, 3, 4]);
        assert_eq!(seen(2, None), vec![0, 1, 2, 5]);
        assert_eq!(seen(5, None), vec![0, 1, 2, 6, 7, 8]);
        // A window counts positions, not cache slots: row 5 sits at position 5.
        assert_eq!(seen(5, Some(3)), vec![6, 7, 8]);
        assert_eq!(seen(5, Some(4)), vec![2, 6, 7, 8]);
        assert_eq!(seen(2, Some(2)), vec![2, 5]);
        assert!(QueryRows::packed(3, &[]).is_empty());
    }
}
