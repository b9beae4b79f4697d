//! GGUF reading: dequantisation of every supported type against gguf-py, and clean errors on
//! truncated or foreign files.

mod common;

use crispr::gguf::GgufFile;

#[test]
fn every_quant_type_dequantizes_like_gguf_py() {
    let path = common::fixtures().join("gguf").join("quants.gguf");
    let f = GgufFile::open(&path).unwrap();
    let mut checked = Vec::new();
    for t in f.tensors.iter().filter(|t| !t.name.ends_with(".expected")) {
        let exp = f.tensor(&format!("{}.expected", t.name)).expect("expected tensor");
        let got = f.dequantize(t);
        let want = f.dequantize(exp);
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{} element {i}: {a} vs {b}", t.name);
        }
        checked.push(t.dtype.name());
    }
    checked.sort();
    assert_eq!(checked, ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]);
}

#[test]
fn truncated_gguf_is_an_error_naming_file_and_tensor() {
    let path = common::fixtures().join("gguf").join("quants.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = GgufFile::open(&cut).err().expect("truncated file must fail").to_string();
    assert!(err.contains("cut.gguf") && err.contains("truncated") && err.contains("tensor"), "{err}");
    std::fs::write(&cut, &bytes[..40]).unwrap();
    let err = GgufFile::open(&cut).err().expect("header-only file must fail").to_string();
    assert!(err.contains("cut.gguf"), "{err}");
    std::fs::write(&cut, b"not a gguf file at all").unwrap();
    let err = GgufFile::open(&cut).err().unwrap().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}
