//! Gemma 2 / Gemma 3 `config.json` → the decoder engine's [`LlamaConfig`].

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::model::family::ConfigJson;
use crate::model::kernels::GateAct;
use crate::model::llama::config::gguf_sizes;
use crate::model::{Arch, LlamaConfig, RopeScaling};

/// Which Gemma a configuration describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Generation {
    Two,
    Three,
}

/// Parse the `config.json` of a Gemma 2 (`gemma2`) or Gemma 3 text (`gemma3_text`) model.
/// Defaults are transformers' for the keys a config leaves out.
pub fn config_from_hf(path: &Path, v: &Json) -> Result<LlamaConfig> {
    let c = ConfigJson::new(path, v);
    let err = |m: String| c.error(m);
    let model_type = c.model_type(&[("Gemma2ForCausalLM", "gemma2"), ("Gemma3ForCausalLM", "gemma3_text")]);
    let generation = match model_type {
        "gemma2" => Generation::Two,
        "gemma3_text" => Generation::Three,
        "gemma3" => {
            return Err(err("a multimodal Gemma 3 checkpoint (model_type gemma3): only Gemma 3 text models \
                            (Gemma3ForCausalLM, model_type gemma3_text, e.g. gemma-3-1b) are supported"
                .into()))
        }
        other => return Err(err(format!("not a Gemma 2/3 text configuration (model_type={other:?})"))),
    };
    let (get_usize, opt_usize, opt_f64) = (|k| c.usize(k), |k| c.opt_usize(k), |k| c.f64(k));
    // A key that is absent takes the default; one that is `null` switches the feature off.
    let cap = |k: &str, default: Option<f64>| match v.get(k) {
        None => default,
        Some(x) => x.as_f64(),
    };

    let hidden = get_usize("hidden_size")?;
    let heads = get_usize("num_attention_heads")?;
    let layers = get_usize("num_hidden_layers")?;
    let activation = v.get("hidden_activation").or_else(|| v.get("hidden_act")).and_then(Json::as_str);
    match activation.unwrap_or("gelu_pytorch_tanh") {
        "gelu_pytorch_tanh" | "gelu_new" => {}
        other => return Err(err(format!("hidden_activation {other:?} is not supported (gelu_pytorch_tanh)"))),
    }

    // Local (sliding-window) layers: `layer_types`, else transformers' default pattern.
    let sliding_layers = match v.get("layer_types").and_then(Json::as_array) {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(err(format!("layer_types entry {t} is not sliding_attention or full_attention"))),
            })
            .collect::<Result<Vec<bool>>>()?,
        None => {
            let pattern = match generation {
                Generation::Two => 2,
                Generation::Three => {
                    opt_usize("sliding_window_pattern").or_else(|| opt_usize("_sliding_window_pattern")).unwrap_or(6)
                }
            };
            (0..layers).map(|i| pattern == 0 || (i + 1) % pattern != 0).collect()
        }
    };

    // RoPE: transformers 5 nests it per layer type in Gemma 3 (`rope_parameters.full_attention`,
    // `.sliding_attention`); older configs have `rope_theta`, `rope_local_base_freq`, `rope_scaling`.
    let params = v.get("rope_parameters").filter(|p| p.is_object());
    let (global, local) = match params {
        Some(p) if p.get("full_attention").is_some() => {
            let g = rope(path, p.get("full_attention"), 10000.0)?;
            let l = rope(path, p.get("sliding_attention"), 10000.0)?;
            (g, Some(l))
        }
        Some(p) => (rope(path, Some(p), 10000.0)?, None),
        None => {
            let theta = opt_f64("rope_theta").unwrap_or(match generation {
                Generation::Two => 10000.0,
                Generation::Three => 1_000_000.0,
            });
            let scaling = rope(path, v.get("rope_scaling"), theta)?.1;
            (
                (theta, scaling),
                (generation == Generation::Three).then(|| (opt_f64("rope_local_base_freq").unwrap_or(10000.0), None)),
            )
        }
    };
    if local.is_some_and(|(_, scaling)| scaling.is_some()) {
        return Err(err("RoPE scaling on the sliding-window layers is not supported".into()));
    }

    let (name, softcaps, max_pos) = match generation {
        Generation::Two => ("gemma2", (Some(50.0), Some(30.0)), 8192),
        Generation::Three => ("gemma3", (None, None), 131_072),
    };
    let cfg = LlamaConfig {
        arch: Arch::Other(name),
        vocab_size: get_usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: get_usize("intermediate_size")?,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: opt_usize("num_key_value_heads").unwrap_or(heads),
        head_dim: opt_usize("head_dim").unwrap_or(256),
        rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
        rope_theta: global.0,
        rope_scaling: global.1,
        tie_word_embeddings: v.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(true),
        sliding_window: match v.get("sliding_window") {
            None => Some(4096),
            Some(w) => w.as_u64().map(|w| w as usize),
        },
        attention_bias: v.get("attention_bias").and_then(Json::as_bool).unwrap_or(false),
        max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(max_pos),
        qk_norm: generation == Generation::Three,
        post_norms: true,
        activation: GateAct::GeluTanh,
        embed_scale: (hidden as f64).sqrt(),
        attn_scale: opt_f64("query_pre_attn_scalar").unwrap_or(256.0).powf(-0.5),
        attn_softcap: cap("attn_logit_softcapping", softcaps.0),
        final_softcap: cap("final_logit_softcapping", softcaps.1),
        sliding_layers: Some(sliding_layers),
        local_rope_theta: local.map(|(theta, _)| theta),
        fused: false,
    };
    cfg.validate().map_err(err)?;
    Ok(cfg)
}

/// Parse the metadata of a llama.cpp `gemma2` or `gemma3` GGUF file (text models), reading it
/// the way llama.cpp does: softcaps default to Gemma 2's 50/30 when absent, a `gemma3` file
/// without a sliding window is global throughout, and the local layers of Gemma 3 rotate with
/// base 10000 unless the file names one. The converter stores norm weights as `1 + w` already,
/// so nothing is folded on load.
pub fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
    let err = |m: String| Error::format(&file.path, m);
    let arch_name = file.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    let generation = match arch_name {
        "gemma2" => Generation::Two,
        "gemma3" => Generation::Three,
        other => return Err(err(format!("not a Gemma 2/3 GGUF file (general.architecture={other:?})"))),
    };
    let meta = GemmaMeta { file, arch_name };
    let mut cfg = gguf_sizes(file, arch_name)?;
    // The sizes are checked before anything is allocated per layer.
    cfg.validate().map_err(err)?;
    refuse_unsupported(&meta, &cfg)?;
    // The converter drops the padding rows of the embedding: the tensor is the vocabulary.
    if let Some(rows) = file.tensor("token_embd.weight").and_then(|t| t.dims.get(1)) {
        cfg.vocab_size = usize::try_from(*rows).map_err(|_| err(format!("vocabulary size {rows} is too large")))?;
    }
    cfg.rope_scaling = match meta.get("rope.scaling.type").map(|v| v.as_str().unwrap_or("?")) {
        None | Some("none") => None,
        // Gemma 3's global layers (llama.cpp leaves the local ones unscaled).
        Some("linear") if generation == Generation::Three => {
            let factor = meta.float("rope.scaling.factor")?.filter(|f| f.is_finite() && *f > 0.0);
            let factor = factor.ok_or_else(|| meta.error("rope.scaling.factor", "missing or not positive"))?;
            Some(RopeScaling::Linear { factor })
        }
        Some(other) => return Err(meta.error("rope.scaling.type", &format!("rope scaling {other:?} is not supported"))),
    };

    // llama.cpp: Gemma 2 defaults to a 4096-token window; Gemma 3 without one (or with 0) has
    // no local layers.
    let window = match meta.get("attention.sliding_window") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| meta.error("attention.sliding_window", "not a whole number"))?),
    };
    cfg.sliding_window = match (generation, window) {
        (Generation::Two, None) => Some(4096),
        (_, Some(0)) | (Generation::Three, None) => None,
        (_, Some(w)) => Some(w as usize),
    };
    cfg.sliding_layers = Some(local_layers(&meta, generation, cfg.num_layers)?);
    let global_theta = cfg.rope_theta;
    cfg.local_rope_theta = match generation {
        // Gemma 2 rotates every layer alike unless the file says otherwise.
        Generation::Two => meta.float("rope.freq_base_swa")?.filter(|t| *t != global_theta),
        Generation::Three => match cfg.sliding_window {
            Some(_) => Some(meta.float("rope.freq_base_swa")?.unwrap_or(10000.0)),
            None => None,
        },
    };

    let (default_caps, name) = match generation {
        Generation::Two => ((Some(50.0), Some(30.0)), "gemma2"),
        Generation::Three => ((None, None), "gemma3"),
    };
    // A cap of 0 is llama.cpp's "none". The converter writes Gemma 3's final cap only when the
    // model sets one; it is applied, as transformers does (llama.cpp's sliding-window graph for
    // gemma3 leaves it out).
    let cap = |k: &str, default: Option<f64>| -> Result<Option<f64>> {
        Ok(match meta.float(k)? {
            None => default,
            Some(0.0) => None,
            Some(c) => Some(c),
        })
    };
    cfg.attn_softcap = cap("attn_logit_softcapping", default_caps.0)?;
    cfg.final_softcap = cap("final_logit_softcapping", default_caps.1)?;

    cfg.arch = Arch::Other(name);
    cfg.tie_word_embeddings = true;
    cfg.qk_norm = generation == Generation::Three;
    cfg.post_norms = true;
    cfg.activation = GateAct::GeluTanh;
    cfg.embed_scale = (cfg.hidden_size as f64).sqrt();
    cfg.attn_scale = gguf_attn_scale(generation, &cfg);
    cfg.validate().map_err(err)?;
    Ok(cfg)
}

/// Typed reads of `<arch>.…` keys; errors name the file and the key.
struct GemmaMeta<'a> {
    file: &'a GgufFile,
    arch_name: &'a str,
}

impl GemmaMeta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch_name)
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.file.get(&self.key(k))
    }

    fn error(&self, k: &str, problem: &str) -> Error {
        Error::format(&self.file.path, format!("metadata {}: {problem}", self.key(k)))
    }

    fn float(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.error(k, "not a number")),
        }
    }
}

/// What llama.cpp's gemma architectures do not define, or this engine does not compute.
fn refuse_unsupported(meta: &GemmaMeta, cfg: &LlamaConfig) -> Result<()> {
    let file = meta.file;
    let err = |m: String| Error::format(&file.path, m);
    // Ollama-style files bundle the vision tower of a multimodal Gemma 3 with the text model.
    if let Some(t) = file.tensors.iter().find(|t| t.name.starts_with("v.") || t.name.starts_with("mm.")) {
        return Err(err(format!(
            "tensor {} belongs to a vision tower: multimodal Gemma 3 GGUF files are not supported \
             (convert the text model alone)",
            t.name
        )));
    }
    // llama.cpp always multiplies by the token embedding (the converter drops lm_head).
    if file.tensor("output.weight").is_some() {
        return Err(err("tensor output.weight: Gemma's output layer is the token embedding; a separate \
                        output matrix is not part of llama.cpp's gemma architectures"
            .into()));
    }
    let head_dim = cfg.head_dim as u64;
    if let Some(v) = meta.get("attention.value_length").and_then(Value::as_u64).filter(|v| *v != head_dim) {
        let problem = format!("value heads of {v} dimensions differ from key heads of {head_dim} (not supported)");
        return Err(meta.error("attention.value_length", &problem));
    }
    if let Some(d) = meta.get("rope.dimension_count").and_then(Value::as_u64).filter(|d| *d != head_dim) {
        return Err(meta.error(
            "rope.dimension_count",
            &format!("partial rotary embeddings ({d} of {head_dim} dimensions) are not supported"),
        ));
    }
    Ok(())
}

/// Which layers are local: every 2nd (Gemma 2) or 6th (Gemma 3) layer is global, as llama.cpp
/// sets it. A file may state the pattern itself, as a period (llama.cpp's meaning: layer `i` is
/// local when `i % n < n - 1`; 0: all local) or as one flag per layer.
fn local_layers(meta: &GemmaMeta, generation: Generation, layers: usize) -> Result<Vec<bool>> {
    let by_period = |n: usize| (0..layers).map(|i| n == 0 || i % n < n - 1).collect();
    let k = "attention.sliding_window_pattern";
    Ok(match meta.get(k) {
        None => by_period(if generation == Generation::Two { 2 } else { 6 }),
        Some(Value::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags.iter().map(Value::as_bool).collect();
            flags
                .filter(|f| f.len() == layers)
                .ok_or_else(|| meta.error(k, &format!("expected {layers} true/false entries, one per layer")))?
        }
        Some(v) => match v.as_u64() {
            Some(n) => by_period(n.min(layers as u64 + 1) as usize),
            None => return Err(meta.error(k, "neither a period nor a list of flags")),
        },
    })
}

/// GGUF has no `query_pre_attn_scalar`. llama.cpp scales queries by `1/√head_dim`, except in the
/// 27B models (46 layers in Gemma 2, 62 in Gemma 3), where it uses `1/√(hidden/heads)`, as
/// gemma_pytorch does; both equal `query_pre_attn_scalar^-½` of every released Gemma 2/3.
fn gguf_attn_scale(generation: Generation, cfg: &LlamaConfig) -> f64 {
    let is_27b = cfg.num_layers
        == match generation {
            Generation::Two => 46,
            Generation::Three => 62,
        };
    let dim = if is_27b { cfg.hidden_size / cfg.num_heads } else { cfg.head_dim };
    (dim as f64).powf(-0.5)
}

/// `(theta, scaling)` of one RoPE parameter object (`rope_type` default or linear).
fn rope(path: &Path, p: Option<&Json>, default_theta: f64) -> Result<(f64, Option<RopeScaling>)> {
    let Some(p) = p.filter(|p| !p.is_null()) else { return Ok((default_theta, None)) };
    let theta = p.get("rope_theta").and_then(Json::as_f64).unwrap_or(default_theta);
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Json::as_str).unwrap_or("default");
    let scaling = match kind {
        "default" => None,
        "linear" => {
            let factor = p.get("factor").and_then(Json::as_f64).filter(|f| f.is_finite() && *f > 0.0);
            Some(RopeScaling::Linear {
                factor: factor.ok_or_else(|| Error::format(path, "rope scaling: factor missing or not positive"))?,
            })
        }
        other => return Err(Error::format(path, format!("rope scaling type {other:?} is not supported for Gemma"))),
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Json) -> Result<LlamaConfig> {
        config_from_hf(Path::new("config.json"), &v)
    }

    #[test]
    fn defaults_follow_transformers() {
        let base = serde_json::json!({"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 6, "num_attention_heads": 4, "head_dim": 8});
        let mut g2 = base.clone();
        g2["model_type"] = "gemma2".into();
        let c = parse(g2).unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.sliding_layers.as_deref(), Some(&[true, false, true, false, true, false][..]));
        assert!((c.attn_scale - 1.0 / 16.0).abs() < 1e-15 && c.local_rope_theta.is_none() && !c.qk_norm);
        let mut g3 = base;
        g3["model_type"] = "gemma3_text".into();
        g3["attn_logit_softcapping"] = Json::Null;
        g3["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 8.0});
        let c = parse(g3).unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        assert_eq!(c.sliding_layers.as_deref(), Some(&[true, true, true, true, true, false][..]));
        assert_eq!((c.rope_theta, c.local_rope_theta), (1_000_000.0, Some(10000.0)));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert!(c.qk_norm && c.post_norms);
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = parse(serde_json::json!({"model_type": "gemma3"})).unwrap_err().to_string();
        assert!(e.contains("multimodal"), "{e}");
        let e = parse(serde_json::json!({"model_type": "gemma2", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "hidden_activation": "relu"}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hidden_activation"), "{e}");
    }
}
