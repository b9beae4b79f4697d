//! Loading a Gemma 2 / Gemma 3 text checkpoint directory.

use std::path::Path;

use serde_json::Value as Json;

use super::config::config_from_hf;
use crate::error::{Error, Result};
use crate::files::read_json;
use crate::model::llama::load::{build_model, build_model_at};
use crate::model::llama::LlamaModel;
use crate::model::registry::{Built, FamilyLoader, Probed};
use crate::model::LanguageModel;
use crate::precision::Precision;
use crate::text::{check_vocab, TextCodec};
use crate::weights::{Probe, SafetensorsSource};

/// The registry entry of Gemma (checkpoint directories).
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "gemma",
    model_types: &["gemma2", "gemma3_text", "gemma3"],
    architectures: &["Gemma2ForCausalLM", "Gemma3ForCausalLM"],
    gguf_architectures: &[],
    load_checkpoint,
    inspect_checkpoint,
    load_gguf: None,
    inspect_gguf: None,
};

fn load_checkpoint(dir: &Path, _config: &Json, precision: Precision) -> Result<Built> {
    let (model, text) = load_gemma_at(dir, precision)?;
    Ok(Built { model: Box::new(model), text })
}

fn inspect_checkpoint(dir: &Path, config: &Json) -> Result<Probed> {
    let cfg = config_from_hf(&dir.join("config.json"), config)?;
    let src = SafetensorsSource::open_dir(dir)?;
    let probe = Probe::new(&src);
    let model = build_model(cfg, &probe)?;
    let text = TextCodec::from_dir(dir)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    Ok(Probed { describe: model.describe(), sites: model.sites().to_vec(), text, footprint: probe.footprint(&[]) })
}

/// Load a Gemma checkpoint directory as the engine's concrete type.
pub fn load_gemma(dir: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_gemma_at(dir, Precision::F32)
}

/// [`load_gemma`] with weight matrices kept at `precision`.
pub fn load_gemma_at(dir: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(dir, "config.json is missing: not a transformers checkpoint directory"));
    }
    let cfg = config_from_hf(&cfg_path, &read_json(&cfg_path)?)?;
    let mut model = build_model_at(cfg, &SafetensorsSource::open_dir(dir)?, precision)?;
    fold_norm_offsets(&mut model);
    let mut text = TextCodec::from_dir(dir)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    text.max_tokens = Some(model.cfg.max_position_embeddings);
    Ok((model, text))
}

/// Gemma's RMS norms scale by `1 + w`: add the 1 once here (in f32, as transformers computes
/// `1.0 + weight.float()`), so the engine's `w ⊙ x/rms(x)` is Gemma's norm.
fn fold_norm_offsets(model: &mut LlamaModel<f32>) {
    let bump = |v: &mut Vec<f32>| v.iter_mut().for_each(|w| *w += 1.0);
    for l in &mut model.layers {
        for v in [&mut l.attn_norm, &mut l.mlp_norm, &mut l.q_norm, &mut l.k_norm, &mut l.post_attn_norm, &mut l.post_mlp_norm] {
            bump(v);
        }
    }
    bump(&mut model.final_norm);
}
