//! Writing a pruned copy of a model in the format it came in.
//!
//! GGUF in → GGUF out: the file is copied byte for byte and only the bytes of the pruned rows are
//! zeroed. A row is a whole number of quantisation blocks, and a block whose bytes are all zero
//! (scale, minimum and quants) dequantises to exactly 0 in every supported type.
//! Checkpoint directory in → directory out: every file is copied; in the safetensors files the
//! pruned rows (and bias entries) are zeroed the same way.
//!
//! Output is built under a temporary name beside the destination and renamed into place when
//! complete; the input is only ever read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gguf::Value;
use crate::loader::ModelFormat;
use crate::model::llama::config::gguf_sizes;
use crate::model::{ModuleId, Proj};
use crate::weights::gguf_row_of_hf_row;

/// Rows to zero, by module name in the transformers naming (`model.layers.3.mlp.up_proj`).
pub type RowsByModule = BTreeMap<String, Vec<usize>>;

/// Write the pruned model to `out` (a `.gguf` file or a directory, matching the input).
pub fn write_pruned(format: &ModelFormat, rows: &RowsByModule, out: &Path) -> Result<()> {
    if out.exists() {
        return Err(Error::format(out, "already exists; choose a new output path (inputs are never overwritten)"));
    }
    let src = format.path();
    if let (Ok(a), Some(parent)) = (src.canonicalize(), out.parent()) {
        if parent.canonicalize().ok().map(|p| p.join(out.file_name().unwrap_or_default())) == Some(a) {
            return Err(Error::format(out, "is the input model"));
        }
    }
    let tmp = temp_sibling(out);
    let result = match format {
        ModelFormat::Gguf(path) => write_gguf(path, rows, &tmp),
        ModelFormat::Checkpoint(dir) => write_checkpoint(dir, rows, &tmp),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&tmp);
        // Name the requested output, not the hidden temporary it was being built under.
        return Err(match e {
            Error::Io { path, source } if path.starts_with(&tmp) => Error::io(out, source),
            other => other,
        });
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn write_gguf(src: &Path, rows: &RowsByModule, tmp: &Path) -> Result<()> {
    let file = GgufFile::open(src)?;
    // Only llama-architecture files store q/k rows permuted (see `weights::GgufSource`).
    let arch = file.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
    let cfg = gguf_sizes(&file, &arch)?;
    let permuted = arch == "llama";
    let mut bytes = file.bytes().to_vec();
    for (module, rs) in rows {
        let id = ModuleId::parse(module)
            .filter(|id| id.proj != Proj::Act)
            .ok_or_else(|| Error::msg(format!("{module} is not a prunable module of a decoder GGUF")))?;
        let stem = id.proj.gguf_stem();
        let wname = format!("blk.{}.{stem}.weight", id.layer);
        let t = file.tensor(&wname).ok_or_else(|| Error::format(src, format!("tensor {wname} is missing")))?;
        let (_, n_rows) = t.row_shape();
        let rb = t.row_bytes();
        let heads = match id.proj {
            Proj::Q if permuted => Some(cfg.num_heads),
            Proj::K if permuted => Some(cfg.num_kv_heads),
            _ => None,
        };
        let bias = file.tensor(&format!("blk.{}.{stem}.bias", id.layer)).cloned();
        for &r in rs {
            if r >= n_rows {
                return Err(Error::msg(format!("{module}: row {r} out of range ({n_rows} rows)")));
            }
            let g = heads.map_or(r, |h| gguf_row_of_hf_row(r, n_rows / h));
            let start = t.offset as usize + g * rb;
            bytes[start..start + rb].fill(0);
            if let Some(b) = &bias {
                let (eb, bb) = b.dtype.block();
                if eb != 1 {
                    return Err(Error::format(src, format!("{}: quantised bias cannot be pruned", b.name)));
                }
                let s = b.offset as usize + g * bb;
                bytes[s..s + bb].fill(0);
            }
        }
    }
    std::fs::write(tmp, &bytes).map_err(|e| Error::io(tmp, e))
}

fn write_checkpoint(src: &Path, rows: &RowsByModule, tmp: &Path) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut remaining: BTreeMap<String, &Vec<usize>> = rows.iter().map(|(m, r)| (m.clone(), r)).collect();
    // Only the files the loader reads are pruned; any other file is copied as it is.
    let weight_files = crate::weights::checkpoint_weight_files(src)?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let dst = tmp.join(entry.file_name());
        if weight_files.contains(&path) {
            let mut bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e:?}")))?;
            let data_start = 8 + n;
            let tensors = meta.tensors();
            let mut done = Vec::new();
            for (module, rs) in &remaining {
                let Some(w) = tensors.get(&format!("{module}.weight")) else { continue };
                zero_rows(&mut bytes, data_start, w, rs, &path, module)?;
                if let Some(b) = tensors.get(&format!("{module}.bias")) {
                    zero_rows(&mut bytes, data_start, b, rs, &path, module)?;
                }
                done.push(module.clone());
            }
            for m in done {
                remaining.remove(&m);
            }
            std::fs::write(&dst, &bytes).map_err(|e| Error::io(&dst, e))?;
        } else {
            std::fs::copy(&path, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    if let Some((m, _)) = remaining.into_iter().next() {
        return Err(Error::format(src, format!("no tensor {m}.weight in the checkpoint")));
    }
    Ok(())
}

/// Zero rows of a 1-D (bias) or 2-D (weight) tensor in a safetensors byte buffer.
fn zero_rows(
    bytes: &mut [u8],
    data_start: usize,
    info: &safetensors::tensor::TensorInfo,
    rows: &[usize],
    path: &Path,
    module: &str,
) -> Result<()> {
    use safetensors::Dtype;
    let width = match info.dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::F64 => 8,
        d => return Err(Error::format(path, format!("{module}: cannot prune a {d:?} tensor"))),
    };
    let n_rows = info.shape.first().copied().unwrap_or(0);
    let cols: usize = info.shape.iter().skip(1).product();
    let (a, _) = info.data_offsets;
    for &r in rows {
        if r >= n_rows {
            return Err(Error::msg(format!("{module}: row {r} out of range ({n_rows} rows)")));
        }
        let start = data_start + a + r * cols * width;
        bytes[start..start + cols * width].fill(0);
    }
    Ok(())
}
