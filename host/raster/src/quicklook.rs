//! Quicklooks for reports: a raster read at reduced resolution and encoded as PNG
//! (class maps in their colour table, continuous values through a colour ramp).

use anyhow::{Context, Result};
use gdal::raster::{Buffer, ResampleAlg};
use gdal::{Dataset, DriverManager, Metadata};
use std::path::Path;

/// A PNG picture of a raster and, for class maps, its legend.
pub struct Quicklook {
    /// The encoded PNG.
    pub png: Vec<u8>,
    /// Width of the picture in pixels.
    pub width: usize,
    /// Height of the picture in pixels.
    pub height: usize,
    /// Which band is shown (its description).
    pub band: String,
    /// (code, name, `#rrggbb`) of the classes present, for class maps.
    pub legend: Option<Vec<(u16, String, String)>>,
    /// (low, high) of the colour ramp, for continuous rasters.
    pub range: Option<(f32, f32)>,
}

/// A perceptually ordered ramp (viridis, 5 stops), `t` in 0..1.
fn ramp(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f32;
    let mut out = [0u8; 3];
    for c in 0..3 {
        out[c] = (STOPS[i][c] + f * (STOPS[i + 1][c] - STOPS[i][c])).round() as u8;
    }
    out
}

fn encode_png(rgb: Vec<Vec<u8>>, width: usize, height: usize) -> Result<Vec<u8>> {
    let mem = DriverManager::get_driver_by_name("MEM")?;
    let ds = mem.create_with_band_type::<u8, _>("", width, height, 3)?;
    for (b, plane) in rgb.into_iter().enumerate() {
        ds.rasterband(b + 1)?.write((0, 0), (width, height), &mut Buffer::new((width, height), plane))?;
    }
    let name = format!("/vsimem/sitsflow-quicklook-{}-{:p}.png", std::process::id(), &ds);
    let png = DriverManager::get_driver_by_name("PNG")?;
    drop(ds.create_copy(&png, &name, &Default::default())?);
    let bytes = gdal::vsi::get_vsi_mem_file_bytes_owned(&name)?;
    let _ = gdal::vsi::unlink_mem_file(&name);
    Ok(bytes)
}

/// The band to show when none is asked for: for class rasters with several bands
/// (masks per date) the one with the most classified pixels, else the middle one.
fn default_band(ds: &Dataset, size: (usize, usize)) -> Result<usize> {
    let count = ds.raster_count();
    if count == 1 || ds.rasterband(1)?.color_table().is_none() {
        return Ok(count / 2 + 1);
    }
    let (w, h) = ds.raster_size();
    let mut best = (0usize, count / 2 + 1);
    for i in 1..=count {
        let band = ds.rasterband(i)?;
        let nodata = band.no_data_value();
        let values = band.read_as::<u16>((0, 0), (w, h), size, Some(ResampleAlg::NearestNeighbour))?;
        let classified = values.data().iter().filter(|&&v| v != 0 && !nodata.is_some_and(|nd| v as f64 == nd)).count();
        if classified > best.0 {
            best = (classified, i);
        }
    }
    Ok(best.1)
}

/// The image itself in true colour (B04, B03, B02 of one date of a per-date features
/// raster, the middle one of the dates that have all three), at most `max_px` wide or
/// high, stretched between the 2nd and 98th percentiles of the three; `None` when the
/// raster has no such date.
pub fn true_colour(path: &Path, max_px: usize) -> Result<Option<Quicklook>> {
    let ds = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
    let names: Vec<String> = (1..=ds.raster_count()).map(|b| ds.rasterband(b).ok().and_then(|rb| rb.description().ok()).unwrap_or_default()).collect();
    let band = |b: &str, date: &str| names.iter().position(|n| *n == format!("{b}@{date}"));
    let mut dates: Vec<&str> = names.iter().filter_map(|n| n.strip_prefix("B04@")).collect();
    dates.retain(|d| band("B03", d).is_some() && band("B02", d).is_some());
    let Some(date) = dates.get(dates.len() / 2).copied() else { return Ok(None) };
    let (w, h) = ds.raster_size();
    let scale = (w.max(h) as f64 / max_px as f64).max(1.0);
    let (qw, qh) = (((w as f64 / scale).round() as usize).max(1), ((h as f64 / scale).round() as usize).max(1));
    let mut planes = Vec::new();
    for b in ["B04", "B03", "B02"] {
        let index = band(b, date).expect("checked above") + 1;
        planes.push(ds.rasterband(index)?.read_as::<f32>((0, 0), (w, h), (qw, qh), Some(ResampleAlg::Average))?.data().to_vec());
    }
    let mut finite: Vec<f32> = planes.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    finite.sort_by(f32::total_cmp);
    let (lo, hi) = if finite.is_empty() { (0.0, 1.0) } else { (finite[finite.len() * 2 / 100], finite[(finite.len() * 98 / 100).min(finite.len() - 1)]) };
    let rgb: Vec<Vec<u8>> = planes
        .iter()
        .map(|p| p.iter().map(|&v| if v.is_finite() && hi > lo { (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8 } else { 0 }).collect())
        .collect();
    Ok(Some(Quicklook { png: encode_png(rgb, qw, qh)?, width: qw, height: qh, band: format!("B04, B03, B02 @ {date}"), legend: None, range: None }))
}

/// Draws `path` at most `max_px` wide or high. For multi-band continuous rasters the
/// band `band` (0-based; default the middle one) is shown.
pub fn quicklook(path: &Path, max_px: usize, band: Option<usize>) -> Result<Quicklook> {
    let ds = Dataset::open(path).with_context(|| format!("{}: cannot open with GDAL", path.display()))?;
    let (w, h) = ds.raster_size();
    let scale = (w.max(h) as f64 / max_px as f64).max(1.0);
    let (qw, qh) = (((w as f64 / scale).round() as usize).max(1), ((h as f64 / scale).round() as usize).max(1));
    let index = match band {
        Some(b) => b.min(ds.raster_count() - 1) + 1,
        None => default_band(&ds, (qw, qh))?,
    };
    let rb = ds.rasterband(index)?;
    let name = rb.description().unwrap_or_default();
    let nodata = rb.no_data_value();
    // Class rasters keep their colour table and names on band 1, for all bands.
    let first = ds.rasterband(1)?;
    let n = qw * qh;
    let mut rgb = vec![vec![255u8; n]; 3];
    if let Some(table) = first.color_table() {
        let codes = rb.read_as::<u16>((0, 0), (w, h), (qw, qh), Some(ResampleAlg::NearestNeighbour))?;
        let mut present = std::collections::BTreeSet::new();
        for (p, &code) in codes.data().iter().enumerate() {
            if code == 0 || nodata.is_some_and(|nd| code as f64 == nd) {
                continue;
            }
            present.insert(code);
            if let Some(e) = table.entry_as_rgb(code as usize) {
                rgb[0][p] = e.r as u8;
                rgb[1][p] = e.g as u8;
                rgb[2][p] = e.b as u8;
            }
        }
        // Class names from the category names, when the file has them.
        let names: Vec<String> = {
            // SAFETY: GDALGetRasterCategoryNames returns a list owned by the band.
            let list = unsafe { gdal_sys::GDALGetRasterCategoryNames(first.c_rasterband()) };
            let mut names = Vec::new();
            if !list.is_null() {
                let mut i = 0;
                loop {
                    let item = unsafe { *list.add(i) };
                    if item.is_null() {
                        break;
                    }
                    names.push(unsafe { std::ffi::CStr::from_ptr(item) }.to_string_lossy().into_owned());
                    i += 1;
                }
            }
            names
        };
        let legend = present
            .into_iter()
            .map(|code| {
                let e = table.entry_as_rgb(code as usize).unwrap_or(gdal::raster::RgbaEntry { r: 0, g: 0, b: 0, a: 0 });
                let name = names.get(code as usize).filter(|n| !n.is_empty()).cloned().unwrap_or_else(|| format!("class {code}"));
                (code, name, format!("#{:02x}{:02x}{:02x}", e.r, e.g, e.b))
            })
            .collect();
        return Ok(Quicklook { png: encode_png(rgb, qw, qh)?, width: qw, height: qh, band: name, legend: Some(legend), range: None });
    }
    let values = rb.read_as::<f32>((0, 0), (w, h), (qw, qh), Some(ResampleAlg::Average))?;
    let mut finite: Vec<f32> = values.data().iter().copied().filter(|v| v.is_finite() && !nodata.is_some_and(|nd| *v as f64 == nd)).collect();
    finite.sort_by(f32::total_cmp);
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else {
        (finite[finite.len() * 2 / 100], finite[(finite.len() * 98 / 100).min(finite.len() - 1)])
    };
    for (p, &v) in values.data().iter().enumerate() {
        if v.is_finite() && !nodata.is_some_and(|nd| v as f64 == nd) {
            let c = ramp(if hi > lo { (v - lo) / (hi - lo) } else { 0.5 });
            for k in 0..3 {
                rgb[k][p] = c[k];
            }
        }
    }
    Ok(Quicklook { png: encode_png(rgb, qw, qh)?, width: qw, height: qh, band: name, legend: None, range: Some((lo, hi)) })
}
