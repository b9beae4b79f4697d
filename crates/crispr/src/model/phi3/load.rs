//! Loading a Phi-3 checkpoint directory.

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

/// The registry entry of Phi-3 (checkpoint directories).
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "phi3",
    model_types: &["phi3"],
    architectures: &["Phi3ForCausalLM"],
    gguf_architectures: &[],
    load_checkpoint,
    inspect_checkpoint,
    load_gguf: None,
    inspect_gguf: None,
};

fn load_checkpoint(dir: &Path, _config: &Json, precision: Precision) -> Result<Built> {
    let (model, text) = load_phi3_at(dir, precision)?;
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

/// Load a Phi-3 checkpoint directory as the engine's concrete type.
pub fn load_phi3(dir: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_phi3_at(dir, Precision::F32)
}

/// [`load_phi3`] with weight matrices kept at `precision`.
pub fn load_phi3_at(dir: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(dir, "config.json is missing: not a transformers checkpoint directory"));
    }
    let cfg = config_from_hf(&cfg_path, &read_json(&cfg_path)?)?;
    let model = build_model_at(cfg, &SafetensorsSource::open_dir(dir)?, precision)?;
    let mut text = TextCodec::from_dir(dir)?;
    check_vocab(model.cfg.vocab_size, &text)?;
    text.max_tokens = Some(model.cfg.max_position_embeddings);
    Ok((model, text))
}
