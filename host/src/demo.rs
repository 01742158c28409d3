//! `sitsflow demo-data`: a small, deterministic, Sentinel-2-like multi-year series
//! to run pipelines on without downloading anything.
//!
//! The scene is a landscape of crop parcels, grassland, broadleaf and conifer
//! forest, a lake and river, and a town. Each pixel's reflectance in the ten
//! S2 bands mixes a class's green-vegetation spectrum with soil by a greenness
//! curve (phenology per class: crops green up in May and are harvested in
//! August, broadleaves lose their leaves in winter, conifers stay green). Clouds
//! (bright, NaN-free) and their shadows (dark) cover some dates. Land cover
//! changes between years: a clear-cut, storm damage and new buildings. The truth
//! of each year and a coarse, CORINE-like reference map are written beside it.

use crate::raster::{Grid, write_geotiff_f32};
use anyhow::{Context, Result};
use gdal::raster::Buffer;
use gdal::{DriverManager, Metadata};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// The Sentinel-2 bands of the demo, in order.
pub const BANDS: [&str; 10] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"];

/// Demo classes: code, name, colour.
pub const CLASSES: [(u16, &str, &str); 7] = [
    (1, "Artificial", "#e6004d"),
    (2, "Grass", "#ccf24d"),
    (3, "Crops", "#ffe64d"),
    (4, "Broadleaves", "#80ff00"),
    (5, "Conifers", "#00a600"),
    (6, "Water", "#00ccf2"),
    (7, "Bare soil", "#cc9966"),
];

const SOIL: [f32; 10] = [0.08, 0.10, 0.13, 0.16, 0.19, 0.21, 0.22, 0.23, 0.30, 0.25];
const GREEN: [[f32; 10]; 8] = [
    [0.0; 10],                                                    // unused
    [0.10, 0.11, 0.12, 0.13, 0.15, 0.16, 0.17, 0.17, 0.20, 0.18], // artificial (no phenology)
    [0.03, 0.07, 0.04, 0.11, 0.26, 0.31, 0.33, 0.34, 0.20, 0.10], // grass
    [0.03, 0.08, 0.03, 0.12, 0.32, 0.40, 0.43, 0.44, 0.21, 0.09], // crops
    [0.03, 0.06, 0.03, 0.10, 0.30, 0.38, 0.40, 0.42, 0.18, 0.08], // broadleaves
    [0.02, 0.04, 0.02, 0.07, 0.20, 0.25, 0.27, 0.28, 0.13, 0.06], // conifers
    [0.06, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.003], // water
    SOIL,                                                         // bare soil
];

/// Greenness 0..1 of a class on a day of year.
fn greenness(class: u16, doy: f32) -> f32 {
    let bump = |peak: f32, width: f32| (-((doy - peak) / width).powi(2)).exp();
    match class {
        2 => 0.35 + 0.55 * bump(170.0, 70.0),
        3 => {
            if doy > 225.0 {
                0.05
            } else {
                0.05 + 0.9 * bump(180.0, 35.0)
            }
        }
        4 => 0.15 + 0.8 * bump(190.0, 60.0),
        5 => 0.85 + 0.1 * bump(190.0, 80.0),
        _ => 1.0,
    }
}

/// Options of the generator.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub size: usize,
    pub years: Vec<i32>,
    pub dates_per_year: usize,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { size: 256, years: vec![2018, 2019, 2020], dates_per_year: 12, seed: 7 }
    }
}

/// The land cover of the first year.
fn base_map(size: usize, rng: &mut ChaCha8Rng) -> Vec<u16> {
    let mut map = vec![3u16; size * size];
    let s = size as f32;
    // Parcels: crops or grass in a jittered grid of fields.
    let field = (size / 8).max(4);
    for fr in (0..size).step_by(field) {
        for fc in (0..size).step_by(field) {
            let class = if rng.random::<f32>() < 0.35 { 2 } else { 3 };
            for r in fr..(fr + field).min(size) {
                for c in fc..(fc + field).min(size) {
                    map[r * size + c] = class;
                }
            }
        }
    }
    // Forests: two large blobs, conifers in the north-east, broadleaves in the south-west.
    let blobs = [(0.25 * s, 0.75 * s, 0.22 * s, 5u16), (0.72 * s, 0.25 * s, 0.2 * s, 4u16), (0.3 * s, 0.45 * s, 0.08 * s, 4u16)];
    for r in 0..size {
        for c in 0..size {
            let (y, x) = (r as f32, c as f32);
            for &(by, bx, radius, class) in &blobs {
                let wobble = 1.0 + 0.15 * ((x * 0.11).sin() + (y * 0.07).cos());
                if ((y - by).powi(2) + (x - bx).powi(2)).sqrt() < radius * wobble {
                    map[r * size + c] = class;
                }
            }
            // A river across the scene and a lake.
            let river = 0.55 * s + 0.08 * s * (x / s * 6.0).sin();
            if (y - river).abs() < 0.012 * s + 1.0 {
                map[r * size + c] = 6;
            }
            if ((y - 0.85 * s).powi(2) + (x - 0.8 * s).powi(2)).sqrt() < 0.07 * s {
                map[r * size + c] = 6;
            }
            // The town.
            if (y - 0.2 * s).abs() < 0.08 * s && (x - 0.25 * s).abs() < 0.1 * s {
                map[r * size + c] = 1;
            }
        }
    }
    map
}

/// Land cover of each year: the base map with changes applied cumulatively.
fn yearly_maps(base: &[u16], size: usize, years: usize) -> Vec<Vec<u16>> {
    let s = size as f32;
    let mut maps = vec![base.to_vec()];
    for year in 1..years {
        let mut map = maps[year - 1].clone();
        for r in 0..size {
            for c in 0..size {
                let (y, x) = (r as f32, c as f32);
                let i = r * size + c;
                // Year 2: a clear-cut in the conifers and storm damage in the broadleaves.
                if year == 1 {
                    if map[i] == 5 && (y - 0.2 * s).abs() < 0.06 * s && (x - 0.8 * s).abs() < 0.06 * s {
                        map[i] = 7;
                    }
                    if map[i] == 4 && (y - 0.75 * s).abs() < 0.04 * s && (x - 0.2 * s).abs() < 0.1 * s {
                        map[i] = 2;
                    }
                }
                // Year 3: new buildings on fields next to the town.
                if year == 2 && matches!(map[i], 2 | 3) && (y - 0.2 * s).abs() < 0.08 * s && (x - 0.4 * s).abs() < 0.05 * s {
                    map[i] = 1;
                }
            }
        }
        maps.push(map);
    }
    maps
}

fn day_of_year(month: u32, day: u32) -> f32 {
    const START: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    (START[month as usize - 1] + day) as f32
}

/// Writes the demo series, truth and reference into `dir`.
pub fn generate(dir: &Path, options: &DemoOptions) -> Result<()> {
    let size = options.size;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let base = base_map(size, &mut rng);
    let maps = yearly_maps(&base, size, options.years.len());
    // A UTM 33N grid near Ljubljana, 10 m pixels.
    let grid = Grid {
        width: size,
        height: size,
        geo_transform: Some([460_000.0, 10.0, 0.0, 5_100_000.0, 0.0, -10.0]),
        projection: gdal::spatial_ref::SpatialRef::from_epsg(32633)?.to_wkt()?,
    };
    let bands: Vec<String> = BANDS.iter().map(|b| b.to_string()).collect();
    let series = dir.join("series");
    std::fs::create_dir_all(&series)?;
    let n = size * size;
    for (y, &year) in options.years.iter().enumerate() {
        let map = &maps[y];
        for k in 0..options.dates_per_year {
            let month = (k * 12 / options.dates_per_year) as u32 + 1;
            let day = 5 + rng.random_range(0..20);
            let doy = day_of_year(month, day);
            // Clouds: a few bright discs with their shadows offset to the south-east.
            let cloudy = rng.random::<f32>() < 0.4;
            let clouds: Vec<(f32, f32, f32)> = if cloudy {
                (0..rng.random_range(1..4))
                    .map(|_| (rng.random::<f32>() * size as f32, rng.random::<f32>() * size as f32, 8.0 + rng.random::<f32>() * size as f32 * 0.12))
                    .collect()
            } else {
                Vec::new()
            };
            let mut planes = vec![vec![0f32; n]; BANDS.len()];
            for i in 0..n {
                let (r, c) = ((i / size) as f32, (i % size) as f32);
                let class = map[i];
                let g = greenness(class, doy);
                let mut cover = 0f32;
                let mut shadow = false;
                for &(cy, cx, radius) in &clouds {
                    let d = ((r - cy).powi(2) + (c - cx).powi(2)).sqrt();
                    cover = cover.max((1.0 - d / radius).clamp(0.0, 1.0).powf(0.5));
                    let ds = ((r - cy - radius * 0.6).powi(2) + (c - cx - radius * 0.6).powi(2)).sqrt();
                    shadow |= ds < radius * 0.8;
                }
                for b in 0..BANDS.len() {
                    let pure = if class == 1 || class == 6 || class == 7 { GREEN[class as usize][b] } else { SOIL[b] + g * (GREEN[class as usize][b] - SOIL[b]) };
                    let noise = 1.0 + 0.04 * (rng.random::<f32>() - 0.5);
                    let mut v = pure * noise;
                    if shadow && cover < 0.2 {
                        v *= 0.45;
                    }
                    v = v * (1.0 - cover) + cover * (0.45 + 0.1 * (b as f32 / 10.0));
                    planes[b][i] = v;
                }
            }
            let date = format!("{year}-{month:02}-{day:02}");
            write_geotiff_f32(&series.join(format!("{date}.tif")), &grid, &bands, planes)
                .with_context(|| format!("writing the demo scene of {date}"))?;
        }
        write_labels(&dir.join("truth").join(format!("{year}.tif")), &grid, map)?;
    }
    // CORINE-like reference: the first year's map by majority over 10 × 10 px (100 m).
    let mut reference = vec![0u16; n];
    let block = 10;
    for br in (0..size).step_by(block) {
        for bc in (0..size).step_by(block) {
            let mut counts = [0usize; 8];
            for r in br..(br + block).min(size) {
                for c in bc..(bc + block).min(size) {
                    counts[maps[0][r * size + c] as usize] += 1;
                }
            }
            let mode = (1..8).max_by_key(|&k| (counts[k], std::cmp::Reverse(k))).unwrap_or(0) as u16;
            for r in br..(br + block).min(size) {
                for c in bc..(bc + block).min(size) {
                    reference[r * size + c] = mode;
                }
            }
        }
    }
    write_labels(&dir.join("reference.tif"), &grid, &reference)?;
    let mut csv = String::from("code,name,color\n");
    for (code, name, color) in CLASSES {
        csv.push_str(&format!("{code},{name},{color}\n"));
    }
    crate::fsutil::write_atomic(&dir.join("classes.csv"), csv.as_bytes())?;
    Ok(())
}

fn write_labels(path: &Path, grid: &Grid, labels: &[u16]) -> Result<()> {
    crate::fsutil::produce(path, |tmp| {
        let driver = DriverManager::get_driver_by_name("GTiff")?;
        let options = gdal::raster::RasterCreationOptions::from_iter(["COMPRESS=DEFLATE", "TILED=YES"]);
        let mut ds = driver.create_with_band_type_with_options::<u16, _>(tmp, grid.width, grid.height, 1, &options)?;
        if let Some(gt) = grid.geo_transform {
            ds.set_geo_transform(&gt)?;
        }
        ds.set_projection(&grid.projection)?;
        let mut band = ds.rasterband(1)?;
        band.set_description("class")?;
        band.set_no_data_value(Some(0.0))?;
        let mut buffer = Buffer::new((grid.width, grid.height), labels.to_vec());
        band.write((0, 0), (grid.width, grid.height), &mut buffer)?;
        Ok(())
    })
}
