#!/usr/bin/env python3
"""Generate the PyTorch/transformers reference fixtures the Rust tests compare against.

Run with the oracle toolchain (see scripts/oracle-env.sh):

    scripts/oracle-env.sh python scripts/make_fixtures.py --smollm2-gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf

Writes under crates/crispr/tests/fixtures/:
  tiny/<family>/            random-initialised Llama, Qwen2 and Mistral checkpoints (safetensors, a small
                            byte-level BPE tokenizer trained here, SmolLM2's chat template)
  tiny/<family>/expected.safetensors   logits over a chat-formatted sequence, and the activation and
                            gradient of the candidate's log-probability at every linear output
  tiny/<family>/expected.json          token ids, prompt length, log-probability, versions
  smollm2/parity.json       token ids, candidate log-probabilities and greedy continuations of the
                            real SmolLM2-135M-Instruct GGUF as transformers computes them (dequantised to f32)
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates" / "crispr" / "tests" / "fixtures"
DATA = ROOT.parent / "shared" / "data"

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PAPER_LAYOUT = "{instruction} Context: {context}  Question: {question}  Answer options: {ans0}, {ans1}, {ans2}  Your answer: "


def bbq_rows(n, category="Age"):
    rows = []
    with open(DATA / "bbq" / "data" / f"{category}.jsonl") as f:
        for line in f:
            rows.append(json.loads(line))
    random.Random(0).shuffle(rows)
    return rows[:n]


def paper_instructions():
    t = json.load(open(DATA / "instructions" / "templates.json"))
    return t["tasks"]["bbq"]["crispr_paper"]["instructions"]


def bbq_prompt(row, instruction):
    return PAPER_LAYOUT.format(instruction=instruction, **{k: row[k] for k in ("context", "question", "ans0", "ans1", "ans2")})


def train_tiny_tokenizer(path: Path):
    """A 400-token byte-level BPE (SmolLM2's pre-tokenizer) trained on BBQ text."""
    texts = []
    for row in bbq_rows(400):
        texts += [row["context"], row["question"], row["ans0"], row["ans1"], row["ans2"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


# max_position_embeddings is the context crispr enforces on prompts; 2048 leaves room for the long
# BoolQ passages the tests evaluate (it changes no number: the rope tables do not depend on it).
def tiny_config(family, vocab):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                  max_position_embeddings=2048, attn_implementation="eager")
    if family == "llama":
        # Tied embeddings and Llama 3 rope scaling whose thresholds fall inside the frequency range.
        return transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if family == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if family == "mistral":
        # A window shorter than the test sequence so the sliding-window mask matters.
        return transformers.MistralConfig(**common, tie_word_embeddings=False, sliding_window=16,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if family == "qwen3":
        # Per-head q/k RMSNorm; head_dim set apart from hidden/heads as Qwen3 models do; tied.
        return transformers.Qwen3Config(**common, head_dim=24, tie_word_embeddings=True, attention_bias=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if family in ("gemma2", "gemma3"):
        # Soft-caps low enough that tanh bends the logits, a sliding window shorter than the
        # sequence on the first layer, and a query scale that is not 1/sqrt(head_dim).
        gemma = dict(common, head_dim=16, hidden_activation="gelu_pytorch_tanh", sliding_window=16,
                     layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                     pad_token_id=0, bos_token_id=None, eos_token_id=None)
        if family == "gemma2":
            return transformers.Gemma2Config(**gemma, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                             final_logit_softcapping=10.0,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        return transformers.Gemma3TextConfig(**gemma, query_pre_attn_scalar=32, final_logit_softcapping=10.0,
                                             rope_parameters={
                                                 "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    if family == "phi3":
        # Fused qkv_proj and gate_up_proj; a window shorter than the sequence.
        return transformers.Phi3Config(**common, tie_word_embeddings=False, sliding_window=24, pad_token_id=None,
                                       bos_token_id=None, eos_token_id=None,
                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    raise ValueError(family)


# The hooked linear layers of each family, in forward order (transformers' module names).
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
PHI3_LINEARS = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]


def linear_names(model):
    return PHI3_LINEARS if model.config.model_type == "phi3" else LLAMA_LINEARS


def linear_modules(model):
    names = linear_names(model)
    out = []
    for i, _ in enumerate(model.model.layers):
        for n in names:
            full = f"model.layers.{i}.{n}"
            out.append((full, model.get_submodule(full)))
    return out


def logprob_and_grads(model, prompt_ids, cand_ids):
    """log P(candidate | prompt) and the gradient at every linear output, weights frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.tensor([prompt_ids + cand_ids])
    acts = {}

    def keep(name):
        def hook(_mod, _inp, out):
            out.retain_grad()
            acts[name] = out
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in linear_modules(model)]

    # The `ffn` universe: the gated activation, i.e. the input of down_proj.
    def keep_input(name):
        def hook(_mod, args):
            args[0].retain_grad()
            acts[name] = args[0]
        return hook

    for i, layer in enumerate(model.model.layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(keep_input(f"model.layers.{i}.mlp.act_fn")))
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    start = len(prompt_ids) - 1
    total = sum(lp[start + i, t] for i, t in enumerate(cand_ids))
    total.backward()
    for h in handles:
        h.remove()
    tensors = {"logits": logits.detach().contiguous()}
    for name, a in acts.items():
        tensors[f"act.{name}"] = a[0].detach().contiguous()
        tensors[f"grad.{name}"] = a.grad[0].contiguous()
    return float(total), tensors


TAIL = 48


def make_tiny(family, tok_dir):
    out = FIX / "tiny" / family
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed({"llama": 1, "qwen2": 2, "mistral": 3, "qwen3": 4, "gemma2": 5, "gemma3": 6, "phi3": 7}[family])
    cfg = tiny_config(family, len(tok))
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    # Random init gives tiny logits; widen the weights so softmaxes are far from uniform and the
    # comparison is meaningful.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Gemma's norms scale by (1 + w).
                p.copy_((0.0 if family.startswith("gemma") else 1.0) + 0.1 * torch.randn_like(p))
            elif "bias" in name:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    row = min(bbq_rows(50), key=lambda r: len(r["context"]))
    user = f"Context: {row['context']}\nQuestion: {row['question']}"
    if family not in ("llama", "qwen2", "mistral"):
        # A shorter prompt keeps the fixture under 1 MB; the windows (16, 24) stay shorter still.
        user = f"Question: {row['question']}"
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
    cand = row["ans1"]
    cand_ids = tok(cand, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    lp, tensors = logprob_and_grads(model, prompt_ids, cand_ids)
    meta = {"family": family, "user": user, "candidate": cand, "prompt_ids": prompt_ids,
            "candidate_ids": cand_ids, "logprob": lp, "torch": torch.__version__,
            "transformers": transformers.__version__}
    if family not in ("llama", "qwen2", "mistral"):
        # Keep the last TAIL positions only (every answer position and the prompt's end), which
        # holds the fixture under 1 MB; the f64 finite-difference test covers every position.
        tensors = {k: v[-TAIL:].contiguous() for k, v in tensors.items()}
        meta["tail"] = TAIL
    save_file(tensors, out / "expected.safetensors")
    (out / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"tiny/{family}: {len(prompt_ids) + len(cand_ids)} tokens, logprob {lp:.6f}")


def make_smollm2(gguf: Path):
    out = FIX / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    model.eval()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    instr = paper_instructions()
    cases = []
    for i, row in enumerate(bbq_rows(6)):
        cases.append({"prompt": bbq_prompt(row, instr[i % len(instr)]), "candidates": [row["ans0"], row["ans1"], row["ans2"]]})
    cases.append({"prompt": "Read the passage and answer the question with yes or no.\n\n" + (
        "The Amazon rainforest covers much of the Amazon basin of South America. This basin encompasses seven "
        "million square kilometres, of which five and a half million square kilometres are covered by the "
        "rainforest. The region includes territory belonging to nine nations and 3,344 formally acknowledged "
        "indigenous territories. The majority of the forest is contained within Brazil.") +
        "\n\nQuestion: is most of the amazon rainforest in brazil?", "candidates": ["yes", "no", "Yes", "No"]})
    cases.append({"prompt": "Premise: A man inspects the uniform of a figure in some East Asian country. The "
                  "inspection takes place outdoors on a sunny afternoon while a small crowd of tourists watches "
                  "from a distance and a guide explains the history of the uniform in detail.\nHypothesis: The man "
                  "is sleeping.\nDoes the premise entail the hypothesis? Answer with one word: entailment, neutral "
                  "or contradiction.", "candidates": ["entailment", "neutral", "contradiction"]})
    for c in cases:
        ids = tok.apply_chat_template([{"role": "user", "content": c["prompt"]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        c["prompt_ids"] = ids
        c["candidate_ids"] = [tok(x, add_special_tokens=False)["input_ids"] + [eot] for x in c["candidates"]]
        lps = []
        with torch.no_grad():
            for cid in c["candidate_ids"]:
                full = torch.tensor([ids + cid])
                lp = torch.log_softmax(model(full).logits[0].double(), dim=-1)
                lps.append(float(sum(lp[len(ids) - 1 + i, t] for i, t in enumerate(cid))))
        c["logprobs"] = lps
        print(f"smollm2: {len(ids)} prompt tokens, logprobs {[round(x, 4) for x in lps]}")
    generations = []
    for p in ["Write a short story about a robot who learns to paint.",
              "Explain why the sky is blue to a ten-year-old.",
              cases[0]["prompt"]]:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 eos_token_id=[eot], pad_token_id=eot)
        generations.append({"prompt": p, "prompt_ids": ids, "generated": gen[0, len(ids):].tolist()})
        print(f"smollm2 generate: {tok.decode(gen[0, len(ids):])!r}")
    meta = {"gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cases": cases, "generations": generations}
    (out / "parity.json").write_text(json.dumps(meta, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2-gguf", type=Path, help="the real SmolLM2-135M-Instruct Q4_1 GGUF")
    ap.add_argument("--only", choices=["tiny", "smollm2", "gguf"], default=None)
    ap.add_argument("--families", default=None,
                    help="comma-separated tiny families to (re)make with the committed tokenizer, e.g. qwen3,gemma2")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.families:
        for family in args.families.split(","):
            make_tiny(family, FIX / "tiny" / "tokenizer")
        return
    if args.only in (None, "tiny"):
        tok_dir = FIX / "tiny" / "tokenizer"
        train_tiny_tokenizer(tok_dir)
        for family in ["llama", "qwen2", "mistral", "qwen3", "gemma2", "gemma3", "phi3"]:
            make_tiny(family, tok_dir)
    if args.only in (None, "gguf"):
        import make_gguf_fixtures
        make_gguf_fixtures.main(FIX / "gguf")
    if args.only in (None, "smollm2"):
        if not args.smollm2_gguf:
            sys.exit("--smollm2-gguf is required for the SmolLM2 fixtures")
        make_smollm2(args.smollm2_gguf)


if __name__ == "__main__":
    main()
