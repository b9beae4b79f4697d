//! How prompts and candidate answers become token ids (chat template, raw text, or
//! encoder–decoder input and target). The families score them (`model::*::scoring`).

use crate::error::{Error, Result};
use crate::text::TextCodec;

/// How prompts and candidates become token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptStyle {
    /// The model's chat template: user turn = prompt, generation prompt added; every candidate is
    /// followed by the template's end-of-turn token.
    Chat,
    /// Plain text with the tokenizer's own special tokens (e.g. BOS); candidates are scored as a
    /// bare continuation.
    Raw,
    /// Encoder–decoder: encoder input = prompt + the tokenizer's end token (`</s>` for T5),
    /// decoder target = candidate + `</s>`, both as the tokenizer's post-processor adds them.
    Seq2Seq,
}

/// A prompt and its candidates as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub candidates: Vec<Vec<u32>>,
}

/// Longest token, in bytes, assumed when refusing an over-long prompt before tokenizing it.
const MAX_BYTES_PER_TOKEN: usize = 64;

pub fn encode(text: &TextCodec, style: PromptStyle, prompt: &str, candidates: &[String]) -> Result<Encoded> {
    let too_long = |what: String, limit: usize| {
        Error::msg(format!("{what}, longer than the model's context of {limit} tokens ({})", text.source.display()))
    };
    // A multi-megabyte line would take gigabytes to tokenize and run: refuse it up front.
    if let Some(limit) = text.max_tokens {
        if prompt.len() > limit.saturating_mul(MAX_BYTES_PER_TOKEN) {
            return Err(too_long(format!("the prompt is {} bytes, far more than {limit} tokens", prompt.len()), limit));
        }
    }
    let prompt_ids = match style {
        PromptStyle::Chat => text.chat_prompt(prompt)?,
        PromptStyle::Raw | PromptStyle::Seq2Seq => text.encode(prompt, true)?,
    };
    if prompt_ids.is_empty() {
        return Err(Error::msg("the prompt encodes to no tokens"));
    }
    let mut cands = Vec::with_capacity(candidates.len());
    for c in candidates {
        let mut ids = text.encode(c, style == PromptStyle::Seq2Seq)?;
        if style == PromptStyle::Chat {
            let eot = text
                .end_of_turn
                .ok_or_else(|| Error::format(&text.source, "the chat template has no end-of-turn token"))?;
            ids.push(eot);
        }
        if ids.is_empty() {
            return Err(Error::msg(format!("candidate {c:?} encodes to no tokens")));
        }
        cands.push(ids);
    }
    if let Some(limit) = text.max_tokens {
        let longest = cands.iter().map(Vec::len).max().unwrap_or(0);
        let total = match style {
            // The encoder reads the prompt, the decoder the candidate: each has the whole context.
            PromptStyle::Seq2Seq => prompt_ids.len().max(longest),
            PromptStyle::Chat | PromptStyle::Raw => prompt_ids.len() + longest,
        };
        if total > limit {
            return Err(too_long(format!("the prompt with its longest candidate is {total} tokens"), limit));
        }
    }
    Ok(Encoded { prompt: prompt_ids, candidates: cands })
}
