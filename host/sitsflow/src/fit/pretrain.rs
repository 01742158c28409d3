//! A pretraining node (`recipe = "simclr"`, seed 003): FG-UNet's encoder trained
//! self-supervised on views of patches of the scene.
//!
//! The host draws the patches (seeded positions anywhere in the scene: every patch of
//! the input, labelled or not, is in the pool; per-year features pool every year), reads
//! them from the staged features raster, has the augmenter stage — a sandboxed component,
//! swappable per region — make two views of each, and streams them to the recipe on its
//! standard input in the `sitsflow-views/1` contract (`models/sitsflow_models/ssl.py`):
//! a JSON header (channels, patch, epochs, batch size, the channels' mean and standard
//! deviation), then per batch a JSON line and the two views as float32. The views are
//! made on the run's workers while the recipe trains on the previous batches; the bounded
//! channel and the pipe hold the stream back when the recipe is slower, so memory holds a
//! few batches whatever the number of epochs.
//!
//! The encoder (`models/<id>/model.onnx`, its checkpoint `model.pt`, `model.json`,
//! `metrics.json`) is what an `fg-unet` labeller with `pretrained = "<id>"` starts from.

use super::{Context, FitResults, call_error};
use crate::graph::RasterId;
use crate::plan::{RecipePlan, StagePlan};
use crate::raster::{FeatureRaster, Window};
use crate::report::SceneSection;
use crate::runtime::data::PatchBatch;
use crate::runtime::{CallContext, StagePool};
use anyhow::{Context as _, Result, bail};
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The contract of the views stream.
pub const VIEWS_CONTRACT: &str = "sitsflow-views/1";

/// Patches read to estimate the channels' mean and standard deviation.
const STATISTICS_PATCHES: usize = 128;

/// One patch: which raster (year), where, and its augmentation seed.
#[derive(Debug, Clone, Copy)]
struct Draw {
    raster: usize,
    row: usize,
    col: usize,
    seed: u64,
}

/// What the node reads and writes (its `FitIo::Pretrain`).
pub(super) struct Io<'a> {
    /// The rasters whose patches it trains on.
    pub features: &'a [RasterId],
    /// Every features raster of its input, and the embeddings raster of each.
    pub sources: &'a [RasterId],
    pub embeddings: &'a [RasterId],
}

pub(super) fn run(
    scene: &Context,
    stage: &StagePlan,
    recipe: &RecipePlan,
    views: &StagePlan,
    io: &Io,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let features = io.features;
    let id = stage.id.as_str();
    let param = |key: &str, default: u64| stage.params.get(key).and_then(Value::as_u64).unwrap_or(default) as usize;
    let (epochs, per_epoch, batch_size, patch) =
        (param("epochs", 20), param("batches_per_epoch", 32), param("batch_size", 16), param("patch", 40));
    let depth = stage.params.pointer("/hyperparameters/depth").and_then(Value::as_u64).unwrap_or(2) as u32;
    if patch % (1 << depth) != 0 {
        bail!("stage '{id}': patch {patch} is not a multiple of {} (2^depth: the encoder's poolings)", 1 << depth);
    }
    let (width, height) = (scene.grid.width, scene.grid.height);
    if patch > width || patch > height {
        bail!("stage '{id}': patch {patch} px is larger than the scene ({width} × {height} px)");
    }
    let Some(&first) = features.first() else {
        bail!("stage '{id}': no features raster to draw patches from");
    };
    let paths: Vec<_> = features.iter().map(|&r| scene.path(r)).collect();
    let names = FeatureRaster::open(&paths[0])?.names;
    for path in &paths[1..] {
        let other = FeatureRaster::open(path)?.names;
        if other != names {
            bail!(
                "stage '{id}': {} has {} features and {} has {} (or other names): the years it pools need the same dates × bands (give `year = …`)",
                paths[0].display(),
                names.len(),
                path.display(),
                other.len()
            );
        }
    }
    let (bands, dates) = crate::network::grid_axes(&format!("stage '{id}' ({})", scene.name(first)), &names)?;
    // The augmenter takes date-major planes (every band of a date, date after date) and
    // varies some steps per date; the raster's own order (that of the dataset an fg-unet
    // fine-tunes on, so that of the encoder's first layer) is kept in the stream.
    let date_major: Vec<usize> = dates
        .iter()
        .flat_map(|d| bands.iter().map(move |b| format!("{b}@{d}")))
        .map(|want| names.iter().position(|n| *n == want).expect("grid_axes checked the full grid"))
        .collect();
    let (bands, dates): (Vec<String>, Vec<String>) =
        (bands.iter().map(|b| b.to_string()).collect(), dates.iter().map(|d| d.to_string()).collect());
    let channels: Vec<usize> = (0..names.len()).collect();

    // The patches of batch `b`, from a generator seeded by the run, the stage and `b`:
    // the stream is the same whatever the worker count, and nothing is held for the
    // batches not yet made.
    let total = epochs * per_epoch * batch_size;
    let draws_of = |b: usize| -> Vec<Draw> {
        let mut rng = scene.rng(stage, &format!("patches of batch {b}"));
        (0..batch_size)
            .map(|_| Draw {
                raster: rng.random_range(0..paths.len()),
                row: rng.random_range(0..=height - patch),
                col: rng.random_range(0..=width - patch),
                seed: rng.next_u64(),
            })
            .collect()
    };
    let window = |d: &Draw| Window { row: d.row, col: d.col, rows: patch, cols: patch };

    // The channels' statistics (NaN ignored) over the first patches: the encoder's input
    // normalisation, recorded in its graph.
    let (mean, std) = {
        let rasters: Vec<FeatureRaster> = paths.iter().map(|p| FeatureRaster::open(p)).collect::<Result<_>>()?;
        let c = names.len();
        let (mut sum, mut sq, mut n) = (vec![0f64; c], vec![0f64; c], vec![0u64; c]);
        let first_patches = (0..epochs * per_epoch).flat_map(&draws_of).take(STATISTICS_PATCHES);
        for d in first_patches {
            let planes = rasters[d.raster].read_planes(window(&d), &channels)?;
            for (k, plane) in planes.chunks_exact(patch * patch).enumerate() {
                for &v in plane.iter().filter(|v| !v.is_nan()) {
                    sum[k] += v as f64;
                    sq[k] += v as f64 * v as f64;
                    n[k] += 1;
                }
            }
        }
        if let Some(k) = n.iter().position(|&n| n == 0) {
            bail!("stage '{id}': feature '{}' has no valid value in the {STATISTICS_PATCHES} patches drawn for its statistics", names[k]);
        }
        let mean: Vec<f64> = sum.iter().zip(&n).map(|(s, &n)| s / n as f64).collect();
        let std: Vec<f64> = sq
            .iter()
            .zip(&n)
            .zip(&mean)
            .map(|((q, &n), m)| (q / n as f64 - m * m).max(0.0).sqrt())
            .map(|s| if s > 0.0 { s } else { 1.0 })
            .collect();
        (mean, std)
    };

    let crate::plan::Executor::Plugin(augmenter) = &views.executor else {
        unreachable!("Plan::resolve makes augmenter stages plugins")
    };
    let pool = StagePool::with_models(augmenter.clone(), views.limits, scene.models.clone())
        .seeded(scene.plan.seed)
        .sharing(&scene.guest_memory);
    let augment_params = views.params_json();
    let header = json!({
        "contract": VIEWS_CONTRACT,
        "channels": names,
        "bands": bands,
        "dates": dates,
        "patch": patch,
        "epochs": epochs,
        "batches_per_epoch": per_epoch,
        "batch_size": batch_size,
        "mean": mean,
        "std": std,
        "source": {
            "rasters": features.iter().map(|&r| scene.name(r)).collect::<Vec<_>>(),
            "augmenter": views.reference(),
            "augmenter_params": views.params,
        },
    });

    let out = scene.run_dir().join("models").join(id);
    crate::network::fresh_output(&out)?;
    let seed = stage.params.get("seed").and_then(Value::as_u64).unwrap_or_else(|| scene.rng(stage, "recipe").next_u64() >> 1);
    let extra = crate::network::flags(
        &stage.params,
        &[
            ("temperature", "--temperature"),
            ("learning_rate", "--learning-rate"),
            ("momentum", "--momentum"),
            ("projection_dim", "--projection-dim"),
            ("threads", "--threads"),
            ("hyperparameters", "--hyperparameters"),
        ],
    );
    let request = crate::train::TrainRequest {
        data: crate::train::TrainData::Views,
        distributed: crate::train::Distributed::default(),
        test: None,
        classes: None,
        arch: recipe.arch.clone(),
        out: out.clone(),
        seed,
        epochs: None,
        extra,
    };

    let augment_nanos = AtomicU64::new(0);
    let bytes_per_view = 4 * batch_size * names.len() * patch * patch;
    let mut blocked = std::time::Duration::ZERO;
    let started = Instant::now();
    let batches: Vec<usize> = (0..epochs * per_epoch).collect();
    let mut feed = |stdin: &mut dyn Write| -> Result<()> {
        stdin.write_all(format!("{header}\n").as_bytes())?;
        // Batches arrive in any order from the workers; they are written in order.
        let mut waiting: BTreeMap<usize, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
        let mut next = 0;
        let outcome = crate::chunks::for_each(
            scene.workers,
            &batches,
            crate::chunks::OnFailure::Stop,
            || paths.iter().map(|p| FeatureRaster::open(p)).collect::<Result<Vec<_>>>(),
            |rasters, b| -> Result<(Vec<f32>, Vec<f32>)> {
                let mine = draws_of(b);
                let mut data = Vec::with_capacity(bytes_per_view / 4);
                for d in &mine {
                    data.extend(rasters[d.raster].read_planes(window(d), &date_major)?);
                }
                let batch = PatchBatch {
                    count: batch_size as u32,
                    dates: dates.clone(),
                    bands: bands.clone(),
                    rows: patch as u32,
                    cols: patch as u32,
                    data,
                    seeds: mine.iter().map(|d| d.seed).collect(),
                };
                let context = CallContext { stage: views.id.to_string(), chunk: format!("batch {b}") };
                let t = Instant::now();
                let pair = pool
                    .with(|i| i.augment(&context, &batch, &augment_params))
                    .map_err(call_error(views, &format!("making the views of batch {b} for stage '{id}'")))?;
                augment_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if pair.first.len() != batch.data.len() || pair.second.len() != batch.data.len() {
                    bail!(
                        "stage '{}' ({}) returned views of {} and {} values for {} patch values",
                        views.id,
                        views.reference(),
                        pair.first.len(),
                        pair.second.len(),
                        batch.data.len()
                    );
                }
                Ok((raster_order(&pair.first, &date_major, patch * patch), raster_order(&pair.second, &date_major, patch * patch)))
            },
            |b, pair| {
                waiting.insert(b, pair);
                while let Some((first, second)) = waiting.remove(&next) {
                    let t = Instant::now();
                    let frame = json!({ "batch": next, "epoch": next / per_epoch, "count": batch_size });
                    stdin.write_all(format!("{frame}\n").as_bytes())?;
                    for view in [&first, &second] {
                        let bytes: Vec<u8> = view.iter().flat_map(|v| v.to_le_bytes()).collect();
                        stdin.write_all(&bytes)?;
                    }
                    blocked += t.elapsed();
                    next += 1;
                }
                Ok(())
            },
        );
        if let Some((b, e)) = outcome.failures.into_iter().next() {
            return Err(e.context(format!("batch {b} of the views")));
        }
        outcome.error.map_or(Ok(()), Err)?;
        stdin.write_all(b"{\"end\": true}\n")?;
        Ok(())
    };
    let progress = crate::network::epoch_logger(id, &recipe.arch, |e| format!("NT-Xent {}", crate::network::shown(e, "train_loss")));
    let trained =
        crate::train::pretrain(&request, &recipe.pythonpath, progress, &mut feed).with_context(|| format!("stage '{id}'"))?;
    let seconds = started.elapsed().as_secs_f64();
    for file in crate::network::FILES.iter().chain(&["embeddings.onnx", "embeddings.json"]) {
        let path = out.join(file);
        if path.is_file() {
            results.files.push(path);
        }
    }
    let embedded = write_embeddings(scene, stage, recipe, &out.join("embeddings.onnx"), io, results)?;
    let pairs = total as f64;
    let augmenting = augment_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    log::info!(
        "stage '{id}': {total} view pairs in {seconds:.1} s ({:.0} pairs/s; the augmenter took {augmenting:.1} s of worker time, \
         writing to the recipe {:.1} s)",
        pairs / seconds,
        blocked.as_secs_f64()
    );
    let metrics = &trained.metrics;
    Ok(SceneSection {
        stage: id.to_string(),
        kind: "pretrainer".into(),
        plugin: stage.reference(),
        summary: json!({
            "recipe": recipe.arch,
            "model": format!("models/{id}/model.onnx"),
            "encoder": trained.sidecar["output"],
            "parameters": trained.sidecar["parameters"],
            "augmenter": { "stage": views.id.to_string(), "plugin": views.reference(), "params": views.params },
            "views": {
                "contract": VIEWS_CONTRACT,
                "epochs": epochs,
                "batches_per_epoch": per_epoch,
                "batch_size": batch_size,
                "patch": patch,
                "channels": names.len(),
                "pairs": total,
                "bytes": 2 * bytes_per_view * epochs * per_epoch,
                "rasters": header["source"]["rasters"],
                "sha256": trained.sidecar["views_sha256"],
            },
            "throughput": {
                "seconds": seconds,
                "pairs_per_second": pairs / seconds,
                "augmenter_worker_seconds": augmenting,
                "writing_seconds": blocked.as_secs_f64(),
                "recipe_waiting_for_views_seconds": metrics["waiting_for_views_seconds"],
                "workers": scene.workers,
            },
            "loss": {
                "name": "NT-Xent",
                "temperature": metrics["temperature"],
                "first": metrics["first_loss"],
                "last": metrics["last_loss"],
                "history": metrics["history"].as_array().map(|h| h.iter().map(|e| e["train_loss"].clone()).collect::<Vec<_>>()),
            },
            "training": trained.sidecar["training"],
            "onnx_check": trained.sidecar["onnx_check"],
            "embeddings": embedded,
        }),
    })
}

/// The encoder's per-pixel features of every source raster, by overlapping tiles (as a
/// segmentation network's maps, `crate::segment::Network`), one F32 raster each.
fn write_embeddings(scene: &Context, stage: &StagePlan, recipe: &RecipePlan, graph: &std::path::Path, io: &Io, results: &mut FitResults) -> Result<Value> {
    let id = stage.id.as_str();
    let model = crate::inference::Model::load(graph, recipe.device).map_err(|e| anyhow::anyhow!("stage '{id}': loading {}: {e}", graph.display()))?;
    let (width, height) = (scene.grid.width, scene.grid.height);
    let budget = scene.tile_budget_bytes();
    let mut written = Vec::new();
    for (&source, &target) in io.sources.iter().zip(io.embeddings) {
        let raster = FeatureRaster::open(&scene.path(source))?;
        let mut network = crate::segment::Network::new(&model, &raster, None, None, None).map_err(|e| anyhow::anyhow!("stage '{id}': {e:#}"))?;
        let batch = network.fit_budget(width, height, budget);
        let cores: Vec<(usize, Window)> = network.tiling.cores(width, height).into_iter().enumerate().collect();
        let name = scene.name(target).to_string();
        let mut output = crate::outputs::Output::new(scene.partial_dir, scene.run_dir(), &name, scene.grid, crate::outputs::PixelType::F32, None);
        let names = network.channels.clone();
        network
            .predict(&raster, None, width, height, batch, |tile| output.raster.write_chunk(tile.index, tile.core, &names, &tile.data))
            .with_context(|| format!("stage '{id}': embedding {}", scene.name(source)))?;
        results.outputs.push(output.finish(&cores)?);
        written.push(json!({ "raster": name, "from": scene.name(source), "channels": names.len(), "tile": network.tiling.side(width, height), "overlap": network.tiling.overlap }));
    }
    let (path, device) = (model.path().to_path_buf(), model.device());
    drop(model);
    crate::inference::Model::unload(&path, device);
    Ok(Value::Array(written))
}

/// Views in date-major plane order (`planes[k]` is the raster's band `order[k]`) put back
/// in the raster's order, patch by patch.
fn raster_order(views: &[f32], order: &[usize], plane: usize) -> Vec<f32> {
    let per_patch = order.len() * plane;
    let mut out = vec![0f32; views.len()];
    for (src, dst) in views.chunks_exact(per_patch).zip(out.chunks_exact_mut(per_patch)) {
        for (k, &band) in order.iter().enumerate() {
            dst[band * plane..(band + 1) * plane].copy_from_slice(&src[k * plane..(k + 1) * plane]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn views_go_back_to_the_raster_order() {
        // Raster order B1@d0, B1@d1, B2@d0, B2@d1 (band-major); date-major order is
        // B1@d0, B2@d0, B1@d1, B2@d1 = raster bands 0, 2, 1, 3. Two patches of 1 px.
        let date_major = [0, 2, 1, 3];
        let views = [10.0, 20.0, 11.0, 21.0, 50.0, 60.0, 51.0, 61.0];
        assert_eq!(super::raster_order(&views, &date_major, 1), [10.0, 11.0, 20.0, 21.0, 50.0, 51.0, 60.0, 61.0]);
    }
}
