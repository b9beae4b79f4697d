//! Text ↔ token ids, and chat-template rendering.
//!
//! The tokenizer comes from `tokenizer.json` (checkpoint directories) or is rebuilt from GGUF
//! metadata the way transformers does it (`GGUFGPTConverter`: byte-level BPE, control tokens as
//! special added tokens), so ids match transformers on the same file. Chat templates are rendered
//! with a real Jinja engine configured like transformers (`trim_blocks`, `lstrip_blocks`, Python
//! string methods, `raise_exception`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

mod sentencepiece;

/// Instructions a chat template may execute for one rendering (see [`TextCodec::render`]).
const TEMPLATE_FUEL: u64 = 5_000_000;

pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    /// Where the tokenizer came from, for error messages.
    pub source: PathBuf,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub eos_id: Option<u32>,
    pub chat_template: Option<String>,
    /// The token that closes an assistant turn (scored after every candidate).
    pub end_of_turn: Option<u32>,
    /// The most tokens a prompt plus a candidate may take (the model's context; set by the
    /// loader). Longer inputs are refused in [`crate::score::encode`].
    pub max_tokens: Option<usize>,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("tokenizer: {e}"))
}

/// Parse `tokenizer.json`. The tokenizers library panics (`expect`) on some malformed JSON while
/// streaming it, so the text is parsed to a JSON value first (syntax errors become errors here)
/// and only a well-formed value is handed over; a panic that still escapes it is an error too.
fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Json = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    match std::panic::catch_unwind(move || serde_json::from_value::<tokenizers::Tokenizer>(value)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(tok_err(path, e)),
        Err(_) => Err(tok_err(path, "malformed tokenizer definition (rejected by the tokenizers library)")),
    }
}

/// `"<s>"` or `{"content": "<s>", …}` in tokenizer_config.json.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextCodec {
    /// From a checkpoint directory: `tokenizer.json`, `tokenizer_config.json`, and optionally
    /// `chat_template.jinja` (newer transformers save the template there).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::format(dir, "tokenizer.json is missing from the checkpoint directory"));
        }
        let tokenizer = read_tokenizer_json(&tok_path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, format!("invalid JSON: {e}")))?
        } else {
            json!({})
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: use "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let eos_id = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t));
        Self::finish(tokenizer, tok_path, bos_token, eos_token, eos_id, chat_template)
    }

    /// From GGUF metadata (`tokenizer.ggml.*`), as transformers converts it.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = &file.path;
        let model = file.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        let arch = file.get("general.architecture").and_then(Value::as_str).unwrap_or("");
        // SentencePiece vocabularies are rebuilt with the rules transformers picks by architecture.
        let spm = match model {
            "gpt2" => None,
            "llama" => Some(sentencepiece::Flavour::of(arch)),
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "GGUF tokenizer type {model:?} is not supported (byte-level BPE, \"gpt2\", and \
                         SentencePiece, \"llama\")"
                    ),
                ))
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = file
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::format(path, format!("metadata {key} is missing")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::format(path, format!("{key}: non-string entry")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        // SentencePiece files list no merges: they are recovered from the vocabulary.
        let merges = if spm.is_some() { Vec::new() } else { strings("tokenizer.ggml.merges")? };
        let types: Vec<u64> = file
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(Error::format(
                path,
                format!(
                    "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                    types.len(),
                    tokens.len()
                ),
            ));
        }
        // Special-token ids index the token list (and, later, the model's logits).
        let id = |key: &str| -> Result<Option<u32>> {
            let Some(v) = file.get(key) else { return Ok(None) };
            match v.as_u64() {
                Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                _ => {
                    let shown = v.as_u64().map_or_else(|| format!("{v:?}"), |n| n.to_string());
                    Err(Error::format(
                        path,
                        format!("{key} = {shown} is not an index into the {} tokens", tokens.len()),
                    ))
                }
            }
        };
        let (bos_id, eos_id) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
        // transformers (and llama.cpp) add BOS to a SentencePiece vocabulary that does not say.
        let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(spm.is_some());

        let merges: Vec<Json> = merges
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
                json!([a, b])
            })
            .collect();
        let respelled = spm.map(|f| sentencepiece::respell(f, &tokens)).unwrap_or_default();
        // The tokens named special by id (a SentencePiece `<unk>` has type "unknown", not control).
        let named: Vec<u32> = if spm.is_some() {
            let unk = id("tokenizer.ggml.unknown_token_id")?;
            [bos_id, eos_id, unk, id("tokenizer.ggml.padding_token_id")?].into_iter().flatten().collect()
        } else {
            Vec::new()
        };
        // GGML token types: 3 = control (special), 4 = user-defined (added, not special; in a
        // SentencePiece vocabulary only those whose spelling the model keeps).
        let kept: std::collections::HashSet<&str> = respelled.iter().map(String::as_str).collect();
        let added: Vec<Json> = types
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| {
                let special = t == 3 || named.contains(&(i as u32));
                let user = t == 4 && (spm.is_none() || kept.contains(tokens[i].as_str()));
                (special || user).then(|| {
                    json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": special})
                })
            })
            .collect();
        let bos_str = bos_id.and_then(|i| tokens.get(i as usize)).cloned();
        let single = match (&bos_str, add_bos) {
            (Some(b), true) => {
                json!([{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}])
            }
            _ => json!([{"Sequence": {"id": "A", "type_id": 0}}]),
        };
        let special_tokens = match (&bos_str, add_bos, bos_id) {
            (Some(b), true, Some(i)) => json!({ b.as_str(): {"id": b, "ids": [i], "tokens": [b]} }),
            _ => json!({}),
        };
        let [normalizer, pre_tokenizer, decoder, model] = if let Some(flavour) = spm {
            let key = "tokenizer.ggml.scores";
            let scores: Option<Vec<f64>> = match file.get(key) {
                None => None,
                Some(v) => Some(
                    v.as_array()
                        .and_then(|a| a.iter().map(|x| x.as_f64().filter(|f| f.is_finite())).collect())
                        .filter(|s: &Vec<f64>| s.len() == tokens.len())
                        .ok_or_else(|| {
                            Error::format(path, format!("{key}: expected {} finite numbers", tokens.len()))
                        })?,
                ),
            };
            let rank = sentencepiece::ranks(flavour, scores.as_deref(), tokens.len())
                .ok_or_else(|| Error::format(path, format!("metadata {key} is missing")))?;
            // transformers' Gemma tokenizer calls it `<unk>` unless the file names another.
            let unk = match id("tokenizer.ggml.unknown_token_id")? {
                Some(i) => Some(respelled[i as usize].as_str()),
                None => kept.get("<unk>").copied(),
            };
            sentencepiece::pipeline(flavour, &respelled, &rank, unk)
        } else {
            let vocab: serde_json::Map<String, Json> =
                tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
            [
                Json::Null,
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}),
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                       "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                       "vocab": vocab, "merges": merges}),
            ]
        };
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "TemplateProcessing", "single": single,
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": special_tokens},
            "decoder": decoder,
            "model": model
        });
        let tokenizer: tokenizers::Tokenizer =
            serde_json::from_value::<tokenizers::Tokenizer>(doc).map_err(|e| tok_err(path, e))?;
        let chat_template = file.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        let eos_str = eos_id.and_then(|i| tokens.get(i as usize)).cloned();
        Self::finish(tokenizer, path.clone(), bos_str, eos_str, eos_id, chat_template)
    }

    fn finish(
        tokenizer: tokenizers::Tokenizer,
        source: PathBuf,
        bos_token: Option<String>,
        eos_token: Option<String>,
        eos_id: Option<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let mut codec = TextCodec {
            tokenizer,
            source,
            bos_token,
            eos_token,
            eos_id,
            chat_template,
            end_of_turn: None,
            max_tokens: None,
        };
        codec.end_of_turn = codec.detect_end_of_turn()?.or(eos_id);
        Ok(codec)
    }

    /// Render a conversation whose assistant turn holds a sentinel; the first token after the
    /// sentinel, if it is a special token, closes the turn.
    fn detect_end_of_turn(&self) -> Result<Option<u32>> {
        if self.chat_template.is_none() {
            return Ok(None);
        }
        const SENTINEL: &str = "\u{2}CRISPR-SENTINEL\u{3}";
        let messages = json!([{"role": "user", "content": "hello"}, {"role": "assistant", "content": SENTINEL}]);
        let text = self.render(&messages, false)?;
        let Some(at) = text.find(SENTINEL) else {
            return Ok(None);
        };
        let after = &text[at + SENTINEL.len()..];
        let ids = self.encode(after, false)?;
        let Some(&first) = ids.first() else {
            return Ok(None);
        };
        let is_special = self.tokenizer.get_added_vocabulary().is_special_token(&self.token(first).unwrap_or_default());
        Ok(is_special.then_some(first))
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Token ids of `text`; `add_special` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, add_special).map_err(|e| tok_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| tok_err(&self.source, e))
    }

    /// Render the chat template for `messages` (a JSON list of `{role, content}`).
    pub fn render(&self, messages: &Json, add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::format(&self.source, "the model has no chat template; use --raw"))?;
        let mut env = minijinja::Environment::new();
        // A template comes with the model file: bound its work so a hostile or broken one (nested
        // loops, deep recursion) fails with an error instead of never returning. Real chat
        // templates spend a few thousand units on a conversation.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        env.add_template("chat", template).map_err(|e| tok_err(&self.source, format!("chat template: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| tok_err(&self.source, e))?;
        let ctx = minijinja::context! {
            messages => minijinja::Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        tmpl.render(ctx).map_err(|e| tok_err(&self.source, format!("chat template: {e}")))
    }

    /// The token ids of a single user turn followed by the generation prompt, as transformers'
    /// `apply_chat_template(..., add_generation_prompt=True, tokenize=True)` produces them.
    pub fn chat_prompt(&self, user: &str) -> Result<Vec<u32>> {
        let text = self.render(&json!([{"role": "user", "content": user}]), true)?;
        self.encode(&text, false)
    }
}

/// A tokenizer that can emit ids the embedding does not have belongs to another model.
pub fn check_vocab(model_vocab: usize, text: &TextCodec) -> Result<()> {
    let n = text.vocab_size();
    if n > model_vocab {
        return Err(Error::format(
            &text.source,
            format!(
                "tokenizer has {n} tokens but the model's embedding has {model_vocab} rows: tokenizer does not match"
            ),
        ));
    }
    Ok(())
}
