//! Executors: who computes a stage's units. The driver (`crispr run`) builds the units of a
//! stage and hands them to one executor, then merges their result files; the executor only
//! decides where each unit runs:
//!
//! - [`InProcess`] computes them one after another in the driver, on the model it has loaded;
//! - [`Local`] starts `--jobs N` worker processes on this machine;
//! - [`Slurm`] submits one Slurm job array per batch of units on the shared run directory.
//!
//! Each unit writes its own file atomically, so a unit is either done or not; an executor
//! re-runs missing units a bounded number of times and then stops the run with the unit and its
//! log file. A resumed run skips units whose files exist.

mod local;
mod slurm;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::work::{write_units, Progress, Unit, Workspace, JOBS_DIR};

pub use local::Local;
pub use slurm::{job_name, Slurm, SlurmOptions};

/// Computes units of work.
pub trait Executor {
    /// Compute every unit of `units` whose result file is missing; return once all exist.
    fn run(&mut self, stage: &str, units: &[Unit], ws: &mut Workspace<'_>, progress: &mut dyn Progress) -> Result<()>;
}

/// Every unit in the driver process, in order.
pub struct InProcess;

impl Executor for InProcess {
    fn run(&mut self, stage: &str, units: &[Unit], ws: &mut Workspace<'_>, progress: &mut dyn Progress) -> Result<()> {
        let todo: Vec<&Unit> = units.iter().filter(|u| !u.is_done(ws.dir)).collect();
        progress.stage(stage, todo.iter().map(|u| u.work() as u64).sum());
        for unit in todo {
            ws.compute(unit, &mut || progress.tick())?;
        }
        Ok(())
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// How many process executors are waiting on work they started (worker processes, a Slurm job).
static DELEGATING: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if DELEGATING.load(Ordering::SeqCst) == 0 {
        // Nothing to stop but this process: leave now. Every result file is written atomically
        // and the run directory's lock is released by the kernel, so the same command resumes.
        let msg = b"\ncrispr: interrupted; finished work is kept: the same command resumes the run\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer outlives the call.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }
}

/// Route SIGINT and SIGTERM to a flag that the process executors poll while they wait, so
/// that stopping the driver stops (and, on Slurm, cancels) the work it started instead of
/// orphaning it. Outside those waits a signal ends the process at once (exit status 128 +
/// signal), as it would without a handler: Ctrl-C and `timeout` must stop a run computing
/// in-process.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Held while a process executor waits on work it started: a signal then only sets the flag
/// that the waiting loop polls, so the loop can stop that work before the driver exits.
pub(crate) struct Delegating;

impl Delegating {
    pub(crate) fn begin() -> Delegating {
        DELEGATING.fetch_add(1, Ordering::SeqCst);
        Delegating
    }
}

impl Drop for Delegating {
    fn drop(&mut self) {
        DELEGATING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A fresh folder for one batch of units: `jobs/<stage>-<k>` (the first free k, so a resumed
/// run never overwrites an earlier batch's logs).
fn batch_dir(run_dir: &Path, stage: &str) -> Result<PathBuf> {
    let slug: String =
        stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(40).collect();
    let jobs = run_dir.join(JOBS_DIR);
    std::fs::create_dir_all(&jobs).map_err(|e| Error::io(&jobs, e))?;
    for k in 1.. {
        let dir = jobs.join(format!("{slug}-{k:03}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    unreachable!("an unbounded range always yields")
}

/// One batch of units handed to worker processes: unit `j` of `units_file`, for `j < count`.
struct Batch<'a> {
    stage: &'a str,
    run_dir: &'a Path,
    /// The batch's own folder (`jobs/<stage>-<k>`), for its scripts and logs.
    dir: &'a Path,
    units_file: &'a Path,
    count: usize,
}

/// How a process executor runs a batch: start its units, wait until every one has stopped
/// (calling `monitor.poll()` meanwhile), and return each unit's log and a name for messages.
trait Launch {
    fn launch(&mut self, batch: &Batch<'_>, monitor: &mut Monitor<'_>) -> Result<Launched>;
}

struct Launched {
    /// Per unit of the batch, its log file.
    logs: Vec<PathBuf>,
    /// E.g. `Slurm job 12`.
    name: String,
}

/// Ticks the progress bar as unit files appear, and passes notes on.
struct Monitor<'a> {
    dir: &'a Path,
    units: Vec<&'a Unit>,
    counted: Vec<bool>,
    progress: &'a mut dyn Progress,
}

impl Monitor<'_> {
    fn poll(&mut self) {
        for (u, c) in self.units.iter().zip(self.counted.iter_mut()) {
            if !*c && u.is_done(self.dir) {
                *c = true;
                for _ in 0..u.work() {
                    self.progress.tick();
                }
            }
        }
    }

    fn note(&mut self, msg: &str) {
        self.progress.note(msg);
    }
}

/// The retry loop of the process executors: launch the missing units as one batch, again while
/// some are missing and attempts are left, then stop the run naming a unit that never finished
/// and its last log.
fn run_batches(
    launcher: &mut dyn Launch,
    retries: usize,
    stage: &str,
    units: &[Unit],
    ws: &Workspace<'_>,
    progress: &mut dyn Progress,
) -> Result<()> {
    // Workers start elsewhere (another folder, another node): give them absolute paths.
    let dir = &std::path::absolute(ws.dir).map_err(|e| Error::io(ws.dir, e))?;
    let pending: Vec<&Unit> = units.iter().filter(|u| !u.is_done(dir)).collect();
    progress.stage(stage, pending.iter().map(|u| u.work() as u64).sum());
    let counted = vec![false; pending.len()];
    let mut monitor = Monitor { dir, units: pending, counted, progress };
    let mut last_log: Vec<Option<PathBuf>> = vec![None; units.len()];
    for attempt in 0..=retries {
        let todo: Vec<usize> = (0..units.len()).filter(|&i| !units[i].is_done(dir)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let folder = batch_dir(dir, stage)?;
        let list: Vec<Unit> = todo.iter().map(|&i| units[i].clone()).collect();
        let units_file = folder.join("units.json");
        write_units(&units_file, &list)?;
        let batch = Batch { stage, run_dir: dir, dir: &folder, units_file: &units_file, count: list.len() };
        let launched = launcher.launch(&batch, &mut monitor)?;
        for (&i, log) in todo.iter().zip(launched.logs) {
            last_log[i] = Some(log);
        }
        monitor.poll();
        let still = todo.iter().filter(|&&i| !units[i].is_done(dir)).count();
        if still > 0 && attempt < retries {
            monitor.note(&format!("{stage}: {still} unit(s) of {} did not finish; re-submitting", launched.name));
        }
    }
    match (0..units.len()).find(|&i| !units[i].is_done(dir)) {
        None => Ok(()),
        Some(i) => Err(failed(&units[i], retries + 1, &last_log[i].clone().unwrap_or_default())),
    }
}

/// The error for a unit that failed every attempt.
fn failed(unit: &Unit, attempts: usize, log: &Path) -> Error {
    let tail = match std::fs::read_to_string(log) {
        Ok(t) => {
            t.lines().rev().find(|l| !l.trim().is_empty()).map(|l| format!("; its last line: {l}")).unwrap_or_default()
        }
        Err(_) => "; the log was never written: the task did not start (see the scheduler's logs)".to_string(),
    };
    Error::msg(format!(
        "unit {} ({}) failed {attempts} time(s); log: {}{tail}",
        unit.out(),
        unit.describe(),
        log.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_folders_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = batch_dir(dir.path(), "search n=3").unwrap();
        let b = batch_dir(dir.path(), "search n=3").unwrap();
        assert_ne!(a, b);
        assert!(a.ends_with("jobs/search_n_3-001"), "{}", a.display());
        assert!(b.ends_with("jobs/search_n_3-002"), "{}", b.display());
    }
}
