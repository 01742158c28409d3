//! Scale-out on existing engines: `sitsflow plan --engine slurm|kubernetes` writes what
//! the engine runs — never a scheduler of our own. Every shard is `sitsflow run
//! --shard i/N` in one shared run directory and the assembly is `sitsflow assemble`
//! (`run.rs`: a shard journals its chunks and resumes on its own; an assembly with a
//! chunk missing is refused, naming it), so the engine only has to run N independent
//! processes and one more after them:
//!
//! - Slurm: a job array (`--array=0-(N-1)`, `SLURM_ARRAY_TASK_ID`) and an assembly job
//!   submitted with `--dependency=afterok:<array>` and `--kill-on-invalid-dep=yes`, so a
//!   failed shard cancels the assembly instead of leaving it pending forever;
//!   `submit.sh i` reruns shard i and the assembly.
//! - Kubernetes: an Indexed Job (`completionMode: Indexed`, the index from the pod's
//!   `batch.kubernetes.io/job-completion-index` annotation, `backoffLimitPerIndex`) and an
//!   assembly Job that `submit.sh` applies once the shards' Job is complete. Manifests are
//!   JSON, which `kubectl apply -f` takes as it takes YAML.
//!
//! Every process sees the same absolute paths (a shared file system on Slurm, one
//! volume claim mounted at the same path in every pod), the same pipeline and so the
//! same memory budget and chunk grid (the run key). `SITSFLOW_WORKERS` tells each
//! process how many cores it was given.

use crate::plan::{Executor, Plan};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The engine a plan is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Slurm: a job array of shards and an assembly job.
    Slurm,
    /// Kubernetes: an Indexed Job of shards and an assembly Job.
    Kubernetes,
}

/// What `sitsflow plan` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The engine to write for.
    pub engine: Engine,
    /// Shards of the chunk phase (≥ 1).
    pub shards: usize,
    /// The folder the engine's files are written to.
    pub out: PathBuf,
    /// The sitsflow binary as the engine's nodes see it (Slurm: this binary's path, on
    /// the shared file system; Kubernetes: `sitsflow` on the image's PATH).
    pub sitsflow: Option<String>,
    /// Cores per shard (and for the assembly).
    pub cpus: u32,
    /// Slurm: `--partition`, `--account`, `--time`.
    pub partition: Option<String>,
    /// Slurm: `--account`.
    pub account: Option<String>,
    /// Slurm: `--time`.
    pub time: Option<String>,
    /// Kubernetes: the container image (sitsflow with its plugins' runtime and ONNX Runtime).
    pub image: Option<String>,
    /// Kubernetes: the namespace of the Jobs.
    pub namespace: Option<String>,
    /// Kubernetes: the PersistentVolumeClaim holding the pipeline, its inputs and the run,
    /// mounted at `mount` in every pod.
    pub claim: Option<String>,
    /// Kubernetes: where the claim is mounted in every pod.
    pub mount: Option<PathBuf>,
    /// Kubernetes: retries of one shard before the Job gives it up (`backoffLimitPerIndex`).
    pub retries: u32,
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// How to submit it, for the terminal.
    pub next: String,
}

/// The run as every process of the plan sees it.
struct Job {
    name: String,
    pipeline: String,
    run_dir: String,
    sitsflow: String,
    shards: usize,
    cpus: u32,
    memory_mib: u32,
    /// Nodes the assembly asks for: the most any recipe stage trains on (`nodes = N`).
    training_nodes: u32,
}

/// Memory a process asks of the engine: the pipeline's budget (which the run holds to)
/// plus a quarter for what the budget does not count (the binary, compiled components'
/// code, allocator slack).
pub fn memory_request_mib(budget_mib: u32) -> u32 {
    budget_mib + budget_mib.div_ceil(4).max(256)
}

/// An absolute path as text, or an error saying which path could not be made absolute.
fn absolute(what: &str, path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{what} {}", path.display()))?;
    Ok(crate::fsutil::normalize(&abs))
}

fn text(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8: an engine's script cannot name it", path.display()))
}

/// A DNS-1123 label from the pipeline's name (Job names: lower case, digits, '-').
fn dns_label(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    out.truncate(40);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "pipeline".into() } else { out }
}

/// A word quoted for bash.
fn sh(word: &str) -> String {
    shlex::try_quote(word).map(|q| q.into_owned()).unwrap_or_else(|_| format!("'{}'", word.replace('\'', "'\\''")))
}

/// Writes the engine's files for `plan` into `request.out`.
pub fn write(plan: &Plan, request: &Request) -> Result<Written> {
    if request.shards == 0 {
        bail!("--shards 0: a plan needs at least one shard");
    }
    if request.cpus == 0 {
        bail!("--cpus-per-shard 0: a shard needs a core");
    }
    let pipeline = absolute("the pipeline", &plan.pipeline)?;
    let run_dir = absolute("the run directory", &plan.output_dir)?;
    let out = absolute("--out", &request.out)?;
    if out == run_dir || out.starts_with(&run_dir) {
        bail!(
            "--out {} is inside the run directory {}: publishing the run would remove the engine's files; give the plan its own folder",
            out.display(),
            run_dir.display()
        );
    }
    let sitsflow = match (&request.sitsflow, request.engine) {
        (Some(s), _) => s.clone(),
        (None, Engine::Slurm) => text(&std::env::current_exe().context("finding this binary for the Slurm scripts (give --sitsflow)")?)?,
        (None, Engine::Kubernetes) => "sitsflow".into(),
    };
    let training_nodes = plan
        .stages
        .iter()
        .filter(|s| matches!(s.executor, Executor::Recipe(_)))
        .filter_map(|s| s.params.get("nodes").and_then(Value::as_u64))
        .max()
        .unwrap_or(1) as u32;
    let job = Job {
        name: dns_label(&plan.name),
        pipeline: text(&pipeline)?,
        run_dir: text(&run_dir)?,
        sitsflow,
        shards: request.shards,
        cpus: request.cpus,
        memory_mib: memory_request_mib(plan.memory_budget_mib),
        training_nodes,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let files = match request.engine {
        Engine::Slurm => {
            if request.shards > 1000 {
                log::warn!("{} shards: Slurm's default MaxArraySize allows arrays of 1000 tasks at most", request.shards);
            }
            std::fs::create_dir_all(out.join("logs")).with_context(|| format!("creating {}", out.join("logs").display()))?;
            vec![
                ("shards.sbatch", slurm_shards(&job, request, &out)?),
                ("assemble.sbatch", slurm_assemble(&job, request, &out)?),
                ("submit.sh", slurm_submit(&job)),
            ]
        }
        Engine::Kubernetes => {
            let Some(image) = &request.image else { bail!("--engine kubernetes needs --image: the container image with sitsflow") };
            let (Some(claim), Some(mount)) = (&request.claim, &request.mount) else {
                bail!(
                    "--engine kubernetes needs --claim and --mount: the PersistentVolumeClaim holding the pipeline, its inputs and \
                     the run, and where every pod mounts it"
                )
            };
            let mount = absolute("--mount", mount)?;
            let mut used = plan.input_paths();
            used.push(("the run directory", plan.output_dir.clone()));
            let outside: Vec<String> = used
                .into_iter()
                .filter_map(|(what, p)| absolute(what, &p).ok().filter(|p| !p.starts_with(&mount)).map(|p| format!("{what} {}", p.display())))
                .collect();
            if !outside.is_empty() {
                bail!(
                    "the pods see only the claim '{claim}' mounted at {}; {} not under it: put them on the volume, or mount it higher",
                    mount.display(),
                    outside.join(", ")
                );
            }
            let shards = kubernetes_shards(&job, request, image, claim, &text(&mount)?);
            let assemble = kubernetes_assemble(&job, request, image, claim, &text(&mount)?);
            vec![
                ("shards.json", serde_json::to_string_pretty(&shards)? + "\n"),
                ("assemble.json", serde_json::to_string_pretty(&assemble)? + "\n"),
                ("submit.sh", kubernetes_submit(&job, request)),
            ]
        }
    };
    let mut written = Vec::new();
    for (name, content) in files {
        let path = out.join(name);
        crate::fsutil::write_atomic(&path, content.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        if name.ends_with(".sh") || name.ends_with(".sbatch") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    let submit = out.join("submit.sh");
    let next = match request.engine {
        Engine::Slurm => format!(
            "submit with {0}; after a failed shard i, `{0} i` reruns it and the assembly (the shards done are kept)",
            submit.display()
        ),
        Engine::Kubernetes => format!(
            "submit with {0} (kubectl); after a failed shard, `{0}` again: the shards done finish at once, then the assembly runs",
            submit.display()
        ),
    };
    Ok(Written { files: written, next })
}

/// The `#SBATCH` lines both Slurm scripts share.
fn slurm_common(job: &Job, request: &Request, nodes: u32) -> String {
    let mut s = String::new();
    if nodes > 1 {
        // A recipe trains on several nodes: the host starts `srun torchrun` (one task per
        // node) inside this allocation (train.rs).
        let _ = writeln!(s, "#SBATCH --nodes={nodes}");
        let _ = writeln!(s, "#SBATCH --ntasks-per-node=1");
    } else {
        let _ = writeln!(s, "#SBATCH --ntasks=1");
    }
    let _ = writeln!(s, "#SBATCH --cpus-per-task={}", job.cpus);
    let _ = writeln!(s, "#SBATCH --mem={}M", job.memory_mib);
    for (flag, value) in [("partition", &request.partition), ("account", &request.account), ("time", &request.time)] {
        if let Some(v) = value {
            let _ = writeln!(s, "#SBATCH --{flag}={v}");
        }
    }
    s
}

fn slurm_shards(job: &Job, request: &Request, out: &Path) -> Result<String> {
    let n = job.shards;
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(s, "# sitsflow plan: the chunk phase of pipeline '{}' as {n} shards (a Slurm job array).", job.name);
    let _ = writeln!(s, "# Submitted by submit.sh; `submit.sh i` reruns shard i. Written by `sitsflow plan`.");
    let _ = writeln!(s, "#SBATCH --job-name=sitsflow-{}-shards", job.name);
    let _ = writeln!(s, "#SBATCH --array=0-{}", n - 1);
    s.push_str(&slurm_common(job, request, 1));
    let _ = writeln!(s, "#SBATCH --output={}", text(&out.join("logs/shard-%a.log"))?);
    s.push_str("set -euo pipefail\n");
    let _ = writeln!(s, "export SITSFLOW_WORKERS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"", job.cpus);
    let _ = writeln!(
        s,
        "exec {} run {} --output {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\"",
        sh(&job.sitsflow),
        sh(&job.pipeline),
        sh(&job.run_dir)
    );
    Ok(s)
}

fn slurm_assemble(job: &Job, request: &Request, out: &Path) -> Result<String> {
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(s, "# sitsflow plan: the assembly of pipeline '{}' after its {} shards (scene stages, report, publish).", job.name, job.shards);
    let _ = writeln!(s, "# Submitted by submit.sh with --dependency=afterok on the shards. Written by `sitsflow plan`.");
    let _ = writeln!(s, "#SBATCH --job-name=sitsflow-{}-assemble", job.name);
    s.push_str(&slurm_common(job, request, job.training_nodes));
    let _ = writeln!(s, "#SBATCH --output={}", text(&out.join("logs/assemble-%j.log"))?);
    s.push_str("set -euo pipefail\n");
    let _ = writeln!(s, "export SITSFLOW_WORKERS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"", job.cpus);
    let _ = writeln!(s, "exec {} assemble {} --output {}", sh(&job.sitsflow), sh(&job.pipeline), sh(&job.run_dir));
    Ok(s)
}

fn slurm_submit(job: &Job) -> String {
    let n = job.shards;
    format!(
        r#"#!/bin/bash
# Submits pipeline '{name}': its {n} shards as a Slurm job array, then the assembly, which
# starts only when every shard succeeded (afterok) and is cancelled at once when one
# fails (--kill-on-invalid-dep=yes): it never waits forever.
#   submit.sh            every shard, then the assembly
#   submit.sh 2 [3 ...]  those shards again (after a failure), then the assembly;
#                        shards resume from their journal, chunks done are kept
# Written by `sitsflow plan`.
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
array=()
if [ $# -gt 0 ]; then
  for i in "$@"; do
    case "$i" in ''|*[!0-9]*) echo "submit.sh: '$i' is not a shard number (0 ... {last})" >&2; exit 2 ;; esac
    if [ "$i" -ge {n} ]; then echo "submit.sh: shard $i: this plan has {n} shards (0 ... {last})" >&2; exit 2; fi
  done
  array=(--array="$(IFS=,; echo "$*")")
fi
shards="$(sbatch --parsable "${{array[@]}}" "$here/shards.sbatch")"
shards="${{shards%%;*}}"
assemble="$(sbatch --parsable --dependency="afterok:$shards" --kill-on-invalid-dep=yes "$here/assemble.sbatch")"
assemble="${{assemble%%;*}}"
echo "shards: job $shards; assembly: job $assemble (logs in $here/logs)"
"#,
        name = job.name,
        last = n - 1,
    )
}

/// Labels on both Jobs and their pods.
fn labels(job: &Job, role: &str) -> Value {
    json!({ "app.kubernetes.io/name": "sitsflow", "app.kubernetes.io/component": role, "sitsflow/pipeline": job.name })
}

fn metadata(job: &Job, request: &Request, role: &str) -> Value {
    let mut m = json!({ "name": format!("sitsflow-{}-{role}", job.name), "labels": labels(job, role) });
    if let Some(ns) = &request.namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// A container of the plan: `command`, the cores and memory, the volume.
fn container(job: &Job, name: &str, image: &str, command: Vec<String>, mut env: Vec<Value>, mount: &str) -> Value {
    env.push(json!({ "name": "SITSFLOW_WORKERS", "value": job.cpus.to_string() }));
    let memory = format!("{}Mi", job.memory_mib);
    json!({
        "name": name,
        "image": image,
        "command": command,
        "env": env,
        "resources": {
            "requests": { "cpu": job.cpus.to_string(), "memory": memory },
            "limits": { "memory": memory }
        },
        "volumeMounts": [{ "name": "data", "mountPath": mount }]
    })
}

fn volumes(claim: &str) -> Value {
    json!([{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }])
}

/// The shards: an Indexed Job, the shard number from the pod's completion index.
fn kubernetes_shards(job: &Job, request: &Request, image: &str, claim: &str, mount: &str) -> Value {
    let n = job.shards;
    let command = vec![
        job.sitsflow.clone(),
        "run".into(),
        job.pipeline.clone(),
        "--output".into(),
        job.run_dir.clone(),
        "--shard".into(),
        // Kubernetes expands $(VAR) from the container's env.
        format!("$(SITSFLOW_SHARD)/{n}"),
    ];
    let env = vec![json!({
        "name": "SITSFLOW_SHARD",
        "valueFrom": { "fieldRef": { "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']" } }
    })];
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job, request, "shards"),
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            // Each shard is retried on its own; one failing shard does not stop the others.
            "backoffLimitPerIndex": request.retries,
            "template": {
                "metadata": { "labels": labels(job, "shards") },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container(job, "shard", image, command, env, mount)],
                    "volumes": volumes(claim)
                }
            }
        }
    })
}

/// The assembly: one pod, after the shards' Job is complete (submit.sh waits for it).
fn kubernetes_assemble(job: &Job, request: &Request, image: &str, claim: &str, mount: &str) -> Value {
    let command = vec![job.sitsflow.clone(), "assemble".into(), job.pipeline.clone(), "--output".into(), job.run_dir.clone()];
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job, request, "assemble"),
        "spec": {
            "completions": 1,
            "backoffLimit": request.retries,
            "template": {
                "metadata": { "labels": labels(job, "assemble") },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container(job, "assemble", image, command, Vec::new(), mount)],
                    "volumes": volumes(claim)
                }
            }
        }
    })
}

fn kubernetes_submit(job: &Job, request: &Request) -> String {
    let ns = request.namespace.as_ref().map(|n| format!(" --namespace {}", sh(n))).unwrap_or_default();
    format!(
        r#"#!/bin/bash
# Submits pipeline '{name}' to Kubernetes: its {n} shards as an Indexed Job, then, once
# that Job is complete, the assembly Job. When a shard fails for good the assembly is
# not started and this script exits 1; run it again after the fix: the shards done
# resume from their journal and finish at once.
# Written by `sitsflow plan`.
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
kube() {{ kubectl{ns} "$@"; }}
# Waits for Job $1 to be Complete (0) or Failed (1).
wait_job() {{
  while true; do
    state="$(kube get job "$1" -o jsonpath='{{.status.conditions[?(@.status=="True")].type}}')"
    case " $state " in
      *" Complete "*) return 0 ;;
      *" Failed "*)
        echo "submit.sh: job $1 failed (failed shards: $(kube get job "$1" -o jsonpath='{{.status.failedIndexes}}'))" >&2
        return 1 ;;
    esac
    sleep 10
  done
}}
kube delete job --ignore-not-found sitsflow-{name}-shards sitsflow-{name}-assemble
kube apply -f "$here/shards.json"
wait_job sitsflow-{name}-shards || {{ echo "submit.sh: the assembly is not started; fix the failed shards and run submit.sh again" >&2; exit 1; }}
kube apply -f "$here/assemble.json"
wait_job sitsflow-{name}-assemble
echo "submit.sh: pipeline '{name}' is assembled"
"#,
        name = job.name,
        n = job.shards,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(dns_label("Demo FG_UNet 2020"), "demo-fg-unet-2020");
        assert_eq!(dns_label("--"), "pipeline");
        assert!(dns_label(&"x".repeat(100)).len() <= 40);
    }

    #[test]
    fn memory_request_leaves_room_beside_the_budget() {
        assert_eq!(memory_request_mib(1024), 1280);
        assert_eq!(memory_request_mib(512), 768);
        assert_eq!(memory_request_mib(8192), 10240);
    }

    fn job(training_nodes: u32) -> Job {
        Job {
            name: "demo".into(),
            pipeline: "/shared/demo.toml".into(),
            run_dir: "/shared/runs/demo 1".into(),
            sitsflow: "/opt/sitsflow".into(),
            shards: 8,
            cpus: 4,
            memory_mib: 1280,
            training_nodes,
        }
    }

    fn request() -> Request {
        Request {
            engine: Engine::Slurm,
            shards: 8,
            out: "/shared/plan".into(),
            sitsflow: None,
            cpus: 4,
            partition: Some("batch".into()),
            account: None,
            time: Some("02:00:00".into()),
            image: None,
            namespace: None,
            claim: None,
            mount: None,
            retries: 2,
        }
    }

    #[test]
    fn slurm_scripts_ask_for_the_shards_cores_memory_and_training_nodes() {
        let out = Path::new("/shared/plan");
        let shards = slurm_shards(&job(1), &request(), out).unwrap();
        for line in ["#SBATCH --array=0-7\n", "#SBATCH --ntasks=1\n", "#SBATCH --cpus-per-task=4\n", "#SBATCH --mem=1280M\n",
            "#SBATCH --partition=batch\n", "#SBATCH --time=02:00:00\n", "#SBATCH --output=/shared/plan/logs/shard-%a.log\n",
            "exec /opt/sitsflow run /shared/demo.toml --output '/shared/runs/demo 1' --shard \"${SLURM_ARRAY_TASK_ID}/8\"\n"]
        {
            assert!(shards.contains(line), "{line:?} in\n{shards}");
        }
        let assemble = slurm_assemble(&job(1), &request(), out).unwrap();
        assert!(assemble.contains("#SBATCH --ntasks=1\n") && !assemble.contains("--nodes"), "{assemble}");
        // A recipe with nodes = 3: one task per node, for srun torchrun.
        let assemble = slurm_assemble(&job(3), &request(), out).unwrap();
        assert!(assemble.contains("#SBATCH --nodes=3\n#SBATCH --ntasks-per-node=1\n") && !assemble.contains("--ntasks=1"), "{assemble}");
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(sh("/a b/c"), "'/a b/c'");
        assert_eq!(sh("/plain/path"), "/plain/path");
    }
}
