//! References as operators have them (#32 item 3): the Slovenia patch's land-cover
//! polygons (a GeoPackage, as eo-learn ships them) rasterised onto the scene's grid by
//! GDAL, window by window, equal to `gdal_rasterize` and in any CRS; their features are
//! the parcels a polygon split holds out; points made from them with `ogr2ogr` are a
//! truth to evaluate against.

use crate::common;
use serde_json::Value;
use sitsflow::raster::{ReferenceMap, VectorSpec, Window, chunk_grid, grid_of};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn polygons() -> PathBuf {
    let path = common::shared_data().join("slovenia-lulc-2p5m/LULC.gpkg");
    assert!(path.is_file(), "missing test data: {} (the shared data set)", path.display());
    path
}

/// The Slovenia series' grid (100 × 101 px, EPSG:32633), from its 10 m land-cover raster.
fn slovenia_grid_file() -> PathBuf {
    let path = common::shared_data().join("slovenia-s2-eolearn/lulc.tif");
    assert!(path.is_file(), "missing test data: {} (the shared data set)", path.display());
    path
}

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_u16(path: &Path) -> Vec<u16> {
    gdal::Dataset::open(path).unwrap().rasterband(1).unwrap().read_band_as::<u16>().unwrap().data().to_vec()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Reads the whole grid through `map` in windows of `side` px.
fn read_windows(map: &ReferenceMap, width: usize, height: usize, side: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut classes, mut ids) = (vec![0u32; width * height], vec![0u32; width * height]);
    for w in chunk_grid(width, height, side) {
        let (c, i) = map.read_raw_with_ids(w).unwrap();
        let i = i.expect("vectors give feature ids");
        for r in 0..w.rows {
            for col in 0..w.cols {
                classes[(w.row + r) * width + w.col + col] = c[r * w.cols + col];
                ids[(w.row + r) * width + w.col + col] = i[r * w.cols + col];
            }
        }
    }
    (classes, ids)
}

#[test]
fn polygons_are_rasterised_window_by_window_as_gdal_rasterize_does_and_in_any_crs() {
    let (gpkg, grid_file) = (polygons(), slovenia_grid_file());
    let grid = grid_of(&grid_file).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // gdal_rasterize on the whole grid: the oracle.
    let info = gdal::Dataset::open(&grid_file).unwrap();
    let gt = info.geo_transform().unwrap();
    let (w, h) = (grid.width, grid.height);
    let te = [gt[0], gt[3] + gt[5] * h as f64, gt[0] + gt[1] * w as f64, gt[3]].map(|v| format!("{v:.9}"));
    let oracle = dir.path().join("oracle.tif");
    let (ws, hs) = (w.to_string(), h.to_string());
    let mut args = vec!["-q", "-a", "LULC_ID", "-l", "LULC", "-ot", "UInt16", "-init", "0", "-ts", &ws, &hs, "-te"];
    args.extend(te.iter().map(String::as_str));
    let (gpkg_s, oracle_s) = (gpkg.display().to_string(), oracle.display().to_string());
    args.extend([gpkg_s.as_str(), oracle_s.as_str()]);
    tool("gdal_rasterize", &args);
    let want: Vec<u32> = read_u16(&oracle).into_iter().map(u32::from).collect();

    let spec = VectorSpec { layer: Some("LULC".into()), class_field: "LULC_ID".into() };
    let (map, summary) = ReferenceMap::open_vector(&gpkg, &spec, &[], &grid).unwrap();
    assert_eq!(summary.features.get("polygon"), Some(&88), "{summary:?}");
    // Windows of 16, 37 and the whole grid: every pixel as gdal_rasterize burns it.
    for side in [16, 37, 128] {
        let (classes, ids) = read_windows(&map, w, h, side);
        assert_eq!(classes, want, "windows of {side} px differ from gdal_rasterize");
        // Each pixel's id names a feature of that class.
        let ds = gdal::Dataset::open(&gpkg).unwrap();
        let mut layer = ds.layer_by_name("LULC").unwrap();
        use gdal::vector::LayerAccess;
        let class_of: HashMap<u32, u32> = layer
            .features()
            .map(|f| (f.fid().unwrap() as u32, f.field_as_integer64(f.field_index("LULC_ID").unwrap()).unwrap().unwrap() as u32))
            .collect();
        for (p, (&id, &class)) in ids.iter().zip(&classes).enumerate() {
            if id == sitsflow::raster::NO_FEATURE {
                assert_eq!(class, 0, "pixel {p}: no feature but class {class}");
            } else {
                assert_eq!(class_of[&id], class, "pixel {p}: feature {id}");
            }
        }
    }

    // The same polygons in geographic coordinates are reprojected onto the grid: only
    // pixels whose centre lies within centimetres of an edge may change.
    let geographic = dir.path().join("lulc-4326.gpkg");
    tool("ogr2ogr", &["-t_srs", "EPSG:4326", geographic.to_str().unwrap(), gpkg.to_str().unwrap(), "LULC"]);
    let (map, _) = ReferenceMap::open_vector(&geographic, &spec, &[], &grid).unwrap();
    let (classes, _) = read_windows(&map, w, h, 50);
    let differ = classes.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(differ <= want.len() / 500, "{differ} of {} px differ after a round trip through EPSG:4326", want.len());

    // Class names resolve through the nomenclature; a name it lacks is named, with the
    // classes it has (the source spells "schrubland").
    let names = [("cultivated land", 1), ("forest", 2), ("grassland", 3), ("shrubland", 4), ("artificial surface", 8)].map(|(n, c)| (n.to_string(), c));
    let by_name = VectorSpec { layer: None, class_field: "LULC_NAME".into() };
    let err = format!("{:#}", ReferenceMap::open_vector(&gpkg, &by_name, &names, &grid).err().expect("a misspelt class name"));
    assert!(err.contains("field 'LULC_NAME': 1 name is not in the nomenclature: \"schrubland\" (") && err.contains("its classes: cultivated land, forest"), "{err}");
    let missing = VectorSpec { layer: None, class_field: "CLASS".into() };
    let err = format!("{:#}", ReferenceMap::open_vector(&gpkg, &missing, &[], &grid).err().unwrap());
    assert!(err.contains("layer 'LULC': no field 'CLASS' (its fields: index, RABA_ID, AREA, DATE, LULC_ID, LULC_NAME)"), "{err}");
    let err = format!("{:#}", ReferenceMap::open(&gpkg, &grid).err().unwrap());
    assert!(err.contains("holds vectors, not a raster: name the attribute with their classes (`class_field"), "{err}");
}

#[test]
fn a_run_holds_out_whole_parcels_of_a_vector_reference_and_is_judged_on_points() {
    let gpkg = polygons();
    let shared = common::shared_data().canonicalize().unwrap();
    let project = common::project_dir();
    // Survey points, as an operator might have them: one inside each labelled polygon.
    let points = project.path().join("points.geojson");
    tool(
        "ogr2ogr",
        &[
            "-dialect",
            "sqlite",
            "-sql",
            "SELECT ST_PointOnSurface(geom) AS geom, LULC_ID AS class FROM LULC WHERE LULC_ID > 0",
            points.to_str().unwrap(),
            gpkg.to_str().unwrap(),
        ],
    );
    let pipeline = format!(
        r#"schema = 1
name = "parcels"

[input]
series = "{shared}/slovenia-s2-eolearn/series"

[reference]
path = "{gpkg}"
layer = "LULC"
class_field = "LULC_ID"
classes = "{shared}/slovenia-s2-eolearn/classes.csv"

[output]
dir = "runs/parcels"

[run]
seed = 3

[plugins]
dir = "plugins"

[[stage]]
id = "features"
plugin = "indices@0.1.0"
params = {{ indices = ["NDVI"], per_date = false, stats = ["mean", "std", "p10", "p50", "p90"] }}

[[stage]]
id = "labels"
plugin = "stratified-samples@0.1.0"
input = "features"
params = {{ per_class = 100000 }}

[[stage]]
id = "landcover"
plugin = "random-forest@0.1.0"
input = "features"
samples = "labels"
holdout = 0.34
holdout_by = "polygons"
params = {{ n_trees = 50, seed = 3 }}

[[evaluate]]
output = "landcover"
truth = "points.geojson"
class_field = "class"
"#,
        shared = shared.display(),
        gpkg = gpkg.display()
    );
    std::fs::write(project.path().join("parcels.toml"), pipeline).unwrap();
    let mut log = String::new();
    for args in [&["--quiet", "plugins", "lock", "parcels.toml"][..], &["validate", "parcels.toml"][..], &["run", "parcels.toml"][..]] {
        let out = common::sitsflow_command(project.path()).args(args).output().unwrap();
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "sitsflow {args:?} failed:\n{log}");
    }
    assert!(log.contains("reference: 88 polygons in layer 'LULC'"), "validate says what the layer holds:\n{log}");
    let run = project.path().join("runs/parcels");
    assert!(run.join("reference_ids.tif").is_file());

    // The samples' groups are the features' FIDs, and the split holds out whole features.
    let csv = std::fs::read_to_string(run.join("labels.csv")).unwrap();
    let ids_raster = gdal::Dataset::open(run.join("reference_ids.tif")).unwrap().rasterband(1).unwrap().read_band_as::<u32>().unwrap().data().to_vec();
    let mut groups: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (pixel, group): (usize, u32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!(ids_raster[pixel], group, "pixel {pixel}: the group is its feature");
        groups.entry(group).or_default().insert(f[0].to_string());
    }
    assert!(groups.values().all(|labels| labels.len() == 1), "a feature has one class");
    let metrics = json(&run.join("landcover.metrics.json"));
    let split = &metrics["split"];
    assert!(split["rule"].as_str().unwrap().contains("the features of the vector reference, one per parcel"), "{split}");
    assert_eq!(split["groups"].as_u64().unwrap() as usize, groups.len());

    // Judged on the points: one sample per pixel that holds a point (some polygons reach
    // beyond the patch, and a pixel holding two points is the later one's).
    let report = json(&run.join("report.json"));
    let evaluation = &report["evaluations"][0]["evaluation"];
    let gt = gdal::Dataset::open(slovenia_grid_file()).unwrap().geo_transform().unwrap();
    let pixels: BTreeSet<(i64, i64)> = json(&points)["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let xy = &f["geometry"]["coordinates"];
            (((xy[1].as_f64().unwrap() - gt[3]) / gt[5]).floor() as i64, ((xy[0].as_f64().unwrap() - gt[0]) / gt[1]).floor() as i64)
        })
        .filter(|&(r, c)| (0..101).contains(&r) && (0..100).contains(&c))
        .collect();
    let points_made = pixels.len() as u64;
    assert_eq!(evaluation["metrics"]["samples"].as_u64(), Some(points_made), "{evaluation}");
    let oa = evaluation["metrics"]["overall_accuracy"].as_f64().unwrap();
    eprintln!("held out parcels: OA {:.4}; points: OA {oa:.4} on {points_made}", metrics["held_out"]["metrics"]["overall_accuracy"]);
    assert!(oa > 0.6, "OA on the points {oa}");
}

/// The operator's path on vector labels: `extract` the samples at the parcels' pixels
/// (the values a run computes there, bit for bit), `train` a forest on them with folds
/// grouped by parcel, and `run` the pipeline with the stored model; at points, only the
/// chunks holding one are computed.
#[test]
fn extract_then_train_then_run_on_parcels_and_points() {
    let gpkg = polygons();
    let shared = common::shared_data().canonicalize().unwrap();
    let project = common::project_dir();
    let dir = project.path();
    let sitsflow = |args: &[&str]| {
        let out = common::sitsflow_command(dir).args(args).env("SITSFLOW_PLUGIN_DIR", dir.join("plugins")).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "sitsflow {args:?} failed:\n{text}");
        text
    };
    let pipeline = |reference: &str, run: &str, labeller: &str| {
        format!(
            r#"schema = 1
name = "parcels"

[input]
series = "{shared}/slovenia-s2-eolearn/series"

[reference]
{reference}
classes = "{shared}/slovenia-s2-eolearn/classes.csv"

[output]
dir = "runs/{run}"

[run]
chunk_size = 32

[plugins]
dir = "plugins"

[[stage]]
id = "clouds"
plugin = "s2cloudless@0.1.0"
params = {{ probability_band = "CLP_S2C", threshold = 0.4, average_over = 4, dilation_size = 2 }}

[[stage]]
id = "features"
plugin = "indices@0.1.0"
params = {{ indices = ["NDVI"], per_date = false, stats = ["mean", "std", "p10", "p50", "p90"] }}
{labeller}"#,
            shared = shared.display()
        )
    };
    let parcels = format!("path = \"{}\"\nclass_field = \"LULC_ID\"", gpkg.display());
    std::fs::write(dir.join("extract.toml"), pipeline(&parcels, "features", "")).unwrap();
    sitsflow(&["--quiet", "plugins", "lock", "extract.toml"]);
    let log = sitsflow(&["extract", "extract.toml", "--out", "samples/parcels.csv"]);
    assert!(log.contains("(16 of 16 chunks computed)"), "{log}");
    // The same pipeline run: its features and feature ids at every labelled pixel.
    sitsflow(&["run", "extract.toml"]);
    let run = dir.join("runs/features");
    let features = sitsflow::raster::FeatureRaster::open(&run.join("features.tif")).unwrap();
    let whole = Window { row: 0, col: 0, rows: 101, cols: 100 };
    let values = features.read(whole).unwrap();
    let ids = gdal::Dataset::open(run.join("reference_ids.tif")).unwrap().rasterband(1).unwrap().read_band_as::<u32>().unwrap().data().to_vec();
    let reference = read_u16(&run.join("reference.tif"));

    let samples = sitsflow::samples::Samples::read_csv(&dir.join("samples/parcels.csv")).unwrap();
    assert_eq!(samples.features, features.names);
    assert_eq!(samples.len(), reference.iter().filter(|c| **c != 0).count(), "one sample per labelled pixel");
    let csv = std::fs::read_to_string(dir.join("samples/parcels.csv")).unwrap();
    assert!(csv.starts_with("label,id,group,lon,lat,NDVI:mean,"), "{}", &csv[..80]);
    let f = features.names.len();
    for (k, line) in csv.lines().skip(1).enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let (pixel, group): (usize, u32) = (cells[1].parse().unwrap(), cells[2].parse().unwrap());
        assert_eq!(group, ids[pixel], "pixel {pixel}: its group is its feature");
        let (lon, lat): (f64, f64) = (cells[3].parse().unwrap(), cells[4].parse().unwrap());
        assert!((14.5..14.6).contains(&lon) && (45.8..45.9).contains(&lat), "pixel {pixel} at {lon}, {lat}");
        for j in 0..f {
            let (ours, run) = (samples.data[k * f + j], values[pixel * f + j]);
            assert!(ours.to_bits() == run.to_bits() || ours == run, "pixel {pixel}, {}: extract {ours}, run {run}", features.names[j]);
        }
    }

    // train, grouped by parcel, then run with the stored model.
    let classes = format!("{}/slovenia-s2-eolearn/classes.csv", shared.display());
    let log = sitsflow(&[
        "train", "--arch", "random-forest", "--samples", "samples/parcels.csv", "--classes", &classes, "--params", r#"{"n_trees": 30, "seed": 3}"#, "--folds", "3",
        "--seed", "3", "--out", "model",
    ]);
    assert!(log.contains("3-fold cross-validation (grouped by the `group` column)"), "{log}");
    let labeller = "\n[[stage]]\nid = \"landcover\"\nplugin = \"random-forest@0.1.0\"\ninput = \"features\"\nmodel = \"model/model.model\"\n";
    std::fs::write(dir.join("map.toml"), pipeline(&parcels, "map", labeller)).unwrap();
    sitsflow(&["--quiet", "plugins", "lock", "map.toml"]);
    sitsflow(&["run", "map.toml"]);
    assert!(dir.join("runs/map/landcover.tif").is_file());

    // Points (one per labelled polygon): only the chunks that hold one are computed.
    let points = dir.join("points.gpkg");
    tool("ogr2ogr", &["-dialect", "sqlite", "-sql", "SELECT ST_PointOnSurface(geom) AS geom, LULC_ID AS class FROM LULC WHERE LULC_ID > 0", points.to_str().unwrap(), gpkg.to_str().unwrap()]);
    let at_points = format!("path = \"{}\"\nclass_field = \"class\"", points.display());
    std::fs::write(dir.join("points.toml"), pipeline(&at_points, "points", "")).unwrap();
    sitsflow(&["--quiet", "plugins", "lock", "points.toml"]);
    let log = sitsflow(&["extract", "points.toml", "--out", "samples/points.csv"]);
    let samples = sitsflow::samples::Samples::read_csv(&dir.join("samples/points.csv")).unwrap();
    let chunks: BTreeSet<usize> = std::fs::read_to_string(dir.join("samples/points.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<usize>().unwrap())
        .map(|p| (p / 100 / 32) * 4 + (p % 100) / 32)
        .collect();
    assert!(log.contains(&format!("({} of 16 chunks computed)", chunks.len())), "{log}");
    assert!(samples.len() > 50 && chunks.len() < 16, "{} points in {} chunks", samples.len(), chunks.len());
}
