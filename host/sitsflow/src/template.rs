//! `sitsflow plugins new <kind> <name>`: a plugin crate to start from, outside any
//! workspace, built the way the shipped plugins are (profile `plugin`: one codegen
//! unit, stripped, no debug info; Wasm SIMD through `.cargo/config.toml`), with a
//! working stage of that kind and its native unit test.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where the crate takes the SDK from.
#[derive(Debug, Clone)]
pub enum SdkSource {
    /// A folder holding the SDK (`plugins/sdk` of a sitsflow checkout or release).
    Path(PathBuf),
    /// A git repository holding sitsflow (the SDK is found in it by name).
    Git(String),
}

/// The kinds `plugins new` writes a crate for.
pub const KINDS: [&str; 4] = ["features", "cloud-mask", "labeller", "decoder"];

/// Writes the crate `name` (a plugin name: lower case, digits, `-`) of `kind` into
/// `dir/name/`; refuses to write over an existing folder. Returns the folder.
pub fn new_plugin(kind: &str, name: &str, dir: &Path, sdk: &SdkSource) -> Result<PathBuf> {
    if !crate::config::valid_plugin_name(name) {
        bail!("'{name}' is not a plugin name: lower-case letters, digits and '-', starting with a letter");
    }
    let template = match kind {
        "features" => FEATURES,
        "cloud-mask" => CLOUD_MASK,
        "labeller" => LABELLER,
        "decoder" => DECODER,
        other => bail!("no template for a '{other}' stage (templates: {}); start from one of the shipped plugins of that kind", KINDS.join(", ")),
    };
    let lib = template.replace("{name}", name).replace("{Type}", &type_name(name));
    let root = dir.join(name);
    if root.exists() {
        bail!("{} exists already; choose another name or folder", root.display());
    }
    let sdk_line = match sdk {
        SdkSource::Path(p) => {
            let p = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
            if !p.join("wit/stage.wit").is_file() {
                bail!("{} is not the sitsflow SDK (no wit/stage.wit in it)", p.display());
            }
            format!("sitsflow-sdk = {{ path = {:?} }}", p.display().to_string())
        }
        SdkSource::Git(url) => format!("sitsflow-sdk = {{ git = {url:?} }}"),
    };
    let cargo = CARGO.replace("{name}", name).replace("{sdk}", &sdk_line);
    let files: [(&str, String); 5] = [
        ("Cargo.toml", cargo),
        (".cargo/config.toml", CONFIG.to_string()),
        ("src/lib.rs", lib),
        ("README.md", README.replace("{name}", name).replace("{kind}", kind)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in the crate")).with_context(|| format!("creating {}", root.display()))?;
        crate::fsutil::write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// `my-index` → `MyIndex`.
fn type_name(name: &str) -> String {
    name.split('-').filter(|p| !p.is_empty()).map(|p| p[..1].to_uppercase() + &p[1..]).collect()
}

const CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
description = "A sitsflow stage."

[lib]
# cdylib: the WebAssembly component; rlib: the native library its unit tests use.
crate-type = ["cdylib", "rlib"]

[dependencies]
{sdk}
serde = { version = "1", features = ["derive"] }
schemars = "1"

# A crate of its own, even inside another project's folder.
[workspace]

# The profile the shipped plugins are built with: small, reproducible components.
# cargo build --profile plugin --target wasm32-wasip2
[profile.plugin]
inherits = "release"
debug = false
strip = true
codegen-units = 1
"#;

const CONFIG: &str = r#"# Components use Wasm SIMD (128-bit), as the shipped plugins do; wasmtime enables it.
[target.wasm32-wasip2]
rustflags = ["-C", "target-feature=+simd128"]
"#;

const README: &str = r#"# {name}

A sitsflow {kind} stage.

```sh
cargo test                                              # the method, natively
cargo build --profile plugin --target wasm32-wasip2     # the component
sitsflow plugins run target/wasm32-wasip2/plugin/*.wasm --input series/ --out out.tif --params '{}'
sitsflow plugins install --dir my-plugins target/wasm32-wasip2/plugin/*.wasm
```

A pipeline finds it beside the shipped stages with `[plugins] dir = ["my-plugins", "…/plugins/dist"]`.
See sitsflow's `docs/plugin-guide.md` for the contract (feature names, layouts, versions).
"#;

const FEATURES: &str = r##"//! `{name}`: a features stage. It returns, per date, the mean of the bands it is
//! given (`bands`), named `{prefix}@YYYY-MM-DD` — replace `compute` with your method.

use sitsflow_sdk::prelude::*;

/// Parameters, from the pipeline's `params = { … }`, checked against their JSON Schema.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The bands averaged, e.g. `["B04", "B08"]`.
    pub bands: Vec<String>,
    /// The feature names' prefix (default `MEAN`).
    #[serde(default)]
    pub prefix: Option<String>,
}

pub struct {Type};

impl Stage for {Type} {
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Mean of some bands, per date.";
    type Params = Params;
}

impl FeatureStage for {Type} {
    /// Only the bands it reads are copied into the sandbox.
    fn bands(available: &[String], params: &Params) -> Option<Vec<String>> {
        bands_present(available, params.bands.iter().map(String::as_str))
    }

    fn compute(chunk: Cube, params: Params) -> Result<FeatureMatrix, StageError> {
        let mut index = Vec::new();
        for band in &params.bands {
            index.push(chunk.band_index(band).ok_or_else(|| {
                StageError::Unsupported(format!("band '{band}' is not in the cube (bands: {})", chunk.bands.join(", ")))
            })?);
        }
        if index.is_empty() {
            return Err(StageError::InvalidParams("name at least one band".into()));
        }
        let prefix = params.prefix.unwrap_or_else(|| "MEAN".into());
        let (pixels, dates) = (chunk.pixels(), chunk.dates.len());
        // One row per pixel, one column per date: `samples × features`, pixel-major.
        let mut data = vec![f32::NAN; pixels * dates];
        for d in 0..dates {
            let valid = chunk.valid_plane(d);
            for p in 0..pixels {
                if valid.is_some_and(|v| v[p] == 0) {
                    continue;
                }
                let sum: f32 = index.iter().map(|&b| chunk.plane(d, b)[p]).sum();
                data[p * dates + d] = sum / index.len() as f32;
            }
        }
        Ok(FeatureMatrix { samples: pixels, names: chunk.dates.iter().map(|d| format!("{prefix}@{d}")).collect(), data })
    }
}

sitsflow_sdk::export_features_stage!({Type});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_two_bands_per_date() {
        // 1 date × 2 bands × 1 × 2 pixels; pixel 1 is masked.
        let cube = Cube {
            dates: vec!["2020-06-01".into()],
            bands: vec!["B04".into(), "B08".into()],
            rows: 1,
            cols: 2,
            data: vec![0.1, 0.2, 0.3, 0.4],
            valid: vec![1, 0],
        };
        let params = {Type}::parse_params(r#"{"bands": ["B04", "B08"]}"#).unwrap();
        let out = {Type}::compute(cube, params).unwrap();
        assert_eq!(out.names, ["MEAN@2020-06-01"]);
        assert!((out.row(0)[0] - 0.2).abs() < 1e-6);
        assert!(out.row(1)[0].is_nan(), "a masked pixel has no value");
    }
}
"##;

const CLOUD_MASK: &str = r##"//! `{name}`: a cloud-mask stage. It calls a pixel cloud where the blue band is
//! brighter than `threshold` — replace `mask` with your method.

use sitsflow_sdk::prelude::*;

/// Parameters, from the pipeline's `params = { … }`, checked against their JSON Schema.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Blue (B02) reflectance above which a pixel is cloud (default 0.2).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
}

fn default_threshold() -> f32 {
    0.2
}

pub struct {Type};

impl Stage for {Type} {
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Cloud where the blue band is bright.";
    type Params = Params;
}

impl CloudMaskStage for {Type} {
    fn bands(available: &[String], _params: &Params) -> Option<Vec<String>> {
        bands_present(available, ["B02"])
    }

    fn mask(chunk: Cube, params: Params) -> Result<Mask, StageError> {
        let blue = chunk.band_index("B02").ok_or_else(|| StageError::Unsupported(format!("no B02 in the cube (bands: {})", chunk.bands.join(", "))))?;
        let pixels = chunk.pixels();
        // `dates × rows × cols` classes.
        let mut classes = vec![mask_class::NO_DATA; chunk.dates.len() * pixels];
        for d in 0..chunk.dates.len() {
            let plane = chunk.plane(d, blue);
            let valid = chunk.valid_plane(d);
            for p in 0..pixels {
                if plane[p].is_nan() || valid.is_some_and(|v| v[p] == 0) {
                    continue;
                }
                classes[d * pixels + p] = if plane[p] > params.threshold { mask_class::CLOUD } else { mask_class::CLEAR };
            }
        }
        Ok(Mask { classes, probability: Vec::new() })
    }
}

sitsflow_sdk::export_cloud_mask_stage!({Type});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bright_blue_is_cloud() {
        let cube = Cube { dates: vec!["2020-06-01".into()], bands: vec!["B02".into()], rows: 1, cols: 3, data: vec![0.05, 0.4, f32::NAN], valid: vec![] };
        let mask = {Type}::mask(cube, {Type}::parse_params("{}").unwrap()).unwrap();
        assert_eq!(mask.classes, [mask_class::CLEAR, mask_class::CLOUD, mask_class::NO_DATA]);
    }
}
"##;

const LABELLER: &str = r##"//! `{name}`: a labeller stage. A nearest-centroid classifier: training keeps each
//! class's mean feature vector (NaN features left out of the means), prediction gives
//! each sample softmax(−distance² / temperature) over the classes — replace `train` and
//! `predict` with your method. The model is the stage's own format, versioned.

use sitsflow_sdk::prelude::*;

/// Parameters, from the pipeline's `params = { … }`, checked against their JSON Schema.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Softness of the probabilities (default 1.0; smaller is sharper).
    #[serde(default = "one")]
    pub temperature: f32,
}

fn one() -> f32 {
    1.0
}

/// The model's format: bump it when the layout of the bytes changes.
const FORMAT: &str = "{name}-centroids/1";

pub struct {Type};

impl Stage for {Type} {
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Nearest class centroid.";
    type Params = Params;
}

/// The model: class codes, feature count, one centroid per class (`classes × features`).
fn encode(classes: &[u16], features: usize, centroids: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend((classes.len() as u32).to_le_bytes());
    bytes.extend((features as u32).to_le_bytes());
    classes.iter().for_each(|c| bytes.extend(c.to_le_bytes()));
    centroids.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
    bytes
}

fn decode(model: &ModelBlob) -> Result<(Vec<u16>, usize, Vec<f32>), StageError> {
    let bad = || StageError::InvalidInput(format!("not a {FORMAT} model (format '{}', {} bytes)", model.format, model.data.len()));
    if model.format != FORMAT || model.data.len() < 8 {
        return Err(bad());
    }
    let word = |i: usize| u32::from_le_bytes(model.data[i..i + 4].try_into().unwrap()) as usize;
    let (k, f) = (word(0), word(4));
    if model.data.len() != 8 + 2 * k + 4 * k * f {
        return Err(bad());
    }
    let classes = (0..k).map(|i| u16::from_le_bytes(model.data[8 + 2 * i..10 + 2 * i].try_into().unwrap())).collect();
    let at = 8 + 2 * k;
    let centroids = (0..k * f).map(|i| f32::from_le_bytes(model.data[at + 4 * i..at + 4 * i + 4].try_into().unwrap())).collect();
    Ok((classes, f, centroids))
}

impl LabellerStage for {Type} {
    fn train(samples: FeatureMatrix, labels: Vec<u16>, _params: Params) -> Result<Trained, StageError> {
        let f = samples.names.len();
        // Class codes in order; 0 is unlabelled and ignored.
        let mut classes: Vec<u16> = labels.iter().copied().filter(|l| *l != 0).collect();
        classes.sort_unstable();
        classes.dedup();
        if classes.is_empty() {
            return Err(StageError::InvalidInput("no labelled sample to train on".into()));
        }
        let (mut sums, mut counts) = (vec![0f64; classes.len() * f], vec![0u64; classes.len() * f]);
        for (i, label) in labels.iter().enumerate().filter(|(_, l)| **l != 0) {
            let c = classes.binary_search(label).expect("collected above");
            for (j, v) in samples.row(i).iter().enumerate().filter(|(_, v)| !v.is_nan()) {
                sums[c * f + j] += *v as f64;
                counts[c * f + j] += 1;
            }
        }
        let centroids: Vec<f32> = sums.iter().zip(&counts).map(|(s, n)| if *n > 0 { (*s / *n as f64) as f32 } else { f32::NAN }).collect();
        let report = format!("{{\"classes\": {}, \"features\": {f}}}", classes.len());
        Ok(Trained { model: ModelBlob { format: FORMAT.into(), data: encode(&classes, f, &centroids) }, report })
    }

    fn predict(model: ModelBlob, samples: FeatureMatrix, params: Params) -> Result<Probabilities, StageError> {
        let (classes, f, centroids) = decode(&model)?;
        if samples.names.len() != f {
            return Err(StageError::InvalidInput(format!("the model has {f} features, the samples {}", samples.names.len())));
        }
        let k = classes.len();
        let mut data = vec![0f32; samples.samples * k];
        for i in 0..samples.samples {
            let row = samples.row(i);
            // Squared distance over the features both have; softmax of its negative.
            let d: Vec<f32> = (0..k)
                .map(|c| row.iter().zip(&centroids[c * f..(c + 1) * f]).filter(|(x, m)| !x.is_nan() && !m.is_nan()).map(|(x, m)| (x - m) * (x - m)).sum())
                .collect();
            let best = d.iter().copied().fold(f32::INFINITY, f32::min);
            let weights: Vec<f32> = d.iter().map(|v| (-(v - best) / params.temperature.max(1e-6)).exp()).collect();
            let total: f32 = weights.iter().sum();
            for (c, w) in weights.iter().enumerate() {
                data[i * k + c] = w / total;
            }
        }
        Ok(Probabilities { samples: samples.samples, classes, data })
    }
}

sitsflow_sdk::export_labeller_stage!({Type});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_classes_apart_are_told_apart() {
        let samples = FeatureMatrix { samples: 4, names: vec!["x".into()], data: vec![0.0, 0.1, 1.0, 0.9] };
        let trained = {Type}::train(samples, vec![1, 1, 2, 0], {Type}::parse_params("{}").unwrap()).unwrap();
        let test = FeatureMatrix { samples: 2, names: vec!["x".into()], data: vec![0.05, 1.1] };
        let p = {Type}::predict(trained.model, test, {Type}::parse_params("{}").unwrap()).unwrap();
        assert_eq!(p.classes, [1, 2]);
        assert!(p.data[0] > 0.5 && p.data[3] > 0.5, "{:?}", p.data);
        assert!((p.data[0] + p.data[1] - 1.0).abs() < 1e-6);
    }
}
"##;

const DECODER: &str = r##"//! `{name}`: a decoder stage. A temporal majority filter: each year's label is the
//! most frequent of the yearly argmax labels in a window of `window` years around it
//! (ties and years without posteriors keep their own) — replace `decode` with your
//! method.

use sitsflow_sdk::prelude::*;

/// Parameters, from the pipeline's `params = { … }`, checked against their JSON Schema.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Years in the window, odd (default 3).
    #[serde(default = "three")]
    pub window: u32,
}

fn three() -> u32 {
    3
}

pub struct {Type};

impl Stage for {Type} {
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "Temporal majority of yearly labels.";
    type Params = Params;
}

impl DecoderStage for {Type} {
    fn decode(series: PosteriorSeries, params: Params) -> Result<Decoded, StageError> {
        if params.window == 0 || params.window % 2 == 0 {
            return Err(StageError::InvalidParams(format!("window = {} is not an odd number of years", params.window)));
        }
        let (steps, n, k) = (series.steps, series.samples, series.classes.len());
        // Each year's own label: the argmax of its posteriors, 0 where they are missing (NaN).
        let own: Vec<u16> = series
            .data
            .chunks_exact(k.max(1))
            .map(|p| {
                let (j, v) = p.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
                if v.is_finite() { series.classes[j] } else { 0 }
            })
            .collect();
        let half = (params.window / 2) as usize;
        let mut labels = vec![0u16; steps * n];
        for s in 0..n {
            for t in 0..steps {
                let here = own[t * n + s];
                if here == 0 {
                    continue; // a year without posteriors stays without a label
                }
                let (from, to) = (t.saturating_sub(half), (t + half).min(steps - 1));
                let mut best = (here, 0usize);
                for c in (from..=to).map(|u| own[u * n + s]).filter(|c| *c != 0) {
                    let votes = (from..=to).filter(|u| own[u * n + s] == c).count();
                    if votes > best.1 || (votes == best.1 && c == here) {
                        best = (c, votes);
                    }
                }
                labels[t * n + s] = best.0;
            }
        }
        Ok(Decoded { labels, posteriors: Vec::new() })
    }
}

sitsflow_sdk::export_decoder_stage!({Type});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_year_flicker_is_voted_away() {
        // 3 years × 1 pixel × 2 classes: 1, 2, 1 → 1, 1, 1.
        let series = PosteriorSeries { steps: 3, samples: 1, classes: vec![1, 2], data: vec![0.9, 0.1, 0.4, 0.6, 0.8, 0.2] };
        let out = {Type}::decode(series, {Type}::parse_params("{}").unwrap()).unwrap();
        assert_eq!(out.labels, [1, 1, 1]);
    }
}
"##;
