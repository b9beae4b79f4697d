//! Hostile inputs (issue 15): crafted files and arguments must give one clear error naming the
//! file and the problem — never a panic, a hang, an absurd allocation or a silently wrong number.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::gguf_build::{self, set_meta, Meta, TensorSpec};
use common::{crispr_bin, fixtures};
use crispr::gguf::GgufFile;

fn open_err(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

fn load_err(path: &Path) -> String {
    match crispr::loader::load(path) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} missing from: {msg}");
    }
}

/// Run `f` on another thread; fail the test if it takes longer than `secs` (a hang).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("did not finish in time (hang?)")
}

fn tiny_gguf(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<(String, Meta)>, &mut Vec<TensorSpec>)) -> PathBuf {
    let (mut meta, mut tensors) = gguf_build::tiny_llama();
    edit(&mut meta, &mut tensors);
    let path = dir.join(name);
    gguf_build::write(&path, &meta, &tensors);
    path
}

fn tensor<'a>(tensors: &'a mut [TensorSpec], name: &str) -> &'a mut TensorSpec {
    tensors.iter_mut().find(|t| t.name == name).expect("tensor in the tiny model")
}

#[test]
fn the_crafted_tiny_gguf_model_loads_and_scores() {
    // The base every corruption below starts from must itself be valid.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "ok.gguf", |_, _| {});
    let m = crispr::loader::load(&path).unwrap();
    let enc = crispr::score::encode(&m.text, m.prompt_style(false), "Hi?", &["yes".into(), "no".into()]).unwrap();
    assert_eq!(*enc.candidates[0].last().unwrap(), 257, "<|im_end|> closes the turn");
    let s = m.model.score(&enc.prompt, &enc.candidates);
    assert!(s.iter().all(|x| x.is_finite() && *x < 0.0), "{s:?}");
}

#[test]
fn gguf_alignment_near_2_pow_64_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "align.gguf", |m, _| set_meta(m, "general.alignment", Meta::U64(u64::MAX)));
    assert_has(&open_err(&path), &["align.gguf", "general.alignment is 18446744073709551615", "power of two"]);
    let path = tiny_gguf(dir.path(), "align0.gguf", |m, _| set_meta(m, "general.alignment", Meta::U32(0)));
    assert_has(&open_err(&path), &["general.alignment is 0"]);
}

#[test]
fn gguf_tensor_offsets_near_2_pow_64_or_wrapping_into_the_header_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "far.gguf", |_, t| t[1].offset = Some(u64::MAX - 31));
    assert_has(&open_err(&path), &["far.gguf", "tensor output_norm.weight", "extends past the end"]);
    // An offset that, added to the data start, wraps round to byte 0 of the file (the header).
    let ok = tiny_gguf(dir.path(), "ok.gguf", |_, _| {});
    let wrap = 0u64.wrapping_sub(GgufFile::open(&ok).unwrap().data_offset);
    let path = tiny_gguf(dir.path(), "wrap.gguf", |_, t| t[0].offset = Some(wrap));
    assert_has(&open_err(&path), &["wrap.gguf", "tensor token_embd.weight", "extends past the end"]);
    let path = tiny_gguf(dir.path(), "odd.gguf", |_, t| t[1].offset = Some(7));
    assert_has(&open_err(&path), &["offset 7 is not a multiple of the alignment 32"]);
}

#[test]
fn gguf_dimensions_whose_product_overflows_are_an_error() {
    // token_embd [64, 2^60] and no vocab_size key: the element count wraps to 0 in u64.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "dims.gguf", |_, t| {
        t[0] = TensorSpec { dims: vec![64, 1 << 60], ..t[0].clone() };
    });
    assert_has(&open_err(&path), &["dims.gguf", "tensor token_embd.weight", "extends past the end"]);
    let o = Command::new(crispr_bin()).args(["info", "--model"]).arg(&path).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_has(&String::from_utf8_lossy(&o.stderr), &["crispr: error:", "dims.gguf", "token_embd.weight"]);
}

#[test]
fn gguf_array_counts_are_checked_against_the_bytes_present() {
    let dir = tempfile::tempdir().unwrap();
    // An array of 2^40 arrays, each declared empty: 12 bytes per element in the file at least.
    let mut payload = 9u32.to_le_bytes().to_vec();
    payload.extend((1u64 << 40).to_le_bytes());
    payload.extend([0u8; 64]);
    let path = tiny_gguf(dir.path(), "nested.gguf", |m, _| m.insert(0, ("x.nested".into(), Meta::Raw(9, payload))));
    assert_has(&open_err(&path), &["nested.gguf", "x.nested", "runs past the end"]);
    // 200 000 real empty nested arrays (2.4 MB) load without reserving ~32 bytes per file byte.
    let items: Vec<Vec<u8>> =
        (0..200_000).map(|_| [0u32.to_le_bytes().to_vec(), 0u64.to_le_bytes().to_vec()].concat()).collect();
    let path = tiny_gguf(dir.path(), "many.gguf", |m, _| m.insert(0, ("x.many".into(), Meta::Array(9, items))));
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get("x.many").and_then(|v| v.as_array()).map(<[_]>::len), Some(200_000));
    // 9 MB of one-byte elements would be 9 M values of 32 bytes each in memory: refused.
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend(9_000_000u64.to_le_bytes());
    payload.resize(payload.len() + 9_000_000, 1);
    let path = tiny_gguf(dir.path(), "bytes.gguf", |m, _| m.insert(0, ("x.bytes".into(), Meta::Raw(9, payload))));
    assert_has(&open_err(&path), &["bytes.gguf: x.bytes: more than 8388608 metadata values"]);
}

#[test]
fn absurd_layer_counts_fail_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        tiny_gguf(dir.path(), "blocks.gguf", |m, _| set_meta(m, "llama.block_count", Meta::U64(1_000_000_000_000)));
    let err = within(60, move || load_err(&path));
    assert_has(&err, &["blocks.gguf", "num_hidden_layers = 1000000000000 is implausibly large"]);
    // Plausible but not backed by the file.
    let path = tiny_gguf(dir.path(), "blocks3.gguf", |m, _| set_meta(m, "llama.block_count", Meta::U32(3)));
    assert_has(&load_err(&path), &["blocks3.gguf", "3 layers but the weights lack layer 2"]);
    // config.json of a checkpoint.
    let ck = checkpoint_copy(dir.path(), "layers");
    edit_json(&ck.join("config.json"), |v| v["num_hidden_layers"] = 1_000_000_000.into());
    let err = within(60, move || load_err(&ck));
    assert_has(&err, &["config.json", "num_hidden_layers = 1000000000 is implausibly large"]);
}

#[test]
fn token_type_longer_than_the_token_list_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        tiny_gguf(dir.path(), "types.gguf", |m, _| set_meta(m, "tokenizer.ggml.token_type", Meta::i32s(&[1; 300])));
    assert_has(&load_err(&path), &["types.gguf", "token_type has 300 entries but tokenizer.ggml.tokens has 258"]);
}

#[test]
fn eos_token_id_outside_the_vocabulary_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "eos.gguf", |m, _| {
        set_meta(m, "tokenizer.ggml.eos_token_id", Meta::U32(1_000_000));
        set_meta(m, "tokenizer.chat_template", Meta::Str("{% for m in messages %}{{ m.content }}{% endfor %}".into()));
    });
    assert_has(
        &load_err(&path),
        &["eos.gguf: tokenizer.ggml.eos_token_id = 1000000 is not an index into the 258 tokens"],
    );
}

#[test]
fn non_finite_weights_and_constants_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "nan.gguf", |_, t| {
        let q = tensor(t, "blk.0.attn_q.weight");
        q.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_has(
        &load_err(&path),
        &["nan.gguf", "tensor blk.0.attn_q.weight holds a non-finite value (NaN) at element 2"],
    );
    let path = tiny_gguf(dir.path(), "theta.gguf", |m, _| set_meta(m, "llama.rope.freq_base", Meta::F32(0.0)));
    assert_has(&load_err(&path), &["theta.gguf", "rope_theta = 0 must be a positive finite number"]);
    let ck = checkpoint_copy(dir.path(), "eps");
    edit_json(&ck.join("config.json"), |v| v["rms_norm_eps"] = (-1e-6).into());
    assert_has(&load_err(&ck), &["config.json", "rms_norm_eps = -0.000001 must be a positive finite number"]);
    let ck = checkpoint_copy(dir.path(), "theta");
    edit_json(&ck.join("config.json"), |v| v["rope_theta"] = 0.into());
    assert_has(&load_err(&ck), &["rope_theta = 0 must be a positive finite number"]);
    // A NaN in a safetensors checkpoint: overwrite the first value of the final norm.
    let ck = checkpoint_copy(dir.path(), "nanck");
    let st = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["model.norm.weight"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    assert_has(
        &load_err(&ck),
        &["model.safetensors", "tensor model.norm.weight holds a non-finite value (inf) at element 0"],
    );
}

#[test]
fn a_chat_template_that_never_ends_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let endless = "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
    let path =
        tiny_gguf(dir.path(), "loop.gguf", |m, _| set_meta(m, "tokenizer.chat_template", Meta::Str(endless.into())));
    let err = within(120, move || load_err(&path));
    assert_has(&err, &["loop.gguf", "chat template", "fuel"]);
}

#[test]
fn prompts_longer_than_the_context_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "ctx.gguf", |_, _| {});
    let m = crispr::loader::load(&path).unwrap();
    let long = "word ".repeat(40); // 200 byte tokens > 64
    let err = crispr::score::encode(&m.text, m.prompt_style(false), &long, &["a".into(), "b".into()]).unwrap_err();
    assert_has(&err.to_string(), &["longer than the model's context of 64 tokens", "ctx.gguf"]);
    // A 10 MB line is refused before it is tokenized.
    let huge = "x".repeat(10 << 20);
    let err = within(20, move || {
        crispr::score::encode(&m.text, m.prompt_style(true), &huge, &["a".into(), "b".into()]).unwrap_err().to_string()
    });
    assert_has(&err, &["the prompt is 10485760 bytes", "context of 64 tokens"]);
}

#[test]
fn absurd_thread_counts_are_refused_at_once() {
    let o = Command::new(crispr_bin()).args(["--threads", "100000", "info"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_has(&String::from_utf8_lossy(&o.stderr), &["--threads", "100000 is not in 1..=1024"]);
    let o = Command::new(crispr_bin()).args(["--threads", "0", "info"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn checkpoint_copy(dir: &Path, name: &str) -> PathBuf {
    let src = fixtures().join("tiny").join("llama");
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---- silently wrong results ----

/// `crispr ARGS` with a data directory set, returning (exit code, stderr).
fn cli(args: &[&str], data_dir: &Path) -> (Option<i32>, String) {
    let o = Command::new(crispr_bin()).args(args).env("CRISPR_DATA_DIR", data_dir).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A custom task of `n` yes/no prompts.
fn yes_no_task(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("yn{n}.jsonl"));
    let lines: String = (0..n)
        .map(|i| format!("{{\"prompt\": \"Is {i} even?\", \"candidates\": [\"yes\", \"no\"], \"label\": {}}}\n", i % 2))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn a_stray_safetensors_file_is_neither_loaded_nor_pruned() {
    use crispr::export::{write_pruned, RowsByModule};
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint_copy(dir.path(), "ck");
    let original = std::fs::read(ck.join("model.safetensors")).unwrap();
    // Sorts before model.safetensors in any directory listing.
    std::fs::write(ck.join("aaa_backup.safetensors"), &original).unwrap();
    let loaded = crispr::loader::load(&ck).unwrap();
    let module = "model.layers.0.mlp.up_proj";
    let rows: RowsByModule = [(module.to_string(), vec![0, 5])].into();
    let out = dir.path().join("pruned");
    write_pruned(&loaded.format, &rows, &out).unwrap();
    let pruned = common::read_safetensors(&out.join("model.safetensors"));
    let (shape, w) = &pruned[&format!("{module}.weight")];
    let cols = shape[1];
    assert!(w[..cols].iter().chain(&w[5 * cols..6 * cols]).all(|&x| x == 0.0), "rows 0 and 5 zeroed in the model");
    assert!(w[cols..2 * cols].iter().any(|&x| x != 0.0));
    assert_eq!(
        std::fs::read(out.join("aaa_backup.safetensors")).unwrap(),
        original,
        "the stray file is copied untouched"
    );
}

#[test]
fn shard_paths_outside_the_checkpoint_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shard) in [("up", "../outside.safetensors".to_string()), ("abs", "/etc/passwd".to_string())] {
        let ck = checkpoint_copy(dir.path(), name);
        let index = serde_json::json!({"weight_map": {"model.norm.weight": shard}});
        std::fs::write(ck.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = load_err(&ck);
        assert_has(&err, &["model.safetensors.index.json", "is not a file name inside the checkpoint directory"]);
    }
}

#[test]
fn non_finite_lambda_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for v in ["NaN", "inf", "-inf"] {
        let lambda = format!("--lambda={v}");
        let (code, err) = cli(&["attribute", "--model", "m.gguf", "--out", "x", &lambda], dir.path());
        assert_eq!(code, Some(2), "{err}");
        assert_has(&err, &["--lambda", "is not a finite number"]);
    }
}

#[test]
fn evaluating_or_attributing_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_gguf(d, "m.gguf", |_, _| {});
    let (m, out) = (model.to_str().unwrap(), d.join("out"));
    let task20 = format!("jsonl:{}", yes_no_task(d, 20).display());
    let (code, err) =
        cli(&["eval", "--model", m, "--task", &task20, "--limit", "0", "--out", out.to_str().unwrap()], d);
    assert_eq!(code, Some(2));
    assert_has(&err, &["--limit 0 selects no instances"]);
    // One example: its dev split is empty.
    let task1 = format!("jsonl:{}", yes_no_task(d, 1).display());
    let (code, err) =
        cli(&["eval", "--model", m, "--task", &task1, "--split", "dev", "--out", out.to_str().unwrap()], d);
    assert_eq!(code, Some(2));
    assert_has(&err, &["yn1.jsonl", "no instances to evaluate (empty split or limit 0)"]);
    assert!(!out.join("metrics.json").exists());
    let (code, err) =
        cli(&["attribute", "--model", m, "--task", &task20, "--samples", "0", "--out", out.to_str().unwrap()], d);
    assert_eq!(code, Some(2));
    assert_has(&err, &["--samples 0 attributes nothing"]);
}

#[test]
fn eval_top_or_random_beyond_the_universe_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_gguf(d, "m.gguf", |_, _| {});
    let m = model.to_str().unwrap();
    let task = format!("jsonl:{}", yes_no_task(d, 20).display());
    let attr = d.join("attr");
    let (code, err) =
        cli(&["attribute", "--model", m, "--task", &task, "--samples", "2", "--out", attr.to_str().unwrap()], d);
    assert_eq!(code, Some(0), "{err}");
    let out = d.join("ev");
    let (code, err) = cli(
        &[
            "eval",
            "--model",
            m,
            "--task",
            &task,
            "--scores",
            attr.to_str().unwrap(),
            "--top",
            "99999999",
            "--out",
            out.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, Some(2));
    // 1 layer: q, k, v, o (8 each), gate, up (16), down (8).
    assert_has(&err, &["--top 99999999 exceeds the 72 neurons of the linear universe"]);
    let (code, err) =
        cli(&["eval", "--model", m, "--task", &task, "--random", "73", "--out", out.to_str().unwrap()], d);
    assert_eq!(code, Some(2));
    assert_has(&err, &["--random 73 exceeds the 72 neurons of the linear universe"]);
    assert!(!out.join("metrics.json").exists());
}

#[test]
fn duplicate_candidates_in_a_custom_task_are_refused() {
    let err = crispr::data::custom::parse(
        Path::new("dup.jsonl"),
        b"{\"prompt\": \"p\", \"candidates\": [\"a\", \"b\"], \"label\": 0}\n{\"prompt\": \"q\", \"candidates\": [\"yes\", \"no\", \"yes\"], \"label\": \"yes\"}\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "dup.jsonl: line 2: candidates 0 and 2 are both \"yes\"; candidates must differ");
}

#[test]
fn bbq_categories_cannot_name_paths() {
    let dir = tempfile::tempdir().unwrap();
    let lite = dir.path().join("bbq_lite").join("data");
    std::fs::create_dir_all(&lite).unwrap();
    std::fs::create_dir_all(dir.path().join("bbq").join("data")).unwrap();
    std::fs::write(lite.join("SES.jsonl"), "{}\n").unwrap();
    for spec in ["bbq:../../bbq_lite/data/SES", "bbq:..", "bbq:/etc/passwd", "bbq-lite:..\\SES"] {
        let err = crispr::data::load_task(spec, dir.path()).unwrap_err().to_string();
        assert_has(&err, &["must be a plain name such as Age, not a path"]);
    }
}

// ---- writes ----

/// A run configuration for the crafted GGUF model on a custom task (`limit` 0: the whole test
/// split, to make a run last).
fn run_config(model: &str, task: &str, limit: usize) -> String {
    let settings = common::ATTRIBUTION_SETTINGS_TOML;
    format!(
        r#"model = "{model}"
task = "{task}"
retain = []
preset = "test"
split_seed = 0

[attribution]
samples = 4
seeds = [2026]
instructions = 0

{settings}

[search]
lo = 0
hi = 6
final_width = 2
dev_limit = 4
instructions = 0
seed = 0

[test]
limit = {limit}
instructions = 0
retain_limit = 4
retain_instructions = 0
random_seeds = [1]
seed = 0
"#
    )
}

fn run_cmd(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(crispr_bin());
    cmd.current_dir(cwd)
        .args(["run"])
        .args(args)
        .env("CRISPR_DATA_DIR", cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

fn finish(cmd: &mut Command) -> (Option<i32>, String) {
    let o = cmd.output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn run_out_must_be_a_run_directory_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_gguf(d, "m.gguf", |_, _| {});
    yes_no_task(d, 100);
    std::fs::write(d.join("run.toml"), run_config("m.gguf", "jsonl:yn100.jsonl", 8)).unwrap();
    // A folder of the user's own files.
    let mine = d.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("report.md"), "my notes").unwrap();
    std::fs::write(mine.join("metrics.json"), "{}").unwrap();
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "mine"]));
    assert_eq!(code, Some(2));
    assert_has(&err, &["mine: holds other files (metrics.json, report.md, …) and is not a crispr run directory"]);
    assert_eq!(std::fs::read_to_string(mine.join("report.md")).unwrap(), "my notes");
    // A file, and a place that cannot be written (under /proc even root cannot create folders).
    std::fs::write(d.join("afile"), "x").unwrap();
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "afile"]));
    assert_eq!(code, Some(2));
    assert_has(&err, &["afile: is not a directory"]);
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "/proc/crispr-run"]));
    assert_eq!(code, Some(2));
    assert_has(&err, &["/proc/crispr-run"]);
    assert!(!err.contains("attribution"), "refused before any work: {err}");
    // eval and attribute check their --out before loading anything.
    let (code, err) = cli(&["eval", "--model", "nonexistent", "--out", d.join("afile").to_str().unwrap()], d);
    assert_eq!(code, Some(2));
    assert_has(&err, &["afile: is not a directory"]);
}

#[test]
fn config_toml_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_gguf(d, "m.gguf", |_, _| {});
    yes_no_task(d, 100);
    let base = run_config("m.gguf", "jsonl:yn100.jsonl", 8);
    for (edit, want) in [
        (base.replace("lo = 0", "lo = 9"), "search.lo = 9 is larger than search.hi = 6"),
        (base.replace("alpha = true", "alpha = true\ncompat = \"nonsense\""), "compat = \"nonsense\" is unknown"),
        (base.replace("seed = 0\n", "seed = 0\nsamplez = 3\n"), "unknown field `samplez`"),
        (base.replace("lambda = 1.0", "lambda = nan"), "lambda = NaN is not a finite number"),
        (base.replace("samples = 4", "samples = 0"), "attribution.samples is 0"),
    ] {
        std::fs::write(d.join("bad.toml"), edit).unwrap();
        let (code, err) = finish(&mut run_cmd(d, &["--config", "bad.toml", "--out", "r"]));
        assert_eq!(code, Some(2), "{err}");
        assert_has(&err, &["bad.toml", want]);
        assert!(!d.join("r").exists(), "nothing written for an invalid configuration");
    }
}

fn wait_for_lock(dir: &Path) {
    let lock = dir.join(crispr::lock::LOCK_FILE);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_runs_on_one_directory_the_second_is_refused_and_a_killed_holder_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_gguf(d, "m.gguf", |_, _| {});
    yes_no_task(d, 3000);
    // Relative paths, resolved against the config file's folder.
    std::fs::write(d.join("run.toml"), run_config("m.gguf", "jsonl:yn3000.jsonl", 0)).unwrap();
    let first = run_cmd(d, &["--config", "run.toml", "--out", "r"]).spawn().unwrap();
    wait_for_lock(&d.join("r"));
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "r"]));
    assert_eq!(code, Some(2), "{err}");
    assert_has(&err, &["r: is in use by crispr pid", "wait for it to finish or choose another directory"]);
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "the first run completes: {}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("r").join("metrics.json").is_file());
    // config.toml recorded absolute paths: it replays from any folder.
    let cfg = std::fs::read_to_string(d.join("r").join("config.toml")).unwrap();
    assert!(cfg.contains(&format!("model = \"{}", d.display())), "{cfg}");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = run_cmd(elsewhere.path(), &["--config"]);
    cmd.arg(d.join("r").join("config.toml")).arg("--out").arg(d.join("r"));
    let (code, err) = finish(&mut cmd);
    assert_eq!(code, Some(0), "{err}");
    assert_has(&err, &["resuming"]);

    // kill -9 while holding the lock: the next run is not blocked and resumes.
    let mut victim = run_cmd(d, &["--config", "run.toml", "--out", "k"]).spawn().unwrap();
    wait_for_lock(&d.join("k"));
    victim.kill().unwrap();
    let _ = victim.wait();
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "k"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(d.join("k").join("metrics.json").is_file());
}

#[test]
fn resuming_after_the_model_or_task_changed_in_place_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_gguf(d, "m.gguf", |_, _| {});
    yes_no_task(d, 100);
    std::fs::write(d.join("run.toml"), run_config("m.gguf", "jsonl:yn100.jsonl", 8)).unwrap();
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "r"]));
    assert_eq!(code, Some(0), "{err}");
    // The same model with one weight changed, written over the original.
    tiny_gguf(d, "m.gguf", |_, t| tensor(t, "blk.0.attn_v.weight").data[0] ^= 1);
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "r"]));
    assert_eq!(code, Some(2));
    assert_has(&err, &["inputs.json: the model's files changed since this run started"]);
    tiny_gguf(d, "m.gguf", |_, _| {});
    let mut lines = std::fs::read_to_string(d.join("yn100.jsonl")).unwrap();
    lines = lines.replacen("Is 0 even?", "Is zero even?", 1);
    std::fs::write(d.join("yn100.jsonl"), lines).unwrap();
    let (code, err) = finish(&mut run_cmd(d, &["--config", "run.toml", "--out", "r"]));
    assert_eq!(code, Some(2));
    assert_has(&err, &["the data of task jsonl:", "yn100.jsonl changed since this run started"]);
}

// ---- unclear messages ----

#[test]
fn a_mistyped_local_model_path_is_not_taken_for_a_hub_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("models")).unwrap();
    let cache = d.join("cache");
    let o = Command::new(crispr_bin())
        .current_dir(d)
        .args(["info", "--model", "models/tiny.ggf"])
        .env("CRISPR_CACHE_DIR", &cache)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        "crispr: error: models/tiny.ggf: no such file or directory (models/ is a folder here, so this is a local path, not a Hub id)"
    );
    assert!(!cache.exists(), "no stray cache folder");
}

#[test]
fn io_errors_name_the_users_file_once_and_leave_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_gguf(d, "m.gguf", |_, _| {});
    let task = format!("jsonl:{}", yes_no_task(d, 20).display());
    let out = d.join("ev");
    // A file-size limit of 1 block stands in for a full disk: writes past it fail with EFBIG.
    let script = format!(
        "trap '' XFSZ; ulimit -f 1; exec '{}' eval --model '{}' --task '{task}' --limit 4 --split all --out '{}'",
        crispr_bin().display(),
        model.display(),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).env("CRISPR_DATA_DIR", d).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with(&format!("crispr: error: {}: File too large", out.join("metrics.json").display())),
        "{err}"
    );
    assert_eq!(line.matches("File too large").count(), 1, "cause printed once: {line}");
    assert!(!line.contains(".tmp-"), "{line}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "temporaries left: {left:?}");
    // The library function itself.
    let err = crispr::files::atomic_write(Path::new("/proc/crispr-test.json"), b"{}").unwrap_err().to_string();
    assert!(err.starts_with("/proc/crispr-test.json: ") && !err.contains(".tmp-"), "{err}");
}

#[test]
fn a_closed_pipe_ends_score_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_gguf(d, "m.gguf", |_, _| {});
    let input = d.join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"Hi\", \"candidates\": [\"a\", \"b\"]}\n".repeat(5000)).unwrap();
    let mut child = Command::new(crispr_bin())
        .args(["score", "--raw", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("logprobs"), "{first}");
    // The reader is dropped here, as `| head -1` exits.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn a_truncated_tokenizer_json_is_an_error_not_a_panic() {
    // Found by tests/fuzz.rs: the tokenizers library panics on some malformed JSON.
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint_copy(dir.path(), "tk");
    let text = std::fs::read(ck.join("tokenizer.json")).unwrap();
    std::fs::write(ck.join("tokenizer.json"), &text[..text.len() / 2]).unwrap();
    assert_has(&load_err(&ck), &["tokenizer.json: invalid JSON: EOF while parsing"]);
}

#[test]
fn non_finite_attribution_scores_are_refused_by_prune() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_gguf(d, "m.gguf", |_, _| {});
    let m = model.to_str().unwrap();
    let task = format!("jsonl:{}", yes_no_task(d, 20).display());
    let attr = d.join("attr");
    let (code, err) =
        cli(&["attribute", "--model", m, "--task", &task, "--samples", "2", "--out", attr.to_str().unwrap()], d);
    assert_eq!(code, Some(0), "{err}");
    let st = attr.join("scores.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["model.layers.0.mlp.up_proj"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start + 12..start + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    let out = d.join("p.gguf");
    let (code, err) = cli(
        &["prune", "--model", m, "--scores", attr.to_str().unwrap(), "--top", "3", "--out", out.to_str().unwrap()],
        d,
    );
    assert_eq!(code, Some(2));
    assert_has(&err, &["scores.safetensors: model.layers.0.mlp.up_proj: score of row 3 is NaN (not a finite number)"]);
    assert!(!out.exists());
}
