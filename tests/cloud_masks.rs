//! Cloud masks through the real components, on the s2cloudless test scene
//! (`shared/data/s2cloudless-scene`: 13 L1C bands, 856 × 512, with s2cloudless 1.7.3's own
//! probability and mask as a parity oracle):
//! - `s2cloudless` reproduces the stored probability and mask, and cutting the scene into
//!   chunks with a halo gives the whole-scene mask, as the host runs it;
//! - `spectral-mask` agrees with s2cloudless well beyond calling everything clear;
//! - both name the bands they miss.

use crate::common;

use gdal::Metadata as _;
use sitsflow::runtime::data::{Cube, MaskLayers};
use sitsflow::runtime::{CallContext, Limits, StageCallError, StagePool};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

/// A raster read whole: band names from the descriptions, band-major values.
struct Raster {
    names: Vec<String>,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

fn scene_dir() -> PathBuf {
    let dir = common::shared_data().join("s2cloudless-scene");
    assert!(dir.join("scene.tif").exists(), "the s2cloudless test scene is missing: {}", dir.display());
    dir
}

fn read(name: &str) -> Raster {
    let path = scene_dir().join(name);
    let ds = gdal::Dataset::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let (cols, rows) = ds.raster_size();
    let mut names = Vec::new();
    let mut data = vec![0f32; ds.raster_count() * rows * cols];
    for (k, plane) in data.chunks_exact_mut(rows * cols).enumerate() {
        let band = ds.rasterband(k + 1).expect("band");
        names.push(band.description().expect("band description"));
        band.read_into_slice::<f32>((0, 0), (cols, rows), (cols, rows), plane, None).expect("reading a band");
    }
    Raster { names, rows, cols, data }
}

/// The scene as a one-date cube.
fn scene() -> &'static Cube {
    static SCENE: OnceLock<Cube> = OnceLock::new();
    SCENE.get_or_init(|| {
        let r = read("scene.tif");
        assert_eq!(r.names[..3], ["B01", "B02", "B03"], "band descriptions of scene.tif");
        Cube {
            dates: vec!["2020-01-01".into()],
            bands: r.names,
            rows: r.rows as u32,
            cols: r.cols as u32,
            data: r.data,
            valid: Vec::new(),
        }
    })
}

/// `rows × cols` starting at (`row`, `col`) of every band and date of `cube`.
fn crop(cube: &Cube, row: usize, col: usize, rows: usize, cols: usize) -> Cube {
    let (src_rows, src_cols) = (cube.rows as usize, cube.cols as usize);
    let mut data = Vec::with_capacity(cube.dates.len() * cube.bands.len() * rows * cols);
    for plane in cube.data.chunks_exact(src_rows * src_cols) {
        for r in row..row + rows {
            data.extend_from_slice(&plane[r * src_cols + col..r * src_cols + col + cols]);
        }
    }
    Cube { dates: cube.dates.clone(), bands: cube.bands.clone(), rows: rows as u32, cols: cols as u32, data, valid: Vec::new() }
}

fn pool(package: &str) -> StagePool {
    let plugin = common::runtime().load(&common::component(package)).expect("loading the component");
    // The whole scene in one call is far bigger than a pipeline chunk.
    StagePool::new(plugin, Limits { deadline_ms: 600_000, ..Limits::default() })
}

fn context(stage: &str, chunk: &str) -> CallContext {
    CallContext { stage: stage.into(), chunk: chunk.into() }
}

/// Runs a cloud-mask stage over the scene cut into `side`-pixel chunks, each read with
/// `halo` pixels of context (clipped at the scene's edge, as the host's windows are), and
/// stitches the results with the halo cropped off.
fn chunked(pool: &StagePool, stage: &str, params: &str, side: usize, halo: usize) -> MaskLayers {
    let cube = scene();
    let (rows, cols) = (cube.rows as usize, cube.cols as usize);
    let mut out = MaskLayers { classes: vec![0; rows * cols], probability: vec![f32::NAN; rows * cols] };
    for row in (0..rows).step_by(side) {
        for col in (0..cols).step_by(side) {
            let (r0, c0) = (row.saturating_sub(halo), col.saturating_sub(halo));
            let (r1, c1) = ((row + side + halo).min(rows), (col + side + halo).min(cols));
            let chunk = crop(cube, r0, c0, r1 - r0, c1 - c0);
            let m = pool
                .with(|i| i.mask(&context(stage, &format!("{row},{col}")), &chunk, params))
                .unwrap_or_else(|e| panic!("{stage} on the chunk at {row},{col}: {e}"));
            let w = c1 - c0;
            for r in row..(row + side).min(rows) {
                for c in col..(col + side).min(cols) {
                    let at = (r - r0) * w + (c - c0);
                    out.classes[r * cols + c] = m.classes[at];
                    if !m.probability.is_empty() {
                        out.probability[r * cols + c] = m.probability[at];
                    }
                }
            }
        }
    }
    out
}

/// One small call, so that timings leave out compiling the component, instantiating it and
/// (for s2cloudless) decoding its model.
fn warm_up(pool: &StagePool, stage: &str) {
    pool.with(|i| i.mask(&context(stage, "warm-up"), &crop(scene(), 0, 0, 8, 8), "{}")).expect("a warm-up call");
}

/// s2cloudless on the whole scene with its defaults, run once per test binary.
fn s2cloudless_whole() -> &'static MaskLayers {
    static WHOLE: OnceLock<MaskLayers> = OnceLock::new();
    WHOLE.get_or_init(|| {
        let pool = pool("s2cloudless");
        let cube = scene();
        warm_up(&pool, "s2cloudless");
        let started = Instant::now();
        let m = pool.with(|i| i.mask(&context("s2cloudless", "scene"), cube, "{}")).expect("s2cloudless on the scene");
        let took = started.elapsed().as_secs_f64();
        let px = (cube.rows * cube.cols) as f64;
        println!("s2cloudless (wasm), whole scene: {took:.2} s, {:.3} Mpx/s", px / took / 1e6);
        m
    })
}

#[test]
fn s2cloudless_reproduces_its_stored_probability_and_mask() {
    let m = s2cloudless_whole();
    let prob = read("s2cloudless_prob.tif");
    let mask = read("s2cloudless_mask.tif");
    let n = prob.rows * prob.cols;
    assert_eq!(m.probability.len(), n);
    assert_eq!(m.classes.len(), n);
    let (mut max_delta, mut worst) = (0f32, 0);
    for p in 0..n {
        let delta = (m.probability[p] - prob.data[p]).abs();
        // NaN would slip past a plain `>`; the scene has no missing values.
        assert!(!delta.is_nan(), "pixel {p}: probability {} vs {}", m.probability[p], prob.data[p]);
        if delta > max_delta {
            (max_delta, worst) = (delta, p);
        }
    }
    let mismatches = (0..n).filter(|&p| m.classes[p] as f32 != mask.data[p]).count();
    let cloud = m.classes.iter().filter(|&&c| c == 1).count();
    println!(
        "s2cloudless parity: max |Δprobability| = {max_delta:e} (pixel {worst}), mask mismatches = {mismatches} of {n}, cloud {:.1} %",
        100.0 * cloud as f64 / n as f64
    );
    assert!(max_delta <= 1e-4, "probability off by {max_delta} at pixel {worst}");
    assert!(mismatches as f64 <= 0.001 * n as f64, "{mismatches} mask pixels differ");
    assert!(m.classes.iter().all(|&c| c <= 1), "the scene has no missing values, so only 0 and 1");
}

#[test]
fn s2cloudless_in_chunks_with_a_halo_equals_the_whole_scene() {
    let whole = s2cloudless_whole();
    let pool = pool("s2cloudless");
    // average_over 1 + dilation_size 1 = 2 pixels of context.
    let pieces = chunked(&pool, "s2cloudless", "{}", 200, 2);
    let differ = (0..whole.classes.len()).filter(|&p| pieces.classes[p] != whole.classes[p]).count();
    println!("s2cloudless 200 px chunks + 2 px halo: {differ} mask pixels differ from the whole scene");
    assert_eq!(differ, 0);
    assert!(pieces.probability.iter().zip(&whole.probability).all(|(a, b)| a.to_bits() == b.to_bits()));
    // Without the halo the chunk edges do differ, so the check above is not vacuous.
    let bare = chunked(&pool, "s2cloudless", "{}", 200, 0);
    let differ = (0..whole.classes.len()).filter(|&p| bare.classes[p] != whole.classes[p]).count();
    println!("without a halo: {differ} pixels differ");
    assert!(differ > 0);
}

#[test]
fn spectral_mask_agrees_with_s2cloudless() {
    let reference = read("s2cloudless_mask.tif");
    let pool = pool("spectral-mask");
    let cube = scene();
    warm_up(&pool, "spectral-mask");
    let started = Instant::now();
    let m = pool.with(|i| i.mask(&context("spectral-mask", "scene"), cube, "{}")).expect("spectral-mask on the scene");
    let took = started.elapsed().as_secs_f64();
    let n = reference.data.len();
    let (mut agree, mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    let mut counts = [0usize; 256];
    for p in 0..n {
        counts[m.classes[p] as usize] += 1;
        let (ours, theirs) = (m.classes[p] == 1, reference.data[p] == 1.0);
        agree += (ours == theirs) as usize;
        tp += (ours && theirs) as usize;
        fp += (ours && !theirs) as usize;
        fn_ += (!ours && theirs) as usize;
    }
    let agreement = agree as f64 / n as f64;
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    let all_clear = (fn_ + tp) as f64 / n as f64;
    println!(
        "spectral-mask vs s2cloudless: agreement {agreement:.4} (all-clear would be {:.4}), cloud precision {precision:.4}, recall {recall:.4}; \
         classes clear {} cloud {} shadow {} snow {} no-data {}; wasm {:.2} s, {:.2} Mpx/s",
        1.0 - all_clear,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[255],
        took,
        n as f64 / took / 1e6
    );
    // Measured 0.8925 / 0.8338 / 0.9547 with the defaults; the bounds leave a little room.
    assert!(agreement >= 0.88, "agreement {agreement}");
    assert!(precision >= 0.82, "precision {precision}");
    assert!(recall >= 0.94, "recall {recall}");
    assert!(counts[2] > 0, "some cloud shadow is found beside the clouds");
    assert_eq!(counts[255], 0);

    // Its own halo rule holds too: 13 px with the defaults.
    let pieces = chunked(&pool, "spectral-mask", "{}", 200, 13);
    let differ = (0..n).filter(|&p| pieces.classes[p] != m.classes[p]).count();
    assert_eq!(differ, 0, "spectral-mask in chunks with a 13 px halo differs from the whole scene");
}

#[test]
fn missing_bands_are_named() {
    let cube = crop(scene(), 0, 0, 4, 4);
    let without = |band: &str| {
        let mut c = cube.clone();
        let k = c.bands.iter().position(|b| b == band).expect("band in the scene");
        c.bands[k] = format!("{band}_renamed");
        c
    };
    let err = pool("s2cloudless").with(|i| i.mask(&context("s2cloudless", "0"), &without("B10"), "{}")).unwrap_err();
    assert!(matches!(err, StageCallError::Stage(_)), "{err:?}");
    assert!(err.to_string().contains("the cube lacks B10 (bands: B01, B02"), "{err}");
    let err = pool("spectral-mask").with(|i| i.mask(&context("spectral-mask", "0"), &without("B11"), "{}")).unwrap_err();
    assert!(err.to_string().contains("spectral-mask needs the bands B02, B03, B04, B08, B11, B12; the cube lacks B11"), "{err}");
    let err = pool("spectral-mask").with(|i| i.mask(&context("spectral-mask", "0"), &cube, r#"{"cloud_dilation": 1000}"#)).unwrap_err();
    assert!(err.to_string().contains("cloud_dilation 1000 is larger than 128 px"), "{err}");
}
