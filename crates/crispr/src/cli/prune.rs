use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::ModelArgs;
use crispr::export::{write_pruned, RowsByModule};
use crispr::files::{read_scores, top_neurons};

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Directory written by `crispr attribute` (holds scores.safetensors).
    #[arg(long)]
    scores: PathBuf,
    /// Number of top-scoring neurons to prune.
    #[arg(long)]
    top: usize,
    /// Output: a .gguf file for GGUF input, a directory for checkpoint input. Must not exist.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: PruneArgs) -> Result<()> {
    // The output is checked before the model is read.
    if args.out.exists() {
        anyhow::bail!(
            "{}: already exists; choose a new output path (inputs are never overwritten)",
            args.out.display()
        );
    }
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    super::common::check_writable(parent)?;
    let loaded = args.model.load()?;
    let scores = read_scores(&args.scores, loaded.model.sites())?;
    if args.top > scores.len() {
        anyhow::bail!("--top {} exceeds the {} neurons in {}", args.top, scores.len(), args.scores.display());
    }
    let neurons = top_neurons(&scores, args.top);
    let mut rows = RowsByModule::new();
    for n in &neurons {
        rows.entry(loaded.model.prune_target_name(n.site)).or_default().push(n.row);
    }
    write_pruned(&loaded.format, &rows, &args.out).with_context(|| "writing the pruned model".to_string())?;
    eprintln!("crispr: pruned {} neurons ({} modules) → {}", neurons.len(), rows.len(), args.out.display());
    Ok(())
}
