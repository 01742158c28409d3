//! Accuracy metrics against scikit-learn's implementations on the same inputs (to
//! 1e-9), on generated labels and on real ones (the Slovenia LULC reference, the
//! demo's truth maps); and `sitsflow eval` end to end.

use crate::common;

use rand::{Rng, SeedableRng};
use sitsflow::eval::Confusion;
use std::process::Command;

const SKLEARN: &str = r#"
import json, sys
import numpy as np
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             jaccard_score, precision_recall_fscore_support)
ref = np.loadtxt(sys.argv[1], dtype=np.int64, ndmin=1)
pred = np.loadtxt(sys.argv[2], dtype=np.int64, ndmin=1)
keep = ref != 0
ref, pred = ref[keep], pred[keep]
labels = sorted(set(ref.tolist()) | set(pred.tolist()))
p, r, f, s = precision_recall_fscore_support(ref, pred, labels=labels, zero_division=0)
print(json.dumps({
    "labels": labels,
    "oa": accuracy_score(ref, pred),
    "kappa": cohen_kappa_score(ref, pred, labels=labels),
    "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.tolist(),
    "iou": jaccard_score(ref, pred, labels=labels, average=None, zero_division=0).tolist(),
    "macro_f1": f1_score(ref, pred, average="macro", zero_division=0),
    "miou": jaccard_score(ref, pred, average="macro", zero_division=0),
    "confusion": confusion_matrix(ref, pred, labels=labels).tolist(),
}))
"#;

fn sklearn(reference: &[u16], map: &[u16]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, v: &[u16]| {
        let path = dir.path().join(name);
        std::fs::write(&path, v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n")).unwrap();
        path
    };
    let (r, m) = (write("ref.txt", reference), write("map.txt", map));
    let mut command = Command::new("python3");
    command.arg("-c").arg(SKLEARN).arg(&r).arg(&m);
    common::sklearn_json(command)
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9, "{what}: ours {a} vs scikit-learn {b}");
}

fn check_parity(reference: &[u16], map: &[u16]) {
    let ours = Confusion::from_pairs(reference, map);
    let m = ours.metrics();
    let theirs = sklearn(reference, map);
    let labels: Vec<u16> = serde_json::from_value(theirs["labels"].clone()).unwrap();
    assert_eq!(ours.classes, labels);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(theirs["confusion"].clone()).unwrap();
    assert_eq!(ours.counts, confusion);
    close(m.overall_accuracy, theirs["oa"].as_f64().unwrap(), "OA");
    close(m.kappa, theirs["kappa"].as_f64().unwrap(), "kappa");
    close(m.macro_f1, theirs["macro_f1"].as_f64().unwrap(), "macro F1");
    close(m.miou, theirs["miou"].as_f64().unwrap(), "mIoU");
    for (i, c) in m.classes.iter().enumerate() {
        close(c.users_accuracy, theirs["precision"][i].as_f64().unwrap(), &format!("UA of {}", c.class));
        close(c.producers_accuracy, theirs["recall"][i].as_f64().unwrap(), &format!("PA of {}", c.class));
        close(c.f1, theirs["f1"][i].as_f64().unwrap(), &format!("F1 of {}", c.class));
        close(c.iou, theirs["iou"][i].as_f64().unwrap(), &format!("IoU of {}", c.class));
        assert_eq!(c.support, theirs["support"][i].as_u64().unwrap());
    }
}

#[test]
fn metrics_match_scikit_learn_on_generated_labels() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    for n in [7usize, 1000, 50_000] {
        let reference: Vec<u16> = (0..n).map(|_| rng.random_range(0..7)).collect();
        // A map that is right about 70 % of the time, with one class it never predicts.
        let map: Vec<u16> = reference
            .iter()
            .map(|&r| if r != 0 && r != 5 && rng.random::<f32>() < 0.7 { r } else { rng.random_range(1..5) })
            .collect();
        check_parity(&reference, &map);
    }
}

/// One definition of macro F1 and mIoU, scikit-learn's: the mean over the classes of the
/// reference or the map. A class the map predicts but the reference lacks counts (with
/// F1 and IoU 0), where averaging over the reference's classes alone would not.
#[test]
fn a_class_predicted_but_absent_from_the_reference_counts_in_macro_f1_and_miou() {
    let reference = [1u16, 1, 2, 2, 3, 3];
    let map = [1u16, 4, 2, 2, 3, 4];
    let m = Confusion::from_pairs(&reference, &map).metrics();
    // F1: class 1 2/3, 2 1, 3 2/3, 4 0 → mean over four classes.
    assert!((m.macro_f1 - (2.0 / 3.0 + 1.0 + 2.0 / 3.0) / 4.0).abs() < 1e-12, "{}", m.macro_f1);
    // IoU: 1/2, 1, 1/2, 0.
    assert!((m.miou - 2.0 / 4.0).abs() < 1e-12, "{}", m.miou);
    check_parity(&reference, &map);
}

fn read_u16(path: &std::path::Path) -> (usize, usize, Vec<u16>) {
    let ds = gdal::Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let band = ds.rasterband(1).unwrap().read_as::<u16>((0, 0), (w, h), (w, h), None).unwrap();
    (w, h, band.data().to_vec())
}

#[test]
fn metrics_match_scikit_learn_on_real_labels() {
    // Slovenia's LULC reference against itself shifted by one pixel: real class
    // boundaries, real confusions.
    let (w, h, lulc) = read_u16(&common::shared_data().join("slovenia-s2-eolearn/lulc.tif"));
    let mut shifted = vec![0u16; w * h];
    for r in 0..h {
        for c in 1..w {
            shifted[r * w + c] = lulc[r * w + c - 1];
        }
    }
    check_parity(&lulc, &shifted);
    // The demo's truth of two years (a clear-cut and storm damage between them).
    let demo = common::small_demo();
    let (_, _, a) = read_u16(&demo.join("truth/2018.tif"));
    let (_, _, b) = read_u16(&demo.join("truth/2019.tif"));
    check_parity(&a, &b);
}

#[test]
fn eval_command_reports_metrics_and_agreement() {
    let demo = common::small_demo();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eval.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sitsflow"))
        .args(["eval", "--map"])
        .arg(demo.join("truth/2019.tif"))
        .arg("--reference")
        .arg(demo.join("reference.tif"))
        .arg("--nomenclature")
        .arg(common::workspace().join("configs/nomenclature/clc-to-seed001.toml"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("OA 0.") && shown.contains("kappa"), "{shown}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["metrics"]["samples"], 64 * 64);
    assert!(report["metrics"]["overall_accuracy"].as_f64().unwrap() > 0.6);

    let out = Command::new(env!("CARGO_BIN_EXE_sitsflow"))
        .args(["eval", "--series"])
        .arg(demo.join("truth/2018.tif"))
        .arg(demo.join("truth/2019.tif"))
        .arg(demo.join("truth/2020.tif"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(shown.matches("overall agreement").count(), 2, "{shown}");
}

#[test]
fn stratified_sample_gives_area_estimates() {
    // A sample raster: the demo truth of 2018 at every 7th pixel, as reference for the
    // 2018 map made from the coarse reference (a stratified-by-map sample, roughly).
    let demo = common::small_demo();
    let (w, h, truth) = read_u16(&demo.join("truth/2018.tif"));
    let sample: Vec<u16> = truth.iter().enumerate().map(|(i, &t)| if i % 7 == 0 { t } else { 0 }).collect();
    let map: Vec<u16> = truth.iter().enumerate().map(|(i, &t)| if i % 5 == 0 && t != 9 { 2 } else { t }).collect();
    let mut map_pixels = std::collections::BTreeMap::new();
    for &c in &map {
        *map_pixels.entry(c).or_default() += 1u64;
    }
    let confusion = Confusion::from_pairs(&sample, &map);
    let e = sitsflow::eval::area_estimate(&confusion, &map_pixels, 100.0).unwrap();
    let total: f64 = e.classes.iter().map(|c| c.area).sum();
    assert!((total - (w * h) as f64 * 100.0).abs() < 1e-6, "class areas add up to the map's area");
    assert!(e.classes.iter().all(|c| c.area_ci95 >= 0.0 && c.area_ci95 < e.total_area));
    // The map over-predicts grass (2); the estimate corrects it below the mapped area.
    let grass = e.classes.iter().find(|c| c.class == 2).unwrap();
    assert!(grass.area < grass.map_pixels as f64 * 100.0, "{grass:?}");
}

#[test]
fn reference_points_are_placed_by_coordinates() {
    let demo = common::small_demo();
    let ds = gdal::Dataset::open(demo.join("truth/2018.tif")).unwrap();
    let gt = ds.geo_transform().unwrap();
    let (w, _, truth18) = read_u16(&demo.join("truth/2018.tif"));
    let (_, _, truth19) = read_u16(&demo.join("truth/2019.tif"));
    let picked: Vec<usize> = (0..truth18.len()).step_by(37).collect();
    let mut csv = String::from("x,y,class\n");
    for &p in &picked {
        let (r, c) = (p / w, p % w);
        csv.push_str(&format!("{},{},{}\n", gt[0] + (c as f64 + 0.5) * gt[1], gt[3] + (r as f64 + 0.5) * gt[5], truth18[p]));
    }
    csv.push_str("0,0,3\n"); // far outside the map: skipped
    let dir = tempfile::tempdir().unwrap();
    let points = dir.path().join("points.csv");
    std::fs::write(&points, &csv).unwrap();
    // Against the map they were drawn from: perfect.
    let e = sitsflow::eval::evaluate_points(&demo.join("truth/2018.tif"), &points, None, false).unwrap();
    assert_eq!(e.metrics.samples, picked.len() as u64);
    assert_eq!(e.metrics.overall_accuracy, 1.0);
    // Against the next year: the same counts as comparing those pixels directly.
    let e = sitsflow::eval::evaluate_points(&demo.join("truth/2019.tif"), &points, None, true).unwrap();
    let expected = Confusion::from_pairs(&picked.iter().map(|&p| truth18[p]).collect::<Vec<_>>(), &picked.iter().map(|&p| truth19[p]).collect::<Vec<_>>());
    assert_eq!(e.confusion, expected);
    assert!(e.area.is_some());
    std::fs::write(&points, "x,y,class\n460005,5099995,two\n").unwrap();
    let err = sitsflow::eval::evaluate_points(&demo.join("truth/2018.tif"), &points, None, false).unwrap_err().to_string();
    assert!(err.ends_with("points.csv:2:3: class 'two' is not a code"), "{err}");
}
