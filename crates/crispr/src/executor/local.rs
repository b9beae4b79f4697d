//! `--executor local --jobs N`: worker processes on this machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{interrupted, run_batches, Batch, Delegating, Executor, Launch, Launched, Monitor};
use crate::error::{Error, Result};
use crate::work::{Progress, Unit, Workspace};

pub struct Local {
    /// The crispr binary the workers run.
    pub exe: PathBuf,
    pub jobs: usize,
    /// Matrix-product threads per worker.
    pub threads: usize,
    /// Attempts per unit after the first.
    pub retries: usize,
}

impl Local {
    /// `jobs` workers sharing this machine's cores.
    pub fn new(jobs: usize, retries: usize) -> Result<Local> {
        let exe = std::env::current_exe().map_err(|e| Error::msg(format!("cannot find the crispr binary: {e}")))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = jobs.max(1);
        Ok(Local { exe, jobs, threads: (cores / jobs).max(1), retries })
    }
}

impl Executor for Local {
    fn run(&mut self, stage: &str, units: &[Unit], ws: &mut Workspace<'_>, progress: &mut dyn Progress) -> Result<()> {
        let retries = self.retries;
        run_batches(self, retries, stage, units, ws, progress)
    }
}

impl Launch for Local {
    fn launch(&mut self, batch: &Batch<'_>, monitor: &mut Monitor<'_>) -> Result<Launched> {
        // Before the first spawn: an interrupt from here on must stop the workers, not orphan them.
        let _waiting = Delegating::begin();
        // Worker w computes units w, w + workers, w + 2·workers, …
        let workers = self.jobs.min(batch.count).max(1);
        let log = |w: usize| batch.dir.join(format!("worker-{w}.log"));
        let mut children = Vec::with_capacity(workers);
        for w in 0..workers {
            children.push(self.spawn(batch.run_dir, batch.units_file, w, workers, &log(w))?);
        }
        wait_all(&mut children, || monitor.poll())?;
        Ok(Launched { logs: (0..batch.count).map(|j| log(j % workers)).collect(), name: "the worker processes".into() })
    }
}

impl Local {
    fn spawn(&self, dir: &Path, units_file: &Path, index: usize, stride: usize, log: &Path) -> Result<Child> {
        let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        Command::new(&self.exe)
            .arg("--threads")
            .arg(self.threads.to_string())
            .arg("worker")
            .arg("--run-dir")
            .arg(dir)
            .arg("--units")
            .arg(units_file)
            .arg("--index")
            .arg(index.to_string())
            .arg("--stride")
            .arg(stride.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::msg(format!("starting a worker ({}): {e}", self.exe.display())))
    }
}

/// Wait for every child, calling `poll` in between; on an interrupt, stop them all.
fn wait_all(children: &mut [Child], mut poll: impl FnMut()) -> Result<()> {
    let mut running = vec![true; children.len()];
    while running.iter().any(|&r| r) {
        if interrupted() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(Error::msg("interrupted: stopped the worker processes"));
        }
        for (c, r) in children.iter_mut().zip(running.iter_mut()) {
            if *r {
                match c.try_wait() {
                    Ok(Some(_)) => *r = false,
                    Ok(None) => {}
                    Err(e) => return Err(Error::msg(format!("waiting for a worker: {e}"))),
                }
            }
        }
        poll();
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
