//! A super-resolution node (`recipe = "asunet"`, seed 000): ASUNet/ME trained on dated
//! very-high-resolution annotations, then every date of the series mapped on the grid
//! `scale` times finer, with the Markov chain's consistent sequence and its changes.
//!
//! - The dataset (`.partial/patches/<id>/`, `sitsflow-patches/1` with `fine.npy`): the
//!   input's dated features (`BAND@YYYY-MM-DD`) and each annotation of the stage's
//!   `annotations` CSV read with GDAL on the finer grid (its majority class where it is
//!   finer still, the nearest where coarser).
//! - The recipe (`models/sitsflow_models/sr_cli.py`) trains the network and writes the
//!   seed's tables into metrics.json: per annotation date, the HR date and accuracy; the
//!   λ ablation; consistency with and without the Markov chain; mixed 10 m pixels against
//!   nearest-upsampled 10 m maps.
//! - Maps, tile by tile (`segment::Tiling`, the context reflected at the scene's edges):
//!   for each date, the window of dates ending there and its month through ONNX Runtime
//!   → transition probabilities on the finer grid; each date's own label (the most
//!   probable "to" class) goes to `<id>_dates` (a band per date), and the Viterbi forward
//!   pass runs date by date over the tile's pixels (`T × K` back-pointers, never every
//!   date's probabilities); its back-tracking gives `<id>_markov` (a band per date) and
//!   the count of changes along it, `<id>_changes`.

use super::{Context, FitResults};
use crate::graph::RasterId;
use crate::inference::Model;
use crate::outputs::{Output, PixelType};
use crate::plan::{Annotation, RecipePlan, StagePlan};
use crate::raster::{ClassStyle, FeatureRaster, Window};
use crate::report::SceneSection;
use crate::segment::{Tiling, tile_input};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

/// The rasters the node reads and writes (`FitIo::SuperResolve`).
pub(super) struct Io {
    pub features: Option<RasterId>,
    pub dates: RasterId,
    pub markov: RasterId,
    pub changes: RasterId,
}

pub(super) fn run(
    scene: &Context,
    stage: &StagePlan,
    recipe: &RecipePlan,
    annotations: &[Annotation],
    scale: usize,
    io: &Io,
    nomenclature: Option<&crate::config::Nomenclature>,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let id = stage.id.as_str();
    let Some(features) = io.features else {
        bail!("stage '{id}': its input has no features raster of every date");
    };
    let features_path = scene.path(features);
    let (width, height) = (scene.grid.width, scene.grid.height);
    let fine_grid = scene.grid.scaled(scale);
    let mut read = Vec::with_capacity(annotations.len());
    let mut styles: Vec<(u16, String, String)> = Vec::new();
    for a in annotations {
        let (codes, style) = crate::raster::read_classes_on(&a.path, &fine_grid)
            .map_err(|e| anyhow!("stage '{id}': the annotation of {}: {e:#}", a.date))?;
        if codes.iter().all(|&c| c == 0) {
            bail!("stage '{id}': the annotation of {} ({}) has no class on the scene", a.date, a.path.display());
        }
        for s in style {
            if !styles.iter().any(|k| k.0 == s.0) {
                styles.push(s);
            }
        }
        read.push((a.date.clone(), codes));
    }
    // Names and colours the annotations lack come from the pipeline's nomenclature.
    if let Some(n) = nomenclature {
        for s in n.styles() {
            if !styles.iter().any(|k| k.0 == s.0) {
                styles.push(s);
            }
        }
    }
    let names: Vec<(u16, String)> = styles.iter().map(|(c, n, _)| (*c, n.clone())).collect();
    let dataset = scene.partial_dir.join("patches").join(id);
    crate::segment::write_sr_dataset(&dataset, &features_path, scene.chunks, width, height, &read, scale, &names)
        .with_context(|| format!("stage '{id}': writing its dataset"))?;
    drop(read);

    let out = scene.run_dir().join("models").join(id);
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "recipe").next_u64() >> 1
    };
    let params = &stage.params;
    let data = crate::train::TrainData::Patches(dataset.clone());
    let mut request = crate::network::request(recipe, id, data, None, out.clone(), seed, params)?;
    request.extra.extend(crate::network::flags(params, &[("smoothness", "--smoothness"), ("valid_days", "--valid-days")]));
    if let Some(split) = params.get("split").and_then(Value::as_str) {
        request.extra.extend(["--split".to_string(), split.to_string()]);
    }
    if let Some(dates) = params.get("test_dates").and_then(Value::as_array) {
        let list: Vec<&str> = dates.iter().filter_map(Value::as_str).collect();
        request.extra.extend(["--test-dates".to_string(), list.join(",")]);
    }
    for flag in ["ablation", "baseline"] {
        if params.get(flag).and_then(Value::as_bool) == Some(true) {
            request.extra.push(format!("--{flag}"));
        }
    }
    let trained = crate::network::run_recipe(recipe, id, &request)?;
    let meta_json = dataset.join("dataset.json");
    crate::fsutil::write_atomic(&out.join("dataset.json"), &std::fs::read(&meta_json).with_context(|| format!("reading {}", meta_json.display()))?)?;

    let model = trained.model.clone();
    let raster = FeatureRaster::open(&features_path)?;
    let style = (!styles.is_empty()).then(|| ClassStyle { classes: styles.clone() });
    let mut maps = Maps::new(scene, io, scale, style)?;
    let tiling = predict(scene, stage, &model, &raster, scale, &mut maps)?;
    let cores: Vec<(usize, Window)> = tiling.cores(width, height).into_iter().enumerate().collect();
    for output in [&mut maps.dates, &mut maps.markov, &mut maps.changes] {
        results.outputs.push(output.finish(&cores)?);
    }
    let (path, device) = (model.path().to_path_buf(), model.device());
    drop(model);
    let mut report = trained.report;
    drop(trained.model);
    Model::unload(&path, device);
    report["tiling"] = json!({
        "tile": tiling.side(width, height),
        "overlap": tiling.overlap,
        "tiles": cores.len(),
        "blend": "centre crop",
        "scale": scale,
    });
    for f in ["metrics.json", "model.json", "dataset.json"] {
        let file = out.join(f);
        if file.is_file() {
            results.files.push(file);
        }
    }
    results.files.push(out.join("model.onnx"));
    results.files.push(out.join("model.pt"));
    Ok(SceneSection {
        stage: id.to_string(),
        kind: "super-resolver".into(),
        plugin: stage.reference(),
        summary: json!({
            "annotations": annotations.iter().map(|a| json!({ "date": a.date, "path": a.path.display().to_string() })).collect::<Vec<_>>(),
            "scale": scale,
            "outputs": { "dates": scene.name(io.dates), "markov": scene.name(io.markov), "changes": scene.name(io.changes) },
            "training": report,
        }),
    })
}

/// The three outputs on the finer grid.
struct Maps {
    dates: Output,
    markov: Output,
    changes: Output,
}

impl Maps {
    fn new(scene: &Context, io: &Io, scale: usize, style: Option<ClassStyle>) -> Result<Maps> {
        let output = |raster: RasterId, style: Option<ClassStyle>| {
            Output::on_scaled_grid(scene.partial_dir, scene.run_dir(), scene.name(raster), scene.grid, scale, PixelType::U16, style)
        };
        Ok(Maps {
            dates: output(io.dates, style.clone()),
            markov: output(io.markov, style),
            changes: output(io.changes, None),
        })
    }
}

/// Maps every date tile by tile into `maps`; returns the tiling used.
fn predict(scene: &Context, stage: &StagePlan, model: &Model, raster: &FeatureRaster, scale: usize, maps: &mut Maps) -> Result<Tiling> {
    let id = stage.id.as_str();
    let meta = model.metadata().ok_or_else(|| anyhow!("stage '{id}': {} has no model.json", model.path().display()))?;
    let (width, height) = (scene.grid.width, scene.grid.height);
    let channels: Vec<usize> = meta
        .input
        .channels
        .iter()
        .map(|c| {
            raster.names.iter().position(|n| n == c).ok_or_else(|| anyhow!("stage '{id}': {} has no band '{c}'", raster.path.display()))
        })
        .collect::<Result<_>>()?;
    let (bands, dates) = (meta.input.bands.len(), meta.input.dates.clone());
    let t_count = dates.len();
    if bands * t_count != channels.len() || t_count == 0 {
        bail!("stage '{id}': {} lists {} channels for {bands} bands × {t_count} dates", model.path().display(), channels.len());
    }
    let hp = meta.hyperparameters.clone().unwrap_or_default();
    let window = hp["window"].as_u64().unwrap_or(3) as usize;
    let codes: Vec<u16> = meta.output.classes.iter().map(|c| c.code).collect();
    let k = codes.len();
    let months: Vec<f32> = dates.iter().map(|d| crate::raster::parse_date(d).map_or(0.0, |(_, m, _)| m as f32)).collect();
    let tile = stage.params.get("tile").and_then(Value::as_u64).map(|t| t as usize).or(meta.tiling.as_ref().and_then(|t| t["tile"].as_u64()).map(|t| t as usize)).unwrap_or(512);
    let overlap = stage.params.get("overlap").and_then(Value::as_u64).map(|t| t as usize).or(meta.tiling.as_ref().and_then(|t| t["overlap"].as_u64()).map(|t| t as usize)).unwrap_or(16);
    let multiple = meta.input.multiple.unwrap_or(1);
    let mut tiling = Tiling::new(tile, overlap, multiple).with_context(|| format!("stage '{id}': tiling"))?;
    // Per tile: the cube of every date, one date's window and its transitions on the
    // finer grid (×4 for the decoder's activations), and per core pixel the back-pointers
    // and both label sequences.
    let width_fine = hp["width"].as_u64().unwrap_or(32) as usize;
    let bytes = |side: usize| {
        let fine = side * side * scale * scale;
        4 * side * side * (t_count * bands + 2 * window * (bands + 1) + 10 * width_fine) + 4 * fine * (2 * k * k + 4 * 8) + fine * t_count * (k + 4)
    };
    let budget = scene.tile_budget_bytes();
    while bytes(tiling.side(width, height)) > budget && tiling.tile > 2 * tiling.overlap + multiple {
        let smaller = (tiling.tile / 2).max(2 * tiling.overlap + multiple).div_ceil(multiple) * multiple;
        log::info!("stage '{id}': a {} px tile needs {} MiB, over the {} MiB budget: using {smaller} px tiles", tiling.tile, bytes(tiling.side(width, height)) >> 20, budget >> 20);
        tiling.tile = smaller;
    }
    let side = tiling.side(width, height);
    let cores = tiling.cores(width, height);
    log::info!("stage '{id}': mapping {t_count} dates on the {scale}× grid by {side} px tiles ({} tiles) on {}", cores.len(), model.provider().ort_name());
    let input_name = meta.input.name.clone();
    let fine_side = side * scale;
    let plane = side * side;
    let date_names: Vec<String> = dates.clone();
    for (index, core) in cores.iter().enumerate() {
        let cube = tile_input(raster, &channels, width, height, core, &tiling)?;
        let (rows, cols) = (core.rows * scale, core.cols * scale);
        let p_count = rows * cols;
        let mut labels = vec![0u16; t_count * p_count];
        let mut back = vec![0u8; t_count * k * p_count];
        let mut score = vec![0f32; k * p_count];
        let mut next = vec![0f32; k * p_count];
        let mut x = Vec::with_capacity(window * bands * plane);
        for t in 0..t_count {
            x.clear();
            for w in 0..window {
                let d = (t + 1 + w).saturating_sub(window);
                x.extend_from_slice(&cube[d * bands * plane..(d + 1) * bands * plane]);
            }
            let outputs = model
                .run(vec![(input_name.clone(), vec![1, window * bands, side, side], x.clone()), ("month".to_string(), vec![1], vec![months[t]])])
                .map_err(|e| anyhow!("stage '{id}': date {}: {e}", date_names[t]))?;
            let (_, shape, p) = outputs.into_iter().next().ok_or_else(|| anyhow!("stage '{id}': the model gave no output"))?;
            if shape != [1, k * k, fine_side, fine_side] {
                bail!("stage '{id}': {} returned {shape:?}, expected [1, {}, {fine_side}, {fine_side}]", model.path().display(), k * k);
            }
            let at = |ch: usize, r: usize, c: usize| p[ch * fine_side * fine_side + (tiling.overlap * scale + r) * fine_side + tiling.overlap * scale + c];
            for r in 0..rows {
                for c in 0..cols {
                    let q = r * cols + c;
                    // Each date's own label: the most probable "to" class.
                    let mut best = (0usize, f32::NEG_INFINITY);
                    for j in 0..k {
                        let m: f32 = (0..k).map(|i| at(i * k + j, r, c)).sum();
                        if m > best.1 {
                            best = (j, m);
                        }
                    }
                    labels[t * p_count + q] = codes[best.0];
                    // The Viterbi forward pass: score_t(j) = max_i score_{t−1}(i) + log p_t(i → j).
                    for j in 0..k {
                        let mut top = (0usize, f32::NEG_INFINITY);
                        for i in 0..k {
                            let lp = at(i * k + j, r, c).max(1e-12).ln();
                            let s = if t == 0 { lp } else { score[i * p_count + q] + lp };
                            if s > top.1 {
                                top = (i, s);
                            }
                        }
                        next[j * p_count + q] = top.1;
                        back[(t * k + j) * p_count + q] = top.0 as u8;
                    }
                }
            }
            std::mem::swap(&mut score, &mut next);
        }
        // Back-tracking: the last date's best state, then each back-pointer.
        let mut markov = vec![0u16; t_count * p_count];
        let mut changes = vec![0u16; p_count];
        for q in 0..p_count {
            // The first best state, as NumPy's argmax picks it.
            let mut state = 0;
            for j in 1..k {
                if score[j * p_count + q] > score[state * p_count + q] {
                    state = j;
                }
            }
            for t in (0..t_count).rev() {
                markov[t * p_count + q] = codes[state];
                if t > 0 {
                    let previous = back[(t * k + state) * p_count + q] as usize;
                    changes[q] += (previous != state) as u16;
                    state = previous;
                }
            }
        }
        let fine_core = core.scaled(scale);
        maps.dates.raster.write_chunk(index, fine_core, &date_names, &labels)?;
        maps.markov.raster.write_chunk(index, fine_core, &date_names, &markov)?;
        maps.changes.raster.write_chunk(index, fine_core, &["changes".to_string()], &changes)?;
    }
    Ok(tiling)
}
