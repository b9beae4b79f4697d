//! `--executor slurm`: each batch of units becomes one Slurm job array on the shared run
//! directory; array task `i` runs `crispr worker` on unit `i`. The driver waits for the array to
//! leave the queue (polling `squeue`), re-submits the units whose files are missing, and cancels
//! its arrays (`scancel`) when it is interrupted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{interrupted, run_batches, Batch, Delegating, Executor, Launch, Launched, Monitor};
use crate::error::{Error, Result};
use crate::work::{Progress, Unit, Workspace};

/// What the user chose for the arrays (`crispr run --executor slurm …`).
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// At most this many array tasks at once (`--array=…%N`).
    pub max_parallel: Option<usize>,
    /// Per array task (`sbatch --time`).
    pub time: Option<String>,
    /// Per array task (`sbatch --mem`).
    pub mem: Option<String>,
    pub cpus_per_task: usize,
    /// Passed to `sbatch` as they are.
    pub sbatch_args: Vec<String>,
    /// Attempts per unit after the first.
    pub retries: usize,
    /// How often the queue is polled.
    pub poll: Duration,
}

pub struct Slurm {
    exe: PathBuf,
    opts: SlurmOptions,
}

impl Slurm {
    pub fn new(opts: SlurmOptions) -> Result<Slurm> {
        let exe = std::env::current_exe().map_err(|e| Error::msg(format!("cannot find the crispr binary: {e}")))?;
        // The array tasks run the same binary on the shared filesystem; fail now, not in every task.
        let out = Command::new("sbatch").arg("--version").output().map_err(|e| {
            Error::msg(format!("--executor slurm: cannot run sbatch ({e}); is Slurm installed and on PATH?"))
        })?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "--executor slurm: `sbatch --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Slurm { exe, opts })
    }

    /// Submit the batch as one array; returns the job id.
    fn submit(&self, batch: &Batch<'_>) -> Result<String> {
        let (stage, dir, units_file, n) = (batch.stage, batch.run_dir, batch.units_file, batch.count);
        let script = batch.dir.join("array.sh");
        let text = format!(
            "#!/bin/sh\n# crispr {stage}: array task i computes unit i of units.json\nexec {} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" worker --run-dir {} --units {} --index \"$SLURM_ARRAY_TASK_ID\"\n",
            shell_quote(&self.exe),
            shell_quote(dir),
            shell_quote(units_file),
        );
        crate::files::atomic_write(&script, text.as_bytes())?;
        let array = match self.opts.max_parallel {
            Some(p) => format!("0-{}%{}", n - 1, p.max(1)),
            None => format!("0-{}", n - 1),
        };
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--array={array}"))
            .arg(format!("--job-name={}", job_name(stage, dir)))
            .arg(format!("--output={}", batch.dir.join("task-%a.log").display()))
            .arg(format!("--cpus-per-task={}", self.opts.cpus_per_task.max(1)))
            .arg(format!("--chdir={}", dir.display()));
        if let Some(p) = &self.opts.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(t) = &self.opts.time {
            cmd.arg(format!("--time={t}"));
        }
        if let Some(m) = &self.opts.mem {
            cmd.arg(format!("--mem={m}"));
        }
        cmd.args(&self.opts.sbatch_args).arg(&script);
        let out = cmd.output().map_err(|e| Error::msg(format!("sbatch: {e}")))?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "sbatch refused the {stage} array: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::msg(format!("sbatch printed {:?}, not a job id", text.trim())));
        }
        crate::files::atomic_write(&batch.dir.join("job_id"), id.as_bytes())?;
        Ok(id)
    }

    /// Whether any task of job `id` is still pending or running.
    fn in_queue(id: &str) -> Result<bool> {
        let out = Command::new("squeue")
            .args(["--noheader", "--jobs", id, "--format=%i %T"])
            .output()
            .map_err(|e| Error::msg(format!("squeue: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // A job that has left the controller's memory is reported as invalid: it is done.
            if err.contains("Invalid job id") {
                return Ok(false);
            }
            return Err(Error::msg(format!("squeue failed: {}", err.trim())));
        }
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }
}

impl Executor for Slurm {
    fn run(&mut self, stage: &str, units: &[Unit], ws: &mut Workspace<'_>, progress: &mut dyn Progress) -> Result<()> {
        let retries = self.opts.retries;
        run_batches(self, retries, stage, units, ws, progress)
    }
}

impl Launch for Slurm {
    fn launch(&mut self, batch: &Batch<'_>, monitor: &mut Monitor<'_>) -> Result<Launched> {
        // Before submitting: an interrupt from here on must cancel the job, not orphan it.
        let _waiting = Delegating::begin();
        let id = self.submit(batch)?;
        monitor.note(&format!("{}: Slurm job {id}, {} array task(s)", batch.stage, batch.count));
        loop {
            if interrupted() {
                let _ = Command::new("scancel").arg(&id).status();
                return Err(Error::msg(format!("interrupted: cancelled Slurm job {id}")));
            }
            monitor.poll();
            if !Self::in_queue(&id)? {
                break;
            }
            std::thread::sleep(self.opts.poll);
        }
        let logs = (0..batch.count).map(|j| batch.dir.join(format!("task-{j}.log"))).collect();
        Ok(Launched { logs, name: format!("Slurm job {id}") })
    }
}

/// `crispr-<stage>-<run directory's name>`: what `squeue` shows for the arrays of one run.
pub fn job_name(stage: &str, run_dir: &Path) -> String {
    let stage = stage.split_whitespace().next().unwrap_or("stage");
    let run = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let run: String =
        run.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("crispr-{stage}-{run}")
}

/// `'…'` with embedded quotes escaped, for the array script.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}
