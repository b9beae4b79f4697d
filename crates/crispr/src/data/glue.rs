//! The NLU tasks: GLUE MRPC, RTE, QNLI, SST-2 (development sets) and BoolQ (development set).
//!
//! Field names follow the Hugging Face / promptsource schemas, so templates written for those
//! work unchanged: MRPC and RTE `sentence1`, `sentence2`; QNLI `question`, `sentence`; SST-2
//! `sentence`; BoolQ `question`, `title`, `passage`. Labels are the GLUE integers (see
//! [`label_names`]). FLAN's placeholder names are accepted as aliases ([`field_aliases`]).
//!
//! File formats (see each folder's `SOURCE.md`):
//! - `mrpc/dev.tsv`: UTF-8 with a byte-order mark, header `Quality, #1 ID, #2 ID, #1 String,
//!   #2 String`; split on tabs only (quotes are literal characters, some unbalanced).
//! - `rte/dev.jsonl`: `{"idx", "sentence1", "sentence2", "label"}`, label 0 = entailment.
//! - `qnli/dev.tsv`: header `index, question, sentence, label`, label `entailment` /
//!   `not_entailment`; tabs only.
//! - `sst2/dev.tsv`: header `sentence, label`; split on the last tab (sentences keep their trailing
//!   space).
//! - `boolq/dev.jsonl`: `{"question", "title", "answer", "passage"}`, `answer` the string
//!   `"True"`/`"False"` (a JSON boolean, as in the official release, is accepted too).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{json_error, text_lines, Example};
use crate::error::{Error, Result};

/// The task names, as accepted by [`super::load_task`].
pub const TASKS: [&str; 5] = ["mrpc", "rte", "qnli", "sst2", "boolq"];

/// The file a task is read from, relative to the data directory.
pub fn default_path(task: &str) -> Option<&'static str> {
    Some(match task {
        "mrpc" => "mrpc/dev.tsv",
        "rte" => "rte/dev.jsonl",
        "qnli" => "qnli/dev.tsv",
        "sst2" => "sst2/dev.tsv",
        "boolq" => "boolq/dev.jsonl",
        _ => return None,
    })
}

/// Class names by label index (GLUE / SuperGLUE conventions).
pub fn label_names(task: &str) -> Option<&'static [&'static str]> {
    Some(match task {
        "mrpc" => &["not_equivalent", "equivalent"],
        "rte" | "qnli" => &["entailment", "not_entailment"],
        "sst2" => &["negative", "positive"],
        "boolq" => &["False", "True"],
        _ => return None,
    })
}

/// FLAN's answer words by label index (`flan_options_by_label` in the instructions'
/// `templates.json`): the candidates of every default NLU instruction, and of a user template that
/// gives none.
pub fn label_words(task: &str) -> Option<&'static [&'static str]> {
    Some(match task {
        "mrpc" | "boolq" => &["no", "yes"],
        "rte" | "qnli" => &["yes", "no"],
        "sst2" => &["negative", "positive"],
        _ => return None,
    })
}

/// The fields that form an instance's input.
pub fn input_fields(task: &str) -> &'static [&'static str] {
    match task {
        "mrpc" | "rte" => &["sentence1", "sentence2"],
        "qnli" => &["question", "sentence"],
        "sst2" => &["sentence"],
        "boolq" => &["title", "passage", "question"],
        _ => &[],
    }
}

/// Alternative placeholder names → field: FLAN's (`premise`, `hypothesis` for RTE, `text` for
/// BoolQ's passage) and SuperGLUE's.
pub fn field_aliases(task: &str) -> &'static [(&'static str, &'static str)] {
    match task {
        "rte" => &[("premise", "sentence1"), ("hypothesis", "sentence2")],
        "boolq" => &[("text", "passage")],
        _ => &[],
    }
}

/// Parse the file of NLU task `task` (one of [`TASKS`]).
pub fn parse(task: &str, path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    match task {
        "mrpc" => parse_mrpc(path, bytes),
        "rte" => parse_rte(path, bytes),
        "qnli" => parse_qnli(path, bytes),
        "sst2" => parse_sst2(path, bytes),
        "boolq" => parse_boolq(path, bytes),
        other => Err(Error::msg(format!("unknown NLU task {other:?}"))),
    }
}

fn example(index: usize, id: String, fields: &[(&str, &str)], label: usize) -> Example {
    Example {
        index,
        id,
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        label,
        candidates: Vec::new(),
        bbq: None,
    }
}

/// Split the TSV into header-checked rows of exactly `header.len()` tab-separated cells.
fn tsv_rows<'a>(path: &Path, bytes: &'a [u8], header: &[&str]) -> Result<Vec<(usize, Vec<&'a str>)>> {
    let lines = text_lines(path, bytes)?;
    let Some(((first_no, first), rest)) = lines.split_first() else {
        return Err(Error::format(path, "empty file (expected a header line)"));
    };
    let got: Vec<&str> = first.split('\t').collect();
    if got != header {
        return Err(Error::format(path, format!("line {first_no}: expected the header {header:?}, found {got:?}")));
    }
    rest.iter()
        .map(|&(no, line)| {
            let cells: Vec<&str> = line.split('\t').collect();
            if cells.len() != header.len() {
                return Err(Error::format(
                    path,
                    format!("line {no}: expected {} tab-separated columns, found {}", header.len(), cells.len()),
                ));
            }
            Ok((no, cells))
        })
        .collect()
}

fn bad_label(path: &Path, line: usize, got: &str, allowed: &str) -> Error {
    Error::format(path, format!("line {line}: label {got:?} is not one of {allowed}"))
}

fn parse_mrpc(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    let rows = tsv_rows(path, bytes, &["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"])?;
    rows.into_iter()
        .enumerate()
        .map(|(i, (no, c))| {
            let label = match c[0].trim() {
                "0" => 0,
                "1" => 1,
                other => return Err(bad_label(path, no, other, "0, 1")),
            };
            let id = format!("{}-{}", c[1].trim(), c[2].trim());
            Ok(example(i, id, &[("sentence1", c[3]), ("sentence2", c[4])], label))
        })
        .collect()
}

fn parse_qnli(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    let rows = tsv_rows(path, bytes, &["index", "question", "sentence", "label"])?;
    rows.into_iter()
        .enumerate()
        .map(|(i, (no, c))| {
            let label = match c[3].trim() {
                "entailment" => 0,
                "not_entailment" => 1,
                other => return Err(bad_label(path, no, other, "entailment, not_entailment")),
            };
            Ok(example(i, c[0].trim().to_string(), &[("question", c[1]), ("sentence", c[2])], label))
        })
        .collect()
}

fn parse_sst2(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    let lines = text_lines(path, bytes)?;
    let Some(((first_no, first), rest)) = lines.split_first() else {
        return Err(Error::format(path, "empty file (expected a header line)"));
    };
    if *first != "sentence\tlabel" {
        return Err(Error::format(path, format!("line {first_no}: expected the header \"sentence<TAB>label\"")));
    }
    rest.iter()
        .enumerate()
        .map(|(i, &(no, line))| {
            // The last tab separates the label; the sentence keeps everything before it.
            let Some((sentence, label)) = line.rsplit_once('\t') else {
                return Err(Error::format(path, format!("line {no}: expected 2 tab-separated columns, found 1")));
            };
            let label = match label.trim() {
                "0" => 0,
                "1" => 1,
                other => return Err(bad_label(path, no, other, "0, 1")),
            };
            Ok(example(i, i.to_string(), &[("sentence", sentence)], label))
        })
        .collect()
}

#[derive(Deserialize)]
struct RteRow {
    idx: serde_json::Value,
    sentence1: String,
    sentence2: String,
    label: serde_json::Value,
}

fn parse_rte(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    text_lines(path, bytes)?
        .into_iter()
        .enumerate()
        .map(|(i, (no, line))| {
            let bad = |msg: String| Error::format(path, format!("line {no}: {msg}"));
            let row: RteRow = serde_json::from_str(line).map_err(|e| bad(json_error(&e)))?;
            // GLUE integers, or SuperGLUE's label strings.
            let label = match &row.label {
                serde_json::Value::Number(n) if n.as_u64() == Some(0) => 0,
                serde_json::Value::Number(n) if n.as_u64() == Some(1) => 1,
                serde_json::Value::String(s) if s == "entailment" => 0,
                serde_json::Value::String(s) if s == "not_entailment" => 1,
                other => {
                    return Err(bad(format!("label {other} is not one of 0, 1, \"entailment\", \"not_entailment\"")))
                }
            };
            let id = match row.idx {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Ok(example(i, id, &[("sentence1", &row.sentence1), ("sentence2", &row.sentence2)], label))
        })
        .collect()
}

#[derive(Deserialize)]
struct BoolqRow {
    question: String,
    #[serde(default)]
    title: String,
    passage: String,
    answer: serde_json::Value,
}

fn parse_boolq(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    text_lines(path, bytes)?
        .into_iter()
        .enumerate()
        .map(|(i, (no, line))| {
            let bad = |msg: String| Error::format(path, format!("line {no}: {msg}"));
            let row: BoolqRow = serde_json::from_str(line).map_err(|e| bad(json_error(&e)))?;
            let label = match &row.answer {
                serde_json::Value::Bool(b) => usize::from(*b),
                serde_json::Value::String(s) if s == "True" => 1,
                serde_json::Value::String(s) if s == "False" => 0,
                other => return Err(bad(format!("answer {other} is not \"True\" or \"False\""))),
            };
            let fields = [("question", row.question.as_str()), ("title", &row.title), ("passage", &row.passage)];
            Ok(example(i, i.to_string(), &fields, label))
        })
        .collect()
}
