//! Loading a model (configuration, weights, tokenizer) from a checkpoint directory or GGUF file.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::model::linear::Weights;
use crate::model::llama::{Layer, LlamaModel};
use crate::model::t5::{T5Config, T5Model};
use crate::model::Linear;
use crate::model::{Arch, Family, LanguageModel, LlamaConfig, Proj, RopeScaling, SiteInfo};
use crate::precision::{check_fits, Available, Footprint, Precision};
use crate::score::PromptStyle;
use crate::tensor::Float;
use crate::text::TextCodec;
use crate::weights::{GgufSource, Probe, Role, SafetensorsSource, WeightSource};

/// The on-disk form a model came in (pruned models are written back in the same form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A transformers checkpoint directory.
    Checkpoint(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelFormat {
    pub fn path(&self) -> &Path {
        match self {
            ModelFormat::Checkpoint(p) | ModelFormat::Gguf(p) => p,
        }
    }
}

pub struct LoadedModel {
    pub model: Box<dyn LanguageModel<f32>>,
    pub text: TextCodec,
    pub format: ModelFormat,
}

impl LoadedModel {
    /// How prompts become token ids for this model (`raw`: no chat template).
    pub fn prompt_style(&self, raw: bool) -> PromptStyle {
        match (self.model.family(), raw) {
            (Family::EncoderDecoder, _) => PromptStyle::Seq2Seq,
            (Family::DecoderOnly, true) => PromptStyle::Raw,
            (Family::DecoderOnly, false) => PromptStyle::Chat,
        }
    }

    /// Tokens that end an answer in generation.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.text.end_of_turn.into_iter().chain(self.text.eos_id).collect();
        v.dedup();
        v
    }
}

/// Load from a path: a directory (transformers checkpoint) or a `.gguf` file.
pub fn load(path: &Path) -> Result<LoadedModel> {
    load_at(path, Precision::F32)
}

/// [`load`] with weight matrices kept at `precision`.
pub fn load_at(path: &Path, precision: Precision) -> Result<LoadedModel> {
    if path.is_dir() {
        load_checkpoint(path, precision)
    } else if path.is_file() {
        load_gguf(path, precision)
    } else {
        Err(Error::format(path, "no such file or directory"))
    }
}

/// [`load_at`] after checking, from the headers alone, that the model fits in the memory
/// available at `precision` (see [`crate::precision::check_fits`]).
pub fn load_checked(path: &Path, precision: Precision) -> Result<LoadedModel> {
    let info = inspect(path)?;
    check_fits(path, &info.footprint, precision, &Available::now())?;
    load_at(path, precision)
}

/// What `crispr info` shows, read from headers and metadata only.
pub struct Inspection {
    /// Architecture facts (as [`LanguageModel::describe`]), `parameters` counted from the header.
    pub describe: Json,
    pub sites: Vec<SiteInfo>,
    pub text: TextCodec,
    pub format: ModelFormat,
    pub footprint: Footprint,
}

/// Read a model's configuration, tensor headers and tokenizer, never its weights: every tensor
/// is checked for presence, shape and type exactly as [`load`] would, so a checkpoint `load`
/// would refuse is refused here with the same error.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let file_size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        let is_t5 = cfg_path.exists() && read_json(&cfg_path)?.get("model_type").and_then(Json::as_str) == Some("t5");
        let format = ModelFormat::Checkpoint(path.to_path_buf());
        let mapped = |s: &SafetensorsSource| -> u64 { s.files().iter().map(|f| file_size(f)).sum() };
        if is_t5 {
            let cfg = T5Config::from_json(&cfg_path, &read_json(&cfg_path)?)?;
            let src = SafetensorsSource::open_dir(path)?;
            let probe = Probe::new(&src);
            let tied = cfg.tie_word_embeddings;
            let model = T5Model::from_source(cfg, &probe)?;
            let text = TextCodec::from_dir(path)?;
            check_vocab(model.cfg.vocab_size, &text)?;
            // A tied head stored again (transformers 5) is loaded once.
            let mut fp = probe.footprint(if tied { &["lm_head.weight"] } else { &[] });
            fp.mapped_bytes = mapped(&src);
            let mut describe = model.describe();
            describe["parameters"] = (fp.matrix_elements + fp.vector_elements).into();
            describe["tied_embeddings"] = tied.into();
            return Ok(Inspection { describe, sites: model.sites().to_vec(), text, format, footprint: fp });
        }
        if !cfg_path.exists() {
            return Err(Error::format(path, "config.json is missing: not a transformers checkpoint directory"));
        }
        let cfg = config_from_hf(&cfg_path, &read_json(&cfg_path)?)?;
        let src = SafetensorsSource::open_dir(path)?;
        let probe = Probe::new(&src);
        let model = build_model(cfg, &probe)?;
        let text = TextCodec::from_dir(path)?;
        check_vocab(model.cfg.vocab_size, &text)?;
        let mut fp = probe.footprint(&[]);
        fp.mapped_bytes = mapped(&src);
        let mut describe = model.describe();
        describe["parameters"] = (fp.matrix_elements + fp.vector_elements).into();
        Ok(Inspection { describe, sites: model.sites().to_vec(), text, format, footprint: fp })
    } else if path.is_file() {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        let permuted_qk = (cfg.arch == Arch::Llama).then_some((cfg.num_heads, cfg.num_kv_heads));
        let src = GgufSource { file: &file, permuted_qk };
        let probe = Probe::new(&src);
        let model = build_model(cfg, &probe)?;
        let text = TextCodec::from_gguf(&file)?;
        check_vocab(model.cfg.vocab_size, &text)?;
        let mut fp = probe.footprint(&[]);
        fp.mapped_bytes = file_size(path);
        let mut describe = model.describe();
        describe["parameters"] = (fp.matrix_elements + fp.vector_elements).into();
        let format = ModelFormat::Gguf(path.to_path_buf());
        Ok(Inspection { describe, sites: model.sites().to_vec(), text, format, footprint: fp })
    } else {
        Err(Error::format(path, "no such file or directory"))
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Parse a transformers `config.json` of a Llama-family model.
pub fn config_from_hf(path: &Path, v: &Json) -> Result<LlamaConfig> {
    let model_type = v.get("model_type").and_then(Json::as_str).unwrap_or("");
    let arch = match model_type {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "t5" => return Err(Error::format(
            path,
            "T5 is an encoder-decoder model: load it with loader::load or loader::load_t5, not as a Llama-family model",
        )),
        other => {
            return Err(Error::format(
                path,
                format!("unknown architecture model_type={other:?} (supported: llama, mistral, qwen2)"),
            ))
        }
    };
    let get_usize = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(Json::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| Error::format(path, format!("{k} is missing or not a whole number")))
    };
    let opt_usize = |k: &str| v.get(k).and_then(Json::as_u64).map(|x| x as usize);
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
        Arch::Qwen2 if v.get("use_sliding_window").and_then(Json::as_bool) == Some(true) => {
            return Err(Error::format(path, "Qwen2 with use_sliding_window=true is not supported"))
        }
        _ => None,
    };
    if v.get("mlp_bias").and_then(Json::as_bool) == Some(true) {
        return Err(Error::format(path, "mlp_bias=true is not supported"));
    }
    let cfg = LlamaConfig {
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
    };
    cfg.validate().map_err(|m| Error::format(path, m))?;
    Ok(cfg)
}

/// Parse GGUF metadata of a llama- or qwen2-architecture file.
pub fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
    let path = &file.path;
    let arch_name = file.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::format(path, format!("unknown GGUF architecture {other:?} (supported: llama, qwen2)")))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let req = |k: &str| -> Result<usize> {
        file.get(&key(k))
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| Error::format(path, format!("metadata {} is missing", key(k))))
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(Error::format(path, "GGUF rope_freqs (Llama 3.1 rope scaling) is not supported yet"));
    }
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
    let cfg = LlamaConfig {
        arch,
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
    };
    cfg.validate().map_err(|m| Error::format(path, m))?;
    Ok(cfg)
}

/// Build a model from any weight source.
pub fn build_model(cfg: LlamaConfig, src: &dyn WeightSource) -> Result<LlamaModel<f32>> {
    build_model_at(cfg, src, Precision::F32)
}

/// [`build_model`] with weight matrices kept at `precision`, each converted as it is read (a
/// bf16 model never holds more than one matrix in f32).
pub fn build_model_at(cfg: LlamaConfig, src: &dyn WeightSource, precision: Precision) -> Result<LlamaModel<f32>> {
    let keep = |v: Vec<f32>| Weights::with_precision(v, precision);
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
    let embed = keep(src.read(Role::Embed, &[v, d])?);
    let mut layers = Vec::new();
    for l in 0..cfg.num_layers {
        let lin = |p: Proj| -> Result<Linear<f32>> {
            let (out_dim, in_dim) = (cfg.out_dim(p), cfg.in_dim(p));
            let weight = keep(src.read(Role::Weight(l, p), &[out_dim, in_dim])?);
            let bias = if src.has(Role::Bias(l, p)) { Some(src.read(Role::Bias(l, p), &[out_dim])?) } else { None };
            Ok(Linear { weight, bias, out_dim, in_dim })
        };
        layers.push(Layer {
            attn_norm: src.read(Role::AttnNorm(l), &[d])?,
            q: lin(Proj::Q)?,
            k: lin(Proj::K)?,
            v: lin(Proj::V)?,
            o: lin(Proj::O)?,
            mlp_norm: src.read(Role::MlpNorm(l), &[d])?,
            gate: lin(Proj::Gate)?,
            up: lin(Proj::Up)?,
            down: lin(Proj::Down)?,
        });
    }
    let final_norm = src.read(Role::FinalNorm, &[d])?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(keep(src.read(Role::LmHead, &[v, d])?)) };
    Ok(LlamaModel::new(cfg, embed, layers, final_norm, lm_head))
}

fn load_checkpoint(dir: &Path, precision: Precision) -> Result<LoadedModel> {
    let format = ModelFormat::Checkpoint(dir.to_path_buf());
    let cfg_path = dir.join("config.json");
    if cfg_path.exists() && read_json(&cfg_path)?.get("model_type").and_then(Json::as_str) == Some("t5") {
        let (model, text) = load_t5_at(dir, precision)?;
        return Ok(LoadedModel { model: Box::new(model), text, format });
    }
    let (model, text) = load_llama_at(dir, precision)?;
    Ok(LoadedModel { model: Box::new(model), text, format })
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

fn load_gguf(path: &Path, precision: Precision) -> Result<LoadedModel> {
    let (model, text) = load_llama_at(path, precision)?;
    Ok(LoadedModel { model: Box::new(model), text, format: ModelFormat::Gguf(path.to_path_buf()) })
}

/// Load a Llama-family model as its concrete type (for code that needs the family's own API,
/// such as the f64 gradient checks).
pub fn load_llama(path: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_llama_at(path, Precision::F32)
}

/// [`load_llama`] with weight matrices kept at `precision`.
pub fn load_llama_at(path: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::format(path, "config.json is missing: not a transformers checkpoint directory"));
        }
        let cfg = config_from_hf(&cfg_path, &read_json(&cfg_path)?)?;
        let src = SafetensorsSource::open_dir(path)?;
        let model = build_model_at(cfg, &src, precision)?;
        let mut text = TextCodec::from_dir(path)?;
        check_vocab(model.cfg.vocab_size, &text)?;
        text.max_tokens = Some(model.cfg.max_position_embeddings);
        Ok((model, text))
    } else {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        // llama.cpp permutes q/k rows of llama-architecture models only.
        let permuted_qk = (cfg.arch == Arch::Llama).then_some((cfg.num_heads, cfg.num_kv_heads));
        let model = build_model_at(cfg, &GgufSource { file: &file, permuted_qk }, precision)?;
        let mut text = TextCodec::from_gguf(&file)?;
        check_vocab(model.cfg.vocab_size, &text)?;
        text.max_tokens = Some(model.cfg.max_position_embeddings);
        Ok((model, text))
    }
}

/// A tokenizer that can emit ids the embedding does not have belongs to another model.
pub fn check_vocab(model_vocab: usize, text: &TextCodec) -> Result<()> {
    let n = text.vocab_size();
    if n > model_vocab {
        return Err(Error::format(
            &text.source,
            format!(
                "tokenizer has {n} tokens but the model's embedding has {model_vocab} rows: tokenizer does not match"
            ),
        ));
    }
    Ok(())
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
