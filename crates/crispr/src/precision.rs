//! The precision weights are kept in, what a model will take in memory at it, and whether the
//! machine has that much — checked before any weight is read, so that a model too large fails
//! with one line a user can act on instead of an allocation abort or the OOM killer.

use std::path::Path;

use crate::error::{Error, Result};

/// How weight matrices are stored and multiplied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and arithmetic (the reference engine).
    #[default]
    F32,
    /// bf16 weight matrices, bf16-rounded activations into them, f32 accumulation.
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Bytes per element of a weight matrix (norms, biases and position tables stay f32).
    pub fn matrix_bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }
}

/// What a model's tensors take once loaded, from the checkpoint's header alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// Elements of weight matrices (2-D tensors).
    pub matrix_elements: u64,
    /// Elements of vectors (norms, biases), always f32.
    pub vector_elements: u64,
    /// Bytes of the files the loader maps while it reads (they count against an address-space
    /// limit, not against free memory: mapped file pages can be dropped and re-read).
    pub mapped_bytes: u64,
}

/// Working memory beyond the weights: activations, caches, the tokenizer, the runtime.
fn working_bytes(weights: u64) -> u64 {
    (weights / 10).max(256 << 20)
}

impl Footprint {
    /// Bytes of the loaded weights at `p`.
    pub fn weight_bytes(&self, p: Precision) -> u64 {
        self.matrix_elements * p.matrix_bytes() + self.vector_elements * 4
    }

    /// Bytes a command needs at `p`: the weights plus working memory.
    pub fn needed_bytes(&self, p: Precision) -> u64 {
        let w = self.weight_bytes(p);
        w + working_bytes(w)
    }
}

/// What the process may still use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Available {
    /// `MemAvailable` of /proc/meminfo (None where there is no such file).
    pub memory: Option<u64>,
    /// `RLIMIT_AS` minus the address space already in use (None when unlimited).
    pub address_space: Option<u64>,
}

impl Available {
    /// Read from this process and machine.
    pub fn now() -> Available {
        let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| meminfo_field(&t, "MemAvailable:"));
        let address_space = address_space_limit().map(|limit| {
            let used = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| meminfo_field(&t, "VmSize:"))
                .unwrap_or(0);
            limit.saturating_sub(used)
        });
        Available { memory, address_space }
    }
}

/// A `Name:   123 kB` line of /proc/meminfo or /proc/self/status, in bytes.
fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(scale)
}

/// The soft `RLIMIT_AS` of this process, if one is set.
fn address_space_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// `12.3 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuse to load a model whose weights at `p` do not fit in what is available: one line with
/// what is needed, what is available, and the precision that would fit (if any).
pub fn check_fits(model: &Path, fp: &Footprint, p: Precision, avail: &Available) -> Result<()> {
    let shortfall = |q: Precision| -> Option<(u64, u64, &'static str)> {
        let need = fp.needed_bytes(q);
        if let Some(m) = avail.memory {
            if need > m {
                return Some((need, m, "available memory (MemAvailable)"));
            }
        }
        if let Some(a) = avail.address_space {
            let need_as = need + fp.mapped_bytes;
            if need_as > a {
                return Some((need_as, a, "address space left under the RLIMIT_AS limit (weights + mapped files)"));
            }
        }
        None
    };
    let Some((need, have, what)) = shortfall(p) else { return Ok(()) };
    let hint = match p {
        Precision::F32 if shortfall(Precision::Bf16).is_none() => {
            format!("; in bf16 it needs {}: use --precision bf16", gib(fp.needed_bytes(Precision::Bf16)))
        }
        Precision::F32 => format!(
            "; even bf16 ({}) does not fit: free memory or use a smaller model",
            gib(fp.needed_bytes(Precision::Bf16))
        ),
        Precision::Bf16 => "; no precision crispr offers fits: free memory or use a smaller model".to_string(),
    };
    Err(Error::format(
        model,
        format!("the model needs {} in {} but only {} of {what} is free{hint}", gib(need), p.name(), gib(have)),
    ))
}

/// How closely two score vectors over the same neurons agree.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Neurons in both top-`top` lists.
    pub top_overlap: usize,
    pub top: usize,
    /// Spearman's rank correlation over every neuron (ties get their mean rank).
    pub spearman: f64,
}

/// Ranks `1..=n` of `v` (ascending), ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Top-`top` overlap (by descending score) and Spearman correlation of `a` and `b`.
pub fn score_agreement(a: &[f64], b: &[f64], top: usize) -> Agreement {
    assert_eq!(a.len(), b.len(), "score vectors over the same neurons");
    let top_set = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&x, &y| v[y].total_cmp(&v[x]).then(x.cmp(&y)));
        idx.truncate(top);
        idx.sort_unstable();
        idx
    };
    let (ta, tb) = (top_set(a), top_set(b));
    let top_overlap = ta.iter().filter(|i| tb.binary_search(i).is_ok()).count();
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let mean = (n + 1.0) / 2.0;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - mean) * (y - mean);
        saa += (x - mean) * (x - mean);
        sbb += (y - mean) * (y - mean);
    }
    let spearman = if saa > 0.0 && sbb > 0.0 { sab / (saa * sbb).sqrt() } else { f64::NAN };
    Agreement { top_overlap, top: top.min(a.len()), spearman }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_of_scores() {
        let a = [5.0, 4.0, 3.0, 2.0, 1.0];
        let same = score_agreement(&a, &a, 2);
        assert_eq!((same.top_overlap, same.spearman), (2, 1.0));
        let rev = score_agreement(&a, &[1.0, 2.0, 3.0, 4.0, 5.0], 2);
        assert_eq!(rev.top_overlap, 0);
        assert!((rev.spearman + 1.0).abs() < 1e-12);
        // Ties share ranks: [1, 1, 2] vs [1, 2, 3] → ranks [1.5, 1.5, 3] vs [1, 2, 3].
        let t = score_agreement(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0], 1);
        assert_eq!(t.top_overlap, 1);
        assert!((t.spearman - 0.866_025_403_784_438_6).abs() < 1e-12, "{}", t.spearman);
    }

    #[test]
    fn meminfo_fields_parse() {
        let t = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\nX: 5\n";
        assert_eq!(meminfo_field(t, "MemAvailable:"), Some(1000 * 1024));
        assert_eq!(meminfo_field(t, "X:"), Some(5));
        assert_eq!(meminfo_field(t, "Nope:"), None);
    }

    #[test]
    fn refusal_names_need_availability_and_the_precision_that_fits() {
        // 8 G matrix elements: 32 GiB in f32, 16 GiB in bf16.
        let fp = Footprint { matrix_elements: 8 << 30, vector_elements: 1 << 20, mapped_bytes: 16 << 30 };
        let avail = Available { memory: Some(20 << 30), address_space: None };
        let e = check_fits(Path::new("m"), &fp, Precision::F32, &avail).unwrap_err().to_string();
        assert!(e.contains("in f32") && e.contains("20.0 GiB") && e.contains("--precision bf16"), "{e}");
        assert!(check_fits(Path::new("m"), &fp, Precision::Bf16, &avail).is_ok());
        // Under an address-space limit the mapped files count too.
        let tight = Available { memory: None, address_space: Some(23 << 30) };
        let e = check_fits(Path::new("m"), &fp, Precision::Bf16, &tight).unwrap_err().to_string();
        assert!(e.contains("RLIMIT_AS") && e.contains("no precision"), "{e}");
        assert!(
            check_fits(Path::new("m"), &fp, Precision::F32, &Available { memory: None, address_space: None }).is_ok()
        );
    }
}
