//! What a family folder provides to the registry ([`FamilyLoader`]) and the helpers the
//! families share for reading `config.json`.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{LanguageModel, SiteInfo};
use crate::precision::{Footprint, Precision};
use crate::text::TextCodec;

/// A loaded model and its tokenizer.
pub struct Built {
    pub model: Box<dyn LanguageModel<f32>>,
    pub text: TextCodec,
}

/// What a family reads from headers alone (see [`crate::loader::inspect`]); the loader adds the
/// file sizes.
pub struct Probed {
    /// As [`LanguageModel::describe`].
    pub describe: Json,
    pub sites: Vec<SiteInfo>,
    pub text: TextCodec,
    pub footprint: Footprint,
}

/// How one family is recognised and loaded.
pub struct FamilyLoader {
    pub name: &'static str,
    /// `config.json` `model_type` values this family reads.
    pub model_types: &'static [&'static str],
    /// `config.json` `architectures` entries (class names), for configs whose `model_type` is
    /// missing.
    pub architectures: &'static [&'static str],
    /// GGUF `general.architecture` values.
    pub gguf_architectures: &'static [&'static str],
    pub load_checkpoint: fn(&Path, &Json, Precision) -> Result<Built>,
    pub inspect_checkpoint: fn(&Path, &Json) -> Result<Probed>,
    pub load_gguf: Option<fn(&GgufFile, Precision) -> Result<Built>>,
    pub inspect_gguf: Option<fn(&GgufFile) -> Result<Probed>>,
}

/// Typed reads from a transformers `config.json`; errors name the file and the key.
pub struct ConfigJson<'a> {
    pub path: &'a Path,
    pub v: &'a Json,
}

impl<'a> ConfigJson<'a> {
    pub fn new(path: &'a Path, v: &'a Json) -> Self {
        ConfigJson { path, v }
    }

    /// An error about this configuration file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, message.into())
    }

    /// A required whole number.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key).ok_or_else(|| self.error(format!("{key} is missing or not a whole number")))
    }

    pub fn opt_usize(&self, key: &str) -> Option<usize> {
        self.v.get(key).and_then(Json::as_u64).map(|x| x as usize)
    }

    pub fn f64(&self, key: &str) -> Option<f64> {
        self.v.get(key).and_then(Json::as_f64)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.v.get(key).and_then(Json::as_bool)
    }

    /// `model_type`, or for a config without one, the type of the first `architectures` class
    /// found in `classes` (`(class, model_type)` pairs); "" when neither says.
    pub fn model_type(&self, classes: &[(&str, &'static str)]) -> &'a str {
        if let Some(t) = self.v.get("model_type").and_then(Json::as_str) {
            return t;
        }
        let listed = self.v.get("architectures").and_then(Json::as_array).into_iter().flatten();
        listed
            .filter_map(Json::as_str)
            .find_map(|a| classes.iter().find(|(c, _)| *c == a).map(|(_, t)| *t))
            .unwrap_or("")
    }
}
