//! Building a Llama-family model from a checkpoint directory or a GGUF file.

use std::path::Path;

use super::{Layer, LlamaModel};
use crate::error::{Error, Result};
use crate::files::read_json;
use crate::gguf::GgufFile;
use crate::model::linear::Weights;
use crate::model::family::{Built, FamilyLoader, Probed};
use crate::model::LanguageModel;
use crate::model::{Arch, Linear, LlamaConfig, Proj};
use crate::precision::Precision;
use crate::tensor::Float;
use crate::text::{check_vocab, TextCodec};
use crate::weights::{GgufSource, Probe, Role, SafetensorsSource, WeightSource};

use super::config::{config_from_gguf, config_from_hf};

/// The registry entry of the Llama family.
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "llama",
    model_types: &["llama", "mistral", "qwen2", "qwen3"],
    architectures: &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"],
    gguf_architectures: &["llama", "qwen2", "qwen3"],
    load_checkpoint,
    inspect_checkpoint,
    load_gguf: Some(load_gguf),
    inspect_gguf: Some(inspect_gguf),
};

fn load_checkpoint(dir: &Path, _config: &serde_json::Value, precision: Precision) -> Result<Built> {
    built(load_decoder_dir(dir, precision, config_from_hf, |_| {}))
}

fn inspect_checkpoint(dir: &Path, config: &serde_json::Value) -> Result<Probed> {
    inspect_decoder_dir(dir, config, config_from_hf)
}

/// How a decoder family reads its `config.json` into the engine's configuration.
pub type ParseConfig = fn(&Path, &serde_json::Value) -> Result<LlamaConfig>;

/// Load a decoder checkpoint directory of any family on this engine: the configuration as
/// `parse` reads it, the weights, then `adjust` on the built model (Gemma folds its norm
/// offsets); the tokenizer is checked against the embedding.
pub fn load_decoder_dir(
    dir: &Path,
    precision: Precision,
    parse: ParseConfig,
    adjust: fn(&mut LlamaModel<f32>),
) -> Result<(LlamaModel<f32>, TextCodec)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(dir, "config.json is missing: not a transformers checkpoint directory"));
    }
    let cfg = parse(&cfg_path, &read_json(&cfg_path)?)?;
    let mut model = build_model_at(cfg, &SafetensorsSource::open_dir(dir)?, precision)?;
    adjust(&mut model);
    finish(model, TextCodec::from_dir(dir)?)
}

/// [`crate::loader::inspect`] for a decoder checkpoint directory read by `parse`.
pub fn inspect_decoder_dir(dir: &Path, config: &serde_json::Value, parse: ParseConfig) -> Result<Probed> {
    let cfg = parse(&dir.join("config.json"), config)?;
    probe(cfg, &SafetensorsSource::open_dir(dir)?, TextCodec::from_dir(dir)?)
}

/// Load a decoder GGUF file of any family on this engine whose q/k rows llama.cpp does not
/// permute, with the configuration `parse` reads from its metadata.
pub fn load_decoder_gguf(
    file: &GgufFile,
    precision: Precision,
    parse: fn(&GgufFile) -> Result<LlamaConfig>,
) -> Result<(LlamaModel<f32>, TextCodec)> {
    let cfg = parse(file)?;
    let src = GgufSource { file, permuted_qk: None };
    finish(build_model_at(cfg, &src, precision)?, TextCodec::from_gguf(file)?)
}

/// [`crate::loader::inspect`] for such a GGUF file.
pub fn inspect_decoder_gguf(file: &GgufFile, parse: fn(&GgufFile) -> Result<LlamaConfig>) -> Result<Probed> {
    let cfg = parse(file)?;
    probe(cfg, &GgufSource { file, permuted_qk: None }, TextCodec::from_gguf(file)?)
}

/// A loaded decoder as the registry hands it out.
pub fn built(loaded: Result<(LlamaModel<f32>, TextCodec)>) -> Result<Built> {
    loaded.map(|(model, text)| Built { model: Box::new(model), text })
}

/// llama.cpp permutes the q/k rows of llama-architecture models only.
fn gguf_source<'a>(file: &'a GgufFile, cfg: &LlamaConfig) -> GgufSource<'a> {
    GgufSource { file, permuted_qk: (cfg.arch == Arch::Llama).then_some((cfg.num_heads, cfg.num_kv_heads)) }
}

fn load_gguf(file: &GgufFile, precision: Precision) -> Result<Built> {
    let cfg = config_from_gguf(file)?;
    let src = gguf_source(file, &cfg);
    built(finish(build_model_at(cfg, &src, precision)?, TextCodec::from_gguf(file)?))
}

fn inspect_gguf(file: &GgufFile) -> Result<Probed> {
    let cfg = config_from_gguf(file)?;
    let src = gguf_source(file, &cfg);
    probe(cfg, &src, TextCodec::from_gguf(file)?)
}

/// Check every tensor's header (reading none) and report what a load would hold.
fn probe(cfg: LlamaConfig, src: &dyn WeightSource, text: TextCodec) -> Result<Probed> {
    let probe = Probe::new(src);
    let model = build_model(cfg, &probe)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    Ok(Probed { describe: model.describe(), sites: model.sites().to_vec(), text, footprint: probe.footprint(&[]) })
}

/// The tokenizer must fit the embedding; prompts are bounded by the model's context.
fn finish(model: LlamaModel<f32>, mut text: TextCodec) -> Result<(LlamaModel<f32>, TextCodec)> {
    check_vocab(model.cfg.vocab_size, &text)?;
    text.max_tokens = Some(model.cfg.max_position_embeddings);
    Ok((model, text))
}

/// Build a model from any weight source.
pub fn build_model(cfg: LlamaConfig, src: &dyn WeightSource) -> Result<LlamaModel<f32>> {
    build_model_at(cfg, src, Precision::F32)
}

/// [`build_model`] with weight matrices kept at `precision`, each converted as it is read (a
/// bf16 model never holds more than one matrix in f32).
pub fn build_model_at(cfg: LlamaConfig, src: &dyn WeightSource, precision: Precision) -> Result<LlamaModel<f32>> {
    let keep = |v: Vec<f32>, in_dim: usize| Weights::with_precision(v, in_dim, precision);
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    // The configuration's layer count must be backed by the file before anything is allocated
    // for it (a corrupt count would otherwise reserve memory for layers that do not exist).
    let last = Role::AttnNorm(cfg.num_layers - 1);
    if !src.has(last) {
        return Err(Error::format(
            src.location(),
            format!(
                "the configuration has {} layers but the weights lack layer {}",
                cfg.num_layers,
                cfg.num_layers - 1
            ),
        ));
    }
    let embed = keep(src.read(Role::Embed, &[v, d])?, d);
    // A vector the configuration's options call for (else none).
    let optional = |wanted: bool, role: Role, len: usize| -> Result<Vec<f32>> {
        if wanted {
            src.read(role, &[len])
        } else {
            Ok(Vec::new())
        }
    };
    let mut layers = Vec::new();
    for l in 0..cfg.num_layers {
        let lin = |p: Proj| -> Result<Linear<f32>> {
            let (out_dim, in_dim) = (cfg.out_dim(p), cfg.in_dim(p));
            let weight = keep(src.read(Role::Weight(l, p), &[out_dim, in_dim])?, in_dim);
            let bias = if src.has(Role::Bias(l, p)) { Some(src.read(Role::Bias(l, p), &[out_dim])?) } else { None };
            Ok(Linear { weight, bias, out_dim, in_dim })
        };
        // Fused projections live in `q` and `gate`; `k`, `v` and `up` stay empty.
        let empty = || Linear { weight: Weights::default(), bias: None, out_dim: 0, in_dim: d };
        let (q, k, v) = if cfg.fused {
            (lin(Proj::Qkv)?, empty(), empty())
        } else {
            (lin(Proj::Q)?, lin(Proj::K)?, lin(Proj::V)?)
        };
        let attn_norm = src.read(Role::AttnNorm(l), &[d])?;
        let o = lin(Proj::O)?;
        let mlp_norm = src.read(if cfg.post_norms { Role::PreMlpNorm(l) } else { Role::MlpNorm(l) }, &[d])?;
        let (gate, up) = if cfg.fused { (lin(Proj::GateUp)?, empty()) } else { (lin(Proj::Gate)?, lin(Proj::Up)?) };
        layers.push(Layer {
            attn_norm,
            q,
            k,
            v,
            o,
            mlp_norm,
            gate,
            up,
            down: lin(Proj::Down)?,
            q_norm: optional(cfg.qk_norm, Role::QNorm(l), cfg.head_dim)?,
            k_norm: optional(cfg.qk_norm, Role::KNorm(l), cfg.head_dim)?,
            post_attn_norm: optional(cfg.post_norms, Role::PostAttnNorm(l), d)?,
            post_mlp_norm: optional(cfg.post_norms, Role::PostMlpNorm(l), d)?,
        });
    }
    let final_norm = src.read(Role::FinalNorm, &[d])?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(keep(src.read(Role::LmHead, &[v, d])?, d)) };
    Ok(LlamaModel::new(cfg, embed, layers, final_norm, lm_head))
}

/// Load a Llama-family model as its concrete type (for code that needs the family's own API,
/// such as the f64 gradient checks).
pub fn load_llama(path: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_llama_at(path, Precision::F32)
}

/// [`load_llama`] with weight matrices kept at `precision`.
pub fn load_llama_at(path: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    if path.is_dir() {
        load_decoder_dir(path, precision, config_from_hf, |_| {})
    } else {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        let src = gguf_source(&file, &cfg);
        finish(build_model_at(cfg, &src, precision)?, TextCodec::from_gguf(&file)?)
    }
}

impl<F: Float> LlamaModel<F> {
    /// The same model with weights converted to another float type (f64 for gradient checks).
    pub fn cast<G: Float>(&self) -> LlamaModel<G> {
        let c = |v: &Vec<F>| v.iter().map(|x| G::from_f64(x.to_f64())).collect::<Vec<G>>();
        let cl = |l: &Linear<F>| l.cast::<G>();
        let layers = self
            .layers
            .iter()
            .map(|l| Layer {
                attn_norm: c(&l.attn_norm),
                q: cl(&l.q),
                k: cl(&l.k),
                v: cl(&l.v),
                o: cl(&l.o),
                mlp_norm: c(&l.mlp_norm),
                gate: cl(&l.gate),
                up: cl(&l.up),
                down: cl(&l.down),
                q_norm: c(&l.q_norm),
                k_norm: c(&l.k_norm),
                post_attn_norm: c(&l.post_attn_norm),
                post_mlp_norm: c(&l.post_mlp_norm),
            })
            .collect();
        LlamaModel::new(
            self.cfg.clone(),
            self.embed.cast(),
            layers,
            c(&self.final_norm),
            self.lm_head.as_ref().map(Weights::cast),
        )
    }
}
