//! The plugin-author guide (docs/plugin-guide.md), followed step by step: a new crate made from the
//! guide's own code blocks, built for wasm32-wasip2, inspected and run by the host.
//! If the guide drifts from the SDK, this test fails.

use crate::common;

use std::process::Command;

/// The fenced code block of `lang` that follows `marker` in the guide.
fn block_after(readme: &str, marker: &str, lang: &str) -> String {
    let start = readme.find(marker).unwrap_or_else(|| panic!("docs/plugin-guide.md has no {marker:?}"));
    let fence = format!("```{lang}\n");
    let from = start + readme[start..].find(&fence).expect("code block") + fence.len();
    let end = from + readme[from..].find("```").expect("closing fence");
    // The guide's blocks sit in a numbered list: remove the list indentation.
    readme[from..end].lines().map(|l| l.strip_prefix("   ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

#[test]
fn plugin_author_guide() {
    let root = common::workspace();
    let readme = std::fs::read_to_string(root.join("docs/plugin-guide.md")).unwrap();
    let manifest_tail = block_after(&readme, "2. `Cargo.toml`", "toml")
        .replace("/path/to/sitsflow", &root.display().to_string());
    let lib = block_after(&readme, "3. `src/lib.rs`", "rust");

    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("my-index");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        format!("[package]\nname = \"my-index\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n{manifest_tail}\n"),
    )
    .unwrap();
    std::fs::write(krate.join("src/lib.rs"), lib).unwrap();
    // Same dependency versions as the workspace, nothing new to download.
    std::fs::copy(root.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", root.join("target/guide"))
        .args(["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .status()
        .unwrap();
    assert!(status.success(), "the guide's crate does not build");
    let wasm = root.join("target/guide/wasm32-wasip2/plugin/my_index.wasm");

    let out = Command::new(env!("CARGO_BIN_EXE_sitsflow"))
        .args(["plugins", "inspect"])
        .arg(&wasm)
        .env("SITSFLOW_CACHE_DIR", root.join("target/test-cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in ["name     my-index", "version  0.1.0", "kind     features", "\"band\""] {
        assert!(shown.contains(line), "missing {line:?}:\n{shown}");
    }

    // And it computes: one feature per date, the band's values.
    let plugin = common::runtime().load(&wasm).unwrap();
    let pool = sitsflow::runtime::StagePool::new(plugin, Default::default());
    let cube = sitsflow::runtime::data::Cube {
        dates: vec!["2021-05-01".into(), "2021-06-01".into()],
        bands: vec!["B04".into(), "B08".into()],
        rows: 1,
        cols: 2,
        data: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        valid: Vec::new(),
    };
    let context = sitsflow::runtime::CallContext::default();
    let out = pool.with(|i| i.features(&context, &cube, r#"{"band": "B08"}"#)).unwrap();
    assert_eq!(out.names, ["B08@2021-05-01", "B08@2021-06-01"]);
    assert_eq!(out.data, [0.3, 0.7, 0.4, 0.8]);
}
