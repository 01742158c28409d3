//! `kmeans`: k-means clustering of per-pixel features, the clusterer stage.
//!
//! `fit` follows scikit-learn's `KMeans` (greedy k-means++ or random initialisation,
//! Lloyd or Elkan iterations, `n_init` restarts keeping the lowest inertia, `tol`
//! relative to the mean feature variance, empty clusters refilled with the farthest
//! points) so its inertias are comparable; it is seeded and deterministic: the same
//! samples, parameters and seed give the same model, natively and in the sandbox.
//!
//! Missing values: a sample (pixel) with a NaN in any feature is left out of `fit`
//! (counted as `skipped_rows` in the report) and gets cluster `u32::MAX` and distance
//! NaN from `assign`. An infinite value is an error: only NaN marks a missing value.
//!
//! Distances and inertia are Euclidean, squared for the inertia, measured after the
//! optional standardisation (see [`model`] for the blob and its space).
//!
//! Speed: everything is single-threaded (the sandbox has one thread), so the kernels
//! earn it back: f32 data with f32 sums per chunk and f64 across chunks, the sample
//! laid out once in blocks of eight rows (`matrix.rs`) so the `‖c‖² − 2·x·c` ranking
//! (`kernel.rs`) and k-means++'s distances run eight rows per two SIMD vectors.
//!
//! Memory: the sample (moved in from the host) and, briefly, its blocked copy (the
//! original is freed once copied); then 4 bytes of labels and `4 × (2 + ⌊ln k⌋)` bytes of k-means++
//! distances per sample; Elkan adds `4 × (k + 1)` bytes per sample for its bounds.

mod fit;
mod kernel;
mod matrix;
pub mod model;
mod rng;

use model::{FORMAT, Model};
use sitsflow_sdk::host::{self, Level};
use sitsflow_sdk::prelude::*;
use sitsflow_sdk::serde_json;

/// How the first centres are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
pub enum InitMethod {
    /// Greedy k-means++: each centre the best of `2 + ⌊ln k⌋` candidates drawn with
    /// probability proportional to the squared distance to the centres so far.
    #[default]
    #[serde(rename = "k-means++")]
    KMeansPlusPlus,
    /// `k` distinct samples drawn uniformly.
    #[serde(rename = "random")]
    Random,
}

/// The iteration scheme. Both reach the same clusters from the same start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Every sample against every centre each iteration.
    #[default]
    Lloyd,
    /// Triangle-inequality bounds skip most distances once centres settle; keeps `k`
    /// bounds per sample (4·k bytes each).
    Elkan,
}

/// Parameters. `assign` takes everything it needs from the model; there the parameters
/// are only checked to parse.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Number of clusters: `k = 8`.
    #[serde(default = "default_k")]
    pub k: u32,
    /// `init = "k-means++"` (default) or `init = "random"`.
    #[serde(default)]
    pub init: InitMethod,
    /// `algorithm = "lloyd"` (default) or `algorithm = "elkan"`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// `n_init = 3`: runs from different initialisations; the one with the lowest
    /// inertia is kept. Default: 1 with k-means++, 10 with random (scikit-learn's "auto").
    #[serde(default)]
    pub n_init: Option<u32>,
    /// `max_iter = 300`: the most iterations of one run.
    #[serde(default = "default_max_iter")]
    pub max_iter: u32,
    /// `tol = 1e-4`: a run has converged when the summed squared shift of the centres
    /// is at most `tol` × the mean of the features' variances (scikit-learn's meaning).
    /// A run also stops when no sample changes cluster.
    #[serde(default = "default_tol")]
    pub tol: f64,
    /// `seed = 0`: the same seed, samples and parameters give the same clusters.
    #[serde(default)]
    pub seed: u64,
    /// `standardize = true`: z-score every feature with the fit sample's mean and
    /// standard deviation first (stored in the model, applied by `assign`); distances
    /// are then in standard deviations. Default false.
    #[serde(default)]
    pub standardize: bool,
}

fn default_k() -> u32 {
    8
}

fn default_max_iter() -> u32 {
    300
}

fn default_tol() -> f64 {
    1e-4
}

impl Params {
    fn n_init(&self) -> u32 {
        self.n_init.unwrap_or(match self.init {
            InitMethod::KMeansPlusPlus => 1,
            InitMethod::Random => 10,
        })
    }

    fn check(&self) -> Result<(), StageError> {
        let bad = |m: &str| Err(StageError::InvalidParams(m.into()));
        if self.k == 0 {
            return bad("k must be at least 1");
        }
        if self.n_init() == 0 {
            return bad("n_init must be at least 1");
        }
        if self.max_iter == 0 {
            return bad("max_iter must be at least 1");
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(StageError::InvalidParams(format!("tol must be a finite number ≥ 0, not {}", self.tol)));
        }
        Ok(())
    }
}

pub struct KMeans;

impl Stage for KMeans {
    const NAME: &'static str = "kmeans";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str = "k-means clustering: k-means++ or random init, Lloyd or Elkan, n_init restarts, seeded.";
    type Params = Params;
}

/// The per-feature mean and scale of the fit sample, and the mean variance after
/// scaling (what `tol` is relative to).
struct Moments {
    mean: Vec<f64>,
    scale: Vec<f64>,
    mean_variance: f64,
}

/// Moves the rows without NaN to the front of `data` (in place: the sample can be most
/// of the sandbox's memory) and returns how many were kept and skipped.
fn drop_missing_rows(data: &mut [f32], names: &[String]) -> Result<(usize, usize), StageError> {
    let d = names.len();
    let n = data.len() / d;
    // One check of the whole matrix first: most have no missing value.
    if all_finite(data) {
        return Ok((n, 0));
    }
    let mut kept = 0;
    for i in 0..n {
        let row = &data[i * d..(i + 1) * d];
        if all_finite(row) {
            if kept != i {
                data.copy_within(i * d..(i + 1) * d, kept * d);
            }
            kept += 1;
        } else if let Some(j) = row.iter().position(|v| v.is_infinite()) {
            return Err(StageError::InvalidInput(format!(
                "feature '{}' of sample {i} is {}; only NaN may mark a missing value",
                names[j], row[j]
            )));
        }
    }
    Ok((kept, n - kept))
}

/// Mean and variance per feature (two passes, f64), and the scale standardisation uses.
fn moments(data: &[f32], d: usize, standardize: bool) -> Moments {
    let n = (data.len() / d) as f64;
    let mut mean = vec![0.0f64; d];
    for row in data.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; d];
    for row in data.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            let t = *v as f64 - m;
            *s += t * t;
        }
    }
    var.iter_mut().for_each(|s| *s /= n);
    let scale: Vec<f64> = var
        .iter()
        .zip(&mean)
        .map(|(&v, &m)| {
            // scikit-learn's test for a constant feature (`_is_constant_feature`): a
            // variance within the rounding error of its computation is zero, and a
            // constant feature keeps scale 1 rather than being blown up.
            let eps = f64::EPSILON;
            let constant = v <= n * eps * v + (n * m * eps).powi(2);
            if standardize && !constant { v.sqrt() } else { 1.0 }
        })
        .collect();
    let mean_variance = var.iter().zip(&scale).map(|(v, s)| v / (s * s)).sum::<f64>() / d as f64;
    Moments { mean, scale, mean_variance }
}

impl ClustererStage for KMeans {
    fn fit(samples: FeatureMatrix, params: Params) -> Result<Fitted, StageError> {
        params.check()?;
        samples.check()?;
        let FeatureMatrix { names, mut data, .. } = samples;
        let d = names.len();
        if d == 0 {
            return Err(StageError::InvalidInput("the samples have no features".into()));
        }
        let k = params.k as usize;
        let (n, skipped) = drop_missing_rows(&mut data, &names)?;
        if n < k {
            return Err(StageError::InvalidInput(format!(
                "{n} samples without a missing value ({skipped} skipped), fewer than k = {k}"
            )));
        }
        if params.algorithm == Algorithm::Elkan && n as u64 * k as u64 * 4 > 1 << 30 {
            return Err(StageError::InvalidParams(format!(
                "elkan keeps k bounds per sample: {n} samples × k = {k} needs over 1 GiB; use algorithm = \"lloyd\""
            )));
        }
        data.truncate(n * d);
        let m = moments(&data, d, params.standardize);
        let inv_scale: Vec<f64> = m.scale.iter().map(|s| 1.0 / s).collect();
        let x = matrix::Blocked::from_rows(data, d, &m.mean, &inv_scale);

        let settings = fit::Settings {
            k,
            init: match params.init {
                InitMethod::KMeansPlusPlus => fit::Init::KMeansPlusPlus,
                InitMethod::Random => fit::Init::Random,
            },
            algorithm: match params.algorithm {
                Algorithm::Lloyd => fit::Algorithm::Lloyd,
                Algorithm::Elkan => fit::Algorithm::Elkan,
            },
            max_iter: params.max_iter as usize,
            tol: params.tol * m.mean_variance,
        };
        let n_init = params.n_init();
        // One stream of seeds, one generator per run: run r is the same whatever n_init.
        let mut seeds = rng::Rng::new(params.seed);
        let mut work = fit::Work::default();
        let mut inertias = Vec::with_capacity(n_init as usize);
        let mut best: Option<(usize, fit::Run)> = None;
        for r in 0..n_init as usize {
            let run = fit::run(&x, &settings, &mut rng::Rng::new(seeds.next_u64()), &mut work);
            host::log(
                Level::Debug,
                &format!("run {}/{n_init}: inertia {}, {} iterations, converged {}", r + 1, run.inertia, run.iterations, run.converged),
            );
            host::progress(r as u64 + 1, n_init as u64);
            inertias.push(run.inertia);
            if best.as_ref().is_none_or(|(_, b)| run.inertia < b.inertia) {
                best = Some((r, run));
            }
        }
        let (best_init, run) = best.expect("n_init ≥ 1");
        if !run.converged {
            host::log(
                Level::Warn,
                &format!("the best run did not converge in max_iter = {} iterations", params.max_iter),
            );
        }

        let model = Model {
            format: FORMAT.into(),
            k,
            features: names,
            standardize: params.standardize,
            centres: run
                .centres
                .chunks_exact(d)
                .map(|c| c.iter().zip(&m.mean).zip(&m.scale).map(|((v, mean), s)| v * s + mean).collect())
                .collect(),
            mean: m.mean,
            scale: m.scale,
        };
        let report = serde_json::json!({
            "inertia": run.inertia,
            "iterations": run.iterations,
            "converged": run.converged,
            "n_init": n_init,
            "best_init": best_init,
            "init_inertias": inertias,
            "cluster_sizes": run.sizes,
            "samples_used": n,
            "skipped_rows": skipped,
            "init": match params.init { InitMethod::KMeansPlusPlus => "k-means++", InitMethod::Random => "random" },
            "algorithm": match params.algorithm { Algorithm::Lloyd => "lloyd", Algorithm::Elkan => "elkan" },
            "standardize": params.standardize,
            "tol_abs": settings.tol,
        });
        Ok(Fitted { model: model.to_blob(), report: report.to_string() })
    }

    fn assign(model: ModelBlob, samples: FeatureMatrix, params: Params) -> Result<Assignment, StageError> {
        params.check()?;
        samples.check()?;
        let model = Model::from_blob(&model)?;
        model.check_features(&samples.names)?;
        let FeatureMatrix { names, mut data, .. } = samples;
        let d = names.len();
        // Which rows miss a value; `None` when none does (one check of the whole matrix,
        // the common case, instead of one per row).
        let missing: Option<Vec<bool>> =
            (!all_finite(&data)).then(|| data.chunks_exact(d).map(|row| !all_finite(row)).collect());
        let rows = data.len() / d.max(1);
        // As in `fit`: the complete rows to the front, into the fit's space, in blocks.
        let n = match missing {
            Some(_) => drop_missing_rows(&mut data, &names)?.0,
            None => rows,
        };
        data.truncate(n * d);
        let mut clusters = Vec::with_capacity(rows);
        let mut distances = Vec::with_capacity(rows);
        if n == 0 {
            clusters.resize(rows, u32::MAX);
            distances.resize(rows, f32::NAN);
            return Ok(Assignment { clusters, distances });
        }
        let inv_scale = model.inv_scale();
        let x = matrix::Blocked::from_rows(data, d, &model.mean, &inv_scale);
        let packed = kernel::Packed::new(&model.internal_centres(), model.k, d);
        let mut next = missing.as_deref().unwrap_or_default().iter();
        let mut fill_missing = |clusters: &mut Vec<u32>, distances: &mut Vec<f32>| {
            while next.as_slice().first() == Some(&true) {
                next.next();
                clusters.push(u32::MAX);
                distances.push(f32::NAN);
            }
            next.next();
        };
        packed.for_each_nearest_block(&x, |b, winners| {
            let d2 = x.block_sqdist(b, winners, &packed.rows);
            for (&c, d2) in winners.iter().zip(d2).take(n - b * matrix::LANES) {
                fill_missing(&mut clusters, &mut distances);
                clusters.push(c);
                distances.push(d2.sqrt());
            }
        });
        fill_missing(&mut clusters, &mut distances);
        Ok(Assignment { clusters, distances })
    }
}

sitsflow_sdk::export_clusterer_stage!(KMeans);

#[cfg(test)]
mod tests;
