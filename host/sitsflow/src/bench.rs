//! `sitsflow bench`: run a pipeline N times and record wall and CPU time, peak memory
//! and throughput per stage, with machine and version information; compare two such
//! records as ratios.
//!
//! Each run is a child `sitsflow run` into its own output folder, so runs do not
//! resume from each other and each one's peak memory is its own (reported by the
//! child in its manifest).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(str::trim);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<f64> = meminfo.lines().find(|l| l.starts_with("MemTotal")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l[12..].trim_matches('"').to_string()));
    json!({
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": model,
        "memory_mib": mem_kib.map(|k| k / 1024.0),
        "os": os,
        "arch": std::env::consts::ARCH,
    })
}

/// Waits for `child`: whether it exited 0, and the CPU seconds (user + system) it used.
pub fn wait_with_cpu(child: std::process::Child) -> (bool, f64) {
    let (ok, cpu, _) = wait_with_usage(child);
    (ok, cpu)
}

/// Waits for `child`: whether it succeeded, its CPU seconds (user + system, every thread
/// and the children it waited for) and its peak resident memory in MiB.
pub fn wait_with_usage(child: std::process::Child) -> (bool, f64, f64) {
    // SAFETY: waits for our own child and fills a zeroed struct.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let mut status = 0;
        libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        (ok, t(usage.ru_utime) + t(usage.ru_stime), usage.ru_maxrss as f64 / 1024.0)
    }
}

/// Runs `pipeline` `runs` times (with the memory budget `budget_mib` instead of the
/// pipeline's, when given) and writes the record to `out`.
pub fn bench(pipeline: &Path, runs: usize, out: &Path, budget_mib: Option<u32>) -> Result<Value> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the sitsflow executable")?;
    let scratch = tempfile::Builder::new().prefix("sitsflow-bench-").tempdir().context("creating a scratch folder")?;
    let mut records = Vec::new();
    for i in 0..runs {
        let dir = scratch.path().join(format!("run-{i}"));
        let started = Instant::now();
        let mut command = Command::new(&exe);
        command.args(["--quiet", "run"]).arg(pipeline).arg("--output").arg(&dir);
        if let Some(budget) = budget_mib {
            command.arg("--memory-budget-mib").arg(budget.to_string());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting sitsflow run")?;
        let (succeeded, cpu_s) = wait_with_cpu(child);
        let wall_s = started.elapsed().as_secs_f64();
        if !succeeded {
            bail!("run {} of {} failed (see its messages above)", i + 1, pipeline.display());
        }
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
        let megapixels = manifest["series"]["width"].as_f64().unwrap_or(0.0) * manifest["series"]["height"].as_f64().unwrap_or(0.0) / 1e6;
        let stages: Vec<Value> = manifest["stages"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|st| {
                        let cpu = st["cpu_seconds"].as_f64().unwrap_or(0.0);
                        json!({ "id": st["id"], "plugin": st["plugin"], "cpu_s": cpu,
                                "mpx_per_cpu_s": if cpu > 0.0 { megapixels / cpu } else { 0.0 } })
                    })
                    .collect()
            })
            .unwrap_or_default();
        log::info!("run {}/{runs}: {wall_s:.2} s wall, {cpu_s:.2} s CPU, peak {:.0} MiB", i + 1, manifest["peak_rss_mib"].as_f64().unwrap_or(0.0));
        records.push(json!({
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "peak_rss_mib": manifest["peak_rss_mib"],
            "megapixels": megapixels,
            "mpx_per_s": megapixels / wall_s,
            "stages": stages,
            "outputs": manifest["outputs"],
            "memory": manifest["memory"],
        }));
    }
    let column = |key: &str| median(records.iter().filter_map(|r| r[key].as_f64()).collect());
    let stage_ids: Vec<Value> = records[0]["stages"].as_array().cloned().unwrap_or_default();
    let stage_summary: Vec<Value> = stage_ids
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let cpu = median(records.iter().filter_map(|r| r["stages"][k]["cpu_s"].as_f64()).collect());
            let mpx = median(records.iter().filter_map(|r| r["stages"][k]["mpx_per_cpu_s"].as_f64()).collect());
            json!({ "id": s["id"], "plugin": s["plugin"], "cpu_s": cpu, "mpx_per_cpu_s": mpx })
        })
        .collect();
    let record = json!({
        "bench": "sitsflow",
        "pipeline": pipeline.display().to_string(),
        "pipeline_sha256": crate::hash::sha256_file(pipeline).ok(),
        "memory_budget_mib": budget_mib,
        "runs": records,
        "median": { "wall_s": column("wall_s"), "cpu_s": column("cpu_s"), "peak_rss_mib": column("peak_rss_mib"),
                    "mpx_per_s": column("mpx_per_s"), "stages": stage_summary },
        "machine": machine(),
        "versions": { "sitsflow": env!("CARGO_PKG_VERSION"), "gdal": crate::raster::gdal_version(), "wasmtime": "48.0.8" },
    });
    crate::fsutil::write_atomic(out, serde_json::to_string_pretty(&record)?.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(record)
}

/// Runs `pipeline` once per memory budget and writes one record holding each budget's
/// run: its peak resident memory, that peak's ratio to the budget (the baseline), and
/// the node that peaked. Returns the table it prints and whether every run stayed
/// within its budget.
pub fn bench_memory(pipeline: &Path, budgets: &[u32], out: &Path) -> Result<(String, bool)> {
    let mut rows = Vec::new();
    let mut table = format!("{:>10} {:>10} {:>8} {:>10} {:>8}  {}\n", "budget MiB", "peak MiB", "peak/b", "estimate", "wall s", "highest node");
    let mut within = true;
    for &budget in budgets {
        let scratch = tempfile::Builder::new().prefix("sitsflow-bench-").tempdir().context("creating a scratch folder")?;
        let record = bench(pipeline, 1, &scratch.path().join("record.json"), Some(budget))?;
        let run = &record["runs"][0];
        let peak = run["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let ratio = peak / budget as f64;
        within &= ratio <= 1.0;
        let manifest_estimate = run["memory"]["estimate_mib"].as_f64();
        let highest = run["memory"]["highest_node"].as_str().unwrap_or("?").to_string();
        table.push_str(&format!(
            "{budget:>10} {peak:>10.0} {ratio:>7.2}x {:>10} {:>8.1}  {highest}{}\n",
            manifest_estimate.map_or("-".to_string(), |e| format!("{e:.0}")),
            run["wall_s"].as_f64().unwrap_or(f64::NAN),
            if ratio > 1.0 { "  OVER BUDGET" } else { "" }
        ));
        rows.push(json!({ "budget_mib": budget, "peak_rss_mib": peak, "peak_over_budget": ratio, "run": run }));
    }
    let record = json!({
        "bench": "sitsflow-memory",
        "pipeline": pipeline.display().to_string(),
        "pipeline_sha256": crate::hash::sha256_file(pipeline).ok(),
        "baseline": "each run's memory_budget_mib",
        "budgets": rows,
        "within_budget": within,
        "machine": machine(),
        "versions": { "sitsflow": env!("CARGO_PKG_VERSION"), "gdal": crate::raster::gdal_version(), "wasmtime": "48.0.8" },
    });
    crate::fsutil::write_atomic(out, serde_json::to_string_pretty(&record)?.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok((table, within))
}

/// The table of `b / a` ratios of two bench records' medians.
pub fn compare(a: &Path, b: &Path) -> Result<String> {
    let load = |p: &Path| -> Result<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("{}: not a sitsflow bench record", p.display()))
    };
    let (ra, rb) = (load(a)?, load(b)?);
    for (r, p) in [(&ra, a), (&rb, b)] {
        if r["bench"] != "sitsflow" {
            bail!("{}: not a sitsflow bench record", p.display());
        }
    }
    let mut out = format!("{:<28} {:>14} {:>14} {:>8}\n", "median", a.display(), b.display(), "b / a");
    let mut row = |name: &str, x: Option<f64>, y: Option<f64>| {
        if let (Some(x), Some(y)) = (x, y) {
            out.push_str(&format!("{name:<28} {x:>14.3} {y:>14.3} {:>7.2}x\n", y / x));
        }
    };
    for key in ["wall_s", "cpu_s", "peak_rss_mib", "mpx_per_s"] {
        row(key, ra["median"][key].as_f64(), rb["median"][key].as_f64());
    }
    let empty = Vec::new();
    for sa in ra["median"]["stages"].as_array().unwrap_or(&empty) {
        let sb = rb["median"]["stages"].as_array().and_then(|s| s.iter().find(|x| x["id"] == sa["id"]));
        if let Some(sb) = sb {
            let id = sa["id"].as_str().unwrap_or("?");
            row(&format!("{id} Mpx per CPU s"), sa["mpx_per_cpu_s"].as_f64(), sb["mpx_per_cpu_s"].as_f64());
        }
    }
    Ok(out)
}
