//! `indices`: per-pixel spectral indices (NDVI, NDWI, MNDWI, NDSI, NDBI, BSI, EVI) and
//! raw bands, per date or linearly gap-filled onto a regular time grid, and temporal
//! statistics over the valid dates (mean, std, min, max, percentiles). NaN-safe: a
//! masked or missing value never enters a result.
//!
//! Formulas (Sentinel-2 bands): NDVI (B08−B04)/(B08+B04); NDWI (B03−B08)/(B03+B08)
//! (McFeeters); MNDWI and NDSI (B03−B11)/(B03+B11); NDBI (B11−B08)/(B11+B08);
//! BSI ((B11+B04)−(B08+B02))/((B11+B04)+(B08+B02)); EVI 2.5(B08−B04)/(B08+6B04−7.5B02+1).
//! A band of the cube with an index's name (e.g. a stored `NDVI`) is used as it is.
//! `nir = "B8A"` puts the narrow near-infrared band in place of B08 in every formula (the
//! one a 20 m or 60 m grid has).
//!
//! Range: the normalized differences (NDVI, NDWI, MNDWI, NDSI, NDBI, BSI) lie within
//! [−1, 1] when reflectance is not negative; EVI is taken within [−1, 1] too. Reflectance
//! below 0 (L2A digital numbers under the 1,000 offset of baseline 04.00: noise over dark
//! water and shadow) can put an index far outside (NDVI of −32 or 44): such values are
//! masked (NaN, so no statistic uses them), and the stage logs how many per chunk.

use sitsflow_sdk::prelude::*;

use sitsflow_sdk::lanes::{D2, V4};

/// Where each index needs which bands.
const FORMULAS: [(&str, &[&str]); 7] = [
    ("NDVI", &["B08", "B04"]),
    ("NDWI", &["B03", "B08"]),
    ("MNDWI", &["B03", "B11"]),
    ("NDSI", &["B03", "B11"]),
    ("NDBI", &["B11", "B08"]),
    ("BSI", &["B11", "B04", "B08", "B02"]),
    ("EVI", &["B08", "B04", "B02"]),
];

fn nd(a: f32, b: f32) -> f32 {
    let s = a + b;
    if s == 0.0 { f32::NAN } else { (a - b) / s }
}

fn evi(nir: f32, red: f32, blue: f32) -> f32 {
    let d = nir + 6.0 * red - 7.5 * blue + 1.0;
    if d == 0.0 { f32::NAN } else { 2.5 * (nir - red) / d }
}

/// One index over a whole plane (the formula is chosen once, outside the pixel loop,
/// so the loop is branch-free and vectorises). NaN inputs give NaN by IEEE rules.
fn index_plane(name: &str, planes: &[&[f32]], out: &mut [f32]) -> usize {
    index_values(name, planes, out);
    // Outside [−1, 1] only from negative reflectance: masked, and counted for the log.
    let mut masked = 0;
    for o in out.iter_mut() {
        let outside = o.abs() > 1.0;
        masked += outside as usize;
        if outside {
            *o = f32::NAN;
        }
    }
    masked
}

fn index_values(name: &str, planes: &[&[f32]], out: &mut [f32]) {
    match name {
        "NDVI" | "NDWI" | "MNDWI" | "NDSI" | "NDBI" => {
            for ((o, &a), &b) in out.iter_mut().zip(planes[0]).zip(planes[1]) {
                *o = nd(a, b);
            }
        }
        "BSI" => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = nd(planes[0][i] + planes[1][i], planes[2][i] + planes[3][i]);
            }
        }
        "EVI" => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = evi(planes[0][i], planes[1][i], planes[2][i]);
            }
        }
        _ => unreachable!("checked against FORMULAS"),
    }
}

/// What to do with an index whose bands are not in the cube.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnMissing {
    /// Fail, naming the index and the bands it lacks.
    #[default]
    Error,
    /// Leave it out and say so in the log.
    Skip,
}

/// A temporal statistic over the valid dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stat {
    Mean,
    Std,
    Min,
    Max,
    P10,
    P25,
    P50,
    P75,
    P90,
    /// How many dates are valid.
    Count,
}

/// Gap-filling onto a regular time grid.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gapfill {
    /// Days between grid dates: from the first date of the cube, or from `start`.
    pub step_days: u32,
    /// `"MM-DD"`: anchors the grid on this day of every calendar year of the cube, so
    /// that each year has the same grid dates (and per-year features the same names):
    /// a model trained on one year maps another. Without it the grid starts at the
    /// cube's first date.
    #[serde(default)]
    pub start: Option<String>,
    /// `"MM-DD"` (with `start`; default `"12-31"`): the last day of each year's grid,
    /// on or after `start`. Each year has `(end − start) / step_days + 1` grid dates,
    /// counted in a year without 29 February.
    #[serde(default)]
    pub end: Option<String>,
}

/// `MM-DD` → (month, day), a day that exists in a year without 29 February.
fn month_day(field: &str, text: &str) -> Result<(i64, i64), StageError> {
    let bad = || StageError::InvalidParams(format!("gapfill.{field} = '{text}' is not a day of the year: write \"MM-DD\", e.g. \"03-01\""));
    let (m, d) = text.split_once('-').ok_or_else(bad)?;
    if m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (m, d): (i64, i64) = (m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    let days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > days[m as usize - 1] {
        return Err(bad());
    }
    Ok((m, d))
}

/// The days of a time grid and, for an anchored one, each year's season.
struct TimeGrid {
    days: Vec<i64>,
    /// First and last day of each year's season, both included.
    seasons: Option<Vec<(i64, i64)>>,
}

/// The time grid of a cube whose dates run from day `first` to day `last`.
fn grid_days(g: &Gapfill, first: i64, last: i64) -> Result<TimeGrid, StageError> {
    if g.step_days == 0 {
        return Err(StageError::InvalidParams("gapfill.step_days must be at least 1".into()));
    }
    let step = g.step_days as usize;
    let Some(start) = &g.start else {
        if g.end.is_some() {
            return Err(StageError::InvalidParams("gapfill.end needs gapfill.start (the day each year's grid begins)".into()));
        }
        return Ok(TimeGrid { days: (first..=last).step_by(step).collect(), seasons: None });
    };
    let (sm, sd) = month_day("start", start)?;
    let (em, ed) = match &g.end {
        Some(end) => month_day("end", end)?,
        None => (12, 31),
    };
    // The season's length in a year without 29 February (2001).
    let at = |y: i64, m: i64, d: i64| day_number(&format!("{y:04}-{m:02}-{d:02}"));
    let span = at(2001, em, ed)? - at(2001, sm, sd)?;
    if span < 0 {
        return Err(StageError::InvalidParams(format!(
            "gapfill.end '{}' is before gapfill.start '{start}': a year's grid runs from start to end within the calendar year",
            g.end.as_deref().unwrap_or("12-31")
        )));
    }
    let count = span as usize / step + 1;
    let year = |day: i64| civil(day)[..4].parse::<i64>().expect("civil() writes a four-digit year");
    let (mut grid, mut seasons) = (Vec::new(), Vec::new());
    for y in year(first)..=year(last) {
        let from = at(y, sm, sd)?;
        grid.extend((0..count).map(|k| from + (k * step) as i64));
        seasons.push((from, at(y, em, ed)?));
    }
    Ok(TimeGrid { days: grid, seasons: Some(seasons) })
}

/// Parameters.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Indices to compute: NDVI, NDWI, MNDWI, NDSI, NDBI, BSI, EVI.
    #[serde(default)]
    pub indices: Vec<String>,
    /// Raw bands to pass through, by name.
    #[serde(default)]
    pub bands: Vec<String>,
    /// Output the values per date (or per grid date with `gapfill`); default true.
    #[serde(default = "yes")]
    pub per_date: bool,
    /// Temporal statistics over the valid dates, per index or band (with an anchored
    /// `gapfill`, over the valid dates of each year's season only).
    #[serde(default)]
    pub stats: Vec<Stat>,
    /// Linear gap-filling onto a regular grid (values before the first / after the last
    /// valid date take that date's value).
    #[serde(default)]
    pub gapfill: Option<Gapfill>,
    #[serde(default)]
    pub on_missing: OnMissing,
    /// The near-infrared band the formulas use: `B08` (10 m, the default) or `B8A`
    /// (narrow NIR at 20 m, the one 20 m and 60 m grids have).
    #[serde(default = "b08")]
    pub nir: String,
}

fn yes() -> bool {
    true
}

fn b08() -> String {
    "B08".into()
}

/// The bands a formula reads, with `nir` in place of B08.
fn formula_bands<'a>(needs: &[&'a str], nir: &'a str) -> Vec<&'a str> {
    needs.iter().map(|b| if *b == "B08" { nir } else { *b }).collect()
}

pub struct Indices;

impl Stage for Indices {
    const NAME: &'static str = "indices";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Spectral indices and bands per date or gap-filled, with temporal statistics.";
    type Params = Params;
}

/// Days since 1970-01-01 of `YYYY-MM-DD`.
fn day_number(date: &str) -> Result<i64, StageError> {
    let bad = || StageError::InvalidInput(format!("date '{date}' is not YYYY-MM-DD"));
    let (y, rest) = date.split_once('-').ok_or_else(bad)?;
    let (m, d) = rest.split_once('-').ok_or_else(bad)?;
    let (y, m, d): (i64, i64, i64) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}

fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

/// The `q` quantile of `n` sorted values, `at(i)` the `i`-th: linear interpolation
/// between closest ranks (numpy's default).
fn percentile(n: usize, q: f32, at: impl Fn(usize) -> f32) -> f32 {
    let pos = q * (n - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    at(lo) + (at(hi) - at(lo)) * (pos - lo as f32)
}

/// Statistic `s` of a series with `n` (≥ 1) valid values, their mean and standard
/// deviation, and `at(i)` the `i`-th smallest.
fn statistic(s: Stat, n: usize, mean: f64, std: f32, at: impl Fn(usize) -> f32) -> f32 {
    match s {
        Stat::Count => n as f32,
        Stat::Mean => mean as f32,
        Stat::Std => std,
        Stat::Min => at(0),
        Stat::Max => at(n - 1),
        Stat::P10 => percentile(n, 0.10, at),
        Stat::P25 => percentile(n, 0.25, at),
        Stat::P50 => percentile(n, 0.50, at),
        Stat::P75 => percentile(n, 0.75, at),
        Stat::P90 => percentile(n, 0.90, at),
    }
}

/// What a series without a valid value gets.
fn no_statistic(s: Stat) -> f32 {
    if s == Stat::Count { 0.0 } else { f32::NAN }
}

/// Whether any of `stats` needs the values in order.
fn needs_order(stats: &[Stat]) -> bool {
    stats.iter().any(|s| !matches!(s, Stat::Mean | Stat::Std | Stat::Count))
}

/// Writes the statistics of one series into `out`, using `sorted` as scratch space
/// (the valid values are sorted once for all percentiles). [`stats4`] does four pixels
/// at once with the same operations; this serves the pixels left over.
fn stats_into(values: &[f32], stats: &[Stat], sorted: &mut Vec<f32>, out: &mut [f32]) {
    sorted.clear();
    sorted.extend(values.iter().copied().filter(|v| !v.is_nan()));
    let n = sorted.len();
    if n == 0 {
        for (o, s) in out.iter_mut().zip(stats) {
            *o = no_statistic(*s);
        }
        return;
    }
    let mean = sorted.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let std = if stats.contains(&Stat::Std) {
        (sorted.iter().map(|v| (*v as f64 - mean) * (*v as f64 - mean)).sum::<f64>() / n as f64).sqrt() as f32
    } else {
        f32::NAN
    };
    if needs_order(stats) {
        sorted.sort_unstable_by(f32::total_cmp);
    }
    for (o, s) in out.iter_mut().zip(stats) {
        *o = statistic(*s, n, mean, std, |i| sorted[i]);
    }
}

/// A sorting network for `n` values (Batcher's merge exchange, Knuth, TAOCP 5.2.2,
/// algorithm M): compare-exchange the pairs in order and any `n` values are sorted.
fn network(n: usize) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    if n < 2 {
        return pairs;
    }
    let t = usize::BITS - (n - 1).leading_zeros();
    let mut p = 1usize << (t - 1);
    while p > 0 {
        let (mut q, mut r, mut d) = (1usize << (t - 1), 0, p);
        loop {
            pairs.extend((0..n - d).filter(|i| i & p == r).map(|i| (i as u32, (i + d) as u32)));
            if q == p {
                break;
            }
            (d, q, r) = (q - p, q >> 1, p);
        }
        p >>= 1;
    }
    pairs
}

/// [`stats_into`] for the four pixels `px .. px + 4` of `dates × n` planes at once, one
/// pixel per lane, with the same operations lane by lane: the valid values summed in
/// date order (f64), and sorted by a sorting network (`pairs`, from [`network`]) on
/// total-order keys, a missing value's key after every other. Pixel `px + l`'s
/// statistics go to `out[l · stats.len() ..]`; `cols` (one per date) is scratch space.
fn stats4(planes: &[f32], n: usize, px: usize, stats: &[Stat], pairs: &[(u32, u32)], cols: &mut [V4], out: &mut [f32]) {
    let neg_zero = D2::new(-0.0, -0.0);
    let (mut sum_lo, mut sum_hi, mut count) = (neg_zero, neg_zero, V4::splat(0.0));
    let (one, zero) = (V4::splat(1.0), V4::splat(0.0));
    for (col, plane) in cols.iter_mut().zip(planes.chunks_exact(n)) {
        let v = V4::load(&plane[px..px + 4]);
        let valid = v.valid();
        *col = v;
        count = count.add(V4::select(valid, one, zero));
        sum_lo = D2::select(valid.low_mask(), sum_lo.add(v.low()), sum_lo);
        sum_hi = D2::select(valid.high_mask(), sum_hi.add(v.high()), sum_hi);
    }
    let counts = count.values().map(|c| c as usize);
    let sums = [sum_lo.to_array(), sum_hi.to_array()];
    let mean: [f64; 4] = std::array::from_fn(|l| sums[l / 2][l % 2] / counts[l] as f64);
    let (want_std, in_order) = (stats.contains(&Stat::Std), needs_order(stats));
    let (mut sq_lo, mut sq_hi) = (neg_zero, neg_zero);
    if want_std || in_order {
        let (mean_lo, mean_hi) = (D2::new(mean[0], mean[1]), D2::new(mean[2], mean[3]));
        let missing = V4::splat_bits(i32::MAX as u32);
        for col in cols.iter_mut() {
            let v = *col;
            let valid = v.valid();
            if want_std {
                let (t_lo, t_hi) = (v.low().sub(mean_lo), v.high().sub(mean_hi));
                sq_lo = D2::select(valid.low_mask(), sq_lo.add(t_lo.mul(t_lo)), sq_lo);
                sq_hi = D2::select(valid.high_mask(), sq_hi.add(t_hi.mul(t_hi)), sq_hi);
            }
            if in_order {
                *col = V4::select(valid, v.key(), missing);
            }
        }
    }
    if in_order {
        for &(i, j) in pairs {
            let (i, j) = (i as usize, j as usize);
            (cols[i], cols[j]) = cols[i].min_max(cols[j]);
        }
    }
    let squares = [sq_lo.to_array(), sq_hi.to_array()];
    for (l, out) in out.chunks_exact_mut(stats.len().max(1)).take(4).enumerate() {
        let n = counts[l];
        let std = if want_std { (squares[l / 2][l % 2] / n as f64).sqrt() as f32 } else { f32::NAN };
        for (o, &s) in out.iter_mut().zip(stats) {
            // The key of a key is the value.
            *o = if n == 0 { no_statistic(s) } else { statistic(s, n, mean[l], std, |i| cols[i].key().values()[l]) };
        }
    }
}

/// Linear interpolation of (day, value) pairs with NaN gaps onto `grid` days.
fn gapfill(days: &[i64], values: &[f32], grid: &[i64]) -> Vec<f32> {
    let known: Vec<(i64, f32)> = days.iter().zip(values).filter(|(_, v)| !v.is_nan()).map(|(d, v)| (*d, *v)).collect();
    if known.is_empty() {
        return vec![f32::NAN; grid.len()];
    }
    grid.iter()
        .map(|&g| {
            let after = known.partition_point(|(d, _)| *d < g);
            if after == 0 {
                known[0].1
            } else if after == known.len() {
                known[known.len() - 1].1
            } else {
                let ((d0, v0), (d1, v1)) = (known[after - 1], known[after]);
                if d1 == g { v1 } else { v0 + (v1 - v0) * (g - d0) as f32 / (d1 - d0) as f32 }
            }
        })
        .collect()
}

impl FeatureStage for Indices {
    /// The bands the requested indices and bands read; `None` where `compute` would
    /// fail (unknown index, or a missing band with `on_missing = "error"`), so that its
    /// message lists the cube's bands.
    fn bands(available: &[String], p: &Params) -> Option<Vec<String>> {
        let present = |b: &str| available.iter().any(|a| a == b);
        let mut read: Vec<&str> = Vec::new();
        for name in &p.indices {
            if present(name) {
                read.push(name);
                continue;
            }
            let (_, needs) = FORMULAS.iter().find(|(n, _)| n == name)?;
            let needs = formula_bands(needs, &p.nir);
            if p.on_missing == OnMissing::Error && !needs.iter().all(|b| present(b)) {
                return None;
            }
            // The present ones also when some are missing: the skip message names the rest.
            read.extend(needs.iter().copied().filter(|b| present(b)));
        }
        for band in &p.bands {
            if present(band) {
                read.push(band);
            } else if p.on_missing == OnMissing::Error {
                return None;
            }
        }
        read.sort_unstable();
        read.dedup();
        if read.is_empty() { None } else { bands_present(available, read) }
    }

    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        if p.indices.is_empty() && p.bands.is_empty() {
            return Err(StageError::InvalidParams("name at least one of `indices` or `bands`".into()));
        }
        if !p.per_date && p.stats.is_empty() {
            return Err(StageError::InvalidParams("with per_date = false, name some `stats`".into()));
        }
        // Resolve every requested layer to a way of computing it per date and pixel.
        enum Layer {
            Band(usize),
            Index(&'static str, Vec<usize>),
        }
        let mut layers: Vec<(String, Layer)> = Vec::new();
        let mut skipped = Vec::new();
        for name in &p.indices {
            if let Some(b) = chunk.band_index(name) {
                layers.push((name.clone(), Layer::Band(b)));
                continue;
            }
            let Some((formula, needs)) = FORMULAS.iter().find(|(n, _)| n == name) else {
                return Err(StageError::InvalidParams(format!(
                    "unknown index '{name}' (known: {})",
                    FORMULAS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
                )));
            };
            let needs = formula_bands(needs, &p.nir);
            let missing: Vec<&str> = needs.iter().copied().filter(|b| chunk.band_index(b).is_none()).collect();
            if !missing.is_empty() {
                let hint = if missing.contains(&"B08") && chunk.band_index("B8A").is_some() {
                    "; the cube has B8A: set nir = \"B8A\""
                } else {
                    ""
                };
                let why = format!("{name} needs {} but the cube has no {}{hint}", needs.join(", "), missing.join(", "));
                match p.on_missing {
                    OnMissing::Error => return Err(StageError::Unsupported(format!("{why} (bands: {})", chunk.bands.join(", ")))),
                    OnMissing::Skip => {
                        skipped.push(why);
                        continue;
                    }
                }
            }
            layers.push((name.clone(), Layer::Index(formula, needs.iter().map(|b| chunk.band_index(b).unwrap()).collect())));
        }
        for band in &p.bands {
            match chunk.band_index(band) {
                Some(b) => layers.push((band.clone(), Layer::Band(b))),
                None if p.on_missing == OnMissing::Skip => skipped.push(format!("band {band} is not in the cube")),
                None => return Err(StageError::Unsupported(format!("band '{band}' is not in the cube (bands: {})", chunk.bands.join(", ")))),
            }
        }
        if !skipped.is_empty() {
            sitsflow_sdk::host::log(sitsflow_sdk::host::Level::Warn, &format!("indices skipped: {}", skipped.join("; ")));
        }
        if layers.is_empty() {
            return Err(StageError::Unsupported(format!("nothing can be computed: {}", skipped.join("; "))));
        }

        let dates = chunk.dates.len();
        let days: Vec<i64> = chunk.dates.iter().map(|d| day_number(d)).collect::<Result<_, _>>()?;
        let (out_dates, grid, seasons) = match &p.gapfill {
            Some(g) => {
                let TimeGrid { days: grid, seasons } = grid_days(g, days[0], days[dates - 1])?;
                (grid.iter().map(|d| civil(*d)).collect(), Some(grid), seasons)
            }
            None => (chunk.dates.clone(), None, None),
        };
        // With an anchored grid, statistics summarise each year's season only, so that
        // they too mean the same in every year.
        let off_season: Vec<usize> = match &seasons {
            Some(seasons) => (0..dates).filter(|&d| !seasons.iter().any(|&(a, b)| (a..=b).contains(&days[d]))).collect(),
            None => Vec::new(),
        };
        let mut names = Vec::new();
        for (name, _) in &layers {
            if p.per_date {
                names.extend(out_dates.iter().map(|d| format!("{name}@{d}")));
            }
            names.extend(p.stats.iter().map(|s| format!("{name}:{}", format!("{s:?}").to_lowercase())));
        }
        let width = names.len();
        let n = chunk.pixels();
        let mut data = vec![f32::NAN; n * width];
        // One layer at a time: its `dates × pixels` planes (masked dates as NaN), then
        // per pixel its series, gap-filled and summarised. Buffers are reused throughout.
        let mut planes = vec![f32::NAN; dates * n];
        let mut series = vec![f32::NAN; dates];
        let mut sorted = Vec::with_capacity(dates);
        let per_layer = if p.per_date { grid.as_ref().map_or(dates, Vec::len) } else { 0 } + p.stats.len();
        // Statistics four pixels at a time (the rest one by one), after the per-date values.
        let first_stat = per_layer - p.stats.len();
        let quads = if p.stats.is_empty() { 0 } else { n / 4 };
        let pairs = network(dates);
        let mut cols = vec![V4::splat(0.0); dates];
        let mut quad_stats = vec![0f32; 4 * p.stats.len()];
        let mut outside = vec![0usize; layers.len()];
        for (l, (_, layer)) in layers.iter().enumerate() {
            for d in 0..dates {
                let out = &mut planes[d * n..(d + 1) * n];
                match layer {
                    Layer::Band(b) => out.copy_from_slice(chunk.plane(d, *b)),
                    Layer::Index(formula, bands) => {
                        let inputs: Vec<&[f32]> = bands.iter().map(|b| chunk.plane(d, *b)).collect();
                        outside[l] += index_plane(formula, &inputs, out);
                    }
                }
                if let Some(valid) = chunk.valid_plane(d) {
                    for (o, &v) in out.iter_mut().zip(valid) {
                        if v == 0 {
                            *o = f32::NAN;
                        }
                    }
                }
            }
            // What the statistics read: the planes, without the dates off season.
            let stat_planes: std::borrow::Cow<[f32]> = if off_season.is_empty() || p.stats.is_empty() {
                std::borrow::Cow::Borrowed(&planes)
            } else {
                let mut copy = planes.clone();
                for &d in &off_season {
                    copy[d * n..(d + 1) * n].fill(f32::NAN);
                }
                std::borrow::Cow::Owned(copy)
            };
            let stats_at = l * per_layer + first_stat;
            for q in 0..quads {
                stats4(&stat_planes, n, 4 * q, &p.stats, &pairs, &mut cols, &mut quad_stats);
                for (i, values) in quad_stats.chunks_exact(p.stats.len()).enumerate() {
                    let at = (4 * q + i) * width + stats_at;
                    data[at..at + values.len()].copy_from_slice(values);
                }
            }
            for px in 0..n {
                let stats_left = px >= 4 * quads && !p.stats.is_empty();
                if !p.per_date && !stats_left {
                    continue;
                }
                for (d, s) in series.iter_mut().enumerate() {
                    *s = planes[d * n + px];
                }
                let row = &mut data[px * width + l * per_layer..px * width + (l + 1) * per_layer];
                if p.per_date {
                    match &grid {
                        Some(g) => {
                            for (k, v) in gapfill(&days, &series, g).into_iter().enumerate() {
                                row[k] = v;
                            }
                        }
                        None => row[..dates].copy_from_slice(&series),
                    }
                }
                if stats_left {
                    for (d, s) in series.iter_mut().enumerate() {
                        *s = stat_planes[d * n + px];
                    }
                    stats_into(&series, &p.stats, &mut sorted, &mut row[first_stat..]);
                }
            }
        }
        let masked: Vec<String> =
            layers.iter().zip(&outside).filter(|(_, m)| **m > 0).map(|((name, _), m)| format!("{name} {m}")).collect();
        if !masked.is_empty() {
            sitsflow_sdk::host::log(
                sitsflow_sdk::host::Level::Warn,
                &format!(
                    "indices outside [-1, 1] masked (from negative reflectance), pixel-dates per index: {}",
                    masked.join(", ")
                ),
            );
        }
        Ok(FeatureMatrix { samples: n, names, data })
    }
}

sitsflow_sdk::export_features_stage!(Indices);

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 dates × bands B02 B03 B04 B08 B11 × 1 × 2 pixels; pixel 1 is masked on date 1.
    fn cube() -> Cube {
        let bands = ["B02", "B03", "B04", "B08", "B11"];
        let mut data = Vec::new();
        for d in 0..3 {
            for b in 0..5 {
                for px in 0..2 {
                    data.push(0.05 + 0.05 * b as f32 + 0.1 * d as f32 + 0.01 * px as f32);
                }
            }
        }
        Cube {
            dates: vec!["2020-01-01".into(), "2020-01-11".into(), "2020-01-31".into()],
            bands: bands.iter().map(|b| b.to_string()).collect(),
            rows: 1,
            cols: 2,
            data,
            valid: vec![1, 1, 1, 0, 1, 1],
        }
    }

    fn params(json: &str) -> Params {
        Indices::parse_params(json).unwrap()
    }

    #[test]
    fn indices_per_date_are_nan_where_masked() {
        let out = Indices::compute(cube(), params(r#"{"indices": ["NDVI", "EVI", "BSI"]}"#)).unwrap();
        assert_eq!(out.names[0], "NDVI@2020-01-01");
        assert_eq!(out.names.len(), 9);
        let c = cube();
        let v = |d: usize, b: usize, px: usize| c.plane(d, b)[px];
        let ndvi = (v(0, 3, 0) - v(0, 2, 0)) / (v(0, 3, 0) + v(0, 2, 0));
        assert!((out.row(0)[0] - ndvi).abs() < 1e-6);
        let evi = 2.5 * (v(2, 3, 1) - v(2, 2, 1)) / (v(2, 3, 1) + 6.0 * v(2, 2, 1) - 7.5 * v(2, 0, 1) + 1.0);
        assert!((out.row(1)[5] - evi).abs() < 1e-6);
        assert!(out.row(1)[1].is_nan(), "masked date");
    }

    #[test]
    fn gapfill_and_stats() {
        let out = Indices::compute(cube(), params(r#"{"bands": ["B02"], "gapfill": {"step_days": 10}, "stats": ["mean", "count", "p50"]}"#)).unwrap();
        assert_eq!(out.names, ["B02@2020-01-01", "B02@2020-01-11", "B02@2020-01-21", "B02@2020-01-31", "B02:mean", "B02:count", "B02:p50"]);
        let px1 = out.row(1);
        // Pixel 1: valid on 01-01 (0.06) and 01-31 (0.26); 01-11 masked → interpolated.
        assert!((px1[1] - (0.06 + 0.2 * 10.0 / 30.0)).abs() < 1e-6, "{px1:?}");
        assert!((px1[2] - (0.06 + 0.2 * 20.0 / 30.0)).abs() < 1e-6);
        assert_eq!(px1[5], 2.0);
        assert!((px1[4] - 0.16).abs() < 1e-6);
    }

    #[test]
    fn an_anchored_grid_gives_every_year_the_same_days_whatever_its_acquisitions() {
        let g = |start: &str, end: Option<&str>| Gapfill { step_days: 10, start: Some(start.into()), end: end.map(Into::into) };
        let days = |g: &Gapfill, a: &str, b: &str| -> Vec<String> {
            grid_days(g, day_number(a).unwrap(), day_number(b).unwrap()).unwrap().days.into_iter().map(civil).collect()
        };
        // Two years whose first acquisitions differ (08-04 and 08-09) get the same days of
        // the year; 2020 is a leap year and still has 12 grid dates from 08-05.
        let season = g("08-05", Some("11-25"));
        let y2017 = days(&season, "2017-08-04", "2017-11-27");
        let y2020 = days(&season, "2020-08-09", "2020-11-20");
        assert_eq!(y2017.len(), 12);
        assert_eq!(y2017.first().map(String::as_str), Some("2017-08-05"));
        assert_eq!(y2017.last().map(String::as_str), Some("2017-11-23"));
        let md = |v: &[String]| v.iter().map(|d| d[5..].to_string()).collect::<Vec<_>>();
        assert_eq!(md(&y2017), md(&y2020));
        // A whole year from 01-01: 37 dates in 2019 and in leap 2020 alike.
        assert_eq!(days(&g("01-01", None), "2019-01-03", "2019-12-30").len(), 37);
        assert_eq!(days(&g("01-01", None), "2020-01-03", "2020-12-30").len(), 37);
        // A cube over two calendar years gets each year's season.
        assert_eq!(days(&season, "2017-08-04", "2018-11-27").len(), 24);
        // Mistakes are named.
        for (bad, want) in [
            (g("13-01", None), "gapfill.start = '13-01' is not a day of the year"),
            (g("02-29", None), "gapfill.start = '02-29' is not a day of the year"),
            (g("10-01", Some("07-31")), "gapfill.end '07-31' is before gapfill.start '10-01'"),
            (Gapfill { step_days: 10, start: None, end: Some("11-25".into()) }, "gapfill.end needs gapfill.start"),
            (Gapfill { step_days: 0, start: None, end: None }, "step_days must be at least 1"),
        ] {
            let Err(StageError::InvalidParams(msg)) = grid_days(&bad, 17000, 17300).map(|g| g.days) else { panic!("not InvalidParams") };
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn with_an_anchored_grid_statistics_cover_the_season_only() {
        let json = r#"{"bands": ["B02"], "gapfill": {"step_days": 10, "start": "01-05", "end": "01-31"}, "stats": ["count", "min"]}"#;
        let out = Indices::compute(cube(), params(json)).unwrap();
        assert_eq!(out.names, ["B02@2020-01-05", "B02@2020-01-15", "B02@2020-01-25", "B02:count", "B02:min"]);
        // Pixel 0 is valid on all three dates; 01-01 is before the season.
        let c = cube();
        assert_eq!(out.row(0)[3], 2.0);
        assert_eq!(out.row(0)[4], c.plane(1, 0)[0].min(c.plane(2, 0)[0]));
        // The grid still interpolates from the date before the season.
        let want = c.plane(0, 0)[0] + (c.plane(1, 0)[0] - c.plane(0, 0)[0]) * 0.4;
        assert!((out.row(0)[0] - want).abs() < 1e-6, "{} vs {want}", out.row(0)[0]);
    }

    #[test]
    fn missing_bands_are_explained_or_skipped() {
        let mut c = cube();
        c.bands[4] = "CLP".into(); // no B11
        let err = Indices::compute(c.clone(), params(r#"{"indices": ["NDVI", "MNDWI"]}"#)).unwrap_err();
        assert_eq!(err, StageError::Unsupported("MNDWI needs B03, B11 but the cube has no B11 (bands: B02, B03, B04, B08, CLP)".into()));
        let out = Indices::compute(c, params(r#"{"indices": ["NDVI", "MNDWI"], "on_missing": "skip"}"#)).unwrap();
        assert_eq!(out.names.len(), 3, "only NDVI per date");
    }

    #[test]
    fn nir_b8a_replaces_b08_and_out_of_range_values_are_masked() {
        // A 60 m-like cube: B8A and no B08; the second pixel's red is negative reflectance.
        let c = Cube {
            dates: vec!["2022-10-05".into()],
            bands: vec!["B04".into(), "B8A".into()],
            rows: 1,
            cols: 2,
            data: vec![0.05, -0.0049, 0.30, 0.0051],
            valid: vec![],
        };
        let err = Indices::compute(c.clone(), params(r#"{"indices": ["NDVI"]}"#)).unwrap_err();
        assert!(matches!(&err, StageError::Unsupported(m) if m.contains("the cube has B8A: set nir = \"B8A\"")), "{err:?}");
        let out = Indices::compute(c, params(r#"{"indices": ["NDVI"], "nir": "B8A"}"#)).unwrap();
        assert!((out.data[0] - (0.30 - 0.05) / (0.30 + 0.05)).abs() < 1e-6);
        // (0.0051 + 0.0049) / (0.0051 − 0.0049) = 50: outside [-1, 1], masked.
        assert!(out.data[1].is_nan(), "{}", out.data[1]);
    }

    #[test]
    fn stored_index_bands_are_used_as_they_are() {
        let c = Cube { dates: vec!["2016-05-06".into()], bands: vec!["NDVI".into(), "CLP".into()], rows: 1, cols: 1, data: vec![0.7, 0.1], valid: vec![] };
        let out = Indices::compute(c, params(r#"{"indices": ["NDVI"], "on_missing": "skip"}"#)).unwrap();
        assert_eq!(out.data, [0.7]);
    }

    #[test]
    fn calendar_round_trip() {
        for d in ["1970-01-01", "2000-02-29", "2020-12-31", "2024-03-01"] {
            assert_eq!(civil(day_number(d).unwrap()), d);
        }
        assert_eq!(day_number("2020-01-11").unwrap() - day_number("2020-01-01").unwrap(), 10);
    }

    /// `v` after the compare-exchanges of `pairs`.
    fn through<T: Ord + Copy>(pairs: &[(u32, u32)], mut v: Vec<T>) -> Vec<T> {
        for &(i, j) in pairs {
            let (i, j) = (i as usize, j as usize);
            (v[i], v[j]) = (v[i].min(v[j]), v[i].max(v[j]));
        }
        v
    }

    #[test]
    fn the_network_sorts_any_input() {
        // Every 0/1 input up to 14 values (the 0-1 principle), and shuffled values beyond.
        for n in 0..=14usize {
            let pairs = network(n);
            for bits in 0..1u32 << n {
                let v = through(&pairs, (0..n).map(|i| bits >> i & 1).collect());
                assert!(v.windows(2).all(|w| w[0] <= w[1]), "n = {n}, input {bits:b}");
            }
        }
        for n in [17, 36, 68, 100] {
            let v = through(&network(n), (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).collect());
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "n = {n}");
        }
    }

    #[test]
    fn four_pixels_at_once_give_the_one_pixel_statistics_bit_for_bit() {
        let all = [
            Stat::Mean, Stat::Std, Stat::Min, Stat::Max, Stat::P10, Stat::P25, Stat::P50, Stat::P75, Stat::P90, Stat::Count,
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for dates in [1, 2, 3, 5, 12, 13, 36, 68] {
            let n = 16;
            let planes: Vec<f32> = (0..dates * n)
                .map(|i| {
                    let r = next();
                    match r % 16 {
                        // Masked dates, and pixel 5 masked on all of them.
                        0..=3 => f32::NAN,
                        _ if i % n == 5 => f32::NAN,
                        4 => [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY][(r >> 8) as usize % 4],
                        // Ties, and values of both signs and several magnitudes.
                        5 => 0.25,
                        _ => ((r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 0.7) as f32 * [1.0, 1e-3, 30.0][(r >> 4) as usize % 3],
                    }
                })
                .collect();
            for stats in [&all[..], &all[..3], &[Stat::P50, Stat::Mean][..]] {
                let pairs = network(dates);
                let mut cols = vec![V4::splat(0.0); dates];
                let mut quad = vec![0f32; 4 * stats.len()];
                let (mut series, mut sorted, mut one) = (vec![0f32; dates], Vec::new(), vec![0f32; stats.len()]);
                for px in (0..n).step_by(4) {
                    stats4(&planes, n, px, stats, &pairs, &mut cols, &mut quad);
                    for l in 0..4 {
                        for (d, s) in series.iter_mut().enumerate() {
                            *s = planes[d * n + px + l];
                        }
                        stats_into(&series, stats, &mut sorted, &mut one);
                        let got = &quad[l * stats.len()..(l + 1) * stats.len()];
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "pixel {} of {dates} dates, {stats:?}: {got:?} vs {one:?}",
                            px + l
                        );
                    }
                }
            }
        }
    }
}
