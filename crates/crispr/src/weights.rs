//! Reading weight tensors from safetensors checkpoints and GGUF files, by logical role.
//!
//! Model builders ask for a tensor by its role ([`Role`]) and expected shape; each source maps
//! the role to its own naming and layout and converts to f32. A missing or mis-shaped tensor is
//! an error naming the file and the tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::Proj;

/// A weight tensor by what it does, independent of file naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Embed,
    LmHead,
    FinalNorm,
    AttnNorm(usize),
    MlpNorm(usize),
    Weight(usize, Proj),
    Bias(usize, Proj),
    /// Per-head norms of q and k (Qwen3, Gemma 3).
    QNorm(usize),
    KNorm(usize),
    /// Gemma's sandwich norms: after attention, before and after the FFN.
    PostAttnNorm(usize),
    PreMlpNorm(usize),
    PostMlpNorm(usize),
}

impl Role {
    /// The transformers (safetensors) name.
    pub fn hf_name(self) -> String {
        match self {
            Role::Embed => "model.embed_tokens.weight".into(),
            Role::LmHead => "lm_head.weight".into(),
            Role::FinalNorm => "model.norm.weight".into(),
            Role::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            Role::MlpNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Role::Weight(l, p) => format!("model.layers.{l}.{}.weight", p.hf_suffix()),
            Role::Bias(l, p) => format!("model.layers.{l}.{}.bias", p.hf_suffix()),
            Role::QNorm(l) => format!("model.layers.{l}.self_attn.q_norm.weight"),
            Role::KNorm(l) => format!("model.layers.{l}.self_attn.k_norm.weight"),
            Role::PostAttnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            Role::PreMlpNorm(l) => format!("model.layers.{l}.pre_feedforward_layernorm.weight"),
            Role::PostMlpNorm(l) => format!("model.layers.{l}.post_feedforward_layernorm.weight"),
        }
    }

    /// The GGUF name.
    pub fn gguf_name(self) -> String {
        match self {
            Role::Embed => "token_embd.weight".into(),
            Role::LmHead => "output.weight".into(),
            Role::FinalNorm => "output_norm.weight".into(),
            Role::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            Role::MlpNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Role::Weight(l, p) => format!("blk.{l}.{}.weight", p.gguf_stem()),
            Role::Bias(l, p) => format!("blk.{l}.{}.bias", p.gguf_stem()),
            Role::QNorm(l) => format!("blk.{l}.attn_q_norm.weight"),
            Role::KNorm(l) => format!("blk.{l}.attn_k_norm.weight"),
            Role::PostAttnNorm(l) => format!("blk.{l}.post_attention_norm.weight"),
            Role::PreMlpNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            Role::PostMlpNorm(l) => format!("blk.{l}.post_ffw_norm.weight"),
        }
    }
}

/// Something weights can be read from.
pub trait WeightSource {
    /// Whether the tensor is present.
    fn has(&self, role: Role) -> bool;
    /// Read a tensor as f32, row-major, checking it has `shape` (`[rows, cols]` or `[len]`).
    fn read(&self, role: Role, shape: &[usize]) -> Result<Vec<f32>>;
    /// Every check [`Self::read`] makes, from the header alone (no tensor data is touched).
    fn check(&self, role: Role, shape: &[usize]) -> Result<()>;
    /// The file or directory the weights come from, for error messages.
    fn location(&self) -> &Path;
}

/// A NaN or infinite weight makes every score NaN downstream (printed as `null`): refuse it where
/// the tensor is read, naming it.
fn check_finite(path: &Path, name: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => {
            Err(Error::format(path, format!("tensor {name} holds a non-finite value ({}) at element {i}", data[i])))
        }
    }
}

/// Tensors addressed by their checkpoint name: for model families whose module tree does not fit
/// [`Role`] (T5's encoder and decoder stacks).
pub trait NamedSource {
    /// The file or directory the tensors come from, for error messages.
    fn origin(&self) -> &Path;
    /// Whether a tensor of that name is present.
    fn contains(&self, name: &str) -> bool;
    /// Read a tensor as f32, row-major, checking it has `shape`; a missing or mis-shaped tensor is
    /// an error naming the file and the tensor.
    fn read_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Every check [`Self::read_named`] makes, from the header alone.
    fn check_named(&self, name: &str, shape: &[usize]) -> Result<()>;
}

/// A source that checks every tensor asked for against the header and reads none: a model
/// built from it has empty weights, its shapes validated, and [`Probe::footprint`] says what
/// the real load will hold. `crispr info` and the memory check before loading use it.
pub struct Probe<'a, S: ?Sized> {
    inner: &'a S,
    seen: std::cell::RefCell<Vec<(String, Vec<usize>)>>,
}

impl<'a, S: ?Sized> Probe<'a, S> {
    pub fn new(inner: &'a S) -> Self {
        Probe { inner, seen: Default::default() }
    }

    /// Elements of the tensors asked for, except those named in `skip`: 2-D ones are weight
    /// matrices (stored at the chosen precision), the rest stay f32.
    pub fn footprint(&self, skip: &[&str]) -> crate::precision::Footprint {
        let mut fp = crate::precision::Footprint::default();
        for (_, shape) in self.seen.borrow().iter().filter(|(n, _)| !skip.contains(&n.as_str())) {
            let n = shape.iter().map(|&d| d as u64).product::<u64>();
            if shape.len() == 2 {
                fp.matrix_elements += n;
            } else {
                fp.vector_elements += n;
            }
        }
        fp
    }
}

impl<S: WeightSource + ?Sized> WeightSource for Probe<'_, S> {
    fn has(&self, role: Role) -> bool {
        self.inner.has(role)
    }

    fn read(&self, role: Role, shape: &[usize]) -> Result<Vec<f32>> {
        self.check(role, shape)?;
        self.seen.borrow_mut().push((role.hf_name(), shape.to_vec()));
        Ok(Vec::new())
    }

    fn check(&self, role: Role, shape: &[usize]) -> Result<()> {
        self.inner.check(role, shape)
    }

    fn location(&self) -> &Path {
        self.inner.location()
    }
}

impl<S: NamedSource + ?Sized> NamedSource for Probe<'_, S> {
    fn origin(&self) -> &Path {
        self.inner.origin()
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn read_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_named(name, shape)?;
        self.seen.borrow_mut().push((name.to_string(), shape.to_vec()));
        Ok(Vec::new())
    }

    fn check_named(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.inner.check_named(name, shape)
    }
}

fn shape_error(path: &Path, name: &str, found: &[usize], expected: &[usize]) -> Error {
    Error::format(path, format!("tensor {name} has shape {found:?}, expected {expected:?}"))
}

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_start: usize,
    tensors: BTreeMap<String, safetensors::tensor::TensorInfo>,
}

/// The weight files a checkpoint directory consists of: the shards named in
/// `model.safetensors.index.json` when it exists, else `model.safetensors`. Nothing else — a stray
/// `backup.safetensors` beside them is neither loaded, pruned nor checksummed. Loading, export
/// and run checksums all use this one rule.
///
/// Shard names must be plain file names inside the directory: an index naming `../x` or an
/// absolute path is refused rather than followed.
pub fn checkpoint_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index_path, "no \"weight_map\" object"))?;
        let mut names = Vec::new();
        for (tensor, file) in map {
            let name = file
                .as_str()
                .ok_or_else(|| Error::format(&index_path, format!("weight_map entry {tensor:?} is not a file name")))?;
            let plain = Path::new(name).components().count() == 1
                && matches!(Path::new(name).components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(Error::format(
                    &index_path,
                    format!("shard {name:?} (of {tensor}) is not a file name inside the checkpoint directory"),
                ));
            }
            names.push(name.to_string());
        }
        names.sort();
        names.dedup();
        return Ok(names.into_iter().map(|n| dir.join(n)).collect());
    }
    let single = dir.join("model.safetensors");
    if !single.exists() {
        let pickled = ["pytorch_model.bin", "pytorch_model.bin.index.json"].iter().any(|f| dir.join(f).exists());
        if pickled {
            // Pickle files can run arbitrary code when loaded; they are never read.
            return Err(Error::format(
                dir,
                format!(
                    "only pytorch_model.bin (a Python pickle) is present, and crispr reads safetensors \
                     only. Convert it once with transformers: python -c \"from transformers import \
                     AutoModelForSeq2SeqLM as M; M.from_pretrained('{d}').save_pretrained('{d}', \
                     safe_serialization=True)\" (AutoModelForCausalLM for decoder-only models)",
                    d = dir.display()
                ),
            ));
        }
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
        ));
    }
    Ok(vec![single])
}

/// A transformers checkpoint: one `model.safetensors` or shards listed in
/// `model.safetensors.index.json`.
pub struct SafetensorsSource {
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    index: BTreeMap<String, usize>,
}

impl SafetensorsSource {
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let files = checkpoint_weight_files(dir)?;
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only map of an input file the tool never writes.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e:?}")))?;
            let data_start = 8 + n;
            let mut tensors = BTreeMap::new();
            for (name, info) in meta.tensors() {
                let (_, end) = info.data_offsets;
                if data_start.checked_add(end).is_none_or(|e| e > mmap.len()) {
                    return Err(Error::format(
                        &path,
                        format!("tensor {name} extends past the end of the file: truncated?"),
                    ));
                }
                index.insert(name.clone(), shards.len());
                tensors.insert(name, info.clone());
            }
            shards.push(Shard { path, mmap, data_start, tensors });
        }
        Ok(SafetensorsSource { shards, index })
    }

    fn lookup(&self, name: &str) -> Option<(&Shard, &safetensors::tensor::TensorInfo)> {
        let s = &self.shards[*self.index.get(name)?];
        Some((s, s.tensors.get(name)?))
    }

    /// The shard files, in the order they were opened.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Path of the shard holding `name`, for error messages.
    fn describe(&self) -> PathBuf {
        self.shards.first().map(|s| s.path.clone()).unwrap_or_default()
    }
}

impl WeightSource for SafetensorsSource {
    fn has(&self, role: Role) -> bool {
        self.index.contains_key(&role.hf_name())
    }

    fn read(&self, role: Role, shape: &[usize]) -> Result<Vec<f32>> {
        self.read_named(&role.hf_name(), shape)
    }

    fn check(&self, role: Role, shape: &[usize]) -> Result<()> {
        self.check_named(&role.hf_name(), shape)
    }

    fn location(&self) -> &Path {
        NamedSource::origin(self)
    }
}

impl NamedSource for SafetensorsSource {
    fn origin(&self) -> &Path {
        self.shards.first().map_or(Path::new("<no shards>"), |s| s.path.as_path())
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn read_named(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (bytes, dtype) = self.locate(name, shape)?;
        use safetensors::Dtype;
        let out: Vec<f32> = match dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        };
        self.release(name);
        // Every precision is converted from this f32 copy, so checking it covers f32 and bf16 loads.
        let path = self.lookup(name).map_or_else(|| self.describe(), |(shard, _)| shard.path.clone());
        check_finite(&path, name, &out)?;
        Ok(out)
    }

    fn check_named(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.locate(name, shape).map(|_| ())
    }
}

impl SafetensorsSource {
    /// Drop tensor `name`'s mapped pages from this process's resident set once it is converted:
    /// otherwise a checkpoint read whole stays resident beside its converted copy (16 GB of an 8B
    /// model's file next to its 16 GB in bf16).
    fn release(&self, name: &str) {
        if let Some((shard, info)) = self.lookup(name) {
            let (a, b) = info.data_offsets;
            // SAFETY: a read-only mapping of a file this tool never writes: dropped pages read back
            // the same bytes from the file if anything touches them again.
            let _ = unsafe {
                shard.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, shard.data_start + a, b - a)
            };
        }
    }

    /// The bytes and type of tensor `name` after checking its presence, shape, type and size
    /// (the slice is not read here: mapped pages are only faulted in when a caller reads them).
    fn locate(&self, name: &str, shape: &[usize]) -> Result<(&[u8], safetensors::Dtype)> {
        let (shard, info) =
            self.lookup(name).ok_or_else(|| Error::format(&self.describe(), format!("tensor {name} is missing")))?;
        if info.shape != shape {
            return Err(shape_error(&shard.path, name, &info.shape, shape));
        }
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        use safetensors::Dtype;
        let n: usize = shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::format(
                    &shard.path,
                    format!("tensor {name} has dtype {other:?}; only F32, F16 and BF16 are supported"),
                ))
            }
        };
        if bytes.len() != n * width {
            return Err(Error::format(&shard.path, format!("tensor {name}: byte size does not match its shape")));
        }
        Ok((bytes, info.dtype))
    }
}

/// A GGUF file. llama-architecture files store `q`/`k` rows permuted for GGML's pairwise RoPE;
/// they are un-permuted here so the engine and neuron ids use the transformers row order.
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    /// `Some((heads, kv_heads))` when q/k rows are in GGML's permuted order.
    pub permuted_qk: Option<(usize, usize)>,
}

impl GgufSource<'_> {
    /// The tensor playing `role`, after checking it is present with `shape`.
    fn locate(&self, role: Role, shape: &[usize]) -> Result<&crate::gguf::TensorInfo> {
        let name = role.gguf_name();
        let t = self
            .file
            .tensor(&name)
            .ok_or_else(|| Error::format(&self.file.path, format!("tensor {name} is missing")))?;
        // GGUF lists dimensions fastest-first.
        let found: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if found != shape {
            return Err(shape_error(&self.file.path, &name, &found, shape));
        }
        Ok(t)
    }
}

/// Map a transformers (rotate-half) row of a q/k projection to its row in a GGUF file written by
/// llama.cpp's converter, which interleaves the two halves of each head.
pub fn gguf_row_of_hf_row(row: usize, head_dim: usize) -> usize {
    let (head, r) = (row / head_dim, row % head_dim);
    let half = head_dim / 2;
    head * head_dim + 2 * (r % half) + r / half
}

impl WeightSource for GgufSource<'_> {
    fn has(&self, role: Role) -> bool {
        self.file.tensor(&role.gguf_name()).is_some()
    }

    fn check(&self, role: Role, shape: &[usize]) -> Result<()> {
        self.locate(role, shape).map(|_| ())
    }

    fn location(&self) -> &Path {
        &self.file.path
    }

    fn read(&self, role: Role, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.locate(role, shape)?;
        let data = self.file.dequantize(t);
        check_finite(&self.file.path, &role.gguf_name(), &data)?;
        let heads = match (role, self.permuted_qk) {
            (Role::Weight(_, Proj::Q) | Role::Bias(_, Proj::Q), Some((h, _))) => Some(h),
            (Role::Weight(_, Proj::K) | Role::Bias(_, Proj::K), Some((_, kv))) => Some(kv),
            _ => None,
        };
        let Some(heads) = heads else { return Ok(data) };
        let rows = shape[0];
        let cols = if shape.len() > 1 { shape[1] } else { 1 };
        let head_dim = rows / heads;
        let mut out = vec![0f32; data.len()];
        for r in 0..rows {
            let g = gguf_row_of_hf_row(r, head_dim);
            out[r * cols..(r + 1) * cols].copy_from_slice(&data[g * cols..(g + 1) * cols]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_row_permutation_matches_llama_cpp() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2): GGUF row (h, i, half) holds
        // HF row (h, half, i).
        let hd = 8;
        let mut seen = [false; 16];
        for hf in 0..16 {
            let g = gguf_row_of_hf_row(hf, hd);
            let (h, rest) = (g / hd, g % hd);
            let (i, half) = (rest / 2, rest % 2);
            assert_eq!(hf, h * hd + half * (hd / 2) + i);
            seen[g] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
