//! `indices`: per-pixel spectral indices (NDVI, NDWI, MNDWI, NDSI, NDBI, BSI, EVI) and
//! raw bands, per date or linearly gap-filled onto a regular time grid, and temporal
//! statistics over the valid dates (mean, std, min, max, percentiles). NaN-safe: a
//! masked or missing value never enters a result.
//!
//! Formulas (Sentinel-2 bands): NDVI (B08−B04)/(B08+B04); NDWI (B03−B08)/(B03+B08)
//! (McFeeters); MNDWI and NDSI (B03−B11)/(B03+B11); NDBI (B11−B08)/(B11+B08);
//! BSI ((B11+B04)−(B08+B02))/((B11+B04)+(B08+B02)); EVI 2.5(B08−B04)/(B08+6B04−7.5B02+1).
//! A band of the cube with an index's name (e.g. a stored `NDVI`) is used as it is.

use sitsflow_sdk::prelude::*;

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
fn index_plane(name: &str, planes: &[&[f32]], out: &mut [f32]) {
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
    /// Days between grid dates, from the first date of the chunk.
    pub step_days: u32,
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
    /// Temporal statistics over the valid dates, per index or band.
    #[serde(default)]
    pub stats: Vec<Stat>,
    /// Linear gap-filling onto a regular grid (values before the first / after the last
    /// valid date take that date's value).
    #[serde(default)]
    pub gapfill: Option<Gapfill>,
    #[serde(default)]
    pub on_missing: OnMissing,
}

fn yes() -> bool {
    true
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

fn percentile(sorted: &[f32], q: f32) -> f32 {
    // Linear interpolation between closest ranks (numpy's default).
    let pos = q * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

/// Writes the statistics of one series into `out`, using `sorted` as scratch space
/// (the valid values are sorted once for all percentiles).
fn stats_into(values: &[f32], stats: &[Stat], sorted: &mut Vec<f32>, out: &mut [f32]) {
    sorted.clear();
    sorted.extend(values.iter().copied().filter(|v| !v.is_nan()));
    let n = sorted.len();
    if n == 0 {
        for (o, s) in out.iter_mut().zip(stats) {
            *o = if *s == Stat::Count { 0.0 } else { f32::NAN };
        }
        return;
    }
    let needs_order = stats.iter().any(|s| !matches!(s, Stat::Mean | Stat::Std | Stat::Count));
    let mean = sorted.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let std = if stats.contains(&Stat::Std) {
        (sorted.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt() as f32
    } else {
        f32::NAN
    };
    if needs_order {
        sorted.sort_unstable_by(f32::total_cmp);
    }
    for (o, s) in out.iter_mut().zip(stats) {
        *o = match s {
            Stat::Count => n as f32,
            Stat::Mean => mean as f32,
            Stat::Std => std,
            Stat::Min => sorted[0],
            Stat::Max => sorted[n - 1],
            Stat::P10 => percentile(sorted, 0.10),
            Stat::P25 => percentile(sorted, 0.25),
            Stat::P50 => percentile(sorted, 0.50),
            Stat::P75 => percentile(sorted, 0.75),
            Stat::P90 => percentile(sorted, 0.90),
        };
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
            let missing: Vec<&str> = needs.iter().copied().filter(|b| chunk.band_index(b).is_none()).collect();
            if !missing.is_empty() {
                let why = format!("{name} needs {} but the cube has no {}", needs.join(", "), missing.join(", "));
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
        let (out_dates, grid): (Vec<String>, Option<Vec<i64>>) = match &p.gapfill {
            Some(g) if g.step_days > 0 => {
                let (first, last) = (days[0], days[dates - 1]);
                let grid: Vec<i64> = (first..=last).step_by(g.step_days as usize).collect();
                (grid.iter().map(|d| civil(*d)).collect(), Some(grid))
            }
            Some(_) => return Err(StageError::InvalidParams("gapfill.step_days must be at least 1".into())),
            None => (chunk.dates.clone(), None),
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
        for (l, (_, layer)) in layers.iter().enumerate() {
            for d in 0..dates {
                let out = &mut planes[d * n..(d + 1) * n];
                match layer {
                    Layer::Band(b) => out.copy_from_slice(chunk.plane(d, *b)),
                    Layer::Index(formula, bands) => {
                        let inputs: Vec<&[f32]> = bands.iter().map(|b| chunk.plane(d, *b)).collect();
                        index_plane(formula, &inputs, out);
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
            for px in 0..n {
                for (d, s) in series.iter_mut().enumerate() {
                    *s = planes[d * n + px];
                }
                let row = &mut data[px * width + l * per_layer..px * width + (l + 1) * per_layer];
                let mut k = 0;
                if p.per_date {
                    match &grid {
                        Some(g) => {
                            for v in gapfill(&days, &series, g) {
                                row[k] = v;
                                k += 1;
                            }
                        }
                        None => {
                            row[..dates].copy_from_slice(&series);
                            k = dates;
                        }
                    }
                }
                stats_into(&series, &p.stats, &mut sorted, &mut row[k..]);
            }
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
    fn missing_bands_are_explained_or_skipped() {
        let mut c = cube();
        c.bands[4] = "CLP".into(); // no B11
        let err = Indices::compute(c.clone(), params(r#"{"indices": ["NDVI", "MNDWI"]}"#)).unwrap_err();
        assert_eq!(err, StageError::Unsupported("MNDWI needs B03, B11 but the cube has no B11 (bands: B02, B03, B04, B08, CLP)".into()));
        let out = Indices::compute(c, params(r#"{"indices": ["NDVI", "MNDWI"], "on_missing": "skip"}"#)).unwrap();
        assert_eq!(out.names.len(), 3, "only NDVI per date");
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
}
