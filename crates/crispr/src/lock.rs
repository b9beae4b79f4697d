//! An exclusive lock on a working directory, so that two processes never work on one run at once.
//!
//! The lock is `flock(2)` on a small file inside the directory. The kernel releases it when the
//! holder exits for any reason — including `kill -9` or a node losing its job — so a stale lock
//! file never blocks a later run: only a live holder does. The file keeps the holder's pid and
//! host for the refusal message. (On network file systems `flock` is only as good as the file
//! system's lock support; Lustre, GPFS and NFSv4 honour it across nodes.)

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside a locked directory. Its presence also marks a directory that
/// crispr has worked in.
pub const LOCK_FILE: &str = ".crispr.lock";

/// Held while alive; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Take the lock on `dir` (which must exist) without waiting. Fails with a message naming
    /// the holder if another process has it, or with the I/O error if the directory is not
    /// writable.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(dir, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { holder.to_string() };
                return Err(Error::format(
                    dir,
                    format!("is in use by {who}; wait for it to finish or choose another directory"),
                ));
            }
            return Err(Error::io(&path, err));
        }
        let mut lock = DirLock { file, path };
        lock.record_holder().map_err(|e| Error::io(&lock.path, e))?;
        Ok(lock)
    }

    fn record_holder(&mut self) -> std::io::Result<()> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let text = format!("crispr pid {} on {}\n", std::process::id(), host.trim());
        self.file.set_len(0)?;
        (&self.file).write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("is in use by crispr pid {}", std::process::id())), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
