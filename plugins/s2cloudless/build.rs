//! Embeds the s2cloudless LightGBM model in the crate: parses LightGBM's text model and
//! writes the compact form of `src/lightgbm.rs` into `OUT_DIR`, which `src/lib.rs`
//! includes, so the component carries its model and needs no file access.
//!
//! The model (`pixel_s2_cloud_detector_lightGBM_v0.1.txt` from the `s2cloudless==1.7.3`
//! wheel) is CC BY-SA 4.0 and never committed: `scripts/setup.sh` fetches it into `.deps/`,
//! or `SITSFLOW_S2CLOUDLESS_MODEL` names another copy.

#[allow(dead_code)]
#[path = "src/lightgbm.rs"]
mod lightgbm;

use std::path::PathBuf;

const DEFAULT_MODEL: &str = "../../.deps/s2cloudless-1.7.3/s2cloudless/models/pixel_s2_cloud_detector_lightGBM_v0.1.txt";

fn fail(message: String) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed=SITSFLOW_S2CLOUDLESS_MODEL");
    println!("cargo:rerun-if-changed=src/lightgbm.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let model = match std::env::var_os("SITSFLOW_S2CLOUDLESS_MODEL") {
        Some(path) => PathBuf::from(path),
        None => manifest.join(DEFAULT_MODEL),
    };
    println!("cargo:rerun-if-changed={}", model.display());
    let text = std::fs::read_to_string(&model).unwrap_or_else(|e| {
        fail(format!(
            "the s2cloudless model is missing ({}: {e}).\n\
             Run scripts/setup.sh, which fetches it from the s2cloudless 1.7.3 wheel on PyPI into .deps/,\n\
             or set SITSFLOW_S2CLOUDLESS_MODEL to pixel_s2_cloud_detector_lightGBM_v0.1.txt.\n\
             The model is licensed CC BY-SA 4.0 (sentinel-hub/sentinel2-cloud-detector) and must not be committed.",
            model.display()
        ))
    });
    let parsed = lightgbm::RawModel::parse_text(&text)
        .unwrap_or_else(|e| fail(format!("{} is not a usable LightGBM model: {e}", model.display())));
    // s2cloudless feeds the 10 bands B01 B02 B04 B05 B08 B8A B09 B10 B11 B12 in this order.
    if parsed.num_features != 10 {
        fail(format!("{} has {} features; the s2cloudless model has 10", model.display(), parsed.num_features));
    }
    // Fail here, not in the component, if the model does not fit the flattened layout.
    if let Err(e) = lightgbm::Forest::new(&parsed) {
        fail(format!("{}: {e}", model.display()));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("s2cloudless_lightgbm.bin");
    std::fs::write(&out, parsed.encode()).unwrap_or_else(|e| fail(format!("writing {}: {e}", out.display())));
}
