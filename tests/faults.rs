//! The run directory under faults: a run killed at any point of any phase (chunks, COG
//! assembly, scene stages, report, publish) or stopped by a full disk resumes on rerun
//! and ends with the same bytes as an uninterrupted run; a run killed over a finished
//! one leaves it intact or unfinished (no manifest), never a manifest beside other
//! files; two runs never share a directory; the worker count never changes a result.
//!
//! The kill points need the `failpoints` feature (`scripts/test.sh` enables it).

use crate::common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `sitsflow args` in `project`, killed at `failpoints` (the `fail` crate's syntax) if given.
pub(crate) fn command(project: &Path, args: &[&str], failpoints: Option<&str>) -> Command {
    let mut command = common::sitsflow_command(project);
    command.args(args);
    if let Some(f) = failpoints {
        command.env("FAILPOINTS", f);
    }
    command
}

pub(crate) fn sitsflow(project: &Path, args: &[&str], failpoints: Option<&str>) -> Output {
    command(project, args, failpoints).output().expect("running sitsflow")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Seed 001's whole chain on the small demo in 32 px chunks (four of them), so every
/// phase has several steps to be killed between.
pub(crate) fn chain_pipeline(run_dir: &str) -> String {
    let text = std::fs::read_to_string(common::workspace().join("configs/demo.toml")).unwrap();
    text.replace("../data/demo", &common::small_demo().display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/demo\"", &format!("dir = {run_dir:?}"))
        .replace("memory_budget_mib = 1024", "memory_budget_mib = 1024\nchunk_size = 32")
        .replace("k = 40", "k = 12")
        .replace("per_class = 500", "per_class = 150")
        .replace("n_trees = 100", "n_trees = 20")
        .replace("samples = \"agreeing\"", "samples = \"agreeing\"\nholdout = 0.5")
}

/// A project folder with the shipped plugins, the nomenclatures and `pipeline`, locked.
pub(crate) fn chain_project(pipeline: &str) -> tempfile::TempDir {
    let dir = common::project_dir();
    let nomenclature = dir.path().join("nomenclature");
    std::fs::create_dir_all(&nomenclature).unwrap();
    for entry in std::fs::read_dir(common::workspace().join("configs/nomenclature")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, nomenclature.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow(dir.path(), &["--quiet", "plugins", "lock", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// The files the run recorded about itself (timings, paths), not compared byte for byte.
const RUN_RECORDS: &[&str] = &["manifest.json", "report.json", "report.html"];

/// sha256 of every file under `dir` (relative names), hidden working files excluded.
pub(crate) fn hashes(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if rel.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(rel, sitsflow::hash::sha256_file(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Every output the manifest names exists with the size and sha256 it records, and the
/// manifest's `published` list is exactly the files present.
pub(crate) fn assert_manifest_matches(dir: &Path) {
    let m = manifest(dir);
    let mut published: Vec<String> = m["published"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    for o in m["outputs"].as_array().unwrap() {
        let name = relative_name(&published, o);
        let sha = sitsflow::hash::sha256_file(&dir.join(&name)).unwrap();
        assert_eq!(o["sha256"].as_str().unwrap(), sha, "{name:?} differs from its manifest record");
    }
    published.push("manifest.json".into());
    published.sort();
    let present: Vec<String> = hashes(dir).into_keys().collect();
    assert_eq!(published, present, "the manifest describes exactly the files present");
}

/// The name inside the run directory of a manifest output record (its path ends with one
/// of the published names).
fn relative_name(published: &[String], record: &Value) -> String {
    let path = Path::new(record["path"].as_str().unwrap());
    published.iter().filter(|p| path.ends_with(p)).max_by_key(|p| p.len()).unwrap_or_else(|| panic!("{path:?} is not published")).clone()
}

/// What a comparison between two finished runs looks at: every file but the run records,
/// and the outputs' names and hashes in the manifest.
pub(crate) fn fingerprint(dir: &Path) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let mut files = hashes(dir);
    files.retain(|k, _| !RUN_RECORDS.contains(&k.as_str()));
    let m = manifest(dir);
    let published: Vec<String> = m["published"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let outputs = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (relative_name(&published, o), o["sha256"].as_str().unwrap().to_string()))
        .collect();
    (files, outputs)
}

pub(crate) fn was_killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(libc::SIGKILL)
}

/// The reference: the chain run once, uninterrupted.
pub(crate) fn reference_run() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let dir = chain_project(&chain_pipeline("runs/demo"));
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let run = dir.path().join("runs/demo");
        (dir, run)
    })
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn a_run_killed_at_any_point_resumes_to_the_bytes_of_an_uninterrupted_run() {
    let (_keep, reference) = reference_run();
    assert_manifest_matches(reference);
    let expected = fingerprint(reference);
    // (point, the phase it stands for): the `fail` crate's `N*off->return` kills at hit N+1.
    let points = [
        ("run::chunk_written=2*off->return", "chunk phase, after 3 of 4 chunks"),
        ("raster::cog_copied=1*off->return", "COG assembly, a COG complete under its temporary name"),
        ("run::assembled=2*off->return", "COG assembly, after 3 outputs"),
        ("fit::chunk_written=1*off->return", "the clusterer's assignment, mid-scene"),
        ("fit::node_done=2*off->return", "after the reliable-samples sampler"),
        ("fit::node_done=3*off->return", "after the pseudo-label forest"),
        ("fit::chunk_written=20*off->return", "the final forest's or the decoder's chunks"),
        ("run::report_staged=return", "report written, nothing published"),
        ("rundir::committed=return", "publish committed, nothing moved"),
        ("rundir::published_first=return", "publish halfway"),
    ];
    let mut failures = Vec::new();
    for (point, phase) in points {
        let dir = chain_project(&chain_pipeline("runs/demo"));
        let run = dir.path().join("runs/demo");
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], Some(point));
        if !was_killed(&out) {
            failures.push(format!("{point} ({phase}): not killed: {:?} {}", out.status, text(&out.stderr)));
            continue;
        }
        // Nothing looks finished: no manifest, and before the commit point no output either.
        if run.join("manifest.json").exists() {
            failures.push(format!("{point} ({phase}): a manifest.json after the kill"));
        }
        if !point.starts_with("rundir::") && !hashes(&run).is_empty() {
            failures.push(format!("{point} ({phase}): files under their final names after the kill: {:?}", hashes(&run).keys()));
        }
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        if !out.status.success() {
            failures.push(format!("{point} ({phase}): the rerun failed: {}", text(&out.stderr)));
            continue;
        }
        assert_manifest_matches(&run);
        if fingerprint(&run) != expected {
            failures.push(format!("{point} ({phase}): the resumed run differs from the uninterrupted one"));
        }
        // Killed after fit node N+1, the rerun takes the first N+1 fit nodes over from
        // their journal instead of fitting them again.
        if let Some(n) = point.strip_prefix("fit::node_done=").and_then(|r| r.split('*').next()).and_then(|n| n.parse::<usize>().ok()) {
            let fit_stages = ["clusters", "reliable", "pseudo", "agreeing", "landcover", "consistent"];
            let resumed = manifest(&run)["resumed_nodes"].clone();
            if resumed != serde_json::json!(fit_stages[..=n]) {
                failures.push(format!("{point} ({phase}): the rerun took over {resumed}, not the {} fit nodes done", n + 1));
            }
        }
        assert!(!run.join(".partial").exists(), "{point}: the working folder is removed after success");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn a_run_killed_over_a_finished_run_leaves_it_intact_or_without_a_manifest() {
    let dir = chain_project(&chain_pipeline("runs/demo"));
    let run = dir.path().join("runs/demo");
    assert!(sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None).status.success());
    let before = hashes(&run);
    // The new pipeline drops the decoder: its maps must go when the new run is published.
    let changed = chain_pipeline("runs/demo").replace("n_trees = 20", "n_trees = 15");
    let cut = changed.find("[[stage]]\nid = \"consistent\"").unwrap();
    let end = changed[cut..].find("\n# How good").unwrap();
    let mut changed = format!("{}{}", &changed[..cut], &changed[cut + end..]);
    let evaluate = changed.find("[[evaluate]]\noutput = \"consistent\"").unwrap();
    changed.truncate(evaluate);
    std::fs::write(dir.path().join("pipeline.toml"), &changed).unwrap();
    assert!(sitsflow(dir.path(), &["--quiet", "plugins", "lock", "pipeline.toml"], None).status.success());

    for point in ["run::chunk_written=1*off->return", "fit::node_done=4*off->return", "run::report_staged=return"] {
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], Some(point));
        assert!(was_killed(&out), "{point}: {}", text(&out.stderr));
        assert_eq!(hashes(&run), before, "{point}: the finished run must be untouched until the new one is complete");
    }
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], Some("rundir::published_first=return"));
    assert!(was_killed(&out), "{}", text(&out.stderr));
    assert!(!run.join("manifest.json").exists(), "halfway through publishing, no manifest describes a mix of runs");

    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_manifest_matches(&run);
    assert!(!run.join("consistent_2018.tif").exists(), "the dropped stage's maps are removed with the old run");
    let fresh = chain_project(&changed);
    assert!(sitsflow(fresh.path(), &["--quiet", "run", "pipeline.toml"], None).status.success());
    assert_eq!(fingerprint(&run), fingerprint(&fresh.path().join("runs/demo")));
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn a_kill_after_the_manifest_is_published_keeps_it_and_the_next_run_or_assembly_finishes() {
    let (_keep, reference) = reference_run();
    let expected = fingerprint(reference);
    let dir = chain_project(&chain_pipeline("runs/demo"));
    let run = dir.path().join("runs/demo");
    // Killed once the new manifest is in place, while `.partial/` (with publish.json) is still there.
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], Some("rundir::published_manifest=return"));
    assert!(was_killed(&out), "{}", text(&out.stderr));
    assert!(run.join(".partial/publish.json").exists(), "killed inside the window");
    assert_manifest_matches(&run);
    assert_eq!(fingerprint(&run), expected);
    // Twice: the first finishes the publish, the second finds a clean directory.
    for command in ["assemble", "run"] {
        let out = sitsflow(dir.path(), &["--quiet", command, "pipeline.toml"], None);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        assert_manifest_matches(&run);
        assert_eq!(fingerprint(&run), expected, "{command}");
        assert!(!run.join(".partial").exists(), "{command}");
    }
}

/// A project whose pipeline runs `stage` (TOML lines) after NDVI features, on the small demo.
fn hostile_project(stage: &str) -> tempfile::TempDir {
    hostile_project_with(stage, "")
}

/// As [`hostile_project`], with `run` as the pipeline's `[run]` table's lines.
fn hostile_project_with(stage: &str, run: &str) -> tempfile::TempDir {
    let demo = common::small_demo();
    let pipeline = format!(
        "schema = 1\nname = \"hostile\"\n[input]\nseries = \"{demo}/series\"\n[reference]\npath = \"{demo}/truth/2018.tif\"\n\
         classes = \"{demo}/classes.csv\"\n[run]\n{run}[output]\ndir = \"runs/hostile\"\n[plugins]\ndir = \"plugins\"\n\
         [[stage]]\nid = \"ndvi\"\nplugin = \"normalized-difference@0.1.0\"\nparams = {{ a = \"B08\", b = \"B04\" }}\n\
         [[stage]]\nid = \"sparse\"\nplugin = \"stratified-samples@0.1.0\"\nparams = {{ per_class = 5 }}\n{stage}",
        demo = demo.display()
    );
    let dir = common::project_dir();
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow(dir.path(), &["--quiet", "plugins", "lock", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

#[test]
fn a_labeller_returning_nan_negative_or_unnormalised_probabilities_fails_naming_stage_plugin_and_chunk() {
    let labeller = common::component("fixture-hostile-labeller");
    for (mode, message) in [
        ("nan", "returned a non-finite probability (NaN) for sample 0"),
        ("negative", "returned probability -5 for sample 0, class column 0: probabilities lie within [0, 1]"),
        ("unnormalised", "returned probabilities summing to"),
    ] {
        let dir = hostile_project(&format!(
            "[[stage]]\nid = \"labels\"\npath = \"{}\"\nsamples = \"sparse\"\nholdout = 0\nparams = {{ probabilities = \"{mode}\" }}\n",
            labeller.display()
        ));
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {err}");
        assert!(err.contains("stage 'labels' (fixture-hostile-labeller@0.1.0) predicting") && err.contains("chunk"), "{mode}: {err}");
        assert!(err.contains(message), "{mode}: {err}");
        assert!(!dir.path().join("runs/hostile/manifest.json").exists(), "{mode}: nothing is published");
    }
    // The same fixture predicting proper probabilities runs through.
    let dir = hostile_project(&format!("[[stage]]\nid = \"labels\"\npath = \"{}\"\nsamples = \"sparse\"\nholdout = 0\n", labeller.display()));
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_features_stage_returning_no_features_a_nul_name_a_name_twice_or_a_name_short_fails_naming_stage_and_plugin() {
    let features = common::component("fixture-hostile-features");
    for (mode, message) in [
        ("none", "returned zero features; a features stage returns at least one"),
        ("nul", r#"feature 0 is named "a\0b": a name is 1 to 256 bytes without control characters"#),
        ("duplicate", "returned the feature name 'x' twice"),
        // Checked inside the sandbox by the SDK: the names are short, not the values.
        ("short", "the stage named 1 features but returned 2 values per pixel"),
    ] {
        let dir = hostile_project(&format!("[[stage]]\nid = \"odd\"\npath = \"{}\"\nparams = {{ names = \"{mode}\" }}\n", features.display()));
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {err}");
        assert!(err.contains("stage 'odd' (fixture-hostile-features@0.1.0) on chunk 0"), "{mode}: {err}");
        assert!(err.contains(message), "{mode}: {err}");
        assert!(!err.contains("GDAL") && !err.contains("NulError"), "{mode}: {err}");
    }
}

#[test]
fn a_plugin_keeping_state_between_calls_gives_the_same_bytes_run_after_run_at_two_workers() {
    let features = common::component("fixture-hostile-features");
    let stage = format!("[[stage]]\nid = \"state\"\npath = \"{}\"\nparams = {{ names = \"calls\" }}\n", features.display());
    let mut maps = Vec::new();
    for _ in 0..2 {
        // Several chunks on two workers: with reused instances, which chunk an instance
        // serves second is a race.
        let dir = hostile_project_with(&stage, "workers = 2\nchunk_size = 16\n");
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let ds = gdal::Dataset::open(dir.path().join("runs/hostile/state.tif")).unwrap();
        let values: Vec<f32> = ds.rasterband(1).unwrap().read_as::<f32>((0, 0), (64, 64), (64, 64), None).unwrap().data().to_vec();
        // Every chunk is its instance's first call.
        assert!(values.iter().all(|&v| v == 1.0), "an instance served more than one call: {:?}", values.iter().copied().fold(0f32, f32::max));
        maps.push(std::fs::read(dir.path().join("runs/hostile/state.tif")).unwrap());
    }
    assert!(maps[0] == maps[1], "the two runs' maps differ");
}

#[test]
fn a_stage_of_thousands_of_features_stays_within_the_memory_budget_in_map_and_assembly() {
    let features = common::component("fixture-hostile-features");
    let stage = format!("[[stage]]\nid = \"wide\"\npath = \"{}\"\nmemory_mib = 1024\nparams = {{ names = \"wide\", count = 4000 }}\n", features.display());
    for budget in [256, 512, 1024] {
        let dir = hostile_project_with(&stage, &format!("memory_budget_mib = {budget}\n"));
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        assert!(out.status.success(), "budget {budget}: {}", text(&out.stderr));
        let run = dir.path().join("runs/hostile");
        let m = manifest(&run);
        let peaks: Vec<String> = m["memory"]["nodes"].as_array().unwrap().iter().filter(|n| ["map", "assemble"].contains(&n["node"].as_str().unwrap())).map(|n| format!("{} {} MiB", n["node"], n["peak_rss_mib"])).collect();
        eprintln!("4000 features, budget {budget} MiB: {} px chunks, peaks {}", m["chunk_size"], peaks.join(", "));
        for node in m["memory"]["nodes"].as_array().unwrap() {
            let peak = node["peak_rss_mib"].as_f64().unwrap();
            assert!(peak <= budget as f64, "budget {budget}: node {} peaked at {peak} MiB (chunks of {} px)", node["node"], m["chunk_size"]);
            // Each node's CPU time is there for the benches (tile_year's CPU s/Mpx per node).
            assert!(node["cpu_seconds"].as_f64().is_some_and(|c| c >= 0.0), "{node}");
        }
        let map = m["memory"]["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "map").unwrap();
        assert!(map["cpu_seconds"].as_f64().unwrap() > 0.0, "the map phase ran on some CPU: {map}");
        let ds = gdal::Dataset::open(run.join("wide.tif")).unwrap();
        assert_eq!(ds.raster_count(), 4000);
        let last: Vec<f32> = ds.rasterband(4000).unwrap().read_as::<f32>((0, 63), (64, 1), (64, 1), None).unwrap().data().to_vec();
        // The fixture writes each pixel's index within its chunk (no halo here).
        let side = m["chunk_size"].as_u64().unwrap() as usize;
        let origin = (63 / side) * side;
        let width = side.min(64 - origin);
        let expected = ((63 - origin) * width + (63 - origin)) as f32;
        assert_eq!(last[63], expected, "budget {budget}: the values survive the smaller chunks and blocks ({side} px chunks)");
    }
    // A chunk size the budget cannot hold is refused before any chunk runs, saying what the stages return.
    let dir = hostile_project_with(&stage, "memory_budget_mib = 256\nchunk_size = 64\n");
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("chunk_size 64 needs about") && err.contains("bytes per pixel), over memory_budget_mib = 256"), "{err}");
}

/// A tmpfs of `mib` MiB mounted at `dir` (unmounted on drop); None where mounting is
/// not allowed (not root), which the caller reports.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, kib: u64) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={kib}k")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remounting {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_run_cleanly_and_the_rerun_recovers() {
    let (_keep, reference) = reference_run();
    let size_kib: u64 = {
        let mut total = 0;
        for entry in walkdir(reference) {
            total += std::fs::metadata(entry).unwrap().len();
        }
        total / 1024
    };
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    // Room for about half of what the run writes: it fails partway through.
    let Some(disk) = Tmpfs::mount(&mount, (size_kib / 2).max(64)) else {
        eprintln!("SKIPPED a_full_disk_fails_the_run_cleanly_and_the_rerun_recovers: cannot mount a tmpfs here (needs root)");
        return;
    };
    let run = mount.join("demo");
    let project = chain_project(&chain_pipeline(&run.display().to_string()));
    let out = sitsflow(project.path(), &["--quiet", "run", "pipeline.toml"], None);
    assert_eq!(out.status.code(), Some(1), "the run fails on a full disk: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no space left on the device holding"), "{}", text(&out.stderr));
    assert!(!run.join("manifest.json").exists());
    assert!(hashes(&run).is_empty(), "nothing under a final name: {:?}", hashes(&run).keys());

    disk.resize(size_kib * 4 + 4096);
    let out = sitsflow(project.path(), &["--quiet", "run", "pipeline.toml"], None);
    assert!(out.status.success(), "the rerun with room recovers: {}", text(&out.stderr));
    assert_manifest_matches(&run);
    assert_eq!(fingerprint(&run), fingerprint(reference));
}

#[test]
fn a_full_disk_while_the_report_is_written_names_the_file_and_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    let Some(_disk) = Tmpfs::mount(&mount, 64) else {
        eprintln!("SKIPPED a_full_disk_while_the_report_is_written_names_the_file_and_the_device: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Fill the device to the last byte, as a run's outputs would have.
    let staging = mount.join("demo/.partial/out");
    std::fs::create_dir_all(&staging).unwrap();
    {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(mount.join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
    }
    let manifest = serde_json::json!({ "pipeline": { "name": "demo" } });
    // What `run` does around the report (run.rs): the write, then the device's state.
    let result = sitsflow::fsutil::with_space_hint(sitsflow::report::write_report(&staging, &manifest, &[], &[], &[]), &staging);
    let err = format!("{:#}", result.expect_err("the device is full"));
    assert!(err.contains("no space left on the device holding"), "{err}");
    assert!(err.contains(&format!("writing {}", staging.join("report.json").display())), "{err}");
    assert!(!staging.join("report.json").exists(), "nothing half-written under the final name");
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walkdir(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn the_worker_count_never_changes_the_chunk_grid_or_the_outputs() {
    let mut runs = Vec::new();
    for workers in [1, 2, 8] {
        // No chunk_size: the layout comes from the budget, small enough for several chunks.
        let pipeline = chain_pipeline("runs/demo")
            .replace("memory_budget_mib = 1024\nchunk_size = 32", &format!("memory_budget_mib = 128\nworkers = {workers}"));
        let dir = chain_project(&pipeline);
        let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
        assert!(out.status.success(), "workers = {workers}: {}", text(&out.stderr));
        let run = dir.path().join("runs/demo");
        let m = manifest(&run);
        assert!(m["chunks"].as_u64().unwrap() > 1, "several chunks: {}", m["chunks"]);
        runs.push((workers, m["chunk_size"].clone(), fingerprint(&run), dir));
    }
    for (workers, size, print, _) in &runs[1..] {
        assert_eq!(size, &runs[0].1, "workers = {workers}: another chunk size");
        assert!(print == &runs[0].2, "workers = {workers}: other outputs than with 1 worker");
    }
}

/// The run being refused is held at a failpoint (alive, holding the lock) while the
/// second one starts, and each interrupted run is held before its signal: nothing here
/// waits on time or races a run that could finish first.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn a_second_run_into_a_busy_directory_is_refused_naming_the_holder() {
    let slow = common::component("fixture-slow-mean");
    let dir = common::project_dir();
    let pipeline = format!(
        "schema = 1\nname = \"busy\"\n\n[input]\nseries = {:?}\n\n[run]\nchunk_size = 16\nworkers = 1\n\n[[stage]]\nid = \"mean\"\npath = {:?}\nparams = {{ work = 40 }}\n",
        common::small_demo().join("series").display().to_string(),
        slow.display().to_string()
    );
    std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
    assert!(sitsflow(dir.path(), &["--quiet", "plugins", "lock", "pipeline.toml"], None).status.success());
    let mut first = common::spawn_held(command(dir.path(), &["--quiet", "run", "pipeline.toml"], None), "run::chunk_written", 1);
    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml"], None);
    let err = text(&out.stderr);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("is in use by pid {} on host", first.id())), "{err}");

    // SIGTERM and SIGINT (no handler: the process ends at once) resume like SIGKILL.
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = common::spawn_held(command(dir.path(), &["--quiet", "run", "pipeline.toml"], None), "run::chunk_written", 2);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        assert!(!dir.path().join("runs/busy/mean.tif").exists(), "signal {signal}: nothing finished-looking");
    }
    let out = sitsflow(dir.path(), &["run", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming: "), "{}", text(&out.stderr));
    let fresh = common::project_dir();
    std::fs::copy(dir.path().join("pipeline.toml"), fresh.path().join("pipeline.toml")).unwrap();
    assert!(sitsflow(fresh.path(), &["--quiet", "plugins", "lock", "pipeline.toml"], None).status.success());
    assert!(sitsflow(fresh.path(), &["--quiet", "run", "pipeline.toml"], None).status.success());
    assert_eq!(fingerprint(&dir.path().join("runs/busy")), fingerprint(&fresh.path().join("runs/busy")));
}

/// `run --shard i/3` three times side by side, then `assemble`: the same bytes as the
/// run in one process. An assembly with a shard missing is refused, naming its chunks;
/// a shard killed halfway resumes on its own.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn three_shards_and_an_assembly_give_the_bytes_of_one_run() {
    let (_keep, reference) = reference_run();
    let dir = chain_project(&chain_pipeline("runs/demo"));
    let run = dir.path().join("runs/demo");
    let spawn = |shard: &str, failpoints: Option<&str>| {
        command(dir.path(), &["--quiet", "run", "pipeline.toml", "--shard", shard], failpoints)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Shard 2 (chunks 2 and 3) is killed after its first chunk; 0 and 1 run beside it.
    let children = [spawn("0/3", None), spawn("1/3", None), spawn("2/3", Some("run::chunk_written=return"))];
    let statuses: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (i, s) in statuses[..2].iter().enumerate() {
        assert!(s.status.success(), "shard {i}/3: {}", text(&s.stderr));
    }
    assert!(was_killed(&statuses[2]), "{}", text(&statuses[2].stderr));
    assert!(hashes(&run).is_empty(), "shards publish nothing: {:?}", hashes(&run).keys());

    let out = sitsflow(dir.path(), &["--quiet", "assemble", "pipeline.toml"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    // Shard 2's two workers may finish either of its chunks first.
    assert!(
        ["(chunks 2)", "(chunks 3)"].iter().any(|c| err.contains(&format!("1 of 4 chunks are not done {c}; rerun the shards that hold them"))),
        "{err}"
    );

    let out = sitsflow(dir.path(), &["run", "pipeline.toml", "--shard", "2/3"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("shard 2/3: chunks 2..4 of 4 done"), "{}", text(&out.stderr));
    let out = sitsflow(dir.path(), &["--quiet", "assemble", "pipeline.toml"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_manifest_matches(&run);
    assert_eq!(fingerprint(&run), fingerprint(reference));

    let out = sitsflow(dir.path(), &["--quiet", "run", "pipeline.toml", "--shard", "3/3"], None);
    assert_eq!(out.status.code(), Some(2), "a bad shard is a usage error: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("shard 3/3: the index must be below the count"), "{}", text(&out.stderr));
}
