//! Llama-family configuration: `config.json` / GGUF metadata → [`LlamaConfig`], and the naming of
//! the hooked modules.

use std::fmt;
use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::model::family::ConfigJson;
use crate::model::kernels::GateAct;
use crate::model::{check_limits, check_positive_finite, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};

/// Which member of the Llama family a checkpoint is; they differ only in details the loader and
/// the forward pass need to know (biases, sliding window, q/k norms, naming in `info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// A family in its own folder that runs on this engine with options (its name).
    Other(&'static str),
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Other(name) => name,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (transformers' `linear`; Gemma 3's global layers).
    Linear { factor: f64 },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: usize },
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
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
    /// Per-head RMS norm of q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Sandwich norms (Gemma): the attention and FFN outputs are normalised before they join the
    /// residual stream, and the FFN's input norm is `pre_feedforward_layernorm`.
    pub post_norms: bool,
    /// The gate's nonlinearity.
    pub activation: GateAct,
    /// Embeddings are multiplied by this (Gemma: √hidden_size); 1 elsewhere.
    pub embed_scale: f64,
    /// Attention logits are `q·k` times this: 1/√head_dim, or Gemma's `query_pre_attn_scalar`^-½.
    pub attn_scale: f64,
    /// Attention logit soft-cap (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Final logit soft-cap (Gemma 2, Gemma 3 where set).
    pub final_softcap: Option<f64>,
    /// Which layers use `sliding_window` (Gemma alternates local and global layers); `None`:
    /// every layer.
    pub sliding_layers: Option<Vec<bool>>,
    /// RoPE base of the sliding-window layers when it differs from `rope_theta` (Gemma 3).
    pub local_rope_theta: Option<f64>,
    /// q/k/v and gate/up are single fused matrices (Phi-3): hooked, pruned and named as such.
    pub fused: bool,
}

impl LlamaConfig {
    /// The options every Llama-family member shares (no q/k norms, SwiGLU, 1/√head_dim, no caps),
    /// set on a configuration whose sizes are already known.
    pub fn plain_options(&mut self) {
        self.qk_norm = false;
        self.post_norms = false;
        self.activation = GateAct::Silu;
        self.embed_scale = 1.0;
        self.attn_scale = 1.0 / (self.head_dim as f64).sqrt();
        self.attn_softcap = None;
        self.final_softcap = None;
        self.sliding_layers = None;
        self.local_rope_theta = None;
        self.fused = false;
    }

    /// Whether layer `l` is a sliding-window (local) layer.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.as_ref().is_none_or(|s| s.get(l).copied().unwrap_or(false))
    }

    /// The attention window of layer `l`.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.is_sliding(l))
    }
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
    /// Fused `[q; k; v]` projection (Phi-3's `qkv_proj`).
    Qkv,
    /// Fused `[gate; up]` projection (Phi-3's `gate_up_proj`).
    GateUp,
}

impl Proj {
    /// The linear layers (the `linear` universe), in forward order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];
    /// Every hooked site, in forward order.
    pub const SITES: [Proj; 8] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Act, Proj::Down];
    /// The linear layers of a model with fused projections, in forward order.
    pub const FUSED_ALL: [Proj; 4] = [Proj::Qkv, Proj::O, Proj::GateUp, Proj::Down];
    /// Every hooked site of a model with fused projections, in forward order.
    pub const FUSED_SITES: [Proj; 5] = [Proj::Qkv, Proj::O, Proj::GateUp, Proj::Act, Proj::Down];

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
            Proj::Qkv => "self_attn.qkv_proj",
            Proj::GateUp => "mlp.gate_up_proj",
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
            Proj::Qkv => "attn_qkv",
            // llama.cpp stores Phi-3's fused gate and up as `ffn_up`.
            Proj::GateUp => "ffn_up",
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
        let proj = Proj::SITES.into_iter().chain(Proj::FUSED_SITES).find(|p| p.hf_suffix() == suffix)?;
        Some(ModuleId { layer, proj })
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
            Proj::Qkv => (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            Proj::GateUp => 2 * self.intermediate_size,
        }
    }

    /// The hooked sites of one layer, in forward order (the site table repeats them per layer).
    pub fn layer_sites(&self) -> &'static [Proj] {
        if self.fused {
            &Proj::FUSED_SITES
        } else {
            &Proj::SITES
        }
    }

    /// The linear layers of one layer, in forward order.
    pub fn layer_linears(&self) -> &'static [Proj] {
        if self.fused {
            &Proj::FUSED_ALL
        } else {
            &Proj::ALL
        }
    }

    /// Index of a layer's site in the model's site table (see [`LanguageModel::sites`]).
    pub fn site_index(&self, layer: usize, proj: Proj) -> usize {
        let per = self.layer_sites();
        layer * per.len() + per.iter().position(|&p| p == proj).expect("a site of this layout")
    }

    /// The module at an index of the site table.
    pub fn site_at(&self, i: usize) -> ModuleId {
        let per = self.layer_sites();
        ModuleId { layer: i / per.len(), proj: per[i % per.len()] }
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
        let per = self.layer_linears();
        (0..self.num_layers).flat_map(|layer| per.iter().map(move |&proj| ModuleId { layer, proj })).collect()
    }

    /// Size of the `linear` neuron universe (every output unit of every hooked module).
    pub fn linear_universe(&self) -> usize {
        self.num_layers * self.layer_linears().iter().map(|&p| self.out_dim(p)).sum::<usize>()
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
        check_positive_finite(&[("embedding scale", self.embed_scale), ("attention scale", self.attn_scale)])?;
        for (name, cap) in
            [("attn_logit_softcapping", self.attn_softcap), ("final_logit_softcapping", self.final_softcap)]
        {
            if let Some(c) = cap {
                check_positive_finite(&[(name, c)])?;
            }
        }
        if let Some(t) = self.local_rope_theta {
            check_positive_finite(&[("local rope theta", t)])?;
        }
        if let Some(s) = &self.sliding_layers {
            if s.len() != self.num_layers {
                return Err(format!("{} layer types for {} layers", s.len(), self.num_layers));
            }
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        Ok(())
    }
}

/// Parse a transformers `config.json` of a Llama-family model.
pub fn config_from_hf(path: &Path, v: &Json) -> Result<LlamaConfig> {
    let c = ConfigJson::new(path, v);
    // A config without `model_type` is named by its class (`architectures`).
    let model_type = c.model_type(&[
        ("LlamaForCausalLM", "llama"),
        ("MistralForCausalLM", "mistral"),
        ("Qwen2ForCausalLM", "qwen2"),
        ("Qwen3ForCausalLM", "qwen3"),
    ]);
    let arch = match model_type {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "t5" => return Err(Error::format(
            path,
            "T5 is an encoder-decoder model: load it with loader::load or loader::load_t5, not as a Llama-family model",
        )),
        other => {
            return Err(Error::format(
                path,
                format!("unknown architecture model_type={other:?} (supported: llama, mistral, qwen2, qwen3)"),
            ))
        }
    };
    let (get_usize, opt_usize) = (|k| c.usize(k), |k| c.opt_usize(k));
    let hidden = get_usize("hidden_size")?;
    let heads = get_usize("num_attention_heads")?;
    // transformers 5 moved rope settings into `rope_parameters`.
    let rope_obj = v.get("rope_parameters").filter(|r| r.is_object()).or_else(|| v.get("rope_scaling"));
    let rope_theta = v
        .get("rope_theta")
        .and_then(Json::as_f64)
        .or_else(|| v.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Json::as_f64))
        .unwrap_or(10000.0);
    let rope_scaling = match rope_obj.filter(|r| !r.is_null()) {
        None => None,
        Some(r) => {
            let ty = r.get("rope_type").or_else(|| r.get("type")).and_then(Json::as_str).unwrap_or("default");
            match ty {
                "default" => None,
                "linear" => {
                    let factor = r.get("factor").and_then(Json::as_f64).filter(|f| f.is_finite() && *f > 0.0);
                    let factor =
                        factor.ok_or_else(|| Error::format(path, "rope scaling: factor missing or not positive"))?;
                    Some(RopeScaling::Linear { factor })
                }
                "llama3" => {
                    let f = |k: &str| {
                        r.get(k)
                            .and_then(Json::as_f64)
                            .ok_or_else(|| Error::format(path, format!("rope scaling: {k} missing")))
                    };
                    Some(RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position: f("original_max_position_embeddings")? as usize,
                    })
                }
                other => return Err(Error::format(path, format!("rope scaling type {other:?} is not supported"))),
            }
        }
    };
    let sliding_window = match arch {
        Arch::Mistral => opt_usize("sliding_window"),
        Arch::Qwen2 | Arch::Qwen3 if v.get("use_sliding_window").and_then(Json::as_bool) == Some(true) => {
            return Err(Error::format(path, format!("{model_type} with use_sliding_window=true is not supported")))
        }
        _ => None,
    };
    if v.get("mlp_bias").and_then(Json::as_bool) == Some(true) {
        return Err(Error::format(path, "mlp_bias=true is not supported"));
    }
    let mut cfg = LlamaConfig {
        arch,
        vocab_size: get_usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: get_usize("intermediate_size")?,
        num_layers: get_usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: opt_usize("num_key_value_heads").unwrap_or(heads),
        head_dim: opt_usize("head_dim").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        rms_norm_eps: v.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        // transformers' Llama, Mistral and Qwen2 configs default to untied.
        tie_word_embeddings: v.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
        sliding_window,
        attention_bias: arch == Arch::Qwen2 || v.get("attention_bias").and_then(Json::as_bool).unwrap_or(false),
        max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(4096),
        ..LlamaConfig::default()
    };
    cfg.plain_options();
    cfg.qk_norm = arch == Arch::Qwen3;
    cfg.validate().map_err(|m| Error::format(path, m))?;
    Ok(cfg)
}

/// Parse GGUF metadata of a llama-, qwen2- or qwen3-architecture file.
pub fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
    let arch_name = file.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        other => {
            return Err(Error::format(
                &file.path,
                format!("unknown GGUF architecture {other:?} (supported: llama, qwen2, qwen3)"),
            ))
        }
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(Error::format(&file.path, "GGUF rope_freqs (Llama 3.1 rope scaling) is not supported yet"));
    }
    let mut cfg = gguf_sizes(file, arch_name)?;
    cfg.arch = arch;
    // llama.cpp's qwen3 stores the per-head norms as `attn_q_norm` / `attn_k_norm`.
    cfg.qk_norm = arch == Arch::Qwen3;
    cfg.validate().map_err(|m| Error::format(&file.path, m))?;
    Ok(cfg)
}

/// The sizes, RoPE base, norm epsilon and context every llama.cpp architecture stores under
/// `<arch>.…`, with the plain options set (the caller sets `arch` and its own options, then
/// validates).
pub fn gguf_sizes(file: &GgufFile, arch_name: &str) -> Result<LlamaConfig> {
    let path = &file.path;
    let key = |k: &str| format!("{arch_name}.{k}");
    let req = |k: &str| -> Result<usize> {
        file.get(&key(k))
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| Error::format(path, format!("metadata {} is missing", key(k))))
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let vocab = match file.get(&key("vocab_size")).and_then(Value::as_u64) {
        Some(v) => v,
        // No vocab_size key: the embedding's row count (its length was checked against the file).
        None => file
            .tensor("token_embd.weight")
            .map(|t| t.dims.get(1).copied().unwrap_or(0))
            .ok_or_else(|| Error::format(path, "tensor token_embd.weight is missing"))?,
    };
    let vocab =
        usize::try_from(vocab).map_err(|_| Error::format(path, format!("vocabulary size {vocab} is too large")))?;
    let mut cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: req("feed_forward_length")?,
        num_layers: req("block_count")?,
        num_heads: heads,
        num_kv_heads: file.get(&key("attention.head_count_kv")).and_then(Value::as_u64).map_or(heads, |v| v as usize),
        head_dim: file
            .get(&key("attention.key_length"))
            .and_then(Value::as_u64)
            .map_or(hidden.checked_div(heads).unwrap_or(0), |v| v as usize),
        rms_norm_eps: file.get(&key("attention.layer_norm_rms_epsilon")).and_then(Value::as_f64).unwrap_or(1e-5),
        rope_theta: file.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0),
        rope_scaling: None,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        sliding_window: None,
        attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        max_position_embeddings: file.get(&key("context_length")).and_then(Value::as_u64).unwrap_or(4096) as usize,
        ..LlamaConfig::default()
    };
    cfg.plain_options();
    Ok(cfg)
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
        let id = ModuleId { layer: 2, proj: Proj::GateUp };
        assert_eq!(ModuleId::parse(&id.to_string()), Some(id));
        let mut cfg = LlamaConfig { num_layers: 5, ..LlamaConfig::default() };
        for fused in [false, true] {
            cfg.fused = fused;
            for i in 0..5 * cfg.layer_sites().len() {
                let m = cfg.site_at(i);
                assert_eq!(cfg.site_index(m.layer, m.proj), i);
            }
        }
    }
}
