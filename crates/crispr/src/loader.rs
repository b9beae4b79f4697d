//! Loading a model (configuration, weights, tokenizer) from a checkpoint directory or GGUF file.
//!
//! Which family reads a model is decided by [`crate::model::registry`]; this module handles the
//! path (directory or file), the memory check and what every family shares.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::files::read_json;
use crate::gguf::GgufFile;
use crate::model::registry::{self, Built, Probed};
use crate::model::{Family, LanguageModel, SiteInfo};
use crate::precision::{check_fits, Available, Footprint, Precision};
use crate::score::PromptStyle;
use crate::text::TextCodec;

pub use crate::model::llama::load::{load_llama, load_llama_at};
pub use crate::model::t5::{load_t5, load_t5_at, T5_MAX_TOKENS};
pub use crate::text::check_vocab;

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
    let (built, format) = if path.is_dir() {
        let config = read_config(path)?;
        let family = registry::for_checkpoint(&path.join("config.json"), &config)?;
        ((family.load_checkpoint)(path, &config, precision)?, ModelFormat::Checkpoint(path.to_path_buf()))
    } else if path.is_file() {
        let file = GgufFile::open(path)?;
        let family = registry::for_gguf(&file)?;
        let load = family.load_gguf.ok_or_else(|| registry::no_gguf(&file, family))?;
        (load(&file, precision)?, ModelFormat::Gguf(path.to_path_buf()))
    } else {
        return Err(Error::format(path, "no such file or directory"));
    };
    let Built { model, text } = built;
    Ok(LoadedModel { model, text, format })
}

/// `config.json` of a checkpoint directory.
fn read_config(dir: &Path) -> Result<Json> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::format(dir, "config.json is missing: not a transformers checkpoint directory"));
    }
    read_json(&cfg_path)
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
    let (probed, format, mapped) = if path.is_dir() {
        let config = read_config(path)?;
        let family = registry::for_checkpoint(&path.join("config.json"), &config)?;
        let probed = (family.inspect_checkpoint)(path, &config)?;
        let mapped = crate::weights::checkpoint_weight_files(path)?.iter().map(|f| file_size(f)).sum();
        (probed, ModelFormat::Checkpoint(path.to_path_buf()), mapped)
    } else if path.is_file() {
        let file = GgufFile::open(path)?;
        let family = registry::for_gguf(&file)?;
        let inspect = family.inspect_gguf.ok_or_else(|| registry::no_gguf(&file, family))?;
        (inspect(&file)?, ModelFormat::Gguf(path.to_path_buf()), file_size(path))
    } else {
        return Err(Error::format(path, "no such file or directory"));
    };
    let Probed { mut describe, sites, text, mut footprint } = probed;
    footprint.mapped_bytes = mapped;
    describe["parameters"] = (footprint.matrix_elements + footprint.vector_elements).into();
    Ok(Inspection { describe, sites, text, format, footprint })
}
