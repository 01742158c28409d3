//! Accuracy assessment: confusion matrices and the metrics operators defend maps
//! with (overall accuracy, Cohen's kappa, producer's and user's accuracy, F1, IoU),
//! area-adjusted estimates with confidence intervals for stratified samples
//! (Olofsson et al. 2014), and year-to-year agreement of map series.
//!
//! Class 0 is "no data" everywhere: pairs whose reference is 0 are not counted.

#![deny(missing_docs)]

mod area;
mod confusion;
mod maps;
pub mod samples;

pub use area::{AreaEstimate, ClassArea, area_estimate};
pub use confusion::{ClassMetrics, Confusion, Metrics, agreement};
pub use maps::{ChangeAgreement, MapEvaluation, SeriesAgreement, TruthVectors, change_agreement, evaluate_map, evaluate_map_vectors, evaluate_map_with, evaluate_points, evaluate_points_with, series_agreement};

use std::fmt::Write as _;

/// The table `sitsflow eval` prints.
pub fn render_evaluation(e: &MapEvaluation) -> String {
    let m = &e.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "map        {}", e.map.display());
    let _ = writeln!(out, "reference  {}", e.reference.display());
    let _ = writeln!(out, "samples    {}", m.samples);
    let _ = writeln!(out, "OA {:.4}  kappa {:.4}  macro F1 {:.4}  mIoU {:.4}", m.overall_accuracy, m.kappa, m.macro_f1, m.miou);
    let _ = writeln!(out, "{:>6} {:>9} {:>9} {:>9} {:>9} {:>9}", "class", "support", "PA", "UA", "F1", "IoU");
    for c in &m.classes {
        let _ = writeln!(
            out,
            "{:>6} {:>9} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            c.class, c.support, c.producers_accuracy, c.users_accuracy, c.f1, c.iou
        );
    }
    let _ = writeln!(out, "confusion (rows reference, columns map): classes {:?}", e.confusion.classes);
    for (class, row) in e.confusion.classes.iter().zip(&e.confusion.counts) {
        let _ = writeln!(out, "{class:>6} {}", row.iter().map(|n| format!("{n:>8}")).collect::<String>());
    }
    if let Some(a) = &e.area {
        let _ = writeln!(out, "area-adjusted (Olofsson et al. 2014): OA {:.4} ± {:.4} (95 %)", a.overall_accuracy, a.overall_accuracy_ci95);
        let _ = writeln!(out, "{:>6} {:>14} {:>14} {:>15} {:>15}", "class", "area", "± 95 %", "UA ± 95 %", "PA ± 95 %");
        for c in &a.classes {
            let _ = writeln!(
                out,
                "{:>6} {:>14.1} {:>14.1} {:>7.3} ± {:.3} {:>7.3} ± {:.3}",
                c.class, c.area, c.area_ci95, c.users_accuracy, c.users_accuracy_ci95, c.producers_accuracy, c.producers_accuracy_ci95
            );
        }
    }
    if let Some(nd) = e.map_nodata {
        let _ = writeln!(out, "skipped where the map holds its no-data code {nd}: {} (give --map-nodata none to count them)", e.skipped_map_nodata);
    }
    if !e.unmapped.is_empty() {
        let _ = writeln!(out, "reference codes not in the nomenclature (skipped): {:?}", e.unmapped);
    }
    out
}

/// The table `sitsflow eval --series` prints.
pub fn render_agreement(pairs: &[SeriesAgreement]) -> String {
    let mut out = String::new();
    for p in pairs {
        let _ = writeln!(out, "{} → {}: overall agreement {:.4}", p.from.display(), p.to.display(), p.overall);
        for (class, a) in &p.per_class {
            let _ = writeln!(out, "  class {class:>5}: {a:.4}");
        }
    }
    out
}
