//! Evaluating map files: a map against a reference raster (aligned onto the map's
//! grid by mode, codes translated through a nomenclature), and series of maps.

use super::{AreaEstimate, Confusion, Metrics, agreement, area_estimate};
use sitsflow_raster::{ReferenceMap, VectorSpec, Window, chunk_grid, grid_of, pixel_area};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What `sitsflow eval` reports for a map against a reference.
#[derive(Debug, Clone, Serialize)]
pub struct MapEvaluation {
    /// The map evaluated.
    pub map: PathBuf,
    /// The reference it was compared with (a raster, or a CSV of points).
    pub reference: PathBuf,
    /// Counts of (reference, map) class pairs.
    pub confusion: Confusion,
    /// Accuracy metrics from `confusion`.
    pub metrics: Metrics,
    /// Mapped pixels per class (the strata of a stratified sample).
    pub map_pixels: BTreeMap<u16, u64>,
    /// Area-adjusted estimates, when the reference is a stratified sample.
    pub area: Option<AreaEstimate>,
    /// Reference codes the nomenclature does not map (code → pixels).
    pub unmapped: BTreeMap<u32, u64>,
    /// The map's no-data code, if one was given, and the assessed pixels (or points)
    /// skipped because the map holds it there.
    pub map_nodata: Option<u16>,
    /// Assessed pixels (or points) skipped because the map holds `map_nodata` there.
    pub skipped_map_nodata: u64,
}

fn to_u16(code: u32, path: &Path) -> Result<u16> {
    u16::try_from(code).with_context(|| format!("{}: class code {code} does not fit 16 bits", path.display()))
}

/// Compares `map` with `reference` pixel by pixel, chunk by chunk. `lookup` translates
/// reference codes (None: codes are classes already). With `stratified`, the
/// reference is a sample stratified by map class and area estimates are added.
pub fn evaluate_map(map: &Path, reference: &Path, lookup: Option<&HashMap<u32, u16>>, stratified: bool) -> Result<MapEvaluation> {
    evaluate_map_with(map, reference, lookup, stratified, None)
}

/// [`evaluate_map`], skipping the pixels where the map holds `map_nodata` (without it,
/// every map value counts: an unmapped pixel is an error of the map).
pub fn evaluate_map_with(
    map: &Path,
    reference: &Path,
    lookup: Option<&HashMap<u32, u16>>,
    stratified: bool,
    map_nodata: Option<u16>,
) -> Result<MapEvaluation> {
    let grid = grid_of(map)?;
    let ref_raster = ReferenceMap::open(reference, &grid)?;
    evaluate_against(map, reference, ref_raster, lookup, stratified, map_nodata)
}

/// A truth made of vectors: which layer and attribute hold the classes, and the class
/// names a name attribute resolves through.
#[derive(Debug, Clone, Copy)]
pub struct TruthVectors<'a> {
    /// Layer and class field.
    pub spec: &'a VectorSpec,
    /// Class name → class code.
    pub class_names: &'a [(String, u16)],
}

/// [`evaluate_map`] against vectors (parcels, points) rasterised onto the map's grid
/// by GDAL: each polygon's pixels whose centre it holds, each point's pixel.
pub fn evaluate_map_vectors(map: &Path, truth: &Path, vectors: TruthVectors, lookup: Option<&HashMap<u32, u16>>, stratified: bool) -> Result<MapEvaluation> {
    let grid = grid_of(map)?;
    let (ref_raster, _) = ReferenceMap::open_vector(truth, vectors.spec, vectors.class_names, &grid)?;
    evaluate_against(map, truth, ref_raster, lookup, stratified, None)
}

fn evaluate_against(
    map: &Path,
    reference: &Path,
    ref_raster: ReferenceMap,
    lookup: Option<&HashMap<u32, u16>>,
    stratified: bool,
    map_nodata: Option<u16>,
) -> Result<MapEvaluation> {
    let grid = grid_of(map)?;
    let mut skipped = 0u64;
    let map_raster = ReferenceMap::open(map, &grid)?;
    let mut confusion = Confusion::default();
    let mut map_pixels: BTreeMap<u16, u64> = BTreeMap::new();
    let mut unmapped = BTreeMap::new();
    for window in chunk_grid(grid.width, grid.height, 1024) {
        let m: Vec<u16> = map_raster.read_raw(window)?.into_iter().map(|c| to_u16(c, map)).collect::<Result<_>>()?;
        let r: Vec<u16> = match lookup {
            Some(l) => ref_raster.read(window, l, &mut unmapped)?,
            None => ref_raster.read_raw(window)?.into_iter().map(|c| to_u16(c, reference)).collect::<Result<_>>()?,
        };
        let mut r = r;
        if let Some(nd) = map_nodata {
            for (r, _) in r.iter_mut().zip(&m).filter(|(r, m)| **m == nd && **r != 0) {
                *r = 0;
                skipped += 1;
            }
        }
        for &c in m.iter().filter(|c| **c != 0 && Some(**c) != map_nodata) {
            *map_pixels.entry(c).or_default() += 1;
        }
        confusion.merge(&Confusion::from_pairs(&r, &m));
    }
    if confusion.total() == 0 {
        bail!("{} and {} share no pixel with a reference class", map.display(), reference.display());
    }
    let area = if stratified {
        let pixel = pixel_area(&grid).unwrap_or(1.0);
        Some(area_estimate(&confusion, &map_pixels, pixel)?)
    } else {
        None
    };
    Ok(MapEvaluation {
        map: map.to_path_buf(),
        reference: reference.to_path_buf(),
        metrics: confusion.metrics(),
        confusion,
        map_pixels,
        area,
        unmapped,
        map_nodata,
        skipped_map_nodata: skipped,
    })
}

/// Compares `map` with reference points from a CSV with columns `x`, `y` (in the map's
/// CRS) and `class` (a code, translated by `lookup` when given). Points outside the map
/// or on its no-data are counted as skipped. With `stratified`, the points are a sample
/// stratified by map class and area estimates are added.
pub fn evaluate_points(map: &Path, points: &Path, lookup: Option<&HashMap<u32, u16>>, stratified: bool) -> Result<MapEvaluation> {
    evaluate_points_with(map, points, lookup, stratified, Some(0))
}

/// [`evaluate_points`], skipping the points where the map holds `map_nodata` (None:
/// every map value counts).
pub fn evaluate_points_with(
    map: &Path,
    points: &Path,
    lookup: Option<&HashMap<u32, u16>>,
    stratified: bool,
    map_nodata: Option<u16>,
) -> Result<MapEvaluation> {
    let grid = grid_of(map)?;
    let mut skipped = 0u64;
    let Some(gt) = grid.geo_transform else {
        bail!("{}: has no georeferencing, so points cannot be placed on it", map.display());
    };
    if gt[2] != 0.0 || gt[4] != 0.0 {
        bail!("{}: rotated grids are not supported for point evaluation", map.display());
    }
    let map_raster = ReferenceMap::open(map, &grid)?;
    let mut reader = csv::Reader::from_path(points).with_context(|| format!("{}: cannot open", points.display()))?;
    let header = reader.headers().with_context(|| format!("{}: cannot read the header", points.display()))?.clone();
    let col = |name: &str| {
        header.iter().position(|h| h == name).with_context(|| format!("{}:1: no `{name}` column (needs x, y, class)", points.display()))
    };
    let (cx, cy, cc) = (col("x")?, col("y")?, col("class")?);
    let mut reference = Vec::new();
    let mut mapped = Vec::new();
    let mut unmapped: BTreeMap<u32, u64> = BTreeMap::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record = record.with_context(|| format!("{}:{line}: malformed row", points.display()))?;
        let number = |c: usize| -> Result<f64> {
            record[c].trim().parse::<f64>().with_context(|| format!("{}:{line}:{}: '{}' is not a number", points.display(), c + 1, &record[c]))
        };
        let (x, y) = (number(cx)?, number(cy)?);
        let code: u32 = record[cc].trim().parse().with_context(|| format!("{}:{line}:{}: class '{}' is not a code", points.display(), cc + 1, &record[cc]))?;
        let class = match lookup {
            Some(l) => match l.get(&code) {
                Some(c) => *c,
                None => {
                    *unmapped.entry(code).or_default() += 1;
                    continue;
                }
            },
            None => to_u16(code, points)?,
        };
        let colf = (x - gt[0]) / gt[1];
        let rowf = (y - gt[3]) / gt[5];
        if colf < 0.0 || rowf < 0.0 || colf >= grid.width as f64 || rowf >= grid.height as f64 {
            continue;
        }
        let window = Window { row: rowf as usize, col: colf as usize, rows: 1, cols: 1 };
        let m = to_u16(map_raster.read_raw(window)?[0], map)?;
        if Some(m) == map_nodata {
            skipped += 1;
            continue;
        }
        reference.push(class);
        mapped.push(m);
    }
    if reference.is_empty() {
        bail!("{}: no point falls on a mapped pixel of {}", points.display(), map.display());
    }
    let mut map_pixels: BTreeMap<u16, u64> = BTreeMap::new();
    for window in chunk_grid(grid.width, grid.height, 1024) {
        for c in map_raster.read_raw(window)? {
            let c = to_u16(c, map)?;
            if c != 0 && Some(c) != map_nodata {
                *map_pixels.entry(c).or_default() += 1;
            }
        }
    }
    let confusion = Confusion::from_pairs(&reference, &mapped);
    let area = if stratified { Some(area_estimate(&confusion, &map_pixels, pixel_area(&grid).unwrap_or(1.0))?) } else { None };
    Ok(MapEvaluation {
        map: map.to_path_buf(),
        reference: points.to_path_buf(),
        metrics: confusion.metrics(),
        confusion,
        map_pixels,
        area,
        unmapped,
        map_nodata,
        skipped_map_nodata: skipped,
    })
}

/// Agreement between consecutive maps of a series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesAgreement {
    /// The earlier map.
    pub from: PathBuf,
    /// The later map.
    pub to: PathBuf,
    /// Share of the pixels classified in both maps that keep their class.
    pub overall: f64,
    /// Per class of the earlier map: the share of its pixels still that class in the later one.
    pub per_class: BTreeMap<u16, f64>,
}

/// Year-to-year agreement of a series of maps on one grid.
pub fn series_agreement(maps: &[PathBuf]) -> Result<Vec<SeriesAgreement>> {
    if maps.len() < 2 {
        bail!("a series needs at least two maps");
    }
    let grid = grid_of(&maps[0])?;
    let rasters: Vec<ReferenceMap> = maps.iter().map(|m| ReferenceMap::open(m, &grid)).collect::<Result<_>>()?;
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let labels: Vec<Vec<u16>> = rasters
        .iter()
        .zip(maps)
        .map(|(r, p)| r.read_raw(window)?.into_iter().map(|c| to_u16(c, p)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    Ok(labels
        .windows(2)
        .zip(maps.windows(2))
        .map(|(l, p)| {
            let (overall, per_class) = agreement(&l[0], &l[1]);
            SeriesAgreement { from: p[0].clone(), to: p[1].clone(), overall, per_class }
        })
        .collect())
}

/// How a series of maps follows the true changes of a series of reference maps.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeAgreement {
    /// Pixel-year pairs whose reference class stays the same.
    pub unchanged: u64,
    /// Of those, the share where the maps keep one class too (stability where nothing changed).
    pub stable_share: f64,
    /// Pixel-year pairs whose reference class changes.
    pub changed: u64,
    /// Of those, the share where the maps change too (true changes kept).
    pub detected_share: f64,
    /// Of those, the share where the maps change to the right class.
    pub detected_correct_share: f64,
}

/// Compares consecutive-year changes of `maps` with those of `truths` (same grid and
/// order; 0 = no data in either is skipped).
pub fn change_agreement(maps: &[PathBuf], truths: &[PathBuf]) -> Result<ChangeAgreement> {
    if maps.len() != truths.len() || maps.len() < 2 {
        bail!("a change comparison needs as many maps as references, at least two");
    }
    let grid = grid_of(&maps[0])?;
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    let read = |p: &PathBuf| -> Result<Vec<u32>> { ReferenceMap::open(p, &grid)?.read_raw(window) };
    let maps: Vec<Vec<u32>> = maps.iter().map(read).collect::<Result<_>>()?;
    let truths: Vec<Vec<u32>> = truths.iter().map(read).collect::<Result<_>>()?;
    let (mut unchanged, mut stable, mut changed, mut detected, mut correct) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in 0..maps.len() - 1 {
        for p in 0..maps[t].len() {
            let (r0, r1, m0, m1) = (truths[t][p], truths[t + 1][p], maps[t][p], maps[t + 1][p]);
            if r0 == 0 || r1 == 0 || m0 == 0 || m1 == 0 {
                continue;
            }
            if r0 == r1 {
                unchanged += 1;
                stable += u64::from(m0 == m1);
            } else {
                changed += 1;
                detected += u64::from(m0 != m1);
                correct += u64::from(m0 != m1 && m1 == r1);
            }
        }
    }
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(ChangeAgreement {
        unchanged,
        stable_share: share(stable, unchanged),
        changed,
        detected_share: share(detected, changed),
        detected_correct_share: share(correct, changed),
    })
}
