//! Tasks: loading datasets, instructions, dev/test splits.
//!
//! A [`Task`] is a list of [`Example`]s read from one file, plus where it came from (path and
//! SHA-256, so a run can record exactly what it evaluated). Every example carries its text as named
//! string fields (`context`, `question`, `sentence1`, …), which instruction templates refer to as
//! `{name}` (see [`instructions`]), and the index of its gold answer.
//!
//! Task specs understood by [`load_task`]:
//!
//! | spec | file (relative to the data directory) | loader |
//! |---|---|---|
//! | `bbq:<Category>` | `bbq/data/<Category>.jsonl` | [`bbq`] |
//! | `bbq-lite:<Category>` | `bbq_lite/data/<Category>.jsonl` (BIG-bench BBQ-Lite) | [`bbq`] |
//! | `bbq-regen:<Category>` | `bbq/regenerated/<Category>.jsonl` (re-drawn from the BBQ templates) | [`bbq`] |
//! | `path/to/File.jsonl` | that file, in the BBQ schema | [`bbq`] |
//! | `mrpc`, `rte`, `qnli`, `sst2`, `boolq` | `mrpc/dev.tsv`, `rte/dev.jsonl`, `qnli/dev.tsv`, `sst2/dev.tsv`, `boolq/dev.jsonl` | [`glue`] |
//! | `jsonl:<path>` | a user's own multiple-choice file | [`custom`] |
//!
//! Every loader rejects malformed input with an error that names the file and the 1-based line.
//! Where the data directory comes from, and how named datasets get into it on first use, is
//! [`crate::datasets`]'s business.

pub mod bbq;
pub mod csv;
pub mod custom;
pub mod glue;
pub mod instructions;
pub mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use instructions::{default_instructions, load_instructions, Instruction, InstructionSet, Prompt};
pub use split::{split_indices, Split};

/// One task instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// 0-based position among the data rows of the source file (header and blank lines not counted).
    pub index: usize,
    /// The dataset's own identifier (BBQ `example_id`, GLUE `idx`/`index`, MRPC `#1 ID-#2 ID`,
    /// otherwise the row position as a string).
    pub id: String,
    /// Text fields by name; instruction templates refer to them as `{name}`.
    pub fields: BTreeMap<String, String>,
    /// Index of the gold answer among the candidates.
    pub label: usize,
    /// Per-instance answer strings (BBQ: `ans0, ans1, ans2`; custom tasks: the line's
    /// `candidates`). Empty for the NLU tasks, whose candidates are the label words an instruction
    /// supplies.
    pub candidates: Vec<String>,
    /// BBQ metadata needed for its metrics; `None` for other tasks.
    pub bbq: Option<BbqInfo>,
}

/// What BBQ's metrics need to know about an example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BbqInfo {
    /// The row's `category` field (e.g. `Age`).
    pub category: String,
    /// The row's `example_id` (unique only within a category).
    pub example_id: u64,
    /// The template number (`question_index`; above 25 means a proper-name template).
    pub question_index: String,
    /// `context_condition == "ambig"`.
    pub ambiguous: bool,
    /// `question_polarity == "neg"`.
    pub polarity_negative: bool,
    /// Index of the option whose group is `"unknown"`.
    pub unknown_loc: usize,
    /// Index of the non-unknown option that belongs to a stereotyped group, when exactly one does.
    pub stereotyped_loc: Option<usize>,
    /// Index of the bias-consistent answer (see [`bbq::target_loc`]); `None` when the rule cannot
    /// decide (such examples count for accuracy but not for bias scores).
    pub target_loc: Option<usize>,
}

impl BbqInfo {
    /// `name` for proper-name templates (`question_index` > 25), else `label`, as in BBQ's
    /// analysis scripts.
    pub fn label_type(&self) -> &'static str {
        match self.question_index.trim().parse::<u32>() {
            Ok(q) if q > 25 => "name",
            _ => "label",
        }
    }
}

/// Which family a task belongs to; decides its loader, default instructions and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskKind {
    Bbq,
    /// One of [`glue::TASKS`] (`mrpc`, `rte`, `qnli`, `sst2`, `boolq`; BoolQ is SuperGLUE's, kept
    /// here because it is handled the same way).
    Glue(String),
    /// A user's own JSONL file ([`custom`]).
    Custom,
}

/// A loaded task.
#[derive(Clone, Debug)]
pub struct Task {
    /// The spec it was loaded from, normalised for named datasets (`bbq:Age`, `mrpc`, …).
    pub name: String,
    pub kind: TaskKind,
    pub examples: Vec<Example>,
    pub source: PathBuf,
    /// SHA-256 (lower-case hex) of the source file's bytes.
    pub sha256: String,
}

impl Task {
    /// Field names every example has: the names an instruction template may use.
    pub fn field_names(&self) -> BTreeSet<String> {
        let mut it = self.examples.iter();
        let Some(first) = it.next() else {
            return BTreeSet::new();
        };
        let mut names: BTreeSet<String> = first.fields.keys().cloned().collect();
        for ex in it {
            names.retain(|n| ex.fields.contains_key(n));
        }
        names
    }

    /// The fields that make up an instance's *input* (as opposed to its answer options): what a
    /// content-free input replaces for calibration, and where domain words are drawn from.
    pub fn input_fields(&self) -> Vec<String> {
        match &self.kind {
            TaskKind::Bbq => vec!["context".into(), "question".into()],
            TaskKind::Glue(name) => glue::input_fields(name).iter().map(|s| s.to_string()).collect(),
            TaskKind::Custom => self.field_names().into_iter().filter(|n| n != "id").collect(),
        }
    }

    /// Other names templates may use for this task's fields (FLAN's and SuperGLUE's naming),
    /// mapped to the real field.
    pub fn field_aliases(&self) -> &'static [(&'static str, &'static str)] {
        match &self.kind {
            TaskKind::Glue(name) => glue::field_aliases(name),
            _ => &[],
        }
    }

    /// Number of answer classes when they are fixed for the task (NLU tasks), else `None`.
    pub fn num_classes(&self) -> Option<usize> {
        match &self.kind {
            TaskKind::Glue(name) => glue::label_names(name).map(|l| l.len()),
            _ => None,
        }
    }
}

/// Where named datasets are looked up: `--data-dir`, then `$CRISPR_DATA_DIR`, then
/// `<cache>/data` ([`crate::resolve::cache_dir`]), then a `shared/data` folder (one holding
/// `README.md` and `bbq/`) next to the current directory or one of its ancestors.
///
/// An explicitly given directory (argument or environment variable) that does not exist is an
/// error rather than a reason to keep looking: silently using some other data would be worse.
pub fn resolve_data_dir(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return existing_dir(p, "--data-dir");
    }
    if let Some(v) = std::env::var_os("CRISPR_DATA_DIR").filter(|v| !v.is_empty()) {
        return existing_dir(Path::new(&v), "CRISPR_DATA_DIR");
    }
    let mut tried = vec!["--data-dir (not given)".to_string(), "$CRISPR_DATA_DIR (not set)".to_string()];
    let cached = crate::resolve::cache_dir().join("data");
    if cached.is_dir() {
        return Ok(cached);
    }
    tried.push(cached.display().to_string());
    if let Some(shared) = shared_data_dir() {
        return Ok(shared);
    }
    if let Ok(cwd) = std::env::current_dir() {
        tried.push(format!("shared/data in {} and its ancestors", cwd.display()));
    }
    Err(Error::msg(format!(
        "no data directory found; tried {}; pass --data-dir DIR, or run `crispr data fetch`",
        tried.join(", ")
    )))
}

/// A `shared/data` folder (one holding `README.md` and `bbq/`) in the current directory or one of
/// its ancestors: this repository's CI data, beside the checkout.
pub fn shared_data_dir() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join("shared").join("data"))
        .find(|cand| cand.join("README.md").is_file() && cand.join("bbq").is_dir())
}

fn existing_dir(p: &Path, what: &str) -> Result<PathBuf> {
    if p.is_dir() {
        Ok(p.to_path_buf())
    } else {
        Err(Error::format(p, format!("{what}: no such directory")))
    }
}

/// Load a task from its spec (see the module documentation for the forms). A file without examples
/// is an error.
pub fn load_task(spec: &str, data_dir: &Path) -> Result<Task> {
    let task = load_any(spec.trim(), data_dir)?;
    if task.examples.is_empty() {
        return Err(Error::format(&task.source, "no examples (the file is empty)"));
    }
    Ok(task)
}

fn load_any(spec: &str, data_dir: &Path) -> Result<Task> {
    if let Some(path) = spec.strip_prefix("jsonl:") {
        let path = PathBuf::from(path);
        let (bytes, sha256) = read_hashed(&path)?;
        let examples = custom::parse(&path, &bytes)?;
        return Ok(Task { name: spec.to_string(), kind: TaskKind::Custom, examples, source: path, sha256 });
    }
    for (prefix, folder) in BBQ_COLLECTIONS {
        if let Some(category) = spec.strip_prefix(prefix).and_then(|s| s.strip_prefix(':')) {
            let dir = data_dir.join(folder);
            let path = bbq_category_file(&dir, category)?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            return load_bbq(format!("{prefix}:{stem}"), path);
        }
    }
    let lower = spec.to_ascii_lowercase();
    if glue::TASKS.contains(&lower.as_str()) {
        let path = data_dir.join(glue::default_path(&lower).unwrap_or_default());
        let (bytes, sha256) = read_hashed(&path)?;
        let examples = glue::parse(&lower, &path, &bytes)?;
        return Ok(Task { name: lower.clone(), kind: TaskKind::Glue(lower), examples, source: path, sha256 });
    }
    if spec.ends_with(".jsonl") {
        let path = PathBuf::from(spec);
        if path.is_file() {
            return load_bbq(spec.to_string(), path);
        }
        return Err(Error::format(&path, "no such file (a task given as a path must be a BBQ-format .jsonl)"));
    }
    Err(Error::msg(format!(
        "unknown task {spec:?}: expected bbq:<Category>, bbq-lite:<Category>, bbq-regen:<Category>, a path to a \
         BBQ-format .jsonl, one of {}, or jsonl:<path>",
        glue::TASKS.join(", ")
    )))
}

/// BBQ collections: spec prefix → folder under the data directory.
const BBQ_COLLECTIONS: [(&str, &str); 3] =
    [("bbq", "bbq/data"), ("bbq-lite", "bbq_lite/data"), ("bbq-regen", "bbq/regenerated")];

fn load_bbq(name: String, path: PathBuf) -> Result<Task> {
    let (bytes, sha256) = read_hashed(&path)?;
    // The intersectional categories' bias targets need BBQ's metadata file, which lives at
    // `bbq/supplemental/` next to `bbq/data/`.
    let needs_meta = memchr_str(&bytes, b"\"Race_x_");
    let meta_path =
        path.parent().and_then(Path::parent).map(|p| p.join("supplemental").join("additional_metadata.csv"));
    let meta = match meta_path.filter(|p| needs_meta && p.is_file()) {
        Some(p) => {
            let raw = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            Some(bbq::IntersectionalMeta::parse(&p, &raw)?)
        }
        None => {
            if needs_meta {
                eprintln!(
                    "crispr: {}: no ../supplemental/additional_metadata.csv beside it, so the intersectional \
                     examples have no bias target (accuracy only)",
                    path.display()
                );
            }
            None
        }
    };
    let examples = bbq::parse_with(&path, &bytes, meta.as_ref())?;
    Ok(Task { name, kind: TaskKind::Bbq, examples, source: path, sha256 })
}

/// `<dir>/<category>.jsonl`, matching the category name case-insensitively so `bbq:age` works.
fn bbq_category_file(dir: &Path, category: &str) -> Result<PathBuf> {
    // A category is a file stem in that folder, never a path out of it (`bbq:../../x/SES` would
    // otherwise load another collection's file under the name `bbq:SES`).
    let plain = !category.is_empty()
        && !category.contains(['/', '\\'])
        && category != ".."
        && category != "."
        && !Path::new(category).is_absolute();
    if !plain {
        return Err(Error::format(
            dir,
            format!("BBQ category {category:?} must be a plain name such as Age, not a path"),
        ));
    }
    let exact = dir.join(format!("{category}.jsonl"));
    if exact.is_file() {
        return Ok(exact);
    }
    let mut available = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    if stem.eq_ignore_ascii_case(category) {
                        return Ok(p);
                    }
                    available.push(stem.to_string());
                }
            }
        }
    }
    available.sort();
    let hint = if available.is_empty() {
        "the folder has no .jsonl files".to_string()
    } else {
        format!("available: {}", available.join(", "))
    };
    // The full BBQ release's SES (used by the paper), Gender_identity and Race_ethnicity files are
    // not in the shared data; point at the stand-ins instead of leaving the user guessing.
    Err(Error::format(
        &exact,
        format!(
            "no such BBQ category file ({hint}; BBQ-Lite is bbq-lite:<Category>, re-drawn files bbq-regen:<Category>)"
        ),
    ))
}

fn memchr_str(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Read a whole file and its SHA-256.
fn read_hashed(path: &Path) -> Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    Ok((bytes, sha))
}

/// The file's text as numbered lines (1-based), with a UTF-8 byte-order mark and `\r` line ends
/// removed and blank lines skipped. Invalid UTF-8 is an error naming its line.
pub(crate) fn text_lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(usize, &'a str)>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(Error::format(path, format!("line {line}: not valid UTF-8")));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect())
}

/// A serde_json error as "column C: message", without serde's own "at line 1 column C" suffix
/// (which counts lines within the one JSONL line and would contradict our line number).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full);
    format!("column {}: {msg}", e.column())
}

/// Generation-mode normalisation (method.md, "Scoring an answer"): trim, strip one trailing
/// period, lower-case, in that order (so `"Yes ."` keeps its space: `"yes "`).
pub fn normalise_answer(s: &str) -> String {
    let t = s.trim();
    t.strip_suffix('.').unwrap_or(t).to_lowercase()
}

/// Map a generated output to a candidate: the first candidate whose normalised text equals the
/// normalised output, else `None` (unmatched; scored as wrong and reported separately).
pub fn match_generation(output: &str, candidates: &[String]) -> Option<usize> {
    let out = normalise_answer(output);
    candidates.iter().position(|c| normalise_answer(c) == out)
}

/// [`match_generation`], then, if nothing matched exactly, the single candidate that the
/// normalised output is a non-empty prefix of.
///
/// This is the matching that reproduces the published BBQ numbers from the authors' UnifiedQA
/// outputs: UnifiedQA sometimes truncates a long option ("… custom-tailored pantsu" for
/// "… pantsuit"). An output that is a prefix of two or more candidates stays unmatched. Not the
/// tool's default, which is exact match as the method specifies.
pub fn match_generation_prefix(output: &str, candidates: &[String]) -> Option<usize> {
    if let Some(i) = match_generation(output, candidates) {
        return Some(i);
    }
    let out = normalise_answer(output);
    if out.is_empty() {
        return None;
    }
    let mut hits = candidates.iter().enumerate().filter(|(_, c)| normalise_answer(c).starts_with(&out));
    match (hits.next(), hits.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_matching() {
        assert_eq!(normalise_answer("  The Grandfather. "), "the grandfather");
        assert_eq!(normalise_answer("yes.."), "yes.");
        assert_eq!(normalise_answer("Yes ."), "yes ");
        let c: Vec<String> = ["The grandfather", "The grandson", "Can't be determined"].map(String::from).into();
        assert_eq!(match_generation("the grandson.", &c), Some(1));
        assert_eq!(match_generation("grandson", &c), None);
        assert_eq!(match_generation_prefix("the grand", &c), None, "prefix of two candidates");
        assert_eq!(match_generation_prefix("can't be", &c), Some(2));
        assert_eq!(match_generation_prefix("", &c), None);
    }

    #[test]
    fn text_lines_strip_bom_and_cr_and_number_from_one() {
        let bytes = "\u{feff}a\tb\r\n\n c\n".as_bytes();
        let lines = text_lines(Path::new("x"), bytes).unwrap();
        assert_eq!(lines, vec![(1, "a\tb"), (3, " c")]);
        let err = text_lines(Path::new("x.tsv"), b"ok\n\xff\n").unwrap_err().to_string();
        assert_eq!(err, "x.tsv: line 2: not valid UTF-8");
    }
}
