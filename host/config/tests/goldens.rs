//! The pipeline goldens of `tests/config/` that the parser alone decides, checked without
//! building any component (the fast tier: `cargo test -p sitsflow-config`).
//!
//! Every `tests/config/invalid/*.toml` the parser rejects must fail with exactly the text
//! of the `.err` beside it; the others are the plan's to reject (unknown plugins, kinds,
//! schemas), and the integration suite (`tests/config.rs`) checks them with the real
//! components. Every `tests/config/valid/*.toml` must parse.

use sitsflow_config::Pipeline;
use std::path::{Path, PathBuf};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/config").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

/// Parses a case copied into a fresh folder, as the integration suite does, and returns
/// the error text with the folder's path removed.
fn parse(case: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(case.file_name().expect("file name"));
    std::fs::copy(case, &file).expect("copying the case");
    let prefix = format!("{}/", dir.path().display());
    Pipeline::load(&file).map(|_| ()).map_err(|e| e.to_string().replace(&prefix, ""))
}

#[test]
fn the_parser_rejects_its_invalid_cases_with_the_golden_text() {
    let mut failures = Vec::new();
    let mut decided = 0;
    for case in cases("invalid") {
        if let Err(e) = parse(&case) {
            decided += 1;
            let expected = std::fs::read_to_string(case.with_extension("err")).unwrap_or_default();
            if expected != format!("{e}\n") {
                failures.push(format!("{}:\n--- expected\n{expected}\n--- actual\n{e}\n", case.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{decided} invalid cases decided by the parser");
    // The parser decides a good share of the cases on its own; if it decided none, the
    // cases were not found or the parser accepts everything.
    assert!(decided >= 20, "only {decided} invalid cases were rejected by the parser");
}

#[test]
fn the_valid_cases_parse() {
    for case in cases("valid") {
        if let Err(e) = parse(&case) {
            panic!("{}: {e}", case.display());
        }
    }
}

#[test]
fn an_error_about_a_20_mb_value_echoes_a_few_hundred_bytes_of_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("huge.toml");
    let id = "X".repeat(20 << 20);
    let text = format!(
        "schema = 1\nname = \"huge\"\n\n[input]\nseries = \"series\"\n\n[[stage]]\nid = \"{id}\"\nplugin = \"normalized-difference@0.1.0\"\n"
    );
    std::fs::write(&file, text).expect("writing the case");
    let err = Pipeline::load(&file).err().expect("a 20 MB stage id is refused").to_string();
    assert!(err.len() < 5_000, "the message is {} bytes", err.len());
    assert!(err.contains("huge.toml:8:6: invalid stage id 'XXXX") && err.contains("bytes in all)"), "{err}");
    // The excerpt shows the start of the line and underlines within it.
    let excerpt: Vec<&str> = err.lines().skip(1).collect();
    assert!(excerpt.iter().all(|l| l.chars().count() < 200), "{excerpt:?}");
    assert!(excerpt.iter().any(|l| l.contains("^^^")), "{excerpt:?}");
}
