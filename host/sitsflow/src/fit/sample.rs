//! A sampler's node.

use super::{Context, FitResults, Selected, call_error, context, parse_report};
use crate::config::Nomenclature;
use crate::graph::RasterId;
use crate::outputs::{Output, PixelType};
use crate::plan::{SampleSize, StagePlan};
use crate::raster::{ClassRaster, ClassStyle, FeatureRaster, Window, pixel_centre};
use crate::report::SceneSection;
use crate::runtime::StagePool;
use crate::runtime::data::{FeatureMatrix, SampleInput};
use anyhow::{Result, bail};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A sampler's node: chooses among the candidate pixels with their `features` and
/// class `layers`, writes the samples CSV and the raster `map` of the chosen labels.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    scene: &Context,
    stage: &StagePlan,
    sample_size: &SampleSize,
    pool: &StagePool,
    features: Option<RasterId>,
    layers: &[RasterId],
    map: RasterId,
    nomenclature: Option<&Nomenclature>,
    results: &mut FitResults,
) -> Result<(SceneSection, Selected)> {
    let layers: Vec<(String, PathBuf)> = layers.iter().map(|&r| (scene.name(r).to_string(), scene.path(r))).collect();
    let name = scene.name(map).to_string();
    // Candidates: pixels with a reference class (all pixels without a reference).
    let reference = layers.iter().find(|(n, _)| n == "reference").map(|(_, p)| p.clone());
    let mut candidates: Vec<u64> = Vec::new();
    match &reference {
        Some(path) => {
            let raster = ClassRaster::open(path)?;
            for window in scene.chunks {
                let codes = raster.read(*window)?;
                for (o, &c) in codes.iter().enumerate() {
                    if c != 0 {
                        let (r, col) = (window.row + o / window.cols, window.col + o % window.cols);
                        candidates.push((r * scene.grid.width + col) as u64);
                    }
                }
            }
            candidates.sort_unstable();
        }
        None => candidates = (0..scene.pixels()).collect(),
    }
    let total_candidates = candidates.len();
    // Each candidate's features and layers on the host, in the instance and in its
    // working copy, plus its pixel and position; beside the list of all candidates.
    let width = match features {
        Some(raster) => FeatureRaster::open(&scene.path(raster))?.names.len(),
        None => 0,
    };
    let available = candidates.len() as u64;
    let sample_size = scene.samples_within_budget(stage, sample_size, available, (width + layers.len()) * 4 * 3 + 20, candidates.len() * 8)?;
    if candidates.len() as u64 > sample_size {
        let mut rng = scene.rng(stage, "candidates");
        let mut keep: Vec<u64> = rand::seq::index::sample(&mut rng, candidates.len(), sample_size as usize)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        keep.sort_unstable();
        candidates = keep;
    }
    if candidates.is_empty() {
        bail!("stage '{}': no candidate pixels (the reference map has no class on this scene)", stage.id);
    }
    let features = match features {
        Some(raster) => scene.gather_features(&scene.path(raster), &candidates)?,
        None => FeatureMatrix { samples: candidates.len() as u32, names: Vec::new(), data: Vec::new() },
    };
    let mut input_layers = Vec::new();
    for (layer, path) in &layers {
        input_layers.push((layer.clone(), scene.gather_classes(path, &candidates)?));
    }
    let positions = candidates
        .iter()
        .map(|&p| ((p / scene.grid.width as u64) as u32, (p % scene.grid.width as u64) as u32))
        .collect();
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "select").next_u64()
    };
    let mut input = SampleInput { features, layers: input_layers, probabilities: None, positions, seed };
    let params = stage.params_json();
    let selection = pool
        .with(|i| i.select(&context(stage, "select"), &mut input, &params))
        .map_err(call_error(stage, &format!("selecting among {} candidates", candidates.len())))?;
    if selection.indices.len() != selection.labels.len() {
        bail!("stage '{}' returned {} indices but {} labels", stage.id, selection.indices.len(), selection.labels.len());
    }
    if let Some(bad) = selection.indices.iter().find(|&&i| i as usize >= candidates.len()) {
        bail!("stage '{}' chose candidate {bad}, but there are {}", stage.id, candidates.len());
    }
    let mut chosen: Vec<(u64, u16, usize)> =
        selection.indices.iter().zip(&selection.labels).map(|(&i, &l)| (candidates[i as usize], l, i as usize)).collect();
    chosen.sort_unstable();
    chosen.dedup_by_key(|c| c.0);
    let report = parse_report(&selection.report);

    // The samples CSV (shared convention: label name, id, group, then features).
    let names: HashMap<u16, String> =
        nomenclature.map(|n| n.classes.iter().map(|c| (c.code, c.name.clone())).collect()).unwrap_or_default();
    let csv_path = scene.run_dir().join(format!("{}.csv", stage.id));
    let features = scene.feature_ids_at(&chosen.iter().map(|c| c.0).collect::<Vec<_>>())?;
    write_samples_csv(scene, &csv_path, &input.features, &chosen, &names, features.as_deref())?;
    results.files.push(csv_path);

    // The raster of chosen labels.
    let mut per_chunk: BTreeMap<usize, Vec<(usize, u16)>> = BTreeMap::new();
    for &(p, l, _) in &chosen {
        let (chunk, offset) = scene.locate(p);
        per_chunk.entry(chunk).or_default().push((offset, l));
    }
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let mut out = Output::new(scene.partial_dir, scene.run_dir(), &name, scene.grid, PixelType::U16, style);
    for (i, window) in scene.chunks.iter().enumerate() {
        let mut labels = vec![0u16; window.pixels()];
        for &(offset, l) in per_chunk.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
            labels[offset] = l;
        }
        out.raster.write_chunk(i, *window, std::slice::from_ref(&name), &labels)?;
    }
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    results.outputs.push(out.finish(&all)?);

    let mut per_class: BTreeMap<u16, u64> = BTreeMap::new();
    for &(_, l, _) in &chosen {
        *per_class.entry(l).or_default() += 1;
    }
    let section = SceneSection {
        stage: stage.id.to_string(),
        kind: "sampler".into(),
        plugin: stage.reference(),
        summary: json!({
            "candidates": input.features.samples,
            "candidate_pixels_in_scene": total_candidates,
            "layers": layers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "selected": chosen.len(),
            "selected_per_class": per_class.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "samples_csv": format!("{}.csv", stage.id),
            "report": report,
        }),
    };
    let selected = Selected { pixels: chosen.iter().map(|c| c.0).collect(), labels: chosen.iter().map(|c| c.1).collect(), features };
    Ok((section, selected))
}

fn write_samples_csv(
    scene: &Context,
    path: &Path,
    features: &FeatureMatrix,
    chosen: &[(u64, u16, usize)],
    names: &HashMap<u16, String>,
    feature_ids: Option<&[u32]>,
) -> Result<()> {
    let mut text = String::from("label,id,group,row,col");
    let georef = scene.grid.geo_transform.is_some();
    if georef {
        text.push_str(",x,y");
    }
    for n in &features.names {
        text.push(',');
        text.push_str(n);
    }
    text.push('\n');
    let f = features.names.len();
    for (k, &(p, l, i)) in chosen.iter().enumerate() {
        let (row, col) = ((p / scene.grid.width as u64) as usize, (p % scene.grid.width as u64) as usize);
        let label = names.get(&l).cloned().unwrap_or_else(|| l.to_string());
        let group = super::sample_group(scene.grid.width, p, feature_ids.map(|ids| ids[k]));
        text.push_str(&format!("{label},{p},{group},{row},{col}"));
        if let Some(gt) = &scene.grid.geo_transform {
            let (x, y) = pixel_centre(gt, row, col);
            text.push_str(&format!(",{x},{y}"));
        }
        for k in 0..f {
            let v = features.data[i * f + k];
            if v.is_nan() {
                text.push(',');
            } else {
                text.push_str(&format!(",{v}"));
            }
        }
        text.push('\n');
    }
    Ok(crate::fsutil::write_atomic(path, text.as_bytes())?)
}

