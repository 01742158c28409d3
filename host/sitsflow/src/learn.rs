//! A labeller plugin trained and assessed on samples CSVs, outside a pipeline: the
//! operator's path (`sitsflow train --arch random-forest --samples train.csv [--test
//! test.csv | --folds 5]`, `sitsflow eval --model M --samples test.csv`).
//!
//! The plugin runs in the sandbox as in a run (its parameters checked against its
//! schema, its random source seeded), so a model trained here is the model a pipeline
//! trains from the same rows: `model.model` with its `model.json` sidecar in the shape a
//! run writes (`models/<stage>.model`), which a pipeline's `model = "…"` reuses.
//! Labels are class names or integer codes (`--classes code,name` maps between them);
//! features are matched by column name, never by position.

use crate::eval::Confusion;
use crate::runtime::data::{FeatureMatrix, ModelBlob, Probabilities};
use crate::runtime::data::StageKind;
use crate::runtime::{CallContext, Limits, Plugin, Runtime, StagePool};
use crate::samples::Samples;
use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sidecar's contract.
pub const CONTRACT: &str = "sitsflow-labeller-model/1";

/// A class: its code (what maps hold, ≥ 1) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// The class code, as maps hold it (≥ 1).
    pub code: u16,
    /// The class name.
    pub name: String,
}

/// Reads a classes CSV (`code,name[,color]`): errors name the file and line.
pub fn read_classes(path: &Path) -> Result<Vec<Class>> {
    let shown = path.display();
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).with_context(|| format!("{shown}: cannot open"))?;
    let header = reader.headers().with_context(|| format!("{shown}: cannot read the header"))?.clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(code_col), Some(name_col)) = (col("code"), col("name")) else {
        bail!("{shown}:1: expected the columns code,name[,color]; found {}", header.iter().collect::<Vec<_>>().join(","));
    };
    let mut classes: Vec<Class> = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let record = record.with_context(|| format!("{shown}:{line}: malformed row"))?;
        let code: u16 = record
            .get(code_col)
            .unwrap_or("")
            .parse()
            .map_err(|_| anyhow!("{shown}:{line}:{}: code '{}' is not an integer 0…65535", code_col + 1, record.get(code_col).unwrap_or("")))?;
        let name = record.get(name_col).unwrap_or("").to_string();
        if name.is_empty() {
            bail!("{shown}:{line}:{}: empty class name", name_col + 1);
        }
        if classes.iter().any(|c| c.code == code || c.name == name) {
            bail!("{shown}:{line}: class {code} '{name}' repeats a code or a name of an earlier line");
        }
        classes.push(Class { code, name });
    }
    if classes.is_empty() {
        bail!("{shown}: no classes");
    }
    Ok(classes)
}

/// Codes the samples' labels: names or integer codes, translated by `classes` when
/// given. Without `classes`, integer labels are their own codes (named by themselves)
/// and names are numbered 1…C in sorted order. Code 0 means "no data" and is refused.
/// Returns the code per sample and the classes present, by code.
pub fn code_labels(samples: &Samples, source: &Path, classes: Option<&[Class]>) -> Result<(Vec<u16>, Vec<Class>)> {
    let shown = source.display();
    let row_of = |i: usize| i + 2;
    let mut codes = Vec::with_capacity(samples.len());
    match classes {
        Some(classes) => {
            for (i, label) in samples.labels.iter().enumerate() {
                let class = match label.parse::<u16>() {
                    Ok(code) => classes.iter().find(|c| c.code == code).ok_or_else(|| {
                        anyhow!("{shown}:{}: label code {code} is not in the classes file", row_of(i))
                    })?,
                    Err(_) => classes.iter().find(|c| &c.name == label).ok_or_else(|| {
                        anyhow!(
                            "{shown}:{}: class '{label}' is not in the classes file ({})",
                            row_of(i),
                            classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    })?,
                };
                if class.code == 0 {
                    bail!("{shown}:{}: class '{}' has code 0, which means no data in a map", row_of(i), class.name);
                }
                codes.push(class.code);
            }
            let present: BTreeSet<u16> = codes.iter().copied().collect();
            Ok((codes, classes.iter().filter(|c| present.contains(&c.code)).cloned().collect()))
        }
        None => {
            let numeric: Vec<Option<u16>> = samples.labels.iter().map(|l| l.parse::<u16>().ok()).collect();
            if numeric.iter().all(Option::is_some) {
                for (i, code) in numeric.iter().enumerate() {
                    let code = code.expect("all numeric");
                    if code == 0 {
                        bail!("{shown}:{}: label 0 means no data in a map; give classes codes from 1", row_of(i));
                    }
                    codes.push(code);
                }
                let present: BTreeSet<u16> = codes.iter().copied().collect();
                Ok((codes, present.into_iter().map(|code| Class { code, name: code.to_string() }).collect()))
            } else if let Some(i) = numeric.iter().position(Option::is_some) {
                let first_name = numeric.iter().position(Option::is_none).expect("some name");
                bail!(
                    "{shown}: labels mix integer codes (line {}: '{}') and class names (line {}: '{}'); give --classes to map one onto the other",
                    row_of(i),
                    samples.labels[i],
                    row_of(first_name),
                    samples.labels[first_name]
                );
            } else {
                let names: BTreeSet<&str> = samples.labels.iter().map(String::as_str).collect();
                let classes: Vec<Class> =
                    names.iter().enumerate().map(|(i, n)| Class { code: i as u16 + 1, name: n.to_string() }).collect();
                for label in &samples.labels {
                    codes.push(classes.iter().find(|c| &c.name == label).expect("named").code);
                }
                Ok((codes, classes))
            }
        }
    }
}

/// Codes labels with the classes a model was trained on (names or codes), for eval.
pub fn code_with(samples: &Samples, source: &Path, classes: &[Class]) -> Result<Vec<u16>> {
    let shown = source.display();
    samples
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let class = match label.parse::<u16>() {
                Ok(code) => classes.iter().find(|c| c.code == code),
                Err(_) => classes.iter().find(|c| &c.name == label),
            };
            class.map(|c| c.code).ok_or_else(|| {
                anyhow!(
                    "{shown}:{}: class '{label}' is not one the model was trained on ({})",
                    i + 2,
                    classes.iter().map(|c| format!("{} {}", c.code, c.name)).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

/// The samples' features in the order `names` asks, matched by column name; the
/// missing ones are an error naming them.
pub fn matrix_for(samples: &Samples, source: &Path, names: &[String]) -> Result<FeatureMatrix> {
    let index: BTreeMap<&str, usize> = samples.features.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
    let missing: Vec<&str> = names.iter().filter(|n| !index.contains_key(n.as_str())).map(String::as_str).collect();
    if !missing.is_empty() {
        bail!(
            "{}: {} of the {} features the model needs are not columns of it: {}{}",
            source.display(),
            missing.len(),
            names.len(),
            missing.iter().take(8).copied().collect::<Vec<_>>().join(", "),
            if missing.len() > 8 { ", …" } else { "" }
        );
    }
    let columns: Vec<usize> = names.iter().map(|n| index[n.as_str()]).collect();
    let f = samples.features.len();
    let mut data = Vec::with_capacity(samples.len() * names.len());
    for row in 0..samples.len() {
        data.extend(columns.iter().map(|&c| samples.data[row * f + c]));
    }
    Ok(FeatureMatrix { samples: samples.len() as u32, names: names.to_vec(), data })
}

/// A labeller plugin by `name`, `name@version` (the newest installed version of the
/// name when no version is given) or a `.wasm` path.
pub fn find_labeller(runtime: &Arc<Runtime>, dir: &Path, arch: &str) -> Result<Arc<Plugin>> {
    let path = if arch.ends_with(".wasm") || Path::new(arch).is_file() {
        PathBuf::from(arch)
    } else if arch.contains('@') {
        let reference = crate::config::PluginRef::try_from(arch.to_string()).map_err(anyhow::Error::msg)?;
        crate::plugins::PluginDir::new(dir).find(&reference)?
    } else {
        let installed = crate::plugins::PluginDir::new(dir).installed()?;
        let mut versions: Vec<(Vec<u64>, PathBuf)> = installed
            .into_iter()
            .filter_map(|(reference, path)| {
                let (name, version) = reference.split_once('@')?;
                (name == arch).then(|| (version.split('.').map(|p| p.parse().unwrap_or(0)).collect(), path))
            })
            .collect();
        versions.sort();
        match versions.pop() {
            Some((_, path)) => path,
            None => bail!(
                "--arch {arch}: not a recipe ({}) nor a plugin installed in {} (`sitsflow plugins list --dir {}`)",
                sitsflow_core::recipes::RECIPES.iter().filter(|r| r.standalone).map(|r| r.name).collect::<Vec<_>>().join(", "),
                dir.display(),
                dir.display()
            ),
        }
    };
    let plugin = runtime.load(&path)?;
    if plugin.info().kind != StageKind::Labeller {
        bail!("{}: a {} plugin, not a labeller", plugin.info().reference(), plugin.info().kind_name());
    }
    Ok(plugin)
}

/// A labeller in the sandbox with its checked parameters and seed.
pub struct Labeller {
    pool: StagePool,
    plugin: Arc<Plugin>,
    params: Value,
}

impl Labeller {
    /// Checks `params` against the plugin's schema (`seed` set from `seed` unless given).
    pub fn new(plugin: Arc<Plugin>, mut params: Value, seed: u64, memory_mib: usize) -> Result<Labeller> {
        if !params.is_object() {
            bail!("--params must be a JSON object, e.g. '{{\"n_trees\": 100}}'");
        }
        let declares_seed = plugin.info().params_schema["properties"].get("seed").is_some();
        if declares_seed && params.get("seed").is_none() {
            params["seed"] = json!(seed);
        }
        if let Err(errors) = plugin.check_params(&params) {
            let shown: Vec<String> = errors.iter().map(|(at, why)| format!("{}: {why}", if at.is_empty() { "/" } else { at })).collect();
            bail!("--params for {}: {}", plugin.info().reference(), shown.join("; "));
        }
        let pool = StagePool::new(plugin.clone(), Limits { memory_bytes: memory_mib << 20, deadline_ms: 24 * 3_600_000 }).seeded(seed);
        Ok(Labeller { pool, plugin, params })
    }

    fn context(&self, what: &str) -> CallContext {
        CallContext { stage: self.plugin.info().name.clone(), chunk: what.into() }
    }

    /// Trains on `x` with `codes`: the model and the plugin's report.
    pub fn train(&self, x: &FeatureMatrix, codes: &[u16], what: &str) -> Result<(ModelBlob, Value)> {
        let trained = self
            .pool
            .with(|i| i.train(&self.context(what), x, codes, &self.params.to_string()))
            .map_err(|e| anyhow!("{} training on {} samples ({what}): {e}", self.plugin.info().reference(), x.samples))?;
        Ok((trained.model, serde_json::from_str(&trained.report).unwrap_or(Value::String(trained.report))))
    }

    /// The most probable class of each row.
    pub fn predict(&self, model: &ModelBlob, x: &FeatureMatrix, what: &str) -> Result<Vec<u16>> {
        let p = self
            .pool
            .with(|i| i.predict(&self.context(what), model, x, &self.params.to_string()))
            .map_err(|e| anyhow!("{} predicting {what}: {e}", self.plugin.info().reference()))?;
        Ok(argmax(&p).0)
    }
}

/// The most probable class of each row and its probability (0 where every probability is
/// NaN); shared with the pipeline's labeller nodes.
pub(crate) fn argmax(p: &Probabilities) -> (Vec<u16>, Vec<f32>) {
    let k = p.classes.len();
    let mut labels = Vec::with_capacity(p.samples as usize);
    let mut best = Vec::with_capacity(p.samples as usize);
    for row in p.data.chunks_exact(k.max(1)) {
        let (j, v) = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc });
        labels.push(if v.is_finite() { p.classes[j] } else { 0 });
        best.push(v);
    }
    (labels, best)
}

/// The rows of a matrix (and their labels) where `keep` is true.
pub(crate) fn rows_where(m: &FeatureMatrix, labels: &[u16], keep: impl Fn(usize) -> bool) -> (FeatureMatrix, Vec<u16>) {
    let f = m.names.len();
    let mut out = FeatureMatrix { samples: 0, names: m.names.clone(), data: Vec::new() };
    let mut out_labels = Vec::new();
    for i in 0..m.samples as usize {
        if keep(i) {
            out.data.extend_from_slice(&m.data[i * f..(i + 1) * f]);
            out_labels.push(labels[i]);
            out.samples += 1;
        }
    }
    (out, out_labels)
}

/// Which fold (0…k−1) each sample is tested in: whole groups when `groups` is given
/// (the largest first, each to the fold with the fewest samples so far, ties broken by
/// a seeded shuffle), else stratified (each class's samples shuffled, then dealt out in
/// turn). Errors when there are fewer groups than folds.
pub fn folds(codes: &[u16], groups: Option<&[String]>, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        bail!("--folds {k}: cross-validation needs at least 2 folds");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0usize; codes.len()];
    match groups {
        Some(groups) => {
            let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, g) in groups.iter().enumerate() {
                members.entry(g.as_str()).or_default().push(i);
            }
            if members.len() < k {
                bail!("--folds {k}: the samples have only {} groups (the `group` column); give fewer folds", members.len());
            }
            let mut order: Vec<Vec<usize>> = members.into_values().collect();
            order.shuffle(&mut rng);
            // Stable: equal sizes keep the shuffled order.
            order.sort_by_key(|m| std::cmp::Reverse(m.len()));
            let mut sizes = vec![0usize; k];
            for m in order {
                let f = (0..k).min_by_key(|&f| (sizes[f], f)).expect("k ≥ 2");
                sizes[f] += m.len();
                for i in m {
                    fold[i] = f;
                }
            }
        }
        None => {
            let mut by_class: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for (i, &c) in codes.iter().enumerate() {
                by_class.entry(c).or_default().push(i);
            }
            let mut next = 0;
            for (_, mut members) in by_class {
                members.shuffle(&mut rng);
                for i in members {
                    fold[i] = next % k;
                    next += 1;
                }
            }
        }
    }
    Ok(fold)
}

/// Metrics of `predicted` against `reference` as JSON: OA, kappa, macro F1, per class
/// precision / recall / F1 with names, and the confusion matrix (rows: reference).
pub fn metrics_json(reference: &[u16], predicted: &[u16], classes: &[Class], evaluated_on: &str) -> Value {
    let confusion = Confusion::from_pairs(reference, predicted);
    let m = confusion.metrics();
    let name = |code: u16| classes.iter().find(|c| c.code == code).map_or_else(|| code.to_string(), |c| c.name.clone());
    json!({
        "evaluated_on": evaluated_on,
        "samples": m.samples,
        "overall_accuracy": m.overall_accuracy,
        "kappa": m.kappa,
        "macro_f1": m.macro_f1,
        "classes": m.classes.iter().map(|c| json!({
            "code": c.class, "name": name(c.class), "support": c.support,
            "precision": c.users_accuracy, "recall": c.producers_accuracy, "f1": c.f1,
        })).collect::<Vec<_>>(),
        "confusion": { "classes": confusion.classes, "counts": confusion.counts },
    })
}

/// Mean and sample standard deviation of `key` over `folds`' metrics.
fn mean_sd(folds: &[Value], key: &str) -> Value {
    let v: Vec<f64> = folds.iter().filter_map(|f| f[key].as_f64()).collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    json!({ "mean": mean, "sd": sd })
}

/// What `sitsflow train --arch <plugin>` was asked.
pub struct TrainRequest<'a> {
    /// The training samples CSV.
    pub samples: &'a Path,
    /// A test samples CSV to assess the model on.
    pub test: Option<&'a Path>,
    /// A classes CSV mapping codes to names.
    pub classes: Option<&'a Path>,
    /// The number of folds to cross-validate with.
    pub folds: Option<usize>,
    /// The plugin's parameters, a JSON object checked against its schema.
    pub params: Value,
    /// Seed of the folds and of the plugin's random source.
    pub seed: u64,
    /// What a missing value in a samples CSV is.
    pub missing: crate::samples::Missing,
    /// The folder the model, its sidecar and the metrics are written to.
    pub out: &'a Path,
    /// The plugin instance's memory limit, in MiB.
    pub memory_mib: usize,
}

/// What it wrote and measured.
pub struct TrainSummary {
    /// The model file written (`model.model`).
    pub model: PathBuf,
    /// The metrics, as written to `metrics.json`.
    pub metrics: Value,
    /// A summary for the operator: the training set, then a line per fold and one for the test.
    pub lines: Vec<String>,
}

/// Trains `plugin` on the samples (the model written to `out`), and assesses it on the
/// test samples and/or by k-fold cross-validation.
pub fn train(plugin: Arc<Plugin>, request: &TrainRequest) -> Result<TrainSummary> {
    let samples = Samples::read_csv_with(request.samples, request.missing)?;
    let nomenclature = request.classes.map(read_classes).transpose()?;
    let (codes, classes) = code_labels(&samples, request.samples, nomenclature.as_deref())?;
    if classes.len() < 2 {
        bail!("{}: at least two classes are needed to train a labeller, found {}", request.samples.display(), classes.len());
    }
    let labeller = Labeller::new(plugin.clone(), request.params.clone(), request.seed, request.memory_mib)?;
    let names = samples.features.clone();
    let x = matrix_for(&samples, request.samples, &names)?;
    let mut lines = vec![format!(
        "{}: {} samples, {} features, {} classes; training {}",
        request.samples.display(),
        samples.len(),
        names.len(),
        classes.len(),
        plugin.info().reference()
    )];
    let mut metrics = json!({ "plugin": plugin.info().reference(), "params": labeller.params, "seed": request.seed });

    if let Some(k) = request.folds {
        let fold = folds(&codes, samples.groups.as_deref(), k, request.seed)?;
        let rule = if samples.groups.is_some() { "grouped by the `group` column" } else { "stratified by class" };
        let mut per_fold = Vec::new();
        for f in 0..k {
            let (tx, ty) = rows_where(&x, &codes, |i| fold[i] != f);
            let (vx, vy) = rows_where(&x, &codes, |i| fold[i] == f);
            let (model, _) = labeller.train(&tx, &ty, &format!("fold {}", f + 1))?;
            let predicted = labeller.predict(&model, &vx, &format!("fold {}", f + 1))?;
            let mut m = metrics_json(&vy, &predicted, &classes, &format!("fold {} of {k}", f + 1));
            m["train_samples"] = json!(tx.samples);
            lines.push(format!(
                "fold {}/{k}: OA {:.4}, kappa {:.4}, macro F1 {:.4} ({} test samples)",
                f + 1,
                m["overall_accuracy"].as_f64().unwrap_or(f64::NAN),
                m["kappa"].as_f64().unwrap_or(f64::NAN),
                m["macro_f1"].as_f64().unwrap_or(f64::NAN),
                vx.samples
            ));
            per_fold.push(m);
        }
        let summary = json!({
            "overall_accuracy": mean_sd(&per_fold, "overall_accuracy"),
            "kappa": mean_sd(&per_fold, "kappa"),
            "macro_f1": mean_sd(&per_fold, "macro_f1"),
        });
        metrics["cross_validation"] = json!({ "folds": k, "rule": rule, "per_fold": per_fold, "mean_sd": summary });
    }

    let (model, report) = labeller.train(&x, &codes, "all samples")?;
    if let Some(test_path) = request.test {
        let test = Samples::read_csv_with(test_path, request.missing)?;
        let test_codes = code_with(&test, test_path, &classes)?;
        let tx = matrix_for(&test, test_path, &names)?;
        let predicted = labeller.predict(&model, &tx, "the test samples")?;
        let m = metrics_json(&test_codes, &predicted, &classes, "test");
        lines.push(format!(
            "test ({}): OA {:.4}, kappa {:.4}, macro F1 {:.4} ({} samples)",
            test_path.display(),
            m["overall_accuracy"].as_f64().unwrap_or(f64::NAN),
            m["kappa"].as_f64().unwrap_or(f64::NAN),
            m["macro_f1"].as_f64().unwrap_or(f64::NAN),
            test.len()
        ));
        metrics["test"] = m;
    }

    // The sidecar goes last (and an old one first): its presence means the folder is complete.
    std::fs::create_dir_all(request.out).with_context(|| format!("creating {}", request.out.display()))?;
    let sidecar_path = request.out.join("model.json");
    let _ = std::fs::remove_file(&sidecar_path);
    let model_path = request.out.join("model.model");
    crate::fsutil::write_atomic(&model_path, &model.data).with_context(|| format!("writing {}", model_path.display()))?;
    crate::fsutil::write_atomic(&request.out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    let sidecar = json!({
        "contract": CONTRACT,
        "format": model.format,
        "plugin": plugin.info().reference(),
        "plugin_sha256": plugin.sha256(),
        "params": labeller.params,
        "seed": request.seed,
        "bytes": model.data.len(),
        "sha256": crate::hash::sha256_hex(&model.data),
        "features": names,
        "classes": classes.iter().map(|c| json!({ "code": c.code, "name": c.name })).collect::<Vec<_>>(),
        "training_data": { "path": request.samples.display().to_string(), "sha256": crate::hash::sha256_file(request.samples)?, "samples": samples.len() },
        "report": report,
    });
    crate::fsutil::write_atomic(&sidecar_path, serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    Ok(TrainSummary { model: model_path, metrics, lines })
}

/// A model `train` (or a run) wrote: the blob and its sidecar.
pub struct StoredModel {
    /// The model.
    pub blob: ModelBlob,
    /// Its sidecar, as JSON.
    pub sidecar: Value,
}

/// Reads `model` and its sidecar (`<model>.json`, or `model.json` beside `model.model`),
/// checking the sha256 the sidecar records.
pub fn read_model(model: &Path) -> Result<StoredModel> {
    let data = std::fs::read(model).with_context(|| format!("reading the model {}", model.display()))?;
    let sidecar_path = model.with_extension("json");
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(&sidecar_path).with_context(|| format!("the model's sidecar {} is missing", sidecar_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", sidecar_path.display()))?;
    if crate::hash::sha256_hex(&data) != sidecar["sha256"].as_str().unwrap_or_default() {
        bail!("{} does not match the sha256 its sidecar {} records", model.display(), sidecar_path.display());
    }
    let format = sidecar["format"].as_str().ok_or_else(|| anyhow!("{}: no \"format\"", sidecar_path.display()))?.to_string();
    Ok(StoredModel { blob: ModelBlob { format, data }, sidecar })
}

/// `sitsflow eval --model M --samples S`: the model's metrics on the samples.
pub fn evaluate(runtime: &Arc<Runtime>, plugin_dir: &Path, model: &Path, samples_path: &Path, missing: crate::samples::Missing) -> Result<Value> {
    let stored = read_model(model)?;
    let sidecar_path = model.with_extension("json");
    let trained_by = stored.sidecar["plugin"].as_str().ok_or_else(|| anyhow!("{}: no \"plugin\"", sidecar_path.display()))?;
    let plugin = find_labeller(runtime, plugin_dir, trained_by)?;
    if stored.sidecar["plugin_sha256"].as_str() != Some(plugin.sha256()) {
        log::warn!("{} was trained by another build of {trained_by}; predicting with the installed one", model.display());
    }
    let names: Vec<String> = stored.sidecar["features"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no \"features\" (a model from an older sitsflow: retrain it)", sidecar_path.display()))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let classes: Vec<Class> = stored.sidecar["classes"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no \"classes\"", sidecar_path.display()))?
        .iter()
        .map(|c| Class { code: c["code"].as_u64().unwrap_or(0) as u16, name: c["name"].as_str().unwrap_or("").to_string() })
        .collect();
    let samples = Samples::read_csv_with(samples_path, missing)?;
    let codes = code_with(&samples, samples_path, &classes)?;
    let x = matrix_for(&samples, samples_path, &names)?;
    let seed = stored.sidecar["seed"].as_u64().unwrap_or(0);
    let labeller = Labeller::new(plugin, stored.sidecar["params"].clone(), seed, 2048)?;
    let predicted = labeller.predict(&stored.blob, &x, &samples_path.display().to_string())?;
    let mut m = metrics_json(&codes, &predicted, &classes, &samples_path.display().to_string());
    m["model"] = json!(model.display().to_string());
    Ok(m)
}

/// The line `train` prints for its cross-validation (`metrics["cross_validation"]`).
pub fn render_cross_validation(cv: &Value) -> String {
    let m = &cv["mean_sd"];
    let f = |key: &str, stat: &str| m[key][stat].as_f64().unwrap_or(f64::NAN);
    format!(
        "{}-fold cross-validation ({}): OA {:.4} ± {:.4}, kappa {:.4} ± {:.4}, macro F1 {:.4} ± {:.4}",
        cv["folds"],
        cv["rule"].as_str().unwrap_or(""),
        f("overall_accuracy", "mean"),
        f("overall_accuracy", "sd"),
        f("kappa", "mean"),
        f("kappa", "sd"),
        f("macro_f1", "mean"),
        f("macro_f1", "sd"),
    )
}

/// The text `train` and `eval` print for one metrics object.
pub fn render_metrics(m: &Value) -> String {
    let mut out = format!(
        "{}: OA {:.4}, kappa {:.4}, macro F1 {:.4} ({} samples)\n{:<24} {:>8} {:>9} {:>7} {:>7}\n",
        m["evaluated_on"].as_str().unwrap_or("?"),
        m["overall_accuracy"].as_f64().unwrap_or(f64::NAN),
        m["kappa"].as_f64().unwrap_or(f64::NAN),
        m["macro_f1"].as_f64().unwrap_or(f64::NAN),
        m["samples"],
        "class",
        "support",
        "precision",
        "recall",
        "F1"
    );
    for c in m["classes"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<24} {:>8} {:>9.3} {:>7.3} {:>7.3}\n",
            format!("{} {}", c["code"], c["name"].as_str().unwrap_or("")),
            c["support"],
            c["precision"].as_f64().unwrap_or(f64::NAN),
            c["recall"].as_f64().unwrap_or(f64::NAN),
            c["f1"].as_f64().unwrap_or(f64::NAN)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(labels: &[&str]) -> Samples {
        Samples {
            features: vec!["B04@t000".into()],
            data: vec![0.0; labels.len()],
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ids: None,
            groups: None,
            positions: None,
        }
    }

    #[test]
    fn labels_are_names_or_codes() {
        let p = Path::new("s.csv");
        let (codes, classes) = code_labels(&samples(&["wheat", "corn", "wheat"]), p, None).unwrap();
        assert_eq!(codes, [2, 1, 2]);
        assert_eq!(classes, [Class { code: 1, name: "corn".into() }, Class { code: 2, name: "wheat".into() }]);
        let (codes, classes) = code_labels(&samples(&["11", "3"]), p, None).unwrap();
        assert_eq!(codes, [11, 3]);
        assert_eq!(classes[0], Class { code: 3, name: "3".into() });
        let named = [Class { code: 3, name: "corn".into() }, Class { code: 11, name: "wheat".into() }];
        let (codes, classes) = code_labels(&samples(&["11", "corn"]), p, Some(&named)).unwrap();
        assert_eq!((codes, classes.len()), (vec![11, 3], 2));
        let err = code_labels(&samples(&["11", "corn"]), p, None).unwrap_err().to_string();
        assert!(err.contains("mix integer codes (line 2: '11') and class names (line 3: 'corn')"), "{err}");
        let err = code_labels(&samples(&["4"]), p, Some(&named)).unwrap_err().to_string();
        assert_eq!(err, "s.csv:2: label code 4 is not in the classes file");
        let err = code_labels(&samples(&["0", "1"]), p, None).unwrap_err().to_string();
        assert!(err.starts_with("s.csv:2: label 0 means no data"), "{err}");
    }

    #[test]
    fn argmax_takes_the_most_probable_class() {
        let p = Probabilities { samples: 3, classes: vec![3, 7], data: vec![0.2, 0.8, 0.6, 0.4, f32::NAN, f32::NAN] };
        assert_eq!(argmax(&p).0, [7, 3, 0]);
        assert_eq!(argmax(&p).1[..2], [0.8, 0.6]);
    }

    #[test]
    fn grouped_folds_keep_groups_whole_and_balance_sizes() {
        let groups: Vec<String> = (0..100).map(|i| format!("g{}", i / 4)).collect();
        let codes = vec![1u16; 100];
        let f = folds(&codes, Some(&groups), 5, 7).unwrap();
        for g in 0..25 {
            let set: BTreeSet<usize> = (0..4).map(|j| f[g * 4 + j]).collect();
            assert_eq!(set.len(), 1, "group {g} split across folds");
        }
        let sizes: Vec<usize> = (0..5).map(|k| f.iter().filter(|&&x| x == k).count()).collect();
        assert_eq!(sizes, [20; 5]);
        assert_eq!(f, folds(&codes, Some(&groups), 5, 7).unwrap(), "seeded");
        assert_ne!(f, folds(&codes, Some(&groups), 5, 8).unwrap());
        let err = folds(&codes, Some(&groups[..8]), 5, 7).unwrap_err().to_string();
        assert!(err.contains("only 2 groups"), "{err}");
    }

    #[test]
    fn stratified_folds_deal_each_class_out() {
        let codes: Vec<u16> = (0..60).map(|i| if i < 50 { 1 } else { 2 }).collect();
        let f = folds(&codes, None, 5, 1).unwrap();
        for k in 0..5 {
            assert_eq!((0..50).filter(|&i| f[i] == k).count(), 10);
            assert_eq!((50..60).filter(|&i| f[i] == k).count(), 2);
        }
    }

    #[test]
    fn features_are_matched_by_name() {
        let s = Samples {
            features: vec!["B08@t000".into(), "B04@t000".into()],
            data: vec![8.0, 4.0, 18.0, 14.0],
            labels: vec!["a".into(), "b".into()],
            ids: None,
            groups: None,
            positions: None,
        };
        let m = matrix_for(&s, Path::new("s.csv"), &["B04@t000".into(), "B08@t000".into()]).unwrap();
        assert_eq!(m.data, [4.0, 8.0, 14.0, 18.0]);
        let err = matrix_for(&s, Path::new("s.csv"), &["B04@t000".into(), "B11@t000".into()]).unwrap_err().to_string();
        assert_eq!(err, "s.csv: 1 of the 2 features the model needs are not columns of it: B11@t000");
    }
}
