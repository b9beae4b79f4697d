//! T5 configuration (`config.json`), module naming and the hooked sites.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The FFN nonlinearity (ReLU or tanh GELU for T5).
pub use crate::model::kernels::GateAct as Activation;

/// Hyper-parameters of a T5 checkpoint (`config.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// As written in the config (`relu`, `gated-gelu`, …).
    pub feed_forward_proj: String,
    /// `wo(act(wi_0 x) ⊙ wi_1 x)` instead of `wo(act(wi x))`.
    pub gated: bool,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    /// Multiply the decoder output by d_model^-½ before the LM head (T5 v1.0).
    pub scale_decoder_outputs: bool,
    pub decoder_start_token_id: u32,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

impl T5Config {
    /// Parse a transformers `config.json` with `model_type` `"t5"`.
    pub fn from_json(path: &Path, v: &Json) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Json::as_str).unwrap_or("");
        if model_type != "t5" {
            return Err(Error::format(path, format!("model_type {model_type:?} is not \"t5\"")));
        }
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Json::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::format(path, format!("{k} is missing or not a whole number")))
        };
        let opt = |k: &str| v.get(k).and_then(Json::as_u64).map(|x| x as usize);
        // eos_token_id may be a list in newer configs; the first entry is the tokenizer's `</s>`.
        let token = |k: &str| -> Option<u32> {
            match v.get(k)? {
                Json::Array(a) => a.first().and_then(Json::as_u64).map(|x| x as u32),
                other => other.as_u64().map(|x| x as u32),
            }
        };
        // transformers' default is "relu" (T5 v1.0).
        let ffp = v.get("feed_forward_proj").and_then(Json::as_str).unwrap_or("relu").to_string();
        let (gated, act_name) = match ffp.split_once('-') {
            Some(("gated", a)) => (true, a),
            Some(_) => {
                return Err(Error::format(
                    path,
                    format!("feed_forward_proj {ffp:?} is not of the form gated-ACT or ACT"),
                ))
            }
            None => (false, ffp.as_str()),
        };
        let activation = match (gated, act_name) {
            (_, "relu") => Activation::Relu,
            // transformers maps "gated-gelu" to gelu_new (the tanh approximation) for compatibility.
            (true, "gelu") | (_, "gelu_new") | (_, "gelu_pytorch_tanh") => Activation::GeluTanh,
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "feed_forward_proj {ffp:?} is not supported (supported: relu, gated-gelu, gated-relu, \
                         gelu_new, gated-gelu_new)"
                    ),
                ))
            }
        };
        // transformers 5 rewrites configs with tie_word_embeddings=true plus an explicit
        // scale_decoder_outputs; older configs say tie_word_embeddings=false for v1.1.
        let tie = v.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(true);
        let scale = v.get("scale_decoder_outputs").and_then(Json::as_bool).unwrap_or(tie);
        let num_layers = get("num_layers")?;
        let pad = token("pad_token_id").unwrap_or(0);
        let cfg = T5Config {
            vocab_size: get("vocab_size")?,
            d_model: get("d_model")?,
            d_kv: get("d_kv")?,
            d_ff: get("d_ff")?,
            num_layers,
            num_decoder_layers: opt("num_decoder_layers").unwrap_or(num_layers),
            num_heads: get("num_heads")?,
            relative_attention_num_buckets: opt("relative_attention_num_buckets").unwrap_or(32),
            relative_attention_max_distance: opt("relative_attention_max_distance").unwrap_or(128),
            layer_norm_epsilon: v.get("layer_norm_epsilon").and_then(Json::as_f64).unwrap_or(1e-6),
            feed_forward_proj: ffp.clone(),
            gated,
            activation,
            tie_word_embeddings: tie,
            scale_decoder_outputs: scale,
            decoder_start_token_id: token("decoder_start_token_id").unwrap_or(pad),
            eos_token_id: token("eos_token_id").unwrap_or(1),
            pad_token_id: pad,
        };
        cfg.validate().map_err(|m| Error::format(path, m))?;
        Ok(cfg)
    }

    /// Check the invariants the forward pass relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.num_decoder_layers),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        crate::model::check_limits(&[
            ("vocab_size", self.vocab_size, crate::model::MAX_VOCAB),
            ("d_model", self.d_model, crate::model::MAX_WIDTH),
            ("d_kv", self.d_kv, crate::model::MAX_HEAD_DIM),
            ("d_ff", self.d_ff, crate::model::MAX_WIDTH),
            ("num_layers", self.num_layers, crate::model::MAX_LAYERS),
            ("num_decoder_layers", self.num_decoder_layers, crate::model::MAX_LAYERS),
            ("num_heads", self.num_heads, crate::model::MAX_HEADS),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, 1 << 16),
            ("relative_attention_max_distance", self.relative_attention_max_distance, 1 << 24),
        ])?;
        crate::model::check_positive_finite(&[("layer_norm_epsilon", self.layer_norm_epsilon)])?;
        // The bidirectional bucketing halves the buckets and gives half of those to exact distances;
        // the logarithmic part divides by log(max_distance / max_exact).
        if self.relative_attention_num_buckets < 4 {
            return Err("relative_attention_num_buckets must be at least 4".into());
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 2 {
            return Err("relative_attention_max_distance must exceed relative_attention_num_buckets / 2".into());
        }
        for (name, id) in [("decoder_start_token_id", self.decoder_start_token_id), ("eos_token_id", self.eos_token_id)]
        {
            if id as usize >= self.vocab_size {
                return Err(format!("{name} {id} is outside the vocabulary ({})", self.vocab_size));
            }
        }
        Ok(())
    }

    /// Width of the attention projections (`num_heads · d_kv`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The FFN sites of a block, in forward order.
    pub fn ffn_projs(&self) -> &'static [T5Proj] {
        if self.gated {
            &[T5Proj::Wi0, T5Proj::Wi1, T5Proj::Act, T5Proj::Wo]
        } else {
            &[T5Proj::Wi, T5Proj::Act, T5Proj::Wo]
        }
    }

    /// The hooked sites of one block of `stack`, in forward order.
    pub fn block_projs(&self, stack: StackKind) -> Vec<T5Proj> {
        let attn: &[T5Proj] = match stack {
            StackKind::Encoder => &[T5Proj::Q, T5Proj::K, T5Proj::V, T5Proj::O],
            StackKind::Decoder => &[
                T5Proj::Q,
                T5Proj::K,
                T5Proj::V,
                T5Proj::O,
                T5Proj::CrossQ,
                T5Proj::CrossK,
                T5Proj::CrossV,
                T5Proj::CrossO,
            ],
        };
        attn.iter().chain(self.ffn_projs()).copied().collect()
    }

    /// Output width of a site.
    pub fn out_dim(&self, p: T5Proj) -> usize {
        match p {
            T5Proj::O | T5Proj::CrossO | T5Proj::Wo => self.d_model,
            T5Proj::Wi0 | T5Proj::Wi1 | T5Proj::Wi | T5Proj::Act => self.d_ff,
            _ => self.inner_dim(),
        }
    }

    /// Every weight tensor of a transformers checkpoint of this shape (name, shape), in module order.
    /// The embedding is stored once (`shared.weight`); `lm_head.weight` only when untied.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let mut out = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        for stack in [StackKind::Encoder, StackKind::Decoder] {
            let s = stack.name();
            for l in 0..self.layers(stack) {
                let attn = |module: &str, sub: usize, out: &mut Vec<(String, Vec<usize>)>| {
                    for p in ["q", "k", "v"] {
                        out.push((format!("{s}.block.{l}.layer.{sub}.{module}.{p}.weight"), vec![inner, d]));
                    }
                    out.push((format!("{s}.block.{l}.layer.{sub}.{module}.o.weight"), vec![d, inner]));
                };
                attn("SelfAttention", 0, &mut out);
                if l == 0 {
                    out.push((
                        format!("{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                        vec![self.relative_attention_num_buckets, self.num_heads],
                    ));
                }
                out.push((format!("{s}.block.{l}.layer.0.layer_norm.weight"), vec![d]));
                if stack == StackKind::Decoder {
                    attn("EncDecAttention", 1, &mut out);
                    out.push((format!("{s}.block.{l}.layer.1.layer_norm.weight"), vec![d]));
                }
                let f = stack.ffn_sublayer();
                let wis: &[&str] = if self.gated { &["wi_0", "wi_1"] } else { &["wi"] };
                for w in wis {
                    out.push((format!("{s}.block.{l}.layer.{f}.DenseReluDense.{w}.weight"), vec![ff, d]));
                }
                out.push((format!("{s}.block.{l}.layer.{f}.DenseReluDense.wo.weight"), vec![d, ff]));
                out.push((format!("{s}.block.{l}.layer.{f}.layer_norm.weight"), vec![d]));
            }
            out.push((format!("{s}.final_layer_norm.weight"), vec![d]));
        }
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        out
    }

    pub fn layers(&self, stack: StackKind) -> usize {
        match stack {
            StackKind::Encoder => self.num_layers,
            StackKind::Decoder => self.num_decoder_layers,
        }
    }
}

/// transformers `T5Attention._relative_position_bucket`: the bucket of `relative_position`
/// (= key position − query position). The logarithmic part is computed in f32 as torch does, so
/// distances whose bucket sits on a boundary land in the same bucket.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let n = if bidirectional {
        nb /= 2;
        if relative_position > 0 {
            bucket += nb;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = nb / 2;
    if n < max_exact {
        return (bucket + n) as usize;
    }
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + ((n as f32 / max_exact as f32).ln() / log_ratio * (nb - max_exact) as f32) as i64;
    (bucket + large.min(nb - 1)) as usize
}

/// Which stack a site or weight belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackKind {
    Encoder,
    Decoder,
}

impl StackKind {
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Encoder => "encoder",
            StackKind::Decoder => "decoder",
        }
    }

    /// Index of the FFN sub-layer in a block (`layer.1` in the encoder, `layer.2` in the decoder).
    pub(super) fn ffn_sublayer(self) -> usize {
        match self {
            StackKind::Encoder => 1,
            StackKind::Decoder => 2,
        }
    }
}

/// A hooked site of a T5 block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum T5Proj {
    Q,
    K,
    V,
    O,
    CrossQ,
    CrossK,
    CrossV,
    CrossO,
    /// Gated FFN (v1.1): the projection through the nonlinearity.
    Wi0,
    /// Gated FFN (v1.1): the linear projection it multiplies.
    Wi1,
    /// Plain FFN (v1.0).
    Wi,
    /// The FFN activation (input of `wo`): the `ffn` universe's units.
    Act,
    Wo,
}

impl T5Proj {
    /// Short kind for grouping in reports.
    pub fn kind(self) -> &'static str {
        match self {
            T5Proj::Q => "q",
            T5Proj::K => "k",
            T5Proj::V => "v",
            T5Proj::O => "o",
            T5Proj::CrossQ => "cross_q",
            T5Proj::CrossK => "cross_k",
            T5Proj::CrossV => "cross_v",
            T5Proj::CrossO => "cross_o",
            T5Proj::Wi0 => "wi_0",
            T5Proj::Wi1 => "wi_1",
            T5Proj::Wi => "wi",
            T5Proj::Act => "act",
            T5Proj::Wo => "wo",
        }
    }

    /// Whether the site's rows are encoder positions (the prompt's tokens): every encoder site, and
    /// the cross-attention keys and values, which read the encoder output.
    pub fn on_encoder_positions(self, stack: StackKind) -> bool {
        stack == StackKind::Encoder || matches!(self, T5Proj::CrossK | T5Proj::CrossV)
    }
}

/// One hooked site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct T5Site {
    pub stack: StackKind,
    pub layer: usize,
    pub proj: T5Proj,
}

impl T5Site {
    /// The module path in the transformers naming, e.g. `decoder.block.3.layer.1.EncDecAttention.k`.
    pub fn module_name(&self) -> String {
        let (s, l) = (self.stack.name(), self.layer);
        let f = self.stack.ffn_sublayer();
        match self.proj {
            T5Proj::Q | T5Proj::K | T5Proj::V | T5Proj::O => {
                format!("{s}.block.{l}.layer.0.SelfAttention.{}", self.proj.kind())
            }
            T5Proj::CrossQ | T5Proj::CrossK | T5Proj::CrossV | T5Proj::CrossO => {
                format!("{s}.block.{l}.layer.1.EncDecAttention.{}", &self.proj.kind()[6..])
            }
            _ => format!("{s}.block.{l}.layer.{f}.DenseReluDense.{}", self.proj.kind()),
        }
    }
}
