//! `sitsflow demo-data`: a small, deterministic, Sentinel-2-like multi-year series
//! to run pipelines on without downloading anything.
//!
//! The scene is a landscape of crop parcels, grassland, broadleaf and conifer
//! forest, a lake and river, and a town. Each pixel's reflectance in the ten
//! S2 bands mixes a class's green-vegetation spectrum with soil by a greenness
//! curve (phenology per class: crops green up in May and are harvested in
//! August, broadleaves lose their leaves in winter, conifers stay green). Clouds
//! (bright, NaN-free) and their shadows (dark) cover some dates; an `SCL` band
//! classifies each scene as Sen2Cor would (missing the faint cloud edges). Pixels
//! of a class differ (sowing date per parcel, vigour, soil brightness, mixing with a
//! neighbouring class at edges), each year's spring comes early or late and each date
//! has its own haze, so maps made from it have errors to assess and to smooth. Land cover
//! changes between years: a clear-cut, storm damage and new buildings. The truth
//! of each year (codes of seed 001's nomenclature, `classes.csv`) and a coarse
//! CORINE-like reference (CLC level-3 codes at 100 m) are written beside it.
//!
//! With `--vhr` (seed 003's fusion) each year also gets a very-high-resolution image,
//! `vhr/<year>.tif`: a summer aerial-like picture at 2.5 m (4× the grid) in four bands
//! (blue, green, red, near infrared), whose every 10 m block is its pixel's class of that
//! year's truth at that date — the same spectra as the series — with the texture only a
//! finer grid shows: crop rows, tree crowns and their shadows, lit and shaded roof
//! slopes, gardens and streets. It is generated, not observed: figures from it say so.
//!
//! With `--forest-change` (seed 000) bark beetles dry some conifer crowns in the last
//! year (the series' pixels mix the dry crowns' share of a dead-needle spectrum in; a
//! series pixel whose 2.5 m block straddles the edge of a wood, a clear-cut or the storm
//! damage mixes each side's spectrum by its share of the block, as a sensor integrates its
//! footprint), and
//! each year gets a 2.5 m annotation of the forest, `forest/<year>.tif`, in seed 000's
//! nomenclature (`configs/nomenclature/forest-change.toml`: coniferous, broadleaf,
//! clear-cut, grass and herbs in clear-cut areas, dry trees; 0 outside the forest),
//! dated the day after each July acquisition (`forest/annotations.csv`: `date,path`, what
//! a super-resolution stage's `annotations` reads): the clear-cut of the second year,
//! the storm damage that grows grass and herbs, and the dry crowns.

#![deny(missing_docs)]

use sitsflow_raster::{ClassStyle, Grid, write_class_map, write_geotiff_dn, write_geotiff_f32};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// The Sentinel-2 bands of the demo, in order.
pub const BANDS: [&str; 10] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"];

/// Demo classes (codes of seed 001's nomenclature, `configs/nomenclature`): code,
/// name, colour, and the CORINE code the coarse reference uses for it.
pub const CLASSES: [(u16, &str, &str, u32); 7] = [
    (ARTIFICIAL, "Artificial", "#e6004d", 112),
    (GRASS, "Grass", "#ccf24d", 231),
    (CROPS, "Crops", "#ffe64d", 211),
    (MINERAL, "Mineral", "#a600cc", 333),
    (BROADLEAVES, "Broadleaves", "#80ff00", 311),
    (CONIFERS, "Conifers", "#00a600", 312),
    (WATER, "Water", "#00ccf2", 512),
];

const ARTIFICIAL: u16 = 1;
const GRASS: u16 = 2;
const CROPS: u16 = 3;
const MINERAL: u16 = 4;
const BROADLEAVES: u16 = 7;
const CONIFERS: u16 = 8;
const WATER: u16 = 9;

const SOIL: [f32; 10] = [0.08, 0.10, 0.13, 0.16, 0.19, 0.21, 0.22, 0.23, 0.30, 0.25];
/// The spectrum of a class at full greenness (or its only spectrum, for classes
/// without phenology).
fn spectrum(class: u16) -> [f32; 10] {
    match class {
        ARTIFICIAL => [0.10, 0.11, 0.12, 0.13, 0.15, 0.16, 0.17, 0.17, 0.20, 0.18],
        GRASS => [0.03, 0.07, 0.04, 0.11, 0.26, 0.31, 0.33, 0.34, 0.20, 0.10],
        CROPS => [0.03, 0.08, 0.03, 0.12, 0.32, 0.40, 0.43, 0.44, 0.21, 0.09],
        BROADLEAVES => [0.03, 0.06, 0.03, 0.10, 0.30, 0.38, 0.40, 0.42, 0.18, 0.08],
        CONIFERS => [0.02, 0.04, 0.02, 0.07, 0.20, 0.25, 0.27, 0.28, 0.13, 0.06],
        WATER => [0.06, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.003],
        _ => SOIL,
    }
}

/// Classes whose reflectance follows a greenness curve between soil and their spectrum.
fn has_phenology(class: u16) -> bool {
    matches!(class, GRASS | CROPS | BROADLEAVES | CONIFERS)
}

/// Greenness 0..1 of a class on a day of year.
fn greenness(class: u16, doy: f32) -> f32 {
    let bump = |peak: f32, width: f32| (-((doy - peak) / width).powi(2)).exp();
    match class {
        GRASS => 0.35 + 0.55 * bump(170.0, 70.0),
        CROPS => {
            if doy > 225.0 {
                0.05
            } else {
                0.05 + 0.9 * bump(180.0, 35.0)
            }
        }
        BROADLEAVES => 0.15 + 0.8 * bump(190.0, 60.0),
        CONIFERS => 0.85 + 0.1 * bump(190.0, 80.0),
        _ => 1.0,
    }
}

/// A Scene Classification Layer code like Sen2Cor's: clouds by their cover (faint
/// cloud edges are missed, as real SCL misses them), shadows, then the surface.
fn scl(class: u16, greenness: f32, cover: f32, shadow: bool) -> f32 {
    let code = if cover > 0.6 {
        9 // cloud, high probability
    } else if cover > 0.3 {
        8 // cloud, medium probability
    } else if cover > 0.1 {
        10 // thin cirrus
    } else if shadow && cover < 0.2 {
        3 // cloud shadow
    } else if class == WATER {
        6
    } else if has_phenology(class) && greenness > 0.3 {
        4 // vegetation
    } else {
        5 // not vegetated
    };
    code as f32
}

/// Options of the generator.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Side of the square scene in pixels (10 m each).
    pub size: usize,
    /// The years of the series, each with its own truth.
    pub years: Vec<i32>,
    /// Acquisitions per year, spread over its months.
    pub dates_per_year: usize,
    /// Seed of the generator: the same seed gives the same files.
    pub seed: u64,
    /// Seed 004's case (`demo-data --urban-fabric`): towns as urban fabric, every pixel
    /// a roof, a garden or a street (the truth stays "Artificial", which only the
    /// context tells), two villages beside the town, and sparse labels
    /// (`sparse/<year>.tif`: the interiors of some 16 px cells, 0 elsewhere).
    pub urban_fabric: bool,
    /// Reflectance as UInt16 digital numbers with L2A's offset (`write_geotiff_dn`), as
    /// Sentinel-2 L2A COGs carry it, instead of Float32 reflectance (`demo-data --dn`).
    pub dn: bool,
    /// A very-high-resolution image per year, `vhr/<year>.tif` (`demo-data --vhr`).
    pub vhr: bool,
    /// Dry trees in the last year and a 2.5 m forest annotation per year,
    /// `forest/<year>.tif`, listed in `forest/annotations.csv` (`demo-data --forest-change`,
    /// seed 000).
    pub forest_change: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { size: 512, years: vec![2018, 2019, 2020], dates_per_year: 12, seed: 7, urban_fabric: false, dn: false, vhr: false, forest_change: false }
    }
}

/// VHR pixels per series pixel along each axis (2.5 m for 10 m).
pub const VHR_SCALE: usize = 4;
/// The VHR image's bands: S2's B02, B03, B04 and B08 as an aerial camera's.
pub const VHR_BANDS: [(&str, usize); 4] = [("blue", 0), ("green", 1), ("red", 2), ("nir", 6)];
/// The metadata item that marks an image as generated (its value says by what): a
/// report on a model trained with it says its figures come from generated data.
pub use sitsflow_raster::GENERATED_KEY;
/// Dead needles: dry crowns are red-brown, with little near infrared left.
const DRY: [f32; 10] = [0.05, 0.07, 0.11, 0.15, 0.17, 0.18, 0.19, 0.2, 0.27, 0.22];
/// Seed 000's forest classes, as `forest/<year>.tif` codes them.
pub const FOREST_CLASSES: [(u16, &str, &str); 5] = [
    (1, "Coniferous forest", "#00a600"),
    (2, "Broadleaf forest", "#80ff00"),
    (3, "Clear-cut", "#a6672e"),
    (4, "Grass and herbs in clear-cut areas", "#ccf24d"),
    (5, "Dry trees", "#e6a000"),
];

/// Whether the VHR pixel (`row`, `col`) on the 4× grid is a dry crown in year `year`
/// (0-based) of `years`: in the last year, in a stand of the north-eastern conifers,
/// 60 % of the crowns there.
fn dry_crown(row: usize, col: usize, size: usize, year: usize, years: usize, seed: u64) -> bool {
    if year + 1 != years || years < 2 {
        return false;
    }
    let s = size as f32;
    let (y, x) = ((row as f32 + 0.5) / VHR_SCALE as f32, (col as f32 + 0.5) / VHR_SCALE as f32);
    if ((y - 0.32 * s).powi(2) + (x - 0.7 * s).powi(2)).sqrt() > 0.06 * s {
        return false;
    }
    let crown_seed = seed ^ 0x7668_72 ^ CONIFERS as u64;
    crown(row, col, 3, 1.6, crown_seed).is_some() && hash01(((row / 3) as u64) << 32 | (col / 3) as u64, seed ^ 0xd7) < 0.6
}

/// The share of a series pixel's VHR pixels that are dry crowns.
fn dry_share(r: usize, c: usize, size: usize, year: usize, years: usize, seed: u64) -> f32 {
    let s = VHR_SCALE;
    let mut n = 0;
    for i in 0..s {
        for j in 0..s {
            n += dry_crown(r * s + i, c * s + j, size, year, years, seed) as usize;
        }
    }
    n as f32 / (s * s) as f32
}

/// The landscape's class at the centre of the 2.5 m pixel (`row`, `col`) of a `side` px
/// scene, in the first year and in year `year` (0-based); `None` outside every shape (the
/// fields, drawn on the 10 m grid). A 2.5 m pixel's centre lies at
/// `(row + 0.5) / 4 − 0.5` series pixels, so the 4 × 4 pixels of series pixel (r, c)
/// are centred on it: the annotation and the series' class map (`shape_class` at the
/// series pixel's index) share one grid.
fn fine_class(row: usize, col: usize, side: f32, year: usize, urban_fabric: bool) -> Option<(u16, u16)> {
    let s = VHR_SCALE;
    let (y, x) = ((row as f32 + 0.5) / s as f32 - 0.5, (col as f32 + 0.5) / s as f32 - 0.5);
    let first = shape_class(y, x, side, urban_fabric)?;
    Some((first, (1..=year).fold(first, |class, t| changed_class(class, y, x, side, t))))
}

/// A part of a series pixel's block made of dry crowns (`DRY`'s spectrum), in [`block_parts`].
const DRY_PART: u16 = u16::MAX;

/// Seed 000: for each series pixel whose 2.5 m block holds more than one of the shapes'
/// classes in year `year` (0-based) — the edge of a wood, of the clear-cut, of the storm
/// damage —, each class of the block (dry crowns as [`DRY_PART`]) with its share of the
/// block, from the same point function as the annotation ([`fine_class`]). `None` where
/// the block is of the pixel's own class (dry crowns in a conifer block are
/// [`dry_share`]'s) or part of it lies outside every shape.
fn block_parts(map: &[u16], size: usize, year: usize, years: usize, urban_fabric: bool, seed: u64) -> Vec<Option<Vec<(u16, f32)>>> {
    let s = VHR_SCALE;
    let side = size as f32;
    let share = 1.0 / (s * s) as f32;
    let mut out = vec![None; size * size];
    for r in 0..size {
        for c in 0..size {
            let fine: Option<Vec<u16>> = (0..s * s)
                .map(|k| {
                    let (row, col) = (r * s + k / s, c * s + k % s);
                    fine_class(row, col, side, year, urban_fabric).map(|(first, now)| {
                        if first == CONIFERS && now == CONIFERS && dry_crown(row, col, size, year, years, seed) { DRY_PART } else { now }
                    })
                })
                .collect();
            let Some(fine) = fine else { continue };
            let own = map[r * size + c];
            if fine.iter().all(|&part| part == own || (part == DRY_PART && own == CONIFERS)) {
                continue;
            }
            let mut parts: Vec<(u16, f32)> = Vec::new();
            for part in fine {
                match parts.iter().position(|p| p.0 == part) {
                    Some(at) => parts[at].1 += share,
                    None => parts.push((part, share)),
                }
            }
            out[r * size + c] = Some(parts);
        }
    }
    out
}

/// Year `year`'s forest annotation on the 4× grid (seed 000's classes, 0 outside the
/// forest), from the landscape's shapes at each 2.5 m pixel's centre ([`fine_class`]; a
/// 10 m pixel on an edge holds both sides, and the series pixel mixes them by their
/// shares: [`block_parts`]): conifers and broadleaves, the conifers cut since the first
/// year as clear-cut, the broadleaves the storm felled as grass and herbs in clear-cut
/// areas, and dry crowns.
fn forest_annotation(size: usize, year: usize, years: usize, urban_fabric: bool, seed: u64) -> Vec<u16> {
    let s = VHR_SCALE;
    let fine = size * s;
    let side = size as f32;
    let mut out = vec![0u16; fine * fine];
    for row in 0..fine {
        for col in 0..fine {
            let Some((first, now)) = fine_class(row, col, side, year, urban_fabric) else { continue };
            out[row * fine + col] = match (first, now) {
                (CONIFERS, CONIFERS) if dry_crown(row, col, size, year, years, seed) => 5,
                (_, CONIFERS) => 1,
                (_, BROADLEAVES) => 2,
                (CONIFERS, MINERAL) => 3,
                (BROADLEAVES, GRASS) => 4,
                _ => 0,
            };
        }
    }
    out
}

/// The day of year of each year's aerial picture.
const VHR_DAY: f32 = 180.0;

/// The land cover of the first year.
fn base_map(size: usize, urban_fabric: bool, rng: &mut ChaCha8Rng) -> Vec<u16> {
    let mut map = vec![CROPS; size * size];
    let s = size as f32;
    // Parcels: crops or grass in a jittered grid of fields.
    let field = (size / 8).max(4);
    for fr in (0..size).step_by(field) {
        for fc in (0..size).step_by(field) {
            let class = if rng.random::<f32>() < 0.35 { GRASS } else { CROPS };
            for r in fr..(fr + field).min(size) {
                for c in fc..(fc + field).min(size) {
                    map[r * size + c] = class;
                }
            }
        }
    }
    for r in 0..size {
        for c in 0..size {
            if let Some(class) = shape_class(r as f32, c as f32, s, urban_fabric) {
                map[r * size + c] = class;
            }
        }
    }
    map
}

/// The class the landscape's shapes give the point (`y`, `x`) (in pixels of a `s` px
/// scene, a pixel's centre at its index), over the fields: two forest blobs — conifers
/// in the north-east, broadleaves in the south-west — and a small broadleaf wood, a
/// river and a lake, the town and (urban fabric) two villages; later shapes win. A point
/// function, so the forest annotation on the finer grid follows the same shapes.
fn shape_class(y: f32, x: f32, s: f32, urban_fabric: bool) -> Option<u16> {
    let mut class = None;
    let blobs = [(0.25 * s, 0.75 * s, 0.22 * s, CONIFERS), (0.72 * s, 0.25 * s, 0.2 * s, BROADLEAVES), (0.3 * s, 0.45 * s, 0.08 * s, BROADLEAVES)];
    for &(by, bx, radius, c) in &blobs {
        let wobble = 1.0 + 0.15 * ((x * 0.11).sin() + (y * 0.07).cos());
        if ((y - by).powi(2) + (x - bx).powi(2)).sqrt() < radius * wobble {
            class = Some(c);
        }
    }
    let river = 0.55 * s + 0.08 * s * (x / s * 6.0).sin();
    if (y - river).abs() < 0.012 * s + 1.0 {
        class = Some(WATER);
    }
    if ((y - 0.85 * s).powi(2) + (x - 0.8 * s).powi(2)).sqrt() < 0.07 * s {
        class = Some(WATER);
    }
    if (y - 0.2 * s).abs() < 0.08 * s && (x - 0.25 * s).abs() < 0.1 * s {
        class = Some(ARTIFICIAL);
    }
    if urban_fabric
        && (((y - 0.68 * s).abs() < 0.05 * s && (x - 0.62 * s).abs() < 0.06 * s)
            || ((y - 0.4 * s).abs() < 0.05 * s && (x - 0.85 * s).abs() < 0.05 * s))
    {
        class = Some(ARTIFICIAL);
    }
    class
}

/// The class at (`y`, `x`) in year `year` (0-based) of a point that had `class` the
/// year before: a clear-cut in the conifers and storm damage in the broadleaves in the
/// second year, new buildings on the fields next to the town in the third.
fn changed_class(class: u16, y: f32, x: f32, s: f32, year: usize) -> u16 {
    match year {
        1 if class == CONIFERS && (y - 0.2 * s).abs() < 0.06 * s && (x - 0.8 * s).abs() < 0.06 * s => MINERAL,
        1 if class == BROADLEAVES && (y - 0.75 * s).abs() < 0.04 * s && (x - 0.2 * s).abs() < 0.1 * s => GRASS,
        2 if matches!(class, GRASS | CROPS) && (y - 0.2 * s).abs() < 0.08 * s && (x - 0.4 * s).abs() < 0.05 * s => ARTIFICIAL,
        _ => class,
    }
}

/// Land cover of each year: the base map with changes applied cumulatively.
fn yearly_maps(base: &[u16], size: usize, years: usize) -> Vec<Vec<u16>> {
    let s = size as f32;
    let mut maps = vec![base.to_vec()];
    for year in 1..years {
        let mut map = maps[year - 1].clone();
        for r in 0..size {
            for c in 0..size {
                let i = r * size + c;
                map[i] = changed_class(map[i], r as f32, c as f32, s, year);
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

/// What makes one pixel of a class differ from another, drawn once per pixel: real
/// fields are sown on different days, grow with different vigour and lie on brighter
/// or darker soil. Without it every pixel of a class has the same series up to noise,
/// and any classifier maps the demo perfectly (nothing left to assess or smooth).
struct PixelTraits {
    /// Days the pixel's phenology runs early (−) or late (+): its parcel's sowing plus
    /// its own spread.
    shift_days: Vec<f32>,
    /// Scales the greenness above the class's minimum (0.65–1.1).
    vigour: Vec<f32>,
    /// Soil and illumination brightness factor (0.85–1.15).
    brightness: Vec<f32>,
    /// Whether a 4-neighbour has another class: such pixels mix in 35 % of it.
    neighbour: Vec<Option<u16>>,
}

impl PixelTraits {
    fn draw(map: &[u16], size: usize, rng: &mut ChaCha8Rng) -> PixelTraits {
        let n = size * size;
        let field = (size / 8).max(4);
        let fields = size.div_ceil(field);
        let parcel_shift: Vec<f32> = (0..fields * fields).map(|_| rng.random_range(-18.0..18.0)).collect();
        let mut traits = PixelTraits {
            shift_days: Vec::with_capacity(n),
            vigour: Vec::with_capacity(n),
            brightness: Vec::with_capacity(n),
            neighbour: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (r, c) = (i / size, i % size);
            traits.shift_days.push(parcel_shift[(r / field) * fields + c / field] + rng.random_range(-6.0..6.0));
            traits.vigour.push(rng.random_range(0.65..1.1));
            traits.brightness.push(rng.random_range(0.85..1.15));
            let neighbours = [(r.wrapping_sub(1), c), (r + 1, c), (r, c.wrapping_sub(1)), (r, c + 1)];
            traits.neighbour.push(
                neighbours
                    .into_iter()
                    .filter(|&(nr, nc)| nr < size && nc < size)
                    .map(|(nr, nc)| map[nr * size + nc])
                    .find(|&other| other != map[i]),
            );
        }
        traits
    }
}

/// Surface reflectance of a class in band `b` at greenness `g` (before noise).
fn surface(class: u16, g: f32, b: usize) -> f32 {
    let green = spectrum(class);
    if has_phenology(class) { SOIL[b] + g * (green[b] - SOIL[b]) } else { green[b] }
}

/// Greenness of a pixel of `class` on `doy`, its phenology shifted and its vigour applied.
fn pixel_greenness(class: u16, doy: f32, shift_days: f32, vigour: f32) -> f32 {
    let base = greenness(class, 0.0).min(greenness(class, 365.0));
    let g = greenness(class, doy - shift_days);
    (base + (g - base) * vigour).clamp(0.0, 1.0)
}

/// Aerosol haze per band (blue scatters most), times the date's haze depth.
const HAZE: [f32; 10] = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.3, 0.1, 0.05];

/// Writes the demo series, truth and reference into `dir`.
pub fn generate(dir: &Path, options: &DemoOptions) -> Result<()> {
    let size = options.size;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let base = base_map(size, options.urban_fabric, &mut rng);
    let maps = yearly_maps(&base, size, options.years.len());
    // Pixel traits, yearly phenology shifts and haze come from a stream of their own.
    let mut trait_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x7472_6169_7473);
    let traits = PixelTraits::draw(&base, size, &mut trait_rng);
    // A UTM 33N grid near Ljubljana, 10 m pixels.
    let grid = Grid {
        width: size,
        height: size,
        geo_transform: Some([460_000.0, 10.0, 0.0, 5_100_000.0, 0.0, -10.0]),
        projection: sitsflow_raster::epsg_wkt(32633)?,
    };
    let bands: Vec<String> = BANDS.iter().map(|b| b.to_string()).chain(std::iter::once("SCL".to_string())).collect();
    let series = dir.join("series");
    std::fs::create_dir_all(&series)?;
    let n = size * size;
    // Each year's forest annotation is dated the day after its July acquisition (the
    // seed's VHR dates lie a day from an HR date), so it is valid for that HR date.
    let mut annotation_dates = String::from("date,path,hr_date\n");
    for (y, &year) in options.years.iter().enumerate() {
        let map = &maps[y];
        // Seed 000: the series pixels on the forest's edges, each side by its share of the block.
        let parts = if options.forest_change {
            block_parts(map, size, y, options.years.len(), options.urban_fabric, options.seed)
        } else {
            Vec::new()
        };
        // A warm or late spring moves every field's phenology that year.
        let year_shift: f32 = trait_rng.random_range(-12.0..12.0);
        for k in 0..options.dates_per_year {
            let month = (k * 12 / options.dates_per_year) as u32 + 1;
            let day = 5 + rng.random_range(0..20);
            let doy = day_of_year(month, day);
            let haze_depth: f32 = trait_rng.random_range(0.0..0.03);
            // Clouds: a few bright discs with their shadows offset to the south-east.
            let cloudy = rng.random::<f32>() < 0.4;
            let clouds: Vec<(f32, f32, f32)> = if cloudy {
                (0..rng.random_range(1..4))
                    .map(|_| (rng.random::<f32>() * size as f32, rng.random::<f32>() * size as f32, 8.0 + rng.random::<f32>() * size as f32 * 0.12))
                    .collect()
            } else {
                Vec::new()
            };
            let mut planes = vec![vec![0f32; n]; BANDS.len() + 1];
            for i in 0..n {
                let (r, c) = ((i / size) as f32, (i % size) as f32);
                let class = map[i];
                let shift = traits.shift_days[i] + year_shift;
                let g = pixel_greenness(class, doy, shift, traits.vigour[i]);
                // Where the truth changed (clear-cut, storm, buildings) the neighbour
                // drawn on the first year's map may now be the pixel's own class.
                let mixed = traits.neighbour[i].filter(|&other| other != class);
                let haze = haze_depth * (1.0 + 0.5 * (c / 53.0).sin() * (r / 71.0).cos());
                let mut cover = 0f32;
                let mut shadow = false;
                for &(cy, cx, radius) in &clouds {
                    let d = ((r - cy).powi(2) + (c - cx).powi(2)).sqrt();
                    cover = cover.max((1.0 - d / radius).clamp(0.0, 1.0).powf(0.5));
                    let ds = ((r - cy - radius * 0.6).powi(2) + (c - cx - radius * 0.6).powi(2)).sqrt();
                    shadow |= ds < radius * 0.8;
                }
                let brightness = traits.brightness[i] * (1.0 + 0.06 * (rng.random::<f32>() - 0.5));
                let fabric = (options.urban_fabric && class == ARTIFICIAL).then(|| Fabric::at(i / size, i % size, options.seed));
                let g_garden = pixel_greenness(GRASS, doy, shift, traits.vigour[i]);
                let block = parts.get(i).and_then(Option::as_ref);
                for b in 0..BANDS.len() {
                    let mut pure = match (fabric, block) {
                        (Some(Fabric::Roof), _) => ROOF[b],
                        (Some(Fabric::Street), _) => STREET[b],
                        (Some(Fabric::Garden), _) => surface(GRASS, g_garden, b),
                        // A block on an edge: each class (or dry crowns) by its share.
                        (None, Some(block)) => block
                            .iter()
                            .map(|&(part, share)| {
                                let v = if part == DRY_PART { DRY[b] } else { surface(part, pixel_greenness(part, doy, shift, traits.vigour[i]), b) };
                                share * v
                            })
                            .sum::<f32>(),
                        (None, None) => surface(class, g, b),
                    };
                    if block.is_none() {
                        if options.forest_change && class == CONIFERS {
                            let dry = dry_share(i / size, i % size, size, y, options.years.len(), options.seed);
                            pure = (1.0 - dry) * pure + dry * DRY[b];
                        }
                        if let Some(other) = mixed {
                            let g_other = pixel_greenness(other, doy, shift, traits.vigour[i]);
                            pure = 0.65 * pure + 0.35 * surface(other, g_other, b);
                        }
                    }
                    let noise = 1.0 + 0.08 * (rng.random::<f32>() - 0.5);
                    let mut v = pure * brightness * noise + haze * HAZE[b];
                    if shadow && cover < 0.2 {
                        v *= 0.45;
                    }
                    v = v * (1.0 - cover) + cover * (0.45 + 0.1 * (b as f32 / 10.0));
                    planes[b][i] = v;
                }
                planes[BANDS.len()][i] = scl(class, g, cover, shadow);
            }
            let date = format!("{year}-{month:02}-{day:02}");
            if month == 7 {
                annotation_dates.push_str(&format!("{year}-07-{:02},{year}.tif,{date}\n", day + 1));
            }
            let scene = series.join(format!("{date}.tif"));
            if options.dn {
                write_geotiff_dn(&scene, &grid, &bands, planes, &["SCL"], &[])
            } else {
                write_geotiff_f32(&scene, &grid, &bands, planes)
            }
            .with_context(|| format!("writing the demo scene of {date}"))?;
        }
        write_labels(&dir.join("truth").join(format!("{year}.tif")), &grid, map)?;
        if options.forest_change {
            let labels = forest_annotation(size, y, options.years.len(), options.urban_fabric, options.seed);
            let style = ClassStyle { classes: FOREST_CLASSES.iter().map(|c| (c.0, c.1.to_string(), c.2.to_string())).collect() };
            let path = dir.join("forest").join(format!("{year}.tif"));
            write_class_map(&path, &grid.scaled(VHR_SCALE), "forest", labels, &style)
                .with_context(|| format!("writing the demo's forest annotation {}", path.display()))?;
        }
        if options.vhr {
            let path = dir.join("vhr").join(format!("{year}.tif"));
            write_vhr(&path, &grid, map, &traits, year_shift, y, options)
                .with_context(|| format!("writing the demo's VHR image {}", path.display()))?;
        }
        if options.urban_fabric {
            write_labels(&dir.join("sparse").join(format!("{year}.tif")), &grid, &sparse_labels(map, size, options.seed))?;
        }
    }
    if options.forest_change {
        sitsflow_core::fsutil::write_atomic(&dir.join("forest").join("annotations.csv"), annotation_dates.as_bytes())?;
    }
    // CORINE-like reference: the first year's land cover as CLC level-3 codes on a
    // 100 m grid, each cell the most frequent class of its 10 × 10 pixels.
    let block = 10;
    let coarse = size.div_ceil(block);
    let mut reference = vec![0u16; coarse * coarse];
    for br in 0..coarse {
        for bc in 0..coarse {
            let mut counts = std::collections::BTreeMap::<u16, usize>::new();
            for r in br * block..((br + 1) * block).min(size) {
                for c in bc * block..((bc + 1) * block).min(size) {
                    *counts.entry(maps[0][r * size + c]).or_default() += 1;
                }
            }
            let mode = counts.iter().max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k))).map_or(0, |(k, _)| *k);
            reference[br * coarse + bc] = CLASSES.iter().find(|c| c.0 == mode).map_or(0, |c| c.3 as u16);
        }
    }
    let gt = grid.geo_transform.expect("the demo grid is georeferenced");
    let coarse_grid = Grid {
        width: coarse,
        height: coarse,
        geo_transform: Some([gt[0], gt[1] * block as f64, 0.0, gt[3], 0.0, gt[5] * block as f64]),
        projection: grid.projection.clone(),
    };
    let clc_style = ClassStyle {
        classes: CLASSES.iter().map(|c| (c.3 as u16, format!("CLC {}", c.3), c.2.to_string())).collect(),
    };
    write_class_map(&dir.join("reference.tif"), &coarse_grid, "CLC", reference, &clc_style)?;
    let mut csv = String::from("code,name,color\n");
    for (code, name, color, _) in CLASSES {
        csv.push_str(&format!("{code},{name},{color}\n"));
    }
    sitsflow_core::fsutil::write_atomic(&dir.join("classes.csv"), csv.as_bytes())?;
    Ok(())
}

/// A uniform value in [0, 1) from `key` and `seed` (SplitMix64): the VHR image's texture
/// and noise are drawn from the pixel's position, never from the series' generator,
/// so adding `--vhr` leaves the series and truths unchanged.
fn hash01(key: u64, seed: u64) -> f32 {
    let mut z = key ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Whether a VHR pixel lies in a tree crown: crowns sit on a jittered lattice of
/// `period` px, each of radius `radius`; returns the crown's relative height (1 at its
/// centre, 0 at its edge) or `None` in a gap.
fn crown(row: usize, col: usize, period: usize, radius: f32, seed: u64) -> Option<f32> {
    let (cr, cc) = (row / period, col / period);
    let mut best: Option<f32> = None;
    for dr in -1i64..=1 {
        for dc in -1i64..=1 {
            let (r, c) = (cr as i64 + dr, cc as i64 + dc);
            if r < 0 || c < 0 {
                continue;
            }
            let key = ((r as u64) << 32) | c as u64;
            let y = r as f32 * period as f32 + hash01(key, seed) * period as f32;
            let x = c as f32 * period as f32 + hash01(key, seed ^ 0x51) * period as f32;
            let d = ((row as f32 + 0.5 - y).powi(2) + (col as f32 + 0.5 - x).powi(2)).sqrt() / radius;
            if d < 1.0 {
                best = Some(best.map_or(1.0 - d, |b: f32| b.max(1.0 - d)));
            }
        }
    }
    best
}

/// Writes one year's VHR image: each 10 m pixel's block is its class at `VHR_DAY` (its
/// phenology, vigour and brightness as in the series), with the texture of the class at
/// 2.5 m, as UInt16 reflectance × 10 000 (0 = no data).
fn write_vhr(path: &Path, grid: &Grid, map: &[u16], traits: &PixelTraits, year_shift: f32, year: usize, options: &DemoOptions) -> Result<()> {
    let size = options.size;
    let s = VHR_SCALE;
    let fine = size * s;
    let seed = options.seed ^ 0x7668_72;
    let field = (size / 8).max(4);
    let mut planes = vec![vec![0f32; fine * fine]; VHR_BANDS.len()];
    for row in 0..fine {
        for col in 0..fine {
            let (r, c) = (row / s, col / s);
            let i = r * size + c;
            let class = map[i];
            let shift = traits.shift_days[i] + year_shift;
            let g = pixel_greenness(class, VHR_DAY, shift, traits.vigour[i]);
            let key = ((row as u64) << 32) | col as u64;
            let noise = hash01(key, seed) - 0.5;
            // (greenness, brightness factor, the class whose spectrum is drawn)
            let (g_here, gain, drawn) = match class {
                CROPS => {
                    // Rows 5 m apart, their direction per field: plants, then bare soil.
                    let across = if hash01((r / field * 1024 + c / field) as u64, seed ^ 0xf1e1d) < 0.5 { row } else { col };
                    if across % 2 == 0 { (g, 1.0 + 0.05 * noise, CROPS) } else { (g * 0.45, 1.0 + 0.05 * noise, CROPS) }
                }
                CONIFERS if options.forest_change && dry_crown(row, col, size, year, options.years.len(), options.seed) => {
                    (0.0, 1.0 + 0.05 * noise, MINERAL)
                }
                BROADLEAVES | CONIFERS => {
                    let (period, radius) = if class == BROADLEAVES { (4, 2.6) } else { (3, 1.6) };
                    match crown(row, col, period, radius, seed ^ class as u64) {
                        Some(h) => (g, 0.85 + 0.3 * h + 0.05 * noise, class),
                        // Gaps: the understorey in the crowns' shadow.
                        None => (g * 0.6, 0.45 + 0.05 * noise, class),
                    }
                }
                GRASS => (g, 1.0 + 0.12 * noise, GRASS),
                WATER => (g, 1.0 + 0.02 * noise, WATER),
                MINERAL => {
                    // Bare soil with slash and stumps.
                    let dark = hash01(key, seed ^ 0x5a) < 0.12;
                    (g, if dark { 0.55 } else { 1.0 + 0.2 * noise }, MINERAL)
                }
                ARTIFICIAL => {
                    // Urban fabric: the series pixel's roof, garden or street; elsewhere
                    // buildings of 5 m on the finer grid.
                    let fabric = if options.urban_fabric { Fabric::at(r, c, options.seed) } else { Fabric::at(row / 2, col / 2, options.seed) };
                    match fabric {
                        // A gabled roof: one slope lit, the other shaded.
                        Fabric::Roof => (g, if col % s < s / 2 { 1.2 } else { 0.75 } + 0.04 * noise, ARTIFICIAL),
                        Fabric::Street => (g, 1.0 + 0.03 * noise, MINERAL),
                        Fabric::Garden => match crown(row, col, 3, 1.2, seed ^ 0x6a) {
                            Some(_) => (1.0, 0.9 + 0.05 * noise, BROADLEAVES),
                            None => (pixel_greenness(GRASS, VHR_DAY, shift, traits.vigour[i]), 1.0 + 0.1 * noise, GRASS),
                        },
                    }
                }
                _ => (g, 1.0 + 0.05 * noise, class),
            };
            let urban = class == ARTIFICIAL;
            for (k, &(_, b)) in VHR_BANDS.iter().enumerate() {
                let pure = match (urban, drawn) {
                    (true, ARTIFICIAL) => ROOF[b],
                    (true, MINERAL) => STREET[b],
                    (false, MINERAL) if class == CONIFERS => DRY[b],
                    _ => surface(drawn, g_here, b),
                };
                let band_noise = 1.0 + 0.02 * (hash01(key ^ ((k as u64 + 1) << 60), seed) - 0.5);
                let v = pure * traits.brightness[i] * gain * band_noise;
                // Reflectance × 10 000, at least 1: 0 is no data.
                planes[k][row * fine + col] = (v * 10_000.0).round().clamp(1.0, 65_535.0);
            }
        }
    }
    let names: Vec<String> = VHR_BANDS.iter().map(|(n, _)| n.to_string()).collect();
    let codes: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_geotiff_dn(path, &grid.scaled(s), &names, planes, &codes, &[(GENERATED_KEY, "sitsflow demo-data --vhr")])
}

/// What a pixel of urban fabric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fabric {
    Roof,
    Garden,
    Street,
}

/// Tiled roofs (bright, no phenology), as soil of the same brightness.
const ROOF: [f32; 10] = [0.11, 0.12, 0.15, 0.18, 0.21, 0.22, 0.23, 0.24, 0.29, 0.25];
/// Asphalt: dark and flat.
const STREET: [f32; 10] = [0.07, 0.075, 0.08, 0.085, 0.09, 0.095, 0.1, 0.1, 0.11, 0.1];

impl Fabric {
    /// Streets every 8 px, and in each block 2 × 2 px lots that are gardens (40 %) or
    /// roofs, drawn from the lot and the seed.
    fn at(row: usize, col: usize, seed: u64) -> Fabric {
        if row % 8 == 0 || col % 8 == 0 {
            return Fabric::Street;
        }
        let lot = ((row / 2) as u64) << 32 | (col / 2) as u64;
        let mut z = lot ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if ((z >> 11) as f64) < 0.4 * (1u64 << 53) as f64 { Fabric::Garden } else { Fabric::Roof }
    }
}

/// Sparse reference labels: the scene in 16 px cells, of which 40 % (drawn from the
/// seed) have their 10 × 10 px interior labelled when it holds one class; 0 elsewhere.
/// Each labelled interior is its own polygon, as digitised parcels are.
fn sparse_labels(map: &[u16], size: usize, seed: u64) -> Vec<u16> {
    const CELL: usize = 16;
    const MARGIN: usize = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7370_6172_7365);
    let mut labels = vec![0u16; size * size];
    for r0 in (0..size).step_by(CELL) {
        for c0 in (0..size).step_by(CELL) {
            let keep = rng.random::<f32>() < 0.4;
            if !keep || r0 + CELL > size || c0 + CELL > size {
                continue;
            }
            let class = map[(r0 + MARGIN) * size + c0 + MARGIN];
            let interior = || (r0 + MARGIN..r0 + CELL - MARGIN).flat_map(|r| (c0 + MARGIN..c0 + CELL - MARGIN).map(move |c| r * size + c));
            if interior().all(|i| map[i] == class) {
                for i in interior() {
                    labels[i] = class;
                }
            }
        }
    }
    labels
}

fn write_labels(path: &Path, grid: &Grid, labels: &[u16]) -> Result<()> {
    let style = ClassStyle { classes: CLASSES.iter().map(|c| (c.0, c.1.to_string(), c.2.to_string())).collect() };
    write_class_map(path, grid, "class", labels.to_vec(), &style)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series pixel on a forest edge mixes its block's classes by the shares the 2.5 m
    /// annotation gives them (the point function both use), so where a boundary falls
    /// inside a 10 m pixel is in the series, as a sensor's footprint integrates it.
    #[test]
    fn edge_pixels_hold_their_blocks_classes_by_their_annotated_shares() {
        let (size, years, seed) = (64, 3, 7);
        let base = base_map(size, false, &mut ChaCha8Rng::seed_from_u64(seed));
        let maps = yearly_maps(&base, size, years);
        let s = VHR_SCALE;
        for (year, map) in maps.iter().enumerate() {
            let annotation = forest_annotation(size, year, years, false, seed);
            let parts = block_parts(map, size, year, years, false, seed);
            let edges = parts.iter().filter(|p| p.is_some()).count();
            assert!(edges > 20, "year {year}: only {edges} edge pixels");
            for (i, block) in parts.iter().enumerate() {
                let Some(block) = block else { continue };
                let total: f32 = block.iter().map(|p| p.1).sum();
                assert!((total - 1.0).abs() < 1e-5, "pixel {i}: shares sum to {total}");
                assert!(block.len() > 1, "pixel {i}: an edge holds two parts or more");
                // Every forest part's share is its count among the block's 16 annotated pixels.
                let (r, c) = (i / size, i % size);
                let fine: Vec<u16> = (0..s * s).map(|k| annotation[(r * s + k / s) * size * s + c * s + k % s]).collect();
                let conifers = block.iter().filter(|p| p.0 == CONIFERS).map(|p| p.1).sum::<f32>();
                let annotated = fine.iter().filter(|&&a| a == 1).count() as f32 / (s * s) as f32;
                assert!((conifers - annotated).abs() < 1e-5, "pixel {i}: conifers {conifers} against the annotation's {annotated}");
            }
        }
    }
}
