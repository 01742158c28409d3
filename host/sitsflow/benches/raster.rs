//! Raster I/O against GDAL's own tools, in the same run.
//!
//! `cargo bench -p sitsflow --bench raster` prints a table and writes
//! `target/bench/raster.json`:
//! 1. decoded-read throughput: sitsflow's chunked series reader against
//!    `gdal_translate` of the same files (decode + copy into memory), MB/s of f32;
//! 2. peak memory of `sitsflow run` on a synthetic 4096 × 4096 px × 12 dates ×
//!    10 bands series with `memory_budget_mib = 1024`, against that budget.

#[path = "../../../tests/common/mod.rs"]
mod common;

use sitsflow::raster::{Grid, GridSpec, Series, chunk_grid, write_geotiff_f32};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BANDS: [&str; 10] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"];

/// One date of smooth, field-like reflectance (compresses like real scenes do).
fn scene(grid: &Grid, seed: usize) -> Vec<Vec<f32>> {
    (0..BANDS.len())
        .map(|b| {
            (0..grid.width * grid.height)
                .map(|p| {
                    let (r, c) = (p / grid.width, p % grid.width);
                    let field = ((r / 64 * 7 + c / 64 * 13 + seed) % 17) as f32 / 17.0;
                    0.02 + 0.3 * field * (1.0 + b as f32 / 10.0) + ((r * 31 + c * 17 + b) % 7) as f32 * 1e-3
                })
                .collect()
        })
        .collect()
}

/// A series folder of `dates` files; after the first `distinct` they link to earlier
/// ones (same bytes, distinct names) so a large series costs little disk.
fn make_series(dir: &Path, size: usize, dates: usize, distinct: usize) -> Grid {
    let grid = GridSpec { crs: "EPSG:32633".into(), bounds: [500_000.0, 5_100_000.0 - size as f64 * 10.0, 500_000.0 + size as f64 * 10.0, 5_100_000.0], resolution: 10.0 }
        .to_grid()
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = BANDS.iter().map(|b| b.to_string()).collect();
    for d in 0..dates {
        let path = dir.join(format!("2020-{:02}-{:02}.tif", d / 28 + 1, d % 28 + 1));
        if d < distinct {
            write_geotiff_f32(&path, &grid, &names, scene(&grid, d)).unwrap();
        } else {
            let first = dir.join(format!("2020-{:02}-{:02}.tif", (d % distinct) / 28 + 1, (d % distinct) % 28 + 1));
            std::os::unix::fs::symlink(first.canonicalize().unwrap(), &path).unwrap();
        }
    }
    grid
}

fn main() {
    let root = common::workspace().join("target/bench/raster-data");
    let _ = std::fs::remove_dir_all(&root);

    // 1. Decoded-read throughput on 2048 × 2048 × 6 dates × 10 bands (960 MiB of f32).
    let read_dir = root.join("read");
    let t = Instant::now();
    make_series(&read_dir, 2048, 6, 6);
    eprintln!("made the read series in {:.1} s", t.elapsed().as_secs_f64());
    let series = Series::open(&read_dir, None).unwrap();
    let bytes = (series.scenes.len() * series.bands.len() * 2048 * 2048 * 4) as f64;
    let ours = {
        let t = Instant::now();
        let reader = series.reader().unwrap();
        for w in chunk_grid(2048, 2048, 512) {
            std::hint::black_box(reader.read(w).unwrap());
        }
        t.elapsed().as_secs_f64()
    };
    let theirs = {
        let t = Instant::now();
        for scene in &series.scenes {
            let status = Command::new("gdal_translate")
                .args(["-q", "-of", "GTiff", "-ot", "Float32"])
                .arg(&scene.sources[0].path)
                .arg("/vsimem/out.tif")
                .status()
                .expect("gdal_translate (gdal-bin)");
            assert!(status.success());
        }
        t.elapsed().as_secs_f64()
    };

    // 2. Peak memory of a run on 4096 × 4096 × 12 dates × 10 bands (7.5 GiB of f32).
    let big = root.join("big");
    let t = Instant::now();
    make_series(&big.join("series"), 4096, 12, 2);
    eprintln!("made the 4096² series in {:.1} s", t.elapsed().as_secs_f64());
    let project = common::project_dir();
    let budget_mib = 1024;
    let pipeline = format!(
        "schema = 1\nname = \"bench\"\n\n[input]\nseries = {:?}\n\n[output]\ndir = {:?}\n\n[run]\nmemory_budget_mib = {budget_mib}\n\n\
         [[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = {{ a = \"B08\", b = \"B04\", name = \"NDVI\" }}\n",
        big.join("series").display().to_string(),
        big.join("run").display().to_string()
    );
    std::fs::write(project.path().join("pipeline.toml"), pipeline).unwrap();
    let exe = env!("CARGO_BIN_EXE_sitsflow");
    assert!(Command::new(exe).args(["--quiet", "plugins", "lock", "pipeline.toml"]).current_dir(project.path()).status().unwrap().success());
    let t = Instant::now();
    let child = Command::new(exe)
        .args(["--quiet", "run", "pipeline.toml"])
        .current_dir(project.path())
        .stderr(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The run reports its own peak (VmHWM) in the manifest; the rusage of a child
    // forked from this large process would count this process's pages too.
    let status = child.wait_with_output().unwrap().status;
    let run_s = t.elapsed().as_secs_f64();
    assert!(status.success(), "the run failed");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(big.join("run/manifest.json")).unwrap()).unwrap();
    let peak_mib = manifest["peak_rss_mib"].as_f64().expect("peak_rss_mib in the manifest (Linux)");

    let mbps = |s: f64| bytes / s / 1e6;
    println!("raster I/O (baseline: gdal_translate of the same files into /vsimem, same run)");
    println!("{:<52} {:>12} {:>12} {:>8}", "measure", "sitsflow", "baseline", "ratio");
    println!(
        "{:<52} {:>8.0}MB/s {:>8.0}MB/s {:>7.2}x",
        "decoded read, 2048² × 6 dates × 10 bands f32",
        mbps(ours),
        mbps(theirs),
        mbps(ours) / mbps(theirs)
    );
    println!(
        "{:<52} {:>9.0}MiB {:>9}MiB {:>7.2}x",
        "peak RSS of run, 4096² × 12 dates × 10 bands",
        peak_mib,
        budget_mib,
        peak_mib / budget_mib as f64
    );
    println!("  (chunk {} px chosen for the budget, estimate {} MiB; run took {run_s:.1} s)", manifest["chunk_size"], manifest["memory_estimate_mib"]);
    let report = serde_json::json!({
        "bench": "raster",
        "read": { "bytes_f32": bytes, "sitsflow_s": ours, "gdal_translate_s": theirs,
                  "sitsflow_mbps": mbps(ours), "gdal_translate_mbps": mbps(theirs) },
        "peak_memory": { "size": 4096, "dates": 12, "bands": 10, "budget_mib": budget_mib, "peak_rss_mib": peak_mib,
                         "chunk_size": manifest["chunk_size"], "estimate_mib": manifest["memory_estimate_mib"], "run_s": run_s },
    });
    let out = common::workspace().join("target/bench/raster.json");
    sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
    println!("wrote {}", out.display());
    // SITSFLOW_BENCH_KEEP=1 keeps the generated series for looking into a run by hand.
    if std::env::var_os("SITSFLOW_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        let _ = std::fs::copy(project.path().join("pipeline.toml"), root.join("pipeline.toml"));
    }
}
