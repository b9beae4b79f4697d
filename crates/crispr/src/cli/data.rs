//! `crispr data list` and `crispr data fetch [NAME…]`: the named datasets in the cache.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crispr::datasets::{self, DataFile};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Every dataset file: cached or missing, size, license, source.
    List {
        /// Look in this folder instead of the cache.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Download datasets into the cache (or --data-dir): bbq, bbq:<Category>, mrpc, rte, qnli, sst2, boolq; none = all.
    Fetch {
        names: Vec<String>,
        /// Fetch into this folder instead of the cache.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn size(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else {
        format!("{:.1} kB", n as f64 / 1e3)
    }
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::List { data_dir } => {
            let dir = data_dir.unwrap_or_else(datasets::data_cache);
            println!("data directory: {}", dir.display());
            println!("{:<8} {:<44} {:<8} {:>9}  license", "dataset", "file", "status", "size");
            for d in datasets::catalogue() {
                for f in &d.files {
                    let path = dir.join(&f.path);
                    let (status, bytes) = match std::fs::metadata(&path) {
                        Ok(m) if m.is_file() => ("cached", Some(m.len())),
                        _ => ("missing", f.size),
                    };
                    let shown = bytes.map_or_else(|| "?".to_string(), size);
                    println!("{:<8} {:<44} {:<8} {:>9}  {}", d.name, f.path, status, shown, d.license);
                }
            }
            Ok(())
        }
        DataCommand::Fetch { names, data_dir } => {
            let dir = data_dir.unwrap_or_else(datasets::data_cache);
            let files: Vec<DataFile> = datasets::select(&names)?;
            datasets::ensure(&files, &dir)?;
            println!("{} files in {}", files.len(), dir.display());
            Ok(())
        }
    }
}
