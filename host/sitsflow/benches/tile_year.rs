//! The tile-year figure (seed 001 at scale): the demo chain — SCL mask → index statistics
//! → k-means reliable samples → random-forest pseudo-labels → multi-year agreement →
//! final random forest → Markov consistency, with its evaluations and report — on
//! generated series of growing size, then the same run as 4 Slurm shards.
//!
//! `cargo bench -p sitsflow --bench tile_year [-- SIZE ... [--budget MIB] [--no-slurm]]`
//! (default sizes 1024 2048, budget 2048 MiB). Each size is a SIZE² demo series of 3 years
//! × 20 dates × 11 bands (10 reflectance bands as UInt16 digital numbers with L2A's offset,
//! as Sentinel-2 L2A COGs carry them, + SCL), generated once into
//! `target/bench/tile-year-SIZE/`. Each run is a child `sitsflow run`; its manifest gives
//! every graph node's wall and CPU seconds (the process's threads and the children it
//! waited for) and peak resident memory, and every stage's CPU seconds inside the sandbox.
//! Printed per size: wall and CPU seconds per megapixel per node, the peak against the budget,
//! and the projection to one 10 980² Sentinel-2 tile-year (120.6 Mpx, one of the 3 years)
//! on this machine's cores and per core (CPU seconds). The baseline of the Slurm part is
//! the unsharded run of the smallest size, measured in the same invocation: the same
//! pipeline as a 4-shard array (1 core each) + assembly on a private one-node Slurm
//! (`scripts/slurm-local.sh`), its wall time from submission to the assembly's end, and
//! its outputs checked byte for byte against the unsharded run's. Then the map phase of the
//! smallest size against GDAL decoding the same band-dates on every core plus the chunk
//! stages' CPU. Last, one year of the
//! smallest size through `scripts/bench/user_chain.toml` and through the Python script a
//! user would write instead (`scripts/bench/python_chain.py`; its packages from
//! `scripts/setup-bench.sh`), with the ratios.
//! Writes `target/bench/tile-year.json`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One Sentinel-2 tile: 10 980 × 10 980 px at 10 m.
const TILE_MPX: f64 = 10980.0 * 10980.0 / 1e6;
const YEARS: f64 = 3.0;
const DATES_PER_YEAR: usize = 20;

fn sitsflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sitsflow"));
    command.env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache")).env_remove("FAILPOINTS");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The generated series of `size`² px and a project folder running the demo chain on it.
fn prepare(size: usize, budget: u32) -> PathBuf {
    let root = common::workspace().join(format!("target/bench/tile-year-{size}"));
    // UInt16 digital numbers as L2A COGs carry them (`demo-data --dn`).
    let data = root.join("data-dn");
    if !data.join("reference.tif").exists() {
        eprintln!("generating a {size}² demo series of 3 × {DATES_PER_YEAR} dates (UInt16 DN) into {}", data.display());
        let _ = std::fs::remove_dir_all(&data);
        let options = sitsflow::demo::DemoOptions { size, dates_per_year: DATES_PER_YEAR, dn: true, ..Default::default() };
        sitsflow::demo::generate(&data, &options).expect("generating the series");
    }
    let project = root.join("project");
    // The demo chain's plugins, and the sampler of the user's chain (`python_comparison`).
    let installed = |name: &str| {
        std::fs::read_dir(project.join("plugins")).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(name)))
    };
    if !installed("stratified-samples@") {
        let _ = std::fs::remove_dir_all(&project);
        std::fs::create_dir_all(project.join("nomenclature")).unwrap();
        let plugins = sitsflow::plugins::PluginDir::new(project.join("plugins"));
        for shipped in ["scl-mask", "indices", "kmeans", "reliable-samples", "random-forest", "agreement-samples", "markov", "stratified-samples"] {
            plugins.install(&common::runtime(), &common::component(shipped), false).expect("installing a shipped plugin");
        }
        for entry in std::fs::read_dir(common::workspace().join("configs/nomenclature")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, project.join("nomenclature").join(path.file_name().unwrap())).unwrap();
        }
    }
    let pipeline = std::fs::read_to_string(common::workspace().join("configs/demo.toml"))
        .unwrap()
        .replace("../data/demo", &data.display().to_string())
        .replace("dir = \"../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../runs/demo\"", "dir = \"runs/whole\"")
        .replace("memory_budget_mib = 1024", &format!("memory_budget_mib = {budget}"));
    std::fs::write(project.join("pipeline.toml"), pipeline).unwrap();
    let out = sitsflow().current_dir(&project).args(["--quiet", "plugins", "lock", "pipeline.toml"]).output().unwrap();
    assert!(out.status.success(), "locking: {}", text(&out.stderr));
    project
}

/// Runs the pipeline once in `project` into `runs/whole`: (wall s, CPU s, manifest).
fn run_whole(project: &Path) -> (f64, f64, Value) {
    let run = project.join("runs/whole");
    let _ = std::fs::remove_dir_all(&run);
    let started = Instant::now();
    let child = sitsflow().current_dir(project).args(["--quiet", "run", "pipeline.toml"]).stdout(Stdio::null()).spawn().unwrap();
    let (succeeded, cpu_s) = sitsflow::bench::wait_with_cpu(child);
    let wall = started.elapsed().as_secs_f64();
    assert!(succeeded, "the run in {} failed", project.display());
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    (wall, cpu_s, manifest)
}

/// sha256 of every output the manifest lists, by file name.
fn output_hashes(manifest: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let path = o["path"].as_str().unwrap();
            (Path::new(path).file_name().unwrap().to_string_lossy().into_owned(), o["sha256"].as_str().unwrap().to_string())
        })
        .collect();
    out.sort();
    out
}

/// The same pipeline as 4 Slurm shards + assembly: wall seconds from submission to the
/// assembly's end, and the assembled run's manifest.
fn run_slurm(project: &Path) -> Option<(f64, Value)> {
    let installed = ["slurmctld", "slurmd", "munged", "sbatch"]
        .iter()
        .all(|t| Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success()));
    if !installed {
        eprintln!("Slurm is not installed (scripts/setup-scaleout.sh): the sharded run is skipped");
        return None;
    }
    let cluster = tempfile::tempdir().unwrap();
    let script = common::workspace().join("scripts/slurm-local.sh");
    let out = Command::new("bash").arg(&script).arg("start").arg(cluster.path()).output().unwrap();
    assert!(out.status.success(), "starting Slurm: {}", text(&out.stderr));
    let conf = cluster.path().join("slurm.conf");
    let result = (|| {
        let run = project.join("runs/sharded");
        let _ = std::fs::remove_dir_all(&run);
        let plan = project.join("slurm");
        let out = sitsflow()
            .current_dir(project)
            .args(["--quiet", "plan", "pipeline.toml", "--engine", "slurm", "--shards", "4", "--cpus-per-shard", "1", "--out", "slurm", "--output", "runs/sharded"])
            .output()
            .unwrap();
        assert!(out.status.success(), "plan: {}", text(&out.stderr));
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(plan.join("submit.sh"))
            .env("SLURM_CONF", &conf)
            .env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"))
            .env_remove("FAILPOINTS")
            .output()
            .unwrap();
        assert!(out.status.success(), "submit.sh: {}", text(&out.stderr));
        let ids: Vec<String> =
            text(&out.stdout).split("job ").skip(1).map(|r| r.chars().take_while(char::is_ascii_digit).collect()).collect();
        loop {
            let q = Command::new("squeue").env("SLURM_CONF", &conf).args(["-h", "-j", &ids.join(",")]).output().unwrap();
            if text(&q.stdout).trim().is_empty() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(3 * 3600), "the sharded run did not finish");
            std::thread::sleep(Duration::from_millis(250));
        }
        let wall = started.elapsed().as_secs_f64();
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("manifest.json")).unwrap_or_else(|_| panic!("no manifest: see {}/logs", plan.display())),
        )
        .unwrap();
        (wall, manifest)
    })();
    let _ = Command::new("bash").arg(&script).arg("stop").arg(cluster.path()).output();
    Some(result)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1024, 2048];
    }
    sizes.sort();
    let budget: u32 = args.iter().position(|a| a == "--budget").and_then(|i| args.get(i + 1)).and_then(|b| b.parse().ok()).unwrap_or(2048);
    let slurm = !args.iter().any(|a| a == "--no-slurm");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut records = Vec::new();
    let mut first: Option<(PathBuf, f64, Value)> = None;
    for &size in &sizes {
        let project = prepare(size, budget);
        eprintln!("running the chain on {size}² × {} dates", 3 * DATES_PER_YEAR);
        let (wall, cpu, manifest) = run_whole(&project);
        let mpx = (size * size) as f64 / 1e6;
        let nodes: Vec<Value> = manifest["memory"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let s = n["seconds"].as_f64().unwrap_or(0.0);
                let c = n["cpu_seconds"].as_f64().unwrap_or(0.0);
                json!({
                    "node": n["node"],
                    "seconds": s,
                    "s_per_mpx_year": s / mpx / YEARS,
                    "cpu_seconds": c,
                    "cpu_s_per_mpx_year": c / mpx / YEARS,
                    "peak_rss_mib": n["peak_rss_mib"],
                })
            })
            .collect();
        let stages: Vec<Value> = manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let c = s["cpu_seconds"].as_f64().unwrap_or(0.0);
                json!({ "stage": s["id"], "cpu_seconds": c, "cpu_s_per_mpx_year": c / mpx / YEARS })
            })
            .collect();
        let peak = manifest["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let record = json!({
            "size": size,
            "megapixels": mpx,
            "dates": manifest["series"]["dates"].as_array().map_or(0, Vec::len),
            "bands": manifest["series"]["bands"].as_array().map_or(0, Vec::len),
            "chunks": manifest["chunks"],
            "workers": manifest["workers"],
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mib": peak,
            "budget_mib": budget,
            "peak_of_budget": peak / budget as f64,
            "tile_year_projection": {
                "wall_minutes_on_this_machine": wall / mpx / YEARS * TILE_MPX / 60.0,
                "cpu_minutes": cpu / mpx / YEARS * TILE_MPX / 60.0,
                "cores": cores,
            },
            "nodes": nodes,
            "stages": stages,
        });
        if first.is_none() {
            first = Some((project.clone(), wall, manifest.clone()));
        }
        records.push(record);
    }

    let sharded = if slurm {
        let (project, whole_wall, whole_manifest) = first.clone().unwrap();
        run_slurm(&project).map(|(wall, manifest)| {
            let identical = output_hashes(&manifest) == output_hashes(&whole_manifest);
            json!({
                "size": sizes[0],
                "shards": 4,
                "cpus_per_shard": 1,
                "wall_s": wall,
                "baseline": "the unsharded run of the same size in this invocation",
                "baseline_wall_s": whole_wall,
                "ratio": wall / whole_wall,
                "outputs_identical": identical,
            })
        })
    } else {
        None
    };

    // The table docs/scale-out.md shows.
    println!("| size | dates × bands | wall s | CPU s | peak MiB (budget) | tile-year wall min ({cores} cores) | tile-year CPU min |");
    println!("|---|---|---|---|---|---|---|");
    for r in &records {
        println!(
            "| {0}² | {1} × {2} | {3:.1} | {4:.1} | {5:.0} ({6}) | {7:.1} | {8:.1} |",
            r["size"],
            r["dates"],
            r["bands"],
            r["wall_s"].as_f64().unwrap(),
            r["cpu_s"].as_f64().unwrap(),
            r["peak_rss_mib"].as_f64().unwrap(),
            budget,
            r["tile_year_projection"]["wall_minutes_on_this_machine"].as_f64().unwrap(),
            r["tile_year_projection"]["cpu_minutes"].as_f64().unwrap()
        );
    }
    println!();
    per_size_table(&records, "node", "s/Mpx/year", ("nodes", "node", "s_per_mpx_year"));
    println!();
    per_size_table(&records, "node", "CPU s/Mpx/year", ("nodes", "node", "cpu_s_per_mpx_year"));
    println!();
    per_size_table(&records, "stage (inside the sandbox)", "CPU s/Mpx/year", ("stages", "stage", "cpu_s_per_mpx_year"));
    if let Some(s) = &sharded {
        println!();
        println!(
            "Slurm, {}²: 4 shards × 1 core + assembly {:.1} s against {:.1} s unsharded on {cores} cores: {:.2}× (outputs identical: {})",
            s["size"],
            s["wall_s"].as_f64().unwrap(),
            s["baseline_wall_s"].as_f64().unwrap(),
            s["ratio"].as_f64().unwrap(),
            s["outputs_identical"]
        );
    }
    // The map phase against GDAL decoding the same band-dates plus the stages' CPU.
    let decode = gdal_decode_baseline(sizes[0], cores);
    let first_record = &records[0];
    let map_wall = first_record["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "map").and_then(|n| n["seconds"].as_f64()).unwrap_or(f64::NAN);
    // The chunk stages (cloud mask, indices) run in the map phase; the others are scene stages.
    let chunk_stage_cpu: f64 = first_record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| ["clouds", "features"].contains(&s["stage"].as_str().unwrap_or("")))
        .filter_map(|s| s["cpu_seconds"].as_f64())
        .sum();
    let floor = decode["wall_s"].as_f64().unwrap() + chunk_stage_cpu / cores as f64;
    let decode_ratio = json!({
        "size": sizes[0],
        "gdal_decode": decode,
        "chunk_stages_cpu_s": chunk_stage_cpu,
        "floor_s": floor,
        "map_wall_s": map_wall,
        "ratio": map_wall / floor,
        "rule": "the map phase's wall seconds against GDAL decoding every band-date on all cores plus the chunk stages' CPU seconds spread over the cores",
    });
    println!();
    println!(
        "Map phase, {}²: {:.1} s against GDAL decoding the {} band-dates on {cores} threads ({:.1} s) + the chunk stages' {:.1} CPU s over {cores} cores = {:.1} s: {:.2}×",
        sizes[0],
        map_wall,
        decode["band_dates"],
        decode["wall_s"].as_f64().unwrap(),
        chunk_stage_cpu,
        floor,
        map_wall / floor
    );
    let python = python_comparison(sizes[0]);
    if let Some(p) = &python {
        println!();
        println!(
            "Against the Python script, {}², one year: sitsflow {:.1} s wall / {:.1} s CPU / {:.0} MiB, the script {:.1} s / {:.1} s / {:.0} MiB: sitsflow {:.2}× as fast (wall), {:.2}× (CPU), at {:.2}× its memory",
            p["size"],
            p["sitsflow"]["wall_s"].as_f64().unwrap(),
            p["sitsflow"]["cpu_s"].as_f64().unwrap(),
            p["sitsflow"]["peak_rss_mib"].as_f64().unwrap(),
            p["python"]["wall_s"].as_f64().unwrap(),
            p["python"]["cpu_s"].as_f64().unwrap(),
            p["python"]["peak_rss_mib"].as_f64().unwrap(),
            p["speedup_wall"].as_f64().unwrap(),
            p["speedup_cpu"].as_f64().unwrap(),
            p["memory_ratio"].as_f64().unwrap(),
        );
    }
    let record = json!({
        "bench": "tile-year",
        "python_chain": python,
        "map_against_gdal_decoding": decode_ratio,
        "pipeline": "configs/demo.toml (seed 001 chain), paths and budget replaced",
        "machine": { "cores": cores },
        "sizes": records,
        "slurm": sharded,
    });
    let out = common::workspace().join("target/bench/tile-year.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, serde_json::to_string_pretty(&record).unwrap()).unwrap();
    eprintln!("wrote {}", out.display());
}

/// GDAL's own decoding of every band-date of the `size`² series (whole bands, the files
/// dealt out to `cores` threads, each with its own handles): wall and CPU seconds. The
/// floor the chunk phase's reading is measured against (issue #36: the map phase within
/// 1.5× of this plus the stages' CPU).
fn gdal_decode_baseline(size: usize, cores: usize) -> Value {
    let series = common::workspace().join(format!("target/bench/tile-year-{size}/data-dn/series"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "tif")).collect();
    files.sort();
    let cpu_before = sitsflow::memory::cpu_seconds();
    let started = Instant::now();
    let band_dates: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|t| {
                let files = &files;
                scope.spawn(move || {
                    let mut read = 0;
                    for path in files.iter().skip(t).step_by(cores) {
                        let ds = gdal::Dataset::open(path).unwrap();
                        let (w, h) = ds.raster_size();
                        for b in 1..=ds.raster_count() {
                            let buffer = ds.rasterband(b).unwrap().read_as::<u16>((0, 0), (w, h), (w, h), None).unwrap();
                            std::hint::black_box(buffer.data().iter().map(|&v| v as u64).sum::<u64>());
                            read += 1;
                        }
                    }
                    read
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let wall = started.elapsed().as_secs_f64();
    json!({ "band_dates": band_dates, "threads": cores, "wall_s": wall, "cpu_s": sitsflow::memory::cpu_seconds() - cpu_before })
}

/// One year (2018) of the `size`² series through `scripts/bench/user_chain.toml` and through
/// `scripts/bench/python_chain.py`, the script a user would write instead (issue #36), one
/// after the other: wall and CPU seconds and peak memory of each, and their ratios. None
/// (and a line saying how to get it) when the script's packages are not installed.
fn python_comparison(size: usize) -> Option<Value> {
    let workspace = common::workspace();
    let packages = workspace.join(".deps/bench-python");
    let script = workspace.join("scripts/bench/python_chain.py");
    let check = Command::new("python3").args(["-c", "import rasterio, scipy, sklearn"]).env("PYTHONPATH", &packages).output();
    if !check.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping the comparison with the Python script: run `bash scripts/setup-bench.sh` to install its packages");
        return None;
    }
    let root = workspace.join(format!("target/bench/tile-year-{size}"));
    let (data, project) = (root.join("data-dn"), root.join("project"));
    let pipeline = std::fs::read_to_string(workspace.join("scripts/bench/user_chain.toml"))
        .unwrap()
        .replace("../../target/bench/tile-year-1024/data-dn", &data.display().to_string())
        .replace("dir = \"../../plugins/dist\"", "dir = \"plugins\"")
        .replace("dir = \"../../target/bench/user-chain\"", "dir = \"runs/user-chain\"");
    std::fs::write(project.join("user-chain.toml"), pipeline).unwrap();
    let out = sitsflow().current_dir(&project).args(["--quiet", "plugins", "lock", "user-chain.toml"]).output().unwrap();
    assert!(out.status.success(), "locking: {}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(project.join("runs/user-chain"));
    let measure = |mut command: Command| {
        let started = Instant::now();
        let (ok, cpu, peak) = sitsflow::bench::wait_with_usage(command.stdout(Stdio::null()).spawn().unwrap());
        assert!(ok, "{command:?} failed");
        json!({ "wall_s": started.elapsed().as_secs_f64(), "cpu_s": cpu, "peak_rss_mib": peak })
    };
    eprintln!("the same job by sitsflow and by the Python script, {size}², one year");
    let mut ours = sitsflow();
    ours.current_dir(&project).args(["--quiet", "run", "user-chain.toml"]);
    let ours = measure(ours);
    let mut theirs = Command::new("python3");
    theirs.arg(&script).arg(&data).arg("2018").arg(root.join("python-map.tif")).env("PYTHONPATH", &packages);
    let theirs = measure(theirs);
    let ratio = |key: &str| theirs[key].as_f64().unwrap() / ours[key].as_f64().unwrap();
    Some(json!({
        "job": "scripts/bench/user_chain.toml against scripts/bench/python_chain.py, 2018",
        "size": size,
        "sitsflow": ours,
        "python": theirs,
        "speedup_wall": ratio("wall_s"),
        "speedup_cpu": ratio("cpu_s"),
        "memory_ratio": 1.0 / ratio("peak_rss_mib"),
    }))
}

/// A Markdown table with a row per entry of `records[0][list]` (named by its `name`
/// field) and a column per record (scene size) holding each entry's `value`.
fn per_size_table(records: &[Value], first: &str, unit: &str, (list, name, value): (&str, &str, &str)) {
    let header: Vec<String> = records.iter().map(|r| format!("{}² {unit}", r["size"])).collect();
    println!("| {first} | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(records.len()));
    for (k, entry) in records[0][list].as_array().unwrap().iter().enumerate() {
        let cells: Vec<String> = records.iter().map(|r| format!("{:.2}", r[list][k][value].as_f64().unwrap_or(f64::NAN))).collect();
        println!("| {} | {} |", entry[name].as_str().unwrap_or("?"), cells.join(" | "));
    }
}
