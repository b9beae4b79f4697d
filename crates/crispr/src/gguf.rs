//! GGUF files: header, metadata, tensor directory, and dequantisation to f32.
//!
//! Every read is bounds-checked against the file length so a truncated or corrupt file yields an
//! error naming the file and the tensor or key, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};

const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted: real files use 32; anything this large is corrupt.
const MAX_ALIGNMENT: u64 = 1 << 16;
/// Metadata values (array elements included) a file may hold. Each costs ~32 bytes in memory
/// however few bytes it takes in the file; real tokenizers need well under a million.
const MAX_METADATA_VALUES: usize = 1 << 23;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// GGML tensor element types this tool understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the fastest-varying (the row length).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row length (elements) and number of rows, for a 1- or 2-D tensor.
    pub fn row_shape(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (cols, rows)
    }

    /// Bytes one row occupies (rows are whole blocks).
    pub fn row_bytes(&self) -> usize {
        let (cols, _) = self.row_shape();
        let (be, bb) = self.dtype.block();
        cols / be * bb
    }
}

/// An opened GGUF file (memory-mapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    pub alignment: u64,
    mmap: memmap2::Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values read so far (bounded by [`MAX_METADATA_VALUES`]).
    values: usize,
}

/// The fewest bytes one metadata value of type `ty` takes in the file (for arrays: the element
/// type and count), so an array's count can be checked against the bytes left before allocating.
fn min_value_bytes(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::format(
                self.path,
                format!("file ends while reading {what} at byte {} (truncated?)", self.pos),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > (self.buf.len() - self.pos) as u64 {
            return Err(Error::format(self.path, format!("{what}: string length {len} runs past the end of the file")));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::format(self.path, format!("{what}: invalid UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(Error::format(
                self.path,
                format!("{what}: more than {MAX_METADATA_VALUES} metadata values: not a model file this tool can read"),
            ));
        }
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(Error::format(self.path, format!("{what}: arrays nested too deeply")));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least `min_value_bytes` in the file: a larger count is
                // corrupt, and checking it bounds what is reserved below by the bytes present.
                let left = (self.buf.len() - self.pos) as u64;
                if count.checked_mul(min_value_bytes(elem)).is_none_or(|need| need > left) {
                    return Err(Error::format(
                        self.path,
                        format!("{what}: array of {count} runs past the end of the file"),
                    ));
                }
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(Error::format(self.path, format!("{what}: unknown metadata type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; the tool never writes to its input files.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut r = Reader { buf: &mmap, pos: 0, path, values: 0 };
        let magic = r.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::format(path, "not a GGUF file (bad magic number)"));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(path, format!("unsupported GGUF version {version} (2 and 3 are supported)")));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let nd = r.u32(&name)?;
            if nd == 0 || nd > 4 {
                return Err(Error::format(path, format!("tensor {name}: {nd} dimensions")));
            }
            let dims = (0..nd).map(|_| r.u64(&name)).collect::<Result<Vec<_>>>()?;
            let ty = r.u32(&name)?;
            let dtype = GgmlType::from_id(ty)
                .ok_or_else(|| Error::format(path, format!("tensor {name}: unsupported GGML type id {ty}")))?;
            let rel = r.u64(&name)?;
            infos.push((name, dims, dtype, rel));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().ok_or_else(|| Error::format(path, "general.alignment is not an unsigned integer"))?,
        };
        if alignment == 0 || !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(Error::format(
                path,
                format!("general.alignment is {alignment}; it must be a power of two no larger than {MAX_ALIGNMENT}"),
            ));
        }
        // Every size and offset below comes from the file: all arithmetic is checked, so a value
        // near 2^64 is an error rather than a wrap-around that passes the bounds check.
        let file_len = mmap.len() as u64;
        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, dtype, rel) in infos {
            let past_end = |what: String| {
                Error::format(
                    path,
                    format!("tensor {name}: {what} extends past the end of the file ({file_len} bytes): truncated?"),
                )
            };
            let n = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| past_end(format!("dimensions {dims:?}")))?;
            let (be, bb) = dtype.block();
            if dims[0] % be as u64 != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name}: row length {} is not a multiple of the {} block size {be}",
                        dims[0],
                        dtype.name()
                    ),
                ));
            }
            if rel % alignment != 0 {
                return Err(Error::format(
                    path,
                    format!("tensor {name}: offset {rel} is not a multiple of the alignment {alignment}"),
                ));
            }
            let n_bytes = (n / be as u64).checked_mul(bb as u64).ok_or_else(|| past_end(format!("{dims:?}")))?;
            let offset = data_offset.checked_add(rel).ok_or_else(|| past_end(format!("offset {rel}")))?;
            if offset.checked_add(n_bytes).is_none_or(|end| end > file_len) {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name} ({n_bytes} bytes at offset {offset}) extends past the end of the file \
                         ({file_len} bytes): truncated?"
                    ),
                ));
            }
            tensors.push(TensorInfo { name, dims, dtype, offset, n_bytes });
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, data_offset, alignment, mmap })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// Dequantise a tensor to f32 (row-major, GGUF element order).
    pub fn dequantize(&self, t: &TensorInfo) -> Vec<f32> {
        dequantize(t.dtype, self.tensor_bytes(t), t.n_elements() as usize)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `scale` and `min` of sub-block `j` in the 12-byte packed K-quant scale array.
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantise `n` elements of `dtype` stored in `bytes` (which must hold exactly whole blocks).
pub fn dequantize(dtype: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let (be, bb) = dtype.block();
    assert_eq!(bytes.len(), n / be * bb, "byte length does not match element count");
    let mut out = vec![0f32; n];
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be));
    match dtype {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = (qs[j] & 0xF) as f32 * d + m;
                    y[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = dtype == GgmlType::Q5_1;
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let (m, rest) = if has_min { (f16_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let offset = if has_min { 0 } else { 16 };
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    let x0 = ((qs[j] as u32 & 0xF) | h0) as i32 - offset;
                    let x1 = ((qs[j] as u32 >> 4) | h1) as i32 - offset;
                    y[j] = x0 as f32 * d + m;
                    y[j + 16] = x1 as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = k_scale_min(2 * chunk, scales);
                    let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
                    let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, mn2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0xF) as f32 - mn1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - mn2;
                    }
                }
            }
        }
        GgmlType::Q5K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = k_scale_min(2 * chunk, scales);
                    let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
                    let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                    for l in 0..32 {
                        let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[l] = d * sc1 as f32 * ((q[l] & 0xF) + hi1) as f32 - dmin * m1 as f32;
                        y[l + 32] = d * sc2 as f32 * ((q[l] >> 4) + hi2) as f32 - dmin * m2 as f32;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, y) in blocks {
                let ql_all = &b[0..128];
                let qh_all = &b[128..192];
                let sc_all = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &ql_all[64 * half..];
                    let qh = &qh_all[32 * half..];
                    let sc = &sc_all[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
    out
}
