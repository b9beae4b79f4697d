//! The decoder-only engine: Llama 2/3, SmolLM2, Mistral, Qwen2/Qwen3, and the families that are
//! this block with options (Gemma 2/3: sandwich norms, GeGLU, soft-caps, local/global layers).
//!
//! Forward and backward are written out by hand from the kernels in [`crate::model::kernels`]. The backward pass returns the gradient of a
//! scalar objective with respect to every linear output (`q, k, v, o, gate, up, down` of every
//! layer) in one sweep, and never forms a weight gradient.
//!
//! Conventions: activations are row-major `[tokens × width]`; weights are row-major
//! `[out × in]` in the transformers layout (rotate-half RoPE, so GGUF q/k rows are un-permuted
//! on load).

mod backward;
pub mod config;
pub mod load;
pub mod scoring;

pub use load::LOADER;

use crate::model::kernels::attention::join_tables;
use crate::model::kernels::{
    attention, attention_backward, gated, gated_backward, rms_norm, rms_norm_backward, AttnSpec, AttnTrace, QueryRows,
    RopeTable,
};
use crate::model::linear::Weights;
use crate::model::{Family, LanguageModel, Linear, LlamaConfig, ModuleId, Proj, SiteInfo, Universe};
pub use crate::model::{ForwardHook, GradVisitor};
use crate::tensor::Float;

#[derive(Clone, Debug)]
pub struct Layer<F> {
    pub attn_norm: Vec<F>,
    pub q: Linear<F>,
    pub k: Linear<F>,
    pub v: Linear<F>,
    pub o: Linear<F>,
    pub mlp_norm: Vec<F>,
    pub gate: Linear<F>,
    pub up: Linear<F>,
    pub down: Linear<F>,
    /// Per-head norms of q and k (`[head_dim]`; empty without `qk_norm`).
    pub q_norm: Vec<F>,
    pub k_norm: Vec<F>,
    /// Norms of the attention and FFN outputs (`[hidden]`; empty without `post_norms`).
    pub post_attn_norm: Vec<F>,
    pub post_mlp_norm: Vec<F>,
}

impl<F> Layer<F> {
    /// The linear layer holding `p`'s rows. With fused projections `q` holds `qkv_proj` and
    /// `gate` holds `gate_up_proj` (their `k`, `v`, `up` are empty).
    pub fn proj_mut(&mut self, p: Proj) -> &mut Linear<F> {
        match p {
            Proj::Q | Proj::Qkv => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::O => &mut self.o,
            Proj::Gate | Proj::GateUp => &mut self.gate,
            Proj::Up | Proj::Act => &mut self.up,
            Proj::Down => &mut self.down,
        }
    }
}

/// A Llama-family model with weights in `F`.
#[derive(Clone, Debug)]
pub struct LlamaModel<F> {
    pub cfg: LlamaConfig,
    /// `[vocab × hidden]`
    pub embed: Weights<F>,
    pub layers: Vec<Layer<F>>,
    pub final_norm: Vec<F>,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<Weights<F>>,
    rope: RopeTable,
    /// The sliding-window layers' table when their RoPE base differs (Gemma 3).
    rope_local: Option<RopeTable>,
    sites: Vec<SiteInfo>,
}

/// Keys (after RoPE) and values of the positions seen so far, per layer.
#[derive(Clone, Debug, Default)]
pub struct KvCache<F> {
    layers: Vec<(Vec<F>, Vec<F>)>,
    len: usize,
}

impl<F: Float> KvCache<F> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position from `len` on (used to score several continuations of one prompt).
    pub fn truncate(&mut self, len: usize, kv_width: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in &mut self.layers {
            k.truncate(len * kv_width);
            v.truncate(len * kv_width);
        }
        self.len = len;
    }
}

/// Activations kept by a traced forward pass for the backward pass.
pub struct Trace<F> {
    tokens: usize,
    layers: Vec<LayerTrace<F>>,
    /// Residual stream entering the final norm.
    final_in: Vec<F>,
    final_inv_rms: Vec<F>,
    /// Output of the final norm, `[tokens × hidden]`.
    pub hidden: Vec<F>,
}

struct LayerTrace<F> {
    x_in: Vec<F>,
    inv_rms1: Vec<F>,
    /// Linear outputs as seen by the rest of the network (after any forward hook).
    q: Vec<F>,
    k: Vec<F>,
    v: Vec<F>,
    /// 1/rms of every head row of q and k (empty without `qk_norm`).
    inv_q: Vec<F>,
    inv_k: Vec<F>,
    q_rot: Vec<F>,
    k_rot: Vec<F>,
    /// Attention probabilities (and capped logits) `[heads × tokens × tokens]`.
    attn: AttnTrace<F>,
    o: Vec<F>,
    inv_post_attn: Vec<F>,
    x_mid: Vec<F>,
    inv_rms2: Vec<F>,
    gate: Vec<F>,
    up: Vec<F>,
    act: Vec<F>,
    down: Vec<F>,
    inv_post_mlp: Vec<F>,
}

impl<F: Float> LlamaModel<F> {
    pub fn new(
        cfg: LlamaConfig,
        embed: Weights<F>,
        layers: Vec<Layer<F>>,
        final_norm: Vec<F>,
        lm_head: Option<Weights<F>>,
    ) -> Self {
        let positions = cfg.max_position_embeddings;
        let rope = RopeTable::new(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, positions);
        let rope_local = cfg.local_rope_theta.map(|theta| RopeTable::new(cfg.head_dim, theta, None, positions));
        let sites = (0..cfg.num_layers * cfg.layer_sites().len())
            .map(|i| {
                let id = cfg.site_at(i);
                let kind = match id.proj {
                    Proj::Q => "q",
                    Proj::K => "k",
                    Proj::V => "v",
                    Proj::O => "o",
                    Proj::Gate => "gate",
                    Proj::Up => "up",
                    Proj::Act => "act",
                    Proj::Down => "down",
                    Proj::Qkv => "qkv",
                    Proj::GateUp => "gate_up",
                };
                let universe = if id.proj == Proj::Act { Universe::Ffn } else { Universe::Linear };
                SiteInfo {
                    name: id.to_string(),
                    layer: id.layer,
                    kind,
                    stack: "decoder",
                    width: cfg.out_dim(id.proj),
                    universe,
                }
            })
            .collect();
        LlamaModel { cfg, embed, layers, final_norm, lm_head, rope, rope_local, sites }
    }

    fn rope_of(&self, layer: usize) -> &RopeTable {
        match &self.rope_local {
            Some(local) if self.cfg.is_sliding(layer) => local,
            _ => &self.rope,
        }
    }

    fn attn_spec(&self, layer: usize) -> AttnSpec {
        let cfg = &self.cfg;
        AttnSpec {
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attn_scale,
            window: cfg.window(layer),
            softcap: cfg.attn_softcap,
        }
    }

    pub fn new_cache(&self) -> KvCache<F> {
        KvCache { layers: vec![(Vec::new(), Vec::new()); self.layers.len()], len: 0 }
    }

    fn kv_width(&self) -> usize {
        self.cfg.num_kv_heads * self.cfg.head_dim
    }

    /// Truncate a cache of this model back to `len` positions.
    pub fn truncate_cache(&self, cache: &mut KvCache<F>, len: usize) {
        cache.truncate(len, self.kv_width());
    }

    fn embed_tokens(&self, tokens: &[u32]) -> Vec<F> {
        let d = self.cfg.hidden_size;
        let mut x = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            self.embed.extend_with_row(&mut x, t, d);
        }
        if self.cfg.embed_scale != 1.0 {
            // Gemma multiplies by √hidden rounded to the activation type, as transformers does.
            let s = F::from_f64(self.cfg.embed_scale);
            x.iter_mut().for_each(|v| *v *= s);
        }
        x
    }

    /// Run `tokens` after the positions already in `cache`, appending to it. Returns the output of
    /// the final norm for the new positions, `[tokens × hidden]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache<F>, hook: Option<ForwardHook<'_, F>>) -> Vec<F> {
        self.run(tokens, cache, hook, None)
    }

    /// Several continuations of the positions in `cache` in one pass (see [`QueryRows::packed`]):
    /// each segment sees the cache and itself only, so its outputs are those of its own
    /// [`Self::forward`] (up to the order of additions). The weights are read once for all of
    /// them instead of once per continuation. Returns the final-norm output of every segment's
    /// rows, in order; the cache holds them all afterwards (truncate it back to drop them).
    pub fn forward_packed(&self, segments: &[&[u32]], cache: &mut KvCache<F>) -> Vec<F> {
        let tokens: Vec<u32> = segments.concat();
        let lens: Vec<usize> = segments.iter().map(|s| s.len()).collect();
        let rows = QueryRows::packed(cache.len, &lens);
        self.run_rows(&tokens, &rows, cache, None, None).2
    }

    /// Forward over a whole sequence, keeping what the backward pass needs.
    pub fn forward_traced(&self, tokens: &[u32], hook: Option<ForwardHook<'_, F>>) -> Trace<F> {
        let mut cache = self.new_cache();
        self.forward_traced_after(tokens, &mut cache, hook)
    }

    /// Traced forward of `tokens` continuing the positions in `cache` (appending to it). The
    /// result is a segment: [`Self::join_traces`] it after the trace of the earlier positions.
    pub fn forward_traced_after(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<F>,
        hook: Option<ForwardHook<'_, F>>,
    ) -> Trace<F> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let (final_in, final_inv_rms, hidden) = self.run_inner(tokens, cache, hook, Some(&mut layers));
        Trace { tokens: tokens.len(), layers, final_in, final_inv_rms, hidden }
    }

    /// One trace of `head ++ tail`, where `tail` was traced after `head` (its attention saw
    /// `head`'s keys). The backward pass then runs over the whole sequence unchanged, so a prompt
    /// traced once can be differentiated together with several different answers.
    pub fn join_traces(&self, head: &Trace<F>, tail: &Trace<F>) -> Trace<F> {
        let (a, b) = (head.tokens, tail.tokens);
        let n = a + b;
        let nh = self.cfg.num_heads;
        let cat = |x: &Vec<F>, y: &Vec<F>| -> Vec<F> { x.iter().chain(y).copied().collect() };
        let layers = head
            .layers
            .iter()
            .zip(&tail.layers)
            .map(|(h, t)| {
                // Head rows see `a` keys, tail rows all `n`; head rows are padded with zero probability.
                let attn = AttnTrace {
                    probs: join_tables(nh, a, b, &h.attn.probs, &t.attn.probs),
                    caps: join_tables(nh, a, b, &h.attn.caps, &t.attn.caps),
                };
                LayerTrace {
                    x_in: cat(&h.x_in, &t.x_in),
                    inv_rms1: cat(&h.inv_rms1, &t.inv_rms1),
                    q: cat(&h.q, &t.q),
                    k: cat(&h.k, &t.k),
                    v: cat(&h.v, &t.v),
                    inv_q: cat(&h.inv_q, &t.inv_q),
                    inv_k: cat(&h.inv_k, &t.inv_k),
                    q_rot: cat(&h.q_rot, &t.q_rot),
                    k_rot: cat(&h.k_rot, &t.k_rot),
                    attn,
                    o: cat(&h.o, &t.o),
                    inv_post_attn: cat(&h.inv_post_attn, &t.inv_post_attn),
                    x_mid: cat(&h.x_mid, &t.x_mid),
                    inv_rms2: cat(&h.inv_rms2, &t.inv_rms2),
                    gate: cat(&h.gate, &t.gate),
                    up: cat(&h.up, &t.up),
                    act: cat(&h.act, &t.act),
                    down: cat(&h.down, &t.down),
                    inv_post_mlp: cat(&h.inv_post_mlp, &t.inv_post_mlp),
                }
            })
            .collect();
        Trace {
            tokens: n,
            layers,
            final_in: cat(&head.final_in, &tail.final_in),
            final_inv_rms: cat(&head.final_inv_rms, &tail.final_inv_rms),
            hidden: cat(&head.hidden, &tail.hidden),
        }
    }

    fn run(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<F>,
        hook: Option<ForwardHook<'_, F>>,
        traces: Option<&mut Vec<LayerTrace<F>>>,
    ) -> Vec<F> {
        self.run_inner(tokens, cache, hook, traces).2
    }

    fn run_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<F>,
        hook: Option<ForwardHook<'_, F>>,
        traces: Option<&mut Vec<LayerTrace<F>>>,
    ) -> (Vec<F>, Vec<F>, Vec<F>) {
        let rows = QueryRows::causal(cache.len, tokens.len());
        self.run_rows(tokens, &rows, cache, hook, traces)
    }

    /// The forward pass of `tokens` placed as `rows` says, after the cache (appended to it).
    /// Returns the residual stream entering the final norm, its inverse RMS, and the norm's output.
    fn run_rows(
        &self,
        tokens: &[u32],
        rows: &QueryRows,
        cache: &mut KvCache<F>,
        mut hook: Option<ForwardHook<'_, F>>,
        mut traces: Option<&mut Vec<LayerTrace<F>>>,
    ) -> (Vec<F>, Vec<F>, Vec<F>) {
        debug_assert_eq!(rows.len(), tokens.len());
        debug_assert_eq!(rows.base(), cache.len);
        let n = tokens.len();
        let mut x = self.embed_tokens(tokens);
        for (l, layer) in self.layers.iter().enumerate() {
            let (k_cache, v_cache) = &mut cache.layers[l];
            let t = self.layer_forward(l, layer, &mut x, rows, k_cache, v_cache, &mut hook);
            if let Some(tr) = traces.as_deref_mut() {
                tr.push(t);
            }
        }
        cache.len += n;
        let (hidden, inv) = rms_norm(&x, &self.final_norm, self.cfg.rms_norm_eps);
        (x, inv, hidden)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        l: usize,
        layer: &Layer<F>,
        x: &mut [F],
        rows: &QueryRows,
        k_cache: &mut Vec<F>,
        v_cache: &mut Vec<F>,
        hook: &mut Option<ForwardHook<'_, F>>,
    ) -> LayerTrace<F> {
        let cfg = &self.cfg;
        let n = rows.len();
        let mut apply = |proj: Proj, y: &mut Vec<F>| {
            if let Some(h) = hook.as_mut() {
                h(cfg.site_index(l, proj), y);
            }
        };
        let x_in = x.to_vec();
        let (h, inv_rms1) = rms_norm(x, &layer.attn_norm, cfg.rms_norm_eps);
        let (qw, kvw) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let (q, k, v) = if cfg.fused {
            let mut qkv = layer.q.forward(&h, n);
            apply(Proj::Qkv, &mut qkv);
            let mut parts = split_cols(&qkv, n, &[qw, kvw, kvw]).into_iter();
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
        } else {
            let mut q = layer.q.forward(&h, n);
            apply(Proj::Q, &mut q);
            let mut k = layer.k.forward(&h, n);
            apply(Proj::K, &mut k);
            let mut v = layer.v.forward(&h, n);
            apply(Proj::V, &mut v);
            (q, k, v)
        };

        // Qwen3 / Gemma 3: each head's q and k are RMS-normalised before the rotation.
        let ((mut q_rot, inv_q), (mut k_rot, inv_k)) = if cfg.qk_norm {
            (rms_norm(&q, &layer.q_norm, cfg.rms_norm_eps), rms_norm(&k, &layer.k_norm, cfg.rms_norm_eps))
        } else {
            ((q.clone(), Vec::new()), (k.clone(), Vec::new()))
        };
        let rope = self.rope_of(l);
        for (start, len) in rows.segments() {
            let pos0 = rows.position(start);
            rope.apply(&mut q_rot[start * qw..(start + len) * qw], len, cfg.num_heads, cfg.head_dim, pos0, false);
            rope.apply(&mut k_rot[start * kvw..(start + len) * kvw], len, cfg.num_kv_heads, cfg.head_dim, pos0, false);
        }
        k_cache.extend_from_slice(&k_rot);
        v_cache.extend_from_slice(&v);

        let (heads_out, attn) = attention(&self.attn_spec(l), &q_rot, k_cache, v_cache, rows);
        let mut o = layer.o.forward(&heads_out, n);
        apply(Proj::O, &mut o);
        let inv_post_attn = add_residual(x, &o, &layer.post_attn_norm, cfg.rms_norm_eps);
        let x_mid = x.to_vec();
        let (h2, inv_rms2) = rms_norm(x, &layer.mlp_norm, cfg.rms_norm_eps);
        let ff = cfg.intermediate_size;
        let (gate, up) = if cfg.fused {
            let mut gate_up = layer.gate.forward(&h2, n);
            apply(Proj::GateUp, &mut gate_up);
            let mut parts = split_cols(&gate_up, n, &[ff, ff]).into_iter();
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
        } else {
            let mut gate = layer.gate.forward(&h2, n);
            apply(Proj::Gate, &mut gate);
            let mut up = layer.up.forward(&h2, n);
            apply(Proj::Up, &mut up);
            (gate, up)
        };
        let (mut act, _) = gated(cfg.activation, &gate, &up, ff);
        apply(Proj::Act, &mut act);
        let mut down = layer.down.forward(&act, n);
        apply(Proj::Down, &mut down);
        let inv_post_mlp = add_residual(x, &down, &layer.post_mlp_norm, cfg.rms_norm_eps);
        LayerTrace {
            x_in,
            inv_rms1,
            q,
            k,
            v,
            inv_q,
            inv_k,
            q_rot,
            k_rot,
            attn,
            o,
            inv_post_attn,
            x_mid,
            inv_rms2,
            gate,
            up,
            act,
            down,
            inv_post_mlp,
        }
    }

    /// Logits `[rows × vocab]` for the given rows of a final-norm output.
    pub fn logits(&self, hidden: &[F], rows: &[usize]) -> Vec<F> {
        let d = self.cfg.hidden_size;
        let mut sel = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            sel.extend_from_slice(&hidden[r * d..(r + 1) * d]);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = head.linear(&sel, rows.len(), None, self.cfg.vocab_size);
        if let Some(cap) = self.cfg.final_softcap {
            // Gemma 2: logits ← cap · tanh(logits / cap).
            let c = F::from_f64(cap);
            logits.iter_mut().for_each(|z| *z = c * (*z / c).tanh());
        }
        logits
    }

}

/// The column blocks of a `[n × Σwidths]` matrix, each `[n × width]` (a fused projection's parts).
fn split_cols<F: Float>(x: &[F], n: usize, widths: &[usize]) -> Vec<Vec<F>> {
    let total: usize = widths.iter().sum();
    let mut start = 0;
    widths
        .iter()
        .map(|&w| {
            let part = (0..n).flat_map(|i| x[i * total + start..i * total + start + w].iter().copied()).collect();
            start += w;
            part
        })
        .collect()
}

/// The inverse of [`split_cols`]: `[n × w_i]` blocks side by side.
fn concat_cols<F: Float>(parts: &[&[F]], n: usize) -> Vec<F> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for i in 0..n {
        for p in parts {
            let w = p.len() / n;
            out.extend_from_slice(&p[i * w..(i + 1) * w]);
        }
    }
    out
}

/// `x += out`, or `x += rms_norm(out)` when `norm` is non-empty (Gemma's post-norms); returns the
/// norm's 1/rms per row (empty without a norm).
fn add_residual<F: Float>(x: &mut [F], out: &[F], norm: &[F], eps: f64) -> Vec<F> {
    if norm.is_empty() {
        x.iter_mut().zip(out).for_each(|(xi, &o)| *xi += o);
        return Vec::new();
    }
    let (normed, inv) = rms_norm(out, norm, eps);
    x.iter_mut().zip(&normed).for_each(|(xi, &o)| *xi += o);
    inv
}


impl<F> LlamaModel<F> {
    /// The module whose row `r` is zeroed to silence unit `r` of `site`. An FFN activation unit
    /// `act(gate_r) · up_r` is silenced through `up` (its row `r`); with a fused `gate_up_proj`,
    /// through the gate half (row `r` too: `act(0) = 0` for SiLU and GELU), so that neuron rows
    /// stay rows of the module they name.
    fn prune_module(&self, site: usize) -> ModuleId {
        let id = self.cfg.site_at(site);
        let proj = match id.proj {
            Proj::Act if self.cfg.fused => Proj::GateUp,
            Proj::Act => Proj::Up,
            p => p,
        };
        ModuleId { layer: id.layer, proj }
    }

    /// Number of weights (embedding and head counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let lin = |l: &Linear<F>| l.weight.len() + l.bias.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn_norm.len()
                    + l.mlp_norm.len()
                    + l.q_norm.len()
                    + l.k_norm.len()
                    + l.post_attn_norm.len()
                    + l.post_mlp_norm.len()
                    + [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(lin).sum::<usize>()
            })
            .sum();
        self.embed.len() + layers + self.final_norm.len() + self.lm_head.as_ref().map_or(0, Weights::len)
    }
}

impl<F: Float> LanguageModel<F> for LlamaModel<F> {
    fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }

    fn score(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64> {
        scoring::score(self, prompt, candidates)
    }

    fn logprob_with_grads(
        &self,
        prompt: &[u32],
        candidate: &[u32],
        hook: Option<ForwardHook<'_, F>>,
        visit: GradVisitor<'_, F>,
    ) -> f64 {
        scoring::logprob_with_grads(self, prompt, candidate, hook, visit)
    }

    fn generate(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
        scoring::generate(self, prompt, max_new, stop)
    }

    fn next_token_logits(&self, prompt: &[u32], hook: Option<ForwardHook<'_, F>>) -> Vec<f64> {
        let mut cache = self.new_cache();
        let hidden = self.forward(prompt, &mut cache, hook);
        self.logits(&hidden, &[prompt.len() - 1])[..self.cfg.vocab_size].iter().map(|x| x.to_f64()).collect()
    }

    /// Prompts are visited in lexicographic token order, so each one reuses the cached keys and
    /// values of its longest common prefix with the previous one.
    fn score_many(&self, items: &[(&[u32], &[Vec<u32>])]) -> Vec<Vec<f64>> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| items[a].0.cmp(items[b].0));
        let mut out = vec![Vec::new(); items.len()];
        let mut cache = self.new_cache();
        let mut cached: &[u32] = &[];
        for i in order {
            let (prompt, candidates) = items[i];
            let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            // At least the last prompt token is recomputed: its output predicts the answer.
            let keep = common.min(prompt.len() - 1);
            self.truncate_cache(&mut cache, keep);
            let hidden = self.forward(&prompt[keep..], &mut cache, None);
            let last = self.logits(&hidden, &[prompt.len() - keep - 1]);
            out[i] = scoring::score_candidates_after(self, &last, &mut cache, candidates);
            cached = prompt;
        }
        out
    }

    /// The prompt is run (traced) once; every candidate is scored from its cache, and each chosen
    /// one is traced after it and differentiated over the joined sequence.
    fn score_and_differentiate(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
        pick: &mut dyn FnMut(&[f64]) -> Vec<usize>,
        visit: crate::model::CandidateGradVisitor<'_, F>,
    ) -> Vec<f64> {
        let vocab = self.cfg.vocab_size;
        let mut cache = self.new_cache();
        let head = self.forward_traced_after(prompt, &mut cache, None);
        let base = cache.len();
        let last = self.logits(&head.hidden, &[prompt.len() - 1]);
        let logprobs = scoring::score_candidates_after(self, &last, &mut cache, candidates);
        for (k, c) in pick(&logprobs).into_iter().enumerate() {
            let cand = &candidates[c];
            let tail = self.forward_traced_after(cand, &mut cache, None);
            self.truncate_cache(&mut cache, base);
            let joint = self.join_traces(&head, &tail);
            let rows: Vec<usize> = (prompt.len() - 1..prompt.len() + cand.len() - 1).collect();
            let logits = self.logits(&joint.hidden, &rows);
            let d_logits = crate::model::logits::d_logprob_d_logits(&logits, cand, vocab);
            self.backward(&joint, &rows, &d_logits, &mut |site, a, g| visit(k, site, a, g));
        }
        logprobs
    }

    fn prune_target(&mut self, site: usize) -> &mut Linear<F> {
        let id = self.prune_module(site);
        self.layers[id.layer].proj_mut(id.proj)
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn family(&self) -> Family {
        Family::DecoderOnly
    }

    fn prune_target_name(&self, site: usize) -> String {
        self.prune_module(site).to_string()
    }

    fn describe(&self) -> serde_json::Value {
        let cfg = &self.cfg;
        serde_json::json!({
            "family": "decoder-only",
            "architecture": cfg.arch.name(),
            "parameters": self.parameter_count(),
            "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "attention_heads": cfg.num_heads,
            "key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling.is_some(),
            "tied_embeddings": cfg.tie_word_embeddings,
            "attention_bias": cfg.attention_bias,
            "sliding_window": cfg.sliding_window,
            "qk_norm": cfg.qk_norm,
            "activation": cfg.activation,
            "fused_projections": cfg.fused,
        })
    }
}
