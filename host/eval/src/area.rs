//! Area-adjusted accuracy and class areas with 95 % confidence intervals, for a
//! reference sample stratified by map class (Olofsson et al. 2014, "Good practices
//! for estimating area and assessing accuracy of land change", RSE 148, eqs. 1–11).
//!
//! Notation: strata i are map classes with N_i mapped pixels (weight W_i = N_i / N);
//! n_ij is the number of sample units mapped i whose reference class is j; n_i· = Σ_j n_ij.

use super::Confusion;
use anyhow::{Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;

/// z for a two-sided 95 % interval.
const Z95: f64 = 1.96;

/// Area-adjusted estimates for one class, with their 95 % intervals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassArea {
    /// The class code.
    pub class: u16,
    /// Pixels the map gives this class.
    pub map_pixels: u64,
    /// Sample units in this class's stratum.
    pub sample_units: u64,
    /// Estimated proportion of the area that is truly this class (p̂·j).
    pub proportion: f64,
    /// Estimated area in the unit of `pixel_area` (e.g. m²), and ± its 95 % interval.
    pub area: f64,
    /// Half-width of the 95 % interval of `area`.
    pub area_ci95: f64,
    /// User's accuracy: share of this stratum's sample units whose reference is this class.
    pub users_accuracy: f64,
    /// Half-width of the 95 % interval of `users_accuracy`.
    pub users_accuracy_ci95: f64,
    /// Producer's accuracy, area-weighted (p̂_jj / p̂·j).
    pub producers_accuracy: f64,
    /// Half-width of the 95 % interval of `producers_accuracy`.
    pub producers_accuracy_ci95: f64,
}

/// Area-adjusted accuracy and class areas from a sample stratified by map class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AreaEstimate {
    /// Area-weighted overall accuracy (Σ_j p̂_jj).
    pub overall_accuracy: f64,
    /// Half-width of the 95 % interval of `overall_accuracy`.
    pub overall_accuracy_ci95: f64,
    /// The map's classified area, in the unit of `pixel_area`.
    pub total_area: f64,
    /// One estimate per class of the map or the sample, by ascending code.
    pub classes: Vec<ClassArea>,
}

/// Estimates from a sample confusion matrix (rows reference, columns map, as
/// [`Confusion`] keeps it), the map's pixel count per class, and a pixel's area.
pub fn area_estimate(sample: &Confusion, map_pixels: &BTreeMap<u16, u64>, pixel_area: f64) -> Result<AreaEstimate> {
    // Classes: those of the map and of the sample.
    let mut classes: Vec<u16> = map_pixels.keys().copied().filter(|c| *c != 0).collect();
    classes.extend(sample.classes.iter().copied().filter(|c| *c != 0));
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    // n[i][j]: mapped i, reference j.
    let mut n = vec![vec![0f64; k]; k];
    for (r, ref_class) in sample.classes.iter().enumerate() {
        for (m, map_class) in sample.classes.iter().enumerate() {
            let count = sample.counts[r][m] as f64;
            if count == 0.0 {
                continue;
            }
            let (Ok(i), Ok(j)) = (classes.binary_search(map_class), classes.binary_search(ref_class)) else { continue };
            n[i][j] += count;
        }
    }
    let big_n: Vec<f64> = classes.iter().map(|c| *map_pixels.get(c).unwrap_or(&0) as f64).collect();
    let total: f64 = big_n.iter().sum();
    if total == 0.0 {
        bail!("the map has no classified pixels");
    }
    let w: Vec<f64> = big_n.iter().map(|x| x / total).collect();
    let n_i: Vec<f64> = n.iter().map(|row| row.iter().sum()).collect();
    for (i, c) in classes.iter().enumerate() {
        if w[i] > 0.0 && n_i[i] < 2.0 {
            bail!("map class {c} has {} sample units; a stratum needs at least 2 for a variance", n_i[i]);
        }
    }
    // p̂_ij = W_i n_ij / n_i·
    let p = |i: usize, j: usize| if n_i[i] > 0.0 { w[i] * n[i][j] / n_i[i] } else { 0.0 };
    let col: Vec<f64> = (0..k).map(|j| (0..k).map(|i| p(i, j)).sum()).collect();
    let overall: f64 = (0..k).map(|j| p(j, j)).sum();
    let ua: Vec<f64> = (0..k).map(|i| if n_i[i] > 0.0 { n[i][i] / n_i[i] } else { 0.0 }).collect();
    let strata = || (0..k).filter(|&i| n_i[i] > 1.0);
    let v_overall: f64 = strata().map(|i| w[i] * w[i] * ua[i] * (1.0 - ua[i]) / (n_i[i] - 1.0)).sum();

    let mut out = Vec::new();
    for j in 0..k {
        let v_prop: f64 = strata()
            .map(|i| {
                let f = n[i][j] / n_i[i];
                w[i] * w[i] * f * (1.0 - f) / (n_i[i] - 1.0)
            })
            .sum();
        let v_ua = if n_i[j] > 1.0 { ua[j] * (1.0 - ua[j]) / (n_i[j] - 1.0) } else { 0.0 };
        let pa = if col[j] > 0.0 { p(j, j) / col[j] } else { 0.0 };
        // Eq. 7: the producer's accuracy's variance.
        let n_hat_j: f64 = strata().map(|i| big_n[i] * n[i][j] / n_i[i]).sum();
        let v_pa = if n_hat_j > 0.0 && n_i[j] > 1.0 {
            let own = big_n[j] * big_n[j] * (1.0 - pa) * (1.0 - pa) * ua[j] * (1.0 - ua[j]) / (n_i[j] - 1.0);
            let others: f64 = strata()
                .filter(|&i| i != j)
                .map(|i| {
                    let f = n[i][j] / n_i[i];
                    big_n[i] * big_n[i] * f * (1.0 - f) / (n_i[i] - 1.0)
                })
                .sum();
            (own + pa * pa * others) / (n_hat_j * n_hat_j)
        } else {
            0.0
        };
        out.push(ClassArea {
            class: classes[j],
            map_pixels: big_n[j] as u64,
            sample_units: n_i[j] as u64,
            proportion: col[j],
            area: col[j] * total * pixel_area,
            area_ci95: Z95 * v_prop.sqrt() * total * pixel_area,
            users_accuracy: ua[j],
            users_accuracy_ci95: Z95 * v_ua.sqrt(),
            producers_accuracy: pa,
            producers_accuracy_ci95: Z95 * v_pa.sqrt(),
        });
    }
    Ok(AreaEstimate {
        overall_accuracy: overall,
        overall_accuracy_ci95: Z95 * v_overall.sqrt(),
        total_area: total * pixel_area,
        classes: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Olofsson et al. (2014), section 5 and tables 8–9:
    /// strata deforestation (1), forest gain (2), stable forest (3), stable non-forest (4);
    /// map areas in 30 m pixels; sample counts with rows = map, columns = reference.
    #[test]
    fn olofsson_2014_worked_example() {
        let map_rows = [[66u64, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]];
        let map_pixels: BTreeMap<u16, u64> = [(1, 200_000), (2, 150_000), (3, 3_200_000), (4, 6_450_000)].into_iter().collect();
        // Our Confusion is rows = reference, columns = map: transpose.
        let sample = Confusion {
            classes: vec![1, 2, 3, 4],
            counts: (0..4).map(|r| (0..4).map(|m| map_rows[m][r]).collect()).collect(),
        };
        let e = area_estimate(&sample, &map_pixels, 0.09).unwrap(); // 30 m pixel = 0.09 ha
        // Published: deforestation area 21 158 ha ± 6 158; forest gain 11 686 ± 3 756;
        // stable forest 285 770 ± 15 510; stable non-forest 581 386 ± 16 282 (ha, 95 %).
        let published = [(21_158.0, 6_158.0), (11_686.0, 3_756.0), (285_770.0, 15_510.0), (581_386.0, 16_282.0)];
        for (c, (area, ci)) in e.classes.iter().zip(published) {
            assert!((c.area - area).abs() < 1.0, "class {}: area {} vs {area}", c.class, c.area);
            assert!((c.area_ci95 - ci).abs() < 2.0, "class {}: ±{} vs ±{ci}", c.class, c.area_ci95);
        }
        // Published: OA 0.947 ± 0.019; UA deforestation 0.88 ± 0.07, PA 0.75 ± 0.21.
        assert!((e.overall_accuracy - 0.947).abs() < 5e-4, "{}", e.overall_accuracy);
        assert!((e.overall_accuracy_ci95 - 0.019).abs() < 1e-3, "{}", e.overall_accuracy_ci95);
        assert!((e.classes[0].users_accuracy - 0.88).abs() < 5e-3);
        assert!((e.classes[0].users_accuracy_ci95 - 0.07).abs() < 5e-3);
        assert!((e.classes[0].producers_accuracy - 0.75).abs() < 5e-3, "{}", e.classes[0].producers_accuracy);
        assert!((e.classes[0].producers_accuracy_ci95 - 0.21).abs() < 5e-3, "{}", e.classes[0].producers_accuracy_ci95);
    }
}
