//! A segmentation labeller's node (`recipe = "fg-unet"`, seed 004): a patch dataset from
//! the sampler's selection and the features raster, the recipe trained on it (a
//! subprocess; under torchrun with `nproc_per_node = N`), then every map predicted by
//! overlapping tiles through ONNX Runtime (`crate::segment`).
//!
//! With `vhr = "…"` the dataset carries that very-high-resolution image (read with GDAL
//! on the scene's grid made `vhr_scale` times finer), the recipe trains its fusion
//! network beside the series-only one, and every map is predicted from both images of
//! its year (seed 003).
//!
//! Its report section has the shape of any labeller's, held-out metrics included: the
//! held-out pixels are read from the map it predicts, so a random forest beside it on
//! the same sampler with `holdout_by = "polygons"` is assessed on the same pixels.

use super::label::{
    Fit, LabellerPlan, Trained, consistency, selected, split_selection, stored_network,
    write_evaluation,
};
use super::{Context, FitResults, Selected};
use crate::config::Nomenclature;
use crate::eval::Confusion;
use crate::inference::Model;
use crate::outputs::{Output, PixelType};
use crate::plan::{RecipePlan, Training};
use crate::raster::{ClassStyle, FeatureRaster, Window};
use crate::report::SceneSection;
use crate::segment::{Network, SparseLabels, Vhr};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::HashMap;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    scene: &Context,
    labeller: &LabellerPlan,
    recipe: &RecipePlan,
    training: &Training,
    selections: &HashMap<String, Selected>,
    nomenclature: Option<&Nomenclature>,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let stage = labeller.stage;
    let (width, height) = (scene.grid.width, scene.grid.height);
    let vhr_template = match &stage.role {
        crate::plan::Role::Labeller { vhr, .. } => vhr.clone(),
        _ => None,
    };
    let vhr_scale = stage.params.get("vhr_scale").and_then(Value::as_u64).map(|s| s as usize);
    // The VHR image of a map's year (`{year}` in the path).
    let vhr_path = |year: Option<i32>| -> Result<Option<std::path::PathBuf>> {
        let Some(template) = &vhr_template else { return Ok(None) };
        let text = template.display().to_string();
        let path = match year {
            Some(y) => std::path::PathBuf::from(text.replace("{year}", &y.to_string())),
            None if text.contains("{year}") => bail!("stage '{}': its VHR image {text} names a year, and its features have none", stage.id),
            None => template.clone(),
        };
        if !path.is_file() {
            bail!("stage '{}': the VHR image {} does not exist", stage.id, path.display());
        }
        Ok(Some(path))
    };
    // Every map's image is there before anything is trained.
    for target in labeller.maps {
        vhr_path(target.year)?;
    }
    // … read on the scene's grid made finer.
    let open_vhr = |year: Option<i32>| -> Result<Option<Vhr>> {
        let Some(path) = vhr_path(year)? else { return Ok(None) };
        Vhr::open(&path, scene.grid, vhr_scale).map(Some).map_err(|e| anyhow!("stage '{}': {e:#}", stage.id))
    };
    // (model, report, split, held-out pixels with their reference class)
    let (mut fit, test): (Fit, HashMap<u64, u16>) = match training {
        Training::Stored(path) => (stored_network(scene, stage, recipe, path)?, HashMap::new()),
        Training::Csv(_) => unreachable!("Plan::resolve refuses a samples CSV for a recipe labeller"),
        Training::ActiveLearning { .. } => {
            bail!(
                "stage '{}': fg-unet learns from a sampler's selection; active learning is for pixel labellers",
                stage.id
            )
        }
        Training::Samples(samples) => {
            let maps = labeller.training_maps();
            let [target] = maps.as_slice() else {
                bail!(
                    "stage '{}': fg-unet trains on one scene's features, and its input is per year: pick the year with `year = …`",
                    stage.id
                );
            };
            let selected = selected(selections, stage, samples)?;
            let split = split_selection(scene, labeller, samples, selected);
            let class_names: Vec<(u16, String)> = nomenclature
                .map(|n| n.classes.iter().map(|c| (c.code, c.name.clone())).collect())
                .unwrap_or_default();
            let dataset = scene.partial_dir.join("patches").join(stage.id.as_str());
            let features = scene.path(target.features);
            let vhr = open_vhr(target.year)?;
            crate::segment::write_dataset(
                &dataset,
                &features,
                vhr.as_ref(),
                scene.chunks,
                width,
                height,
                &SparseLabels {
                    pixels: &selected.pixels,
                    labels: &selected.labels,
                    groups: &split.groups,
                    test_groups: &split.test_groups(),
                    classes: &class_names,
                    split_rule: split.rule.clone(),
                },
            )
            .with_context(|| format!("stage '{}': writing its patch dataset", stage.id))?;
            let (model, report) = train(scene, stage, recipe, &dataset)?;
            let test: HashMap<u64, u16> = selected
                .pixels
                .iter()
                .zip(&selected.labels)
                .zip(&split.test)
                .filter(|(_, t)| **t)
                .map(|((p, l), _)| (*p, *l))
                .collect();
            let train_samples = split.test.iter().filter(|t| !**t).count() as u32;
            let fit = Fit {
                model: Trained::Network(model),
                training: report,
                held_out: Value::Null,
                split: split.to_json(&labeller.holdout, train_samples, test.len() as u32),
                training_years: labeller.year.map_or(Value::Null, |y| json!([y])),
                learning_curve: Value::Null,
            };
            (fit, test)
        }
    };
    let Trained::Network(model) = &fit.model else {
        unreachable!("a recipe trains a network")
    };
    let model = model.clone();
    let Some(first) = labeller.maps.first() else {
        bail!("stage '{}': no features raster to predict on", stage.id);
    };
    let params = &stage.params;
    let first_raster = FeatureRaster::open(&scene.path(first.features))?;
    let size = |key: &str| params.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let first_vhr = open_vhr(first.year)?;
    let mut network = Network::new(&model, &first_raster, first_vhr.as_ref(), size("tile"), size("overlap"))
        .map_err(|e| anyhow!("stage '{}': {e:#}", stage.id))?;
    drop(first_vhr);
    let batch = network.fit_budget(width, height, scene.tile_budget_bytes());
    log::info!(
        "stage '{}': predicting by {} px tiles overlapping by {} px, {batch} per batch, on {}",
        stage.id,
        network.tiling.side(width, height),
        network.tiling.overlap,
        model.provider().ort_name()
    );
    let cores: Vec<(usize, Window)> = network
        .tiling
        .cores(width, height)
        .into_iter()
        .enumerate()
        .collect();
    let style = nomenclature.map(|n| ClassStyle {
        classes: n.styles(),
    });
    let k = network.classes.len();
    let mut pairs: (Vec<u16>, Vec<u16>) = (Vec::new(), Vec::new());
    let mut maps = Vec::new();
    // The VHR image each map was predicted with, and what generated it (if a tool did).
    let mut vhr_used: Vec<Value> = Vec::new();
    for target in labeller.maps {
        let raster = FeatureRaster::open(&scene.path(target.features))?;
        let vhr = open_vhr(target.year)?;
        if let Some(v) = &vhr {
            let generated = crate::raster::generated_by(&v.raster.path);
            vhr_used.push(json!({
                "year": target.year,
                "path": v.raster.path.display().to_string(),
                "scale": v.scale,
                "bands": v.raster.names,
                "generated": generated,
            }));
        }
        let name = scene.name(target.map).to_string();
        let mut map = Output::new(
            scene.partial_dir,
            scene.run_dir(),
            &name,
            scene.grid,
            PixelType::U16,
            style.clone(),
        );
        let mut confidence = Output::new(
            scene.partial_dir,
            scene.run_dir(),
            scene.name(target.confidence),
            scene.grid,
            PixelType::F32,
            None,
        );
        let mut posteriors = target.proba.map(|p| {
            Output::new(
                scene.partial_dir,
                scene.run_dir(),
                scene.name(p),
                scene.grid,
                PixelType::F32,
                None,
            )
        });
        let band_names: Vec<String> = network.classes.iter().map(|c| format!("p:{c}")).collect();
        let assess = labeller.year.is_none_or(|y| target.year == Some(y)) && !test.is_empty();
        network
            .predict(&raster, vhr.as_ref(), width, height, batch, |tile| {
                let n = tile.core.pixels();
                let mut labels = vec![0u16; n];
                let mut best = vec![f32::NAN; n];
                for (p, (label, best)) in labels.iter_mut().zip(best.iter_mut()).enumerate() {
                    for j in 0..k {
                        let v = tile.data[j * n + p];
                        if v > *best || best.is_nan() {
                            *best = v;
                            *label = network.classes[j];
                        }
                    }
                }
                if assess {
                    for r in 0..tile.core.rows {
                        for c in 0..tile.core.cols {
                            let pixel = ((tile.core.row + r) * width + tile.core.col + c) as u64;
                            if let Some(&reference) = test.get(&pixel) {
                                pairs.0.push(reference);
                                pairs.1.push(labels[r * tile.core.cols + c]);
                            }
                        }
                    }
                }
                map.raster.write_chunk(
                    tile.index,
                    tile.core,
                    std::slice::from_ref(&name),
                    &labels,
                )?;
                confidence.raster.write_chunk(
                    tile.index,
                    tile.core,
                    &["confidence".to_string()],
                    &best,
                )?;
                if let Some(out) = posteriors.as_mut() {
                    out.raster
                        .write_chunk(tile.index, tile.core, &band_names, &tile.data)?;
                }
                Ok(())
            })
            .with_context(|| format!("stage '{}': predicting {name}", stage.id))?;
        let finished = map.finish(&cores)?;
        maps.push(finished.clone());
        results.outputs.push(finished);
        results.outputs.push(confidence.finish(&cores)?);
        if let Some(out) = posteriors.as_mut() {
            results.files.push(out.finish(&cores)?);
        }
    }
    if !pairs.0.is_empty() {
        let confusion = Confusion::from_pairs(&pairs.0, &pairs.1);
        fit.held_out = json!({ "metrics": confusion.metrics(), "confusion": confusion });
    }
    if !vhr_used.is_empty() {
        fit.training["vhr"] = json!({
            "images": vhr_used,
            "generated": vhr_used.iter().any(|v| v["generated"].is_string()),
            "fusion": "one encoder per modality (FG-UNet over the series, a VHR encoder pooling down to the series' grid), fused late",
        });
    }
    fit.training["tiling"] = json!({
        "tile": network.tiling.side(width, height),
        "overlap": network.tiling.overlap,
        "tiles": cores.len(),
        "batch": batch,
        "blend": "centre crop",
        "device": model.provider().ort_name(),
    });
    // The session's arena holds a tile's activations: free it before the next node.
    let (path, device) = (model.path().to_path_buf(), model.device());
    drop(network);
    drop(model);
    let mut summary = write_evaluation(scene, stage, &fit, nomenclature, results)?;
    drop(fit);
    Model::unload(&path, device);
    let dataset_json = path.with_file_name("dataset.json");
    if dataset_json.is_file() {
        results.files.push(dataset_json);
    }
    if maps.len() > 1 {
        summary["consistency"] = consistency(&scene.years, &maps, nomenclature)?;
    }
    Ok(SceneSection {
        stage: stage.id.to_string(),
        kind: "labeller".into(),
        plugin: stage.reference(),
        summary,
    })
}

/// Trains the recipe on the patch dataset `dataset` into `<run>/models/<id>/`.
fn train(
    scene: &Context,
    stage: &crate::plan::StagePlan,
    recipe: &RecipePlan,
    dataset: &std::path::Path,
) -> Result<(std::sync::Arc<Model>, Value)> {
    let out = scene.run_dir().join("models").join(stage.id.as_str());
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "recipe").next_u64() >> 1
    };
    let data = crate::train::TrainData::Patches(dataset.to_path_buf());
    let mut request = crate::network::request(recipe, stage.id.as_str(), data, None, out.clone(), seed, &stage.params)?;
    if let crate::plan::Role::Labeller { pretrained: Some(encoder), .. } = &stage.role {
        // Staged by the pretraining node, which the graph runs before this one.
        let checkpoint = scene.run_dir().join("models").join(encoder.as_str()).join("model.pt");
        if !checkpoint.is_file() {
            bail!("stage '{}': the encoder of stage '{encoder}' is missing ({})", stage.id, checkpoint.display());
        }
        request.extra.extend(["--encoder".to_string(), checkpoint.display().to_string()]);
    }
    let network = crate::network::run_recipe(recipe, stage.id.as_str(), &request)?;
    // The dataset's description (channels, classes, split) goes with the model; the cube
    // stays in .partial/.
    let meta = dataset.join("dataset.json");
    crate::fsutil::write_atomic(&out.join("dataset.json"), &std::fs::read(&meta).with_context(|| format!("reading {}", meta.display()))?)?;
    Ok((network.model, network.report))
}
