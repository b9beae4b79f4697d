//! Instructions: prompt templates that turn an [`Example`] into prompt text and candidates.
//!
//! # Template syntax
//! Plain text with `{name}` placeholders (Python `str.format` style, as FLAN writes them; `{{` and
//! `}}` are literal braces). A name is one of:
//! - a field of the task's examples (`{context}`, `{sentence1}`, …; [`Task::field_names`]), or an
//!   alias of one ([`Task::field_aliases`]: FLAN's `{premise}`/`{hypothesis}` for RTE, `{text}` for
//!   BoolQ);
//! - `{options_}`: the candidates as FLAN renders them, `"OPTIONS:\n- "` followed by the candidates
//!   joined with `"\n- "`;
//! - `{candidates}`: the candidates joined with `", "`.
//!
//! Unknown names are rejected when the instruction set is loaded, with the list of valid ones.
//!
//! # Candidates
//! An instruction either fixes the candidates (NLU tasks: the label words, by label index) or takes
//! each example's own (BBQ `ans0..ans2`; custom tasks' `candidates`).
//!
//! # Instruction sets
//! - `paper` (BBQ only): the CRISPR paper's ten instructions (`tasks.bbq.crispr_paper.instructions`
//!   in `<data>/instructions/templates.json` if present, else the built-in copy
//!   [`BUILTIN_TEMPLATES`], ids `paper/0` … `paper/9`) in the paper's layout
//!   [`PAPER_PROMPT_FORMAT`]. This is also BBQ's default.
//! - `default`: BBQ → `paper`. NLU tasks → ten FLAN templates ([`flan_default_ids`] says which) with
//!   the task's FLAN label words ([`super::glue::label_words`]). Custom tasks → see
//!   [`super::custom`].
//! - a path to a JSON file holding a list whose entries are either a template string or an object
//!   `{"id"?: str, "template": str, "candidates"?: [str]}` or `{"id"?: str, "instruction": str}`.
//!   An `instruction` entry is a bare instruction sentence placed in the task's layout (BBQ: the
//!   paper's layout; custom tasks: the layout of their defaults); NLU tasks have no layout, so
//!   give them full templates. Without `candidates`, NLU templates use the task's label words and
//!   other tasks each example's candidates. Ids default to `<file stem>/<position>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{glue, Example, Task, TaskKind};
use crate::error::{Error, Result};

/// The paper's BBQ prompt (from the authors' `build_prompt`): note the two spaces before
/// `Question:`, `Answer options:` and `Your answer:`, and that nine of the ten instructions end with
/// their own space, which makes a double space before `Context:`.
pub const PAPER_PROMPT_FORMAT: &str =
    "{instruction} Context: {context}  Question: {question}  Answer options: {ans0}, {ans1}, {ans2}  Your answer: ";

/// Custom tasks' layout: the paper's, with any number of options.
const CUSTOM_LAYOUT: &str =
    "{instruction} Context: {context}  Question: {question}  Answer options: {candidates}  Your answer: ";
/// Custom tasks' layout when some example has no context.
const CUSTOM_LAYOUT_NO_CONTEXT: &str =
    "{instruction} Question: {question}  Answer options: {candidates}  Your answer: ";

/// How many FLAN templates an NLU task's default set has (the paper used ten per task).
const NLU_DEFAULT_COUNT: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Text(String),
    Field(String),
    Options,
    Candidates,
}

/// One instruction: a compiled template plus, optionally, fixed candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    /// Stable identifier, reported in metrics (`paper/3`, `flan2021/rte/0`, …).
    pub id: String,
    /// Human-readable form: the instruction sentence for layout-based instructions, else the
    /// template.
    pub text: String,
    /// The full template (for layout-based instructions: the layout with the sentence inserted).
    pub template: String,
    /// Fixed candidates by label index; `None` = each example's own.
    pub candidates: Option<Vec<String>>,
    segments: Vec<Segment>,
}

/// A named list of instructions; metrics are reported per instruction and averaged over the set.
#[derive(Clone, Debug, PartialEq)]
pub struct InstructionSet {
    pub name: String,
    pub items: Vec<Instruction>,
}

/// A rendered example: what the model sees and what it chooses from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub candidates: Vec<String>,
    /// Index of the gold answer in `candidates`.
    pub label: usize,
}

impl Instruction {
    /// Compile `template` for `task`. `sentence` fills an `{instruction}` placeholder (layouts);
    /// without it `{instruction}` is an unknown name.
    pub fn new(
        id: &str,
        template: &str,
        sentence: Option<&str>,
        candidates: Option<Vec<String>>,
        task: &Task,
    ) -> std::result::Result<Instruction, String> {
        let segments = compile(template, task, sentence)?;
        let (text, template) = match sentence {
            Some(s) => (s.to_string(), template.replacen("{instruction}", s, 1)),
            None => (template.to_string(), template.to_string()),
        };
        Ok(Instruction { id: id.to_string(), text, template, candidates, segments })
    }

    /// Fill the template with `ex`'s fields. Errors (never panics) when the example lacks a field
    /// the template needs, has no candidates, or its label is out of range.
    pub fn render(&self, ex: &Example) -> Result<Prompt> {
        let candidates = match &self.candidates {
            Some(c) => c.clone(),
            None => ex.candidates.clone(),
        };
        if candidates.is_empty() {
            return Err(Error::msg(format!(
                "instruction {}: example {} has no candidates and the instruction gives none",
                self.id, ex.id
            )));
        }
        if ex.label >= candidates.len() {
            return Err(Error::msg(format!(
                "instruction {}: example {} has label {} but only {} candidates",
                self.id,
                ex.id,
                ex.label,
                candidates.len()
            )));
        }
        let mut text = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => text.push_str(t),
                Segment::Field(name) => match ex.fields.get(name) {
                    Some(v) => text.push_str(v),
                    None => {
                        return Err(Error::msg(format!(
                            "instruction {}: example {} has no field {name:?}",
                            self.id, ex.id
                        )))
                    }
                },
                Segment::Options => {
                    text.push_str("OPTIONS:\n- ");
                    text.push_str(&candidates.join("\n- "));
                }
                Segment::Candidates => text.push_str(&candidates.join(", ")),
            }
        }
        Ok(Prompt { text, candidates, label: ex.label })
    }

    /// Field names the template reads (after alias resolution).
    pub fn fields_used(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Field(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Split a template into text and placeholder names (`{{`/`}}` are literal braces).
fn tokenize(template: &str) -> std::result::Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(format!("unclosed placeholder {{{name} (write {{{{ for a literal brace)"))
                        }
                        Some(ch) => name.push(ch),
                    }
                }
                if name.trim().is_empty() {
                    return Err("empty placeholder {}".into());
                }
                if !text.is_empty() {
                    out.push((false, std::mem::take(&mut text)));
                }
                out.push((true, name));
            }
            '}' => return Err("unmatched } (write }} for a literal brace)".into()),
            _ => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push((false, text));
    }
    Ok(out)
}

fn compile(template: &str, task: &Task, sentence: Option<&str>) -> std::result::Result<Vec<Segment>, String> {
    let fields = task.field_names();
    let aliases = task.field_aliases();
    let mut segs = Vec::new();
    for (is_name, s) in tokenize(template)? {
        if !is_name {
            segs.push(Segment::Text(s));
            continue;
        }
        let seg = if fields.contains(&s) {
            Segment::Field(s)
        } else if let Some((_, real)) = aliases.iter().find(|(a, _)| *a == s) {
            Segment::Field(real.to_string())
        } else if s == "options_" {
            Segment::Options
        } else if s == "candidates" {
            Segment::Candidates
        } else if let (Some(sentence), "instruction") = (sentence, s.as_str()) {
            Segment::Text(sentence.to_string())
        } else {
            let mut valid: Vec<String> = fields.iter().cloned().collect();
            valid.extend(aliases.iter().map(|(a, _)| a.to_string()));
            valid.extend(["options_".to_string(), "candidates".to_string()]);
            return Err(format!("unknown placeholder {{{s}}} for task {}; valid: {}", task.name, valid.join(", ")));
        };
        segs.push(seg);
    }
    Ok(segs)
}

/// The templates the tool ships with: the paper's ten BBQ instructions and the FLAN 2021/2022
/// templates of the NLU tasks, verbatim, with their sources and licenses (MIT, Apache-2.0). They
/// are part of the method rather than benchmark data, and short, so they are compiled in: no
/// fetch, and a user's own `jsonl:` task needs no data directory.
pub const BUILTIN_TEMPLATES: &str = include_str!("templates.json");

/// `<data>/instructions/templates.json` when the data directory has one (same schema), else the
/// built-in templates ([`BUILTIN_TEMPLATES`]).
fn templates_json(data_dir: &Path) -> Result<(PathBuf, Value)> {
    let path = data_dir.join("instructions").join("templates.json");
    if !path.is_file() {
        let builtin = PathBuf::from("<built-in templates.json>");
        let v = serde_json::from_str(BUILTIN_TEMPLATES).map_err(|e| Error::format(&builtin, e.to_string()))?;
        return Ok((builtin, v));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    Ok((path, v))
}

/// The paper's ten BBQ instruction sentences, verbatim (trailing spaces included).
pub fn paper_sentences(data_dir: &Path) -> Result<Vec<String>> {
    let (path, v) = templates_json(data_dir)?;
    let list = v["tasks"]["bbq"]["crispr_paper"]["instructions"]
        .as_array()
        .ok_or_else(|| Error::format(&path, "tasks.bbq.crispr_paper.instructions is missing or not a list"))?;
    list.iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::format(&path, "tasks.bbq.crispr_paper.instructions must hold strings"))
}

/// The layout a bare instruction sentence goes into, if the task has one.
fn layout(task: &Task) -> Option<&'static str> {
    match task.kind {
        TaskKind::Bbq => Some(PAPER_PROMPT_FORMAT),
        TaskKind::Custom if task.field_names().contains("context") => Some(CUSTOM_LAYOUT),
        TaskKind::Custom => Some(CUSTOM_LAYOUT_NO_CONTEXT),
        TaskKind::Glue(_) => None,
    }
}

/// The paper's ten sentences in the task's layout (BBQ; custom tasks with a `question`).
fn paper_set(task: &Task, data_dir: &Path) -> Result<InstructionSet> {
    let Some(layout) = layout(task) else {
        return Err(Error::msg(format!("task {} has no instruction layout", task.name)));
    };
    let items = paper_sentences(data_dir)?
        .iter()
        .enumerate()
        .map(|(i, s)| Instruction::new(&format!("paper/{i}"), layout, Some(s), None, task))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::msg(format!("task {}: {e}", task.name)))?;
    Ok(InstructionSet { name: "paper".into(), items })
}

/// The ids of the FLAN templates that make up an NLU task's default set: the task's FLAN 2021
/// templates that pose the task (`kind: "forward"`), in file order, topped up to ten with the first
/// forward FLAN 2022 templates whose text differs from all already chosen.
///
/// With the shared templates this gives: MRPC and BoolQ `flan2021/…/0-9`; RTE `flan2021/rte/0-8` +
/// `flan2022/rte/0`; QNLI `flan2021/qnli/0-8` + `flan2022/qnli/1` (`flan2022/qnli/0` repeats
/// 2021's first); SST-2 `flan2021/sst2/0-7` + `flan2022/sst2/0-1`. FLAN's own typos (e.g. RTE's
/// `{hypothesis}n`) are kept, as the models were trained on them.
pub fn flan_default_ids(task: &str, data_dir: &Path) -> Result<Vec<String>> {
    Ok(flan_default(task, data_dir)?.into_iter().map(|(id, _)| id).collect())
}

fn flan_default(task: &str, data_dir: &Path) -> Result<Vec<(String, String)>> {
    let (path, v) = templates_json(data_dir)?;
    let mut chosen: Vec<(String, String)> = Vec::new();
    for collection in ["flan2021", "flan2022"] {
        let list = v["tasks"][task][collection]
            .as_array()
            .ok_or_else(|| Error::format(&path, format!("tasks.{task}.{collection} is missing or not a list")))?;
        for t in list {
            if chosen.len() == NLU_DEFAULT_COUNT {
                break;
            }
            if t["kind"].as_str() != Some("forward") {
                continue;
            }
            let (Some(id), Some(input)) = (t["id"].as_str(), t["input"].as_str()) else {
                return Err(Error::format(&path, format!("tasks.{task}.{collection}: a template lacks id or input")));
            };
            if chosen.iter().all(|(_, prev)| prev != input) {
                chosen.push((id.to_string(), input.to_string()));
            }
        }
    }
    if chosen.len() < NLU_DEFAULT_COUNT {
        return Err(Error::format(&path, format!("only {} FLAN templates for {task}", chosen.len())));
    }
    Ok(chosen)
}

/// A task's own default instruction set (see the module documentation).
pub fn default_instructions(task: &Task, data_dir: &Path) -> Result<InstructionSet> {
    match &task.kind {
        TaskKind::Bbq => paper_set(task, data_dir),
        TaskKind::Glue(name) => {
            let words = glue_words(name)?;
            let items = flan_default(name, data_dir)?
                .iter()
                .map(|(id, input)| Instruction::new(id, input, None, Some(words.clone()), task))
                .collect::<std::result::Result<Vec<_>, String>>()
                .map_err(|e| Error::msg(format!("task {}: {e}", task.name)))?;
            Ok(InstructionSet { name: "flan".into(), items })
        }
        TaskKind::Custom => {
            let fields = task.field_names();
            if fields.contains("prompt") {
                let ins = Instruction::new("prompt", "{prompt}", None, None, task).map_err(Error::msg)?;
                Ok(InstructionSet { name: "prompt".into(), items: vec![ins] })
            } else if fields.contains("question") {
                paper_set(task, data_dir)
            } else {
                Err(Error::format(
                    &task.source,
                    "no default instructions: lines need a \"prompt\" or a \"question\" field; or pass an instructions file",
                ))
            }
        }
    }
}

fn glue_words(task: &str) -> Result<Vec<String>> {
    glue::label_words(task)
        .map(|w| w.iter().map(|s| s.to_string()).collect())
        .ok_or_else(|| Error::msg(format!("unknown NLU task {task:?}")))
}

/// Resolve `--instructions`: `paper`, `default`, or a path to a JSON file (module documentation).
pub fn load_instructions(spec: &str, task: &Task, data_dir: &Path) -> Result<InstructionSet> {
    match spec {
        "paper" if task.kind == TaskKind::Bbq => paper_set(task, data_dir),
        "paper" => Err(Error::msg(format!(
            "--instructions paper: the paper published its instructions for BBQ only; for {} use \"default\" or a file",
            task.name
        ))),
        "default" => default_instructions(task, data_dir),
        path => load_file(Path::new(path), task),
    }
}

fn load_file(path: &Path, task: &Task) -> Result<InstructionSet> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    let Value::Array(entries) = v else {
        return Err(Error::format(path, "expected a JSON list of templates"));
    };
    if entries.is_empty() {
        return Err(Error::format(path, "the instruction list is empty"));
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let mut items = Vec::with_capacity(entries.len());
    let mut ids = BTreeSet::new();
    for (k, entry) in entries.iter().enumerate() {
        let bad = |msg: String| Error::format(path, format!("entry {}: {msg}", k + 1));
        let default_id = format!("{stem}/{k}");
        let (id, template, sentence, candidates) = match entry {
            Value::String(t) => (default_id, t.clone(), None, None),
            Value::Object(obj) => {
                if let Some(key) =
                    obj.keys().find(|k| !["id", "template", "instruction", "candidates"].contains(&k.as_str()))
                {
                    return Err(bad(format!("unknown key {key:?} (expected id, template, instruction, candidates)")));
                }
                let id = match obj.get("id") {
                    None => default_id,
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                let candidates = match obj.get("candidates") {
                    None => None,
                    Some(Value::Array(a)) => Some(
                        a.iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| bad("\"candidates\" must be a list of strings".into()))?,
                    ),
                    Some(_) => return Err(bad("\"candidates\" must be a list of strings".into())),
                };
                match (obj.get("template"), obj.get("instruction")) {
                    (Some(Value::String(t)), None) => (id, t.clone(), None, candidates),
                    (None, Some(Value::String(s))) => {
                        let Some(layout) = layout(task) else {
                            return Err(bad(format!(
                                "task {} has no layout for a bare \"instruction\"; give a full \"template\"",
                                task.name
                            )));
                        };
                        (id, layout.to_string(), Some(s.clone()), candidates)
                    }
                    _ => return Err(bad("needs exactly one of \"template\" or \"instruction\" (a string)".into())),
                }
            }
            _ => return Err(bad("expected a template string or an object".into())),
        };
        let candidates = check_candidates(task, candidates).map_err(&bad)?;
        if !ids.insert(id.clone()) {
            return Err(bad(format!("duplicate id {id:?}")));
        }
        let ins = Instruction::new(&id, &template, sentence.as_deref(), candidates, task)
            .map_err(|e| bad(format!("({id}) {e}")))?;
        items.push(ins);
    }
    Ok(InstructionSet { name: path.display().to_string(), items })
}

/// Validate a user file's candidates for `task`, filling in NLU label words when absent.
fn check_candidates(task: &Task, candidates: Option<Vec<String>>) -> std::result::Result<Option<Vec<String>>, String> {
    match (&task.kind, candidates) {
        (TaskKind::Glue(name), None) => Ok(glue::label_words(name).map(|w| w.iter().map(|s| s.to_string()).collect())),
        (TaskKind::Glue(name), Some(c)) => {
            let n = glue::label_names(name).map_or(0, |l| l.len());
            if c.len() != n {
                return Err(format!("{name} has {n} classes, so \"candidates\" needs {n} strings (got {})", c.len()));
            }
            Ok(Some(c))
        }
        (TaskKind::Bbq, Some(_)) => {
            Err("BBQ answers are each example's ans0..ans2; remove \"candidates\" from this entry".into())
        }
        (TaskKind::Custom, Some(c)) => {
            let max_label = task.examples.iter().map(|e| e.label).max().unwrap_or(0);
            if c.len() < 2 || c.len() <= max_label {
                return Err(format!(
                    "\"candidates\" has {} strings but the task's labels go up to {max_label}",
                    c.len()
                ));
            }
            Ok(Some(c))
        }
        (_, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_handles_braces() {
        assert_eq!(
            tokenize("a {x} {{lit}} b").unwrap(),
            vec![(false, "a ".into()), (true, "x".into()), (false, " {lit} b".into())]
        );
        assert!(tokenize("a {x").is_err());
        assert!(tokenize("a } b").is_err());
        assert!(tokenize("{}").is_err());
    }
}
