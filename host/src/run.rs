//! `sitsflow run`: stream chunks of the series through the stages on all cores and
//! write the outputs and the run's manifest.
//!
//! Workers each own GDAL handles and take chunks from a shared counter; stage
//! instances come from per-stage pools. Results flow through a bounded channel to
//! the one thread that writes (GDAL datasets are not shared between threads), so
//! memory stays at a few chunks per worker. Outputs are written under temporary
//! names and renamed only when every chunk succeeded: a failed or interrupted run
//! leaves no file that looks finished, and never damages a previous run's files.

use crate::bindings::types::{Cube, StageKind};
use crate::plan::{Plan, StagePlan};
use crate::raster::{GeoTiffWriter, Series, Window, chunk_grid};
use crate::runtime::{CallContext, StagePool};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Settings of a run that are not part of the pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub outputs: Vec<PathBuf>,
    pub chunks: usize,
    pub seconds: f64,
}

/// One stage's result on one chunk.
enum StageOutput {
    /// `dates × rows × cols` mask classes.
    Mask(Vec<u8>),
    /// Feature names and `pixels × features` values.
    Features(Vec<String>, Vec<f32>),
}

/// The mask class that leaves a pixel usable.
const MASK_CLEAR: u8 = 0;

type ChunkResult = (usize, Result<Vec<StageOutput>, String>);

/// Per-stage output file, created when the first chunk arrives.
enum Writer {
    Mask(GeoTiffWriter),
    Features(GeoTiffWriter, Vec<String>),
}

/// Runs a resolved plan.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    plan.verify_lock()?;
    let series = Series::open(&plan.series_dir, plan.bands.as_deref())?;
    let grid = series.grid.clone();
    let chunks = chunk_grid(grid.width, grid.height, plan.chunk_size as usize);
    let workers = plan.worker_count().min(chunks.len()).max(1);
    let pools: Vec<StagePool> = plan.stages.iter().map(|s| StagePool::new(s.plugin.clone(), s.limits)).collect();
    let stage_nanos: Vec<AtomicU64> = plan.stages.iter().map(|_| AtomicU64::new(0)).collect();
    let dates = series.dates();
    log::info!(
        "running '{}': {} dates × {} bands, {} × {} px in {} chunks on {workers} workers",
        plan.name,
        dates.len(),
        series.bands.len(),
        grid.width,
        grid.height,
        chunks.len()
    );

    std::fs::create_dir_all(&plan.output_dir).with_context(|| format!("creating {}", plan.output_dir.display()))?;
    let bar = progress_bar(options.progress, chunks.len());
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::sync_channel::<ChunkResult>(workers * 2);
    let worker_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let mut writers: Vec<Option<Writer>> = plan.stages.iter().map(|_| None).collect();
    let mut failures: Vec<String> = Vec::new();
    let mut write_error: Option<anyhow::Error> = None;

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (series, chunks, pools, next, stage_nanos, dates, worker_error) =
                (&series, &chunks, &pools, &next, &stage_nanos, &dates, &worker_error);
            scope.spawn(move || {
                let reader = match series.reader() {
                    Ok(r) => r,
                    Err(e) => {
                        *worker_error.lock().expect("lock") = Some(e);
                        return;
                    }
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= chunks.len() {
                        break;
                    }
                    let window = chunks[index];
                    let result = reader
                        .read(window)
                        .map_err(|e| format!("chunk {index} ({window}): {e:#}"))
                        .and_then(|data| {
                            let cube = Cube {
                                dates: dates.clone(),
                                bands: series.bands.clone(),
                                rows: window.rows as u32,
                                cols: window.cols as u32,
                                data: data.data,
                                valid: data.valid,
                            };
                            run_stages(plan, pools, stage_nanos, index, window, cube)
                        });
                    if tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);

        for (index, result) in rx {
            bar.inc(1);
            match result {
                Err(message) => failures.push(message),
                Ok(outputs) if write_error.is_none() && failures.is_empty() => {
                    if let Err(e) = write_chunk(plan, &series, &mut writers, chunks[index], outputs) {
                        write_error = Some(e);
                    }
                }
                Ok(_) => {} // a run that already failed writes nothing more
            }
        }
    });
    bar.finish_and_clear();

    let first_error = worker_error.into_inner().expect("lock").or(write_error);
    if first_error.is_some() || !failures.is_empty() {
        for writer in writers.into_iter().flatten() {
            match writer {
                Writer::Mask(w) | Writer::Features(w, _) => w.abandon(),
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        failures.sort();
        let shown = failures.iter().take(10).map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n");
        let more = if failures.len() > 10 { format!("\n  … and {} more", failures.len() - 10) } else { String::new() };
        bail!(
            "{} of {} chunks failed; no output was written:\n{shown}{more}",
            failures.len(),
            chunks.len()
        );
    }

    let mut outputs = Vec::new();
    for writer in writers.into_iter().flatten() {
        let path = match writer {
            Writer::Mask(w) | Writer::Features(w, _) => w.finish()?,
        };
        outputs.push(path);
    }
    let seconds = started.elapsed().as_secs_f64();
    write_manifest(plan, &series, &outputs, &stage_nanos, chunks.len(), workers, seconds)?;
    Ok(RunSummary { run_dir: plan.output_dir.clone(), outputs, chunks: chunks.len(), seconds })
}

fn progress_bar(show: bool, total: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} chunks {pos}/{len} [{bar:40}] {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs every stage on one chunk, in order; cloud masks narrow the validity that
/// later stages see.
fn run_stages(
    plan: &Plan,
    pools: &[StagePool],
    stage_nanos: &[AtomicU64],
    index: usize,
    window: Window,
    mut cube: Cube,
) -> Result<Vec<StageOutput>, String> {
    let mut outputs = Vec::with_capacity(plan.stages.len());
    for (s, (stage, pool)) in plan.stages.iter().zip(pools).enumerate() {
        let context = CallContext { stage: stage.id.to_string(), chunk: format!("chunk {index}") };
        let params = stage.params_json();
        let started = Instant::now();
        let fail = |e: crate::runtime::StageCallError| {
            format!(
                "stage '{}' ({}) on chunk {index} ({window}): {e}",
                stage.id,
                stage.plugin.info().reference()
            )
        };
        let output = match stage.plugin.info().kind {
            StageKind::CloudMask => {
                let mask = pool.with(|i| i.mask(&context, &cube, &params)).map_err(fail)?;
                check_len(stage, index, "mask classes", mask.classes.len(), cube.dates.len() * window.pixels())?;
                apply_mask(&mut cube, &mask.classes);
                StageOutput::Mask(mask.classes)
            }
            StageKind::Features => {
                let features = pool.with(|i| i.features(&context, &cube, &params)).map_err(fail)?;
                check_len(stage, index, "feature samples", features.samples as usize, window.pixels())?;
                check_len(stage, index, "feature values", features.data.len(), window.pixels() * features.names.len())?;
                StageOutput::Features(features.names, features.data)
            }
            other => unreachable!("Plan::resolve admits only runnable kinds, not {other:?}"),
        };
        stage_nanos[s].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        outputs.push(output);
    }
    Ok(outputs)
}

fn check_len(stage: &StagePlan, index: usize, what: &str, got: usize, expected: usize) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "stage '{}' ({}) on chunk {index}: returned {got} {what}, expected {expected}",
            stage.id,
            stage.plugin.info().reference()
        ))
    }
}

/// Marks every pixel the mask does not call clear as unusable.
fn apply_mask(cube: &mut Cube, classes: &[u8]) {
    if cube.valid.is_empty() {
        cube.valid = vec![1; classes.len()];
    }
    for (v, &c) in cube.valid.iter_mut().zip(classes) {
        if c != MASK_CLEAR {
            *v = 0;
        }
    }
}

fn write_chunk(
    plan: &Plan,
    series: &Series,
    writers: &mut [Option<Writer>],
    window: Window,
    outputs: Vec<StageOutput>,
) -> Result<()> {
    let n = window.pixels();
    for ((stage, slot), output) in plan.stages.iter().zip(writers.iter_mut()).zip(outputs) {
        let path = plan.output_dir.join(format!("{}.tif", stage.id));
        match output {
            StageOutput::Mask(classes) => {
                if slot.is_none() {
                    let names: Vec<String> = series.dates().iter().map(|d| format!("mask@{d}")).collect();
                    *slot = Some(Writer::Mask(GeoTiffWriter::create::<u8>(&path, &series.grid, &names, Some(255.0))?));
                }
                let Some(Writer::Mask(w)) = slot else { unreachable!("mask stage has a mask writer") };
                for (d, plane) in classes.chunks_exact(n).enumerate() {
                    w.write(d, window, plane.to_vec())?;
                }
            }
            StageOutput::Features(names, data) => {
                if slot.is_none() {
                    let writer = GeoTiffWriter::create::<f32>(&path, &series.grid, &names, Some(f64::NAN))?;
                    *slot = Some(Writer::Features(writer, names.clone()));
                }
                let Some(Writer::Features(w, expected)) = slot else { unreachable!("features stage has a features writer") };
                if *expected != names {
                    bail!(
                        "stage '{}' returned features [{}] on one chunk and [{}] on another",
                        stage.id,
                        names.join(", "),
                        expected.join(", ")
                    );
                }
                let f = names.len();
                for k in 0..f {
                    let plane: Vec<f32> = (0..n).map(|p| data[p * f + k]).collect();
                    w.write(k, window, plane)?;
                }
            }
        }
    }
    Ok(())
}

fn file_record(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let sha256 = crate::hash::sha256_file(path).with_context(|| format!("hashing {}", path.display()))?;
    Ok(json!({ "path": path.display().to_string(), "bytes": bytes, "sha256": sha256 }))
}

fn write_manifest(
    plan: &Plan,
    series: &Series,
    outputs: &[PathBuf],
    stage_nanos: &[AtomicU64],
    chunks: usize,
    workers: usize,
    seconds: f64,
) -> Result<()> {
    let inputs = series.scenes.iter().map(|s| file_record(&s.path)).collect::<Result<Vec<_>>>()?;
    let outputs = outputs.iter().map(|p| file_record(p)).collect::<Result<Vec<_>>>()?;
    let stages: Vec<_> = plan
        .stages
        .iter()
        .zip(stage_nanos)
        .map(|(s, nanos)| {
            let info = s.plugin.info();
            json!({
                "id": s.id.to_string(),
                "plugin": info.reference(),
                "kind": info.kind_name(),
                "sha256": s.plugin.sha256(),
                "params": s.params,
                "memory_mib": s.limits.memory_bytes >> 20,
                "deadline_ms": s.limits.deadline_ms,
                "cpu_seconds": nanos.load(Ordering::Relaxed) as f64 / 1e9,
            })
        })
        .collect();
    let manifest = json!({
        "sitsflow": env!("CARGO_PKG_VERSION"),
        "wit": "sitsflow:stage@0.1.0",
        "gdal": crate::raster::gdal_version(),
        "pipeline": {
            "name": plan.name,
            "path": plan.pipeline.display().to_string(),
            "sha256": crate::hash::sha256_hex(plan.pipeline_text.as_bytes()),
            "text": plan.pipeline_text,
        },
        "seed": plan.seed,
        "series": {
            "dates": series.dates(),
            "bands": series.bands,
            "width": series.grid.width,
            "height": series.grid.height,
            "geo_transform": series.grid.geo_transform,
        },
        "inputs": inputs,
        "stages": stages,
        "outputs": outputs,
        "chunks": chunks,
        "chunk_size": plan.chunk_size,
        "workers": workers,
        "wall_seconds": seconds,
    });
    let text = serde_json::to_string_pretty(&manifest)?;
    crate::fsutil::write_atomic(&plan.output_dir.join("manifest.json"), text.as_bytes())?;
    Ok(())
}
