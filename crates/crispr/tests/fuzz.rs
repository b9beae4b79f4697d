//! A stable-Rust mutation fuzzer for every reader of user-supplied files (issue 15). cargo-fuzz
//! needs a nightly toolchain, which this project does not use; this driver mutates valid seeds
//! (bit flips, boundary integers such as 2^64−1 over 8-byte fields, insertions, deletions,
//! duplications, splices between seeds, truncation) and runs each reader under `catch_unwind`,
//! with a watchdog for hangs and an address-space limit that turns an absurd allocation into a
//! failure instead of swapping. It is not coverage-guided.
//!
//! In the normal test suite each target runs a short smoke (`CRISPR_FUZZ_EXECS`, default 500
//! executions). A longer run: `CRISPR_FUZZ_SECS=600 cargo test --release --test fuzz -- --nocapture
//! --test-threads 1` (seconds per target); each target prints its executions and time. A failing
//! input is written to `target/fuzz-failures/<target>-<n>.bin`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crispr::rng::SplitMix64;

/// An execution slower than this is reported as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Boundary values written over 1, 2, 4 or 8 bytes.
const INTERESTING: [u64; 10] = [0, 1, 7, 0x7f, 0x80, 0xff, 0x7fff_ffff, 1 << 32, u64::MAX, 1 << 63];

fn mutate(rng: &mut SplitMix64, seeds: &[Vec<u8>], focus: usize) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        // Most mutations land in the first `focus` bytes (headers), where the structure lives.
        let span = if focus > 0 && rng.below(4) != 0 { focus.min(b.len()) } else { b.len() };
        let at = if span == 0 { 0 } else { rng.below(span) };
        let last = b.len().saturating_sub(1);
        match rng.below(8) {
            0 if !b.is_empty() => b[at.min(last)] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at.min(last)] = INTERESTING[rng.below(INTERESTING.len())] as u8,
            2 => {
                let width = [2, 4, 8][rng.below(3)];
                if at + width <= b.len() {
                    let v = INTERESTING[rng.below(INTERESTING.len())].wrapping_sub(rng.below(3) as u64);
                    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            3 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at.min(end)..end);
            }
            5 if !b.is_empty() => {
                let end = (at + 1 + rng.below(256)).min(b.len());
                let piece = b[at.min(end)..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, piece);
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let end = (from + 1 + rng.below(512)).min(other.len());
                    let cut = at.min(b.len());
                    b.truncate(cut);
                    b.extend_from_slice(&other[from..end]);
                }
            }
            _ => {
                let keep = rng.below(b.len() + 1);
                b.truncate(keep);
            }
        }
    }
    b
}

/// Runs a reader on one input (and a scratch folder); errors are fine, a panic is a failure.
type Reader = Box<dyn Fn(&[u8], &Path)>;

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    /// Bytes at the start that most mutations go to (0: anywhere).
    focus: usize,
    run: Reader,
}

/// Limit the address space so an absurd allocation fails at once (it aborts the process, which
/// fails the test) rather than paging the machine to a halt.
fn limit_memory() {
    let limit = 48u64 << 30;
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: setrlimit with a valid struct; lowering our own limit is always permitted.
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) };
}

fn fuzz(t: Target) {
    limit_memory();
    let execs_budget: u64 = std::env::var("CRISPR_FUZZ_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let secs: Option<u64> = std::env::var("CRISPR_FUZZ_SECS").ok().and_then(|v| v.parse().ok());
    let work = tempfile::tempdir().unwrap();
    let failures_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    // Watchdog: the time the current execution started (ms since `t0`; 0 = idle).
    let t0 = Instant::now();
    let started = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(Vec::<u8>::new()));
    let done = Arc::new(AtomicU64::new(0));
    {
        let (started, current, done, dir, name) =
            (started.clone(), current.clone(), done.clone(), failures_dir.clone(), t.name);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if done.load(Ordering::Relaxed) == 1 {
                return;
            }
            let s = started.load(Ordering::Relaxed);
            if s != 0 && t0.elapsed().as_millis() as u64 - s > HANG.as_millis() as u64 {
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("{name}-hang.bin"));
                let _ = std::fs::write(&path, &*current.lock().unwrap_or_else(|e| e.into_inner()));
                eprintln!("fuzz {name}: an execution ran over {HANG:?}; input saved to {}", path.display());
                std::process::abort();
            }
        });
    }
    let mut rng = SplitMix64::new(0x15_f022 ^ t.name.len() as u64);
    let start = Instant::now();
    let (mut execs, mut failures) = (0u64, Vec::new());
    // Seeds first (they must pass), then mutants.
    let mut inputs = t.seeds.clone().into_iter();
    loop {
        let over = match secs {
            Some(s) => start.elapsed() >= Duration::from_secs(s),
            None => execs >= execs_budget,
        };
        if over {
            break;
        }
        let input = inputs.next().unwrap_or_else(|| mutate(&mut rng, &t.seeds, t.focus));
        *current.lock().unwrap() = input.clone();
        started.store(t0.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)(&input, work.path())));
        started.store(0, Ordering::Relaxed);
        execs += 1;
        if outcome.is_err() {
            std::fs::create_dir_all(&failures_dir).unwrap();
            let path = failures_dir.join(format!("{}-{}.bin", t.name, failures.len()));
            std::fs::write(&path, &input).unwrap();
            failures.push(path);
        }
    }
    done.store(1, Ordering::Relaxed);
    eprintln!(
        "fuzz {}: {execs} executions in {:.1} s, {} panics",
        t.name,
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "fuzz {}: panics on {failures:?}", t.name);
}

/// After a successful load, exercise the model the way `score` does.
fn use_model(m: &crispr::loader::LoadedModel) {
    for raw in [false, true] {
        let style = m.prompt_style(raw);
        if let Ok(enc) = crispr::score::encode(&m.text, style, "Is it? Answer:", &["yes".into(), "no".into()]) {
            let s = m.model.score(&enc.prompt, &enc.candidates);
            assert_eq!(s.len(), 2);
        }
    }
}

fn fixture(parts: &[&str]) -> Vec<u8> {
    let mut p = common::fixtures();
    for part in parts {
        p = p.join(part);
    }
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn fuzz_gguf_reader_and_loader() {
    let (meta, tensors) = common::gguf_build::tiny_llama();
    let tiny = common::gguf_build::gguf_bytes(&meta, &tensors);
    let header = tiny.len() - tensors.iter().map(|t| t.data.len()).sum::<usize>();
    fuzz(Target {
        name: "gguf",
        seeds: vec![tiny, fixture(&["gguf", "quants.gguf"])],
        focus: header,
        run: Box::new(|bytes, dir| {
            let path = dir.join("f.gguf");
            std::fs::write(&path, bytes).unwrap();
            if let Ok(f) = crispr::gguf::GgufFile::open(&path) {
                for t in &f.tensors {
                    assert_eq!(f.dequantize(t).len() as u64, t.n_elements());
                }
            }
            if let Ok(m) = crispr::loader::load(&path) {
                use_model(&m);
            }
        }),
    });
}

/// The SentencePiece vocabularies of GGUF files (Gemma's, Phi-3's, Llama's rules), rebuilt into
/// a tokenizer that then encodes text and a chat prompt.
#[test]
fn fuzz_gguf_sentencepiece_tokenizer() {
    let seeds: Vec<Vec<u8>> =
        ["gemma3", "phi3", "llama"].iter().map(|arch| fixture(&["gguf", &format!("spm_{arch}.gguf")])).collect();
    let focus = seeds[0].len();
    fuzz(Target {
        name: "gguf_sentencepiece",
        seeds,
        focus,
        run: Box::new(|bytes, dir| {
            let path = dir.join("v.gguf");
            std::fs::write(&path, bytes).unwrap();
            if let Ok(f) = crispr::gguf::GgufFile::open(&path) {
                if let Ok(text) = crispr::text::TextCodec::from_gguf(&f) {
                    let _ = text.encode("Who was  crying? <s> <unk>", true);
                    let _ = text.chat_prompt("Who was crying?");
                }
            }
        }),
    });
}

/// A checkpoint directory (the tiny Llama fixture) with one file replaced by the input.
fn checkpoint_target(name: &'static str, file: &'static str, focus: usize) -> Target {
    let seed = fixture(&["tiny", "llama", file]);
    let focus = if file == "model.safetensors" {
        8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize
    } else {
        focus
    };
    Target {
        name,
        seeds: vec![seed],
        focus,
        run: Box::new(move |bytes, dir| {
            let ck = dir.join("ck");
            if !ck.exists() {
                std::fs::create_dir(&ck).unwrap();
                for f in [
                    "config.json",
                    "model.safetensors",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "chat_template.jinja",
                ] {
                    std::fs::copy(common::fixtures().join("tiny").join("llama").join(f), ck.join(f)).unwrap();
                }
            }
            std::fs::write(ck.join(file), bytes).unwrap();
            if let Ok(m) = crispr::loader::load(&ck) {
                use_model(&m);
            }
        }),
    }
}

#[test]
fn fuzz_safetensors_checkpoint() {
    fuzz(checkpoint_target("safetensors", "model.safetensors", 0));
}

#[test]
fn fuzz_checkpoint_config_json() {
    fuzz(checkpoint_target("config_json", "config.json", 0));
}

/// Tokenizer and chat-template loading from a checkpoint-style folder.
fn tokenizer_target(name: &'static str, file: &'static str) -> Target {
    Target {
        name,
        seeds: vec![fixture(&["tiny", "tokenizer", file])],
        focus: 0,
        run: Box::new(move |bytes, dir| {
            let tk = dir.join("tk");
            if !tk.exists() {
                std::fs::create_dir(&tk).unwrap();
                for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
                    std::fs::copy(common::fixtures().join("tiny").join("tokenizer").join(f), tk.join(f)).unwrap();
                }
            }
            std::fs::write(tk.join(file), bytes).unwrap();
            if let Ok(t) = crispr::text::TextCodec::from_dir(&tk) {
                let _ = t.chat_prompt("Who was it? Answer: the grandson");
                let _ = t.encode("plain text", true);
            }
        }),
    }
}

#[test]
fn fuzz_tokenizer_json() {
    fuzz(tokenizer_target("tokenizer_json", "tokenizer.json"));
}

#[test]
fn fuzz_tokenizer_config_json() {
    fuzz(tokenizer_target("tokenizer_config", "tokenizer_config.json"));
}

#[test]
fn fuzz_chat_template() {
    fuzz(tokenizer_target("chat_template", "chat_template.jinja"));
}

/// The first `n` lines of a shared data file.
fn data_head(rel: &str, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(common::data_dir().join(rel)).unwrap();
    text.split_inclusive('\n').take(n).collect::<String>().into_bytes()
}

#[test]
fn fuzz_bbq_and_custom_jsonl() {
    let custom =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds/custom.jsonl")).unwrap();
    fuzz(Target {
        name: "jsonl",
        seeds: vec![data_head("bbq/data/Age.jsonl", 3), custom],
        focus: 0,
        run: Box::new(|bytes, _| {
            let p = Path::new("fuzz.jsonl");
            for examples in
                [crispr::data::bbq::parse(p, bytes), crispr::data::custom::parse(p, bytes)].into_iter().flatten()
            {
                for e in &examples {
                    assert!(e.candidates.is_empty() || e.label < e.candidates.len());
                }
            }
        }),
    });
}

#[test]
fn fuzz_glue_readers() {
    let seeds: Vec<Vec<u8>> =
        crispr::data::glue::TASKS.iter().map(|t| data_head(crispr::data::glue::default_path(t).unwrap(), 4)).collect();
    fuzz(Target {
        name: "glue",
        seeds,
        focus: 0,
        run: Box::new(|bytes, _| {
            for task in crispr::data::glue::TASKS {
                let _ = crispr::data::glue::parse(task, Path::new("fuzz.tsv"), bytes);
            }
        }),
    });
}

#[test]
fn fuzz_run_config_toml() {
    let cfg = crispr::pipeline::RunConfig::preset("quick", "m.gguf", "bbq:Age", vec!["rte".into()]).unwrap();
    let seed = toml::to_string_pretty(&cfg).unwrap().into_bytes();
    fuzz(Target {
        name: "config_toml",
        seeds: vec![seed],
        focus: 0,
        run: Box::new(|bytes, _| {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(c) = toml::from_str::<crispr::pipeline::RunConfig>(text) {
                    let _ = c.validate();
                }
            }
        }),
    });
}
