//! What may be written where by `crispr run`: recognising a run directory, locking it, and
//! noticing inputs that changed under a run being resumed.
//!
//! A **run directory** is one crispr created: it holds the lock file [`crate::lock::LOCK_FILE`]
//! (made before anything else is written) or, for runs from before the lock existed, a
//! `config.toml` that parses as a [`RunConfig`]. `crispr run --out DIR` works in a new or empty
//! DIR or a run directory, and refuses anything else, so a folder of the user's own `report.md`
//! or `metrics.json` is never overwritten.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::atomic_write;
use crate::lock::{DirLock, LOCK_FILE};
use crate::run_config::RunConfig;

/// File recording the checksums of a run's inputs.
pub const INPUTS_FILE: &str = "inputs.json";

/// Check that `dir` may hold a run (creating it if needed) and lock it for this process. Done
/// before any computation, so a bad `--out` fails at once.
pub fn open(dir: &Path) -> Result<DirLock> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::format(dir, "is not a directory (--out names the run directory)"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if !is_run_dir(dir) {
        let mut entries: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        if !entries.is_empty() {
            entries.sort();
            entries.truncate(3);
            return Err(Error::format(
                dir,
                format!(
                    "holds other files ({}, …) and is not a crispr run directory; choose a new or empty --out",
                    entries.join(", ")
                ),
            ));
        }
    }
    DirLock::acquire(dir)
}

/// Whether crispr made `dir` (see the module documentation).
pub fn is_run_dir(dir: &Path) -> bool {
    if dir.join(LOCK_FILE).is_file() {
        return true;
    }
    std::fs::read_to_string(dir.join("config.toml")).is_ok_and(|t| toml::from_str::<RunConfig>(&t).is_ok())
}

/// Checksums of what a run reads: the model's files and each task's data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub model: String,
    /// Task spec → SHA-256 of its file.
    pub tasks: BTreeMap<String, String>,
}

/// On a fresh run, record `now`; on a resumed one, refuse if an input changed since the run
/// started (its cached results, and the pruned model, would belong to the old input).
pub fn check_inputs(dir: &Path, now: &Inputs) -> Result<()> {
    let path = dir.join(INPUTS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: Inputs = serde_json::from_str(&text)
                .map_err(|e| Error::format(&path, format!("invalid record of the run's inputs: {e}")))?;
            let fresh = "start a new run with another --out";
            if old.model != now.model {
                return Err(Error::format(
                    &path,
                    format!("the model's files changed since this run started (checksums differ); {fresh}"),
                ));
            }
            for (task, sha) in &now.tasks {
                match old.tasks.get(task) {
                    Some(o) if o != sha => {
                        return Err(Error::format(
                            &path,
                            format!(
                                "the data of task {task} changed since this run started (sha256 {o} → {sha}); {fresh}"
                            ),
                        ))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(now).map_err(|e| Error::msg(e.to_string()))?;
            atomic_write(&path, text.as_bytes())
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}
