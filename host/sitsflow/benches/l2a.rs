//! Reading a real Sentinel-2 L2A product as ESA delivers it (JPEG 2000), against GDAL's
//! own tool on the same files, in the same run.
//!
//! `cargo bench -p sitsflow --bench l2a` reads the eleven 60 m spectral bands and SCL of
//! `../shared/data/s2-l2a-safe-t29unu` (1830 × 1830 px) on its 60 m grid, chunk by chunk
//! as a run does (DN → reflectance, SCL from its own 60 m file), and times
//! `gdal_translate` of each band file to Float32 in `/vsimem` (decoding the whole
//! codestream) as the baseline; three rounds each, medians, and writes
//! `target/bench/l2a.json`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use sitsflow::raster::{L2aOptions, chunk_grid, open_l2a};
use std::process::Command;
use std::time::Instant;

const BANDS: [&str; 12] = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let product = common::shared_data().join("s2-l2a-safe-t29unu");
    assert!(product.is_dir(), "missing bench data: {} (the shared data set)", product.display());
    let options = L2aOptions { bands: Some(BANDS.map(String::from).to_vec()), ..Default::default() };
    let series = open_l2a(&product, &options).unwrap();
    let (w, h) = (series.grid.width, series.grid.height);
    let files: Vec<String> = series.scenes[0].sources.iter().map(|s| s.path.clone()).collect();
    let bytes = (w * h * BANDS.len() * 4) as f64;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let reader = series.reader().unwrap();
        for window in chunk_grid(w, h, 512) {
            std::hint::black_box(reader.read(window).unwrap());
        }
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for file in &files {
            let status = Command::new("gdal_translate")
                .args(["-q", "-of", "GTiff", "-ot", "Float32"])
                .arg(file)
                .arg("/vsimem/out.tif")
                .status()
                .expect("gdal_translate (gdal-bin)");
            assert!(status.success());
        }
        theirs.push(t.elapsed().as_secs_f64());
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let mbps = |s: f64| bytes / s / 1e6;
    println!("L2A JPEG 2000 read (baseline: gdal_translate of the same band files into /vsimem, same run; medians of 3)");
    println!("{:<60} {:>10} {:>10} {:>7}", "measure", "sitsflow", "baseline", "ratio");
    println!(
        "{:<60} {:>8.2} s {:>8.2} s {:>6.2}x",
        format!("T29UNU, {} bands × {w} × {h} px at 60 m, 512 px chunks", BANDS.len()),
        ours,
        theirs,
        theirs / ours
    );
    println!("  ({:.0} MB/s of f32 against {:.0} MB/s)", mbps(ours), mbps(theirs));
    let report = serde_json::json!({
        "bench": "l2a",
        "product": product.display().to_string(),
        "bands": BANDS, "width": w, "height": h, "chunk": 512,
        "sitsflow_s": ours, "gdal_translate_s": theirs, "speedup": theirs / ours,
    });
    let out = common::workspace().join("target/bench/l2a.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
}
