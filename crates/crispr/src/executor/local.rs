//! `--executor local --jobs N`: worker processes on this machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{batch_dir, failed, interrupted, DoneWatcher, Executor};
use crate::error::{Error, Result};
use crate::work::{write_units, Progress, Unit, Workspace};

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
        // Workers start elsewhere (another folder, another node): give them absolute paths.
        let dir = &std::path::absolute(ws.dir).map_err(|e| Error::io(ws.dir, e))?;
        let mut watcher = DoneWatcher::new(units, dir, stage, progress);
        // The log each missing unit was last attempted under.
        let mut last_log: Vec<Option<PathBuf>> = vec![None; units.len()];
        for attempt in 0..=self.retries {
            let todo: Vec<usize> = (0..units.len()).filter(|&i| !units[i].is_done(dir)).collect();
            if todo.is_empty() {
                return Ok(());
            }
            let batch = batch_dir(dir, stage)?;
            let list: Vec<Unit> = todo.iter().map(|&i| units[i].clone()).collect();
            let units_file = batch.join("units.json");
            write_units(&units_file, &list)?;
            let workers = self.jobs.min(list.len());
            let mut children = Vec::with_capacity(workers);
            for w in 0..workers {
                let log = batch.join(format!("worker-{w}.log"));
                children.push(self.spawn(dir, &units_file, w, workers, &log)?);
            }
            for (j, &i) in todo.iter().enumerate() {
                last_log[i] = Some(batch.join(format!("worker-{}.log", j % workers)));
            }
            wait_all(&mut children, || watcher.poll(dir, progress))?;
            watcher.poll(dir, progress);
            if attempt < self.retries {
                let still = todo.iter().filter(|&&i| !units[i].is_done(dir)).count();
                if still > 0 {
                    progress.note(&format!("{stage}: {still} unit(s) failed; retrying"));
                }
            }
        }
        match (0..units.len()).find(|&i| !units[i].is_done(dir)) {
            None => Ok(()),
            Some(i) => {
                let log = last_log[i].clone().unwrap_or_default();
                Err(failed(&units[i], self.retries + 1, &log))
            }
        }
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
