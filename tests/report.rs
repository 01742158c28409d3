//! The run report, opened the way an operator opens it: rendered in headless Chromium
//! (Debian's package, installed by scripts/setup.sh), which must load it without
//! errors and show its maps and figures. The screenshot is kept in
//! target/test-artifacts/report.png.

use crate::common;

use std::process::Command;

fn chromium() -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]);
    c
}

#[test]
fn report_renders_in_chromium_with_maps_and_confusion_matrix() {
    let dir = common::project_dir();
    let demo = common::small_demo();
    let nomenclature = common::workspace().join("configs/nomenclature/clc-to-seed001.toml");
    let pipeline = format!(
        "schema = 1\nname = \"report\"\n\n[input]\nseries = {series:?}\n\n[reference]\npath = {reference:?}\nnomenclature = {nomenclature:?}\n\n\
         [run]\nchunk_size = 32\n\n[[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = {{ a = \"B08\", b = \"B04\", name = \"NDVI\" }}\n\n\
         [[evaluate]]\noutput = \"reference\"\ntruth = {truth:?}\n",
        series = demo.join("series").display().to_string(),
        reference = demo.join("reference.tif").display().to_string(),
        nomenclature = nomenclature.display().to_string(),
        truth = demo.join("truth/2018.tif").display().to_string(),
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let exe = env!("CARGO_BIN_EXE_sitsflow");
    let cache = common::workspace().join("target/test-cache");
    for args in [&["--quiet", "plugins", "lock", "pipeline.toml"][..], &["--quiet", "run", "pipeline.toml"][..]] {
        let out = Command::new(exe).args(args).current_dir(dir.path()).env("SITSFLOW_CACHE_DIR", &cache).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let run = dir.path().join("runs/report");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let oa = report["evaluations"][0]["evaluation"]["metrics"]["overall_accuracy"].as_f64().unwrap();
    assert!(oa > 0.6 && oa < 1.0, "OA {oa}");
    // The report names every evaluated map where the run published it.
    for e in report["evaluations"].as_array().unwrap() {
        let map = std::path::PathBuf::from(e["evaluation"]["map"].as_str().unwrap());
        assert!(!map.to_string_lossy().contains(".partial"), "{}", map.display());
        assert!(dir.path().join(&map).exists(), "{} is published", map.display());
    }

    let html = run.join("report.html");
    let url = format!("file://{}", html.display());
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium()
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(&url)
        .output()
        .expect("chromium (Debian's package; scripts/setup.sh installs it)");
    assert!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let page = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    for problem in ["Uncaught", "Failed to load resource", "net::ERR_"] {
        assert!(!log.contains(problem), "the page logged '{problem}':\n{log}");
    }
    assert_eq!(page.matches("<figure class=\"quicklook\">").count(), 2, "two maps: ndvi and reference");
    assert_eq!(page.matches("src=\"data:image/png;base64,").count(), 2);
    assert!(page.contains("<svg class=\"heatmap\""), "the confusion matrix is drawn");
    assert!(page.contains("<svg class=\"f1bars\""), "the F1 bars are drawn");
    assert!(page.contains("7 Broadleaves") && page.contains("8 Conifers"), "the legend names the classes");

    let artifacts = common::workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium()
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--window-size=1280,2000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A blank page compresses to a few KB; maps, tables and charts do not.
    let size = std::fs::metadata(&shot).unwrap().len();
    assert!(size > 50_000, "screenshot of {size} bytes looks empty");
}
