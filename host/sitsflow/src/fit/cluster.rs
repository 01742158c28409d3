//! A clusterer's node.

use super::{Context, FitResults, call_error, context, hsv, parse_report, save_model};
use crate::graph::RasterId;
use crate::outputs::{Output, PixelType};
use crate::plan::{SampleSize, StagePlan};
use crate::raster::{ClassStyle, FeatureRaster, Window};
use crate::report::SceneSection;
use crate::runtime::StagePool;
use crate::runtime::data::FeatureMatrix;
use anyhow::{Result, bail};
use serde_json::json;
use std::collections::BTreeMap;

/// A clusterer's node: fitted on a seeded sample of `features`, then assigns every
/// pixel into `map`.
pub(super) fn run(
    scene: &Context,
    stage: &StagePlan,
    sample_size: &SampleSize,
    pool: &StagePool,
    features: Option<RasterId>,
    map: RasterId,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let Some(features) = features.map(|r| scene.path(r)) else {
        bail!("stage '{}': a clusterer needs a features raster (of one year, for per-year features)", stage.id);
    };
    let name = scene.name(map).to_string();
    let n = scene.pixels();
    // The sample on the host, in the instance, and the instance's working copy; the
    // draw itself may index every pixel.
    let width = FeatureRaster::open(&features)?.names.len();
    let m = scene.samples_within_budget(stage, sample_size, n, width * 4 * 3 + 8, n as usize * 8)?;
    let mut rng = scene.rng(stage, "fit-sample");
    let mut pixels: Vec<u64> = rand::seq::index::sample(&mut rng, n as usize, m as usize).into_iter().map(|p| p as u64).collect();
    pixels.sort_unstable();
    let sample = scene.gather_features(&features, &pixels)?;
    let params = stage.params_json();
    let fitted = pool
        .with(|i| i.fit(&context(stage, "fit"), &sample, &params))
        .map_err(call_error(stage, &format!("fitting on {m} pixels")))?;
    let report = parse_report(&fitted.report);
    results.files.push(save_model(scene.run_dir(), stage, &fitted.model, &report)?);

    let names = sample.names.clone();
    drop(sample);
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut out = Output::new(scene.partial_dir, scene.run_dir(), &name, scene.grid, PixelType::U16, None);
    let model = fitted.model;
    scene.per_chunk(
        |i, window| {
            let raster = FeatureRaster::open(&features)?;
            let matrix = FeatureMatrix { samples: window.pixels() as u32, names: names.clone(), data: raster.read(window)? };
            let assignment = pool
                .with(|inst| inst.assign(&context(stage, &format!("chunk {i}")), &model, &matrix, &params))
                .map_err(call_error(stage, &format!("assigning chunk {i} ({window})")))?;
            if assignment.clusters.len() != window.pixels() {
                bail!("stage '{}' returned {} clusters for {} pixels", stage.id, assignment.clusters.len(), window.pixels());
            }
            // Cluster c is written as c + 1: 0 stays "no cluster" (rows with missing features).
            Ok(assignment.clusters.iter().map(|&c| if c == u32::MAX { 0 } else { (c + 1).min(u16::MAX as u32) as u16 }).collect::<Vec<u16>>())
        },
        |i, window, labels| {
            for &c in &labels {
                *counts.entry(c as u32).or_default() += 1;
            }
            out.raster.write_chunk(i, window, std::slice::from_ref(&name), &labels)
        },
    )?;
    let k = counts.keys().copied().max().unwrap_or(0) as usize;
    out.raster.set_style(cluster_style(k));
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    results.outputs.push(out.finish(&all)?);
    Ok(SceneSection {
        stage: stage.id.to_string(),
        kind: "clusterer".into(),
        plugin: stage.reference(),
        summary: json!({
            "fit_pixels": m,
            "features": names,
            "pixels_per_cluster": counts.iter().filter(|(c, _)| **c > 0).map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "unassigned_pixels": counts.get(&0).copied().unwrap_or(0),
            "report": report,
        }),
    })
}


/// Distinct colours for cluster ids (golden-angle hues).
fn cluster_style(k: usize) -> ClassStyle {
    let classes = (1..=k)
        .map(|c| {
            let h = (c as f64 * 137.508) % 360.0;
            let (r, g, b) = hsv(h, 0.65, 0.9);
            (c as u16, format!("cluster {c}"), format!("#{r:02x}{g:02x}{b:02x}"))
        })
        .collect();
    ClassStyle { classes }
}

