//! Files the crate writes and reads back: atomic writes, JSON, and the attribution output files
//! `scores.safetensors` (one f32 vector per module, keyed by the module name, length = the
//! module's units) and `neurons.json` (the ranking plus everything needed to trace and replay the
//! result).

use std::collections::HashMap;
use std::path::Path;

use crate::attribution::Scores;
use crate::error::{Error, Result};
use crate::model::{SiteInfo, Universe};
use crate::prune::Neuron;

pub const SCORES_FILE: &str = "scores.safetensors";
pub const NEURONS_FILE: &str = "neurons.json";

/// Write `bytes` to `path` through a temporary file in the same directory, so readers never see a
/// half-written file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // On failure (a full disk, a read-only folder) the half-written temporary file is removed and
    // the error names the file the user asked for, not the hidden temporary.
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Read and parse a JSON file; errors name the file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// One ranked neuron as written to `neurons.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RankedNeuron {
    pub id: String,
    pub module: String,
    pub row: usize,
    pub score: f64,
}

pub fn ranked_neurons(sites: &[SiteInfo], scores: &Scores, keep: usize) -> Vec<RankedNeuron> {
    scores
        .ranked()
        .into_iter()
        .take(keep)
        .map(|(s, row, score)| {
            let module = sites[s].name.clone();
            RankedNeuron { id: format!("{module}:{row}"), module, row, score }
        })
        .collect()
}

/// Write both files into `dir`. `meta` (settings, checksums, versions) goes into `neurons.json`
/// beside the ranking of the top `keep` neurons.
pub fn write_scores(
    dir: &Path,
    sites: &[SiteInfo],
    scores: &Scores,
    meta: serde_json::Value,
    keep: usize,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for (site, vals) in sites.iter().zip(&scores.per_site) {
        if site.universe != scores.universe {
            continue;
        }
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
        tensors.push((site.name.clone(), bytes, vals.len()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, b, len)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                .map_err(|e| Error::msg(format!("building {n}: {e:?}")));
            view.map(|v| (n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let info: HashMap<String, String> = [("universe".to_string(), scores.universe.name().to_string())].into();
    let st =
        safetensors::serialize(views, &Some(info)).map_err(|e| Error::msg(format!("serialising scores: {e:?}")))?;
    let ranked = ranked_neurons(sites, scores, keep);
    let mut doc = meta;
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("universe".into(), serde_json::json!(scores.universe.name()));
        obj.insert("universe_size".into(), serde_json::json!(scores.len()));
        obj.insert("neurons".into(), serde_json::to_value(&ranked).map_err(|e| Error::msg(e.to_string()))?);
    }
    let json = serde_json::to_vec_pretty(&doc).map_err(|e| Error::msg(e.to_string()))?;
    // Scores first: a directory with neurons.json is complete.
    atomic_write(&dir.join(SCORES_FILE), &st)?;
    atomic_write(&dir.join(NEURONS_FILE), &json)
}

/// Read `scores.safetensors` from `dir` against a model's site table. Every module in the file
/// must exist in the model with the same width.
pub fn read_scores(dir: &Path, sites: &[SiteInfo]) -> Result<Scores> {
    let path = dir.join(SCORES_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e:?}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e:?}")))?;
    let universe = match meta.metadata().as_ref().and_then(|m| m.get("universe")).map(String::as_str) {
        Some("ffn") => Universe::Ffn,
        Some("linear") | None => Universe::Linear,
        Some(other) => return Err(Error::format(&path, format!("unknown universe {other:?}"))),
    };
    let mut scores = Scores::zeros(sites, universe);
    let index: HashMap<&str, usize> = sites.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut found = 0;
    for (name, view) in st.tensors() {
        let &i = index.get(name.as_str()).ok_or_else(|| {
            Error::format(&path, format!("module {name} does not exist in this model: scores are from another model"))
        })?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != [sites[i].width] || sites[i].universe != universe
        {
            return Err(Error::format(
                &path,
                format!(
                    "{name}: expected f32 [{}] in the {} universe, found {:?} {:?}",
                    sites[i].width,
                    universe.name(),
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        scores.per_site[i] =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect();
        // A NaN ranks arbitrarily: pruning by such scores would succeed and mean nothing.
        if let Some(row) = scores.per_site[i].iter().position(|x| !x.is_finite()) {
            return Err(Error::format(
                &path,
                format!("{name}: score of row {row} is {} (not a finite number)", scores.per_site[i][row]),
            ));
        }
        found += 1;
    }
    let expected = sites.iter().filter(|s| s.universe == universe).count();
    if found != expected {
        return Err(Error::format(
            &path,
            format!("has {found} modules, the model has {expected} in the {} universe", universe.name()),
        ));
    }
    Ok(scores)
}

/// The `n` highest-scoring neurons.
pub fn top_neurons(scores: &Scores, n: usize) -> Vec<Neuron> {
    scores.ranked().into_iter().take(n).map(|(site, row, _)| Neuron { site, row }).collect()
}

/// Scores kept in f64, so that merged results are exact.
pub fn write_f64_scores(path: &Path, sites: &[SiteInfo], scores: &Scores) -> Result<()> {
    let tensors: Vec<(String, Vec<u8>, usize)> = sites
        .iter()
        .zip(&scores.per_site)
        .filter(|(s, _)| s.universe == scores.universe)
        .map(|(s, v)| (s.name.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
        .collect();
    let views = tensors
        .iter()
        .map(|(n, b, len)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![*len], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::msg(format!("{e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &None).map_err(|e| Error::msg(format!("{e:?}")))?;
    atomic_write(path, &bytes)
}

pub fn read_f64_scores(path: &Path, sites: &[SiteInfo], universe: Universe) -> Result<Scores> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("{e:?}")))?;
    let mut scores = Scores::zeros(sites, universe);
    for (i, s) in sites.iter().enumerate().filter(|(_, s)| s.universe == universe) {
        let v = st.tensor(&s.name).map_err(|e| Error::format(path, format!("{e:?}")))?;
        if v.shape() != [s.width] || v.dtype() != safetensors::Dtype::F64 {
            return Err(Error::format(path, format!("{}: shape or type does not match the model", s.name)));
        }
        scores.per_site[i] = v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
    }
    Ok(scores)
}
