//! The plugin author's path (#35), as a third party walks it: `plugins new` writes four
//! crates (features, cloud mask, labeller, decoder) outside this workspace against the SDK by path; cargo builds them with a lockfile
//! of their own (resolved from crates.io as an author's would be); `plugins run` runs
//! the built component on a series without a pipeline; `plugins install` puts them in a
//! folder of their own, and a pipeline runs all four beside the shipped stages from two
//! plugin folders.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sitsflow(dir: &Path, args: &[&str]) -> String {
    let out = common::sitsflow_command(dir).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sitsflow {args:?} failed:\n{text}");
    text
}

/// `cargo build --profile plugin --target wasm32-wasip2` in `krate`, as its README says;
/// the built component.
fn build(krate: &Path, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Outside the workspace's target folder (its lock), kept between runs of this test.
    let target = common::workspace().join("target/out-of-tree");
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .current_dir(krate)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "building {}:\n{}", krate.display(), String::from_utf8_lossy(&out.stderr));
    assert!(krate.join("Cargo.lock").is_file(), "the crate resolved its own lockfile");
    let wasm = target.join(format!("wasm32-wasip2/plugin/{}.wasm", name.replace('-', "_")));
    assert!(wasm.is_file(), "{} was not built", wasm.display());
    wasm
}

#[test]
fn a_plugin_written_outside_the_workspace_runs_alone_and_beside_the_shipped_stages() {
    let project = common::project_dir();
    let dir = project.path();
    let demo = dir.join("demo");
    sitsflow::demo::generate(&demo, &sitsflow::demo::DemoOptions { size: 32, dates_per_year: 3, years: vec![2019, 2020, 2021], ..Default::default() }).unwrap();

    // The crates, from the templates, against this checkout's SDK by path.
    let sdk = common::workspace().join("plugins/sdk");
    let authors = dir.join("authors");
    std::fs::create_dir_all(&authors).unwrap();
    for (kind, name) in [("features", "brightness"), ("cloud-mask", "blue-clouds"), ("labeller", "centroids"), ("decoder", "majority")] {
        sitsflow(dir, &["plugins", "new", kind, name, "--dir", authors.to_str().unwrap(), "--sdk", sdk.to_str().unwrap()]);
    }
    let err = common::sitsflow_command(dir).args(["plugins", "new", "sampler", "x", "--sdk", sdk.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no template for a 'sampler' stage (templates: features, cloud-mask, labeller, decoder)"));
    let manifest = std::fs::read_to_string(authors.join("brightness/Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]") && manifest.contains("codegen-units = 1"), "{manifest}");
    let brightness = build(&authors.join("brightness"), "brightness");
    let clouds = build(&authors.join("blue-clouds"), "blue-clouds");
    let centroids = build(&authors.join("centroids"), "centroids");
    let majority = build(&authors.join("majority"), "majority");

    // The harness: the component on a window of the series, without a pipeline. Its
    // values are the mean of B04 and B08 as GDAL reads them.
    let out = dir.join("brightness.tif");
    sitsflow(
        dir,
        &["plugins", "run", brightness.to_str().unwrap(), "--params", r#"{"bands": ["B04", "B08"]}"#, "--input", demo.join("series").to_str().unwrap(), "--window", "4,8,16,8", "--out", out.to_str().unwrap()],
    );
    let ds = gdal::Dataset::open(&out).unwrap();
    assert_eq!((ds.raster_size(), ds.raster_count()), ((8, 16), 9), "8 × 16 px, one band per date");
    let first = std::fs::read_dir(demo.join("series")).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let series = gdal::Dataset::open(&first).unwrap();
    let band = |b: usize| series.rasterband(b).unwrap().read_as::<f32>((8, 4), (8, 16), (8, 16), None).unwrap().data().to_vec();
    use gdal::Metadata;
    let names: Vec<String> = (1..=series.raster_count()).map(|b| series.rasterband(b).unwrap().description().unwrap()).collect();
    let (b04, b08) = (band(names.iter().position(|n| n == "B04").unwrap() + 1), band(names.iter().position(|n| n == "B08").unwrap() + 1));
    let got = ds.rasterband(1).unwrap().read_band_as::<f32>().unwrap().data().to_vec();
    for (p, g) in got.iter().enumerate() {
        assert!((g - (b04[p] + b08[p]) / 2.0).abs() < 1e-6, "pixel {p}: {g} against the mean of {} and {}", b04[p], b08[p]);
    }
    // Parameters are checked against the schema the component publishes.
    let bad = common::sitsflow_command(dir)
        .args(["plugins", "run", brightness.to_str().unwrap(), "--params", r#"{"band": "B04"}"#, "--input", demo.join("series").to_str().unwrap(), "--out", "x.tif"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("do not fit its schema"), "{}", String::from_utf8_lossy(&bad.stderr));

    // Installed in a folder of their own; a pipeline takes them from there and the
    // shipped indices stage from the shipped folder.
    let wasm: Vec<&str> = [&brightness, &clouds, &centroids, &majority].iter().map(|p| p.to_str().unwrap()).collect();
    let mut install = vec!["plugins", "install", "--dir", "mine"];
    install.extend(&wasm);
    sitsflow(dir, &install);
    // The author's four stages around the shipped indices and stratified samples: clouds,
    // features, a labeller trained on 2019 mapping every year, a decoder over its years.
    let pipeline = format!(
        "schema = 1\nname = \"authors\"\n\n[input]\nseries = {:?}\n\n[reference]\npath = {:?}\nclasses = {:?}\n\n\
         [output]\ndir = \"runs/authors\"\n\n[plugins]\ndir = [\"mine\", \"plugins\"]\n\n\
         [[stage]]\nid = \"clouds\"\nplugin = \"blue-clouds@0.1.0\"\nparams = {{ threshold = 0.25 }}\n\n\
         [[stage]]\nid = \"brightness\"\nplugin = \"brightness@0.1.0\"\nparams = {{ bands = [\"B04\", \"B08\"] }}\n\n\
         [[stage]]\nid = \"ndvi\"\nplugin = \"indices@0.1.0\"\nper_year = true\nparams = {{ indices = [\"NDVI\"], per_date = false, stats = [\"mean\", \"p10\", \"p90\"] }}\n\n\
         [[stage]]\nid = \"labels\"\nplugin = \"stratified-samples@0.1.0\"\ninput = \"ndvi\"\nyear = 2019\nparams = {{ per_class = 50 }}\n\n\
         [[stage]]\nid = \"landcover\"\nplugin = \"centroids@0.1.0\"\ninput = \"ndvi\"\nsamples = \"labels\"\nyear = 2019\nholdout = 0\n\n\
         [[stage]]\nid = \"consistent\"\nplugin = \"majority@0.1.0\"\ninput = \"landcover\"\n",
        demo.join("series").display().to_string(),
        demo.join("truth/2019.tif").display().to_string(),
        demo.join("classes.csv").display().to_string()
    );
    std::fs::write(dir.join("authors.toml"), pipeline).unwrap();
    sitsflow(dir, &["--quiet", "plugins", "lock", "authors.toml"]);
    let plan = sitsflow(dir, &["validate", "authors.toml"]);
    assert!(plan.contains("plugins       mine, then plugins"), "{plan}");
    sitsflow(dir, &["run", "authors.toml"]);
    for name in ["clouds.tif", "brightness.tif", "ndvi_2019.tif", "landcover_2020.tif", "consistent_2021.tif", "consistent_changes.tif"] {
        assert!(dir.join("runs/authors").join(name).is_file(), "{name}");
    }
    let lock = std::fs::read_to_string(dir.join("authors.lock")).unwrap();
    for plugin in ["blue-clouds@0.1.0", "brightness@0.1.0", "centroids@0.1.0", "majority@0.1.0", "indices@0.1.0", "stratified-samples@0.1.0"] {
        assert!(lock.contains(plugin), "{plugin} not in the lockfile:\n{lock}");
    }

    // A plugin in no folder is named with what each folder holds.
    let missing = std::fs::read_to_string(dir.join("authors.toml")).unwrap().replace("brightness@0.1.0", "brightness@0.2.0");
    std::fs::write(dir.join("missing.toml"), missing).unwrap();
    let out = common::sitsflow_command(dir).args(["validate", "missing.toml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugin 'brightness@0.2.0' is in none of the plugin folders (") && err.contains("brightness@0.1.0"), "{err}");
}
