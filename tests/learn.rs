//! The operator's path with a samples CSV (`sitsflow train --arch random-forest`,
//! `sitsflow eval --model --samples`, grouped k-fold, a pipeline labeller trained on a
//! CSV) on real data: the figures the CLI prints are the figures the plugin gives when
//! called directly on the same rows (tests/forest.rs's level), and bad cells are named.

use crate::common;
use crate::faults::{reference_run, text};

use gdal::Metadata as _;
use serde_json::Value;
use sitsflow::eval::Confusion;
use sitsflow::runtime::data::{FeatureMatrix, Probabilities};
use sitsflow::runtime::{CallContext, Limits, StagePool};
use std::path::Path;
use std::process::Output;

fn sitsflow(args: &[&str], cwd: &Path) -> Output {
    common::sitsflow_command(cwd).args(args).env("SITSFLOW_PLUGIN_DIR", plugin_dir()).output().expect("running sitsflow")
}

/// A folder with the shipped plugins (what `--plugins` / SITSFLOW_PLUGIN_DIR names).
fn plugin_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = common::project_dir();
        let plugins = dir.path().join("plugins");
        (dir, plugins)
    })
    .1
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn argmax(p: &Probabilities) -> Vec<u16> {
    p.data
        .chunks_exact(p.classes.len())
        .map(|row| p.classes[(0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })])
        .collect()
}

/// The plugin called directly: trained on (x, y) with `params`, OA on (tx, ty).
fn direct_oa(params: &Value, seed: u64, (x, y): (&FeatureMatrix, &[u16]), (tx, ty): (&FeatureMatrix, &[u16])) -> f64 {
    let plugin = common::runtime().load(&common::component("random-forest")).unwrap();
    let pool = StagePool::new(plugin, Limits { memory_bytes: 2048 << 20, deadline_ms: 600_000 }).seeded(seed);
    let context = CallContext { stage: "direct".into(), chunk: "test".into() };
    let trained = pool.with(|i| i.train(&context, x, y, &params.to_string())).unwrap();
    let p = pool.with(|i| i.predict(&context, &trained.model, tx, &params.to_string())).unwrap();
    Confusion::from_pairs(ty, &argmax(&p)).metrics().overall_accuracy
}

/// A samples CSV as the plugin sees it: names → codes of classes.csv, features in file order.
fn read(path: &Path, classes: &[sitsflow::learn::Class]) -> (FeatureMatrix, Vec<u16>, Option<Vec<String>>) {
    let s = sitsflow::samples::Samples::read_csv(path).unwrap();
    let (codes, _) = sitsflow::learn::code_labels(&s, path, Some(classes)).unwrap();
    (FeatureMatrix { samples: s.len() as u32, names: s.features.clone(), data: s.data.clone() }, codes, s.groups.clone())
}

#[test]
fn formosat2_train_then_test_and_eval_give_the_plugins_own_figures() {
    let data = common::shared_data().join("formosat2-tempcnn");
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("rf");
    let (train, test, classes) = (data.join("train.csv"), data.join("test.csv"), data.join("classes.csv"));
    let params = r#"{"n_trees": 100, "max_features": "sqrt"}"#;
    let args = [
        "train", "--arch", "random-forest", "--samples", train.to_str().unwrap(), "--test", test.to_str().unwrap(),
        "--classes", classes.to_str().unwrap(), "--params", params, "--seed", "11", "--out", model.to_str().unwrap(),
    ];
    let run = sitsflow(&args, out.path());
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("test: OA "), "{}", text(&run.stdout));
    let metrics = json(&model.join("metrics.json"));
    let sidecar = json(&model.join("model.json"));
    assert_eq!(sidecar["contract"], "sitsflow-labeller-model/1");
    assert_eq!(sidecar["features"].as_array().unwrap().len(), 447);
    assert_eq!(sidecar["params"]["seed"], 11, "the seed reaches the forest");
    let cli_oa = metrics["test"]["overall_accuracy"].as_f64().unwrap();
    assert_eq!(metrics["test"]["confusion"]["counts"].as_array().unwrap().len(), metrics["test"]["classes"].as_array().unwrap().len());
    assert!(metrics["test"]["classes"][0]["f1"].as_f64().is_some() && metrics["test"]["macro_f1"].as_f64().is_some());

    // The plugin on the same rows with the same parameters and seed.
    let named = sitsflow::learn::read_classes(&classes).unwrap();
    let (x, y, _) = read(&train, &named);
    let (tx, ty, _) = read(&test, &named);
    let mut p: Value = serde_json::from_str(params).unwrap();
    p["seed"] = 11.into();
    let direct = direct_oa(&p, 11, (&x, &y), (&tx, &ty));
    assert_eq!(cli_oa, direct, "the CLI's test OA is the plugin's");
    assert!(cli_oa > 0.4, "{cli_oa}");

    // `eval --model`: the stored model on the test samples, the same figure.
    let eval_json = out.path().join("eval.json");
    let run = sitsflow(
        &["eval", "--model", model.join("model.model").to_str().unwrap(), "--samples", test.to_str().unwrap(), "--json", eval_json.to_str().unwrap()],
        out.path(),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(json(&eval_json)["overall_accuracy"].as_f64().unwrap(), cli_oa);

    // Labels as integer codes, named by --classes: the same model.
    let coded = out.path().join("coded.csv");
    let body = std::fs::read_to_string(&train).unwrap();
    let mut lines = body.lines();
    let mut recoded = vec![lines.next().unwrap().to_string()];
    for line in lines {
        let (label, rest) = line.split_once(',').unwrap();
        recoded.push(format!("{},{rest}", named.iter().find(|c| c.name == label).unwrap().code));
    }
    std::fs::write(&coded, recoded.join("\n") + "\n").unwrap();
    let model2 = out.path().join("rf-coded");
    let run = sitsflow(
        &["train", "--arch", "random-forest", "--samples", coded.to_str().unwrap(), "--test", test.to_str().unwrap(), "--classes",
          classes.to_str().unwrap(), "--params", params, "--seed", "11", "--out", model2.to_str().unwrap()],
        out.path(),
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(json(&model2.join("metrics.json"))["test"]["overall_accuracy"].as_f64().unwrap(), cli_oa);
}

/// Slovenia's NDVI series per pixel (NaN under clouds), its LULC code as the label and
/// its 10 × 10 px block as the group: the convention's CSV of a real patch.
fn slovenia_csv(path: &Path) {
    let dir = common::shared_data().join("slovenia-s2-eolearn");
    let read_band = |p: &Path, band: usize| -> Vec<f32> {
        let ds = gdal::Dataset::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let (w, h) = ds.raster_size();
        ds.rasterband(band).unwrap().read_as::<f32>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec()
    };
    let lulc = read_band(&dir.join("lulc.tif"), 1);
    let mut names = Vec::new();
    let mut layers = Vec::new();
    for record in csv::Reader::from_path(dir.join("timestamps.csv")).unwrap().records() {
        let r = record.unwrap();
        let ndvi = read_band(&dir.join(&r[3]), 1);
        let valid = read_band(&dir.join(&r[4]), 3);
        layers.push(ndvi.iter().zip(&valid).map(|(&v, &ok)| if ok == 1.0 { v } else { f32::NAN }).collect::<Vec<f32>>());
        // Two acquisitions share a day: time indices keep the columns apart.
        names.push(format!("NDVI@t{:03}", names.len()));
    }
    let mut out = format!("label,group,{}\n", names.join(","));
    for (p, &code) in lulc.iter().enumerate() {
        if code == 0.0 {
            continue;
        }
        let (row, col) = (p / 100, p % 100);
        let values: Vec<String> = layers.iter().map(|l| if l[p].is_nan() { String::new() } else { l[p].to_string() }).collect();
        out += &format!("{},{}-{},{}\n", code as u16, row / 10, col / 10, values.join(","));
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn slovenia_grouped_five_fold_cross_validation_gives_the_plugins_own_figures() {
    let out = tempfile::tempdir().unwrap();
    let csv_path = out.path().join("slovenia.csv");
    slovenia_csv(&csv_path);
    let classes = common::shared_data().join("slovenia-s2-eolearn/classes.csv");
    let model = out.path().join("rf");
    let params = r#"{"n_trees": 30}"#;
    let base = ["train", "--arch", "random-forest", "--samples", csv_path.to_str().unwrap(), "--classes", classes.to_str().unwrap(),
        "--params", params, "--folds", "5", "--seed", "3", "--out", model.to_str().unwrap()];

    // Cloudy dates are empty cells: refused by default, naming the first one.
    let run = sitsflow(&base, out.path());
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains("slovenia.csv:") && text(&run.stderr).contains("empty cell (NDVI@"), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("pass --missing keep"), "{}", text(&run.stderr));

    let mut args = base.to_vec();
    args.extend(["--missing", "keep"]);
    let run = sitsflow(&args, out.path());
    assert!(run.status.success(), "{}", text(&run.stderr));
    let cv = json(&model.join("metrics.json"))["cross_validation"].clone();
    assert_eq!(cv["rule"], "grouped by the `group` column");
    let per_fold = cv["per_fold"].as_array().unwrap();
    assert_eq!(per_fold.len(), 5);
    assert!(text(&run.stdout).contains("5-fold cross-validation (grouped by the `group` column): OA "), "{}", text(&run.stdout));

    // The same folds, trained and tested by calling the plugin directly.
    let named = sitsflow::learn::read_classes(&classes).unwrap();
    let (x, y, groups) = read(&csv_path, &named);
    let folds = sitsflow::learn::folds(&y, groups.as_deref(), 5, 3).unwrap();
    let groups = groups.unwrap();
    let mut p: Value = serde_json::from_str(params).unwrap();
    p["seed"] = 3.into();
    let f = x.names.len();
    let subset = |k: usize, inside: bool| {
        let rows: Vec<usize> = (0..y.len()).filter(|&i| (folds[i] == k) == inside).collect();
        let data: Vec<f32> = rows.iter().flat_map(|&i| x.data[i * f..(i + 1) * f].iter().copied()).collect();
        (FeatureMatrix { samples: rows.len() as u32, names: x.names.clone(), data }, rows.iter().map(|&i| y[i]).collect::<Vec<u16>>(), rows)
    };
    let mut oas = Vec::new();
    for k in 0..5 {
        let (train, train_y, _) = subset(k, false);
        let (test, test_y, test_rows) = subset(k, true);
        // No group on both sides of a fold.
        let test_groups: std::collections::BTreeSet<&str> = test_rows.iter().map(|&i| groups[i].as_str()).collect();
        assert!((0..y.len()).filter(|&i| folds[i] != k).all(|i| !test_groups.contains(groups[i].as_str())));
        let direct = direct_oa(&p, 3, (&train, &train_y), (&test, &test_y));
        assert_eq!(per_fold[k]["overall_accuracy"].as_f64().unwrap(), direct, "fold {k}");
        assert_eq!(per_fold[k]["samples"].as_u64().unwrap(), test_y.len() as u64);
        oas.push(direct);
    }
    let mean = oas.iter().sum::<f64>() / 5.0;
    eprintln!("slovenia grouped 5-fold: per fold {oas:?}, {}", cv["mean_sd"]);
    assert!((cv["mean_sd"]["overall_accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(mean > 0.5, "{mean}");
}

#[test]
fn samples_csvs_are_checked_cell_by_cell() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("s.csv");
    let train = |body: &str, extra: &[&str]| {
        std::fs::write(&file, body).unwrap();
        let mut args = vec!["train", "--arch", "random-forest", "--samples", file.to_str().unwrap(), "--out", "m"];
        args.extend_from_slice(extra);
        sitsflow(&args, out.path())
    };
    let header = "label,B04@2020-01-01,B08@2020-01-01\n";
    let good = "wheat,0.1,0.3\ncorn,0.2,0.4\nwheat,0.1,0.3\ncorn,0.2,0.4\n";
    for (body, message) in [
        (format!("{header}{good}corn,0.2,nan\n"), "s.csv:6:3: 'nan' (B08@2020-01-01); if missing values are meant, pass --missing keep"),
        (format!("{header}{good}corn,inf,0.4\n"), "s.csv:6:2: 'inf' is infinite (B04@2020-01-01)"),
        (format!("{header}{good}corn,0.2\n"), "s.csv:6: malformed row"),
        (format!("{header}{good}corn,0.2,0.4x\n"), "s.csv:6:3: '0.4x' is not a number (B08@2020-01-01)"),
        (format!("{header}{good}3,0.2,0.4\n"), "labels mix integer codes (line 6: '3') and class names (line 2: 'wheat')"),
        (format!("label,B04@2020-01-01,B04@2020-01-01\n{good}"), "s.csv:1: column 3 'B04@2020-01-01' repeats column 2"),
    ] {
        let run = train(&body, &[]);
        assert_eq!(run.status.code(), Some(1), "{body}");
        assert!(text(&run.stderr).contains(message), "expected {message:?} in {}", text(&run.stderr));
    }
    // A NaN is kept when asked.
    let run = train(&format!("{header}{good}corn,0.2,nan\n"), &["--missing", "keep"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    // Cross-validation needs as many groups as folds.
    let run = train(&format!("label,group,B04@2020-01-01\nwheat,a,0.1\ncorn,b,0.2\nwheat,a,0.1\ncorn,b,0.3\n"), &["--folds", "3"]);
    assert!(text(&run.stderr).contains("--folds 3: the samples have only 2 groups"), "{}", text(&run.stderr));
    // A test file without a feature the model needs: named.
    std::fs::write(out.path().join("t.csv"), "label,B04@2020-01-01\nwheat,0.1\n").unwrap();
    let run = train(&format!("{header}{good}"), &["--test", "t.csv"]);
    assert!(text(&run.stderr).contains("t.csv: 1 of the 2 features the model needs are not columns of it: B08@2020-01-01"), "{}", text(&run.stderr));
}

/// A labeller in a pipeline trained on a CSV (`samples = "train.csv"`): columns matched
/// to its input's features by name; a missing column stops the run naming it.
#[test]
fn a_pipeline_labeller_trains_on_a_samples_csv() {
    let (_keep, reference) = reference_run();
    let features = reference.join("features_2018.tif");
    let truth = common::small_demo().join("truth/2018.tif");
    let ds = gdal::Dataset::open(&features).unwrap();
    let (w, h) = ds.raster_size();
    let names: Vec<String> = (1..=ds.raster_count()).map(|b| ds.rasterband(b).unwrap().description().unwrap()).collect();
    let bands: Vec<Vec<f32>> =
        (1..=ds.raster_count()).map(|b| ds.rasterband(b).unwrap().read_as::<f32>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec()).collect();
    let labels: Vec<u16> = {
        let t = gdal::Dataset::open(&truth).unwrap();
        t.rasterband(1).unwrap().read_as::<u16>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec()
    };
    let dir = common::project_dir();
    let mut csv = format!("label,group,{}\n", names.join(","));
    for p in (0..w * h).step_by(5) {
        if labels[p] == 0 {
            continue;
        }
        let values: Vec<String> = bands.iter().map(|b| b[p].to_string()).collect();
        csv += &format!("{},{},{}\n", labels[p], (p / w) / 8 * 8 + (p % w) / 8, values.join(","));
    }
    std::fs::write(dir.path().join("train.csv"), &csv).unwrap();
    let first_feature = names[0].clone();
    std::fs::write(dir.path().join("short.csv"), csv.replacen(&format!(",{first_feature},"), ",renamed,", 1)).unwrap();
    let pipeline = |samples: &str| {
        format!(
            "schema = 1\nname = \"csv\"\n[input]\nseries = {:?}\n[output]\ndir = \"runs/csv\"\n[plugins]\ndir = \"plugins\"\n\
             [[stage]]\nid = \"clouds\"\nplugin = \"scl-mask@0.1.0\"\n\
             [[stage]]\nid = \"features\"\nplugin = \"indices@0.1.0\"\nper_year = true\n\
             params = {{ indices = [\"NDVI\", \"NDWI\", \"NDBI\", \"BSI\", \"EVI\"], per_date = false, stats = [\"mean\", \"std\", \"p10\", \"p50\", \"p90\"] }}\n\
             [[stage]]\nid = \"landcover\"\nplugin = \"random-forest@0.1.0\"\ninput = \"features\"\nsamples = {samples:?}\nholdout = 0.25\n\
             params = {{ n_trees = 30, seed = 1 }}\n",
            common::small_demo().join("series")
        )
    };
    std::fs::write(dir.path().join("pipeline.toml"), pipeline("train.csv")).unwrap();
    let run = sitsflow(&["--quiet", "plugins", "lock", "pipeline.toml"], dir.path());
    assert!(run.status.success(), "{}", text(&run.stderr));
    let run = sitsflow(&["--quiet", "run", "pipeline.toml"], dir.path());
    assert!(run.status.success(), "{}", text(&run.stderr));
    let metrics = json(&dir.path().join("runs/csv/landcover.metrics.json"));
    assert!(metrics.to_string().contains("train.csv"), "the split names the CSV: {metrics}");
    let oa = metrics["held_out"]["metrics"]["overall_accuracy"].as_f64().unwrap();
    assert!(oa > 0.8, "held-out OA {oa}");
    assert!(dir.path().join("runs/csv/landcover_2020.tif").is_file(), "every year is mapped");

    // A column the features raster has and the CSV lacks: the run stops, naming both.
    std::fs::write(dir.path().join("pipeline.toml"), pipeline("short.csv")).unwrap();
    let run = sitsflow(&["--quiet", "run", "pipeline.toml", "--output", "runs/short"], dir.path());
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(err.contains("stage 'landcover': training on") && err.contains(&format!("not columns of it: {first_feature}")), "{err}");
    // A CSV that is not there: a config error at the line of `samples`.
    std::fs::write(dir.path().join("pipeline.toml"), pipeline("gone.csv")).unwrap();
    let run = sitsflow(&["--quiet", "validate", "pipeline.toml"], dir.path());
    assert_eq!(run.status.code(), Some(3));
    assert!(text(&run.stderr).contains("pipeline.toml:21:11: samples file") && text(&run.stderr).contains("samples file"), "{}", text(&run.stderr));
}
