//! Loading a Gemma 2 / Gemma 3 text checkpoint directory.

use std::path::Path;

use super::config::{config_from_gguf, config_from_hf};
use crate::error::Result;
use crate::model::family::FamilyLoader;
use crate::model::llama::load::{built, inspect_decoder_dir, inspect_decoder_gguf, load_decoder_dir, load_decoder_gguf};
use crate::model::llama::LlamaModel;
use crate::precision::Precision;
use crate::text::TextCodec;

/// The registry entry of Gemma (checkpoint directories and llama.cpp `gemma2` / `gemma3` GGUF
/// files). GGUF norms are stored as `1 + w` by the converter, and llama.cpp does not permute
/// Gemma's q/k rows, so a GGUF is read as it is.
pub static LOADER: FamilyLoader = FamilyLoader {
    name: "gemma",
    model_types: &["gemma2", "gemma3_text", "gemma3"],
    architectures: &["Gemma2ForCausalLM", "Gemma3ForCausalLM"],
    gguf_architectures: &["gemma2", "gemma3"],
    load_checkpoint: |dir, _, precision| built(load_gemma_at(dir, precision)),
    inspect_checkpoint: |dir, config| inspect_decoder_dir(dir, config, config_from_hf),
    load_gguf: Some(|file, precision| built(load_decoder_gguf(file, precision, config_from_gguf))),
    inspect_gguf: Some(|file| inspect_decoder_gguf(file, config_from_gguf)),
};

/// Load a Gemma checkpoint directory as the engine's concrete type.
pub fn load_gemma(dir: &Path) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_gemma_at(dir, Precision::F32)
}

/// [`load_gemma`] with weight matrices kept at `precision`.
pub fn load_gemma_at(dir: &Path, precision: Precision) -> Result<(LlamaModel<f32>, TextCodec)> {
    load_decoder_dir(dir, precision, config_from_hf, fold_norm_offsets)
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
