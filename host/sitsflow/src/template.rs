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
pub const KINDS: [&str; 2] = ["features", "cloud-mask"];

/// Writes the crate `name` (a plugin name: lower case, digits, `-`) of `kind` into
/// `dir/name/`; refuses to write over an existing folder. Returns the folder.
pub fn new_plugin(kind: &str, name: &str, dir: &Path, sdk: &SdkSource) -> Result<PathBuf> {
    if !crate::config::valid_plugin_name(name) {
        bail!("'{name}' is not a plugin name: lower-case letters, digits and '-', starting with a letter");
    }
    let lib = match kind {
        "features" => FEATURES.replace("{name}", name).replace("{Type}", &type_name(name)),
        "cloud-mask" => CLOUD_MASK.replace("{name}", name).replace("{Type}", &type_name(name)),
        other => bail!("no template for a '{other}' stage (templates: {}); start from one of the shipped plugins of that kind", KINDS.join(", ")),
    };
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
