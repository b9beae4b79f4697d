//! Gemma's SentencePiece vocabulary as llama.cpp stores it in GGUF (`tokenizer.ggml.model` =
//! "llama": tokens, scores and types, no merges), rebuilt the way transformers rebuilds it for
//! `gemma2`/`gemma3` files, so token ids match transformers on the same file: a byte-fallback
//! BPE over `▁`-spelled text whose merges are recovered from the vocabulary.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

/// A token of two or more blanks is stored with real spaces (`"  "`), while the model's input
/// spells blanks `▁`: such tokens are respelled (one `▁` per character) before the merges are
/// recovered, as transformers does.
pub(super) fn respell(tokens: &[String]) -> Vec<String> {
    // Python's `str.isspace` (transformers' test): Unicode whitespace plus the separators U+001C–U+001F.
    let blank = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    tokens
        .iter()
        .map(|t| if t.contains(' ') && t.chars().all(blank) { "\u{2581}".repeat(t.chars().count()) } else { t.clone() })
        .collect()
}

/// The merges a vocabulary implies: every split of a token into two tokens, ranked by the
/// token's position in the file (Gemma's scores do not follow its merge order; its order does),
/// ties broken by the lengths of the halves, longest first. Within one token the splits are
/// ordered by the halves' ids. This is transformers' `generate_merges` with positions as scores.
pub(super) fn merges_by_position(tokens: &[String]) -> Vec<(String, String)> {
    // A token listed twice keeps its last id and its first place (Python dict semantics).
    let mut id: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
    }
    // The rank of a merge: (score = -position, |left|, |right|), lengths in characters.
    type Rank = (i64, usize, usize);
    let mut merges: Vec<((&str, &str), Rank)> = Vec::new();
    for token in order {
        let score = -(id[token] as i64);
        let mut local: Vec<(&str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (id[l], id[r]));
        merges.extend(local.into_iter().map(|(l, r)| ((l, r), (score, l.chars().count(), r.chars().count()))));
    }
    // Best first; a stable sort keeps equal keys in the order found.
    merges.sort_by_key(|m| std::cmp::Reverse(m.1));
    merges.into_iter().map(|((l, r), _)| (l.to_string(), r.to_string())).collect()
}

/// The tokenizer pieces of a Gemma vocabulary (`respelled` by [`respell`]): blanks become `▁`
/// with no prefix added, and text the merges cannot spell falls back to byte tokens (`<0x41>`).
pub(super) fn gemma_pipeline(respelled: &[String], unk: Option<&str>) -> (Json, Json, Json, Json) {
    let vocab: serde_json::Map<String, Json> =
        respelled.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let merges: Vec<Json> = merges_by_position(respelled).into_iter().map(|(l, r)| json!([l, r])).collect();
    let normalizer = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let pre_tokenizer =
        json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false});
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]});
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                       "vocab": vocab, "merges": merges});
    (normalizer, pre_tokenizer, decoder, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_file_order_then_lengths() {
        let tokens = owned(&["a", "b", "c", "ab", "abc", "bc", "  "]);
        let respelled = respell(&tokens);
        assert_eq!(respelled[6], "\u{2581}\u{2581}");
        let merges = merges_by_position(&respelled);
        // "ab" (position 3) first; "abc" (4) splits as a+bc and ab+c, which share its rank and are
        // ordered by the left half's length, longest first; "▁▁" has no halves in the vocabulary.
        let names: Vec<String> = merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
        assert_eq!(names, ["a b", "ab c", "a bc", "b c"]);
    }
}
