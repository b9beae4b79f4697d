//! Gemma 2 / Gemma 3 `config.json` → the decoder engine's [`LlamaConfig`].

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::model::family::ConfigJson;
use crate::model::kernels::GateAct;
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
