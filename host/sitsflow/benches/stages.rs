//! Every shipped stage, inside the Wasm sandbox against the same code called natively,
//! on the same chunk, in the same run (target: Wasm within 1.5× of native).
//!
//! `cargo bench -p sitsflow --bench stages [-- NAME]` prints a table (of the stages whose
//! name contains NAME) and writes `target/bench/stages.json`. Inputs: the real s2cloudless scene (cloud masks), a
//! generated 12-date × 11-band 256 × 256 chunk (SCL mask, indices, normalized
//! difference), and the indices' features of that chunk for the scene stages (k-means,
//! random forest, samplers, Markov chain). Times are medians, ratios medians of each round's ratio; the Wasm call includes
//! copying the inputs into the sandbox and the results out, as in a run. Each stage is
//! measured twice in the sandbox: compiled with epoch checks (deadlines, the default)
//! and trusted (no checks; `trusted = true` in a pipeline).

#[path = "../../../tests/common/mod.rs"]
mod common;

use sitsflow::runtime::data::{Cube, FeatureMatrix, Probabilities, SampleInput};
use sitsflow::runtime::{CallContext, Interruption, Limits, StagePool};
use sitsflow_sdk::prelude as sdk;
use sitsflow_sdk::{ClustererStage, CloudMaskStage, DecoderStage, FeatureStage, LabellerStage, SamplerStage, Stage};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

/// Times `run` alone: the native side's inputs are converted before the clock starts
/// (a native run would not copy them), its output dropped after it stops.
fn timed<I, O>(prepare: impl FnOnce() -> I, run: impl FnOnce(I) -> O) -> Duration {
    let input = prepare();
    let t = Instant::now();
    let output = black_box(run(input));
    let elapsed = t.elapsed();
    drop(output);
    elapsed
}


/// A deterministic pseudo-random stream (SplitMix64) for the generated chunk.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// 12 dates × (10 reflectance bands + SCL) × 256 × 256: seven surface types in blocks,
/// a seasonal NDVI curve, noise, and SCL clouds on a fifth of the pixel-dates.
fn series_chunk() -> Cube {
    let (rows, cols, dates) = (256usize, 256usize, 12usize);
    let bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL"];
    let mut mix = Mix(11);
    let n = rows * cols;
    let mut data = vec![0f32; dates * bands.len() * n];
    for d in 0..dates {
        let season = (std::f32::consts::PI * (d as f32 + 0.5) / dates as f32).sin();
        for p in 0..n {
            let class = ((p / cols) / 37 * 3 + (p % cols) / 41) % 7;
            let green = 0.1 + 0.5 * season * (class as f32 / 6.0);
            for (b, name) in bands.iter().enumerate() {
                let v = match *name {
                    "SCL" => {
                        if mix.next() < 0.2 { [3.0, 8.0, 9.0, 10.0][(mix.next() * 4.0) as usize % 4] } else { 4.0 }
                    }
                    "B08" | "B8A" | "B07" => 0.15 + green + 0.02 * mix.next(),
                    "B04" => 0.12 - 0.08 * green + 0.02 * mix.next(),
                    _ => 0.08 + 0.05 * b as f32 / 10.0 + 0.02 * mix.next(),
                };
                data[(d * bands.len() + b) * n + p] = v;
            }
        }
    }
    Cube {
        dates: (0..dates).map(|d| format!("2020-{:02}-15", d + 1)).collect(),
        bands: bands.iter().map(|b| b.to_string()).collect(),
        rows: rows as u32,
        cols: cols as u32,
        data,
        valid: Vec::new(),
    }
}

/// The real 13-band s2cloudless scene, 512 × 512 from its top-left corner.
fn cloud_scene() -> Cube {
    let path = common::shared_data().join("s2cloudless-scene/scene.tif");
    let ds = gdal::Dataset::open(&path).expect("the s2cloudless scene (../shared/data)");
    let (rows, cols) = (512usize, 512usize);
    let mut bands = Vec::new();
    let mut data = Vec::new();
    for b in 1..=ds.raster_count() {
        let band = ds.rasterband(b).unwrap();
        use gdal::Metadata as _;
        bands.push(band.description().unwrap());
        data.extend(band.read_as::<f32>((0, 0), (cols, rows), (cols, rows), None).unwrap().data().iter().copied());
    }
    Cube { dates: vec!["2020-01-01".into()], bands, rows: rows as u32, cols: cols as u32, data, valid: Vec::new() }
}

struct Row {
    stage: &'static str,
    input: String,
    wasm: Duration,
    trusted: Duration,
    native: Duration,
    megapixels: f64,
    /// Medians over rounds of each round's sandbox / native and trusted / native times.
    ratio: f64,
    trusted_ratio: f64,
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A stage's component loaded twice: with deadlines (epoch checks compiled in, the
/// default) and trusted (no checks).
struct Pools {
    checked: StagePool,
    trusted: StagePool,
}

fn pool(package: &str) -> Pools {
    let load = |interruption| {
        let plugin = common::runtime().load_with(&common::component(package), interruption).expect("loading a component");
        StagePool::new(plugin, Limits { memory_bytes: 3072 << 20, deadline_ms: 600_000 })
    };
    Pools { checked: load(Interruption::Deadline), trusted: load(Interruption::Trusted) }
}

/// The most rounds a quick stage gets (see `measure`).
const MAX_RUNS: usize = 41;

fn main() {
    let ctx = CallContext { stage: "bench".into(), chunk: "-".into() };
    let runs = 5;
    let mut rows: Vec<Row> = Vec::new();
    // `cargo bench --bench stages -- kmeans` measures only the stages whose name contains "kmeans".
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut measure = |stage: &'static str,
                       input: String,
                       megapixels: f64,
                       pools: &Pools,
                       wasm: &mut dyn FnMut(&StagePool),
                       native: &mut dyn FnMut() -> Duration| {
        if filter.as_deref().is_some_and(|f| !stage.contains(f)) {
            return;
        }
        // Round-robin (warm-up, then `runs` rounds of sandbox, trusted, native), so drift
        // in the machine's speed during the run hits the three alike.
        let mut time = |pool: &StagePool| {
            let t = Instant::now();
            wasm(pool);
            t.elapsed()
        };
        time(&pools.checked);
        time(&pools.trusted);
        native();
        // At least `runs` rounds, more for quick stages (until about a second of rounds,
        // at most `MAX_RUNS`): a median of five few-millisecond calls swings by ±30 %
        // on this VM.
        let (mut ws, mut ts, mut ns) = (Vec::new(), Vec::new(), Vec::new());
        let started = Instant::now();
        while ws.len() < runs || (ws.len() < MAX_RUNS && started.elapsed() < Duration::from_secs(1)) {
            ws.push(time(&pools.checked));
            ts.push(time(&pools.trusted));
            ns.push(native());
        }
        // Ratios round by round: the three runs of a round are seconds apart, so a slow
        // spell of this VM (it swings the native times by ±30 % between runs) cancels.
        let per_round = |xs: &[Duration]| median_f64(xs.iter().zip(&ns).map(|(x, n)| x.as_secs_f64() / n.as_secs_f64()).collect());
        let (ratio, trusted_ratio) = (per_round(&ws), per_round(&ts));
        let (w, trusted, n) = (median(ws), median(ts), median(ns));
        eprintln!(
            "{stage}: wasm {:.1} ms, trusted {:.1} ms, native {:.1} ms",
            w.as_secs_f64() * 1e3,
            trusted.as_secs_f64() * 1e3,
            n.as_secs_f64() * 1e3
        );
        rows.push(Row { stage, input, wasm: w, trusted, native: n, megapixels, ratio, trusted_ratio });
    };

    // Cloud masks on the real scene.
    let scene = cloud_scene();
    let mpx_scene = (scene.rows * scene.cols) as f64 / 1e6;
    {
        let p = pool("s2cloudless");
        let params = r#"{"threshold": 0.4, "average_over": 1, "dilation_size": 1}"#;
        measure("s2cloudless", "s2cloudless scene 512×512, 13 bands".into(), mpx_scene,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.mask(&ctx, &scene, params)).unwrap()); },
            &mut || timed(|| (common::sdk_cube(&scene), s2cloudless::S2Cloudless::parse_params(params).unwrap()), |(a0, a1)| s2cloudless::S2Cloudless::mask(a0, a1).unwrap()));
    }
    {
        let p = pool("spectral-mask");
        let params = "{}";
        measure("spectral-mask", "s2cloudless scene 512×512, 13 bands".into(), mpx_scene,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.mask(&ctx, &scene, params)).unwrap()); },
            &mut || timed(|| (common::sdk_cube(&scene), spectral_mask::SpectralMask::parse_params(params).unwrap()), |(a0, a1)| spectral_mask::SpectralMask::mask(a0, a1).unwrap()));
    }

    // Per-pixel stages on the generated series chunk.
    let cube = series_chunk();
    let mpx = (cube.rows * cube.cols) as f64 / 1e6;
    let series_label = "256×256 px, 12 dates × 11 bands".to_string();
    {
        let p = pool("scl-mask");
        let params = r#"{"dilation": 2}"#;
        measure("scl-mask", series_label.clone(), mpx,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.mask(&ctx, &cube, params)).unwrap()); },
            &mut || timed(|| (common::sdk_cube(&cube), scl_mask::SclMask::parse_params(params).unwrap()), |(a0, a1)| scl_mask::SclMask::mask(a0, a1).unwrap()));
    }
    let indices_params = r#"{"indices": ["NDVI", "NDWI", "NDBI", "BSI", "EVI"], "per_date": false, "stats": ["mean", "std", "p10", "p50", "p90"]}"#;
    let features = {
        let p = pool("indices");
        measure("indices", series_label.clone(), mpx,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.features(&ctx, &cube, indices_params)).unwrap()); },
            &mut || timed(|| (common::sdk_cube(&cube), indices::Indices::parse_params(indices_params).unwrap()), |(a0, a1)| indices::Indices::compute(a0, a1).unwrap()));
        p.checked.with(|i| i.features(&ctx, &cube, indices_params)).unwrap()
    };
    {
        let p = pool("normalized-difference");
        let params = r#"{"a": "B08", "b": "B04", "name": "NDVI"}"#;
        measure("normalized-difference", series_label.clone(), mpx,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.features(&ctx, &cube, params)).unwrap()); },
            &mut || timed(|| (common::sdk_cube(&cube), normalized_difference::NormalizedDifference::parse_params(params).unwrap()), |(a0, a1)| normalized_difference::NormalizedDifference::compute(a0, a1).unwrap()));
    }

    // Scene stages on the indices' features of that chunk (65 536 samples × 25).
    let n = features.samples as usize;
    let feature_label = format!("{n} samples × {} features", features.names.len());
    let kmeans_params = r#"{"k": 12, "n_init": 1, "standardize": true, "seed": 1}"#;
    let kp = pool("kmeans");
    let fitted = kp.checked.with(|i| i.fit(&ctx, &features, kmeans_params)).unwrap();
    measure("kmeans (fit)", feature_label.clone(), n as f64 / 1e6,
        &kp, &mut |p: &StagePool| { black_box(p.with(|i| i.fit(&ctx, &features, kmeans_params)).unwrap()); },
        &mut || timed(|| (common::sdk_matrix(&features), kmeans::KMeans::parse_params(kmeans_params).unwrap()), |(a0, a1)| kmeans::KMeans::fit(a0, a1).unwrap()));
    let model = fitted.model.clone();
    let sdk_model = sdk::ModelBlob { format: model.format.clone(), data: model.data.clone() };
    measure("kmeans (assign)", feature_label.clone(), n as f64 / 1e6,
        &kp, &mut |p: &StagePool| { black_box(p.with(|i| i.assign(&ctx, &model, &features, kmeans_params)).unwrap()); },
        &mut || timed(|| (sdk_model.clone(), common::sdk_matrix(&features), kmeans::KMeans::parse_params(kmeans_params).unwrap()), |(a0, a1, a2)| kmeans::KMeans::assign(a0, a1, a2).unwrap()));
    let clusters: Vec<u32> = kp.checked.with(|i| i.assign(&ctx, &model, &features, kmeans_params)).unwrap().clusters.iter().map(|c| c + 1).collect();
    // A reference: the generator's surface type, with a tenth of labels wrong (as a stale map's).
    let mut mix = Mix(5);
    let reference: Vec<u32> = (0..n)
        .map(|p| {
            let class = ((p / 256) / 37 * 3 + (p % 256) / 41) % 7 + 1;
            if mix.next() < 0.1 { (class % 7 + 1) as u32 } else { class as u32 }
        })
        .collect();
    let positions: Vec<(u32, u32)> = (0..n).map(|p| ((p / 256) as u32, (p % 256) as u32)).collect();
    let input = SampleInput {
        features: features.clone(),
        layers: vec![("reference".into(), reference.clone()), ("clusters".into(), clusters.clone())],
        probabilities: None,
        positions: positions.clone(),
        seed: 1,
    };
    {
        let p = pool("reliable-samples");
        let params = r#"{"clusters": "clusters", "purity": 0.6, "per_class": 500}"#;
        // The sandbox side takes its input by `&mut` (unread parts are lent out, not copied).
        let mut sandboxed = input.clone();
        measure("reliable-samples", feature_label.clone(), n as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.select(&ctx, &mut sandboxed, params)).unwrap()); },
            &mut || timed(|| (common::sdk_sample_input(&input), reliable_samples::ReliableSamples::parse_params(params).unwrap()), |(a0, a1)| reliable_samples::ReliableSamples::select(a0, a1).unwrap()));
    }
    {
        let p = pool("stratified-samples");
        let params = r#"{"per_class": 500}"#;
        let mut sandboxed = input.clone();
        measure("stratified-samples", feature_label.clone(), n as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.select(&ctx, &mut sandboxed, params)).unwrap()); },
            &mut || timed(|| (common::sdk_sample_input(&input), stratified_samples::StratifiedSamples::parse_params(params).unwrap()), |(a0, a1)| stratified_samples::StratifiedSamples::select(a0, a1).unwrap()));
    }
    // Random forest: trained on 5 000 labelled samples, predicting the whole chunk.
    let rf_params = r#"{"n_trees": 100, "seed": 1}"#;
    let train_n = 5000;
    let step = n / train_n;
    let train = FeatureMatrix {
        samples: train_n as u32,
        names: features.names.clone(),
        data: (0..train_n).flat_map(|i| features.data[i * step * 25..i * step * 25 + 25].to_vec()).collect(),
    };
    let train_labels: Vec<u16> = (0..train_n).map(|i| reference[i * step] as u16).collect();
    let rp = pool("random-forest");
    measure("random-forest (train)", format!("{train_n} samples × 25 features, 100 trees"), train_n as f64 / 1e6,
        &rp, &mut |p: &StagePool| { black_box(p.with(|i| i.train(&ctx, &train, &train_labels, rf_params)).unwrap()); },
        &mut || timed(|| (common::sdk_matrix(&train), train_labels.clone(), random_forest::RandomForest::parse_params(rf_params).unwrap()), |(a0, a1, a2)| random_forest::RandomForest::train(a0, a1, a2).unwrap()));
    let forest = rp.checked.with(|i| i.train(&ctx, &train, &train_labels, rf_params)).unwrap().model;
    let sdk_forest = sdk::ModelBlob { format: forest.format.clone(), data: forest.data.clone() };
    measure("random-forest (predict)", feature_label.clone(), n as f64 / 1e6,
        &rp, &mut |p: &StagePool| { black_box(p.with(|i| i.predict(&ctx, &forest, &features, rf_params)).unwrap()); },
        &mut || timed(|| (sdk_forest.clone(), common::sdk_matrix(&features), random_forest::RandomForest::parse_params(rf_params).unwrap()), |(a0, a1, a2)| random_forest::RandomForest::predict(a0, a1, a2).unwrap()));
    let probabilities: Probabilities = rp.checked.with(|i| i.predict(&ctx, &forest, &features, rf_params)).unwrap();
    {
        let p = pool("uncertainty-query");
        let params = r#"{"strategy": "margin", "batch": 100}"#;
        let query = SampleInput { probabilities: Some(probabilities.clone()), layers: Vec::new(), ..input.clone() };
        let mut sandboxed = query.clone();
        measure("uncertainty-query", feature_label.clone(), n as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.select(&ctx, &mut sandboxed, params)).unwrap()); },
            &mut || timed(|| (common::sdk_sample_input(&query), uncertainty_query::UncertaintyQuery::parse_params(params).unwrap()), |(a0, a1)| uncertainty_query::UncertaintyQuery::select(a0, a1).unwrap()));
    }
    {
        // Three years of labels: the reference, then two noisier copies.
        let years: Vec<(String, Vec<u32>)> = (0..3)
            .map(|y| {
                let mut mix = Mix(100 + y);
                (format!("pseudo_{}", 2018 + y), reference.iter().map(|&c| if mix.next() < 0.1 { c % 7 + 1 } else { c }).collect())
            })
            .collect();
        let agreement = SampleInput { layers: years, ..input.clone() };
        let p = pool("agreement-samples");
        let params = r#"{"maps": "pseudo", "per_class": 500}"#;
        let mut sandboxed = agreement.clone();
        measure("agreement-samples", feature_label.clone(), n as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.select(&ctx, &mut sandboxed, params)).unwrap()); },
            &mut || timed(|| (common::sdk_sample_input(&agreement), agreement_samples::AgreementSamples::parse_params(params).unwrap()), |(a0, a1)| agreement_samples::AgreementSamples::select(a0, a1).unwrap()));
    }
    {
        // Three years of the forest's posteriors.
        let k = probabilities.classes.len();
        let mut data = Vec::with_capacity(3 * n * k);
        for _ in 0..3 {
            data.extend_from_slice(&probabilities.data);
        }
        let series = sitsflow::runtime::data::PosteriorSeries { steps: 3, samples: n as u32, classes: probabilities.classes.clone(), data };
        let sdk_series = sdk::PosteriorSeries { steps: 3, samples: n, classes: series.classes.clone(), data: series.data.clone() };
        let p = pool("markov");
        let params = r#"{"transition": {"stay": 0.9}}"#;
        measure("markov", format!("{n} pixels × 3 years × {k} classes"), n as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.decode(&ctx, &series, params)).unwrap()); },
            &mut || timed(|| (sdk_series.clone(), markov::Markov::parse_params(params).unwrap()), |(a0, a1)| markov::Markov::decode(a0, a1).unwrap()));
    }
    {
        // SimCLR views: a batch of seed 003's SITS patches (8 dates × 10 bands × 40 × 40),
        // cut from the generated chunk, every augmentation on.
        let batch = common::patch_batch(&cube, 64, 40, 8, 10);
        let sdk_batch = common::sdk_patch_batch(&batch);
        let p = pool("simclr-augment");
        let params = r#"{"blur_probability": 1.0, "erase_probability": 1.0}"#;
        measure("simclr-augment", format!("{} patches 8 dates × 10 bands × 40²", batch.count), (batch.count * 40 * 40) as f64 / 1e6,
            &p, &mut |p: &StagePool| { black_box(p.with(|i| i.augment(&ctx, &batch, params)).unwrap()); },
            &mut || timed(|| (sdk_batch.clone(), simclr_augment::SimclrAugment::parse_params(params).unwrap()), |(a0, a1)| {
                use sitsflow_sdk::AugmenterStage;
                simclr_augment::SimclrAugment::augment(a0, a1).unwrap()
            }));
    }

    println!("Wasm sandbox vs the same stage code called natively, same input, same run (median of {runs} to {MAX_RUNS} alternating rounds;");
    println!("ratios are medians of each round's ratio);");
    println!("'wasm' has the default epoch checks (deadlines), 'trusted' none (`trusted = true` in a pipeline)");
    println!(
        "{:<24} {:<38} {:>9} {:>10} {:>10} {:>11} {:>7} {:>8}",
        "stage", "input", "wasm ms", "trusted ms", "native ms", "wasm Mpx/s", "ratio", "trusted"
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        let (ratio, trusted_ratio) = (r.ratio, r.trusted_ratio);
        let flag = |x: f64| if x > 1.5 { "*" } else { " " };
        println!(
            "{:<24} {:<38} {:>9.1} {:>10.1} {:>10.1} {:>11.2} {:>6.2}x{} {:>6.2}x{}",
            r.stage,
            r.input,
            r.wasm.as_secs_f64() * 1e3,
            r.trusted.as_secs_f64() * 1e3,
            r.native.as_secs_f64() * 1e3,
            r.megapixels / r.wasm.as_secs_f64(),
            ratio,
            flag(ratio),
            trusted_ratio,
            flag(trusted_ratio),
        );
        json_rows.push(serde_json::json!({
            "stage": r.stage, "input": r.input,
            "wasm_ms": r.wasm.as_secs_f64() * 1e3, "trusted_ms": r.trusted.as_secs_f64() * 1e3, "native_ms": r.native.as_secs_f64() * 1e3,
            "wasm_mpx_per_s": r.megapixels / r.wasm.as_secs_f64(), "native_mpx_per_s": r.megapixels / r.native.as_secs_f64(),
            "ratio": ratio, "trusted_ratio": trusted_ratio,
        }));
    }
    println!("* over the 1.5× target");
    let report = serde_json::json!({
        "bench": "stages",
        "baseline": "the same stage code called natively on the same input in the same run",
        "target_ratio": 1.5,
        "machine": { "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) },
        "stages": json_rows,
    });
    if filter.is_none() {
        let out = common::workspace().join("target/bench/stages.json");
        sitsflow::fsutil::write_atomic(&out, serde_json::to_string_pretty(&report).unwrap().as_bytes()).unwrap();
        println!("wrote {}", out.display());
    }
}
