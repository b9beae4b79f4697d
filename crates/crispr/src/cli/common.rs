//! Argument groups and helpers shared by several subcommands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crispr::data::{self, InstructionSet, Task};
use crispr::precision::Precision;

/// Task, data directory and instructions.
#[derive(Args, Clone, Debug)]
pub struct TaskArgs {
    /// bbq:<Category>, bbq-lite:<Category>, a BBQ-format .jsonl, mrpc, rte, qnli, sst2, boolq, or jsonl:<path>.
    #[arg(long, default_value = "bbq:Age")]
    pub task: String,
    /// Where named datasets live (default: $CRISPR_DATA_DIR, else the cache, fetched on first use).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `paper` (BBQ), `default` (the task's own set) or a JSON file of instructions.
    #[arg(long, default_value = "default")]
    pub instructions: String,
    /// Seed of the dev/test split (10 % dev).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
}

/// `--precision f32|bf16`.
#[derive(Args, Clone, Copy, Debug)]
pub struct PrecisionArgs {
    /// Weight matrices in f32 (the reference) or bf16 (half the memory; activations rounded to
    /// bf16 with f32 accumulation; see README, "Precision").
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
}

/// `--recheck-margin auto|<nats>`.
#[derive(Clone, Copy, Debug)]
pub enum Margin {
    Auto,
    Fixed(f64),
}

impl std::str::FromStr for Margin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Margin::Auto);
        }
        match s.parse::<f64>() {
            Ok(m) if m >= 0.0 && m.is_finite() => Ok(Margin::Fixed(m)),
            _ => Err(format!("expected `auto` or a non-negative number of nats, got {s:?}")),
        }
    }
}

impl Margin {
    /// As a run configuration stores it: absent for `auto`.
    pub fn fixed(self) -> Option<f64> {
        match self {
            Margin::Auto => None,
            Margin::Fixed(m) => Some(m),
        }
    }
}

pub struct LoadedTask {
    pub task: Task,
    pub instructions: InstructionSet,
}

impl TaskArgs {
    pub fn load(&self) -> Result<LoadedTask> {
        let data_dir = crispr::datasets::data_dir_for(self.data_dir.as_deref(), &[self.task.as_str()])?;
        let task = data::load_task(&self.task, &data_dir).with_context(|| format!("loading task {}", self.task))?;
        let instructions = data::load_instructions(&self.instructions, &task, &data_dir)?;
        Ok(LoadedTask { task, instructions })
    }
}

/// Progress of a long stage with ETA on stderr: a bar on a terminal; elsewhere (a log file, CI,
/// nohup) a plain line at most every [`PLAIN_EVERY`] and at the end, so that a log still says how
/// far a run got and how long the rest will take.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<Mutex<PlainProgress>>,
}

struct PlainProgress {
    what: String,
    len: u64,
    pos: u64,
    start: Instant,
    last: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(30);

pub fn progress(len: u64, what: &str) -> Progress {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let plain = (!std::io::stderr().is_terminal()).then(|| {
        let now = Instant::now();
        Mutex::new(PlainProgress { what: what.to_string(), len, pos: 0, start: now, last: now })
    });
    Progress { bar, plain }
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(p) = &self.plain {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.pos += n;
            if p.last.elapsed() >= PLAIN_EVERY || p.pos == p.len {
                p.last = Instant::now();
                eprintln!("{}", p.line());
            }
        }
    }

    /// A message above the bar (or a plain line).
    pub fn println(&self, msg: impl AsRef<str>) {
        if self.plain.is_some() {
            eprintln!("{}", msg.as_ref());
        } else {
            self.bar.println(msg.as_ref());
        }
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl PlainProgress {
    fn line(&self) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let pct = if self.len == 0 { 100.0 } else { 100.0 * self.pos as f64 / self.len as f64 };
        let eta = if self.pos == 0 || self.pos >= self.len {
            String::new()
        } else {
            let left = elapsed / self.pos as f64 * (self.len - self.pos) as f64;
            format!(", ETA {}", clock(left))
        };
        format!("crispr: {} {}/{} ({pct:.0} %), {} elapsed{eta}", self.what, self.pos, self.len, clock(elapsed))
    }
}

/// `h:mm:ss`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `--samples N|all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Samples {
    /// N instances drawn from the dev split.
    Drawn(usize),
    /// Every instance of the task, in file order.
    All,
}

impl std::str::FromStr for Samples {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Samples::All);
        }
        s.parse().map(Samples::Drawn).map_err(|_| format!("expected a number or `all`, got {s:?}"))
    }
}

/// Check an output directory before any computation: it is (or can be made) a directory and a
/// file can be written in it. Catches `--out` naming a file or a read-only place at once rather
/// than after minutes of work.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("{}: is not a directory (--out names a directory)", out.display());
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: cannot create the directory: {e}", out.display()))?;
    check_writable(out)
}

/// A file can be created in `dir` (probed with a hidden file that is removed at once).
pub fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".crispr-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| anyhow::anyhow!("{}: cannot write here: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub use crispr::provenance::model_checksum;
