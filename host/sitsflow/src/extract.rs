//! `sitsflow extract`: the samples CSV of the shared convention (`label, id, group, lon,
//! lat, BAND@DATE…`) at a pipeline's labelled pixels — the points or polygon pixels of
//! its `[reference]` — with the features its mask and features stages compute there,
//! exactly as a run would (the same chunks, halo and stage calls), so that
//! `extract → train → run` is the operator's path (sits' `sits_get_data`, iota2's
//! sample extraction).
//!
//! Only the chunks that hold a labelled pixel are read and computed; the CSV is written
//! whole under a temporary name and renamed.

use crate::plan::{Plan, Role, StagePlan};
use crate::raster::{NO_FEATURE, Window, chunk_grid};
use crate::run::{StageOutput, chunk_input, load_models, open_reference, plan_layout, run_stages};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// What to extract.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// The features stage whose output becomes the columns (default: the last one).
    pub features: Option<String>,
    /// For a per-year features stage, the year (default: the series' only year).
    pub year: Option<i32>,
}

/// What was extracted.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// The CSV written.
    pub path: PathBuf,
    /// Samples (rows) per class name.
    pub per_class: BTreeMap<String, u64>,
    /// Feature columns.
    pub features: usize,
    /// Chunks computed, of the scene's.
    pub chunks_read: usize,
    /// Chunks of the scene.
    pub chunks: usize,
}

/// One labelled pixel of a chunk: its offset in the chunk, class, and feature id.
type Labelled = (usize, u16, u32);

/// Writes the samples CSV of `plan`'s reference pixels to `out`.
pub fn extract(plan: &Plan, options: &ExtractOptions, out: &Path) -> Result<ExtractSummary> {
    let Some(reference) = &plan.reference else {
        bail!(
            "{}: extract takes its labels from [reference] (points or polygons with class_field, or a class raster); the pipeline has none",
            plan.pipeline.display()
        );
    };
    let series = plan.input.open_frozen(&plan.output_dir)?;
    let grid = series.grid.clone();
    let chunk_stages: Vec<(usize, &StagePlan)> = plan.stages.iter().enumerate().filter(|(_, s)| s.is_chunk_stage()).collect();
    let features: Vec<&StagePlan> = chunk_stages.iter().map(|(_, s)| *s).filter(|s| matches!(s.role, Role::Features { .. })).collect();
    let stage = match &options.features {
        Some(id) => *features.iter().find(|s| s.id.as_str() == id).with_context(|| {
            let ids: Vec<&str> = features.iter().map(|s| s.id.as_str()).collect();
            format!("{}: no features stage '{id}' (its features stages: {})", plan.pipeline.display(), ids.join(", "))
        })?,
        None => *features.last().with_context(|| format!("{}: has no features stage to extract", plan.pipeline.display()))?,
    };
    let years = crate::raster::years_of(&series.dates());
    // Which of the stages' outputs is the one extracted (a per-year stage gives one per year).
    let mut output = 0;
    for (_, s) in &chunk_stages {
        if s.id == stage.id {
            break;
        }
        output += if s.role.per_year() { years.len() } else { 1 };
    }
    if stage.role.per_year() {
        let list: Vec<i32> = years.iter().map(|(y, _)| *y).collect();
        let year = match (options.year, list.as_slice()) {
            (Some(y), _) => y,
            (None, [only]) => *only,
            (None, _) => bail!(
                "stage '{}' runs once per year and the series has {}: choose one with --year",
                stage.id,
                list.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        let Some(k) = list.iter().position(|y| *y == year) else {
            bail!("--year {year}: the series has no date in it (its years: {})", list.iter().map(i32::to_string).collect::<Vec<_>>().join(", "));
        };
        output += k;
    } else if let Some(y) = options.year {
        bail!("--year {y}: stage '{}' is not per year (its features are of the whole series)", stage.id);
    }

    let models = load_models(plan)?;
    let layout = plan_layout(plan, &series, &chunk_stages, &models, &years)?;
    crate::raster::set_block_cache(layout.gdal_cache_mib);
    let chunks = chunk_grid(grid.width, grid.height, layout.chunk_size);
    let lookup: HashMap<u32, u16> = reference.nomenclature.lookup();

    // The labelled pixels of each chunk (the reference is rasterised or aligned per chunk).
    let (map, _) = open_reference(reference, &grid, true)?;
    let mut labelled: BTreeMap<usize, Vec<Labelled>> = BTreeMap::new();
    let mut unmapped = BTreeMap::new();
    for (i, window) in chunks.iter().enumerate() {
        let (classes, ids) = map.read_with_ids(*window, &lookup, &mut unmapped)?;
        let found: Vec<Labelled> = classes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(p, c)| (p, *c, ids.as_ref().map_or(NO_FEATURE, |ids| ids[p])))
            .collect();
        if !found.is_empty() {
            labelled.insert(i, found);
        }
    }
    drop(map);
    if !unmapped.is_empty() {
        let list: Vec<String> = unmapped.iter().map(|(c, n)| format!("{c} ({n} px)")).collect();
        log::warn!("reference codes not in the nomenclature, left out: {}", list.join(", "));
    }
    if labelled.is_empty() {
        bail!("{}: no labelled pixel of the reference lies on the series' grid", reference.path.display());
    }
    let todo: Vec<usize> = labelled.keys().copied().collect();
    log::info!(
        "extracting '{}' at {} labelled pixels in {} of {} chunks of {} px",
        stage.id,
        labelled.values().map(Vec::len).sum::<usize>(),
        todo.len(),
        chunks.len(),
        layout.chunk_size
    );

    let pools: Vec<crate::runtime::StagePool> = chunk_stages
        .iter()
        .map(|(_, s)| crate::runtime::StagePool::with_models(s.chunk_plugin().clone(), s.limits, models.clone()).seeded(plan.seed))
        .collect();
    let nanos: Vec<AtomicU64> = plan.stages.iter().map(|_| AtomicU64::new(0)).collect();
    let dates = series.dates();
    // Each chunk's feature names and, per labelled pixel, its values.
    let mut rows: BTreeMap<usize, (Vec<String>, Vec<Vec<f32>>)> = BTreeMap::new();
    let outcome = crate::chunks::for_each(
        layout.workers,
        &todo,
        crate::chunks::OnFailure::Stop,
        || series.reader(),
        |reader, index| -> Result<(Vec<String>, Vec<Vec<f32>>), String> {
            let (cube, around) = chunk_input(reader, &series, &dates, index, chunks[index], layout.halo)?;
            let outputs = run_stages(&chunk_stages, &pools, &nanos, &years, &around, cube)?;
            let Some(StageOutput::Features(names, data)) = outputs.into_iter().nth(output) else {
                return Err(format!("internal: stage '{}' gave no features on chunk {index}", stage.id));
            };
            let width = names.len();
            let values = labelled[&index].iter().map(|(p, _, _)| data[p * width..(p + 1) * width].to_vec()).collect();
            Ok((names, values))
        },
        |index, result| {
            rows.insert(index, result);
            Ok(())
        },
    );
    if let Some((index, e)) = outcome.failures.into_iter().next() {
        bail!("chunk {index} ({}): {e}", chunks[index]);
    }
    if let Some(e) = outcome.error {
        return Err(e);
    }

    // One header: every chunk's features are named alike.
    let names = rows.values().next().map(|(n, _)| n.clone()).unwrap_or_default();
    if let Some((i, _)) = rows.iter().find(|(_, (n, _))| *n != names) {
        bail!("stage '{}' named its features differently on chunk {i} than on the first chunk", stage.id);
    }
    let class_names: HashMap<u16, String> = reference.nomenclature.classes.iter().map(|c| (c.code, c.name.clone())).collect();
    let mut pixels: Vec<(usize, usize, &Labelled, &Vec<f32>)> = Vec::new();
    for (index, (_, values)) in &rows {
        let window: Window = chunks[*index];
        for (label, v) in labelled[index].iter().zip(values) {
            let (row, col) = (window.row + label.0 / window.cols, window.col + label.0 % window.cols);
            pixels.push((row, col, label, v));
        }
    }
    pixels.sort_by_key(|(row, col, _, _)| (*row, *col));
    let centres: Vec<(f64, f64)> = match &grid.geo_transform {
        Some(gt) => pixels.iter().map(|(row, col, _, _)| crate::raster::pixel_centre(gt, *row, *col)).collect(),
        None => Vec::new(),
    };
    let lon_lat = if centres.is_empty() { None } else { crate::raster::lon_lat(&grid, &centres)? };
    if lon_lat.is_none() {
        log::warn!("the series' grid has no CRS: the samples have no lon, lat");
    }

    let mut text = String::from("label,id,group");
    if lon_lat.is_some() {
        text.push_str(",lon,lat");
    }
    for n in &names {
        text.push(',');
        text.push_str(n);
    }
    text.push('\n');
    let mut per_class: BTreeMap<String, u64> = BTreeMap::new();
    for (k, (row, col, (_, class, fid), values)) in pixels.iter().enumerate() {
        let label = class_names.get(class).cloned().unwrap_or_else(|| class.to_string());
        *per_class.entry(label.clone()).or_default() += 1;
        let pixel = row * grid.width + col;
        // id: the pixel; group: the feature (its parcel), else the 32 px block.
        let group = crate::fit::sample_group(grid.width, pixel as u64, Some(*fid));
        text.push_str(&format!("{},{pixel},{group}", csv_field(&label)));
        if let Some(ll) = &lon_lat {
            text.push_str(&format!(",{:.7},{:.7}", ll[k].0, ll[k].1));
        }
        for v in values.iter() {
            text.push(',');
            if !v.is_nan() {
                text.push_str(&v.to_string());
            }
        }
        text.push('\n');
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::fsutil::write_atomic(out, text.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(ExtractSummary { path: out.to_path_buf(), per_class, features: names.len(), chunks_read: todo.len(), chunks: chunks.len() })
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}
