//! Phi-3 `config.json` → the decoder engine's [`LlamaConfig`].

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::model::family::ConfigJson;
use crate::model::llama::config::gguf_sizes;
use crate::model::{Arch, LlamaConfig};

/// Parse the `config.json` of a Phi-3 model (`model_type` phi3). LongRoPE (the 128k-context
/// models) and partial rotary embeddings are refused rather than computed wrongly.
pub fn config_from_hf(path: &Path, v: &Json) -> Result<LlamaConfig> {
    let c = ConfigJson::new(path, v);
    let model_type = c.model_type(&[("Phi3ForCausalLM", "phi3")]);
    if model_type != "phi3" {
        return Err(c.error(format!("not a Phi-3 configuration (model_type={model_type:?})")));
    }
    if let Some(act) = v.get("hidden_act").and_then(Json::as_str).filter(|a| *a != "silu") {
        return Err(c.error(format!("hidden_act {act:?} is not supported (silu)")));
    }
    // transformers 5 keeps RoPE in `rope_parameters`; older configs in `rope_theta`/`rope_scaling`.
    let params = v.get("rope_parameters").filter(|p| p.is_object());
    let scaling = params.or_else(|| v.get("rope_scaling")).filter(|r| !r.is_null());
    if let Some(kind) = scaling.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Json::as_str) {
        if kind != "default" {
            return Err(c.error(format!(
                "rope scaling {kind:?} is not supported (Phi-3 128k / Phi-3.5 LongRoPE): use a 4k-context model"
            )));
        }
    }
    let partial = params.and_then(|p| p.get("partial_rotary_factor")).or_else(|| v.get("partial_rotary_factor"));
    if let Some(f) = partial.and_then(Json::as_f64).filter(|f| *f != 1.0) {
        return Err(c.error(format!("partial_rotary_factor {f} is not supported (1.0)")));
    }
    let rope_theta =
        c.f64("rope_theta").or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(Json::as_f64)).unwrap_or(10000.0);
    let (hidden, heads) = (c.usize("hidden_size")?, c.usize("num_attention_heads")?);
    let mut cfg = LlamaConfig {
        arch: Arch::Other("phi3"),
        vocab_size: c.usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: c.usize("intermediate_size")?,
        num_layers: c.usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: c.opt_usize("num_key_value_heads").unwrap_or(heads),
        head_dim: c.opt_usize("head_dim").unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        rms_norm_eps: c.f64("rms_norm_eps").unwrap_or(1e-5),
        rope_theta,
        rope_scaling: None,
        tie_word_embeddings: c.bool("tie_word_embeddings").unwrap_or(false),
        sliding_window: c.opt_usize("sliding_window"),
        attention_bias: false,
        max_position_embeddings: c.opt_usize("max_position_embeddings").unwrap_or(4096),
        ..LlamaConfig::default()
    };
    cfg.plain_options();
    cfg.fused = true;
    cfg.validate().map_err(|m| c.error(m))?;
    Ok(cfg)
}

/// Parse the metadata of a llama.cpp `phi3` GGUF file (4k-context models: a file carrying
/// LongRoPE factors, or rotating only part of each head, is refused).
pub fn config_from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
    let err = |m: String| Error::format(&file.path, m);
    if file.tensor("rope_factors_long.weight").is_some() || file.tensor("rope_factors_short.weight").is_some() {
        return Err(err("LongRoPE factors (Phi-3 128k / Phi-3.5) are not supported: use a 4k-context model".into()));
    }
    let mut cfg = gguf_sizes(file, "phi3")?;
    if let Some(dims) = file.get("phi3.rope.dimension_count").and_then(Value::as_u64) {
        if dims as usize != cfg.head_dim {
            return Err(err(format!("partial rotary embeddings ({dims} of {} dimensions) are not supported", cfg.head_dim)));
        }
    }
    cfg.arch = Arch::Other("phi3");
    cfg.sliding_window = file.get("phi3.attention.sliding_window").and_then(Value::as_u64).map(|w| w as usize);
    cfg.fused = true;
    cfg.validate().map_err(err)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_rope_is_refused() {
        let v = serde_json::json!({"model_type": "phi3", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}});
        let e = config_from_hf(Path::new("config.json"), &v).unwrap_err().to_string();
        assert!(e.contains("longrope"), "{e}");
    }
}
