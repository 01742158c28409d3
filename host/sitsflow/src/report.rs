//! The run report: `report.json` (provenance, timings, evaluations) and a
//! self-contained `report.html` (no external resources: styles inline, charts as SVG,
//! quicklooks as embedded PNG) that an operator can mail or archive with the maps; and
//! `evaluate_and_write`, which assesses the maps the pipeline's `[[evaluate]]` names
//! first. It knows the plan and the manifest, not the executor (`run`, `fit`).

use crate::eval::MapEvaluation;
use crate::raster::Quicklook;
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A section of the run report written by a scene stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SceneSection {
    /// The stage's id (or the evaluated output's name).
    pub stage: String,
    /// The stage kind (e.g. `labeller`), or `series evaluation`.
    pub kind: String,
    /// What ran it (`name@version` or `recipe:<arch>`), or a series evaluation's truth.
    pub plugin: String,
    /// What the report JSON records: the stage's own report plus the host's figures.
    pub summary: Value,
}

/// An evaluation of one output, for the report.
pub struct EvaluationEntry {
    /// The output's name (stage id or `reference`).
    pub output: String,
    /// Its accuracy against the truth raster.
    pub evaluation: MapEvaluation,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Class name lookup from a quicklook legend or the evaluation's codes.
fn class_label(class: u16, names: &[(u16, String, String)]) -> String {
    names.iter().find(|c| c.0 == class).map_or_else(|| format!("{class}"), |c| format!("{class} {}", c.1))
}

/// A confusion-matrix heatmap: cell shade by the share of its reference row.
fn heatmap_svg(e: &MapEvaluation, names: &[(u16, String, String)]) -> String {
    let k = e.confusion.classes.len();
    let (cell, left, top) = (44, 150, 150);
    let (w, h) = (left + cell * k + 10, top + cell * k + 10);
    let mut svg = format!(r#"<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="confusion matrix">"#);
    let _ = write!(svg, r#"<text x="{}" y="14" font-size="12" text-anchor="middle">map →</text>"#, left + cell * k / 2);
    let _ = write!(svg, r#"<text x="12" y="{}" font-size="12" transform="rotate(-90 12 {})" text-anchor="middle">reference →</text>"#, top + cell * k / 2, top + cell * k / 2);
    for (j, c) in e.confusion.classes.iter().enumerate() {
        let x = left + j * cell + cell / 2;
        let _ = write!(svg, r#"<text x="{x}" y="{}" font-size="11" transform="rotate(-60 {x} {})">{}</text>"#, top - 6, top - 6, esc(&class_label(*c, names)));
    }
    for (i, (c, row)) in e.confusion.classes.iter().zip(&e.confusion.counts).enumerate() {
        let y = top + i * cell;
        let _ = write!(svg, r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#, left - 6, y + cell / 2 + 4, esc(&class_label(*c, names)));
        let total: u64 = row.iter().sum();
        for (j, &n) in row.iter().enumerate() {
            let share = if total > 0 { n as f64 / total as f64 } else { 0.0 };
            let shade = (255.0 - share * 200.0).round() as u8;
            let (fill, ink) = if i == j { (format!("rgb({shade},{},{shade})", 255), "#000") } else { (format!("rgb(255,{shade},{shade})"), "#000") };
            let x = left + j * cell;
            let _ = write!(svg, r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff"><title>reference {} → map {}: {n}</title></rect>"##, c, e.confusion.classes[j]);
            if n > 0 {
                let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="middle" fill="{ink}">{n}</text>"#, x + cell / 2, y + cell / 2 + 4);
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars of per-class F1.
fn f1_bars_svg(e: &MapEvaluation, names: &[(u16, String, String)]) -> String {
    let rows: Vec<_> = e.metrics.classes.iter().filter(|c| c.support > 0).collect();
    let (bar_w, row_h, left) = (300.0, 22, 150);
    let h = rows.len() * row_h + 10;
    let mut svg = format!(r#"<svg class="f1bars" xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" role="img" aria-label="F1 per class">"#, left + bar_w as usize + 60);
    for (i, c) in rows.iter().enumerate() {
        let y = i * row_h + 4;
        let color = names.iter().find(|n| n.0 == c.class).map_or("#4477aa".to_string(), |n| n.2.clone());
        let _ = write!(svg, r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#, left - 6, y + 13, esc(&class_label(c.class, names)));
        let _ = write!(svg, r##"<rect x="{left}" y="{y}" width="{:.1}" height="16" fill="{color}" stroke="#333"/>"##, bar_w * c.f1);
        let _ = write!(svg, r#"<text x="{:.1}" y="{}" font-size="11">{:.3}</text>"#, left as f64 + bar_w * c.f1 + 4.0, y + 13, c.f1);
    }
    svg.push_str("</svg>");
    svg
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        }),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A `{ "columns": [...], "rows": [[...]] }` object as an HTML table.
fn table_html(v: &Value) -> Option<String> {
    let columns = v.get("columns")?.as_array()?;
    let rows = v.get("rows")?.as_array()?;
    let mut html = String::from("<table><tr>");
    for (i, c) in columns.iter().enumerate() {
        let _ = write!(html, "<th{}>{}</th>", if i == 0 { " class=l" } else { "" }, esc(&scalar(c).unwrap_or_default()));
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for (i, cell) in row.as_array().into_iter().flatten().enumerate() {
            let _ = write!(html, "<td{}>{}</td>", if i == 0 { " class=l" } else { "" }, esc(&scalar(cell).unwrap_or_default()));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Some(html)
}

/// Scalars of an object as a two-column table, then its tables, each under its key.
fn object_html(v: &Value) -> String {
    let Some(map) = v.as_object() else { return String::new() };
    let mut html = String::new();
    let scalars: Vec<_> = map.iter().filter_map(|(k, v)| scalar(v).map(|s| (k, s))).collect();
    if !scalars.is_empty() {
        html.push_str("<table>");
        for (k, s) in scalars {
            let _ = write!(html, "<tr><th class=l>{}</th><td class=l>{}</td></tr>", esc(k), esc(&s));
        }
        html.push_str("</table>");
    }
    for (k, v) in map {
        if let Some(table) = table_html(v) {
            let _ = write!(html, "<h4>{}</h4>{table}", esc(&k.replace('_', " ")));
        }
    }
    html
}

/// OA against labels, from a learning-curve table (columns round, labels, OA, …).
fn curve_svg(curve: &Value) -> String {
    let points: Vec<(f64, f64)> = curve["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[1].as_f64()?, r[2].as_f64()?)))
        .collect();
    let (w, h, left, bottom) = (420.0, 220.0, 50.0, 30.0);
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let x = |v: f64| left + v / max_x * (w - left - 20.0);
    let y = |v: f64| (h - bottom) - v * (h - bottom - 10.0);
    let mut svg = format!(r#"<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="learning curve">"#);
    let _ = write!(svg, r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{left}" y1="10" x2="{left}" y2="{}" stroke="#333"/>"##, y(0.0), w - 20.0, y(0.0), y(0.0));
    for t in [0.0, 0.5, 1.0] {
        let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{t:.1}</text>"#, left - 4.0, y(t) + 3.0);
    }
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">labels (max {max_x:.0})</text>"#, (left + w) / 2.0, h - 6.0);
    let path: Vec<String> = points.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
    let _ = write!(svg, r##"<polyline fill="none" stroke="#4477aa" stroke-width="2" points="{}"/>"##, path.join(" "));
    for (a, b) in &points {
        let _ = write!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#4477aa"><title>{a:.0} labels: OA {b:.4}</title></circle>"##, x(*a), y(*b));
    }
    svg.push_str("</svg>");
    svg
}

/// A scene stage's part of the report: the host's figures, the stage's own report,
/// and for labellers the held-out accuracy.
fn section_html(section: &SceneSection) -> String {
    let mut html = format!(
        "<h2>{} <code>{}</code> ({})</h2>",
        esc(&section.kind),
        esc(&section.stage),
        esc(&section.plugin)
    );
    let summary = &section.summary;
    if section.kind == "labeller" {
        let split = &summary["split"];
        let _ = write!(
            html,
            "<p>Trained on {} samples; {} held out by {} (share {}).</p>",
            split["train_samples"],
            split["test_samples"],
            esc(split["grouped_by"].as_str().unwrap_or("")),
            split["holdout"]
        );
        let m = &summary["held_out"]["metrics"];
        if m.is_object() {
            let names = summary["class_names"].as_object().cloned().unwrap_or_default();
            let _ = write!(
                html,
                "<p>Held-out OA {:.4} · kappa {:.4} · macro F1 {:.4}</p><table><tr><th class=l>class</th><th>support</th><th>precision</th><th>recall</th><th>F1</th></tr>",
                m["overall_accuracy"].as_f64().unwrap_or(0.0),
                m["kappa"].as_f64().unwrap_or(0.0),
                m["macro_f1"].as_f64().unwrap_or(0.0)
            );
            for c in m["classes"].as_array().into_iter().flatten() {
                let code = c["class"].to_string();
                let name = names.get(&code).and_then(|n| n.as_str()).map_or(code.clone(), |n| format!("{code} {n}"));
                let _ = write!(
                    html,
                    "<tr><td class=l>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                    esc(&name),
                    c["support"],
                    c["users_accuracy"].as_f64().unwrap_or(0.0),
                    c["producers_accuracy"].as_f64().unwrap_or(0.0),
                    c["f1"].as_f64().unwrap_or(0.0)
                );
            }
            html.push_str("</table>");
        } else {
            html.push_str("<p>No samples were held out: no accuracy to report.</p>");
        }
        if let Some(table) = table_html(&summary["learning_curve"]) {
            html.push_str("<h3>Active learning: learning curve</h3><p>Accuracy on the held-out blocks (never queried) against the number of labels.</p>");
            html.push_str(&curve_svg(&summary["learning_curve"]));
            html.push_str(&table);
        }
        if let Some(table) = table_html(&summary["consistency"]) {
            html.push_str("<h3>Year-to-year consistency</h3><p>Per class, the share of its pixels in one year that keep the class the next year (seed 001's agreement table).</p>");
            html.push_str(&table);
        }
        if let Some(years) = summary["training_years"].as_array() {
            let years: Vec<String> = years.iter().map(|y| y.to_string()).collect();
            let _ = write!(html, "<p>Training features from {}.</p>", esc(&years.join(", ")));
        }
        if let Some(table) = budgets_html(&summary["training"]["validation"]["label_budgets"], &summary["training"]["vhr"]) {
            html.push_str(&table);
        }
        html.push_str("<h3>Training report</h3>");
        html.push_str(&object_html(&summary["training"]));
    } else if section.kind == "super-resolver" {
        html.push_str(&super_resolution_html(summary));
    } else if section.kind == "pretrainer" {
        let (loss, views) = (&summary["loss"], &summary["views"]);
        let _ = write!(
            html,
            "<p>{} {:.4} → {:.4} over {} epochs of {} view pairs ({} px patches, {} channels), made by <code>{}</code> at {:.0} pairs/s.</p>",
            esc(loss["name"].as_str().unwrap_or("loss")),
            loss["first"].as_f64().unwrap_or(f64::NAN),
            loss["last"].as_f64().unwrap_or(f64::NAN),
            views["epochs"],
            views["pairs"],
            views["patch"],
            views["channels"],
            esc(summary["augmenter"]["plugin"].as_str().unwrap_or("")),
            summary["throughput"]["pairs_per_second"].as_f64().unwrap_or(0.0)
        );
        html.push_str(&object_html(summary));
    } else {
        html.push_str(&object_html(summary));
        html.push_str("<h3>Stage report</h3>");
        html.push_str(&object_html(&summary["report"]));
    }
    html
}

/// Seed 000's tables: per annotation date (the seed's HR date, VHR date, accuracy), the
/// λ ablation, the consistency with and without the Markov chain, and the mixed 10 m
/// pixels against nearest-upsampled 10 m maps.
fn super_resolution_html(summary: &Value) -> String {
    let metrics = &summary["training"]["validation"];
    let num = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
    let mut html = format!(
        "<p>Maps of every date on the {}× grid: each date's own labels ({}), the Markov chain's consistent sequence ({}) and its changes ({}).</p>",
        summary["scale"],
        esc(summary["outputs"]["dates"].as_str().unwrap_or("")),
        esc(summary["outputs"]["markov"].as_str().unwrap_or("")),
        esc(summary["outputs"]["changes"].as_str().unwrap_or(""))
    );
    let per_date = |rows: &Value| {
        let mut t = String::from("<table><tr><th>HR date</th><th>VHR date</th><th class=l>assessed on</th><th>px</th><th>accuracy</th><th>with the Markov chain</th></tr>");
        for r in rows.as_array().into_iter().flatten() {
            let _ = write!(
                t,
                "<tr><td>{}</td><td>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(r["hr_date"].as_str().unwrap_or("–")),
                esc(r["vhr_date"].as_str().unwrap_or("")),
                esc(r["role"].as_str().unwrap_or("")),
                r["pixels"],
                num(&r["accuracy"]),
                num(&r["accuracy_markov"])
            );
        }
        t.push_str("</table>");
        t
    };
    let _ = write!(
        html,
        "<h3>Accuracy per annotation date</h3><p>λ = {} (temporal smoothness), annotations valid for HR dates at most {} days away; split: {}{}.</p>{}",
        metrics["smoothness"],
        metrics["valid_days"],
        esc(metrics["split"].as_str().unwrap_or("")),
        metrics["test_dates"].as_array().filter(|d| !d.is_empty()).map_or(String::new(), |d| format!(
            ", dates left out of training: {}",
            esc(&d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        )),
        per_date(&metrics["per_date"])
    );
    if let Some(rows) = metrics["ablation"]["rows"].as_array() {
        html.push_str("<h3>Ablation: temporal smoothness</h3>");
        for row in rows {
            let _ = write!(html, "<p>λ = {}: label changes per pixel {} (Markov chain {})</p>", row["smoothness"], num(&row["consistency"]["per_date_labels"]["mean_changes"]), num(&row["consistency"]["markov"]["mean_changes"]));
            html.push_str(&per_date(&row["per_date"]));
        }
    }
    let c = &metrics["consistency"];
    let _ = write!(
        html,
        "<h3>Consistency with and without the Markov chain</h3><p>Label changes along the series, on the fine pixels every annotation labels.</p><table><tr><th class=l>sequence</th><th>changes per pixel</th><th>pixels that change</th></tr><tr><td class=l>each date's own labels</td><td>{}</td><td>{}</td></tr><tr><td class=l>Markov chain</td><td>{}</td><td>{}</td></tr><tr><td class=l>annotations (between their dates)</td><td>{}</td><td>{}</td></tr></table>",
        num(&c["per_date_labels"]["mean_changes"]),
        num(&c["per_date_labels"]["changing_pixels"]),
        num(&c["markov"]["mean_changes"]),
        num(&c["markov"]["changing_pixels"]),
        num(&c["annotations"]["mean_changes"]),
        num(&c["annotations"]["changing_pixels"])
    );
    let mixed = &metrics["mixed_pixels"];
    if mixed.is_object() {
        let a = &mixed["accuracy"];
        let _ = write!(
            html,
            "<h3>Mixed pixels</h3><p>{} fine pixels of 10 m pixels that hold more than one class ({}).</p><table><tr><th class=l>map</th><th>accuracy</th></tr><tr><td class=l>super-resolution ({}×)</td><td>{}</td></tr><tr><td class=l>the network at 10 m, upsampled by nearest</td><td>{}</td></tr><tr><td class=l>the annotation's majority per 10 m pixel, upsampled (the best a 10 m map can do)</td><td>{}</td></tr></table>",
            mixed["pixels"],
            esc(mixed["rule"].as_str().unwrap_or("")),
            summary["scale"],
            num(&a["fine"]),
            num(&a["network_10m"]),
            num(&a["oracle_10m"])
        );
    }
    html.push_str("<h3>Training report</h3>");
    html.push_str(&object_html(&summary["training"]));
    html
}

/// Seed 003's tables: the network fine-tuned from a self-supervised encoder, and the
/// fusion of the series with a VHR image, against the series-only network trained from
/// scratch, per label budget, on the same held-out pixels. `vhr`: the images the fusion
/// read (a generated one is said to be).
fn budgets_html(budgets: &Value, vhr: &Value) -> Option<String> {
    let rows = budgets["table"].as_array().filter(|r| !r.is_empty())?;
    let inits: Vec<&str> = ["ssl", "fusion", "supervised"].into_iter().filter(|i| rows[0][*i].is_object()).collect();
    let classes: Vec<String> = rows[0][*inits.first()?]["iou"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let ssl = inits.contains(&"ssl");
    let fusion = inits.contains(&"fusion");
    let title = match (ssl, fusion) {
        (true, true) => "Self-supervised and fusion against supervised, per label budget",
        (false, true) => "Fusion with the VHR image against the series alone, per label budget",
        _ => "Self-supervised against supervised, per label budget",
    };
    let mut html = format!("<h3>{title}</h3><p>Trained on a share of each class's labelled pixels and assessed on the same held-out pixels: supervised is the series-only network from scratch");
    if ssl {
        html.push_str("; ssl the same network started from the pretrained encoder");
    }
    if fusion {
        let images: Vec<String> = vhr["images"].as_array().map(|a| a.iter().filter_map(|v| v["path"].as_str().map(esc)).collect()).unwrap_or_default();
        let _ = write!(
            html,
            "; fusion one encoder for the series and one for the VHR image ({}), fused late by a squeeze-and-excitation gate",
            if images.is_empty() { "its image".to_string() } else { images.join(", ") }
        );
    }
    html.push_str(".</p>");
    if fusion && vhr["generated"].as_bool() == Some(true) {
        let by = vhr["images"].as_array().and_then(|a| a.iter().find_map(|v| v["generated"].as_str())).unwrap_or("a generator");
        let _ = write!(
            html,
            "<p><b>The VHR image is generated</b> ({}), not observed: the fusion figures come from generated data and say nothing of a real aerial image.</p>",
            esc(by)
        );
    }
    html.push_str("<table><tr><th>budget</th><th>labelled px</th><th class=l>init</th><th>OA</th><th>mIoU</th>");
    for c in &classes {
        let _ = write!(html, "<th>IoU {}</th>", esc(c));
    }
    html.push_str("</tr>");
    let num = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.4}"));
    for row in rows {
        for init in &inits {
            let r = &row[*init];
            let _ = write!(
                html,
                "<tr><td>{:.0} %</td><td>{}</td><td class=l>{init}</td><td>{}</td><td>{}</td>",
                row["budget"].as_f64().unwrap_or(0.0) * 100.0,
                row["fit_pixels"],
                num(&r["overall_accuracy"]),
                num(&r["miou"])
            );
            for c in &classes {
                let _ = write!(html, "<td>{}</td>", num(&r["iou"][c]));
            }
            html.push_str("</tr>");
        }
    }
    html.push_str("</table>");
    Some(html)
}

/// Labellers assessed on the same held-out pixels (the same sampler, split rule and
/// share — e.g. FG-UNet and a random forest with `holdout_by = "polygons"`, seed 004's
/// comparison): their held-out figures side by side, per split.
pub fn comparisons(sections: &[SceneSection]) -> Value {
    let mut groups: Vec<(Value, Vec<&SceneSection>)> = Vec::new();
    for section in sections
        .iter()
        .filter(|s| s.kind == "labeller" && s.summary["held_out"]["metrics"].is_object())
    {
        let split = &section.summary["split"];
        let key = json!({ "rule": split["rule"], "groups": split["groups"], "test_groups": split["test_groups"], "test_samples": split["test_samples"] });
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(section),
            None => groups.push((key, vec![section])),
        }
    }
    let compared: Vec<Value> = groups
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(split, members)| {
            let metrics = |s: &SceneSection, key: &str| s.summary["held_out"]["metrics"][key].clone();
            let mut classes: Vec<u64> = members
                .iter()
                .flat_map(|s| s.summary["held_out"]["metrics"]["classes"].as_array().into_iter().flatten().filter_map(|c| c["class"].as_u64()))
                .collect();
            classes.sort_unstable();
            classes.dedup();
            let names = members[0].summary["class_names"].clone();
            json!({
                "split": split,
                "labellers": members.iter().map(|s| json!({
                    "stage": s.stage,
                    "plugin": s.plugin,
                    "overall_accuracy": metrics(s, "overall_accuracy"),
                    "kappa": metrics(s, "kappa"),
                    "macro_f1": metrics(s, "macro_f1"),
                    "miou": metrics(s, "miou"),
                    "f1": classes.iter().map(|c| {
                        let f1 = s.summary["held_out"]["metrics"]["classes"].as_array().into_iter().flatten()
                            .find(|k| k["class"].as_u64() == Some(*c)).map_or(Value::Null, |k| k["f1"].clone());
                        (c.to_string(), f1)
                    }).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
                "class_names": names,
            })
        })
        .collect();
    Value::Array(compared)
}

/// Each labeller trained on some years beside its maps of the other years: the held-out
/// figure of its training year (when it held some out) and each `<stage>_<year>` map's
/// evaluation, the training year's whole map included — what an operator who trains once
/// and maps every year needs to see side by side.
pub fn year_transfer(sections: &[SceneSection], evaluations: &[EvaluationEntry]) -> Value {
    let rows: Vec<Value> = sections
        .iter()
        .filter(|s| s.kind == "labeller")
        .filter_map(|s| {
            let trained: Vec<i64> = s.summary["training_years"].as_array()?.iter().filter_map(Value::as_i64).collect();
            let maps: Vec<Value> = evaluations
                .iter()
                .filter_map(|e| {
                    let year: i64 = e.output.strip_prefix(s.stage.as_str())?.strip_prefix('_')?.parse().ok()?;
                    let m = &e.evaluation.metrics;
                    Some(json!({
                        "year": year,
                        "training_year": trained.contains(&year),
                        "output": e.output,
                        "reference": e.evaluation.reference,
                        "overall_accuracy": m.overall_accuracy,
                        "macro_f1": m.macro_f1,
                        "samples": m.samples,
                    }))
                })
                .collect();
            (!trained.is_empty() && maps.iter().any(|m| m["training_year"] == false)).then(|| {
                let held = &s.summary["held_out"]["metrics"];
                json!({
                    "stage": s.stage,
                    "plugin": s.plugin,
                    "training_years": trained,
                    "held_out": if held.is_object() { json!({ "overall_accuracy": held["overall_accuracy"], "macro_f1": held["macro_f1"], "samples": held["samples"] }) } else { Value::Null },
                    "maps": maps,
                })
            })
        })
        .collect();
    Value::Array(rows)
}

fn year_transfer_html(rows: &[Value]) -> String {
    let mut years: Vec<i64> = rows.iter().flat_map(|r| r["maps"].as_array().into_iter().flatten().filter_map(|m| m["year"].as_i64())).collect();
    years.sort_unstable();
    years.dedup();
    let mut html = String::from("<h2>Year transfer</h2><p>Each labeller's held-out figure in its training year beside its maps of every year, OA / macro F1 (a map of a training year includes the training pixels).</p><table><tr><th class=l>labeller</th><th class=l>trained on</th><th>held out</th>");
    for y in &years {
        let _ = write!(html, "<th>{y}</th>");
    }
    html.push_str("</tr>");
    let pair = |v: &Value| match (v["overall_accuracy"].as_f64(), v["macro_f1"].as_f64()) {
        (Some(oa), Some(f1)) => format!("{oa:.3} / {f1:.3}"),
        _ => "–".to_string(),
    };
    for r in rows {
        let trained: Vec<String> = r["training_years"].as_array().into_iter().flatten().map(Value::to_string).collect();
        let _ = write!(html, "<tr><td class=l>{} ({})</td><td class=l>{}</td><td>{}</td>", esc(r["stage"].as_str().unwrap_or("")), esc(r["plugin"].as_str().unwrap_or("")), trained.join(", "), pair(&r["held_out"]));
        for y in &years {
            let map = r["maps"].as_array().into_iter().flatten().find(|m| m["year"].as_i64() == Some(*y));
            let _ = write!(html, "<td>{}</td>", map.map_or("–".to_string(), pair));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}

fn comparison_html(comparison: &Value, quicklooks: &[(String, Quicklook)]) -> String {
    let labellers = comparison["labellers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let split = &comparison["split"];
    let mut html = format!(
        "<h2>Comparison on the same held-out pixels</h2><p>{} held-out samples ({}).</p><table><tr><th class=l></th>",
        split["test_samples"],
        esc(split["rule"].as_str().unwrap_or(""))
    );
    for l in &labellers {
        let _ = write!(
            html,
            "<th>{} <code>{}</code></th>",
            esc(l["stage"].as_str().unwrap_or("")),
            esc(l["plugin"].as_str().unwrap_or(""))
        );
    }
    html.push_str("</tr>");
    let number = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.4}"));
    for (key, label) in [
        ("overall_accuracy", "OA"),
        ("kappa", "kappa"),
        ("macro_f1", "macro F1"),
        ("miou", "mIoU"),
    ] {
        let _ = write!(html, "<tr><th class=l>{label}</th>");
        for l in &labellers {
            let _ = write!(html, "<td>{}</td>", number(&l[key]));
        }
        html.push_str("</tr>");
    }
    let classes: Vec<String> = labellers
        .first()
        .and_then(|l| l["f1"].as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for code in classes {
        let name = comparison["class_names"][&code]
            .as_str()
            .map_or(code.clone(), |n| format!("{code} {n}"));
        let _ = write!(html, "<tr><th class=l>F1 {}</th>", esc(&name));
        for l in &labellers {
            let _ = write!(html, "<td>{}</td>", number(&l["f1"][&code]));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table><div class=\"quicklooks\">");
    if let Some((name, q)) = quicklooks.iter().find(|(n, _)| n == "image") {
        html.push_str(&quicklook_html(name, q));
    }
    for l in &labellers {
        let stage = l["stage"].as_str().unwrap_or("");
        // The map of the training year (or the only one), side by side.
        if let Some((name, q)) = quicklooks
            .iter()
            .find(|(n, _)| n == stage || n.starts_with(&format!("{stage}_")))
        {
            html.push_str(&quicklook_html(name, q));
        }
    }
    html.push_str("</div>");
    html
}

fn quicklook_html(name: &str, q: &Quicklook) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(&q.png);
    // Small rasters are shown enlarged (pixelated), so they stay readable.
    let zoom = (256 / q.width.max(q.height).max(1)).max(1);
    let mut html = format!(
        r#"<figure class="quicklook"><img alt="{0}" width="{1}" height="{2}" src="data:image/png;base64,{data}"><figcaption>{0} — {3}</figcaption>"#,
        esc(name),
        q.width * zoom,
        q.height * zoom,
        esc(&q.band)
    );
    if let Some(legend) = &q.legend {
        html.push_str(r#"<ul class="legend">"#);
        for (code, label, color) in legend {
            let _ = write!(html, r#"<li><span class="swatch" style="background:{color}"></span>{code} {}</li>"#, esc(label));
        }
        html.push_str("</ul>");
    }
    if let Some((lo, hi)) = q.range {
        let _ = write!(html, r#"<div class="ramp"><span>{lo:.3}</span><span class="bar"></span><span>{hi:.3}</span></div>"#);
    }
    html.push_str("</figure>");
    html
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}\
h1{margin-bottom:0}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}.quicklooks{display:flex;flex-wrap:wrap;gap:1.5em}\
figure{margin:0}img{image-rendering:pixelated;border:1px solid #999}.legend{list-style:none;padding:0;columns:2;font-size:12px}\
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;border:1px solid #555;vertical-align:middle}\
.ramp{display:flex;gap:6px;align-items:center;font-size:12px}.ramp .bar{display:inline-block;width:160px;height:10px;\
background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725)}code{font-size:12px}";

/// Writes `report.json` and `report.html` into the run folder.
pub fn write_report(
    run_dir: &Path,
    manifest: &Value,
    quicklooks: &[(String, Quicklook)],
    evaluations: &[EvaluationEntry],
    sections: &[SceneSection],
) -> Result<()> {
    let legend_of = |output: &str| quicklooks.iter().find(|(n, _)| n == output).and_then(|(_, q)| q.legend.clone()).unwrap_or_default();
    let report = json!({
        "pipeline": manifest["pipeline"]["name"],
        "provenance": {
            "sitsflow": manifest["sitsflow"], "wit": manifest["wit"], "gdal": manifest["gdal"],
            "pipeline_sha256": manifest["pipeline"]["sha256"], "seed": manifest["seed"],
            "inputs": manifest["inputs"].as_array().map_or(0, |a| a.len()),
        },
        "series": manifest["series"],
        "stages": manifest["stages"],
        "timings": { "wall_seconds": manifest["wall_seconds"], "peak_rss_mib": manifest["peak_rss_mib"],
                     "chunks": manifest["chunks"], "chunk_size": manifest["chunk_size"], "workers": manifest["workers"] },
        "outputs": manifest["outputs"],
        "evaluations": evaluations.iter().map(|e| json!({ "output": e.output, "evaluation": e.evaluation })).collect::<Vec<_>>(),
        "scene_stages": sections.iter().map(|s| json!({ "stage": s.stage, "kind": s.kind, "plugin": s.plugin, "summary": s.summary })).collect::<Vec<_>>(),
        "comparisons": comparisons(sections),
        "year_transfer": year_transfer(sections, evaluations),
    });
    let json_path = run_dir.join("report.json");
    crate::fsutil::write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())
        .with_context(|| format!("writing {}", json_path.display()))?;

    let megapixels = manifest["series"]["width"].as_f64().unwrap_or(0.0) * manifest["series"]["height"].as_f64().unwrap_or(0.0) / 1e6;
    let mut html = String::new();
    let name = manifest["pipeline"]["name"].as_str().unwrap_or("run");
    let _ = write!(html, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sitsflow report — {}</title><style>{STYLE}</style></head><body>", esc(name));
    let _ = write!(html, "<h1>{}</h1><p>sitsflow {} · WIT {} · {}</p>", esc(name), esc(manifest["sitsflow"].as_str().unwrap_or("")), esc(manifest["wit"].as_str().unwrap_or("")), esc(manifest["gdal"].as_str().unwrap_or("")));
    let series = &manifest["series"];
    let dates = series["dates"].as_array().map_or(0, |d| d.len());
    let _ = write!(
        html,
        "<h2>Provenance</h2><table><tr><th class=l>pipeline</th><td class=l><code>{}</code> (sha256 {}…)</td></tr><tr><th class=l>input</th><td class=l><code>{}</code>: {} dates, bands {}, {} × {} px</td></tr><tr><th class=l>seed</th><td class=l>{}</td></tr><tr><th class=l>inputs hashed</th><td class=l>{} files (see manifest.json)</td></tr></table>",
        esc(manifest["pipeline"]["path"].as_str().unwrap_or("")),
        &manifest["pipeline"]["sha256"].as_str().unwrap_or("")[..12.min(manifest["pipeline"]["sha256"].as_str().unwrap_or("").len())],
        esc(series["origin"].as_str().unwrap_or("")),
        dates,
        esc(&series["bands"].as_array().map(|b| b.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
        series["width"],
        series["height"],
        manifest["seed"],
        manifest["inputs"].as_array().map_or(0, |a| a.len()),
    );
    html.push_str("<h2>Stages and timings</h2><table><tr><th class=l>stage</th><th class=l>plugin</th><th class=l>kind</th><th class=l>sha256</th><th>CPU s</th><th>Mpx per CPU s</th></tr>");
    for s in manifest["stages"].as_array().into_iter().flatten() {
        let cpu = s["cpu_seconds"].as_f64().unwrap_or(0.0);
        let _ = write!(
            html,
            "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l><code>{}…</code></td><td>{cpu:.2}</td><td>{:.3}</td></tr>",
            esc(s["id"].as_str().unwrap_or("")),
            esc(s["plugin"].as_str().unwrap_or("")),
            esc(s["kind"].as_str().unwrap_or("")),
            &s["sha256"].as_str().unwrap_or("")[..12.min(s["sha256"].as_str().unwrap_or("").len())],
            if cpu > 0.0 { megapixels / cpu } else { 0.0 }
        );
    }
    let _ = write!(
        html,
        "</table><p>Wall time {:.1} s · peak memory {:.0} MiB (budget {} MiB) · {} chunks of {} px on {} workers{}</p>",
        manifest["wall_seconds"].as_f64().unwrap_or(0.0),
        manifest["peak_rss_mib"].as_f64().unwrap_or(0.0),
        manifest["memory_budget_mib"],
        manifest["chunks"],
        manifest["chunk_size"],
        manifest["workers"],
        match manifest["resumed_chunks"].as_u64() {
            Some(n) if n > 0 => format!(" · {n} chunks taken over from an interrupted run (their stage time is not counted here)"),
            _ => String::new(),
        }
    );
    html.push_str("<h2>Maps</h2><div class=\"quicklooks\">");
    for (name, q) in quicklooks {
        html.push_str(&quicklook_html(name, q));
    }
    html.push_str("</div>");
    for comparison in report["comparisons"].as_array().into_iter().flatten() {
        html.push_str(&comparison_html(comparison, quicklooks));
    }
    if let Some(rows) = report["year_transfer"].as_array().filter(|r| !r.is_empty()) {
        html.push_str(&year_transfer_html(rows));
    }
    for entry in evaluations {
        let e = &entry.evaluation;
        let names = legend_of(&entry.output);
        let m = &e.metrics;
        let _ = write!(
            html,
            "<h2>Accuracy of {} against <code>{}</code></h2><p>OA {:.4} · kappa {:.4} · macro F1 {:.4} · mIoU {:.4} · {} reference pixels</p>",
            esc(&entry.output),
            esc(&e.reference.display().to_string()),
            m.overall_accuracy,
            m.kappa,
            m.macro_f1,
            m.miou,
            m.samples
        );
        html.push_str("<table><tr><th class=l>class</th><th>support</th><th>producer's</th><th>user's</th><th>F1</th><th>IoU</th></tr>");
        for c in &m.classes {
            let _ = write!(
                html,
                "<tr><td class=l>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                esc(&class_label(c.class, &names)),
                c.support,
                c.producers_accuracy,
                c.users_accuracy,
                c.f1,
                c.iou
            );
        }
        html.push_str("</table><h3>Confusion matrix</h3>");
        html.push_str(&heatmap_svg(e, &names));
        html.push_str("<h3>F1 per class</h3>");
        html.push_str(&f1_bars_svg(e, &names));
        if let Some(a) = &e.area {
            let _ = write!(html, "<h3>Area-adjusted (Olofsson et al. 2014)</h3><p>OA {:.4} ± {:.4} (95 %)</p><table><tr><th class=l>class</th><th>area</th><th>± 95 %</th><th>UA</th><th>PA</th></tr>", a.overall_accuracy, a.overall_accuracy_ci95);
            for c in &a.classes {
                let _ = write!(
                    html,
                    "<tr><td class=l>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.3} ± {:.3}</td><td>{:.3} ± {:.3}</td></tr>",
                    esc(&class_label(c.class, &names)),
                    c.area,
                    c.area_ci95,
                    c.users_accuracy,
                    c.users_accuracy_ci95,
                    c.producers_accuracy,
                    c.producers_accuracy_ci95
                );
            }
            html.push_str("</table>");
        }
    }
    for section in sections {
        html.push_str(&section_html(section));
    }
    html.push_str("</body></html>\n");
    let html_path = run_dir.join("report.html");
    crate::fsutil::write_atomic(&html_path, html.as_bytes())
        .with_context(|| format!("writing {}", html_path.display()))?;
    Ok(())
}

/// Evaluates the staged outputs the pipeline asks for and stages the report.
pub fn evaluate_and_write(plan: &crate::plan::Plan, staging: &Path, outputs: &[PathBuf], manifest: &serde_json::Value, sections: &[SceneSection]) -> Result<()> {
    let mut quicklooks = Vec::new();
    for path in outputs {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let q = crate::raster::quicklook(path, 384, None).with_context(|| format!("drawing {}", path.display()))?;
        quicklooks.push((name, q));
    }
    // Labellers compared side by side are shown beside the image they classified.
    if comparisons(sections).as_array().is_some_and(|c| !c.is_empty()) {
        for path in outputs {
            if let Some(q) = crate::raster::true_colour(path, 384)? {
                quicklooks.push(("image".to_string(), q));
                break;
            }
        }
    }
    let mut evaluations = Vec::new();
    let mut sections = sections.to_vec();
    let years: Vec<i32> = crate::raster::years_of(&manifest["series"]["dates"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(str::to_string)).collect::<Vec<_>>())
        .into_iter()
        .map(|(y, _)| y)
        .collect();
    for e in &plan.evaluations {
        let lookup = e.nomenclature.as_ref().map(|n| n.lookup());
        let truth_text = e.truth.display().to_string();
        // `truth = ".../{year}.tif"` evaluates each year's map of a per-year output, and
        // how the series follows the true changes.
        let jobs: Vec<(String, PathBuf)> = if truth_text.contains("{year}") {
            years.iter().map(|y| (format!("{}_{y}", e.output), PathBuf::from(truth_text.replace("{year}", &y.to_string())))).collect()
        } else {
            vec![(e.output.clone(), e.truth.clone())]
        };
        for (output, truth) in &jobs {
            let map = staging.join(format!("{output}.tif"));
            if !map.exists() {
                bail!("[[evaluate]] output '{output}': the run wrote no {}", plan.output_dir.join(format!("{output}.tif")).display());
            }
            let evaluated = match &e.vector {
                Some(spec) => crate::eval::evaluate_map_vectors(
                    &map,
                    truth,
                    crate::eval::TruthVectors { spec, class_names: &e.class_names },
                    lookup.as_ref(),
                    e.stratified,
                ),
                None => crate::eval::evaluate_map(&map, truth, lookup.as_ref(), e.stratified),
            };
            let mut evaluation = evaluated
                .with_context(|| format!("evaluating {output} against {}", truth.display()))?;
            // The report names the map where the run publishes it, not its staging copy.
            evaluation.map = plan.output_dir.join(format!("{output}.tif"));
            log::info!("{output} against {}: OA {:.4}, kappa {:.4}", truth.display(), evaluation.metrics.overall_accuracy, evaluation.metrics.kappa);
            evaluations.push(EvaluationEntry { output: output.clone(), evaluation });
        }
        if jobs.len() > 1 && lookup.is_none() && e.vector.is_none() {
            let maps: Vec<PathBuf> = jobs.iter().map(|(o, _)| staging.join(format!("{o}.tif"))).collect();
            let truths: Vec<PathBuf> = jobs.iter().map(|(_, t)| t.clone()).collect();
            let changes = crate::eval::change_agreement(&maps, &truths)?;
            log::info!(
                "{} against the true changes: {:.4} stable where nothing changed ({} pixel-years), {:.4} of {} true changes kept",
                e.output,
                changes.stable_share,
                changes.unchanged,
                changes.detected_share,
                changes.changed
            );
            sections.push(SceneSection {
                stage: e.output.clone(),
                kind: "series evaluation".into(),
                plugin: truth_text.clone(),
                summary: json!({
                    "truth": truth_text,
                    "unchanged_pixel_years": changes.unchanged,
                    "stable_where_unchanged": changes.stable_share,
                    "changed_pixel_years": changes.changed,
                    "true_changes_kept": changes.detected_share,
                    "true_changes_kept_with_right_class": changes.detected_correct_share,
                }),
            });
        }
    }
    write_report(staging, manifest, &quicklooks, &evaluations, &sections)
}
