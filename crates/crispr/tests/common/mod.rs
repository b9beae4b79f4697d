//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fd;
pub mod gguf_build;
pub mod synthetic;

use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// A decoder-only fixture as the engine's concrete type (for the API beyond the trait).
pub fn load_decoder(dir: &std::path::Path) -> (crispr::model::llama::LlamaModel<f32>, crispr::text::TextCodec) {
    let gemma = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gemma"));
    let phi3 = dir.file_name().is_some_and(|n| n == "phi3");
    let loaded = if gemma {
        crispr::model::gemma::load_gemma(dir)
    } else if phi3 {
        crispr::model::phi3::load_phi3(dir)
    } else {
        crispr::loader::load_llama(dir)
    };
    loaded.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// All f32 tensors of a safetensors file, with their shapes.
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

/// max |a − b| / max |b| (0 when both are all zero).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
}

/// Path to the crispr binary built for the integration tests.
pub fn crispr_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crispr"))
}

/// The shared benchmark data: `$CRISPR_DATA_DIR`, else a `shared/data` beside an ancestor.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRISPR_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let cand = dir.join("shared").join("data");
        if cand.join("README.md").is_file() {
            return cand;
        }
    }
    panic!("shared data not found: set CRISPR_DATA_DIR or place shared/ beside the repository clone");
}

/// The method's default attribution settings as a run configuration's `[attribution.settings]`
/// table (the paper's: linear universe, ∂P, max over tokens, per-instance disentanglement, λ = 1, α).
pub const ATTRIBUTION_SETTINGS_TOML: &str = r#"[attribution.settings]
universe = "linear"
objective = "prob"
token_agg = "max"
disentangle = "per-instance"
lambda = 1.0
alpha = true
"#;

/// A small `crispr run` configuration (BBQ-Age, RTE retained, 2 random seeds) for the end-to-end
/// tests, written as `dir/config.toml`.
pub struct SmallRun<'a> {
    pub model: &'a std::path::Path,
    /// The body of `[attribution]` (samples, seeds, instructions).
    pub attribution: &'a str,
    /// Search range `[lo, hi]`.
    pub search: (usize, usize),
    /// Target-task test instances.
    pub test_limit: usize,
    /// `[chunks]` attribution and eval, when set.
    pub chunks: Option<(usize, usize)>,
}

impl SmallRun<'_> {
    pub fn write(&self, dir: &std::path::Path) -> PathBuf {
        let chunks =
            self.chunks.map(|(a, e)| format!("\n[chunks]\nattribution = {a}\neval = {e}\n")).unwrap_or_default();
        let text = format!(
            r#"model = "{model}"
task = "bbq:Age"
retain = ["rte"]
preset = "test"
split_seed = 0

[attribution]
{attribution}

{settings}

[search]
lo = {lo}
hi = {hi}
final_width = 3
dev_limit = 6
instructions = 2
seed = 0

[test]
limit = {limit}
instructions = 2
retain_limit = 4
retain_instructions = 2
random_seeds = [1, 2]
seed = 0
{chunks}"#,
            model = self.model.display(),
            attribution = self.attribution,
            settings = ATTRIBUTION_SETTINGS_TOML,
            lo = self.search.0,
            hi = self.search.1,
            limit = self.test_limit,
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}
