//! Which family reads a model: one entry per family, matched on `config.json`'s `model_type`
//! (then its `architectures`) or on GGUF's `general.architecture`. Adding a family is adding its
//! folder under `model/` (with a `LOADER`) and its name to the `families!` line in `model/mod.rs`.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
pub use crate::model::family::{Built, FamilyLoader, Probed};

pub use crate::model::FAMILIES;

fn supported(list: impl Fn(&FamilyLoader) -> &'static [&'static str]) -> String {
    FAMILIES.iter().flat_map(|f| list(f).iter().copied()).collect::<Vec<_>>().join(", ")
}

/// The family of a checkpoint from its `config.json` (read from `path`).
pub fn for_checkpoint(path: &Path, config: &Json) -> Result<&'static FamilyLoader> {
    if let Some(model_type) = config.get("model_type").and_then(Json::as_str) {
        return FAMILIES.iter().copied().find(|f| f.model_types.contains(&model_type)).ok_or_else(|| {
            Error::format(
                path,
                format!("unknown architecture model_type={model_type:?} (supported: {})", supported(|f| f.model_types)),
            )
        });
    }
    let archs: Vec<&str> =
        config.get("architectures").and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_str).collect();
    archs.iter().find_map(|a| FAMILIES.iter().copied().find(|f| f.architectures.contains(a))).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "unknown architecture: no model_type, architectures={archs:?} (supported model types: {})",
                supported(|f| f.model_types)
            ),
        )
    })
}

/// The family of a GGUF file from `general.architecture`.
pub fn for_gguf(file: &GgufFile) -> Result<&'static FamilyLoader> {
    let arch = file.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    FAMILIES.iter().copied().find(|f| f.gguf_architectures.contains(&arch)).ok_or_else(|| {
        Error::format(
            &file.path,
            format!("unknown GGUF architecture {arch:?} (supported: {})", supported(|f| f.gguf_architectures)),
        )
    })
}

/// The error for a family that has no GGUF reader.
pub fn no_gguf(file: &GgufFile, family: &FamilyLoader) -> Error {
    Error::format(&file.path, format!("{} models are not read from GGUF files", family.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_belongs_to_one_family() {
        let lists: [fn(&FamilyLoader) -> &'static [&'static str]; 3] =
            [|f| f.model_types, |f| f.architectures, |f| f.gguf_architectures];
        for list in lists {
            let all: Vec<&str> = FAMILIES.iter().flat_map(|f| list(f).iter().copied()).collect();
            let unique: std::collections::BTreeSet<&str> = all.iter().copied().collect();
            assert_eq!(all.len(), unique.len(), "a name is claimed twice: {all:?}");
        }
    }

    #[test]
    fn architectures_name_the_family_when_model_type_is_missing() {
        let cfg = serde_json::json!({"architectures": ["Qwen2ForCausalLM"]});
        assert_eq!(for_checkpoint(Path::new("config.json"), &cfg).unwrap().name, "llama");
        let cfg = serde_json::json!({"model_type": "gpt_neox"});
        let err = for_checkpoint(Path::new("config.json"), &cfg).err().unwrap().to_string();
        assert!(err.contains("unknown architecture") && err.contains("qwen2"), "{err}");
    }
}
