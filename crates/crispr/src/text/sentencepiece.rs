//! SentencePiece vocabularies as llama.cpp stores them in GGUF (`tokenizer.ggml.model` =
//! "llama": tokens, scores and types, no merges), rebuilt the way transformers rebuilds them, so
//! token ids match transformers on the same file: a byte-fallback BPE over `▁`-spelled text whose
//! merges are recovered from the vocabulary. How blanks become `▁` and how merges are ranked
//! depend on the architecture, as in transformers.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

/// The SentencePiece rules of one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavour {
    /// Gemma 2/3: blanks become `▁` with no prefix; runs of spaces stored as spaces are respelled;
    /// merges are ranked by position in the file (Gemma's scores do not follow its merge order).
    Gemma,
    /// Phi-3: a `▁` is prepended to the text and blanks become `▁` (a normalizer, so text that
    /// starts with a space gets two).
    Phi3,
    /// Any other architecture (Llama 2, Mistral): `Metaspace`, prefix on the first piece only.
    Llama,
}

impl Flavour {
    pub(super) fn of(arch: &str) -> Flavour {
        match arch {
            "gemma" | "gemma2" | "gemma3" => Flavour::Gemma,
            "phi3" => Flavour::Phi3,
            _ => Flavour::Llama,
        }
    }
}

/// A Gemma token of two or more blanks is stored with real spaces (`"  "`), while the model's
/// input spells blanks `▁`: such tokens are respelled (one `▁` per character) before the merges
/// are recovered, as transformers does. Other vocabularies are kept as they are.
pub(super) fn respell(flavour: Flavour, tokens: &[String]) -> Vec<String> {
    if flavour != Flavour::Gemma {
        return tokens.to_vec();
    }
    // Python's `str.isspace` (transformers' test): Unicode whitespace plus U+001C–U+001F.
    let blank = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    tokens
        .iter()
        .map(|t| if t.contains(' ') && t.chars().all(blank) { "\u{2581}".repeat(t.chars().count()) } else { t.clone() })
        .collect()
}

/// The rank of each token's merges: its position (Gemma, best first) or the file's score.
pub(super) fn ranks(flavour: Flavour, scores: Option<&[f64]>, n: usize) -> Option<Vec<f64>> {
    match flavour {
        Flavour::Gemma => Some((0..n).map(|i| -(i as f64)).collect()),
        Flavour::Phi3 | Flavour::Llama => scores.map(<[f64]>::to_vec),
    }
}

/// The merges a vocabulary implies: every split of a token into two tokens, ranked by the
/// token's rank (highest first), ties broken by the lengths of the halves, longest first; within
/// one token the splits are ordered by the halves' ids. This is transformers' `generate_merges`.
/// `rank` holds one finite number per token.
pub(super) fn recover_merges(tokens: &[String], rank: &[f64]) -> Vec<(String, String)> {
    // A token listed twice keeps its last id and last rank, and its first place (Python dicts).
    let mut id: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
    }
    // (rank, |left|, |right|), lengths in characters; -0.0 ranks as 0.0, as Python compares.
    type Key = (f64, usize, usize);
    let mut merges: Vec<((&str, &str), Key)> = Vec::new();
    for token in order {
        let score = rank[id[token]] + 0.0;
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
    merges.sort_by(|(_, a), (_, b)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|((l, r), _)| (l.to_string(), r.to_string())).collect()
}

/// Normalizer, pre-tokenizer, decoder and model of a vocabulary (`respelled` by [`respell`],
/// merges recovered with `rank`): text the merges cannot spell falls back to byte tokens
/// (`<0x41>`).
pub(super) fn pipeline(flavour: Flavour, respelled: &[String], rank: &[f64], unk: Option<&str>) -> [Json; 4] {
    let vocab: serde_json::Map<String, Json> =
        respelled.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let merges: Vec<Json> = recover_merges(respelled, rank).into_iter().map(|(l, r)| json!([l, r])).collect();
    let to_space = json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "});
    let blanks = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let (normalizer, pre_tokenizer, mut decoders, unk) = match flavour {
        Flavour::Gemma => (
            blanks,
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            vec![to_space, json!({"type": "ByteFallback"}), json!({"type": "Fuse"})],
            unk,
        ),
        Flavour::Phi3 => (
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, blanks]}),
            Json::Null,
            vec![to_space, json!({"type": "ByteFallback"}), json!({"type": "Fuse"})],
            None,
        ),
        Flavour::Llama => (
            Json::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
            vec![to_space, json!({"type": "ByteFallback"}), json!({"type": "Fuse"})],
            None,
        ),
    };
    // Llama's and Phi-3's decoders drop the prefix space again.
    if flavour != Flavour::Gemma {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                       "vocab": vocab, "merges": merges});
    [normalizer, pre_tokenizer, json!({"type": "Sequence", "decoders": decoders}), model]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_rank_then_lengths() {
        let tokens = owned(&["a", "b", "c", "ab", "abc", "bc", "  "]);
        let respelled = respell(Flavour::Gemma, &tokens);
        assert_eq!(respelled[6], "\u{2581}\u{2581}");
        assert_eq!(respell(Flavour::Llama, &tokens)[6], "  ");
        let names = |rank: &[f64]| -> Vec<String> {
            recover_merges(&respelled, rank).iter().map(|(l, r)| format!("{l} {r}")).collect()
        };
        // By position: "ab" (3) first; "abc" (4) splits as a+bc and ab+c, which share its rank and
        // are ordered by the left half's length, longest first; "▁▁" has no halves in the vocabulary.
        let by_position = ranks(Flavour::Gemma, None, tokens.len()).unwrap();
        assert_eq!(names(&by_position), ["a b", "ab c", "a bc", "b c"]);
        // By score: "bc" scores highest.
        let scores = [0.0, 0.0, 0.0, -2.0, -3.0, -1.0, 0.0];
        assert_eq!(names(&ranks(Flavour::Llama, Some(&scores), 7).unwrap()), ["b c", "a b", "ab c", "a bc"]);
    }
}
