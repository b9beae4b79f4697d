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
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::work::{Progress, Unit, Workspace, JOBS_DIR};

pub use local::Local;
pub use slurm::{Slurm, SlurmOptions};

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

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to a flag that the process executors poll, so that stopping the
/// driver stops (and, on Slurm, cancels) the work it started instead of orphaning it.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
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

/// Ticks the progress bar as unit files appear (for executors whose units run elsewhere).
struct DoneWatcher<'a> {
    units: Vec<&'a Unit>,
    counted: Vec<bool>,
}

impl<'a> DoneWatcher<'a> {
    fn new(units: &'a [Unit], dir: &Path, stage: &str, progress: &mut dyn Progress) -> Self {
        let units: Vec<&Unit> = units.iter().filter(|u| !u.is_done(dir)).collect();
        progress.stage(stage, units.iter().map(|u| u.work() as u64).sum());
        let counted = vec![false; units.len()];
        DoneWatcher { units, counted }
    }

    fn poll(&mut self, dir: &Path, progress: &mut dyn Progress) {
        for (u, c) in self.units.iter().zip(self.counted.iter_mut()) {
            if !*c && u.is_done(dir) {
                *c = true;
                for _ in 0..u.work() {
                    progress.tick();
                }
            }
        }
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
