//! Golden tests of pipeline files: `tests/config/valid/*.toml` resolve to the plan
//! in the `.plan` file beside them; `tests/config/invalid/*.toml` fail with the
//! error text in the `.err` file beside them (file:line:column, message, excerpt).
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate change.

use crate::common;

use sitsflow::plan::Plan;
use std::path::{Path, PathBuf};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = common::workspace().join("tests/config").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

/// Resolves a case inside a project folder (plugins installed beside it), and
/// returns the plan text or the error text with the folder's path removed.
fn outcome(case: &Path) -> Result<String, String> {
    let project = common::project_dir();
    let file = project.path().join(case.file_name().expect("file name"));
    std::fs::copy(case, &file).expect("copying the case");
    copy_nomenclatures(project.path());
    let prefix = format!("{}/", project.path().display());
    Plan::load(&file, &common::runtime()).map(|plan| plan.render()).map_err(|e| e.to_string().replace(&prefix, ""))
}

/// The shipped nomenclatures, where pipelines in `dir` find them (`nomenclature/…`).
fn copy_nomenclatures(dir: &Path) {
    let target = dir.join("nomenclature");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(common::workspace().join("configs/nomenclature")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
    }
}

fn check(case: &Path, extension: &str, actual: &str) -> Option<String> {
    let golden = case.with_extension(extension);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, actual).expect("writing golden file");
        return None;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    (expected != actual).then(|| {
        format!("{}:\n--- expected ({})\n{expected}\n--- actual\n{actual}\n", case.display(), golden.display())
    })
}

/// Every pipeline shipped in configs/ resolves to a plan (its stages, params, years and
/// evaluations), so none of them rots while the code moves. Each is copied into a project
/// with the shipped plugins (a clean clone has no plugins/dist), its data paths made
/// absolute. Those on the generated demo data (`sitsflow demo-data data/demo…`, absent
/// from a clean clone) may stop at the first generated file they name; the others, on the
/// shared real data, resolve whole.
#[test]
fn shipped_pipelines_resolve() {
    let workspace = common::workspace();
    let shared = common::shared_data().canonicalize().expect("the shared data");
    let project = common::project_dir();
    let configs = project.path().join("configs");
    copy_nomenclatures(&configs);
    let generated = format!("{}/data/demo", workspace.display());
    let mut failures = Vec::new();
    let mut resolved = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace.join("configs")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap();
        if path.extension().is_some_and(|e| e == "csv") {
            // e.g. an annotations list, with its paths made absolute too
            let text = std::fs::read_to_string(path).unwrap().replace("../../shared/data", &shared.display().to_string());
            std::fs::write(configs.join(name), text).unwrap();
        }
    }
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("\"../../shared/data", &format!("\"{}", shared.display()))
            .replace("\"../data/", &format!("\"{}/data/", workspace.display()))
            .replace("\"../models/", &format!("\"{}/models/", workspace.display()))
            .replace("\"../plugins/dist\"", "\"../plugins\"");
        let copy = configs.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        match Plan::load(&copy, &common::runtime()) {
            Ok(_) => resolved.push(path.file_stem().unwrap().to_string_lossy().into_owned()),
            Err(e) => {
                let text = format!("{e:#}");
                let missing = text.contains("does not exist") || text.contains("No such file or directory");
                if !(text.contains(&generated) && missing) {
                    failures.push(format!("{}: {text}", path.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for real in ["flanders-seasons", "flanders-transfer", "flanders-fg-unet-transfer", "flanders-simclr", "slovenia", "slovenia-transfer"] {
        assert!(resolved.iter().any(|r| r == real), "configs/{real}.toml did not resolve (resolved: {resolved:?})");
    }
}

#[test]
fn valid_pipelines_give_the_expected_plan() {
    let mut failures = Vec::new();
    for case in cases("valid") {
        match outcome(&case) {
            Ok(plan) => failures.extend(check(&case, "plan", &plan)),
            Err(e) => failures.push(format!("{}: expected a plan, got:\n{e}", case.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_pipelines_give_the_expected_error() {
    let mut failures = Vec::new();
    for case in cases("invalid") {
        match outcome(&case) {
            Ok(plan) => failures.push(format!("{}: expected an error, got a plan:\n{plan}", case.display())),
            Err(e) => {
                // Every error names the file, and all but whole-file ones a line and column.
                let name = case.file_name().unwrap().to_string_lossy().to_string();
                if !e.starts_with(&name) {
                    failures.push(format!("{}: error does not start with the file name: {e}", case.display()));
                }
                failures.extend(check(&case, "err", &format!("{e}\n")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn demo_pipeline_is_valid() {
    // configs/demo.toml resolves against the real plugin folder layout.
    let project = common::project_dir();
    let demo = std::fs::read_to_string(common::workspace().join("configs/demo.toml")).unwrap();
    let demo = demo.replace("dir = \"../plugins/dist\"", "dir = \"plugins\"");
    let file = project.path().join("demo.toml");
    std::fs::write(&file, demo).unwrap();
    copy_nomenclatures(project.path());
    let plan = Plan::load(&file, &common::runtime()).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["clouds", "features", "clusters", "reliable", "pseudo", "agreeing", "landcover", "consistent"]);
    assert!(plan.stages[1].role.per_year() && plan.stages[4].role.year() == Some(2018) && plan.stages[6].role.year().is_none());
    match &plan.stages[4].role {
        sitsflow::plan::Role::Labeller { training: sitsflow::plan::Training::Samples(samples), .. } => assert_eq!(samples.as_str(), "reliable"),
        other => panic!("stage 5 is a labeller trained on samples, not {other:?}"),
    }

    // The TempCNN demo resolves its [[model]] against the shipped pretrained model.
    let text = std::fs::read_to_string(common::workspace().join("configs/demo-tempcnn.toml")).unwrap();
    let models = common::workspace().join("models");
    let text = text.replace("dir = \"../plugins/dist\"", "dir = \"plugins\"").replace("../models", &models.display().to_string());
    let file = project.path().join("demo-tempcnn.toml");
    std::fs::write(&file, text).unwrap();
    let plan = Plan::load(&file, &common::runtime()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.models.len(), 1);
    assert!(plan.render().contains("model         tempcnn = "), "{}", plan.render());
}
