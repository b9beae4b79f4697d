#!/usr/bin/env python3
"""GGUF dequantisation fixtures: one small GGUF holding, for every supported GGML type, a tensor of
random blocks (with finite f16 scales) next to its dequantisation by gguf-py (`<name>.expected`, F32).
Called by make_fixtures.py; writes FIX/quants.gguf, and the SentencePiece vocabularies through
make_sentencepiece_fixtures.py."""

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

# (type, byte offsets of f16 scale fields within a block)
SCALES = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def main(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(out_dir / "quants.gguf"), "llama")
    rows = 3
    for qt, offsets in SCALES.items():
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qt]
        cols = 2 * 256
        nblocks = rows * cols // block_elems
        raw = rng.integers(0, 256, size=(nblocks, block_bytes), dtype=np.uint8)
        for off in offsets:
            scales = rng.uniform(-0.05, 0.05, size=nblocks).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
        raw = raw.reshape(rows, cols // block_elems * block_bytes)
        expected = gguf.quants.dequantize(raw, qt).astype(np.float32)
        assert expected.shape == (rows, cols) and np.isfinite(expected).all()
        name = qt.name.lower()
        w.add_tensor(name, raw, raw_dtype=qt)
        w.add_tensor(name + ".expected", expected)
    for name, dt in [("f16", np.float16), ("f32", np.float32)]:
        x = rng.standard_normal((rows, 64)).astype(dt)
        w.add_tensor(name, x)
        w.add_tensor(name + ".expected", x.astype(np.float32))
    bf = rng.standard_normal((rows, 64)).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf_bits.view(np.uint8).reshape(rows, 128), raw_dtype=Q.BF16)
    w.add_tensor("bf16.expected", (bf_bits.astype(np.uint32) << 16).view(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("gguf/quants.gguf written")
    import make_sentencepiece_fixtures
    make_sentencepiece_fixtures.main(out_dir)
