#!/usr/bin/env python3
"""SentencePiece vocabularies as llama.cpp stores them in GGUF (`tokenizer.ggml.model` = "llama":
tokens, scores, token types, no merges), one per rule set transformers applies (gemma3, phi3, llama),
and the token ids transformers gives texts with the tokenizer it rebuilds from each file. Called by
make_gguf_fixtures.py; writes FIX/spm_<arch>.gguf and FIX/spm_<arch>.json.

The pieces are learned here with the tokenizers library (BPE over "▁"-joined words) and laid out like
the real files: Gemma's <pad> <eos> <bos> <unk> <mask>, turn markers, runs of spaces stored as real
spaces, the 256 byte tokens, then the pieces in merge order; Llama's and Phi-3's <unk> <s> </s>, the
byte tokens, the pieces with scores that do not follow their order, and Phi-3's chat markers. Each has
fewer than 400 tokens so the tiny checkpoints (vocabulary 400) can carry it."""

import json
import random
from pathlib import Path

import gguf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Who was the victim? The grandfather or the grandson?",
    "I saw a woman and a man at the bus stop yesterday; the man was crying.",
    "Answer with one word: unknown, cannot be determined, or not enough information.",
    "Les élèves étudient à l'école. ¿Dónde está la biblioteca?",
    "def main():\n    return 42  # forty-two\n\tdone",
    "Numbers 1234567890 and symbols !@#$%^&*() [brackets] {braces}",
]
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
TURNS = ["<start_of_turn>", "<end_of_turn>"]
SPACES = ["  ", "   ", "    "]
# Gemma's chat template (the shape of gemma-2/3 instruction models').
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
USER = "Who was crying at the bus stop?  Answer: unknown."
TEXTS = [
    "Hello world",
    " leading space",
    "two  spaces and   three",
    "tabs\tand\nnew lines\n\n",
    "The grandson was crying at the bus stop.",
    "Ünïcödé: naïve café, 北京, emoji 🤖!",
    "<start_of_turn>user\nWho was crying?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>already has bos",
    "unknown",
    "",
    "    indented code",
    "a <unk> and <mask> and <pad>, not <b>",
    "<s> and </s> inside",
    " ",
]


def learn_pieces(n_merges):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=10_000, show_progress=False, limit_alphabet=200)
    tok.train_from_iterator(CORPUS * 3, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    pieces, seen = [], set()
    for merge in merges[:n_merges]:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        for p in (a, b, a + b):
            if p not in seen and len(p) > 1:
                seen.add(p)
                pieces.append(p)
    alphabet = sorted({c for text in CORPUS for c in text.replace(" ", "\u2581")})
    return alphabet + pieces


# llama.cpp token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
BYTES = [f"<0x{b:02X}>" for b in range(256)]
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def gemma_vocab(pieces):
    fixed = SPECIAL + TURNS + SPACES + BYTES
    tokens = fixed + [p for p in pieces if p not in fixed][: 395 - len(fixed)]
    types = [CONTROL] * 3 + [UNKNOWN, CONTROL] + [CONTROL] * 2 + [USER_DEFINED] * len(SPACES) + [BYTE] * 256
    types += [NORMAL] * (len(tokens) - len(fixed))
    # Gemma's scores do not follow its merge order (transformers ranks merges by position): these
    # run against it, so a reader that ranked by score would split differently.
    scores = [0.0] * len(fixed) + [float(i) for i in range(len(tokens) - len(fixed))]
    ids = {"bos": 2, "eos": 1, "unk": 3, "pad": 0}
    return tokens, scores, types, ids, CHAT_TEMPLATE, "<end_of_turn>"


def llama_vocab(pieces, markers):
    fixed = ["<unk>", "<s>", "</s>"] + BYTES
    tail = ["<|user|>", "<|end|>", "<|assistant|>"] if markers else []
    body = [p for p in pieces if p not in fixed + tail][: 395 - len(fixed) - len(tail)]
    tokens = fixed + body + tail
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(body) + [CONTROL] * len(tail)
    # Scores that do not follow the order: merges must be ranked by score here.
    rng = random.Random(7)
    scores = [0.0] * len(fixed) + [rng.uniform(-500.0, 0.0) for _ in body] + [0.0] * len(tail)
    ids = {"bos": 1, "eos": 2, "unk": 0}
    return tokens, scores, types, ids, (PHI3_TEMPLATE if markers else None), ("<|end|>" if markers else None)


def write(out_dir, arch, vocab, space_prefix=None):
    tokens, scores, types, ids, template, end_of_turn = vocab
    path = out_dir / f"spm_{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(ids["bos"])
    w.add_eos_token_id(ids["eos"])
    w.add_unk_token_id(ids["unk"])
    if "pad" in ids:
        w.add_pad_token_id(ids["pad"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if space_prefix is not None:
        w.add_add_space_prefix(space_prefix)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out_dir, gguf_file=path.name)
    expected = {
        "tokens": len(tokens),
        "texts": [
            {"text": t, "ids": tok(t)["input_ids"], "ids_no_special": tok(t, add_special_tokens=False)["input_ids"]}
            for t in TEXTS
        ],
    }
    if template:
        chat = tok.apply_chat_template([{"role": "user", "content": USER}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
        expected["chat"] = {"user": USER, "ids": chat, "end_of_turn": tokens.index(end_of_turn)}
    (out_dir / f"spm_{arch}.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"gguf/spm_{arch}.gguf written ({len(tokens)} tokens)")


def main(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = learn_pieces(200)
    write(out_dir, "gemma3", gemma_vocab(pieces), space_prefix=False)
    write(out_dir, "phi3", llama_vocab(pieces, markers=True))
    # Llama 2 style; the file says no prefix space (transformers' rule does not read it).
    write(out_dir, "llama", llama_vocab(pieces, markers=False), space_prefix=False)


if __name__ == "__main__":
    import sys
    main(Path(sys.argv[1]))
