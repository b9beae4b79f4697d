//! Where results come from: the model's checksum and what `neurons.json` records about an
//! attribution (shared by `crispr attribute` and `crispr run`).

use std::path::Path;

/// The model's checksum: the SHA-256 of a .gguf file, or of a checkpoint's weight and JSON files
/// (`name:sha256` joined by commas). Unreadable files count as `unavailable`.
pub fn model_checksum(path: &Path) -> String {
    let sha = |p: &Path| crate::resolve::sha256_file(p).unwrap_or_else(|_| "unavailable".into());
    if path.is_file() {
        return sha(path);
    }
    // The weight files the loader reads (the same rule as loading and export), plus the JSON
    // files (configuration, tokenizer, index).
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(path).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "json"));
    files.extend(crate::weights::checkpoint_weight_files(path).unwrap_or_default());
    files.sort();
    let joined: Vec<String> =
        files.iter().map(|p| format!("{}:{}", p.file_name().unwrap_or_default().to_string_lossy(), sha(p))).collect();
    joined.join(",")
}

/// What `neurons.json` records about how scores were computed (the same for `crispr attribute`
/// and `crispr run`): model and task with their checksums, instructions, settings, split seed and
/// the sampled instances of each seed.
pub fn attribution_metadata(
    loaded: &crate::loader::LoadedModel,
    task: &crate::data::Task,
    set: &crate::data::InstructionSet,
    settings: &crate::attribution::Settings,
    split_seed: u64,
    samples: &[(u64, Vec<usize>)],
) -> serde_json::Value {
    let path = loaded.format.path();
    serde_json::json!({
        "tool": {"name": "crispr", "version": env!("CARGO_PKG_VERSION")},
        "model": {"path": path.display().to_string(), "sha256": model_checksum(path)},
        "task": {"name": task.name, "source": task.source.display().to_string(), "sha256": task.sha256},
        "instructions": {"name": set.name, "ids": set.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>()},
        "settings": settings,
        "split_seed": split_seed,
        "samples": samples.iter().map(|(seed, idx)| serde_json::json!({"seed": seed, "indices": idx})).collect::<Vec<_>>(),
    })
}
