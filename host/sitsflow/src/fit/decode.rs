//! A decoder's node.

use super::{Context, FitResults, call_error, context, hsv};
use crate::config::{Nomenclature, StageId};
use crate::graph::RasterId;
use crate::outputs::{Output, PixelType};
use crate::plan::StagePlan;
use crate::raster::{ClassStyle, FeatureRaster, Window};
use crate::report::SceneSection;
use anyhow::{Context as _, Result, anyhow, bail};
use crate::runtime::StagePool;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Year-to-year agreement counts, per pair of consecutive years and class: (kept, total).
type AgreementCounts = Vec<BTreeMap<u16, (u64, u64)>>;

fn count_agreement(counts: &mut AgreementCounts, labels: &[Vec<u16>]) {
    for (t, pair) in labels.windows(2).enumerate() {
        for (&a, &b) in pair[0].iter().zip(&pair[1]) {
            if a == 0 || b == 0 {
                continue;
            }
            let e = counts[t].entry(a).or_default();
            e.1 += 1;
            if a == b {
                e.0 += 1;
            }
        }
    }
}

/// The consistency table of raw and decoded maps side by side.
fn agreement_table(years: &[i32], raw: &AgreementCounts, decoded: &AgreementCounts, nomenclature: Option<&Nomenclature>) -> Value {
    let mut classes: Vec<u16> = raw.iter().chain(decoded).flat_map(|m| m.keys().copied()).collect();
    classes.sort_unstable();
    classes.dedup();
    let name = |c: u16| nomenclature.and_then(|n| n.classes.iter().find(|k| k.code == c)).map_or(c.to_string(), |k| format!("{c} {}", k.name));
    let share = |m: &BTreeMap<u16, (u64, u64)>, c: Option<u16>| {
        let (k, n) = match c {
            Some(c) => m.get(&c).copied().unwrap_or((0, 0)),
            None => m.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1)),
        };
        if n == 0 { Value::Null } else { json!(((k as f64 / n as f64) * 1e4).round() / 1e4) }
    };
    let mut columns = vec![json!("class")];
    for w in years.windows(2) {
        columns.push(json!(format!("{}–{} input", w[0], w[1])));
        columns.push(json!(format!("{}–{} decoded", w[0], w[1])));
    }
    let row = |label: String, c: Option<u16>| {
        let mut row = vec![json!(label)];
        for t in 0..raw.len() {
            row.push(share(&raw[t], c));
            row.push(share(&decoded[t], c));
        }
        json!(row)
    };
    let mut rows: Vec<Value> = classes.iter().map(|&c| row(name(c), Some(c))).collect();
    rows.push(row("overall".into(), None));
    json!({ "columns": columns, "rows": rows })
}

/// How a decoder's from → to raster codes a pair of classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FromTo {
    base: u32,
    pixel: PixelType,
}

impl FromTo {
    fn for_classes(classes: &[u16]) -> FromTo {
        let max = classes.iter().copied().max().unwrap_or(0) as u32;
        // Decimal (at least two digits for `to`) so it reads as two codes side by side; codes of five digits take
        // 65536, which still fits u32 for any pair of u16 codes.
        let base = [100u32, 1000, 10_000].into_iter().find(|&b| max < b).unwrap_or(65_536);
        let pixel = if max * base + max <= u16::MAX as u32 { PixelType::U16 } else { PixelType::U32 };
        FromTo { base, pixel }
    }

    fn code(&self, from: u16, to: u16) -> u32 {
        from as u32 * self.base + to as u32
    }
}

/// A decoder's node: yearly `posteriors` into consistent yearly maps (`map_ids`), the
/// change count and the from → to raster with its table.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    scene: &Context,
    stage: &StagePlan,
    input: &StageId,
    pool: &StagePool,
    posteriors: &[RasterId],
    map_ids: &[RasterId],
    changes: RasterId,
    fromto: RasterId,
    nomenclature: Option<&Nomenclature>,
    results: &mut FitResults,
) -> Result<SceneSection> {
    let rasters: Vec<PathBuf> = posteriors.iter().map(|&r| scene.path(r)).collect();
    if rasters.is_empty() || rasters.len() != map_ids.len() {
        bail!("stage '{}': {} yearly posteriors of '{input}' for {} yearly maps", stage.id, rasters.len(), map_ids.len());
    }
    let map_names: Vec<String> = map_ids.iter().map(|&r| scene.name(r).to_string()).collect();
    let fromto_name = scene.name(fromto).to_string();
    let names = FeatureRaster::open(&rasters[0])?.names;
    let classes: Vec<u16> = names
        .iter()
        .map(|n| n.strip_prefix("p:").and_then(|c| c.parse().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("stage '{}': {} has bands {names:?}, not class probabilities `p:<code>`", stage.id, rasters[0].display()))?;
    let k = classes.len();
    let steps = rasters.len();
    let params = stage.params_json();
    let style = nomenclature.map(|n| ClassStyle { classes: n.styles() });
    let mut maps: Vec<Output> =
        map_names.iter().map(|name| Output::new(scene.partial_dir, scene.run_dir(), name, scene.grid, PixelType::U16, style.clone())).collect();
    let mut changes = Output::new(scene.partial_dir, scene.run_dir(), scene.name(changes), scene.grid, PixelType::U16, None);
    // from → to is coded from × base + to, base the power of ten above every class code
    // (7 → 3 reads 703; CORINE 311 → 312 reads 311312), in u16 when that fits, else u32;
    // `<id>_fromto.csv` lists every code present with both classes.
    let coding = FromTo::for_classes(&classes);
    let mut fromto = Output::new(scene.partial_dir, scene.run_dir(), &fromto_name, scene.grid, coding.pixel, None);
    let mut raw_counts: AgreementCounts = vec![BTreeMap::new(); steps.saturating_sub(1)];
    let mut decoded_counts: AgreementCounts = vec![BTreeMap::new(); steps.saturating_sub(1)];
    let mut pairs: BTreeMap<(u16, u16), u64> = BTreeMap::new();
    let mut change_histogram: BTreeMap<u16, u64> = BTreeMap::new();
    scene.per_chunk(
        |i, window| {
            let n = window.pixels();
            let mut data = Vec::with_capacity(steps * n * k);
            for path in &rasters {
                let raster = FeatureRaster::open(path)?;
                if raster.names != names {
                    bail!("{} has other classes than {}", path.display(), rasters[0].display());
                }
                data.extend(raster.read(window)?);
            }
            let raw: Vec<Vec<u16>> = data
                .chunks_exact(n * k)
                .map(|year| year.chunks_exact(k).map(|p| {
                    let (j, v) = p.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a });
                    if v.is_finite() { classes[j] } else { 0 }
                }).collect())
                .collect();
            let series = crate::runtime::data::PosteriorSeries { steps: steps as u32, samples: n as u32, classes: classes.clone(), data };
            let decoded = pool
                .with(|inst| inst.decode(&context(stage, &format!("chunk {i}")), &series, &params))
                .map_err(call_error(stage, &format!("decoding chunk {i} ({window})")))?;
            if decoded.labels.len() != steps * n {
                bail!("stage '{}' returned {} labels for {steps} years × {n} pixels", stage.id, decoded.labels.len());
            }
            if let Some(bad) = decoded.labels.iter().find(|l| **l != 0 && !classes.contains(l)) {
                bail!("stage '{}' ({}) returned label {bad}, not one of the input's classes {classes:?}", stage.id, stage.reference());
            }
            // Smoothed posteriors are optional; when given they are checked like a labeller's.
            if !decoded.posteriors.is_empty() {
                if decoded.posteriors.len() != steps * n * k {
                    bail!(
                        "stage '{}' ({}) on chunk {i} ({window}) returned {} smoothed posteriors for {steps} years × {n} pixels × {k} classes",
                        stage.id,
                        stage.reference(),
                        decoded.posteriors.len()
                    );
                }
                if let Some(problem) = super::probability_problem(&decoded.posteriors, k) {
                    bail!("stage '{}' ({}) on chunk {i} ({window}): {problem}", stage.id, stage.reference());
                }
            }
            let decoded: Vec<Vec<u16>> = decoded.labels.chunks_exact(n).map(<[u16]>::to_vec).collect();
            Ok((raw, decoded))
        },
        |i, window, (raw, decoded)| {
            count_agreement(&mut raw_counts, &raw);
            count_agreement(&mut decoded_counts, &decoded);
            let n = window.pixels();
            let mut count = vec![0u16; n];
            let mut ft = vec![0u32; n];
            for p in 0..n {
                count[p] = decoded.windows(2).filter(|w| w[0][p] != w[1][p] && w[0][p] != 0 && w[1][p] != 0).count() as u16;
                let (a, b) = (decoded[0][p], decoded[steps - 1][p]);
                if a != b && a != 0 && b != 0 {
                    ft[p] = coding.code(a, b);
                    *pairs.entry((a, b)).or_default() += 1;
                }
                *change_histogram.entry(count[p]).or_default() += 1;
            }
            for (t, out) in maps.iter_mut().enumerate() {
                out.raster.write_chunk(i, window, std::slice::from_ref(&map_names[t]), &decoded[t])?;
            }
            changes.raster.write_chunk(i, window, &["changes".to_string()], &count)?;
            let band = ["from-to".to_string()];
            match coding.pixel {
                PixelType::U16 => fromto.raster.write_chunk(i, window, &band, &ft.iter().map(|&c| c as u16).collect::<Vec<_>>()),
                _ => fromto.raster.write_chunk(i, window, &band, &ft),
            }
        },
    )?;
    let name = |c: u16| nomenclature.and_then(|n| n.classes.iter().find(|k| k.code == c)).map_or(c.to_string(), |k| k.name.clone());
    if coding.pixel == PixelType::U16 {
        // A colour table is indexed by the pixel value: only for u16 codes.
        let pair_style = ClassStyle {
            classes: pairs
                .keys()
                .enumerate()
                .map(|(j, (a, b))| {
                    let (r, g, bl) = hsv((j as f64 * 137.508) % 360.0, 0.7, 0.9);
                    (coding.code(*a, *b) as u16, format!("{} → {}", name(*a), name(*b)), format!("#{r:02x}{g:02x}{bl:02x}"))
                })
                .collect(),
        };
        fromto.raster.set_style(pair_style);
    }
    let table_path = scene.run_dir().join(format!("{fromto_name}.csv"));
    let mut table = String::from("code,from,to,from_name,to_name,pixels\n");
    for ((a, b), n) in &pairs {
        let quote = |s: String| format!("\"{}\"", s.replace('"', "\"\""));
        table.push_str(&format!("{},{a},{b},{},{},{n}\n", coding.code(*a, *b), quote(name(*a)), quote(name(*b))));
    }
    crate::fsutil::write_atomic(&table_path, table.as_bytes()).with_context(|| format!("writing {}", table_path.display()))?;
    results.files.push(table_path);
    let max_changes = change_histogram.keys().copied().max().unwrap_or(0) as usize;
    changes.raster.set_style(ClassStyle {
        classes: (1..=max_changes.max(1)).map(|c| (c as u16, format!("{c} change{}", if c > 1 { "s" } else { "" }), ["#fdae61", "#d7191c", "#7b0000", "#3d0000"][(c - 1).min(3)].to_string())).collect(),
    });
    let all: Vec<(usize, Window)> = scene.chunks.iter().copied().enumerate().collect();
    for out in maps.iter_mut() {
        results.outputs.push(out.finish(&all)?);
    }
    results.outputs.push(changes.finish(&all)?);
    results.outputs.push(fromto.finish(&all)?);
    let from_to_rows: Vec<Value> = pairs.iter().map(|((a, b), n)| json!([name(*a), name(*b), n])).collect();
    Ok(SceneSection {
        stage: stage.id.to_string(),
        kind: "decoder".into(),
        plugin: stage.reference(),
        summary: json!({
            "posteriors_of": input.to_string(),
            "years": scene.years,
            "consistency": agreement_table(&scene.years, &raw_counts, &decoded_counts, nomenclature),
            "pixels_by_change_count": { "columns": ["changes", "pixels"], "rows": change_histogram.iter().map(|(c, n)| json!([c, n])).collect::<Vec<_>>() },
            "from_to": { "columns": [format!("from ({})", scene.years[0]), format!("to ({})", scene.years[steps - 1]), "pixels"], "rows": from_to_rows },
        }),
    })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_to_codes_never_wrap() {
        let small = FromTo::for_classes(&[1, 7, 12]);
        assert_eq!((small.code(7, 3), small.pixel), (703, PixelType::U16));
        let corine = FromTo::for_classes(&[111, 311, 523]);
        assert_eq!((corine.code(311, 312), corine.pixel), (311_312, PixelType::U32));
        let wide = FromTo::for_classes(&[1, u16::MAX]);
        assert_eq!(wide.code(u16::MAX, u16::MAX - 1), u16::MAX as u32 * 65_536 + u16::MAX as u32 - 1);
        let digits = FromTo::for_classes(&[3, 9]);
        assert_eq!(digits.code(9, 3), 903, "at least two digits for the 'to' code");
    }
}
