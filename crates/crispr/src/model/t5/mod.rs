//! T5 encoder–decoder models (T5 v1.0, and v1.1: Flan-T5, T0), computed as transformers does.
//!
//! Same approach as [`crate::model::llama`]: forward and backward are written out by hand, and one
//! backward sweep yields the gradient of a candidate's log-probability at every hooked site (every
//! linear output of both stacks, and the FFN activation) without ever forming a weight gradient.
//!
//! T5 specifics (transformers `modeling_t5.py`): RMS norm without mean or bias; no biases at all;
//! attention logits are *not* scaled by 1/√d_kv (the scale is folded into the initialisation); a
//! learned relative-position bias (bucketed distances: bidirectional in the encoder, causal in the
//! decoder) belongs to the first block of each stack and is added in every block of that stack;
//! cross-attention has no position bias; FFN = `wo(relu(wi x))` (v1.0) or
//! `wo(gelu_tanh(wi_0 x) ⊙ wi_1 x)` (v1.1); v1.0 ties the LM head to the embedding and rescales the
//! decoder output by d_model^-½, v1.1 has its own head and no rescaling.
//!
//! Conventions: activations are row-major `[rows × width]`, weights row-major `[out × in]`. Both
//! stacks run several sequences packed one after another: every linear layer sees all rows at
//! once, attention runs per segment (a prompt in the encoder; a prompt's candidates, kept apart
//! by sequence ids, in the decoder). Scoring packs many prompts into one encoder pass and all
//! their candidates into one decoder pass over cross-attention keys and values computed once.

use std::ops::Range;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::model::kernels::activation::{activate, activate_backward, gated, gated_backward};
use crate::model::kernels::attention::head_attention;
use crate::model::kernels::{attention_backward, rms_norm, rms_norm_backward, AttnSpec};
use crate::model::linear::Weights;
use crate::model::logits::{argmax, log_prob_of};
use crate::model::{CandidateGradVisitor, Family, LanguageModel, Linear, SiteInfo, Universe};
pub use crate::model::{ForwardHook, GradVisitor};
use crate::tensor::{Float, Mat};
use crate::weights::NamedSource;

mod backward;
mod config;
mod load;
mod scoring;
pub mod synthetic;

pub use config::*;
pub use load::{load_t5, load_t5_at, LOADER, T5_MAX_TOKENS};

/// The four projections of an attention sub-layer.
#[derive(Clone, Debug)]
pub struct Attention<F> {
    pub q: Linear<F>,
    pub k: Linear<F>,
    pub v: Linear<F>,
    pub o: Linear<F>,
}

/// The FFN of a block. `wi_0` holds `wi` when the FFN is not gated.
#[derive(Clone, Debug)]
pub struct FeedForward<F> {
    pub wi_0: Linear<F>,
    pub wi_1: Option<Linear<F>>,
    pub wo: Linear<F>,
}

/// One block: self-attention, cross-attention (decoder only), FFN; each behind its own RMS norm.
#[derive(Clone, Debug)]
pub struct Block<F> {
    pub self_norm: Vec<F>,
    pub self_attn: Attention<F>,
    pub cross_norm: Option<Vec<F>>,
    pub cross_attn: Option<Attention<F>>,
    pub ffn_norm: Vec<F>,
    pub ffn: FeedForward<F>,
}

/// One stack of blocks with its final norm and its relative-position bias table.
#[derive(Clone, Debug)]
pub struct Stack<F> {
    pub blocks: Vec<Block<F>>,
    pub final_norm: Vec<F>,
    /// `[buckets × heads]`, from the first block's self-attention.
    pub relative_bias: Vec<F>,
}

/// A T5 model with weights in `F`.
#[derive(Clone, Debug)]
pub struct T5Model<F> {
    pub cfg: T5Config,
    /// `[vocab × d_model]`, shared by both stacks.
    pub shared: Weights<F>,
    pub encoder: Stack<F>,
    pub decoder: Stack<F>,
    /// `None` when the LM head is the embedding.
    pub lm_head: Option<Weights<F>>,
    site_keys: Vec<T5Site>,
    sites: Vec<SiteInfo>,
    enc_projs: Vec<T5Proj>,
    dec_projs: Vec<T5Proj>,
}

/// The sequence id and position of every row of a (packed) batch.
#[derive(Clone, Debug, Default)]
struct Rows {
    seq: Vec<u32>,
    pos: Vec<usize>,
}

impl Rows {
    fn single(pos0: usize, n: usize) -> Rows {
        Rows { seq: vec![0; n], pos: (pos0..pos0 + n).collect() }
    }

    fn len(&self) -> usize {
        self.pos.len()
    }
}

/// One attention problem of a packed batch: the query rows `q` attend to the key rows `k`, with
/// an additive bias `[heads × q.len() × k.len()]` (`None`: no bias, every key visible). Packing
/// several sequences as separate segments keeps attention from crossing them without computing
/// (and masking) the attention between them.
struct Segment<'a, F> {
    q: Range<usize>,
    k: Range<usize>,
    bias: Option<&'a [F]>,
}

/// A decoder block's cross-attention keys and values `[encoder rows × inner]` and the segments
/// that read them.
struct CrossInput<'a, F> {
    k: &'a [F],
    v: &'a [F],
    segments: &'a [Segment<'a, F>],
}

/// A prompt's share of a packed decoder batch: its decoder rows (`rows` numbers them per
/// candidate; attention never crosses candidates) and the encoder rows they cross-attend to.
struct DecoderPart {
    rows: Rows,
    enc: Range<usize>,
}

/// Self-attention keys and values of the decoder positions generated so far, per block.
#[derive(Clone, Debug, Default)]
pub struct DecoderCache<F> {
    layers: Vec<(Vec<F>, Vec<F>)>,
    len: usize,
}

impl<F> DecoderCache<F> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What the backward pass needs from one attention sub-layer.
#[derive(Default)]
struct AttnTrace<F> {
    x_in: Vec<F>,
    inv_rms: Vec<F>,
    q: Vec<F>,
    /// Self-attention only: cross-attention keys and values live in the encoder-side buffers.
    k: Vec<F>,
    v: Vec<F>,
    /// `[heads × rows × keys]`
    probs: Vec<F>,
    o: Vec<F>,
}

#[derive(Default)]
struct FfnTrace<F> {
    x_in: Vec<F>,
    inv_rms: Vec<F>,
    wi_0: Vec<F>,
    /// Empty when the FFN is not gated.
    wi_1: Vec<F>,
    /// [`Activation::shared_terms`] of `wi_0`.
    terms: Vec<F>,
    act: Vec<F>,
    wo: Vec<F>,
}

/// A decoder block's cross-attention keys and values, and the gradient at the encoder output
/// its backward pass adds to.
struct CrossGrad<'a, F> {
    k: &'a [F],
    v: &'a [F],
    d_enc: &'a mut [F],
}

#[derive(Default)]
struct BlockTrace<F> {
    attn: AttnTrace<F>,
    cross: Option<AttnTrace<F>>,
    ffn: FfnTrace<F>,
}

/// A stack's forward pass, kept for the backward pass.
struct StackTrace<F> {
    blocks: Vec<BlockTrace<F>>,
    final_in: Vec<F>,
    final_inv_rms: Vec<F>,
    /// Output of the final norm, `[rows × d_model]`.
    out: Vec<F>,
}

fn fire<F>(hook: &mut Option<ForwardHook<'_, F>>, id: usize, y: &mut [F]) {
    if let Some(h) = hook.as_mut() {
        h(id, y);
    }
}


impl<F: Float> T5Model<F> {
    pub fn new(
        cfg: T5Config,
        shared: Weights<F>,
        encoder: Stack<F>,
        decoder: Stack<F>,
        lm_head: Option<Weights<F>>,
    ) -> Self {
        let enc_projs = cfg.block_projs(StackKind::Encoder);
        let dec_projs = cfg.block_projs(StackKind::Decoder);
        let mut site_keys = Vec::new();
        for (stack, projs) in [(StackKind::Encoder, &enc_projs), (StackKind::Decoder, &dec_projs)] {
            for layer in 0..cfg.layers(stack) {
                site_keys.extend(projs.iter().map(|&proj| T5Site { stack, layer, proj }));
            }
        }
        let sites = site_keys
            .iter()
            .map(|s| SiteInfo {
                name: s.module_name(),
                layer: s.layer,
                kind: s.proj.kind(),
                stack: s.stack.name(),
                width: cfg.out_dim(s.proj),
                universe: if s.proj == T5Proj::Act { Universe::Ffn } else { Universe::Linear },
            })
            .collect();
        T5Model { cfg, shared, encoder, decoder, lm_head, site_keys, sites, enc_projs, dec_projs }
    }

    /// Every hooked site, in the order of [`LanguageModel::sites`].
    pub fn site_keys(&self) -> &[T5Site] {
        &self.site_keys
    }

    /// Index of a site in the site table.
    pub fn site_index(&self, stack: StackKind, layer: usize, proj: T5Proj) -> usize {
        let (base, projs) = match stack {
            StackKind::Encoder => (0, &self.enc_projs),
            StackKind::Decoder => (self.cfg.num_layers * self.enc_projs.len(), &self.dec_projs),
        };
        let slot = projs.iter().position(|&p| p == proj).expect("site kind belongs to this stack");
        base + layer * projs.len() + slot
    }

    fn stack(&self, kind: StackKind) -> &Stack<F> {
        match kind {
            StackKind::Encoder => &self.encoder,
            StackKind::Decoder => &self.decoder,
        }
    }

    fn embed(&self, tokens: &[u32]) -> Vec<F> {
        let d = self.cfg.d_model;
        let mut x = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            self.shared.extend_with_row(&mut x, t, d);
        }
        x
    }

    /// The additive attention bias `[heads × queries × keys]` of a stack's self-attention: the
    /// relative-position bias, and −∞ where a key is invisible (another sequence of the batch, or,
    /// in the decoder, a later position). transformers computes it in the first block and shares it.
    fn position_bias(&self, kind: StackKind, q: &Rows, k: &Rows) -> Vec<F> {
        let cfg = &self.cfg;
        let heads = cfg.num_heads;
        let table = &self.stack(kind).relative_bias;
        let bidirectional = kind == StackKind::Encoder;
        let (nq, nk) = (q.len(), k.len());
        let mut out = vec![F::NEG_INFINITY; heads * nq * nk];
        for i in 0..nq {
            for j in 0..nk {
                let visible = q.seq[i] == k.seq[j] && (bidirectional || k.pos[j] <= q.pos[i]);
                if !visible {
                    continue;
                }
                let b = relative_position_bucket(
                    k.pos[j] as i64 - q.pos[i] as i64,
                    bidirectional,
                    cfg.relative_attention_num_buckets,
                    cfg.relative_attention_max_distance,
                );
                for h in 0..heads {
                    out[(h * nq + i) * nk + j] = table[b * heads + h];
                }
            }
        }
        out
    }

    /// Per segment and head: `softmax(q kᵀ + bias) v` — no 1/√d_kv scaling in T5. `q` is
    /// `[rows × inner]`, `k` and `v` are `[key rows × inner]`; each segment names the query rows
    /// and the key rows that see each other. Returns the concatenated head outputs `[rows × inner]`
    /// (rows outside every segment stay zero) and, when `keep_probs`, the probabilities of every
    /// segment in turn, each `[heads × queries × keys]`.
    fn attention(&self, q: &[F], k: &[F], v: &[F], segments: &[Segment<'_, F>], keep_probs: bool) -> (Vec<F>, Vec<F>) {
        let (nh, hd) = (self.cfg.num_heads, self.cfg.d_kv);
        let inner = nh * hd;
        let spec = self.attn_spec();
        let jobs: Vec<(usize, usize)> = (0..segments.len()).flat_map(|s| (0..nh).map(move |h| (s, h))).collect();
        let per_job: Vec<(Vec<F>, Vec<F>)> = jobs
            .par_iter()
            .map(|&(s, h)| {
                let seg = &segments[s];
                let (n, m) = (seg.q.len(), seg.k.len());
                let (out, probs, _) = head_attention(
                    &spec,
                    Mat::strided(q, seg.q.start * inner + h * hd, n, hd, inner, 1),
                    Mat::strided(k, seg.k.start * inner + h * hd, m, hd, inner, 1),
                    Mat::strided(v, seg.k.start * inner + h * hd, m, hd, inner, 1),
                    n,
                    m,
                    seg.bias.map(|b| &b[h * n * m..(h + 1) * n * m]),
                    |_, _| true,
                );
                (out, probs)
            })
            .collect();
        let mut ctx = vec![F::ZERO; q.len()];
        let mut probs = Vec::new();
        for (&(s, h), (out, p)) in jobs.iter().zip(per_job) {
            let q0 = segments[s].q.start;
            for (i, o) in out.chunks_exact(hd).enumerate() {
                let r = (q0 + i) * inner + h * hd;
                ctx[r..r + hd].copy_from_slice(o);
            }
            if keep_probs {
                probs.extend_from_slice(&p);
            }
        }
        (ctx, probs)
    }

    /// T5 attention: every head its own keys, logits not scaled (the scale is folded into the
    /// initialisation), no cap; masks and position bias come in as an additive bias.
    fn attn_spec(&self) -> AttnSpec {
        let (nh, hd) = (self.cfg.num_heads, self.cfg.d_kv);
        AttnSpec { heads: nh, kv_heads: nh, head_dim: hd, scale: 1.0, window: None, softcap: None }
    }

    /// Gradients of q, k, v from that of the attention output (see [`Self::attention`]).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &[F],
        k: &[F],
        v: &[F],
        probs: &[F],
        d_ctx: &[F],
        n: usize,
        m: usize,
    ) -> (Vec<F>, Vec<F>, Vec<F>) {
        attention_backward(&self.attn_spec(), (probs, &[]), q, k, v, d_ctx, n, m)
    }

    /// One block over `n` rows of `x` (updated in place); self-attention within `self_segments`.
    /// `self_cache`: append this block's keys/values to it and attend over all of it (generation;
    /// the segments' key rows index the cache); `cross`: the encoder-side keys and values of this
    /// block and the segments that read them (decoder only). Without `keep`, nothing is kept for
    /// the backward pass (the trace comes back empty).
    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        kind: StackKind,
        l: usize,
        x: &mut [F],
        n: usize,
        self_segments: &[Segment<'_, F>],
        self_cache: Option<&mut (Vec<F>, Vec<F>)>,
        cross: Option<CrossInput<'_, F>>,
        keep: bool,
        hook: &mut Option<ForwardHook<'_, F>>,
    ) -> BlockTrace<F> {
        let cfg = &self.cfg;
        let eps = cfg.layer_norm_epsilon;
        let block = &self.stack(kind).blocks[l];
        let id = |p: T5Proj| self.site_index(kind, l, p);

        let keep_input = |x: &[F]| if keep { x.to_vec() } else { Vec::new() };

        // Self-attention.
        let x_in = keep_input(x);
        let (h, inv_rms) = rms_norm(x, &block.self_norm, eps);
        let a = &block.self_attn;
        let mut q = a.q.forward(&h, n);
        fire(hook, id(T5Proj::Q), &mut q);
        let mut k = a.k.forward(&h, n);
        fire(hook, id(T5Proj::K), &mut k);
        let mut v = a.v.forward(&h, n);
        fire(hook, id(T5Proj::V), &mut v);
        let (ctx, probs) = match self_cache {
            Some((kc, vc)) => {
                kc.extend_from_slice(&k);
                vc.extend_from_slice(&v);
                self.attention(&q, kc, vc, self_segments, keep)
            }
            None => self.attention(&q, &k, &v, self_segments, keep),
        };
        let mut o = a.o.forward(&ctx, n);
        fire(hook, id(T5Proj::O), &mut o);
        for (xi, &oi) in x.iter_mut().zip(&o) {
            *xi += oi;
        }
        let attn = AttnTrace { x_in, inv_rms, q, k, v, probs, o };

        // Cross-attention over the encoder output (keys and values precomputed).
        let cross = match (cross, &block.cross_norm, &block.cross_attn) {
            (Some(CrossInput { k: ck, v: cv, segments }), Some(norm), Some(ca)) => {
                let x_in = keep_input(x);
                let (h, inv_rms) = rms_norm(x, norm, eps);
                let mut q = ca.q.forward(&h, n);
                fire(hook, id(T5Proj::CrossQ), &mut q);
                let (ctx, probs) = self.attention(&q, ck, cv, segments, keep);
                let mut o = ca.o.forward(&ctx, n);
                fire(hook, id(T5Proj::CrossO), &mut o);
                for (xi, &oi) in x.iter_mut().zip(&o) {
                    *xi += oi;
                }
                Some(AttnTrace { x_in, inv_rms, q, k: Vec::new(), v: Vec::new(), probs, o })
            }
            _ => None,
        };

        // Feed-forward.
        let x_in = keep_input(x);
        let (h, inv_rms) = rms_norm(x, &block.ffn_norm, eps);
        let f = &block.ffn;
        let act_fn = cfg.activation;
        let ff = cfg.d_ff;
        let (wi_0, wi_1, terms, mut act) = if let Some(w1) = &f.wi_1 {
            let mut wi_0 = f.wi_0.forward(&h, n);
            fire(hook, id(T5Proj::Wi0), &mut wi_0);
            let mut wi_1 = w1.forward(&h, n);
            fire(hook, id(T5Proj::Wi1), &mut wi_1);
            let (act, terms) = gated(act_fn, &wi_0, &wi_1, ff);
            (wi_0, wi_1, terms, act)
        } else {
            let mut wi = f.wi_0.forward(&h, n);
            fire(hook, id(T5Proj::Wi), &mut wi);
            let (act, terms) = activate(act_fn, &wi, ff);
            (wi, Vec::new(), terms, act)
        };
        fire(hook, id(T5Proj::Act), &mut act);
        let mut wo = f.wo.forward(&act, n);
        fire(hook, id(T5Proj::Wo), &mut wo);
        for (xi, &yi) in x.iter_mut().zip(&wo) {
            *xi += yi;
        }
        if !keep {
            // Freed here, layer by layer, so that the allocator hands the same memory to the next
            // block instead of faulting in fresh pages for a whole stack of intermediates.
            return BlockTrace::default();
        }
        BlockTrace { attn, cross, ffn: FfnTrace { x_in, inv_rms, wi_0, wi_1, terms, act, wo } }
    }

    /// The encoder over one sequence, keeping what the backward pass needs.
    fn run_encoder(&self, tokens: &[u32], hook: &mut Option<ForwardHook<'_, F>>) -> StackTrace<F> {
        self.run_encoder_packed(tokens, &[tokens.len()], true, hook)
    }

    /// The encoder over several sequences packed one after another (`lens` gives their lengths):
    /// every linear layer runs once over all rows, attention stays within each sequence.
    fn run_encoder_packed(
        &self,
        tokens: &[u32],
        lens: &[usize],
        keep: bool,
        hook: &mut Option<ForwardHook<'_, F>>,
    ) -> StackTrace<F> {
        let n = tokens.len();
        debug_assert_eq!(lens.iter().sum::<usize>(), n, "sequence lengths cover the tokens");
        let mut x = self.embed(tokens);
        // The bias depends only on a sequence's length: one per distinct length.
        let mut biases: Vec<(usize, Vec<F>)> = Vec::new();
        for &len in lens {
            if !biases.iter().any(|(l, _)| *l == len) {
                let rows = Rows::single(0, len);
                biases.push((len, self.position_bias(StackKind::Encoder, &rows, &rows)));
            }
        }
        let mut segments = Vec::with_capacity(lens.len());
        let mut start = 0;
        for &len in lens {
            let bias = &biases.iter().find(|(l, _)| *l == len).expect("bias computed for every length").1;
            segments.push(Segment { q: start..start + len, k: start..start + len, bias: Some(bias.as_slice()) });
            start += len;
        }
        let blocks = (0..self.cfg.num_layers)
            .map(|l| self.block_forward(StackKind::Encoder, l, &mut x, n, &segments, None, None, keep, hook))
            .collect();
        let (out, inv) = rms_norm(&x, &self.encoder.final_norm, self.cfg.layer_norm_epsilon);
        StackTrace { blocks, final_in: x, final_inv_rms: inv, out }
    }

    /// Encoder output (after the final norm), `[tokens × d_model]`.
    pub fn encode(&self, tokens: &[u32]) -> Vec<F> {
        self.run_encoder_packed(tokens, &[tokens.len()], false, &mut None).out
    }

    /// Cross-attention keys and values of every decoder block, `[m × inner]` each, from the encoder
    /// output of `m` tokens: computed once per prompt.
    fn cross_kv(&self, enc: &[F], m: usize, hook: &mut Option<ForwardHook<'_, F>>) -> Vec<(Vec<F>, Vec<F>)> {
        (0..self.cfg.num_decoder_layers)
            .map(|l| {
                let ca = self.decoder.blocks[l].cross_attn.as_ref().expect("decoder block has cross-attention");
                let mut k = ca.k.forward(enc, m);
                fire(hook, self.site_index(StackKind::Decoder, l, T5Proj::CrossK), &mut k);
                let mut v = ca.v.forward(enc, m);
                fire(hook, self.site_index(StackKind::Decoder, l, T5Proj::CrossV), &mut v);
                (k, v)
            })
            .collect()
    }

    /// The decoder over `tokens`: the rows of `parts` one after another, each part
    /// cross-attending to its own encoder rows. With a cache (one part only), the rows continue
    /// the cached sequence.
    fn run_decoder(
        &self,
        tokens: &[u32],
        parts: &[DecoderPart],
        cross: &[(Vec<F>, Vec<F>)],
        mut cache: Option<&mut DecoderCache<F>>,
        keep: bool,
        hook: &mut Option<ForwardHook<'_, F>>,
    ) -> StackTrace<F> {
        let n = tokens.len();
        debug_assert_eq!(parts.iter().map(|p| p.rows.len()).sum::<usize>(), n, "parts cover the tokens");
        debug_assert!(cache.is_none() || parts.len() == 1, "a cache continues one sequence");
        let mut x = self.embed(tokens);
        let biases: Vec<Vec<F>> = parts
            .iter()
            .map(|p| match cache.as_deref() {
                Some(c) => self.position_bias(StackKind::Decoder, &p.rows, &Rows::single(0, c.len + n)),
                None => self.position_bias(StackKind::Decoder, &p.rows, &p.rows),
            })
            .collect();
        let mut self_segments = Vec::with_capacity(parts.len());
        let mut cross_segments = Vec::with_capacity(parts.len());
        let mut start = 0;
        for (p, bias) in parts.iter().zip(&biases) {
            let q = start..start + p.rows.len();
            let k = match cache.as_deref() {
                Some(c) => 0..c.len + n,
                None => q.clone(),
            };
            self_segments.push(Segment { q: q.clone(), k, bias: Some(bias.as_slice()) });
            cross_segments.push(Segment { q, k: p.enc.clone(), bias: None });
            start += p.rows.len();
        }
        let mut blocks = Vec::with_capacity(self.cfg.num_decoder_layers);
        for (l, (ck, cv)) in cross.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            blocks.push(self.block_forward(
                StackKind::Decoder,
                l,
                &mut x,
                n,
                &self_segments,
                layer_cache,
                Some(CrossInput { k: ck, v: cv, segments: &cross_segments }),
                keep,
                hook,
            ));
        }
        if let Some(c) = cache {
            c.len += n;
        }
        let (out, inv) = rms_norm(&x, &self.decoder.final_norm, self.cfg.layer_norm_epsilon);
        StackTrace { blocks, final_in: x, final_inv_rms: inv, out }
    }

    fn head(&self) -> &Weights<F> {
        self.lm_head.as_ref().unwrap_or(&self.shared)
    }

    fn output_scale(&self) -> F {
        if self.cfg.scale_decoder_outputs {
            F::from_f64(1.0 / (self.cfg.d_model as f64).sqrt())
        } else {
            F::ONE
        }
    }

    /// Logits `[rows × vocab]` from decoder output rows (after the final norm).
    pub fn logits(&self, hidden: &[F], rows: usize) -> Vec<F> {
        let s = self.output_scale();
        let scaled: Vec<F>;
        let h = if self.cfg.scale_decoder_outputs {
            scaled = hidden.iter().map(|&v| v * s).collect();
            &scaled
        } else {
            hidden
        };
        self.head().linear(h, rows, None, self.cfg.vocab_size)
    }

    /// Logits at every decoder position for `decoder_input` (starting with the decoder start
    /// token) after `prompt`: transformers' `model(input_ids, decoder_input_ids).logits`.
    pub fn forward_logits(&self, prompt: &[u32], decoder_input: &[u32]) -> Vec<F> {
        let enc = self.encode(prompt);
        let m = prompt.len();
        let cross = self.cross_kv(&enc, m, &mut None);
        let rows = Rows::single(0, decoder_input.len());
        let parts = [DecoderPart { rows, enc: 0..m }];
        let dec = self.run_decoder(decoder_input, &parts, &cross, None, false, &mut None);
        self.logits(&dec.out, decoder_input.len())
    }

    /// The same model with weights converted to another float type (f64 for gradient checks).
    pub fn cast<G: Float>(&self) -> T5Model<G> {
        let c = |v: &Vec<F>| v.iter().map(|x| G::from_f64(x.to_f64())).collect::<Vec<G>>();
        let cl = |l: &Linear<F>| l.cast::<G>();
        let ca = |a: &Attention<F>| Attention { q: cl(&a.q), k: cl(&a.k), v: cl(&a.v), o: cl(&a.o) };
        let cs = |s: &Stack<F>| Stack {
            blocks: s
                .blocks
                .iter()
                .map(|b| Block {
                    self_norm: c(&b.self_norm),
                    self_attn: ca(&b.self_attn),
                    cross_norm: b.cross_norm.as_ref().map(c),
                    cross_attn: b.cross_attn.as_ref().map(ca),
                    ffn_norm: c(&b.ffn_norm),
                    ffn: FeedForward { wi_0: cl(&b.ffn.wi_0), wi_1: b.ffn.wi_1.as_ref().map(cl), wo: cl(&b.ffn.wo) },
                })
                .collect(),
            final_norm: c(&s.final_norm),
            relative_bias: c(&s.relative_bias),
        };
        T5Model::new(
            self.cfg.clone(),
            self.shared.cast(),
            cs(&self.encoder),
            cs(&self.decoder),
            self.lm_head.as_ref().map(Weights::cast),
        )
    }
}

impl<F> T5Model<F> {
    /// Number of weights (the embedding counted once; the LM head when it is separate).
    pub fn parameter_count(&self) -> usize {
        let lin = |l: &Linear<F>| l.weight.len();
        let attn = |a: &Attention<F>| lin(&a.q) + lin(&a.k) + lin(&a.v) + lin(&a.o);
        let stack = |s: &Stack<F>| {
            s.final_norm.len()
                + s.relative_bias.len()
                + s.blocks
                    .iter()
                    .map(|b| {
                        b.self_norm.len()
                            + attn(&b.self_attn)
                            + b.cross_norm.as_ref().map_or(0, Vec::len)
                            + b.cross_attn.as_ref().map_or(0, attn)
                            + b.ffn_norm.len()
                            + lin(&b.ffn.wi_0)
                            + b.ffn.wi_1.as_ref().map_or(0, lin)
                            + lin(&b.ffn.wo)
                    })
                    .sum::<usize>()
        };
        self.shared.len() + stack(&self.encoder) + stack(&self.decoder) + self.lm_head.as_ref().map_or(0, Weights::len)
    }
}

impl<F: Float> LanguageModel<F> for T5Model<F> {
    fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }

    fn score(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64> {
        self.score_candidates(prompt, candidates)
    }

    fn score_many(&self, items: &[(&[u32], &[Vec<u32>])]) -> Vec<Vec<f64>> {
        self.score_batch(items)
    }

    fn logprob_with_grads(
        &self,
        prompt: &[u32],
        candidate: &[u32],
        hook: Option<ForwardHook<'_, F>>,
        visit: GradVisitor<'_, F>,
    ) -> f64 {
        self.logprob_and_grads(prompt, candidate, hook, visit)
    }

    fn generate(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
        self.generate_greedy(prompt, max_new, stop)
    }

    fn next_token_logits(&self, prompt: &[u32], hook: Option<ForwardHook<'_, F>>) -> Vec<f64> {
        let mut hook = hook;
        let m = prompt.len();
        let enc = self.run_encoder_packed(prompt, &[m], false, &mut hook).out;
        let cross = self.cross_kv(&enc, m, &mut hook);
        let mut cache = DecoderCache { layers: vec![(Vec::new(), Vec::new()); self.cfg.num_decoder_layers], len: 0 };
        let parts = [DecoderPart { rows: Rows::single(0, 1), enc: 0..m }];
        let start = [self.cfg.decoder_start_token_id];
        let dec = self.run_decoder(&start, &parts, &cross, Some(&mut cache), false, &mut hook);
        self.logits(&dec.out, 1)[..self.cfg.vocab_size].iter().map(|x| x.to_f64()).collect()
    }

    /// The encoder runs (traced) once per prompt and its cross-attention keys and values are
    /// computed once: the candidates are scored from them, and every chosen candidate's backward
    /// pass reuses the encoder trace.
    fn score_and_differentiate(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
        pick: &mut dyn FnMut(&[f64]) -> Vec<usize>,
        visit: CandidateGradVisitor<'_, F>,
    ) -> Vec<f64> {
        let enc = self.run_encoder(prompt, &mut None);
        let cross = self.cross_kv(&enc.out, prompt.len(), &mut None);
        let logprobs = self.score_packed(&cross, &[(0..prompt.len(), candidates)]).pop().unwrap_or_default();
        // Each chosen candidate's decoder pass, then one encoder backward pass over all their
        // gradients at the encoder output, stacked: the encoder's weights are read once.
        let (mut order, mut d_enc) = (Vec::new(), Vec::new());
        for (k, c) in pick(&logprobs).into_iter().enumerate() {
            if !candidates[c].is_empty() {
                let (_, g) = self.decoder_backward(&enc, &cross, &candidates[c], &mut None, k, visit);
                order.push(k);
                d_enc.extend(g);
            }
        }
        if !order.is_empty() {
            self.encoder_backward(&enc, d_enc, order.len(), &mut |copy, site, a, g| visit(order[copy], site, a, g));
        }
        logprobs
    }

    fn prune_target(&mut self, site: usize) -> &mut Linear<F> {
        let key = self.site_keys[site];
        let stack = match key.stack {
            StackKind::Encoder => &mut self.encoder,
            StackKind::Decoder => &mut self.decoder,
        };
        let b = &mut stack.blocks[key.layer];
        match key.proj {
            T5Proj::Q => &mut b.self_attn.q,
            T5Proj::K => &mut b.self_attn.k,
            T5Proj::V => &mut b.self_attn.v,
            T5Proj::O => &mut b.self_attn.o,
            T5Proj::CrossQ | T5Proj::CrossK | T5Proj::CrossV | T5Proj::CrossO => {
                let ca = b.cross_attn.as_mut().expect("decoder block has cross-attention");
                match key.proj {
                    T5Proj::CrossQ => &mut ca.q,
                    T5Proj::CrossK => &mut ca.k,
                    T5Proj::CrossV => &mut ca.v,
                    _ => &mut ca.o,
                }
            }
            T5Proj::Wi0 | T5Proj::Wi => &mut b.ffn.wi_0,
            // A zero row of wi_1 (gated) or wi (plain) makes the activation unit exactly 0.
            T5Proj::Wi1 | T5Proj::Act => match b.ffn.wi_1.as_mut() {
                Some(w1) => w1,
                None => &mut b.ffn.wi_0,
            },
            T5Proj::Wo => &mut b.ffn.wo,
        }
    }

    fn prune_target_name(&self, site: usize) -> String {
        let key = self.site_keys[site];
        match key.proj {
            T5Proj::Act => {
                let proj = if self.cfg.gated { T5Proj::Wi1 } else { T5Proj::Wi };
                T5Site { proj, ..key }.module_name()
            }
            _ => key.module_name(),
        }
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn family(&self) -> Family {
        Family::EncoderDecoder
    }

    fn describe(&self) -> serde_json::Value {
        let cfg = &self.cfg;
        json!({
            "family": "encoder-decoder",
            "architecture": "t5",
            "variant": if cfg.gated { "t5 v1.1 (gated FFN)" } else { "t5 v1.0" },
            "parameters": self.parameter_count(),
            "layers": cfg.num_layers,
            "decoder_layers": cfg.num_decoder_layers,
            "d_model": cfg.d_model,
            "d_ff": cfg.d_ff,
            "d_kv": cfg.d_kv,
            "attention_heads": cfg.num_heads,
            "vocab_size": cfg.vocab_size,
            "feed_forward_proj": cfg.feed_forward_proj,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "tied_embeddings": self.lm_head.is_none(),
            "scale_decoder_outputs": cfg.scale_decoder_outputs,
            "decoder_start_token_id": cfg.decoder_start_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn direct_generator_equals_splitmix64_stream() {
        let name = "encoder.block.0.layer.0.SelfAttention.q.weight";
        let seed = 2024;
        let got = synthetic::values(name, 5, 0.0, 1.0, seed);
        let mut r = SplitMix64::new(synthetic::fnv1a64(name.as_bytes()) ^ seed);
        for g in got {
            assert_eq!(g, (2.0 * r.next_f64() - 1.0) as f32);
        }
        // FNV-1a reference value ("a" → af63dc4c8601ec8c).
        assert_eq!(synthetic::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bucket_matches_known_values() {
        // Exact small distances, sign split in the encoder, clamping at the far end.
        assert_eq!(relative_position_bucket(0, true, 32, 128), 0);
        assert_eq!(relative_position_bucket(3, true, 32, 128), 19);
        assert_eq!(relative_position_bucket(-3, true, 32, 128), 3);
        assert_eq!(relative_position_bucket(-1000, true, 32, 128), 15);
        assert_eq!(relative_position_bucket(1000, true, 32, 128), 31);
        assert_eq!(relative_position_bucket(5, false, 32, 128), 0);
        assert_eq!(relative_position_bucket(-5, false, 32, 128), 5);
        assert_eq!(relative_position_bucket(-1000, false, 32, 128), 31);
    }

    #[test]
    fn site_names_follow_transformers() {
        let cfg = T5Config::from_json(
            Path::new("config.json"),
            &json!({"model_type": "t5", "vocab_size": 100, "d_model": 8, "d_kv": 2, "d_ff": 16, "num_layers": 2,
                    "num_decoder_layers": 3, "num_heads": 2, "feed_forward_proj": "gated-gelu",
                    "tie_word_embeddings": false}),
        )
        .unwrap();
        let model = synthetic::model(&cfg, 1).unwrap();
        let names: Vec<&str> = model.sites().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(model.sites().len(), 2 * 8 + 3 * 12);
        assert_eq!(names[0], "encoder.block.0.layer.0.SelfAttention.q");
        assert_eq!(names[6], "encoder.block.0.layer.1.DenseReluDense.act");
        assert!(names.contains(&"decoder.block.2.layer.1.EncDecAttention.k"));
        assert!(names.contains(&"decoder.block.2.layer.2.DenseReluDense.wo"));
        for (i, k) in model.site_keys().iter().enumerate() {
            assert_eq!(model.site_index(k.stack, k.layer, k.proj), i);
        }
        let universe = crate::model::universe_sizes(model.sites());
        // Encoder block: q, k, v (4 each), o (8), wi_0, wi_1 (16 each), wo (8); decoder adds cross q, k, v, o.
        assert_eq!(universe, (2 * (3 * 4 + 8 + 2 * 16 + 8) + 3 * (6 * 4 + 2 * 8 + 2 * 16 + 8), 5 * 16));
    }
}
