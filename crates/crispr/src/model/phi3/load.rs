//! Loading a Phi-3 checkpoint directory.

use std::path::Path;

use super::config::{config_from_gguf, config_from_hf};
use crate::error::Result;
use crate::model::family::FamilyLoader;
use crate::model::llama::load::{built, inspect_decoder_dir, inspect_decoder_gguf, load_decoder_dir, load_decoder_gguf};
use crate::model::llama::LlamaModel;
use crate::precision::Precision;
use crate::text::TextCodec;

/// The registry entry of Phi-3 (checkpoint directories and llama.cpp `phi3` GGUF files).
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "phi3",
    model_types: &["phi3"],
    architectures: &["Phi3ForCausalLM"],
    gguf_architectures: &["phi3"],
    load_checkpoint: |dir, _, precision| built(load_phi3_at(dir, precision)),
    inspect_checkpoint: |dir, config| inspect_decoder_dir(dir, config, config_from_hf),
    load_gguf: Some(|file, precision| built(load_decoder_gguf(file, precision, config_from_gguf))),
    inspect_gguf: Some(|file| inspect_decoder_gguf(file, config_from_gguf)),
};

/// Load a Phi-3 checkpoint directory as the engine's concrete type.
pub fn load_phi3(dir: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_phi3_at(dir, Precision::F32)
}

/// [`load_phi3`] with weight matrices kept at `precision`.
pub fn load_phi3_at(dir: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_decoder_dir(dir, precision, config_from_hf, |_| {})
}
