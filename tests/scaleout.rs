//! Scale-out on existing engines (`sitsflow plan`): the demo chain as a 4-shard Slurm job
//! array and a dependent assembly on a real (private, one-node) Slurm cluster gives the
//! bytes of one unsharded run; a killed shard cancels the assembly instead of leaving it
//! pending, and rerunning that shard and the assembly finishes the run. The Kubernetes
//! manifests validate against the API's schemas and their contract (N processes with
//! their completion index, then the assembly) gives the same bytes.
//!
//! The Slurm packages and kubernetes-validate come from `scripts/setup-scaleout.sh`
//! (`scripts/test.sh` runs it).

use crate::common;
use crate::faults::{chain_pipeline, chain_project, fingerprint, reference_run, sitsflow, text};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private Slurm cluster (`scripts/slurm-local.sh`), stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        for tool in ["slurmctld", "slurmd", "munged", "sbatch"] {
            assert!(
                Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success(),
                "{tool} is not installed: run scripts/setup-scaleout.sh (scripts/test.sh does)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(common::workspace().join("scripts/slurm-local.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "starting the local Slurm cluster: {}", text(&out.stderr));
        let conf = dir.path().join("slurm.conf");
        Cluster { dir, conf }
    }

    /// A Slurm client command against this cluster.
    fn client(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// `scontrol show job <id>`'s `JobState` and `Reason`.
    fn state(&self, id: &str) -> (String, String) {
        let out = self.client("scontrol").args(["show", "job", id]).output().unwrap();
        let shown = text(&out.stdout);
        let field = |name: &str| {
            shown
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} for job {id}: {shown}{}", text(&out.stderr)))
                .to_string()
        };
        (field("JobState"), field("Reason"))
    }

    /// Waits until none of `ids` is pending or running (five minutes at most).
    fn wait(&self, ids: &[&str]) {
        let started = Instant::now();
        loop {
            let out = self.client("squeue").args(["-h", "-o", "%i %T", "-j", &ids.join(",")]).output().unwrap();
            if text(&out.stdout).trim().is_empty() {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "jobs {ids:?} still queued: {}", text(&out.stdout));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs a plan's `submit.sh` (with `args`): (array job, assembly job).
    fn submit(&self, plan: &Path, project: &Path, args: &[&str]) -> (String, String) {
        let out = self
            .client("bash")
            .arg(plan.join("submit.sh"))
            .args(args)
            .env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"))
            .env_remove("FAILPOINTS")
            .current_dir(project)
            .output()
            .unwrap();
        assert!(out.status.success(), "submit.sh {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        // "shards: job 12; assembly: job 13 (logs in …)"
        let line = text(&out.stdout);
        let ids: Vec<String> = line
            .split("job ")
            .skip(1)
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
            .collect();
        assert_eq!(ids.len(), 2, "submit.sh printed {line}");
        (ids[0].clone(), ids[1].clone())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(common::workspace().join("scripts/slurm-local.sh")).arg("stop").arg(self.dir.path()).output();
    }
}

/// The logs of a plan's jobs, for failure messages.
fn logs(plan: &Path) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(plan.join("logs")) {
        for entry in entries.flatten() {
            all += &format!("== {}\n{}\n", entry.path().display(), std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

/// `sitsflow plan` in `project` with `args` after the pipeline.
fn plan(project: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--quiet", "plan", "pipeline.toml"];
    all.extend_from_slice(args);
    sitsflow(project, &all, None)
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (scripts/test.sh sets it)")]
fn a_slurm_array_of_four_shards_and_a_dependent_assembly_give_the_bytes_of_one_run() {
    let (_keep, reference) = reference_run();
    let expected = fingerprint(reference);
    let cluster = Cluster::start();

    // Every shard succeeds: the array, then the assembly, the bytes of the one-process run.
    let project = chain_project(&chain_pipeline("runs/demo"));
    let plan_dir = project.path().join("slurm");
    let out = plan(project.path(), &["--engine", "slurm", "--shards", "4", "--out", "slurm", "--cpus-per-shard", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = std::fs::read_to_string(plan_dir.join("shards.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-3\n") && script.contains("--shard \"${SLURM_ARRAY_TASK_ID}/4\""), "{script}");
    let (shards, assemble) = cluster.submit(&plan_dir, project.path(), &[]);
    cluster.wait(&[&shards, &assemble]);
    assert_eq!(cluster.state(&assemble).0, "COMPLETED", "{}", logs(&plan_dir));
    for i in 0..4 {
        assert_eq!(cluster.state(&format!("{shards}_{i}")).0, "COMPLETED", "shard {i}: {}", logs(&plan_dir));
    }
    assert_eq!(fingerprint(&project.path().join("runs/demo")), expected, "four Slurm shards + assembly = one run");

    // Shard 2 is killed halfway (after its first chunk is written): the assembly is
    // cancelled at once, nothing is published; `submit.sh 2` reruns it and the assembly.
    let project = chain_project(&chain_pipeline("runs/demo"));
    let plan_dir = project.path().join("slurm");
    let marker = project.path().join("kill-shard-2");
    std::fs::write(&marker, "").unwrap();
    let wrapper = project.path().join("sitsflow-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\nif [ \"${{SLURM_ARRAY_TASK_ID:-}}\" = 2 ] && [ -e {marker:?} ]; then export FAILPOINTS=run::chunk_written=return; fi\nexec {:?} \"$@\"\n",
            env!("CARGO_BIN_EXE_sitsflow")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = plan(
        project.path(),
        &["--engine", "slurm", "--shards", "4", "--out", "slurm", "--cpus-per-shard", "1", "--sitsflow", wrapper.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (shards, assemble) = cluster.submit(&plan_dir, project.path(), &[]);
    cluster.wait(&[&shards, &assemble]);
    assert_eq!(cluster.state(&format!("{shards}_2")).0, "FAILED", "{}", logs(&plan_dir));
    assert_eq!(
        cluster.state(&assemble),
        ("CANCELLED".to_string(), "DependencyNeverSatisfied".to_string()),
        "the assembly is cancelled, not left pending"
    );
    let run = project.path().join("runs/demo");
    assert!(!run.join("manifest.json").exists(), "nothing is published while a shard is missing");

    std::fs::remove_file(&marker).unwrap();
    let (shards, assemble) = cluster.submit(&plan_dir, project.path(), &["2"]);
    cluster.wait(&[&shards, &assemble]);
    assert_eq!(cluster.state(&assemble).0, "COMPLETED", "{}", logs(&plan_dir));
    assert_eq!(fingerprint(&run), expected, "a rerun shard + assembly = one run");

    // A shard number outside the plan is refused before anything is submitted.
    let out = cluster.client("bash").arg(plan_dir.join("submit.sh")).arg("4").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("shard 4: this plan has 4 shards (0 ... 3)"), "{}", text(&out.stderr));
}

/// The deepest folder holding every path.
fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let mut base = paths[0].to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&base)) {
        assert!(base.pop(), "no common ancestor");
    }
    base
}

/// Expands Kubernetes' `$(VAR)` references from a container's env.
fn expand(word: &str, env: &[(String, String)]) -> String {
    let mut out = word.to_string();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(!out.contains("$("), "{word}: a reference the container's env does not define");
    out
}

/// A pod's container env as the kubelet gives it: literal values, and the completion
/// index for the `job-completion-index` annotation.
fn pod_env(container: &Value, index: usize) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
                assert_eq!(path, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
                index.to_string()
            };
            (name, value)
        })
        .collect()
}

#[test]
fn kubernetes_manifests_validate_and_their_indexed_contract_gives_the_bytes_of_one_run() {
    let (_keep, reference) = reference_run();
    let project = chain_project(&chain_pipeline("runs/demo"));
    let project_path = std::fs::canonicalize(project.path()).unwrap();
    let demo = std::fs::canonicalize(common::small_demo()).unwrap();
    let mount = common_ancestor(&[&project_path, &demo]);
    let bin = env!("CARGO_BIN_EXE_sitsflow");

    // The volume must hold every path the pods use: a mount that misses the input is refused.
    let out = plan(
        project.path(),
        &["--engine", "kubernetes", "--shards", "4", "--out", "k8s", "--image", "sitsflow:test", "--claim", "data", "--mount", project_path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the series folder ") && text(&out.stderr).contains("not under it"), "{}", text(&out.stderr));

    let out = plan(
        project.path(),
        &[
            "--engine", "kubernetes", "--shards", "4", "--out", "k8s", "--image", "sitsflow:test", "--claim", "data",
            "--mount", mount.to_str().unwrap(), "--sitsflow", bin, "--namespace", "eo", "--cpus-per-shard", "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let k8s = project.path().join("k8s");

    // Against the API's own schemas (kubernetes-validate, offline), strictly: no unknown field.
    let validate = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.33.0"])
        .arg(k8s.join("shards.json"))
        .arg(k8s.join("assemble.json"))
        .env("PYTHONPATH", common::workspace().join(".deps/k8s-python"))
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "kubernetes-validate (scripts/setup-scaleout.sh installs it): {}{}",
        text(&validate.stdout),
        text(&validate.stderr)
    );
    assert_eq!(text(&validate.stdout).matches(" passed for resource job/").count(), 2, "{}", text(&validate.stdout));
    // The check is not vacuous: a misspelt field is refused.
    let misspelt = k8s.join("misspelt.json");
    std::fs::write(&misspelt, std::fs::read_to_string(k8s.join("shards.json")).unwrap().replace("backoffLimitPerIndex", "backoffLimitPerIndx"))
        .unwrap();
    let refused = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.33.0"])
        .arg(&misspelt)
        .env("PYTHONPATH", common::workspace().join(".deps/k8s-python"))
        .output()
        .unwrap();
    assert!(!refused.status.success() && text(&refused.stdout).contains("backoffLimitPerIndx"), "{}", text(&refused.stdout));

    // The contract, typed: an Indexed Job of 4 with a retry budget per index.
    let read = |name: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(k8s.join(name)).unwrap()).unwrap() };
    let shards = read("shards.json");
    let assemble = read("assemble.json");
    assert_eq!(shards["kind"], "Job");
    assert_eq!(shards["metadata"]["name"], "sitsflow-demo-shards");
    assert_eq!(shards["metadata"]["namespace"], "eo");
    let spec = &shards["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 4);
    assert_eq!(spec["parallelism"], 4);
    assert_eq!(spec["backoffLimitPerIndex"], 2);
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never", "backoffLimitPerIndex needs restartPolicy Never");
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["memory"], "1280Mi", "the budget of 1024 MiB and a quarter more");
    assert_eq!(container["volumeMounts"][0]["mountPath"], mount.to_str().unwrap());
    assert_eq!(spec["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data");
    let submit = std::fs::read_to_string(k8s.join("submit.sh")).unwrap();
    assert!(submit.contains("kubectl --namespace eo") && submit.contains("wait_job sitsflow-demo-shards"), "{submit}");
    let syntax = Command::new("bash").arg("-n").arg(k8s.join("submit.sh")).output().unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));

    // The contract, run: the four pods as processes, each with its completion index, side
    // by side; then the assembly's pod.
    let run_pod = |container: &Value, index: usize| {
        let env = pod_env(container, index);
        let command: Vec<String> = container["command"].as_array().unwrap().iter().map(|w| expand(w.as_str().unwrap(), &env)).collect();
        let mut process = common::sitsflow_command(project.path());
        process.env_clear().envs(std::env::vars().filter(|(k, _)| k != "FAILPOINTS")).envs(env.iter().cloned());
        process.env("SITSFLOW_CACHE_DIR", common::workspace().join("target/test-cache"));
        assert_eq!(command[0], bin);
        process.args(&command[1..]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        process.spawn().unwrap()
    };
    let pods: Vec<_> = (0..4).map(|i| run_pod(container, i)).collect();
    for (i, pod) in pods.into_iter().enumerate() {
        let out = pod.wait_with_output().unwrap();
        assert!(out.status.success(), "shard pod {i}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("shard {i}/4: chunks")), "{}", text(&out.stderr));
    }
    let out = run_pod(&assemble["spec"]["template"]["spec"]["containers"][0], 0).wait_with_output().unwrap();
    assert!(out.status.success(), "assembly pod: {}", text(&out.stderr));
    assert_eq!(fingerprint(&project.path().join("runs/demo")), fingerprint(reference));
}

/// For users with a cluster: submits the demo chain through `submit.sh` (kubectl) and
/// checks the published run. Needs SITSFLOW_K8S_IMAGE (an image with sitsflow and its
/// set-up), SITSFLOW_K8S_CLAIM (a ReadWriteMany claim) and SITSFLOW_K8S_MOUNT (where this
/// machine sees that volume, mounted at the same path in the pods).
#[test]
#[ignore = "needs a Kubernetes cluster: set SITSFLOW_K8S_IMAGE, SITSFLOW_K8S_CLAIM, SITSFLOW_K8S_MOUNT and run with --ignored"]
fn kubernetes_cluster_end_to_end() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see this test's doc comment)"));
    let (image, claim, mount) = (var("SITSFLOW_K8S_IMAGE"), var("SITSFLOW_K8S_CLAIM"), var("SITSFLOW_K8S_MOUNT"));
    let project = tempfile::tempdir_in(&mount).unwrap();
    let demo = project.path().join("demo");
    sitsflow::demo::generate(&demo, &sitsflow::demo::DemoOptions { size: 64, dates_per_year: 4, ..Default::default() }).unwrap();
    let pipeline = chain_pipeline("runs/demo").replace(&common::small_demo().display().to_string(), &demo.display().to_string());
    let staged = chain_project(&pipeline);
    let copy = Command::new("cp").arg("-r").arg(format!("{}/.", staged.path().display())).arg(project.path()).output().unwrap();
    assert!(copy.status.success());
    let out = plan(project.path(), &["--engine", "kubernetes", "--shards", "4", "--out", "k8s", "--image", &image, "--claim", &claim, "--mount", &mount]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let submit = Command::new("bash").arg(project.path().join("k8s/submit.sh")).output().unwrap();
    assert!(submit.status.success(), "{}{}", text(&submit.stdout), text(&submit.stderr));
    assert!(project.path().join("runs/demo/manifest.json").is_file());
}

/// `sitsflow train --nproc-per-node 2` inside a Slurm job starts its ranks through
/// `srun torchrun` (c10d rendezvous on the job's first node), as the assembly job of a
/// plan does for a recipe stage with `nodes`/`nproc_per_node`; rank 0 writes the model.
#[test]
fn a_training_in_a_slurm_job_runs_its_ranks_through_srun_torchrun() {
    let data = common::shared_data().join("formosat2-tempcnn");
    let cluster = Cluster::start();
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("tempcnn");
    let log = out.path().join("train.log");
    let train = format!(
        "{} train --samples {:?} --test {:?} --classes {:?} --arch tempcnn --epochs 2 --nproc-per-node 2 --out {:?}",
        env!("CARGO_BIN_EXE_sitsflow"),
        data.join("train.csv"),
        data.join("test.csv"),
        data.join("classes.csv"),
        model
    );
    let submitted = cluster
        .client("sbatch")
        // --time: Slurm ends a hung training instead of the test waiting for ever.
        .args(["--wait", "--time=10", "--cpus-per-task=2", "--output"])
        .arg(&log)
        .args(["--wrap", &train])
        .current_dir(common::workspace())
        .output()
        .unwrap();
    let shown = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(submitted.status.success(), "{}{shown}", text(&submitted.stderr));
    assert!(shown.contains("1 node(s) × 2 processes (srun torchrun in Slurm job"), "{shown}");
    let sidecar: Value = serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(sidecar["training"]["processes"], 2, "two ranks trained it");
    assert!(sidecar["metrics"]["overall_accuracy"].as_f64().unwrap() > 0.2, "{}", sidecar["metrics"]);
    assert!(sidecar["onnx_check"]["max_abs_diff"].as_f64().unwrap() < 1e-4, "{}", sidecar["onnx_check"]);
}
