//! The `kmeans` clusterer through the Wasm component: inertia against scikit-learn's
//! `KMeans` on real data (the Slovenia NDVI series, the Formosat-2 samples), the
//! sandbox giving the same model as the native crate, `assign` reproducing the fit,
//! missing rows and mismatched features.

use crate::common;

use gdal::Metadata;
use sitsflow::runtime::data::{FeatureMatrix, StageError, StageKind};
use sitsflow::runtime::{CallContext, Limits, StageCallError, StagePool};
use sitsflow_sdk::{ClustererStage, Stage};
use std::path::PathBuf;
use std::process::Command;

fn context() -> CallContext {
    CallContext { stage: "kmeans".into(), chunk: "sample".into() }
}

fn pool() -> StagePool {
    let plugin = common::runtime().load(&common::component("kmeans")).expect("loading the kmeans component");
    StagePool::new(plugin, Limits::default())
}

/// The NDVI of every pixel at every date of the Slovenia series (`series/*.tif`, band
/// `NDVI`): 10,100 pixels × 67 dates, pixels with a NaN dropped.
fn slovenia_ndvi() -> FeatureMatrix {
    let dir = common::shared_data().join("slovenia-s2-eolearn/series");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    files.sort();
    let mut planes = Vec::new();
    let mut names = Vec::new();
    for f in &files {
        let ds = gdal::Dataset::open(f).unwrap();
        let (w, h) = ds.raster_size();
        let band = (1..=ds.raster_count())
            .map(|i| ds.rasterband(i).unwrap())
            .find(|b| b.description().unwrap() == "NDVI")
            .unwrap_or_else(|| panic!("{} has no NDVI band", f.display()));
        planes.push(band.read_as::<f32>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec());
        names.push(format!("NDVI@{}", f.file_stem().unwrap().to_string_lossy()));
    }
    assert_eq!(files.len(), 67, "the README promises 67 dates");
    let pixels = planes[0].len();
    let mut data = Vec::with_capacity(pixels * planes.len());
    for p in 0..pixels {
        let row: Vec<f32> = planes.iter().map(|plane| plane[p]).collect();
        if row.iter().all(|v| !v.is_nan()) {
            data.extend(row);
        }
    }
    FeatureMatrix { samples: (data.len() / names.len()) as u32, names, data }
}

/// The 260 training samples of the Formosat-2 set, 447 columns (149 dates × NIR, R, G).
fn formosat2() -> FeatureMatrix {
    let text = std::fs::read_to_string(common::shared_data().join("formosat2-tempcnn/train.csv")).unwrap();
    let mut lines = text.lines();
    let names: Vec<String> = lines.next().unwrap().split(',').skip(2).map(String::from).collect();
    let mut data = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        data.extend(line.split(',').skip(2).map(|v| v.parse::<f32>().unwrap()));
    }
    assert_eq!(names.len(), 447);
    FeatureMatrix { samples: (data.len() / names.len()) as u32, names, data }
}

struct Sklearn {
    inertia: f64,
    iterations: u64,
}

fn sklearn(x: &FeatureMatrix, k: usize, n_init: u32, algorithm: &str) -> Sklearn {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("x.f32");
    std::fs::write(&raw, x.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let mut command = Command::new("python3");
    command
        .arg(common::workspace().join("scripts/bench/sklearn_kmeans.py"))
        .arg(&raw)
        .args(["--features", &x.names.len().to_string(), "--k", &k.to_string(), "--n-init", &n_init.to_string()])
        .args(["--algorithm", algorithm, "--seed", "0"]);
    let v = common::sklearn_json(command);
    Sklearn { inertia: v["inertia"].as_f64().unwrap(), iterations: v["iterations"].as_u64().unwrap() }
}

/// Fits in the sandbox, compares the inertia with scikit-learn's on the same matrix,
/// and checks that `assign` of the fit sample gives back the reported inertia.
fn check_against_sklearn(what: &str, x: &FeatureMatrix, k: usize, n_init: u32, algorithm: &str) {
    let pool = pool();
    let params = format!(r#"{{"k": {k}, "n_init": {n_init}, "algorithm": "{algorithm}", "seed": 0}}"#);
    let fitted = pool.with(|i| i.fit(&context(), x, &params)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&fitted.report).unwrap();
    let ours = report["inertia"].as_f64().unwrap();
    let theirs = sklearn(x, k, n_init, algorithm);
    let gap = (ours - theirs.inertia) / theirs.inertia;
    println!(
        "{what}, {} samples × {} features, k = {k}, n_init = {n_init}, {algorithm}: inertia ours {ours:.3} \
         ({} iterations of the best run), scikit-learn {:.3} ({} iterations), ours/theirs − 1 = {:+.4} %",
        x.samples,
        x.names.len(),
        report["iterations"],
        theirs.inertia,
        theirs.iterations,
        gap * 100.0
    );
    assert!(gap.abs() <= 0.005, "{what}: inertia {ours} vs scikit-learn's {}", theirs.inertia);
    assert_eq!(report["converged"], true);

    let assigned = pool.with(|i| i.assign(&context(), &fitted.model, x, "{}")).unwrap();
    assert_eq!(assigned.clusters.len(), x.samples as usize);
    let sum: f64 = assigned.distances.iter().map(|&d| d as f64 * d as f64).sum();
    assert!((sum - ours).abs() <= 1e-5 * ours, "{what}: assign gives {sum}, the fit reported {ours}");
    let mut sizes = vec![0u64; k];
    for &c in &assigned.clusters {
        sizes[c as usize] += 1;
    }
    assert_eq!(serde_json::json!(sizes), report["cluster_sizes"], "{what}");
}

#[test]
fn slovenia_ndvi_inertia_is_within_half_a_percent_of_scikit_learn() {
    let x = slovenia_ndvi();
    assert!(x.samples > 10_000, "{} pixels without NaN", x.samples);
    check_against_sklearn("Slovenia NDVI series", &x, 8, 10, "lloyd");
    check_against_sklearn("Slovenia NDVI series", &x, 8, 10, "elkan");
}

#[test]
fn formosat2_inertia_is_within_half_a_percent_of_scikit_learn() {
    let x = formosat2();
    check_against_sklearn("Formosat-2 train", &x, 5, 10, "lloyd");
    check_against_sklearn("Formosat-2 train", &x, 13, 10, "lloyd");
}

/// The sandbox and the native crate do the same IEEE operations in the same order, so
/// the model is the same bytes and the report the same JSON.
#[test]
fn sandbox_and_native_fits_are_identical() {
    let x = slovenia_ndvi();
    let params = r#"{"k": 6, "n_init": 2, "seed": 9, "standardize": true}"#;
    let wasm = pool().with(|i| i.fit(&context(), &x, params)).unwrap();
    let native = kmeans::KMeans::fit(common::sdk_matrix(&x), kmeans::KMeans::parse_params(params).unwrap()).unwrap();
    assert_eq!(wasm.model.format, native.model.format);
    assert_eq!(wasm.model.data, native.model.data);
    // The same report as JSON: a native build linked into the host's tests orders an
    // object's keys as inserted (rustac's STAC client turns on serde_json's
    // `preserve_order` for every crate it is built with), the component by name.
    let json = |r: &str| serde_json::from_str::<serde_json::Value>(r).unwrap();
    assert_eq!(json(&wasm.report), json(&native.report));
}

#[test]
fn missing_rows_and_mismatched_features_through_the_sandbox() {
    let pool = pool();
    let info = pool.with(|i| i.describe(&context())).unwrap();
    assert_eq!((info.name.as_str(), info.kind), ("kmeans", StageKind::Clusterer));
    assert!(info.params_schema.contains("\"n_init\""), "{}", info.params_schema);

    let names = vec!["a".to_string(), "b".to_string()];
    let data = vec![0.0, 0.0, 0.1, 0.0, f32::NAN, 1.0, 5.0, 5.0, 5.1, 5.0, 5.0, 5.2];
    let x = FeatureMatrix { samples: 6, names: names.clone(), data };
    let fitted = pool.with(|i| i.fit(&context(), &x, r#"{"k": 2}"#)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&fitted.report).unwrap();
    assert_eq!(report["skipped_rows"], 1);
    let a = pool.with(|i| i.assign(&context(), &fitted.model, &x, "{}")).unwrap();
    assert_eq!(a.clusters[2], u32::MAX);
    assert!(a.distances[2].is_nan());
    assert_eq!(a.clusters[0], a.clusters[1]);
    assert_eq!(a.clusters[3], a.clusters[5]);
    assert_ne!(a.clusters[0], a.clusters[3]);

    let renamed = FeatureMatrix { names: vec!["a".into(), "NDVI".into()], ..x.clone() };
    match pool.with(|i| i.assign(&context(), &fitted.model, &renamed, "{}")) {
        Err(StageCallError::Stage(StageError::InvalidInput(m))) => {
            assert!(m.contains("feature 1 is 'NDVI' where the model has 'b'"), "{m}")
        }
        other => panic!("expected a feature mismatch, got {other:?}"),
    }
    match pool.with(|i| i.fit(&context(), &x, r#"{"k": 2, "tol": -1}"#)) {
        Err(StageCallError::Stage(StageError::InvalidParams(m))) => assert!(m.contains("tol"), "{m}"),
        other => panic!("expected a parameter error, got {other:?}"),
    }
}
