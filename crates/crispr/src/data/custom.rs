//! A user's own multiple-choice task (`--task jsonl:<path>`).
//!
//! # Schema
//! One JSON object per line (UTF-8; blank lines are skipped):
//!
//! ```json
//! {"id": "q17", "context": "…", "question": "Who …?", "candidates": ["A", "B", "Unknown"], "label": 2}
//! {"prompt": "Is the sky green? Answer yes or no.", "candidates": ["yes", "no"], "label": 1}
//! ```
//!
//! - `candidates` (required): the answer strings, at least two. The model scores each one after the
//!   prompt (or, in generation mode, its output is matched against them).
//! - `label` (required): the gold answer, as a 0-based index into `candidates` or as a string
//!   equal to one of them.
//! - `id` (optional, string or integer): the example's identifier; default: its line position.
//! - Every other key whose value is a string, number or boolean becomes a template field that
//!   instructions refer to as `{key}` (numbers and booleans by their JSON text). Arrays, objects and
//!   `null` are ignored, so extra metadata can ride along.
//!
//! # Default instructions
//! If every line has a `prompt`, the default instruction set is the single template `{prompt}`.
//! Otherwise lines need a `question` (and optionally a `context`), and the defaults are the
//! paper's ten BBQ instructions in the paper's layout, with the options joined by `", "`:
//! `{instruction} Context: {context}  Question: {question}  Answer options: {candidates}  Your answer: `
//! (without the `Context: {context}  ` part when some line has no context). See
//! [`super::instructions`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{json_error, text_lines, Example};
use crate::error::{Error, Result};

/// Parse a custom-format JSONL file (`path` only names it in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (no, line) in text_lines(path, bytes)? {
        let bad = |msg: String| Error::format(path, format!("line {no}: {msg}"));
        let value: Value = serde_json::from_str(line).map_err(|e| bad(json_error(&e)))?;
        let Value::Object(obj) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let candidates: Vec<String> = match obj.get("candidates") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("\"candidates\" must be a list of strings".into()))?,
            Some(_) => return Err(bad("\"candidates\" must be a list of strings".into())),
            None => return Err(bad("missing \"candidates\" (a list of answer strings)".into())),
        };
        if candidates.len() < 2 {
            return Err(bad(format!("\"candidates\" has {} entries, at least 2 are needed", candidates.len())));
        }
        // Two equal candidates make a string label ambiguous and the choice between them arbitrary.
        for (i, c) in candidates.iter().enumerate() {
            if let Some(j) = candidates[..i].iter().position(|d| d == c) {
                return Err(bad(format!("candidates {j} and {i} are both {c:?}; candidates must differ")));
            }
        }
        let label = match obj.get("label") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(l) if (l as usize) < candidates.len() => l as usize,
                _ => return Err(bad(format!("label {n} is not an index into the {} candidates", candidates.len()))),
            },
            Some(Value::String(s)) => candidates
                .iter()
                .position(|c| c == s)
                .ok_or_else(|| bad(format!("label {s:?} is not one of the candidates")))?,
            Some(other) => return Err(bad(format!("label {other} must be an index or a candidate string"))),
            None => return Err(bad("missing \"label\"".into())),
        };
        let mut fields = BTreeMap::new();
        for (k, v) in &obj {
            if k == "candidates" || k == "label" {
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => continue,
            };
            fields.insert(k.clone(), text);
        }
        let id = fields.get("id").cloned().unwrap_or_else(|| out.len().to_string());
        out.push(Example { index: out.len(), id, fields, label, candidates, bbq: None });
    }
    Ok(out)
}
