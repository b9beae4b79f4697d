//! Deterministic pseudo-random T5 checkpoints, reproduced bit for bit by
//! `scripts/make_t5_fixtures.py` (numpy): parity fixtures for real model shapes without committing
//! gigabytes of weights, and models for benchmarks.
//!
//! Element `i` of the tensor named `name` is `f32(center + half·(2u − 1))` (arithmetic in f64),
//! where `u` is the `(i+1)`-th `next_f64` of [`crate::rng::SplitMix64`] seeded with
//! `fnv1a64(name) ^ seed`. SplitMix64's `k`-th output depends only on `seed + k·γ`, so any element
//! can be computed directly (numpy vectorises it; here it runs in parallel).

use std::collections::BTreeMap;
use std::io::Write;

use rayon::prelude::*;

use super::*;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(center, half_width)` of the uniform law of a tensor: transformers' initialisation std for
/// the projections (uniform with the same std), norm weights in [0.9, 1.1], embedding std 1,
/// relative-position bias std 0.5, an untied LM head with std 2/√d (peaked enough that greedy
/// decoding has clear winners).
pub fn init_rule(cfg: &T5Config, name: &str) -> (f64, f64) {
    let sqrt3 = 3f64.sqrt();
    let d = cfg.d_model as f64;
    if name.ends_with("layer_norm.weight") {
        return (1.0, 0.1);
    }
    if name == "shared.weight" {
        return (0.0, sqrt3);
    }
    if name == "lm_head.weight" {
        return (0.0, sqrt3 * (2.0 / d.sqrt()));
    }
    if name.ends_with("relative_attention_bias.weight") {
        return (0.0, sqrt3 * 0.5);
    }
    let module = name.rsplit('.').nth(1).unwrap_or("");
    let fan = match module {
        "q" => cfg.d_model * cfg.d_kv,
        "o" => cfg.num_heads * cfg.d_kv,
        "wo" => cfg.d_ff,
        _ => cfg.d_model,
    };
    (0.0, sqrt3 * (1.0 / (fan as f64).sqrt()))
}

/// The values of one tensor.
pub fn values(name: &str, len: usize, center: f64, half: f64, seed: u64) -> Vec<f32> {
    let s0 = fnv1a64(name.as_bytes()) ^ seed;
    (0..len as u64)
        .into_par_iter()
        .map(|i| {
            let z = mix(s0.wrapping_add((i + 1).wrapping_mul(GAMMA)));
            let u = (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            (center + half * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// A [`NamedSource`] that generates every tensor of `cfg`'s checkpoint on demand.
pub struct DeterministicSource {
    cfg: T5Config,
    seed: u64,
    shapes: BTreeMap<String, Vec<usize>>,
    origin: PathBuf,
}

impl DeterministicSource {
    pub fn new(cfg: &T5Config, seed: u64) -> Self {
        DeterministicSource {
            cfg: cfg.clone(),
            seed,
            shapes: cfg.checkpoint_tensors().into_iter().collect(),
            origin: PathBuf::from(format!("<deterministic T5 weights, seed {seed}>")),
        }
    }
}

impl NamedSource for DeterministicSource {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    fn read_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_shape(name, shape)?;
        let (center, half) = init_rule(&self.cfg, name);
        Ok(values(name, shape.iter().product(), center, half, self.seed))
    }

    fn check_named(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.check_shape(name, shape)
    }
}

impl DeterministicSource {
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let found =
            self.shapes.get(name).ok_or_else(|| Error::format(&self.origin, format!("tensor {name} is missing")))?;
        if found != shape {
            return Err(Error::format(&self.origin, format!("tensor {name} has shape {found:?}, expected {shape:?}")));
        }
        Ok(())
    }
}

/// The model itself, built in memory.
pub fn model(cfg: &T5Config, seed: u64) -> Result<T5Model<f32>> {
    T5Model::from_source(cfg.clone(), &DeterministicSource::new(cfg, seed))
}

/// Write a transformers checkpoint directory: `config` verbatim as `config.json`, the
/// deterministic weights as `model.safetensors` (f32, streamed tensor by tensor), the given
/// `tokenizer.json`, and a Flan-T5 `tokenizer_config.json`.
pub fn write_checkpoint(dir: &Path, config: &Json, seed: u64, tokenizer_json: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg_path = dir.join("config.json");
    let cfg = T5Config::from_json(&cfg_path, config)?;
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::msg(e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    let tok = dir.join("tokenizer.json");
    std::fs::copy(tokenizer_json, &tok).map_err(|e| Error::io(tokenizer_json, e))?;
    let tok_cfg = dir.join("tokenizer_config.json");
    let tc = json!({"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                    "unk_token": "<unk>", "extra_ids": 100, "model_max_length": 512});
    std::fs::write(&tok_cfg, tc.to_string()).map_err(|e| Error::io(&tok_cfg, e))?;

    let tensors = cfg.checkpoint_tensors();
    let path = dir.join("model.safetensors");
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut head = Json::Object(header).to_string().into_bytes();
    // The data section starts 8-byte aligned.
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let io = |e| Error::io(&path, e);
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(head.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&head).map_err(io)?;
    for (name, shape) in &tensors {
        let (center, half) = init_rule(&cfg, name);
        let v = values(name, shape.iter().product(), center, half, seed);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}
