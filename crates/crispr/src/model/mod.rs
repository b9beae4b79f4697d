//! Model definitions: configuration, module naming, and the per-family forward/backward code.

pub mod linear;
pub mod llama;
pub mod ops;
pub mod t5;

use std::fmt;

use crate::tensor::Float;
pub use linear::Linear;

/// Which member of the Llama family a checkpoint is; they differ only in details the loader and
/// the forward pass need to know (biases, sliding window, naming in `info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: usize },
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Keys further back than this many positions are invisible (Mistral); `None`: unlimited.
    pub sliding_window: Option<usize>,
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
}

/// The hooked sites of a Llama-family block, in forward order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    /// The gated activation `silu(gate) ⊙ up` (input of `down`): the `ffn` universe's units.
    Act,
    Down,
}

impl Proj {
    /// The linear layers (the `linear` universe), in forward order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
    /// Every hooked site, in forward order.
    pub const SITES: [Proj; 8] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Act, Proj::Down];

    /// The module path suffix in the transformers naming.
    pub fn hf_suffix(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Act => "mlp.act_fn",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The tensor name stem in GGUF files (`blk.N.<stem>.weight`).
    pub fn gguf_stem(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up | Proj::Act => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }
}

/// One hooked linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId {
    pub layer: usize,
    pub proj: Proj,
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "model.layers.{}.{}", self.layer, self.proj.hf_suffix())
    }
}

impl ModuleId {
    /// Parse a transformers module path such as `model.layers.7.mlp.down_proj`.
    pub fn parse(s: &str) -> Option<ModuleId> {
        let rest = s.strip_prefix("model.layers.")?;
        let (layer, suffix) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let proj = Proj::SITES.into_iter().find(|p| p.hf_suffix() == suffix)?;
        Some(ModuleId { layer, proj })
    }

    /// Index in the model's site table (see [`LanguageModel::sites`]).
    pub fn index(self) -> usize {
        self.layer * Proj::SITES.len() + Proj::SITES.iter().position(|&p| p == self.proj).expect("site")
    }

    pub fn from_index(i: usize) -> ModuleId {
        ModuleId { layer: i / Proj::SITES.len(), proj: Proj::SITES[i % Proj::SITES.len()] }
    }
}

impl LlamaConfig {
    /// Output width of a hooked module.
    pub fn out_dim(&self, p: Proj) -> usize {
        match p {
            Proj::Q => self.num_heads * self.head_dim,
            Proj::K | Proj::V => self.num_kv_heads * self.head_dim,
            Proj::O | Proj::Down => self.hidden_size,
            Proj::Gate | Proj::Up | Proj::Act => self.intermediate_size,
        }
    }

    /// Input width of a hooked module.
    pub fn in_dim(&self, p: Proj) -> usize {
        match p {
            Proj::O => self.num_heads * self.head_dim,
            Proj::Down | Proj::Act => self.intermediate_size,
            _ => self.hidden_size,
        }
    }

    /// Every hooked module, layer by layer in forward order.
    pub fn modules(&self) -> Vec<ModuleId> {
        (0..self.num_layers).flat_map(|layer| Proj::ALL.into_iter().map(move |proj| ModuleId { layer, proj })).collect()
    }

    /// Size of the `linear` neuron universe (every output unit of every hooked module).
    pub fn linear_universe(&self) -> usize {
        self.num_layers * Proj::ALL.iter().map(|&p| self.out_dim(p)).sum::<usize>()
    }

    /// Size of the `ffn` universe (gated activation units).
    pub fn ffn_universe(&self) -> usize {
        self.num_layers * self.intermediate_size
    }

    /// Check the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        check_limits(&[
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
        ])?;
        check_positive_finite(&[("rope_theta", self.rope_theta), ("rms_norm_eps", self.rms_norm_eps)])?;
        if self.max_position_embeddings == 0 {
            return Err("max_position_embeddings must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        Ok(())
    }
}

// Sanity limits on sizes read from a model's configuration. They sit far above any released model
// (Llama 3.1 405B: hidden 16384, FFN 53248, 126 layers, 128 heads; vocabularies ≤ 262144) and
// far below what would make a corrupt value allocate or loop without end before the weights are
// checked against the file.
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;

/// `name = value` must not exceed its limit.
pub fn check_limits(items: &[(&str, usize, usize)]) -> Result<(), String> {
    for &(name, v, max) in items {
        if v > max {
            return Err(format!("{name} = {v} is implausibly large (limit {max}): corrupt configuration?"));
        }
    }
    Ok(())
}

/// Constants the forward pass divides by or raises to a power must be finite and positive.
pub fn check_positive_finite(items: &[(&str, f64)]) -> Result<(), String> {
    for &(name, v) in items {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} = {v} must be a positive finite number"));
        }
    }
    Ok(())
}

/// The two neuron universes of the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Universe {
    /// Every output unit of every linear layer in the blocks (the paper's).
    Linear,
    /// The gated FFN activation units ("knowledge neurons").
    Ffn,
}

impl Universe {
    pub fn name(self) -> &'static str {
        match self {
            Universe::Linear => "linear",
            Universe::Ffn => "ffn",
        }
    }
}

/// One hooked site: a linear layer's output, or an FFN activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteInfo {
    /// Module path in the transformers naming, e.g. `model.layers.7.mlp.down_proj`.
    pub name: String,
    pub layer: usize,
    /// Short kind for grouping in reports: `q`, `k`, `v`, `o`, `gate`, `up`, `act`, `down`, …
    pub kind: &'static str,
    /// `"decoder"` for decoder-only models; `"encoder"`/`"decoder"` for T5.
    pub stack: &'static str,
    pub width: usize,
    pub universe: Universe,
}

/// Called with every site's output (`[tokens × width]`) right after it is computed; may modify it.
pub type ForwardHook<'a, F> = &'a mut dyn FnMut(usize, &mut [F]);

/// Receives, for every site, its activation and the objective's gradient with respect to it
/// (`[tokens × width]` each, over the positions the site sees) during a backward pass.
pub type GradVisitor<'a, F> = &'a mut dyn FnMut(usize, &[F], &[F]);

/// Like [`GradVisitor`], with the index of the differentiated candidate first.
pub type CandidateGradVisitor<'a, F> = &'a mut dyn FnMut(usize, usize, &[F], &[F]);

/// What the method needs from a model family. Token ids in, numbers out; prompt formatting lives
/// in [`crate::score::encode`].
pub trait LanguageModel<F: Float>: Send + Sync {
    /// Every hooked site, indexed as in hooks and visitors.
    fn sites(&self) -> &[SiteInfo];
    /// Log-probability of each candidate continuation of `prompt` (teacher-forced).
    fn score(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64>;
    /// `log P(candidate | prompt)`; calls `visit` for every site with its activation and the
    /// gradient of that log-probability. One forward and one backward pass, no weight gradients.
    fn logprob_with_grads(
        &self,
        prompt: &[u32],
        candidate: &[u32],
        hook: Option<ForwardHook<'_, F>>,
        visit: GradVisitor<'_, F>,
    ) -> f64;
    /// [`Self::score`] for many prompts. Families override this to reuse the work shared by
    /// prompts with a common prefix (the instruction, a shared context).
    fn score_many(&self, items: &[(&[u32], &[Vec<u32>])]) -> Vec<Vec<f64>> {
        items.iter().map(|(p, c)| self.score(p, c)).collect()
    }
    /// Logits of the first answer token after `prompt` (decoder-only: the next token; encoder–decoder:
    /// the decoder's first step), with `hook` seeing every site's output on the way. One forward
    /// pass: what retention checks (KL on neutral prompts) and activation diagnostics need.
    fn next_token_logits(&self, prompt: &[u32], hook: Option<ForwardHook<'_, F>>) -> Vec<f64>;
    /// Greedy decoding, stopping after any token in `stop`.
    fn generate(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32>;
    /// The linear layer whose `row` must be zeroed to silence unit `row` of `site` (the layer
    /// itself for a linear site; the `up`/`wi_1` projection for an FFN activation).
    fn prune_target(&mut self, site: usize) -> &mut Linear<F>;
    fn vocab_size(&self) -> usize;
    fn family(&self) -> Family;
    /// Architecture facts for `crispr info` and reports (a JSON object).
    fn describe(&self) -> serde_json::Value;

    /// The module whose rows [`Self::prune_target`] zeroes for `site`, in the checkpoint's own
    /// (transformers) naming, e.g. `model.layers.3.mlp.up_proj` for an FFN activation site.
    fn prune_target_name(&self, site: usize) -> String {
        self.sites()[site].name.clone()
    }

    /// Attribution's unit of work: score every candidate, let `pick` choose which candidates to
    /// differentiate (from their log-probabilities), then run one backward pass per chosen
    /// candidate. `visit(k, site, act, grad)` receives the k-th chosen candidate's gradients.
    /// Returns the log-probabilities. Families override this to share the prompt's forward pass.
    fn score_and_differentiate(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
        pick: &mut dyn FnMut(&[f64]) -> Vec<usize>,
        visit: CandidateGradVisitor<'_, F>,
    ) -> Vec<f64> {
        let logprobs = self.score(prompt, candidates);
        for (k, c) in pick(&logprobs).into_iter().enumerate() {
            self.logprob_with_grads(prompt, &candidates[c], None, &mut |site, a, g| visit(k, site, a, g));
        }
        logprobs
    }
}

/// How a model turns a prompt into an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Llama-family: the answer continues the prompt.
    DecoderOnly,
    /// T5: the encoder reads the prompt, the decoder writes the answer.
    EncoderDecoder,
}

/// Sizes of both universes from a site table.
pub fn universe_sizes(sites: &[SiteInfo]) -> (usize, usize) {
    let size = |u| sites.iter().filter(|s| s.universe == u).map(|s| s.width).sum();
    (size(Universe::Linear), size(Universe::Ffn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_round_trip() {
        for proj in Proj::SITES {
            let id = ModuleId { layer: 17, proj };
            assert_eq!(ModuleId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(ModuleId { layer: 7, proj: Proj::Down }.to_string(), "model.layers.7.mlp.down_proj");
        assert_eq!(ModuleId::parse("model.layers.x.mlp.down_proj"), None);
        assert_eq!(ModuleId::parse("model.layers.3.mlp.gelu"), None);
        for i in 0..40 {
            assert_eq!(ModuleId::from_index(i).index(), i);
        }
    }
}
