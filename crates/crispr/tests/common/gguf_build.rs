//! Writing small GGUF files in tests: a hand-made tiny llama model with a byte-level tokenizer,
//! and the raw pieces (metadata values, tensor records) to corrupt it in specific ways.

use std::path::Path;

/// A metadata value as written (type id and payload).
#[derive(Clone, Debug)]
pub enum Meta {
    U32(u32),
    U64(u64),
    F32(f32),
    Str(String),
    /// Element type id and the elements' encoded payloads (each without its own type id).
    Array(u32, Vec<Vec<u8>>),
    /// Any type id with a raw payload, for corrupt values.
    Raw(u32, Vec<u8>),
}

impl Meta {
    pub fn strings<S: AsRef<str>>(items: &[S]) -> Meta {
        Meta::Array(8, items.iter().map(|s| str_bytes(s.as_ref())).collect())
    }

    pub fn i32s(items: &[i32]) -> Meta {
        Meta::Array(5, items.iter().map(|v| v.to_le_bytes().to_vec()).collect())
    }

    pub fn bools(items: &[bool]) -> Meta {
        Meta::Array(7, items.iter().map(|&v| vec![v as u8]).collect())
    }

    fn type_id(&self) -> u32 {
        match self {
            Meta::U32(_) => 4,
            Meta::U64(_) => 10,
            Meta::F32(_) => 6,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::Raw(t, _) => *t,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Meta::U32(v) => v.to_le_bytes().to_vec(),
            Meta::U64(v) => v.to_le_bytes().to_vec(),
            Meta::F32(v) => v.to_le_bytes().to_vec(),
            Meta::Str(s) => str_bytes(s),
            Meta::Array(t, items) => {
                let mut b = t.to_le_bytes().to_vec();
                b.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    b.extend(i);
                }
                b
            }
            Meta::Raw(_, b) => b.clone(),
        }
    }
}

pub fn str_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

/// One tensor record: name, GGUF dims (fastest first), GGML type id, data; `offset` overrides the
/// computed relative offset (for corrupt files).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

pub fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dims: dims.to_vec(),
        ggml_type: 0,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        offset: None,
    }
}

/// Serialise a GGUF v3 file (alignment 32).
pub fn gguf_bytes(meta: &[(String, Meta)], tensors: &[TensorSpec]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        b.extend(str_bytes(k));
        b.extend(v.type_id().to_le_bytes());
        b.extend(v.payload());
    }
    let mut rel = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        b.extend(str_bytes(&t.name));
        b.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ggml_type.to_le_bytes());
        b.extend(t.offset.unwrap_or(rel).to_le_bytes());
        offsets.push(rel);
        rel = (rel + t.data.len() as u64).next_multiple_of(32);
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let start = b.len();
    for (t, off) in tensors.iter().zip(offsets) {
        b.resize(start + off as usize, 0);
        b.extend(&t.data);
    }
    b
}

/// GPT-2's byte → printable character mapping (the byte-level BPE alphabet).
pub fn byte_alphabet() -> Vec<String> {
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("valid char").to_string()
        })
        .collect()
}

pub const HIDDEN: u64 = 8;
pub const FFN: u64 = 16;
pub const CONTEXT: u64 = 64;
pub const CHAT_TEMPLATE: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A deterministic pseudo-random weight in [-0.5, 0.5).
fn weight(i: usize) -> f32 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    (x as f32 / (1u64 << 24) as f32) - 0.5
}

/// A one-layer llama model over 256 byte tokens plus `<|im_start|>` (256) and `<|im_end|>` (257):
/// its metadata and tensors, to be edited by a test and written with [`gguf_bytes`].
pub fn tiny_llama() -> (Vec<(String, Meta)>, Vec<TensorSpec>) {
    let mut tokens = byte_alphabet();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let vocab = tokens.len() as u64;
    let mut types = vec![1i32; 256];
    types.extend([3, 3]);
    let meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str("llama".into())),
        ("llama.embedding_length".into(), Meta::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Meta::U32(FFN as u32)),
        ("llama.block_count".into(), Meta::U32(1)),
        ("llama.attention.head_count".into(), Meta::U32(2)),
        ("llama.attention.head_count_kv".into(), Meta::U32(2)),
        ("llama.context_length".into(), Meta::U32(CONTEXT as u32)),
        ("llama.rope.freq_base".into(), Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Meta::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Meta::strings(&tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::i32s(&types)),
        ("tokenizer.ggml.merges".into(), Meta::strings::<&str>(&[])),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(257)),
        ("tokenizer.chat_template".into(), Meta::Str(CHAT_TEMPLATE.into())),
    ];
    let mut seed = 0;
    let mut t = |name: &str, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        let v: Vec<f32> = (0..n as usize).map(|i| weight(seed + i)).collect();
        seed += n as usize;
        f32_tensor(name, dims, &v)
    };
    let ones = |name: &str| f32_tensor(name, &[HIDDEN], &[1.0; HIDDEN as usize]);
    let tensors = vec![
        t("token_embd.weight", &[HIDDEN, vocab]),
        ones("output_norm.weight"),
        ones("blk.0.attn_norm.weight"),
        t("blk.0.attn_q.weight", &[HIDDEN, HIDDEN]),
        t("blk.0.attn_k.weight", &[HIDDEN, HIDDEN]),
        t("blk.0.attn_v.weight", &[HIDDEN, HIDDEN]),
        t("blk.0.attn_output.weight", &[HIDDEN, HIDDEN]),
        ones("blk.0.ffn_norm.weight"),
        t("blk.0.ffn_gate.weight", &[HIDDEN, FFN]),
        t("blk.0.ffn_up.weight", &[HIDDEN, FFN]),
        t("blk.0.ffn_down.weight", &[FFN, HIDDEN]),
    ];
    (meta, tensors)
}

/// Replace (or add) a metadata key.
pub fn set_meta(meta: &mut Vec<(String, Meta)>, key: &str, value: Meta) {
    meta.retain(|(k, _)| k != key);
    meta.push((key.into(), value));
}

pub fn write(path: &Path, meta: &[(String, Meta)], tensors: &[TensorSpec]) {
    std::fs::write(path, gguf_bytes(meta, tensors)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
