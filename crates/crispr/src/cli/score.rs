use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::json;

use super::common::PrecisionArgs;
use super::ModelArgs;
use crispr::score;

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file, one {"prompt": str, "candidates": [str]} per line.
    #[arg(long)]
    input: PathBuf,
    /// Score the plain prompt text instead of applying the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    precision: PrecisionArgs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreLine {
    prompt: String,
    candidates: Vec<String>,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    // Read and validate the whole input before loading the model: a bad line fails fast.
    let path = &args.input;
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ScoreLine = serde_json::from_str(&line).map_err(|e| {
            anyhow!("{}: line {}: {e} (expected {{\"prompt\": str, \"candidates\": [str]}})", path.display(), i + 1)
        })?;
        if parsed.candidates.is_empty() {
            return Err(anyhow!("{}: line {}: \"candidates\" is empty", path.display(), i + 1));
        }
        lines.push((i + 1, parsed));
    }
    let loaded = args.model.load_at(args.precision.precision)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (lineno, l) in lines {
        let enc = score::encode(&loaded.text, loaded.prompt_style(args.raw), &l.prompt, &l.candidates)
            .with_context(|| format!("{}: line {lineno}", path.display()))?;
        let lp = loaded.model.score(&enc.prompt, &enc.candidates);
        writeln!(out, "{}", json!({ "logprobs": lp }))?;
    }
    Ok(())
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message (or plain text with --raw).
    #[arg(long)]
    prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Use the plain prompt text instead of the chat template.
    #[arg(long)]
    raw: bool,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let enc = score::encode(&loaded.text, loaded.prompt_style(args.raw), &args.prompt, &[])?;
    let ids = loaded.model.generate(&enc.prompt, args.max_new_tokens, &loaded.stop_tokens());
    let text = loaded.text.decode(&ids, true)?;
    println!("{}", json!({"prompt_ids": enc.prompt, "ids": ids, "text": text}));
    Ok(())
}
