#!/usr/bin/env python3
"""Reference outputs of transformers' T5 on deterministic weights, for crates/crispr/tests/t5_parity.rs.

Run with the oracle toolchain (see scripts/oracle-env.sh):

    scripts/oracle-env.sh python scripts/make_t5_fixtures.py

Random flan-t5-small and flan-t5-base checkpoints (300 MB and 1 GB in f32) are far too large to commit.
Instead every parameter is filled from a counter-based generator that the Rust side reproduces bit for bit
(`crispr::model::t5::synthetic`), so only the expected outputs are committed; the Rust test writes the same
checkpoint to a temporary directory and loads it through the real loader.

Generator: for the tensor named `name` (transformers naming) with `n` elements, element `i` is
    z_i  = splitmix64_mix(s0 + (i + 1) * 0x9E3779B97F4A7C15 mod 2^64),  s0 = fnv1a64(name) XOR seed
    u_i  = (z_i >> 11) * 2^-53                      (uniform in [0, 1), exactly as SplitMix64.next_f64)
    w_i  = f32(center + half * (2 u_i - 1))         (computed in f64, rounded once to f32)
which is the (i+1)-th output of SplitMix64 seeded with s0 (crates/crispr/src/rng.rs). `center`/`half` follow
`init_rule` below: a uniform law with transformers' own initialisation std for the linear layers (so the
unscaled T5 attention logits are O(1) and softmaxes are far from one-hot and from uniform), norm weights in
[0.9, 1.1], embeddings with std 1, relative-position biases with std 0.5, an untied LM head with std 2/sqrt(d).

Everything is computed in float64 (weights are f32 values, widened exactly), so the expected numbers carry
no float32 noise of their own; the Rust engine runs in f32 and is compared with a tolerance.

Tokenisation: the prompt and candidate ids are those of transformers' `T5TokenizerFast(tokenizer_file=...)`
on the shared tokenizer.json, identical to the `tokenizers` library and to the Rust crate. A Flan-T5
checkpoint directory (tokenizer_config.json naming `T5Tokenizer`) makes transformers 5.x rebuild the pipeline
and drop every lone `▁` (id 3) that directly precedes a special token (`</s>`, `<extra_id_N>`) -- e.g. the one a
prompt ending in a space ("... Your answer: ") produces; those ids are recorded too (`*_transformers5`), and the
fixture pins the crate's behaviour (the one transformers 4.x had). tests/t5_parity.rs checks exactly this relation.

Writes under crates/crispr/tests/fixtures/t5/:
  expected.json        configs, generator description, ids, log-probabilities, greedy ids, bucket tables,
                       tokenizer cases, per-tensor generator checks
  small.safetensors    flan-t5-small shape: per site (every hooked module, Rust site order) the attribution
                       vectors `max.<site>` = max_t act*grad and `sum.<site>` = sum_t act*grad (per unit),
                       and `act.<site>` / `grad.<site>` at two fixed positions ([2 x width])
  base.safetensors     flan-t5-base shape: `max`/`sum` for the first and last block of each stack, and
                       `stats.<site>` = [sum_u sum, sum_u |sum|, sum_u max, max_u |max|] for every site
  tiny_relu.safetensors  an original-T5 (ReLU, tied and rescaled LM head) tiny model, as small.safetensors
"""

import json
import math
import sys
import tempfile
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration, T5TokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates" / "crispr" / "tests" / "fixtures" / "t5"
DATA = ROOT.parent / "shared" / "data"
TOKENIZER = DATA / "tokenizers" / "t5" / "tokenizer.json"

SEED = 2024
PAPER_LAYOUT = "{instruction} Context: {context}  Question: {question}  Answer options: {ans0}, {ans1}, {ans2}  Your answer: "

COMMON = {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-06,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "dropout_rate": 0.1,
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "use_cache": True,
}
# The Hub's config.json of google/flan-t5-small and google/flan-t5-base (minus task_specific_params), and an
# original-T5-style tiny model (ReLU FFN, LM head tied to the embedding and rescaled by d_model^-0.5).
CONFIGS = {
    "small": {**COMMON, "d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 6, "num_layers": 8,
              "num_decoder_layers": 8, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new",
              "is_gated_act": True, "tie_word_embeddings": False, "n_positions": 512},
    "base": {**COMMON, "d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12, "num_layers": 12,
             "num_decoder_layers": 12, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new",
             "is_gated_act": True, "tie_word_embeddings": False, "n_positions": 512},
    "tiny_relu": {**COMMON, "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
                  "num_decoder_layers": 2, "feed_forward_proj": "relu", "tie_word_embeddings": True},
}
TOKENIZER_CONFIG = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                    "unk_token": "<unk>", "extra_ids": 100, "model_max_length": 512}

MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def init_rule(cfg, name):
    """(center, half-width) of the uniform law of a tensor; mirrored by `synthetic::init_rule` in Rust."""
    d, dkv, heads, dff = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"]
    sqrt3 = math.sqrt(3.0)
    if name.endswith("layer_norm.weight"):
        return 1.0, 0.1
    if name == "shared.weight":
        return 0.0, sqrt3
    if name == "lm_head.weight":
        return 0.0, sqrt3 * (2.0 / math.sqrt(d))
    if name.endswith("relative_attention_bias.weight"):
        return 0.0, sqrt3 * 0.5
    module = name.split(".")[-2]
    fan = {"q": d * dkv, "k": d, "v": d, "o": heads * dkv, "wi": d, "wi_0": d, "wi_1": d, "wo": dff}[module]
    return 0.0, sqrt3 * (1.0 / math.sqrt(fan))


def generate(name, n, center, half, seed=SEED):
    s0 = np.uint64(fnv1a64(name.encode()) ^ seed)
    with np.errstate(over="ignore"):
        z = s0 + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    return (center + half * (2.0 * u - 1.0)).astype(np.float32)


def build_model(cfg_dict):
    cfg = T5Config(**{k: v for k, v in cfg_dict.items() if k not in ("architectures", "model_type")})
    cfg._attn_implementation = "eager"
    model = T5ForConditionalGeneration(cfg)
    tied = cfg_dict["tie_word_embeddings"]
    if not tied:
        # transformers 5.x ties lm_head to the embedding at construction; v1.1 has its own head.
        model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        assert model.lm_head.weight is not model.shared.weight
    assert cfg.scale_decoder_outputs == tied
    checks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            center, half = init_rule(cfg_dict, name)
            w = generate(name, p.numel(), center, half).reshape(tuple(p.shape))
            p.copy_(torch.from_numpy(w))
            checks[name] = {"shape": list(p.shape), "first": [float(x) for x in w.reshape(-1)[:3]],
                            "sum": float(w.astype(np.float64).sum())}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, checks


def site_names(cfg):
    """Every hooked site in the Rust engine's order: (name, stack, kind)."""
    ffn = ["wi_0", "wi_1", "act", "wo"] if cfg["feed_forward_proj"].startswith("gated") else ["wi", "act", "wo"]
    out = []
    for i in range(cfg["num_layers"]):
        out += [(f"encoder.block.{i}.layer.0.SelfAttention.{k}", "encoder", k) for k in "qkvo"]
        out += [(f"encoder.block.{i}.layer.1.DenseReluDense.{k}", "encoder", k) for k in ffn]
    for i in range(cfg["num_decoder_layers"]):
        out += [(f"decoder.block.{i}.layer.0.SelfAttention.{k}", "decoder", k) for k in "qkvo"]
        out += [(f"decoder.block.{i}.layer.1.EncDecAttention.{k}", "decoder", "cross_" + k) for k in "qkvo"]
        out += [(f"decoder.block.{i}.layer.2.DenseReluDense.{k}", "decoder", k) for k in ffn]
    return out


def encoder_positions(stack, kind):
    return stack == "encoder" or kind in ("cross_k", "cross_v")


def logprobs(model, prompt_ids, cands):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        enc = model.encoder(input_ids=ids).last_hidden_state
        out = []
        for c in cands:
            dec_in = torch.tensor([[model.config.decoder_start_token_id] + c[:-1]])
            logits = model(encoder_outputs=(enc,), decoder_input_ids=dec_in, use_cache=False).logits[0]
            lp = torch.log_softmax(logits.double(), -1)
            out.append(float(sum(lp[i, t] for i, t in enumerate(c))))
    return out


def greedy(model, prompt_ids, steps):
    """Greedy decoding without a cache (the plain definition), with the smallest top-1/top-2 logit gap."""
    ids = torch.tensor([prompt_ids])
    out, gap = [], float("inf")
    with torch.no_grad():
        enc = model.encoder(input_ids=ids).last_hidden_state
        for _ in range(steps):
            dec_in = torch.tensor([[model.config.decoder_start_token_id] + out])
            logits = model(encoder_outputs=(enc,), decoder_input_ids=dec_in, use_cache=False).logits[0, -1]
            top = torch.topk(logits, 2).values
            gap = min(gap, float(top[0] - top[1]))
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            if nxt == model.config.eos_token_id:
                break
    return out, gap


def attribution(model, cfg, prompt_ids, cand):
    """Activation and gradient of log P(cand | prompt) at every site ([positions x width] each)."""
    names = site_names(cfg)
    acts = {}
    handles = []

    def keep_out(name):
        def hook(_m, _i, out):
            out.retain_grad()
            acts[name] = out
        return hook

    def keep_in(name):
        def hook(_m, args):
            args[0].retain_grad()
            acts[name] = args[0]
        return hook

    for name, _stack, kind in names:
        if kind == "act":
            wo = name.rsplit(".", 1)[0] + ".wo"
            handles.append(model.get_submodule(wo).register_forward_pre_hook(keep_in(name)))
        else:
            handles.append(model.get_submodule(name).register_forward_hook(keep_out(name)))
    emb = model.get_input_embeddings()
    enc_emb = emb(torch.tensor([prompt_ids])).detach().requires_grad_(True)
    dec_in = [model.config.decoder_start_token_id] + cand[:-1]
    dec_emb = emb(torch.tensor([dec_in])).detach().requires_grad_(True)
    logits = model(inputs_embeds=enc_emb, decoder_inputs_embeds=dec_emb, use_cache=False).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    total = sum(lp[i, t] for i, t in enumerate(cand))
    total.backward()
    for h in handles:
        h.remove()
    result = {}
    for name, stack, kind in names:
        a = acts[name][0].detach().double()
        g = acts[name].grad[0].double()
        result[name] = (stack, kind, a, g)
    return float(total), result


def site_tensors(result, positions, full_sites, with_points):
    out = {}
    for name, (stack, kind, a, g) in result.items():
        ag = a * g
        mx, sm = ag.max(0).values, ag.sum(0)
        if full_sites is None or name in full_sites:
            out[f"max.{name}"] = mx.float().contiguous()
            out[f"sum.{name}"] = sm.float().contiguous()
        out[f"stats.{name}"] = torch.tensor([float(sm.sum()), float(sm.abs().sum()), float(mx.sum()),
                                             float(mx.abs().max())]).float()
        if with_points:
            pos = positions["encoder" if encoder_positions(stack, kind) else "decoder"]
            out[f"act.{name}"] = a[pos].float().contiguous()
            out[f"grad.{name}"] = g[pos].float().contiguous()
    return out


def bbq_rows(category="Age"):
    with open(DATA / "bbq" / "data" / f"{category}.jsonl") as f:
        return [json.loads(line) for line in f]


def paper_instructions():
    t = json.load(open(DATA / "instructions" / "templates.json"))
    return t["tasks"]["bbq"]["crispr_paper"]["instructions"]


def bbq_prompt(row, instruction):
    return PAPER_LAYOUT.format(instruction=instruction, **{k: row[k] for k in ("context", "question", "ans0", "ans1", "ans2")})


def main():
    torch.set_num_threads(2)
    FIX.mkdir(parents=True, exist_ok=True)
    tok = T5TokenizerFast(tokenizer_file=str(TOKENIZER))
    raw = Tokenizer.from_file(str(TOKENIZER))
    tfdir = Path(tempfile.mkdtemp())
    shutil.copy(TOKENIZER, tfdir / "tokenizer.json")
    (tfdir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    tok5 = AutoTokenizer.from_pretrained(tfdir)  # what a Flan-T5 checkpoint directory gives in transformers 5.x

    def ids(text):
        a = tok(text)["input_ids"]
        assert a == raw.encode(text).ids, text
        return a

    rows = bbq_rows()
    instr = paper_instructions()
    # The main case: the paper's layout, first instruction, the row whose prompt is closest to 150 tokens
    # among the first 200 of Age.jsonl (file order).
    row = min(rows[:200], key=lambda r: (abs(len(ids(bbq_prompt(r, instr[0]))) - 150), r["example_id"]))
    prompt = bbq_prompt(row, instr[0])
    cands = [row["ans0"], row["ans1"], row["ans2"]]
    prompt_ids = ids(prompt)
    cand_ids = [ids(c) for c in cands]
    gold = int(row["label"])
    print(f"prompt: {len(prompt_ids)} tokens (example {row['example_id']}), candidates {cand_ids}, gold {gold}")

    tokenizer_cases = []
    texts = [bbq_prompt(r, instr[i % len(instr)]) for i, r in enumerate(rows[200:208])]
    texts += [rows[210][k] for k in ("ans0", "ans1", "ans2", "context", "question")]
    texts += ["translate English to German: The house is wonderful.", "Hello world", "  leading and trailing  ",
              "naïve café — “quotes” 1,234.5 <extra_id_0> </s> ok", "line one\nline two\ttab"]
    for t in texts:
        tokenizer_cases.append({"text": t, "ids": ids(t), "ids_transformers5": tok5(t)["input_ids"]})
    differs = sum(c["ids"] != c["ids_transformers5"] for c in tokenizer_cases)
    print(f"tokenizer: {len(tokenizer_cases)} cases, {differs} where transformers 5.x (T5Tokenizer dir) differs")

    rel = torch.arange(-300, 301)
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    buckets = {"range": [-300, 300],
               "bidirectional": bucket(rel, True, 32, 128).tolist(),
               "causal": bucket(rel, False, 32, 128).tolist()}

    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "generator": {"seed": SEED, "algorithm": "splitmix64(fnv1a64(name) ^ seed), see scripts/make_t5_fixtures.py"},
        "tokenizer_config": TOKENIZER_CONFIG,
        "tokenizer_behaviour": "ids = the Rust tokenizers crate / tokenizers / transformers 4.x (keeps the trailing "
                               "'▁' of a prompt ending in a space); *_transformers5 = AutoTokenizer on a Flan-T5 "
                               "style directory in transformers 5.x (drops it)",
        "example_id": row["example_id"], "prompt": prompt, "candidates": cands, "gold": gold,
        "prompt_ids": prompt_ids, "prompt_ids_transformers5": tok5(prompt)["input_ids"],
        "candidate_ids": cand_ids, "candidate_ids_transformers5": [tok5(c)["input_ids"] for c in cands],
        "tokenizer_cases": tokenizer_cases, "buckets": buckets, "models": {},
    }
    positions = {"encoder": [3, len(prompt_ids) - 1], "decoder": [0, len(cand_ids[gold]) - 1]}
    for key in ["tiny_relu", "small", "base"]:
        cfg = CONFIGS[key]
        model, checks = build_model(cfg)
        names = site_names(cfg)
        # f32 run, for information: how far plain float32 transformers is from the f64 reference.
        lp32 = logprobs(model, prompt_ids, cand_ids)
        gen32 = model.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False, num_beams=1,
                               eos_token_id=cfg["eos_token_id"], decoder_start_token_id=0)[0, 1:].tolist()
        model = model.double()
        lps = logprobs(model, prompt_ids, cand_ids)
        gen, gap = greedy(model, prompt_ids, 16)
        if gen != gen32[:len(gen)]:
            print(f"{key}: WARNING f32 generate {gen32} differs from f64 greedy {gen}")
        total, result = attribution(model, cfg, prompt_ids, cand_ids[gold])
        assert abs(total - lps[gold]) < 1e-9, (total, lps[gold])
        if key == "base":
            last_e, last_d = cfg["num_layers"] - 1, cfg["num_decoder_layers"] - 1
            full = {n for n, _, _ in names if any(n.startswith(p) for p in (
                "encoder.block.0.", f"encoder.block.{last_e}.", "decoder.block.0.", f"decoder.block.{last_d}."))}
            tensors = site_tensors(result, positions, full, with_points=False)
        else:
            tensors = site_tensors(result, positions, None, with_points=True)
        save_file(tensors, FIX / f"{key}.safetensors")
        sample = ["shared.weight", "lm_head.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  "decoder.block.1.layer.1.EncDecAttention.k.weight", "decoder.final_layer_norm.weight"]
        meta["models"][key] = {
            "config": cfg, "logprobs": lps, "logprobs_f32_transformers": lp32, "greedy": gen,
            "greedy_min_top2_gap": gap, "positions": positions, "sites": [n for n, _, _ in names],
            "parameters": sum(p.numel() for p in model.parameters()),
            "generator_checks": {n: checks[n] for n in sample if n in checks},
        }
        print(f"{key}: logprobs {[round(x, 6) for x in lps]} (f32 transformers differs by "
              f"{max(abs(a - b) for a, b in zip(lps, lp32)):.2e}), greedy {gen} (min gap {gap:.3f}), "
              f"{len(tensors)} tensors")
        del model
    (FIX / "expected.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in FIX.iterdir())
    print(f"wrote {FIX} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
