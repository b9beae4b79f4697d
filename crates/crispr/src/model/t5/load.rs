//! Building a T5 model from a checkpoint directory.

use std::path::Path;

use serde_json::Value as Json;

use super::{Attention, Block, FeedForward, Stack, StackKind, T5Config, T5Model};
use crate::error::{Error, Result};
use crate::files::read_json;
use crate::model::linear::Weights;
use crate::model::family::{Built, FamilyLoader, Probed};
use crate::model::{LanguageModel, Linear};
use crate::precision::Precision;
use crate::text::{check_vocab, TextCodec};
use crate::weights::{NamedSource, Probe, SafetensorsSource};

/// The registry entry of T5 (checkpoint directories only: llama.cpp has no T5 encoder–decoder
/// GGUF this crate reads).
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "t5",
    model_types: &["t5"],
    architectures: &["T5ForConditionalGeneration"],
    gguf_architectures: &[],
    load_checkpoint,
    inspect_checkpoint,
    load_gguf: None,
    inspect_gguf: None,
};

fn load_checkpoint(dir: &Path, _config: &Json, precision: Precision) -> Result<Built> {
    let (model, text) = load_t5_at(dir, precision)?;
    Ok(Built { model: Box::new(model), text })
}

fn inspect_checkpoint(dir: &Path, config: &Json) -> Result<Probed> {
    let cfg = T5Config::from_json(&dir.join("config.json"), config)?;
    let src = SafetensorsSource::open_dir(dir)?;
    let probe = Probe::new(&src);
    let tied = cfg.tie_word_embeddings;
    let model = T5Model::from_source(cfg, &probe)?;
    let text = TextCodec::from_dir(dir)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    // A tied head stored again (transformers 5) is loaded once.
    let footprint = probe.footprint(if tied { &["lm_head.weight"] } else { &[] });
    let mut describe = model.describe();
    describe["tied_embeddings"] = tied.into();
    Ok(Probed { describe, sites: model.sites().to_vec(), text, footprint })
}

/// Longest T5 encoder input or decoder target accepted (flan-t5 was trained on 512 + 114).
pub const T5_MAX_TOKENS: usize = 4096;

/// Load a T5 checkpoint directory (T5 v1.0, Flan-T5, T0: `config.json` with `model_type` "t5",
/// safetensors weights, `tokenizer.json`) as its concrete type.
pub fn load_t5(path: &Path) -> Result<(T5Model<f32>, TextCodec)> {
    load_t5_at(path, Precision::F32)
}

/// [`load_t5`] with weight matrices kept at `precision`.
pub fn load_t5_at(path: &Path, precision: Precision) -> Result<(T5Model<f32>, TextCodec)> {
    if !path.is_dir() {
        return Err(Error::format(
            path,
            "T5 models are read from a transformers checkpoint directory (config.json, model.safetensors, tokenizer.json)",
        ));
    }
    let cfg_path = path.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(path, "config.json is missing: not a transformers checkpoint directory"));
    }
    let cfg = T5Config::from_json(&cfg_path, &read_json(&cfg_path)?)?;
    let src = SafetensorsSource::open_dir(path)?;
    let model = T5Model::from_source_at(cfg, &src, precision)?;
    let mut text = TextCodec::from_dir(path)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    // T5's relative positions have no fixed context; attention memory grows with the square of the
    // length, so inputs are bounded at what the released models were used with, many times over.
    text.max_tokens = Some(T5_MAX_TOKENS);
    // Without a tokenizer_config.json the end token comes from the model config; generation
    // stops on it.
    if text.eos_id.is_none() {
        let eos = model.cfg.eos_token_id;
        text.eos_token = text.token(eos);
        text.eos_id = Some(eos);
        text.end_of_turn = text.end_of_turn.or(Some(eos));
    }
    Ok((model, text))
}

impl T5Model<f32> {
    /// Build from checkpoint tensors in the transformers naming. The embedding is `shared.weight`
    /// (older exports may only have `encoder.embed_tokens.weight`); the LM head is
    /// `lm_head.weight` when the checkpoint has its own, as transformers 5 does (it unties a head
    /// that differs from the embedding even when the config says tied).
    pub fn from_source(cfg: T5Config, src: &dyn NamedSource) -> Result<Self> {
        Self::from_source_at(cfg, src, Precision::F32)
    }

    /// [`Self::from_source`] with weight matrices kept at `precision`, each converted as it is
    /// read (a bf16 model never holds more than one matrix in f32).
    pub fn from_source_at(cfg: T5Config, src: &dyn NamedSource, precision: Precision) -> Result<Self> {
        let keep = |v: Vec<f32>, in_dim: usize| Weights::with_precision(v, in_dim, precision);
        let (d, inner, ff, vocab) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff, cfg.vocab_size);
        let embed_name = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
            .into_iter()
            .find(|n| src.contains(n))
            .unwrap_or("shared.weight");
        let shared = src.read_named(embed_name, &[vocab, d])?;
        let lin = |name: String, out_dim: usize, in_dim: usize| -> Result<Linear<f32>> {
            Ok(Linear { weight: keep(src.read_named(&name, &[out_dim, in_dim])?, in_dim), bias: None, out_dim, in_dim })
        };
        let attn = |prefix: String| -> Result<Attention<f32>> {
            Ok(Attention {
                q: lin(format!("{prefix}.q.weight"), inner, d)?,
                k: lin(format!("{prefix}.k.weight"), inner, d)?,
                v: lin(format!("{prefix}.v.weight"), inner, d)?,
                o: lin(format!("{prefix}.o.weight"), d, inner)?,
            })
        };
        let stack = |kind: StackKind| -> Result<Stack<f32>> {
            let s = kind.name();
            // Grown as blocks are read: a layer count the file cannot back fails at the first
            // missing tensor instead of reserving memory for it.
            let mut blocks = Vec::new();
            for l in 0..cfg.layers(kind) {
                let (cross_norm, cross_attn) = if kind == StackKind::Decoder {
                    (
                        Some(src.read_named(&format!("{s}.block.{l}.layer.1.layer_norm.weight"), &[d])?),
                        Some(attn(format!("{s}.block.{l}.layer.1.EncDecAttention"))?),
                    )
                } else {
                    (None, None)
                };
                let fp = format!("{s}.block.{l}.layer.{}", kind.ffn_sublayer());
                let ffn = if cfg.gated {
                    FeedForward {
                        wi_0: lin(format!("{fp}.DenseReluDense.wi_0.weight"), ff, d)?,
                        wi_1: Some(lin(format!("{fp}.DenseReluDense.wi_1.weight"), ff, d)?),
                        wo: lin(format!("{fp}.DenseReluDense.wo.weight"), d, ff)?,
                    }
                } else {
                    FeedForward {
                        wi_0: lin(format!("{fp}.DenseReluDense.wi.weight"), ff, d)?,
                        wi_1: None,
                        wo: lin(format!("{fp}.DenseReluDense.wo.weight"), d, ff)?,
                    }
                };
                blocks.push(Block {
                    self_norm: src.read_named(&format!("{s}.block.{l}.layer.0.layer_norm.weight"), &[d])?,
                    self_attn: attn(format!("{s}.block.{l}.layer.0.SelfAttention"))?,
                    cross_norm,
                    cross_attn,
                    ffn_norm: src.read_named(&format!("{fp}.layer_norm.weight"), &[d])?,
                    ffn,
                });
            }
            Ok(Stack {
                blocks,
                final_norm: src.read_named(&format!("{s}.final_layer_norm.weight"), &[d])?,
                relative_bias: src.read_named(
                    &format!("{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                    &[cfg.relative_attention_num_buckets, cfg.num_heads],
                )?,
            })
        };
        let encoder = stack(StackKind::Encoder)?;
        let decoder = stack(StackKind::Decoder)?;
        let lm_head = if src.contains("lm_head.weight") || !cfg.tie_word_embeddings {
            let head = src.read_named("lm_head.weight", &[vocab, d])?;
            // A stored copy of a tied embedding is the embedding: keep one.
            (head != shared).then(|| keep(head, d))
        } else {
            None
        };
        Ok(T5Model::new(cfg, keep(shared, d), encoder, decoder, lm_head))
    }
}
