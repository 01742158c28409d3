//! Active learning for a labeller's node (seed 000, section 2).

use super::label::{Fit, LabellerPlan, Learner, held_out, held_out_json, train_and_test};
use crate::learn::rows_where;
use super::{Context, HOLDOUT_BLOCK_PX, Selected, call_error, context};
use crate::config::ActiveLearning;
use crate::plan::StagePlan;
use crate::raster::ClassRaster;
use crate::runtime::StagePool;
use crate::runtime::data::SampleInput;
use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;

/// Active learning (seed 000, section 2): from a sparse labelled set, rounds of train →
/// score an unlabelled pool → query the sampler's batch → the reference map labels it.
/// Held-out blocks (never queried) measure each round: the learning curve.
pub(super) fn learn(
    scene: &Context,
    labeller: &LabellerPlan,
    al: &ActiveLearning,
    pool: &StagePool,
    query: &StagePlan,
    selected: &Selected,
    reference: &Path,
) -> Result<Fit> {
    let stage = labeller.stage;
    // The features of its year, else its first (or only) features raster.
    let source = labeller.year.and_then(|y| labeller.maps.iter().find(|m| m.year == Some(y))).or(labeller.maps.first());
    let Some(features) = source.map(|m| scene.path(m.features)) else {
        bail!("stage '{}': no features raster to learn from", stage.id);
    };
    let seed = {
        use rand::RngCore;
        scene.rng(stage, "holdout").next_u64()
    };
    // Labelled pixels of the reference, split by held-out blocks.
    let oracle = ClassRaster::open(reference)?;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for window in scene.chunks {
        let codes = oracle.read(*window)?;
        for (o, &c) in codes.iter().enumerate() {
            if c != 0 {
                let p = ((window.row + o / window.cols) * scene.grid.width + window.col + o % window.cols) as u64;
                if held_out(seed, scene.grid.width, p, labeller.holdout.share.max(0.05)) { inside.push(p) } else { outside.push(p) }
            }
        }
    }
    let mut rng = scene.rng(stage, "pool");
    let mut draw = |from: &[u64], n: u64| -> Vec<u64> {
        let mut picked: Vec<u64> = rand::seq::index::sample(&mut rng, from.len(), (n as usize).min(from.len()))
            .into_iter()
            .map(|i| from[i])
            .collect();
        picked.sort_unstable();
        picked
    };
    let labelled_set: std::collections::HashSet<u64> = selected.pixels.iter().copied().collect();
    let candidates: Vec<u64> = outside.into_iter().filter(|p| !labelled_set.contains(p)).collect();
    let unlabelled = draw(&candidates, al.pool);
    let evaluation = draw(&inside, al.pool);
    if unlabelled.is_empty() || evaluation.is_empty() {
        bail!("stage '{}': the reference map labels too few pixels for active learning", stage.id);
    }
    let pool_features = scene.gather_features(&features, &unlabelled)?;
    let pool_truth: Vec<u16> = scene.gather_classes(reference, &unlabelled)?.into_iter().map(|c| c as u16).collect();
    let eval_features = scene.gather_features(&features, &evaluation)?;
    let eval_truth: Vec<u16> = scene.gather_classes(reference, &evaluation)?.into_iter().map(|c| c as u16).collect();
    // The initial labelled set, outside the held-out blocks only.
    let initial: Vec<usize> = (0..selected.pixels.len()).filter(|&i| !held_out(seed, scene.grid.width, selected.pixels[i], labeller.holdout.share.max(0.05))).collect();
    let initial_pixels: Vec<u64> = initial.iter().map(|&i| selected.pixels[i]).collect();
    let mut train = scene.gather_features(&features, &initial_pixels)?;
    let mut train_labels: Vec<u16> = initial.iter().map(|&i| selected.labels[i]).collect();
    let mut train_pixels = initial_pixels;
    let f = train.names.len();
    if pool_features.names != train.names {
        bail!("stage '{}': features differ between the pool and the labelled set", stage.id);
    }
    let mut queried = vec![false; unlabelled.len()];
    let positions: Vec<(u32, u32)> =
        unlabelled.iter().map(|&p| ((p / scene.grid.width as u64) as u32, (p % scene.grid.width as u64) as u32)).collect();
    let learner = Learner::Stage(pool);
    let query_plugin = query.plugin().ok_or_else(|| anyhow!("stage '{}': the query stage '{}' is not a component", stage.id, query.id))?;
    let query_pool = StagePool::with_models(query_plugin.clone(), query.limits, scene.models.clone()).seeded(scene.plan.seed).sharing(&scene.guest_memory);
    let query_params = query.params_json();
    let mut curve = Vec::new();
    let mut last = None;
    for round in 0..=al.rounds {
        let (model, report, confusion) =
            train_and_test(scene, stage, &learner, (&train, &train_labels, &train_pixels), &eval_features, &eval_truth)?;
        let metrics = confusion.as_ref().expect("the evaluation set is not empty").metrics();
        log::info!(
            "stage '{}' active learning round {round}: {} labels, held-out OA {:.4}, kappa {:.4}",
            stage.id,
            train.samples,
            metrics.overall_accuracy,
            metrics.kappa
        );
        curve.push(json!([round, train.samples, (metrics.overall_accuracy * 1e4).round() / 1e4, (metrics.kappa * 1e4).round() / 1e4, (metrics.macro_f1 * 1e4).round() / 1e4]));
        if round == al.rounds {
            last = Some((model, report, confusion));
            break;
        }
        // Score the rest of the pool and ask the query stage for a batch.
        let open: Vec<usize> = (0..unlabelled.len()).filter(|&i| !queried[i]).collect();
        if open.is_empty() {
            last = Some((model, report, confusion));
            break;
        }
        let (open_features, _) = rows_where(&pool_features, &pool_truth, |i| !queried[i]);
        let probabilities = learner.predict(stage, &model, &open_features, &format!("the pool in round {round}"))?;
        let mut input = SampleInput {
            features: open_features,
            layers: Vec::new(),
            probabilities: Some(probabilities),
            positions: open.iter().map(|&i| positions[i]).collect(),
            seed: seed.wrapping_add(round as u64),
        };
        let batch = query_pool
            .with(|i| i.select(&context(query, &format!("round {round}")), &mut input, &query_params))
            .map_err(call_error(query, &format!("querying round {round}")))?;
        if batch.indices.is_empty() {
            last = Some((model, report, confusion));
            break;
        }
        for &k in &batch.indices {
            let i = *open.get(k as usize).ok_or_else(|| anyhow!("stage '{}' chose candidate {k} of {}", query.id, open.len()))?;
            if std::mem::replace(&mut queried[i], true) {
                continue;
            }
            // The oracle (the reference map) answers.
            train.data.extend_from_slice(&pool_features.data[i * f..(i + 1) * f]);
            train.samples += 1;
            train_labels.push(pool_truth[i]);
            train_pixels.push(unlabelled[i]);
        }
    }
    let (model, report, confusion) = last.expect("the loop ends with a model");
    Ok(Fit {
        model,
        training: report,
        held_out: held_out_json(&confusion),
        split: json!({
            "holdout": labeller.holdout.share.max(0.05),
            "grouped_by": format!("{HOLDOUT_BLOCK_PX} px blocks"),
            "train_samples": train.samples,
            "test_samples": eval_features.samples,
            "initial_labels": curve.first().map(|c| c[1].clone()),
            "queried_labels": train.samples as usize - curve.first().and_then(|c| c[1].as_u64()).unwrap_or(0) as usize,
            "pool": unlabelled.len(),
        }),
        training_years: Value::Null,
        learning_curve: json!({ "columns": ["round", "labels", "OA", "kappa", "macro F1"], "rows": curve }),
    })
}

