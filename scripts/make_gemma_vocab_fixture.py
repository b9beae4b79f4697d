#!/usr/bin/env python3
"""A SentencePiece-style Gemma vocabulary as llama.cpp stores it in GGUF (`tokenizer.ggml.model` =
"llama": tokens, scores, token types, no merges) and the token ids transformers gives texts with the
tokenizer it rebuilds from that file. Called by make_gguf_fixtures.py; writes FIX/gemma_vocab.gguf and
FIX/gemma_vocab.json.

The vocabulary is learned here with the tokenizers library (BPE over "▁"-joined words, in merge order,
so position and score agree as in Gemma's files) and laid out like Gemma's: <pad> <eos> <bos> <unk>
<mask>, turn markers, runs of spaces stored as real spaces, the 256 byte tokens, then the pieces. It has
fewer than 400 tokens so the tiny Gemma checkpoints can carry it."""

import json
import tempfile
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


def main(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed = SPECIAL + TURNS + SPACES + [f"<0x{b:02X}>" for b in range(256)]
    pieces = [p for p in learn_pieces(200) if p not in fixed]
    tokens = fixed + pieces[: 395 - len(fixed)]
    # llama.cpp: CONTROL 3, USER_DEFINED 4, BYTE 6, NORMAL 1, UNKNOWN 2.
    types = [3, 3, 3, 2, 3] + [3, 3] + [4] * len(SPACES) + [6] * 256 + [1] * (len(tokens) - len(fixed))
    # Gemma's scores do not follow its merge order (transformers ranks merges by position): these
    # run against it, so a reader that ranked by score would split differently.
    scores = [0.0] * len(fixed) + [float(i) for i in range(len(tokens) - len(fixed))]
    path = out_dir / "gemma_vocab.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out_dir, gguf_file=path.name)
    expected = {
        "tokens": len(tokens),
        "end_of_turn": tokens.index("<end_of_turn>"),
        "chat": {"user": USER, "ids": tok.apply_chat_template([{"role": "user", "content": USER}],
                                                              add_generation_prompt=True, tokenize=True,
                                                              return_dict=False)},
        "texts": [
            {"text": t, "ids": tok(t)["input_ids"], "ids_no_special": tok(t, add_special_tokens=False)["input_ids"]}
            for t in TEXTS
        ],
    }
    (out_dir / "gemma_vocab.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"gguf/gemma_vocab.gguf written ({len(tokens)} tokens)")
    return tok


if __name__ == "__main__":
    import sys
    main(Path(sys.argv[1]))
