//! `crispr worker` (hidden): compute units of a run's stage in a process of its own — started by
//! `crispr run --executor local|slurm`, never by hand.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crispr::pipeline::RunConfig;
use crispr::work::{read_units, WorkerSetup, Workspace, WORKER_SETUP};

#[derive(Args)]
pub struct WorkerArgs {
    /// The run directory the driver works in.
    #[arg(long)]
    run_dir: PathBuf,
    /// The batch's list of units (written by the driver).
    #[arg(long)]
    units: PathBuf,
    /// The first unit to compute (a Slurm array task passes $SLURM_ARRAY_TASK_ID).
    #[arg(long)]
    index: usize,
    /// Then every `stride`-th unit after it (`0`: only `index`).
    #[arg(long, default_value_t = 0)]
    stride: usize,
}

pub fn run(args: WorkerArgs) -> Result<()> {
    let units = read_units(&args.units)?;
    let mine: Vec<usize> =
        if args.stride == 0 { vec![args.index] } else { (args.index..units.len()).step_by(args.stride).collect() };
    if let Some(&i) = mine.iter().find(|&&i| i >= units.len()) {
        anyhow::bail!("{}: unit {i} does not exist (the list has {})", args.units.display(), units.len());
    }
    let setup_path = args.run_dir.join(WORKER_SETUP);
    let setup: WorkerSetup = serde_json::from_str(
        &std::fs::read_to_string(&setup_path).with_context(|| format!("{}", setup_path.display()))?,
    )
    .with_context(|| format!("{}: not a worker setup", setup_path.display()))?;
    let cfg_path = args.run_dir.join("config.toml");
    let cfg: RunConfig =
        toml::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("{}", cfg_path.display()))?)
            .map_err(|e| anyhow::anyhow!("{}: invalid run configuration: {e}", cfg_path.display()))?;
    // Nothing to do (a retry of units that finished after all) → no model load.
    if mine.iter().all(|&i| units[i].is_done(&args.run_dir)) {
        return Ok(());
    }
    let mut loaded = crispr::loader::load_checked(&setup.model, cfg.precision)
        .with_context(|| format!("loading {}", setup.model.display()))?;
    let mut ws = Workspace::new(&args.run_dir, &cfg, &setup.data_dir, &mut loaded);
    let mut failures = 0;
    for i in mine {
        let unit = &units[i];
        if unit.is_done(&args.run_dir) {
            continue;
        }
        let started = std::time::Instant::now();
        // One failed unit does not stop the others: the driver re-runs what is missing.
        match ws.compute(unit, &mut || {}) {
            Ok(()) => eprintln!("unit {i}: {} done in {:.1} s", unit.out(), started.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("unit {i}: {} failed: {e}", unit.out());
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} unit(s) failed");
    }
    Ok(())
}
