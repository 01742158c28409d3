//! Labelled pixel time series as CSV, in the convention of the shared test data:
//! a header; `label` (class name); optional `id`, `group` (parcel id, for grouped
//! splits), `lon`, `lat`; feature columns named `BAND@DATE` where DATE is
//! `YYYY-MM-DD` or a time index `t000`; decimal values, empty = missing.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// What a missing value (an empty cell, or `nan`) in a samples CSV is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// An error naming the file, line and column (the operator's default: a value lost
    /// in an export is rarely meant).
    #[default]
    Error,
    /// NaN, handed to the labeller (the shared convention: empty = missing, e.g. a
    /// cloudy date).
    Keep,
}

/// A set of labelled samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// Feature column names in file order: `BAND@DATE`, or named features without a date (`NDVI:mean`).
    pub features: Vec<String>,
    /// `samples × features`, row-major; NaN = missing.
    pub data: Vec<f32>,
    /// Class name per sample.
    pub labels: Vec<String>,
    /// Sample id per sample, when the file has an `id` column.
    pub ids: Option<Vec<String>>,
    /// Group (e.g. parcel id) per sample, for grouped splits, when the file has a `group` column.
    pub groups: Option<Vec<String>>,
    /// (lon, lat) per sample, when the file has them.
    pub positions: Option<Vec<(f64, f64)>>,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The feature values of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let f = self.features.len();
        &self.data[i * f..(i + 1) * f]
    }

    /// Band names, in order of first appearance.
    pub fn bands(&self) -> Vec<String> {
        let mut bands: Vec<String> = Vec::new();
        for f in &self.features {
            let band = f.split_once('@').map_or(f.as_str(), |(b, _)| b);
            if !bands.iter().any(|b| b == band) {
                bands.push(band.to_string());
            }
        }
        bands
    }

    /// Dates (or time indices), in order of first appearance.
    pub fn dates(&self) -> Vec<String> {
        let mut dates: Vec<String> = Vec::new();
        for f in &self.features {
            if let Some((_, d)) = f.split_once('@') {
                if !dates.iter().any(|x| x == d) {
                    dates.push(d.to_string());
                }
            }
        }
        dates
    }

    /// Sample count per class name.
    pub fn class_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for l in &self.labels {
            *counts.entry(l.clone()).or_default() += 1;
        }
        counts
    }

    /// Reads a samples CSV, empty cells and `nan` as missing values (NaN). Errors name
    /// the file, line and column.
    pub fn read_csv(path: &Path) -> Result<Samples> {
        Samples::read_csv_with(path, Missing::Keep)
    }

    /// Reads a samples CSV with a policy for missing values; an infinite value, a cell
    /// that is not a number and a short or long row are always errors naming the file,
    /// line and column.
    pub fn read_csv_with(path: &Path, missing: Missing) -> Result<Samples> {
        let shown = path.display();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .with_context(|| format!("{shown}: cannot open"))?;
        let header = reader.headers().with_context(|| format!("{shown}: cannot read the header"))?.clone();
        let column = |name: &str| header.iter().position(|h| h == name);
        let Some(label_col) = column("label") else {
            bail!("{shown}:1: no `label` column (columns: {})", header.iter().take(8).collect::<Vec<_>>().join(", "));
        };
        let (id_col, group_col, lon_col, lat_col) = (column("id"), column("group"), column("lon"), column("lat"));
        // `row`, `col`, `x`, `y`: where a pixel sample sits (as sitsflow's samplers write them).
        let meta = ["label", "id", "group", "lon", "lat", "row", "col", "x", "y"];
        for (i, h) in header.iter().enumerate() {
            if let Some(first) = header.iter().take(i).position(|earlier| earlier == h) {
                bail!("{shown}:1: column {} '{h}' repeats column {}", i + 1, first + 1);
            }
        }
        let mut feature_cols = Vec::new();
        for (i, h) in header.iter().enumerate() {
            if meta.contains(&h) {
                continue;
            }
            let Some((band, date)) = h.split_once('@') else {
                // A feature without a date (e.g. a temporal statistic `NDVI:mean`).
                if h.trim().is_empty() {
                    bail!("{shown}:1: column {} has no name", i + 1);
                }
                feature_cols.push(i);
                continue;
            };
            let index_ok = date.len() > 1 && date.starts_with('t') && date[1..].chars().all(|c| c.is_ascii_digit());
            if band.is_empty() || !(index_ok || sitsflow_core::dates::parse_date(date).is_some()) {
                bail!("{shown}:1: column {} '{h}': expected BAND@YYYY-MM-DD or BAND@t000", i + 1);
            }
            feature_cols.push(i);
        }
        if feature_cols.is_empty() {
            bail!("{shown}:1: no feature columns (BAND@DATE, or named features such as NDVI:mean)");
        }
        let mut s = Samples {
            features: feature_cols.iter().map(|&i| header[i].to_string()).collect(),
            data: Vec::new(),
            labels: Vec::new(),
            ids: id_col.map(|_| Vec::new()),
            groups: group_col.map(|_| Vec::new()),
            positions: (lon_col.is_some() && lat_col.is_some()).then(Vec::new),
        };
        for (n, record) in reader.records().enumerate() {
            let line = n + 2;
            let record = record.with_context(|| format!("{shown}:{line}: malformed row"))?;
            if record.len() != header.len() {
                bail!("{shown}:{line}: {} fields, the header has {}", record.len(), header.len());
            }
            let label = record[label_col].trim();
            if label.is_empty() {
                bail!("{shown}:{line}:{}: empty label", label_col + 1);
            }
            s.labels.push(label.to_string());
            if let (Some(ids), Some(c)) = (&mut s.ids, id_col) {
                ids.push(record[c].to_string());
            }
            if let (Some(groups), Some(c)) = (&mut s.groups, group_col) {
                groups.push(record[c].to_string());
            }
            if let (Some(pos), Some(lo), Some(la)) = (&mut s.positions, lon_col, lat_col) {
                let parse = |c: usize| {
                    record[c].trim().parse::<f64>().with_context(|| format!("{shown}:{line}:{}: '{}' is not a number", c + 1, &record[c]))
                };
                pos.push((parse(lo)?, parse(la)?));
            }
            for &c in &feature_cols {
                let text = record[c].trim();
                let value = if text.is_empty() {
                    f32::NAN
                } else {
                    text.parse::<f32>().with_context(|| format!("{shown}:{line}:{}: '{text}' is not a number ({})", c + 1, &header[c]))?
                };
                if value.is_infinite() {
                    bail!("{shown}:{line}:{}: '{text}' is infinite ({})", c + 1, &header[c]);
                }
                if value.is_nan() && missing == Missing::Error {
                    bail!(
                        "{shown}:{line}:{}: {} ({}); if missing values are meant, pass --missing keep to hand them to the labeller as NaN",
                        c + 1,
                        if text.is_empty() { "empty cell".to_string() } else { format!("'{text}'") },
                        &header[c]
                    );
                }
                s.data.push(value);
            }
        }
        if s.is_empty() {
            bail!("{shown}: no samples");
        }
        Ok(s)
    }
}
