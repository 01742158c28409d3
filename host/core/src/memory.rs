//! The process's resident memory, measured per node of a run, so a run's manifest
//! says which node peaked and by how much against `memory_budget_mib`.
//!
//! Linux keeps the peak resident set (`VmHWM` in `/proc/self/status`); writing `5`
//! to `/proc/self/clear_refs` resets it to the current resident set, so the peak of
//! each node is measured on its own. Elsewhere (or where `/proc` is not writable)
//! every node reports the process's peak so far, which still bounds it.
//!
//! Also the allocator settings that keep a run's resident memory close to what it holds.

use serde_json::{Value, json};

/// What the engine, compiled components and bookkeeping take besides chunks, in MiB
/// (the part of a run's memory budget that no layout choice changes).
pub const FIXED_OVERHEAD_MIB: usize = 96;

fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The peak resident memory since the process started or the last `reset_peak`.
pub fn peak_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// The resident memory now.
pub fn resident_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Resets the peak to the current resident memory; false where the kernel does not
/// allow it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Hands the heap's free memory back to the kernel (glibc keeps freed memory for
/// reuse, per thread arena): called between nodes, so one node's garbage does not
/// count against the next node's budget.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tunes glibc's allocator for a run's working set of large buffers (chunk cubes,
/// feature matrices, samples), which otherwise fragments it: by default glibc keeps up
/// to 8 arenas per core, each holding on to its freed memory, and raises its mmap
/// threshold as large blocks are freed, so later large blocks come from (and stay in)
/// the heap. Here: one arena per worker plus one, and blocks of 256 KiB and more always
/// mmapped, so freeing them gives them back. Measured on the demo chain at 1024² × 36
/// dates and `memory_budget_mib = 256`: peak 347 → 241 MiB, wall 167 → 191 s (README).
/// Called once, before the workers start.
pub fn tune_allocator(workers: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets allocator tunables; they take effect for later allocations.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, (workers + 1).clamp(1, 64) as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = workers;
}

/// CPU seconds (user + system) of this process and of its children that have been
/// waited for (a recipe's Python, a `gdal` tool), every thread counted.
pub fn cpu_seconds() -> f64 {
    let of = |who| {
        // SAFETY: getrusage fills the struct it is given; a zeroed one is valid to pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return 0.0;
        }
        let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        time(usage.ru_utime) + time(usage.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// One node of a run as [`Peaks`] measured it.
#[derive(Debug)]
struct Node {
    name: String,
    peak_mib: f64,
    /// Resident memory when the node started (after the heap was trimmed).
    at_start_mib: f64,
    seconds: f64,
    cpu_seconds: f64,
}

/// The peak, the wall time and the CPU time of each node of a run, and the peak of the
/// whole run.
#[derive(Debug, Default)]
pub struct Peaks {
    nodes: Vec<Node>,
    overall: f64,
    /// Resident memory when the node started (after the heap was trimmed).
    at_start: f64,
    reset: Option<bool>,
    started: Option<(std::time::Instant, f64)>,
}

impl Peaks {
    /// Starts measuring a node: the peak so far is kept as the run's, then reset.
    pub fn start(&mut self) {
        self.overall = self.overall.max(peak_mib().unwrap_or(0.0));
        release_free_heap();
        let ok = reset_peak();
        self.reset.get_or_insert(ok);
        self.at_start = resident_mib().unwrap_or(0.0);
        self.started = Some((std::time::Instant::now(), cpu_seconds()));
    }

    /// Ends the node named `node` (started by `start`).
    pub fn finish(&mut self, node: impl Into<String>) {
        let peak = peak_mib().unwrap_or(0.0);
        self.overall = self.overall.max(peak);
        let (seconds, cpu) = self.started.take().map_or((0.0, 0.0), |(t, cpu)| (t.elapsed().as_secs_f64(), cpu_seconds() - cpu));
        self.nodes.push(Node { name: node.into(), peak_mib: peak, at_start_mib: self.at_start, seconds, cpu_seconds: cpu });
    }

    /// Measures `work` as node `node`.
    pub fn measure<T>(&mut self, node: impl Into<String>, work: impl FnOnce() -> T) -> T {
        self.start();
        let out = work();
        self.finish(node);
        out
    }

    /// The largest peak seen, including what ran before any node.
    pub fn overall(&self) -> f64 {
        self.overall.max(peak_mib().unwrap_or(0.0))
    }

    /// The nodes' peaks, the highest first, with the node each was measured on.
    pub fn to_json(&self, budget_mib: u64) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.name,
                    "peak_rss_mib": (n.peak_mib * 10.0).round() / 10.0,
                    "of_budget": ((n.peak_mib / budget_mib as f64) * 1000.0).round() / 1000.0,
                    "resident_at_start_mib": (n.at_start_mib * 10.0).round() / 10.0,
                    "seconds": (n.seconds * 1000.0).round() / 1000.0,
                    "cpu_seconds": (n.cpu_seconds * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let highest = self.nodes.iter().max_by(|a, b| a.peak_mib.total_cmp(&b.peak_mib)).map(|n| n.name.clone());
        json!({
            "budget_mib": budget_mib,
            "peak_rss_mib": (self.overall() * 10.0).round() / 10.0,
            "highest_node": highest,
            "per_node": self.reset == Some(true),
            "nodes": nodes,
        })
    }
}
