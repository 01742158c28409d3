//! `sitsflow run`: stream chunks of the series through the stages on all cores and
//! write the outputs and the run's manifest.
//!
//! Workers each own GDAL handles and take chunks from a shared counter; stage
//! instances come from per-stage pools. Results flow through a bounded channel to
//! the one thread that writes (GDAL datasets are not shared between threads), so
//! memory stays at a few chunks per worker; the chunk size is derived from the
//! run's memory budget unless the pipeline fixes it.
//!
//! Outputs are written into `<run>/.partial/` (chunk files plus a journal of the
//! chunks done), assembled into Cloud-Optimized GeoTIFFs in its staging folder when
//! every chunk succeeded, and published with the manifest only when the whole run is
//! done (`crate::rundir`). A failed or interrupted run leaves no file that looks
//! finished and never touches a previous run's outputs; rerunning the same pipeline
//! on the same inputs resumes from the chunks and outputs already done.

use crate::runtime::data::Cube;
use crate::runtime::StageKind;
use crate::plan::{Plan, Role, StagePlan};
use crate::outputs::{Output, PixelType};
use crate::raster::{ClassStyle, ReferenceMap, Series, Window, chunk_grid};
use crate::runtime::{CallContext, StagePool};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The mask class that leaves a pixel usable.
const MASK_CLEAR: u8 = 0;
pub use crate::memory::FIXED_OVERHEAD_MIB;

/// Settings of a run that are not part of the pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The whole run, one shard of its chunks, or the assembly after the shards.
    pub mode: RunMode,
}

/// What part of a run this process does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Every chunk, the scene stages, the report, the publish.
    #[default]
    Whole,
    /// The chunks of shard `index` of `count` (a contiguous range of the chunk grid),
    /// beside the other shards in the same run directory; nothing is published.
    Shard {
        /// This shard's number, from 0.
        index: usize,
        /// How many shards the chunks are split into.
        count: usize,
    },
    /// After every shard: assembles the outputs, runs the scene stages and publishes;
    /// refuses while chunks are missing.
    Assemble,
}

impl RunMode {
    /// Parses `i/N` (`--shard 0/4`).
    pub fn parse_shard(text: &str) -> Result<RunMode, String> {
        let (i, n) = text.split_once('/').ok_or_else(|| format!("'{text}' is not i/N (e.g. 0/4)"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("'{i}' in '{text}' is not a shard number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("'{n}' in '{text}' is not a shard count"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: the index must be below the count (0/{count} … {}/{count})", count.max(1) - 1));
        }
        Ok(RunMode::Shard { index, count })
    }

    /// The chunks (of `total`) this process computes.
    fn chunks(&self, total: usize) -> std::ops::Range<usize> {
        match *self {
            RunMode::Whole => 0..total,
            RunMode::Shard { index, count } => index * total / count..(index + 1) * total / count,
            RunMode::Assemble => 0..0,
        }
    }

    fn journal(&self) -> String {
        match self {
            RunMode::Shard { index, count } => format!("done-{index}-of-{count}"),
            _ => "done".to_string(),
        }
    }
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The published rasters, under the run directory (none for a shard).
    pub outputs: Vec<PathBuf>,
    /// The chunks this process was given: all, or a shard's range.
    pub chunks: usize,
    /// Chunks taken over from an interrupted run.
    pub resumed_chunks: usize,
    /// Side of the chunks, in pixels.
    pub chunk_size: usize,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
}

/// Chunks are sized as if this many were in flight at once, whatever the machine: the
/// chunk grid is part of the plan, so it must not change with the core count. A machine
/// then runs as many workers as it has cores and the budget holds. Two keeps chunks
/// large under the usual budgets: with four, the demo ran in 16 chunks of 160 px in
/// 23.5 s, with two in 9 chunks of 240 px in 17.4 s (same maps).
pub const PLANNED_WORKERS: usize = 2;

/// How the scene is cut: chunk side, halo and workers, with the memory they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Side of a square chunk, in pixels.
    pub chunk_size: usize,
    /// Pixels of context read around each chunk.
    pub halo: usize,
    /// Chunks in flight at once: at most those asked, as many as the budget holds.
    pub workers: usize,
    /// GDAL's block cache.
    pub gdal_cache_mib: usize,
    /// The estimate of what the run holds at its peak.
    pub estimate_mib: usize,
}

/// A chunk stage as the layout sees it: its kind, its output scale, and the bytes its
/// result takes per pixel of the series' grid (scale² output pixels; all years of a
/// per-year stage), as the probe found them (0: not probed).
pub type ChunkStageSize = (StageKind, usize, usize);

/// Bytes held per pixel of a chunk, by one worker: the cube, each stage instance's
/// copy of it and its result, the result's copy on the host.
fn bytes_per_pixel(dates: usize, bands: usize, stages: &[ChunkStageSize]) -> (usize, usize) {
    let cube = dates * bands * 4 + dates;
    let mut held = cube;
    let mut result = 0;
    for (kind, scale, probed) in stages {
        // At least two values per date for features (per output pixel: scale² of them
        // per input pixel), five bytes per date for masks; more when the probe found
        // the stage returns more (a stage of thousands of features).
        let assumed = match kind {
            StageKind::CloudMask => dates * 5,
            _ => dates * 8 * scale * scale,
        };
        let out = assumed.max(*probed);
        held += cube + out + out;
        result += out;
    }
    (held, result + 2)
}

impl Layout {
    /// Derives the chunk size from the budget for `PLANNED_WORKERS` (a multiple of the
    /// stages' `tile` when one is declared, else of the sources' square tile size
    /// `align` when there is one, so chunks read whole tiles), or checks a fixed one
    /// against both; then runs at most `workers` workers, as many as the budget holds
    /// (at least one). `stages` are the chunk stages' kinds and output scales.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        budget_mib: usize,
        fixed: Option<usize>,
        align: Option<usize>,
        tile: usize,
        decode_bytes: usize,
        halo: usize,
        workers: usize,
        dates: usize,
        bands: usize,
        stages: &[ChunkStageSize],
    ) -> Result<Layout> {
        let gdal_cache_mib = (budget_mib / 8).clamp(16, 256);
        let (per_px, result_px) = bytes_per_pixel(dates, bands, stages);
        let estimate = |side: usize, workers: usize| {
            let with_halo = (side + 2 * halo).pow(2);
            let bytes = workers * (with_halo * per_px + decode_bytes) + 2 * workers * side * side * result_px;
            bytes.div_ceil(1 << 20) + gdal_cache_mib + FIXED_OVERHEAD_MIB
        };
        let chunk_size = match fixed {
            Some(side) if tile > 0 && side % tile != 0 => {
                bail!("chunk_size {side} is not a multiple of the {tile} px tile a stage works on; use {}", (side / tile).max(1) * tile)
            }
            Some(side) => {
                let need = estimate(side, 1);
                if need > budget_mib {
                    bail!(
                        "chunk_size {side} needs about {need} MiB on one worker ({dates} dates × {bands} bands, {} stages \
                         returning {result_px} bytes per pixel), over memory_budget_mib = {budget_mib}; lower chunk_size or \
                         raise the budget",
                        stages.len()
                    );
                }
                side
            }
            None => {
                let planned = PLANNED_WORKERS;
                let mut side = 4096;
                while side > 16 && estimate(side, planned) > budget_mib {
                    side -= 16;
                }
                if tile > 0 {
                    side = (side - side % tile).max(tile);
                } else if let Some(tile) = align.filter(|t| *t >= 16 && *t <= side) {
                    side -= side % tile;
                }
                if estimate(side, planned) > budget_mib {
                    bail!(
                        "memory_budget_mib = {budget_mib} is too small for {dates} dates × {bands} bands and stages returning \
                         {result_px} bytes per pixel ({side} px chunks need about {} MiB for {planned} chunks in flight)",
                        estimate(side, planned)
                    );
                }
                side
            }
        };
        let fit = (1..=workers.max(1)).take_while(|&w| estimate(chunk_size, w) <= budget_mib).last().unwrap_or(1);
        if fit < workers {
            log::info!("{workers} workers asked, the memory budget holds {fit} chunks of {chunk_size} px in flight: running {fit}");
        }
        Ok(Layout { chunk_size, halo, workers: fit, gdal_cache_mib, estimate_mib: estimate(chunk_size, fit) })
    }
}

/// One stage's result on one chunk, cropped to the chunk (halo removed).
pub(crate) enum StageOutput {
    /// `dates × rows × cols` mask classes.
    Mask(Vec<u8>),
    /// Feature names and `pixels × features` values.
    Features(Vec<String>, Vec<f32>),
}

struct ChunkOutputs {
    stages: Vec<StageOutput>,
    /// The reference's classes, and for vectors each pixel's feature id.
    reference: Option<(Vec<u16>, Option<Vec<u32>>)>,
}

/// Opens the reference on `grid`: a raster aligned by mode, or vectors rasterised by
/// GDAL; with `survey`, vectors are read through once (every class checked) and what the
/// layer holds is returned — where the reference is first opened, not in each worker.
pub fn open_reference(r: &crate::plan::ReferencePlan, grid: &crate::raster::Grid, survey: bool) -> Result<(ReferenceMap, Option<crate::raster::VectorSummary>)> {
    match &r.vector {
        Some(spec) if survey => ReferenceMap::open_vector(&r.path, spec, &r.class_names(), grid).map(|(m, s)| (m, Some(s))),
        Some(spec) => ReferenceMap::open_vector_to_read(&r.path, spec, &r.class_names(), grid).map(|m| (m, None)),
        None => ReferenceMap::open(&r.path, grid).map(|m| (m, None)),
    }
}

/// The working files of a run and the journal of chunks done.
struct Partial {
    dir: PathBuf,
    journal: std::fs::File,
    done: BTreeSet<usize>,
}

impl Partial {
    /// Opens the partial state (in `dir`) of a run with this key, or starts a fresh one
    /// (discarding an unfinished run of another key only when `may_discard`: shards
    /// that run beside each other never remove each other's work). Chunks done are read
    /// from every journal (`done`, and one `done-<i>-of-<n>` per shard); this process
    /// appends to `journal`.
    fn open(dir: PathBuf, key: &str, journal: &str, may_discard: bool) -> Result<Partial> {
        let key_file = dir.join("key");
        let found = std::fs::read_to_string(&key_file).ok();
        let same = found.as_deref().is_some_and(|k| k.trim() == key);
        let mut done = BTreeSet::new();
        if found.is_none() {
            // Nothing was computed here yet (the key is written before any chunk); a
            // shard may have made the folder for its lock a moment ago.
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::fsutil::write_atomic(&key_file, key.as_bytes())?;
        } else if same {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name != "done" && !name.starts_with("done-") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                // A line is complete only with its newline: a torn last line (a kill or a
                // full disk while appending) is cut off in this process's own journal,
                // so its next line starts afresh, and ignored in the others'.
                let complete = text.rfind('\n').map_or(0, |i| i + 1);
                if complete < text.len() && name == journal {
                    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                    file.set_len(complete as u64).with_context(|| format!("truncating the torn line of {}", path.display()))?;
                    file.sync_data()?;
                }
                for line in text[..complete].lines() {
                    if let Ok(i) = line.trim().parse::<usize>() {
                        done.insert(i);
                    }
                }
            }
        } else {
            if dir.exists() {
                if !may_discard {
                    bail!(
                        "{} holds an unfinished run of another pipeline, plugins or inputs; a shard does not discard it \
                         (other shards may be writing): run `sitsflow run` without --shard to start afresh",
                        dir.display()
                    );
                }
                log::info!("discarding the unfinished run in {} (its pipeline, plugins or inputs differ)", dir.display());
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            crate::fsutil::write_atomic(&key_file, key.as_bytes())?;
        }
        let journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(journal))
            .with_context(|| format!("opening the journal in {}", dir.display()))?;
        Ok(Partial { dir, journal, done })
    }

    fn record(&mut self, chunk: usize) -> Result<()> {
        writeln!(self.journal, "{chunk}")?;
        self.journal.sync_data()?;
        self.done.insert(chunk);
        Ok(())
    }
}

/// What identifies a run for resuming: pipeline, plugins, inputs (by size and time),
/// layout, memory budget and version. Any difference starts the run afresh.
fn run_key(plan: &Plan, series: &Series, layout: &Layout) -> String {
    let mut text = format!("sitsflow {}\n{}\n", env!("CARGO_PKG_VERSION"), plan.pipeline_text);
    // The budget sizes fit samples too (`--memory-budget-mib` overrides the pipeline's).
    text.push_str(&format!("chunk {} halo {} budget {}\n", layout.chunk_size, layout.halo, plan.memory_budget_mib));
    for s in &plan.stages {
        text.push_str(&format!("{} {}\n", s.id, s.sha256()));
    }
    let mut files = series.files();
    if let Some(r) = &plan.reference {
        files.push(r.path.display().to_string());
    }
    // What labellers train on or predict with outside the series: a changed samples CSV
    // or stored model must not let a rerun take over the nodes that used the old one.
    for s in &plan.stages {
        if let crate::plan::Role::Labeller { training: crate::plan::Training::Csv(p) | crate::plan::Training::Stored(p), .. } = &s.role {
            files.push(p.display().to_string());
        }
        // A super-resolution stage's annotation files.
        if let crate::plan::Role::SuperResolver { annotations: crate::plan::Annotations::Files(list), .. } = &s.role {
            files.extend(list.iter().map(|a| a.path.display().to_string()));
        }
        // A fusion labeller's VHR images, each year's where the path names the year.
        if let crate::plan::Role::Labeller { vhr: Some(template), .. } = &s.role {
            let template = template.display().to_string();
            for (year, _) in crate::raster::years_of(&series.dates()) {
                files.push(template.replace("{year}", &year.to_string()));
            }
        }
    }
    files.dedup();
    for f in files {
        let meta = std::fs::metadata(&f).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        text.push_str(&format!("{f} {size} {:?}\n", mtime.map(|d| d.as_nanos())));
    }
    crate::hash::sha256_hex(text.as_bytes())
}

/// Colours and names of cloud-mask classes (see `plugins/sdk/wit/stage.wit`).
fn mask_style() -> ClassStyle {
    let classes = [(0, "clear", "transparent"), (1, "cloud", "#ff00ff"), (2, "cloud shadow", "#5a3a8c"), (3, "snow", "#00e5ff")];
    ClassStyle { classes: classes.iter().map(|(c, n, col)| (*c, n.to_string(), col.to_string())).collect() }
}

/// The halo every chunk is read with and the tile its core is a multiple of, from the
/// pipeline's `halo` and the chunk stages' footprints. A mask's output is valid `halo`
/// px less far out than its input, and the stages after it read that output: so a
/// stage needs its own halo plus those of the masks before it, or, reading an earlier
/// stage's output, plus what that stage needed.
fn chunk_geometry(pipeline_halo: usize, stages: &[(usize, &StagePlan)]) -> Result<(usize, usize)> {
    let mut halo = pipeline_halo;
    // How far inside the cube the series' validity is right (narrowed by the masks so
    // far), and each stage's output.
    let mut masks = 0;
    let mut need: HashMap<&str, usize> = HashMap::new();
    let mut tile = 0usize;
    for (_, stage) in stages {
        let Some(fp) = stage.role.footprint() else { continue };
        // A stage reading an earlier stage's output needs its halo plus that stage's.
        let base = match stage.role.input() {
            Some(input) => need.get(input.as_str()).copied().unwrap_or(0),
            None => masks,
        };
        let reach = fp.halo + base;
        need.insert(stage.id.as_str(), reach);
        halo = halo.max(reach);
        if matches!(stage.role, Role::CloudMask { .. }) {
            masks = masks.max(reach);
        }
        if fp.tile > 0 {
            tile = if tile == 0 { fp.tile } else { lcm(tile, fp.tile) };
            if tile > 4096 {
                bail!("the chunk stages' tiles have no common multiple up to 4096 px (stage '{}' works on {} px tiles)", stage.id, fp.tile);
            }
        }
    }
    Ok((halo, tile))
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// Pads per-pixel planes laid out on `inner` (`rows × cols`) by reflection (the edge
/// pixel not repeated, as numpy's `reflect`) by `top`, `bottom`, `left`, `right` pixels.
fn pad_reflect<T: Copy>(planes: &[T], rows: usize, cols: usize, pad: [usize; 4]) -> Vec<T> {
    let [top, bottom, left, right] = pad;
    if pad == [0; 4] || rows * cols == 0 {
        return planes.to_vec();
    }
    // Reflect an index into 0..n, folding as often as a pad wider than the image needs.
    let fold = |i: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as isize - 1);
        let m = i.rem_euclid(period);
        (if m < n as isize { m } else { period - m }) as usize
    };
    let (out_rows, out_cols) = (rows + top + bottom, cols + left + right);
    // The columns outside the window, reflected; the window's own are copied as a slice.
    let left_of: Vec<usize> = (0..left).map(|c| fold(c as isize - left as isize, cols)).collect();
    let right_of: Vec<usize> = (cols + left..out_cols).map(|c| fold(c as isize - left as isize, cols)).collect();
    let mut out = Vec::with_capacity(planes.len() / (rows * cols) * out_rows * out_cols);
    for plane in planes.chunks_exact(rows * cols) {
        for r in 0..out_rows {
            let src = &plane[fold(r as isize - top as isize, rows) * cols..][..cols];
            out.extend(left_of.iter().map(|&c| src[c]));
            out.extend_from_slice(src);
            out.extend(right_of.iter().map(|&c| src[c]));
        }
    }
    out
}

/// [`pad_reflect`], or `planes` itself when nothing is padded (a chunk inside the scene).
fn pad_reflect_owned<T: Copy>(planes: Vec<T>, rows: usize, cols: usize, pad: [usize; 4]) -> Vec<T> {
    if pad == [0; 4] { planes } else { pad_reflect(&planes, rows, cols, pad) }
}

/// Loads the pipeline's ONNX models (one session per file and device per process).
pub(crate) fn load_models(plan: &Plan) -> Result<std::sync::Arc<crate::inference::ModelSet>> {
    if plan.models.is_empty() {
        return Ok(crate::inference::ModelSet::empty());
    }
    let set = crate::inference::ModelSet::load(&plan.models).context("loading the pipeline's [[model]]s")?;
    for (name, model) in set.iter() {
        log::info!("model '{name}' ({}) runs on {}", model.path().display(), model.provider());
    }
    Ok(std::sync::Arc::new(set))
}

/// The chunk layout of a run over `series`: halo and tile from the chunk stages, chunk
/// size from the budget and what the stages return (probed), or from the pipeline.
pub(crate) fn plan_layout(
    plan: &Plan,
    series: &Series,
    chunk_stages: &[(usize, &StagePlan)],
    models: &std::sync::Arc<crate::inference::ModelSet>,
    years: &[(i32, Vec<usize>)],
) -> Result<Layout> {
    let (halo, tile) = chunk_geometry(plan.halo as usize, chunk_stages)?;
    // What each stage really returns per pixel sizes the chunks (a stage of thousands of
    // features must not be sized as one of a few).
    let probed = probe_output_bytes(plan, series, chunk_stages, models, years, halo, tile)?;
    let kinds: Vec<ChunkStageSize> = chunk_stages
        .iter()
        .zip(&probed)
        .map(|((_, s), bytes)| (s.kind(), s.role.footprint().map_or(1, |f| f.scale), *bytes))
        .collect();
    let workers = plan.worker_count();
    let layout_for = |fixed: Option<usize>| {
        Layout::plan(
            plan.memory_budget_mib as usize,
            fixed,
            series.tile_size(),
            tile,
            series.decode_buffer_bytes(),
            halo,
            workers,
            series.scenes.len(),
            series.bands.len(),
            &kinds,
        )
    };
    let mut layout = layout_for(plan.chunk_size.map(|c| c as usize))?;
    // A budget that would hold chunks larger than the scene: one chunk of the scene's
    // size (on the stages' tile grid), and the memory estimate for that chunk.
    let scene_side = series.grid.width.max(series.grid.height);
    if plan.chunk_size.is_none() && layout.chunk_size > scene_side {
        let side = if tile > 0 { scene_side.div_ceil(tile) * tile } else { scene_side };
        if side < layout.chunk_size {
            layout = layout_for(Some(side))?;
        }
    }
    Ok(layout)
}

/// Runs a resolved plan.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    plan.verify_lock()?;
    plan.check_output_dir()?;
    // A STAC API search is frozen into the run directory: a rerun reads the same items.
    let series = plan.input.open_frozen(&plan.output_dir)?;
    let grid = series.grid.clone();
    // Cloud masks and features stream chunk by chunk; the scene stages run after them.
    let chunk_stages: Vec<(usize, &StagePlan)> = plan.stages.iter().enumerate().filter(|(_, s)| s.is_chunk_stage()).collect();
    let models = load_models(plan)?;
    let years = crate::raster::years_of(&series.dates());
    let layout = plan_layout(plan, &series, &chunk_stages, &models, &years)?;
    crate::raster::set_block_cache(layout.gdal_cache_mib);
    crate::raster::set_cog_threads(layout.workers);
    // What writing one output may take: the budget less the engine's own and GDAL's cache.
    crate::raster::set_assembly_memory(
        (plan.memory_budget_mib as usize).saturating_sub(FIXED_OVERHEAD_MIB + layout.gdal_cache_mib).max(32),
    );
    crate::memory::tune_allocator(layout.workers);
    if let Some(r) = &plan.reference {
        // Each worker opens its own; this is to fail early, and to say what vectors hold.
        let (_, summary) = open_reference(r, &grid, true)?;
        if let (Some(summary), Some(spec)) = (summary, &r.vector) {
            let kinds: Vec<String> = summary.features.iter().map(|(k, n)| format!("{n} {k}{}", if *n == 1 { "" } else { "s" })).collect();
            log::info!(
                "reference: {} of layer '{}' in {}, classes from field '{}'{}",
                kinds.join(", "),
                summary.layer,
                r.path.display(),
                spec.class_field,
                if summary.without_class > 0 { format!(" ({} without a class, left out)", summary.without_class) } else { String::new() }
            );
        }
    }
    let lookup: HashMap<u32, u16> = plan.reference.as_ref().map(|r| r.nomenclature.lookup()).unwrap_or_default();

    let chunks = chunk_grid(grid.width, grid.height, layout.chunk_size);
    let mode = options.mode;
    let run_dir = match mode {
        RunMode::Shard { index, count } => crate::rundir::RunDir::open_shard(&plan.output_dir, index, count)?,
        _ => crate::rundir::RunDir::open(&plan.output_dir)?,
    };
    if mode == RunMode::Assemble && run_dir.finished_publish() && !run_dir.partial().exists() {
        // A run killed while publishing left nothing else to do: its publish is now
        // finished, and no shard has started since.
        log::warn!("{}: finished publishing the interrupted run; there are no shard chunks to assemble", plan.output_dir.display());
        let outputs = run_dir.published().into_iter().filter(|p| p.extension().is_some_and(|e| e == "tif")).collect();
        return Ok(RunSummary { run_dir: plan.output_dir.clone(), outputs, chunks: 0, resumed_chunks: 0, chunk_size: layout.chunk_size, seconds: started.elapsed().as_secs_f64() });
    }
    let key = run_key(plan, &series, &layout);
    let mut partial = Partial::open(run_dir.partial(), &key, &mode.journal(), !matches!(mode, RunMode::Shard { .. }))?;
    let staging = run_dir.staging();
    let resumed = partial.done.len();
    if mode == RunMode::Assemble {
        let missing: Vec<usize> = (0..chunks.len()).filter(|i| !partial.done.contains(i)).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(12).map(|i| i.to_string()).collect();
            bail!(
                "cannot assemble {}: {} of {} chunks are not done (chunks {}{}); rerun the shards that hold them \
                 (`sitsflow run --shard i/N`), then assemble again",
                plan.output_dir.display(),
                missing.len(),
                chunks.len(),
                shown.join(", "),
                if missing.len() > 12 { ", …" } else { "" }
            );
        }
    }
    let todo: Vec<usize> = mode.chunks(chunks.len()).filter(|i| !partial.done.contains(i)).collect();
    let workers = layout.workers.min(todo.len()).max(1);
    log::info!(
        "running '{}': {} dates × {} bands, {} × {} px in {} chunk{} of {} px{} on {workers} worker{} (memory estimate {} MiB of {} MiB)",
        plan.name,
        series.scenes.len(),
        series.bands.len(),
        grid.width,
        grid.height,
        chunks.len(),
        if chunks.len() == 1 { "" } else { "s" },
        layout.chunk_size,
        if layout.halo > 0 { format!(" + {} px halo", layout.halo) } else { String::new() },
        if workers == 1 { "" } else { "s" },
        layout.estimate_mib,
        plan.memory_budget_mib
    );
    let mine = mode.chunks(chunks.len()).filter(|i| partial.done.contains(i)).count();
    match mode {
        // A shard's journal also holds the chunks other shards wrote: only its own range resumes.
        RunMode::Shard { index, count } if mine > 0 => {
            log::info!("shard {index}/{count}: resuming, {mine} of its chunks were done by an earlier attempt")
        }
        RunMode::Shard { .. } => {}
        _ if resumed > 0 => log::info!("resuming: {resumed} of {} chunks were done by an interrupted run", chunks.len()),
        _ => {}
    }

    let year_list: Vec<i32> = years.iter().map(|(y, _)| *y).collect();
    let graph = crate::graph::Graph::compile(plan, &grid, &year_list);
    graph.check_order().map_err(|e| anyhow::anyhow!("internal: the compiled graph is out of order: {e}"))?;
    graph.check_evaluations(plan, &year_list).map_err(|e| anyhow::anyhow!("{}: {e}", plan.pipeline.display()))?;
    log::debug!("graph of '{}':\n{}", plan.name, graph.render(plan));
    let mut outputs: Vec<Output> = Vec::new();
    for (_, stage) in &chunk_stages {
        let (pixel, style) = match stage.role {
            Role::CloudMask { .. } => (PixelType::U8, Some(mask_style())),
            _ => (PixelType::F32, None),
        };
        let scale = stage.role.footprint().map_or(1, |f| f.scale);
        if stage.role.per_year() {
            for (year, _) in &years {
                outputs.push(Output::on_scaled_grid(&partial.dir, &staging, &format!("{}_{year}", stage.id), &grid, scale, pixel, None));
            }
        } else {
            outputs.push(Output::on_scaled_grid(&partial.dir, &staging, stage.id.as_str(), &grid, scale, pixel, style));
        }
    }
    let mut reference_out = plan.reference.as_ref().map(|r| {
        let style = ClassStyle { classes: r.nomenclature.styles() };
        Output::new(&partial.dir, &staging, "reference", &grid, PixelType::U16, Some(style))
    });
    let mut reference_ids_out = plan
        .reference
        .as_ref()
        .filter(|r| r.vector.is_some())
        .map(|_| Output::feature_ids(&partial.dir, &staging, crate::graph::REFERENCE_IDS, &grid));

    // All stage instances of the run together get what the budget leaves beside the
    // engine and GDAL's cache (each also within its own `memory_mib`).
    let guest_memory = crate::runtime::GuestMemory::new(
        (plan.memory_budget_mib as usize).saturating_sub(FIXED_OVERHEAD_MIB + layout.gdal_cache_mib).max(64) << 20,
    );
    let pools: Vec<StagePool> = chunk_stages
        .iter()
        .map(|(_, s)| StagePool::with_models(s.chunk_plugin().clone(), s.limits, models.clone()).seeded(plan.seed).sharing(&guest_memory))
        .collect();
    let stage_nanos: Vec<AtomicU64> = plan.stages.iter().map(|_| AtomicU64::new(0)).collect();
    let unmapped: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
    let dates = series.dates();
    let in_range = mode.chunks(chunks.len()).len();
    let bar = progress_bar(options.progress, in_range, in_range - todo.len());
    let (series, dates, years, lookup) = (&series, &dates, &years, &lookup);
    let mut peaks = crate::memory::Peaks::default();
    peaks.start();
    let outcome = crate::chunks::for_each(
        workers,
        &todo,
        crate::chunks::OnFailure::Continue,
        // Each worker reads through its own GDAL handles.
        || {
            let reader = series.reader()?;
            let reference = plan.reference.as_ref().map(|r| open_reference(r, &series.grid, false).map(|(map, _)| map)).transpose()?;
            Ok((reader, reference))
        },
        |(reader, reference), index| -> Result<ChunkOutputs, String> {
            let (cube, around) = chunk_input(reader, series, dates, index, chunks[index], layout.halo)?;
            let window = around.window;
            let stages = run_stages(&chunk_stages, &pools, &stage_nanos, years, &around, cube)?;
            let reference = match &reference {
                Some(r) => {
                    let mut seen = BTreeMap::new();
                    let labels = r.read_with_ids(window, lookup, &mut seen).map_err(|e| format!("chunk {index}: {e:#}"))?;
                    let mut all = unmapped.lock().expect("lock");
                    for (code, n) in seen {
                        *all.entry(code).or_default() += n;
                    }
                    Some(labels)
                }
                None => None,
            };
            Ok(ChunkOutputs { stages, reference })
        },
        |index, chunk| {
            bar.inc(1);
            write_chunk(series, &mut outputs, (&mut reference_out, &mut reference_ids_out), index, chunks[index], chunk)?;
            partial.record(index)?;
            crate::fail_point!("run::chunk_written");
            Ok(())
        },
    );
    bar.finish_and_clear();
    // The stage instances keep their linear memory (a chunk's worth each); free it
    // before GDAL assembles the COGs, so the two phases' peaks do not add up.
    drop(pools);
    peaks.finish("map");

    if let Some(e) = outcome.error {
        return Err(e);
    }
    let mut failures: Vec<String> = outcome.failures.into_iter().map(|(_, message)| message).collect();
    if !failures.is_empty() {
        failures.sort();
        let shown = failures.iter().take(10).map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n");
        let more = if failures.len() > 10 { format!("\n  … and {} more", failures.len() - 10) } else { String::new() };
        bail!(
            "{} of {} chunks failed; no output was written (the {} chunks done are kept in {} and a rerun resumes from them):\n{shown}{more}",
            failures.len(),
            chunks.len(),
            partial.done.len(),
            partial.dir.display()
        );
    }

    if let RunMode::Shard { index, count } = mode {
        let range = mode.chunks(chunks.len());
        log::info!(
            "shard {index}/{count}: chunks {}..{} of {} done; `sitsflow assemble` finishes the run once every shard is done",
            range.start,
            range.end,
            chunks.len()
        );
        return Ok(RunSummary {
            run_dir: plan.output_dir.clone(),
            outputs: Vec::new(),
            chunks: range.len(),
            resumed_chunks: resumed,
            chunk_size: layout.chunk_size,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let all: Vec<(usize, Window)> = chunks.iter().copied().enumerate().collect();
    let mut finished = Vec::new();
    peaks.start();
    for output in outputs.iter_mut().chain(reference_out.as_mut()).chain(reference_ids_out.as_mut()) {
        finished.push(output.finish_or_reuse(&all)?);
    }
    peaks.finish("assemble");
    let context = crate::fit::Context {
        plan,
        graph: &graph,
        years: year_list.clone(),
        grid: &grid,
        chunks: &chunks,
        chunk_size: layout.chunk_size,
        workers: layout.workers,
        partial_dir: &partial.dir,
        out_dir: &staging,
        stage_nanos: &stage_nanos,
        models: models.clone(),
        guest_memory: guest_memory.clone(),
    };
    let fitted = crate::fit::run(&context, &mut peaks)?;
    finished.extend(fitted.outputs.iter().cloned());
    let rasters = finished.iter().chain(fitted.files.iter().filter(|f| f.extension().is_some_and(|e| e == "tif")));
    check_against_graph(&graph, rasters)?;
    let unmapped = unmapped.into_inner().expect("lock");
    if !unmapped.is_empty() {
        let list: Vec<String> = unmapped.iter().map(|(c, n)| format!("{c} ({n} px)")).collect();
        log::warn!("reference codes not in the nomenclature, written as 0: {}", list.join(", "));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut recorded = finished.clone();
    recorded.extend(fitted.files.iter().cloned());
    let mut manifest = manifest(plan, &series, &run_dir, &recorded, &stage_nanos, &layout, chunks.len(), resumed, &unmapped, &models, seconds)?;
    manifest["graph"] = graph.to_json(plan);
    manifest["resumed_nodes"] = json!(fitted.resumed);
    manifest["peak_rss_mib"] = json!(peaks.overall());
    peaks.measure("report", || {
        // A full disk shows up as a bare "No space left on device": name the device.
        crate::fsutil::with_space_hint(crate::report::evaluate_and_write(plan, &staging, &finished, &manifest, &fitted.sections), &staging)
    })?;
    manifest["peak_rss_mib"] = json!(peaks.overall());
    manifest["memory"] = peaks.to_json(plan.memory_budget_mib as u64);
    manifest["memory"]["estimate_mib"] = json!(layout.estimate_mib);
    manifest["memory"]["stage_instances_peak_mib"] = json!((guest_memory.peak_bytes() as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0);
    manifest["memory"]["stage_instances_cap_mib"] = json!(guest_memory.cap_bytes() >> 20);
    crate::fail_point!("run::report_staged");
    // The manifest names every file the run publishes, so the next run into this
    // directory knows what to replace.
    let published = run_dir.staged_files()?;
    manifest["published"] = json!(published.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    drop(partial);
    run_dir.publish(&published, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    let shown = |p: &PathBuf| published_path(&plan.output_dir, &staging, p);
    Ok(RunSummary {
        run_dir: plan.output_dir.clone(),
        outputs: finished.iter().map(shown).collect(),
        chunks: chunks.len(),
        resumed_chunks: resumed,
        chunk_size: layout.chunk_size,
        seconds,
    })
}

/// The declared rasters a run assembled must be exactly those its graph names: the
/// graph is what the manifest records and what later tooling plans from.
fn check_against_graph<'a>(graph: &crate::graph::Graph, finished: impl Iterator<Item = &'a PathBuf>) -> Result<()> {
    let written: BTreeSet<String> =
        finished.filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    let declared: BTreeSet<String> = graph
        .rasters
        .iter()
        .filter(|r| r.lifetime == crate::graph::Lifetime::Declared)
        .map(|r| r.name.clone())
        .collect();
    if written != declared {
        let extra: Vec<&String> = written.difference(&declared).collect();
        let missing: Vec<&String> = declared.difference(&written).collect();
        bail!("internal: the run wrote rasters its graph does not name ({extra:?}) or missed ones it names ({missing:?})");
    }
    Ok(())
}

fn progress_bar(show: bool, total: usize, done: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} chunks {pos}/{len} [{bar:40}] {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

/// Copies the `core` window out of per-pixel planes laid out on `outer`.
fn crop<T: Copy>(planes: &[T], layers: usize, outer: Window, core: Window) -> Vec<T> {
    if outer == core {
        return planes.to_vec();
    }
    let (dr, dc) = (core.row - outer.row, core.col - outer.col);
    let mut out = Vec::with_capacity(layers * core.pixels());
    for layer in planes.chunks_exact(outer.pixels()).take(layers) {
        for r in 0..core.rows {
            let start = (dr + r) * outer.cols + dc;
            out.extend_from_slice(&layer[start..start + core.cols]);
        }
    }
    out
}

/// Copies the rows of the `core` pixels out of a pixel-major matrix laid out on `outer`.
fn crop_rows(data: &[f32], width: usize, outer: Window, core: Window) -> Vec<f32> {
    if outer == core {
        return data.to_vec();
    }
    let (dr, dc) = (core.row - outer.row, core.col - outer.col);
    let mut out = Vec::with_capacity(core.pixels() * width);
    for r in 0..core.rows {
        let start = ((dr + r) * outer.cols + dc) * width;
        out.extend_from_slice(&data[start..start + core.cols * width]);
    }
    out
}

/// The cube of chunk `index` (its `window` read with `halo` px around it, reflected
/// where the halo leaves the scene) and where it lies.
pub(crate) fn chunk_input(
    reader: &mut crate::raster::SeriesReader,
    series: &Series,
    dates: &[String],
    index: usize,
    window: Window,
    halo: usize,
) -> Result<(Cube, ChunkWindows), String> {
    let (width, height) = (series.grid.width, series.grid.height);
    let read_window = window.with_halo(halo, width, height);
    let data = reader.read(read_window).map_err(|e| format!("chunk {index} ({window}): {e:#}"))?;
    // Where the halo leaves the scene, it is filled by reflection.
    let h = halo;
    let pad = [
        h - (window.row - read_window.row),
        h - (read_window.row + read_window.rows - window.row - window.rows),
        h - (window.col - read_window.col),
        h - (read_window.col + read_window.cols - window.col - window.cols),
    ];
    let (rows, cols) = (window.rows + 2 * h, window.cols + 2 * h);
    let valid = if data.valid.is_empty() { data.valid } else { pad_reflect_owned(data.valid, read_window.rows, read_window.cols, pad) };
    let cube = Cube {
        dates: dates.to_vec(),
        bands: series.bands.clone(),
        rows: rows as u32,
        cols: cols as u32,
        data: pad_reflect_owned(data.data, read_window.rows, read_window.cols, pad),
        valid,
    };
    let placement = crate::runtime::data::Placement {
        row: window.row as i32 - h as i32,
        col: window.col as i32 - h as i32,
        core_row: h as u32,
        core_col: h as u32,
        core_rows: window.rows as u32,
        core_cols: window.cols as u32,
        scene_rows: height as u32,
        scene_cols: width as u32,
    };
    let around = ChunkWindows {
        index,
        window,
        outer: Window { row: 0, col: 0, rows, cols },
        core: Window { row: h, col: h, rows: window.rows, cols: window.cols },
        placement,
    };
    Ok((cube, around))
}

/// Side of the window the probe runs the chunk stages on (or their tile, when larger).
const PROBE_SIDE: usize = 16;

/// What each chunk stage returns, in bytes per pixel of the series' grid (its scale²
/// output pixels, every year of a per-year stage), found by running the chunk stages once
/// on a small window at the scene's top-left: the layout sizes chunks from what stages
/// return, not from a guess (0 for every stage when the probe fails).
fn probe_output_bytes(
    plan: &Plan,
    series: &Series,
    chunk_stages: &[(usize, &StagePlan)],
    models: &std::sync::Arc<crate::inference::ModelSet>,
    years: &[(i32, Vec<usize>)],
    halo: usize,
    tile: usize,
) -> Result<Vec<usize>> {
    if chunk_stages.is_empty() {
        return Ok(Vec::new());
    }
    let side = PROBE_SIDE.max(tile);
    let window = Window { row: 0, col: 0, rows: side.min(series.grid.height), cols: side.min(series.grid.width) };
    let pools: Vec<StagePool> = chunk_stages
        .iter()
        .map(|(_, s)| StagePool::with_models(s.chunk_plugin().clone(), s.limits, models.clone()).seeded(plan.seed))
        .collect();
    let nanos: Vec<AtomicU64> = plan.stages.iter().map(|_| AtomicU64::new(0)).collect();
    let mut reader = series.reader()?;
    let probe = (|| -> Result<Vec<StageOutput>, String> {
        let (cube, around) = chunk_input(&mut reader, series, &series.dates(), 0, window, halo)?;
        run_stages(chunk_stages, &pools, &nanos, years, &around, cube)
    })();
    // A stage failing here fails again in the chunk phase, which reports every chunk that
    // failed and keeps those done; until then the sizes fall back to the assumed ones.
    let outputs = match probe {
        Ok(outputs) => outputs,
        Err(e) => {
            log::debug!("probing the chunk stages on the scene's top-left {} × {} px failed ({e}); sizing chunks without it", window.cols, window.rows);
            return Ok(vec![0; chunk_stages.len()]);
        }
    };
    let pixels = window.pixels().max(1);
    let mut outputs = outputs.into_iter();
    let mut bytes = Vec::with_capacity(chunk_stages.len());
    for (_, stage) in chunk_stages {
        let parts = if stage.role.per_year() { years.len() } else { 1 };
        let total: usize = outputs
            .by_ref()
            .take(parts)
            .map(|o| match o {
                StageOutput::Mask(classes) => classes.len(),
                StageOutput::Features(_, data) => data.len() * 4,
            })
            .sum();
        bytes.push(total.div_ceil(pixels));
    }
    Ok(bytes)
}

/// A chunk as the stages see it: its window in the scene, the cube around it (halo
/// included, in cube pixels) and the core the host keeps, and the placement the stage
/// is told.
pub(crate) struct ChunkWindows {
    index: usize,
    window: Window,
    outer: Window,
    core: Window,
    pub(crate) placement: crate::runtime::data::Placement,
}

/// Runs every stage on one chunk, in order; cloud masks narrow the validity that
/// later stages see. Each output is checked against the stage's footprint (the whole
/// cube, times its scale) and cropped to the core.
pub(crate) fn run_stages(
    stages: &[(usize, &StagePlan)],
    pools: &[StagePool],
    stage_nanos: &[AtomicU64],
    years: &[(i32, Vec<usize>)],
    around: &ChunkWindows,
    mut cube: Cube,
) -> Result<Vec<StageOutput>, String> {
    let ChunkWindows { index, window, outer, core, .. } = *around;
    let mut outputs = Vec::with_capacity(stages.len());
    let dates = cube.dates.len();
    // Whole-cube outputs (halo included) of the stages a later stage reads.
    let mut kept: HashMap<&str, Cube> = HashMap::new();
    let read_later = |id: &str| stages.iter().any(|(_, t)| t.role.input().is_some_and(|i| i.as_str() == id));
    for (&(s, stage), pool) in stages.iter().zip(pools) {
        // What the stage reads: the series (masked so far) or an earlier stage's output.
        let derived = match stage.role.input() {
            Some(input) => Some(kept.get(input.as_str()).ok_or_else(|| format!("stage '{}': its input '{input}' ran after it", stage.id))?),
            None => None,
        };
        let source = derived.unwrap_or(&cube);
        let derived_years;
        let years: &[(i32, Vec<usize>)] = match derived {
            Some(d) => {
                derived_years = crate::raster::years_of(&d.dates);
                &derived_years
            }
            None => years,
        };
        let scale = stage.role.footprint().map_or(1, |f| f.scale);
        let (outer_out, core_out) = (outer.scaled(scale), core.scaled(scale));
        let at = || around.placement.clone();
        let context = CallContext { stage: stage.id.to_string(), chunk: format!("chunk {index}") };
        let params = stage.params_json();
        let started = Instant::now();
        let fail = |e: crate::runtime::StageCallError| {
            format!("stage '{}' ({}) on chunk {index} ({window}): {e}", stage.id, stage.reference())
        };
        let output = match &stage.role {
            Role::CloudMask { .. } => {
                if source.dates != cube.dates {
                    return Err(format!(
                        "stage '{}' masks the series' {dates} dates, and its input has features of {} dates ({}…): \
                         a mask reads features of every date of the series",
                        stage.id,
                        source.dates.len(),
                        source.dates.first().map_or("", String::as_str)
                    ));
                }
                let mask = pool.with(|i| i.mask_at(&context, source, at(), &params)).map_err(fail)?;
                check_len(stage, index, "mask classes", mask.classes.len(), dates * outer.pixels())?;
                apply_mask(&mut cube, &mask.classes);
                StageOutput::Mask(crop(&mask.classes, dates, outer, core))
            }
            Role::Features { per_year: true, .. } => {
                for (_, dates_of_year) in years {
                    let sub = year_cube(source, dates_of_year);
                    let features = pool.with(|i| i.features_at(&context, &sub, at(), &params)).map_err(fail)?;
                    check_len(stage, index, "feature samples", features.samples as usize, outer_out.pixels())?;
                    let width = features.names.len();
                    check_feature_values(&format!("stage '{}' ({}) on chunk {index}", stage.id, stage.reference()), width, features.data.len(), outer_out.pixels())?;
                    check_feature_names(stage, index, &features.names)?;
                    let names = positional_names(&features.names);
                    outputs.push(StageOutput::Features(names, crop_rows(&features.data, width, outer_out, core_out)));
                }
                stage_nanos[s].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                continue;
            }
            Role::Features { per_year: false, .. } => {
                let features = pool.with(|i| i.features_at(&context, source, at(), &params)).map_err(fail)?;
                check_len(stage, index, "feature samples", features.samples as usize, outer_out.pixels())?;
                let width = features.names.len();
                check_feature_values(&format!("stage '{}' ({}) on chunk {index}", stage.id, stage.reference()), width, features.data.len(), outer_out.pixels())?;
                check_feature_names(stage, index, &features.names)?;
                let cropped = crop_rows(&features.data, width, outer_out, core_out);
                if read_later(stage.id.as_str()) {
                    let as_cube = features_cube(&features.names, &features.data, outer.rows, outer.cols)
                        .map_err(|e| format!("stage '{}' on chunk {index}: its output, read by a later stage: {e}", stage.id))?;
                    kept.insert(stage.id.as_str(), as_cube);
                }
                StageOutput::Features(features.names, cropped)
            }
            _ => return Err(format!("stage '{}' is a {} stage, which does not run on chunks", stage.id, stage.kind_name())),
        };
        stage_nanos[s].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        outputs.push(output);
    }
    Ok(outputs)
}

/// `NDVI@2019-03-04` → (`NDVI`, `2019-03-04`); None for a name without a date.
fn dated(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('@').filter(|(_, d)| crate::raster::parse_date(d).is_some())
}

/// A features stage's output (`pixels × features`, pixel-major, on a `rows × cols`
/// window) as the cube a later stage reads: every feature named `NAME@DATE`, dates in
/// order, one band per distinct name in the order first seen; a value absent for a
/// date is NaN, and a pixel is valid on a date where any of its bands is a number.
fn features_cube(names: &[String], data: &[f32], rows: usize, cols: usize) -> Result<Cube, String> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        match dated(n) {
            Some((band, date)) => parts.push((band.to_string(), date.to_string())),
            None => return Err(format!("feature '{n}' is not NAME@DATE (YYYY-MM-DD); a stage reads only dated features as a cube")),
        }
    }
    let mut dates: Vec<String> = parts.iter().map(|(_, d)| d.clone()).collect();
    dates.sort();
    dates.dedup();
    let mut bands: Vec<String> = Vec::new();
    for (b, _) in &parts {
        if !bands.contains(b) {
            bands.push(b.clone());
        }
    }
    let pixels = rows * cols;
    let width = names.len();
    let mut cube_data = vec![f32::NAN; dates.len() * bands.len() * pixels];
    for (k, (band, date)) in parts.iter().enumerate() {
        let d = dates.binary_search(date).expect("collected above");
        let b = bands.iter().position(|x| x == band).expect("collected above");
        let plane = &mut cube_data[(d * bands.len() + b) * pixels..][..pixels];
        for (p, v) in plane.iter_mut().enumerate() {
            *v = data[p * width + k];
        }
    }
    let mut valid = vec![0u8; dates.len() * pixels];
    for (d, valid) in valid.chunks_exact_mut(pixels).enumerate() {
        for b in 0..bands.len() {
            let plane = &cube_data[(d * bands.len() + b) * pixels..][..pixels];
            for (v, x) in valid.iter_mut().zip(plane) {
                *v |= u8::from(!x.is_nan());
            }
        }
    }
    Ok(Cube { dates, bands, rows: rows as u32, cols: cols as u32, data: cube_data, valid })
}

/// The sub-cube of some dates (data and validity of those dates only).
fn year_cube(cube: &Cube, dates: &[usize]) -> Cube {
    let plane = cube.bands.len() * (cube.rows * cube.cols) as usize;
    let pixels = (cube.rows * cube.cols) as usize;
    let mut data = Vec::with_capacity(dates.len() * plane);
    let mut valid = Vec::with_capacity(if cube.valid.is_empty() { 0 } else { dates.len() * pixels });
    for &d in dates {
        data.extend_from_slice(&cube.data[d * plane..(d + 1) * plane]);
        if !cube.valid.is_empty() {
            valid.extend_from_slice(&cube.valid[d * pixels..(d + 1) * pixels]);
        }
    }
    Cube {
        dates: dates.iter().map(|&d| cube.dates[d].clone()).collect(),
        bands: cube.bands.clone(),
        rows: cube.rows,
        cols: cube.cols,
        data,
        valid,
    }
}

/// `NDVI@2019-03-04` → `NDVI@t02` (the date's rank among the names' dates), so the
/// features of different years carry the same names.
fn positional_names(names: &[String]) -> Vec<String> {
    let mut dates: Vec<&str> = names.iter().filter_map(|n| dated(n).map(|(_, d)| d)).collect();
    dates.sort_unstable();
    dates.dedup();
    names
        .iter()
        .map(|n| match dated(n) {
            Some((name, d)) => {
                let rank = dates.binary_search(&d).expect("collected above");
                format!("{name}@t{rank:02}")
            }
            None => n.clone(),
        })
        .collect()
}

/// The longest feature name a stage may return, in bytes.
const MAX_FEATURE_NAME: usize = 256;

/// Checks the feature names a stage returned before they name raster bands: at least
/// one, none empty, too long or holding control characters (NUL included), no two alike.
fn check_feature_names(stage: &StagePlan, index: usize, names: &[String]) -> Result<(), String> {
    let at = || format!("stage '{}' ({}) on chunk {index}", stage.id, stage.reference());
    if names.is_empty() {
        return Err(format!("{}: returned zero features; a features stage returns at least one", at()));
    }
    for (k, name) in names.iter().enumerate() {
        if name.is_empty() || name.len() > MAX_FEATURE_NAME || name.chars().any(char::is_control) {
            return Err(format!(
                "{}: feature {k} is named {}: a name is 1 to {MAX_FEATURE_NAME} bytes without control characters",
                at(),
                crate::fsutil::shown_value(name)
            ));
        }
    }
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("{}: returned the feature name '{}' twice; each feature needs a name of its own", at(), w[0]));
    }
    Ok(())
}

/// A features stage's values against its names: `pixels` rows of `names` values. The
/// message says whether names or values are off (a stage one name short returns a
/// whole number of values per pixel, one more than it names).
/// `at` names the call (stage, plugin, chunk).
pub(crate) fn check_feature_values(at: &str, names: usize, values: usize, pixels: usize) -> Result<(), String> {
    if values == names * pixels {
        return Ok(());
    }
    Err(if pixels > 0 && values % pixels == 0 {
        let per_pixel = values / pixels;
        format!(
            "{at}: returned {per_pixel} values per pixel but named {names} features ({values} values for {pixels} pixels): \
             its names and its values disagree"
        )
    } else {
        format!("{at}: returned {values} values for {pixels} pixels, not a whole number per pixel ({names} features named)")
    })
}

fn check_len(stage: &StagePlan, index: usize, what: &str, got: usize, expected: usize) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "stage '{}' ({}) on chunk {index}: returned {got} {what}, expected {expected}",
            stage.id,
            stage.reference()
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
    series: &Series,
    outputs: &mut [Output],
    (reference_out, reference_ids_out): (&mut Option<Output>, &mut Option<Output>),
    index: usize,
    window: Window,
    chunk: ChunkOutputs,
) -> Result<()> {
    for (out, output) in outputs.iter_mut().zip(chunk.stages) {
        let window = window.scaled(out.scale);
        let n = window.pixels();
        match output {
            StageOutput::Mask(classes) => {
                let names: Vec<String> = series.dates().iter().map(|d| format!("mask@{d}")).collect();
                out.raster.write_chunk(index, window, &names, &classes)?;
            }
            StageOutput::Features(names, data) => {
                // Pixel-major from the stage, band-major in the file.
                let f = names.len();
                let mut planes = vec![0f32; f * n];
                for p in 0..n {
                    for k in 0..f {
                        planes[k * n + p] = data[p * f + k];
                    }
                }
                out.raster.write_chunk(index, window, &names, &planes)?;
            }
        }
    }
    if let (Some((labels, ids)), Some(out)) = (chunk.reference, reference_out.as_mut()) {
        out.raster.write_chunk(index, window, &["reference".to_string()], &labels)?;
        if let (Some(ids), Some(out)) = (ids, reference_ids_out.as_mut()) {
            out.raster.write_chunk(index, window, &["feature id".to_string()], &ids)?;
        }
    }
    Ok(())
}

/// The path a staged file is published under: `root` joined with its path under `staging`.
/// A fit node may name its files absolute (a network's model folder) while the staging
/// folder is relative to the working directory, or the other way round, so both are
/// compared resolved; a file outside the staging folder keeps its own path.
fn published_path(root: &Path, staging: &Path, p: &Path) -> PathBuf {
    let resolved = |x: &Path| std::fs::canonicalize(x).or_else(|_| std::path::absolute(x)).unwrap_or_else(|_| x.to_path_buf());
    match resolved(p).strip_prefix(resolved(staging)) {
        Ok(relative) => root.join(relative),
        Err(_) => p.to_path_buf(),
    }
}

fn file_record(path: &str) -> Result<serde_json::Value> {
    file_record_as(Path::new(path), path)
}

/// The record of a file read at `local` and named `shown` (a staged output under the
/// name it is published as).
fn file_record_as(local: &Path, path: &str) -> Result<serde_json::Value> {
    if !local.exists() {
        // A GDAL virtual path (/vsicurl/…): recorded by name only.
        return Ok(json!({ "path": path }));
    }
    let bytes = std::fs::metadata(local).with_context(|| format!("reading {path}"))?.len();
    let sha256 = crate::hash::sha256_file(local).with_context(|| format!("hashing {path}"))?;
    Ok(json!({ "path": path, "bytes": bytes, "sha256": sha256 }))
}

/// The run's manifest (published last, by `RunDir::publish`): what ran on what, and
/// every output with its size and sha256.
#[allow(clippy::too_many_arguments)]
fn manifest(
    plan: &Plan,
    series: &Series,
    run_dir: &crate::rundir::RunDir,
    outputs: &[PathBuf],
    stage_nanos: &[AtomicU64],
    layout: &Layout,
    chunks: usize,
    resumed: usize,
    unmapped: &BTreeMap<u32, u64>,
    models: &crate::inference::ModelSet,
    seconds: f64,
) -> Result<serde_json::Value> {
    let models = models
        .iter()
        .map(|(name, m)| {
            Ok(json!({
                "name": name,
                "file": file_record(&m.path().display().to_string())?,
                "provider": m.provider().to_string(),
                "fallback_reason": m.fallback_reason(),
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let inputs = series.files().iter().map(|f| file_record(f)).collect::<Result<Vec<_>>>()?;
    // A STAC API search: what was asked, and the items it froze (which reruns read).
    let stac_search = match &plan.input.source {
        crate::plan::InputSource::StacApi(api) => {
            let frozen = plan.output_dir.join(crate::plan::FROZEN_STAC_ITEMS);
            json!({
                "url": api.url,
                "collections": api.collections,
                "bbox": api.bbox,
                "aoi": api.aoi.as_ref().map(|a| a.display().to_string()),
                "start": plan.input.dates.start,
                "end": plan.input.dates.end,
                "max_cloud_cover": api.max_cloud_cover,
                "frozen_items": file_record_as(&frozen, crate::plan::FROZEN_STAC_ITEMS)?,
            })
        }
        _ => serde_json::Value::Null,
    };
    let staging = run_dir.staging();
    let outputs = outputs
        .iter()
        .map(|p| file_record_as(p, &published_path(run_dir.root(), &staging, p).display().to_string()))
        .collect::<Result<Vec<_>>>()?;
    let stages: Vec<_> = plan
        .stages
        .iter()
        .zip(stage_nanos)
        .map(|(s, nanos)| {
            let cpu_seconds = nanos.load(Ordering::Relaxed) as f64 / 1e9;
            match &s.executor {
                crate::plan::Executor::Plugin(plugin) => json!({
                    "id": s.id.to_string(),
                    "plugin": plugin.info().reference(),
                    "kind": s.kind_name(),
                    "wit": plugin.wit_package(),
                    "footprint": s.role.footprint().map(|f| json!({ "tile": f.tile, "halo": f.halo, "scale": f.scale })),
                    "sha256": plugin.sha256(),
                    "params": s.params,
                    "memory_mib": s.limits.memory_bytes >> 20,
                    "deadline_ms": (plugin.interruption() == crate::runtime::Interruption::Deadline).then_some(s.limits.deadline_ms),
                    "trusted": plugin.interruption() == crate::runtime::Interruption::Trusted,
                    "cpu_seconds": cpu_seconds,
                }),
                crate::plan::Executor::Recipe(recipe) => json!({
                    "id": s.id.to_string(),
                    "recipe": recipe.arch,
                    "kind": s.kind_name(),
                    "sha256": recipe.sha256,
                    "params": s.params,
                    "device": recipe.device.to_string(),
                    "cpu_seconds": cpu_seconds,
                }),
            }
        })
        .collect();
    let reference = match &plan.reference {
        Some(r) => json!({
            "path": r.path.display().to_string(),
            "source": file_record(&r.path.display().to_string())?,
            "nomenclature": r.nomenclature.name,
            "unmapped_codes": unmapped.iter().map(|(c, n)| json!({"code": c, "pixels": n})).collect::<Vec<_>>(),
        }),
        None => serde_json::Value::Null,
    };
    let manifest = json!({
        "sitsflow": env!("CARGO_PKG_VERSION"),
        "wit": crate::runtime::data::WIT_PACKAGE,
        "gdal": crate::raster::gdal_version(),
        "pipeline": {
            "name": plan.name,
            "path": plan.pipeline.display().to_string(),
            "sha256": crate::hash::sha256_hex(plan.pipeline_text.as_bytes()),
            "text": plan.pipeline_text,
        },
        "seed": plan.seed,
        "series": {
            "origin": series.origin.display().to_string(),
            "dates": series.dates(),
            "bands": series.bands,
            "width": series.grid.width,
            "height": series.grid.height,
            "geo_transform": series.grid.geo_transform,
            "crs_wkt": series.grid.projection,
            "radiometry": series.scenes.iter().filter_map(|s| s.radiometry.clone().map(|mut r| { r["date"] = json!(s.date); r })).collect::<Vec<_>>(),
            "stac_search": stac_search,
        },
        "inputs": inputs,
        "reference": reference,
        "stages": stages,
        "models": models,
        "outputs": outputs,
        "chunks": chunks,
        "resumed_chunks": resumed,
        "chunk_size": layout.chunk_size,
        "halo": layout.halo,
        "workers": layout.workers,
        "memory_budget_mib": plan.memory_budget_mib,
        "memory_estimate_mib": layout.estimate_mib,
        "wall_seconds": seconds,
    });
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_removes_the_halo() {
        // 2 layers on a 4 × 4 outer window; core is the middle 2 × 2.
        let outer = Window { row: 0, col: 0, rows: 4, cols: 4 };
        let core = Window { row: 1, col: 1, rows: 2, cols: 2 };
        let planes: Vec<u32> = (0..32).collect();
        assert_eq!(crop(&planes, 2, outer, core), [5, 6, 9, 10, 21, 22, 25, 26]);
        let features: Vec<f32> = (0..32).map(|v| v as f32).collect(); // 16 px × 2 features
        assert_eq!(crop_rows(&features, 2, outer, core), [10.0, 11.0, 12.0, 13.0, 18.0, 19.0, 20.0, 21.0]);
    }

    #[test]
    fn layout_fits_the_budget() {
        let stages = [(StageKind::Features, 1, 0)];
        let l = Layout::plan(2048, None, None, 0, 0, 0, 2, 36, 10, &stages).unwrap();
        assert!(l.estimate_mib <= 2048 && l.chunk_size >= 256, "{l:?}");
        let aligned = Layout::plan(2048, None, Some(256), 0, 0, 0, 2, 36, 10, &stages).unwrap();
        assert_eq!(aligned.chunk_size % 256, 0, "{aligned:?}");
        assert!(aligned.chunk_size <= l.chunk_size);
        let small = Layout::plan(256, None, None, 0, 0, 16, 2, 36, 10, &stages).unwrap();
        assert!(small.estimate_mib <= 256 && small.chunk_size < l.chunk_size, "{small:?}");
        let err = Layout::plan(256, Some(2048), None, 0, 0, 0, 2, 36, 10, &stages).unwrap_err().to_string();
        assert!(err.starts_with("chunk_size 2048 needs about"), "{err}");
    }

    #[test]
    fn chunks_are_multiples_of_the_stages_tile() {
        let stages = [(StageKind::Features, 1, 0)];
        let l = Layout::plan(1024, None, Some(256), 64, 0, 16, 2, 36, 10, &stages).unwrap();
        assert_eq!(l.chunk_size % 64, 0, "{l:?}");
        let err = Layout::plan(1024, Some(100), None, 64, 0, 16, 2, 36, 10, &stages).unwrap_err().to_string();
        assert!(err.contains("chunk_size 100 is not a multiple of the 64 px tile a stage works on; use 64"), "{err}");
        let fine = Layout::plan(1024, None, None, 0, 0, 0, 2, 36, 10, &[(StageKind::Features, 4, 0)]).unwrap();
        assert!(fine.chunk_size < l.chunk_size, "a 4× finer output takes more memory per chunk: {fine:?}");
    }

    #[test]
    fn dated_features_become_a_cube_of_dates_and_bands() {
        // 2 pixels; features in an order that is neither by date nor by band.
        let names: Vec<String> = ["B@2020-02-01", "A@2020-01-01", "A@2020-02-01"].iter().map(|s| s.to_string()).collect();
        let data = [1.0, 2.0, 3.0, f32::NAN, f32::NAN, 6.0];
        let cube = features_cube(&names, &data, 1, 2).unwrap();
        assert_eq!(cube.dates, ["2020-01-01", "2020-02-01"]);
        assert_eq!(cube.bands, ["B", "A"]);
        let bits: Vec<u32> = cube.data.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = [f32::NAN, f32::NAN, 2.0, f32::NAN, 1.0, f32::NAN, 3.0, 6.0].iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, want, "date-major, then band, then pixel; absent values NaN");
        assert_eq!(cube.valid, [1, 0, 1, 1], "valid where any band of the date is a number");
        let err = features_cube(&["NDVI_mean".to_string()], &[0.5], 1, 1).unwrap_err();
        assert!(err.contains("'NDVI_mean' is not NAME@DATE"), "{err}");
    }

    #[test]
    fn reflection_pads_without_repeating_the_edge() {
        // One 2 × 3 plane: 1 2 3 / 4 5 6, padded by 1 on every side.
        let padded = pad_reflect(&[1, 2, 3, 4, 5, 6], 2, 3, [1, 1, 1, 1]);
        assert_eq!(padded, [5, 4, 5, 6, 5, 2, 1, 2, 3, 2, 5, 4, 5, 6, 5, 2, 1, 2, 3, 2]);
        // Wider than the image: folds again (period 2 for a 2-pixel axis).
        assert_eq!(pad_reflect(&[1, 2], 1, 2, [0, 0, 3, 0]), [2, 1, 2, 1, 2]);
        assert_eq!(pad_reflect(&[7], 1, 1, [1, 1, 1, 1]), [7; 9]);
    }

    #[test]
    fn the_chunk_grid_does_not_depend_on_the_worker_count() {
        let stages = [(StageKind::CloudMask, 1, 0), (StageKind::Features, 1, 0)];
        let sizes: Vec<usize> =
            [1, 2, 8, 64].iter().map(|&w| Layout::plan(1024, None, None, 0, 0, 2, w, 36, 11, &stages).unwrap().chunk_size).collect();
        assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
        let many = Layout::plan(1024, None, None, 0, 0, 2, 64, 36, 11, &stages).unwrap();
        assert!(many.workers < 64 && many.estimate_mib <= 1024, "the budget caps the workers: {many:?}");
        let one = Layout::plan(1024, None, None, 0, 0, 2, 1, 36, 11, &stages).unwrap();
        assert_eq!(one.workers, 1);
    }
}
