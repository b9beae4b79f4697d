//! Write a T5 checkpoint with deterministic random weights in the exact flan-t5-small or
//! flan-t5-base shape (the configurations of the parity fixtures), for benchmarks of the real
//! command line on T5 without downloading weights:
//!
//!     cargo run --release --example random_t5 -- base /tmp/flan-t5-base-random [TOKENIZER_JSON]
//!
//! The tokenizer defaults to the shared T5 tokenizer (`$CRISPR_DATA_DIR/tokenizers/t5/tokenizer.json`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (shape, out) = match args.as_slice() {
        [s, o, ..] => (s.clone(), PathBuf::from(o)),
        _ => return Err("usage: random_t5 small|base OUT_DIR [TOKENIZER_JSON]".into()),
    };
    let tokenizer = match args.get(2) {
        Some(t) => PathBuf::from(t),
        None => crispr::data::resolve_data_dir(None)?.join("tokenizers/t5/tokenizer.json"),
    };
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5/expected.json");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fixture)?)?;
    let config =
        meta["models"].get(&shape).ok_or(format!("unknown shape {shape:?} (small or base)"))?["config"].clone();
    let seed = meta["generator"]["seed"].as_u64().ok_or("fixture has no generator seed")?;
    std::fs::create_dir_all(&out)?;
    crispr::model::t5::synthetic::write_checkpoint(&out, &config, seed, &tokenizer)?;
    println!("{}", out.display());
    Ok(())
}
