//! `simclr-augment`: the augmentation policy of seed 003's SimCLR pretraining — two
//! views of every patch of an image time series, each a random draw of
//!
//! 1. **random crop and resize**: a window keeping between `1 − crop` and all of each
//!    side (the seed's 20 %), placed at random and resized back to the patch by bilinear
//!    interpolation;
//! 2. **Gaussian blur** (probability `blur_probability`, σ uniform in `blur_sigma` px):
//!    separable, normalised over the valid neighbours, reflected at the edges;
//! 3. **simulated lighting**: per date, a planar gain across the patch (strength uniform
//!    in `0..lighting`, direction uniform) — illumination and haze that differ from one
//!    acquisition to the next;
//! 4. **brightness and contrast**: one gain uniform in `1 ± brightness` and one contrast
//!    factor uniform in `1 ± contrast` about each (date, band)'s patch mean;
//! 5. **erasing** (probability `erase_probability`): a rectangle of `erase_area` of the
//!    patch (aspect ratio between 1:3 and 3:1) set to NaN in every date and band — the
//!    "missing" value the networks already handle, as a cloud would leave it.
//!
//! The geometric steps (1, 2, 5) are the same in every date and band of a view; the
//! radiometric ones act on values. NaN in the input stays NaN (interpolation and blur
//! use the valid neighbours only, and give NaN where there is none).
//!
//! **Determinism.** The views of a patch depend only on its values, its seed and the
//! parameters: a SplitMix64 stream per patch, drawn in a fixed order (first view, then
//! second), and arithmetic without platform functions (`libm` for exp/sin/cos), so the
//! sandbox and the native crate give the same bits.

use sitsflow_sdk::prelude::*;
use sitsflow_sdk::sampling::SplitMix;

fn default_crop() -> f64 {
    0.2
}
fn default_probability() -> f64 {
    0.5
}
fn default_sigma() -> [f64; 2] {
    [0.1, 1.0]
}
fn default_erase_area() -> [f64; 2] {
    [0.02, 0.2]
}
fn default_brightness() -> f64 {
    0.2
}
fn default_contrast() -> f64 {
    0.2
}
fn default_lighting() -> f64 {
    0.1
}

/// Parameters (every one optional; the defaults are the seed's policy).
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Random crop: each side keeps a fraction uniform in `[1 − crop, 1]` before the
    /// resize back to the patch; `crop = 0.2` (default), 0 ≤ crop < 1 (0: no crop).
    #[serde(default = "default_crop")]
    pub crop: f64,
    /// Probability of a Gaussian blur: `blur_probability = 0.5` (default).
    #[serde(default = "default_probability")]
    pub blur_probability: f64,
    /// The blur's σ in pixels, uniform in `[low, high]`: `blur_sigma = [0.1, 1.0]` (default).
    #[serde(default = "default_sigma")]
    pub blur_sigma: [f64; 2],
    /// Probability of erasing a rectangle: `erase_probability = 0.5` (default).
    #[serde(default = "default_probability")]
    pub erase_probability: f64,
    /// The erased rectangle's share of the patch, uniform in `[low, high]`:
    /// `erase_area = [0.02, 0.2]` (default).
    #[serde(default = "default_erase_area")]
    pub erase_area: [f64; 2],
    /// Brightness: a gain uniform in `[1 − brightness, 1 + brightness]`; default 0.2.
    #[serde(default = "default_brightness")]
    pub brightness: f64,
    /// Contrast: a factor uniform in `[1 − contrast, 1 + contrast]` about each date and
    /// band's patch mean; default 0.2.
    #[serde(default = "default_contrast")]
    pub contrast: f64,
    /// Simulated lighting: per date a planar gain reaching `±strength` at the patch's
    /// edges, strength uniform in `[0, lighting]`; default 0.1 (0: none).
    #[serde(default = "default_lighting")]
    pub lighting: f64,
}

impl Params {
    fn check(&self) -> Result<(), StageError> {
        let bad = |m: String| Err(StageError::InvalidParams(m));
        let unit = |name: &str, v: f64| -> Result<(), StageError> {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(StageError::InvalidParams(format!("{name} = {v} is not in [0, 1]"))) }
        };
        if !(0.0..1.0).contains(&self.crop) {
            return bad(format!("crop = {} is not in [0, 1)", self.crop));
        }
        unit("blur_probability", self.blur_probability)?;
        unit("erase_probability", self.erase_probability)?;
        unit("brightness", self.brightness)?;
        unit("contrast", self.contrast)?;
        unit("lighting", self.lighting)?;
        let [lo, hi] = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi <= 16.0) {
            return bad(format!("blur_sigma = [{lo}, {hi}] must satisfy 0 < low ≤ high ≤ 16"));
        }
        let [lo, hi] = self.erase_area;
        if !(lo > 0.0 && lo <= hi && hi < 1.0) {
            return bad(format!("erase_area = [{lo}, {hi}] must satisfy 0 < low ≤ high < 1"));
        }
        Ok(())
    }
}

pub struct SimclrAugment;

impl Stage for SimclrAugment {
    const NAME: &'static str = "simclr-augment";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUMMARY: &'static str =
        "SimCLR views of SITS patches: crop and resize, blur, lighting, brightness/contrast, erasing (seeded).";
    type Params = Params;
}

impl AugmenterStage for SimclrAugment {
    fn augment(batch: PatchBatch, params: Params) -> Result<ViewPair, StageError> {
        params.check()?;
        batch.check()?;
        if batch.rows < 2 || batch.cols < 2 {
            return Err(StageError::InvalidInput(format!("patches of {} × {} px: at least 2 × 2 are needed", batch.rows, batch.cols)));
        }
        let len = batch.patch_len();
        let shape = Shape { planes: batch.dates.len() * batch.bands.len(), bands: batch.bands.len(), rows: batch.rows, cols: batch.cols };
        let mut first = vec![0f32; batch.data.len()];
        let mut second = vec![0f32; batch.data.len()];
        let mut scratch = Scratch::default();
        for (i, &seed) in batch.seeds.iter().enumerate() {
            let patch = &batch.data[i * len..(i + 1) * len];
            let mut rng = SplitMix(seed);
            view(patch, &shape, &params, &mut rng, &mut first[i * len..(i + 1) * len], &mut scratch);
            view(patch, &shape, &params, &mut rng, &mut second[i * len..(i + 1) * len], &mut scratch);
        }
        Ok(ViewPair { first, second })
    }
}

sitsflow_sdk::export_augmenter_stage!(SimclrAugment);

/// A patch's layout: `planes` = dates × bands planes of `rows × cols`.
struct Shape {
    planes: usize,
    bands: usize,
    rows: usize,
    cols: usize,
}

#[derive(Default)]
struct Scratch {
    plane: Vec<f32>,
    weights: Vec<f64>,
    /// `rows × (2·radius + 1)` reflected row indices of the blur's taps (and columns').
    row_taps: Vec<u32>,
    col_taps: Vec<u32>,
}

/// Uniform in `[0, 1)` with 53 random bits.
fn uniform(rng: &mut SplitMix) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn between(rng: &mut SplitMix, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform(rng)
}

/// One view of `patch` into `out`. Every random draw happens here, in a fixed order,
/// whether or not the step it decides is taken (the stream stays aligned).
fn view(patch: &[f32], shape: &Shape, p: &Params, rng: &mut SplitMix, out: &mut [f32], scratch: &mut Scratch) {
    let (rows, cols) = (shape.rows, shape.cols);
    // 1. Crop window (in source pixel coordinates) resized onto the patch.
    let keep_r = between(rng, 1.0 - p.crop, 1.0);
    let keep_c = between(rng, 1.0 - p.crop, 1.0);
    let h = keep_r * rows as f64;
    let w = keep_c * cols as f64;
    let top = between(rng, 0.0, rows as f64 - h);
    let left = between(rng, 0.0, cols as f64 - w);
    let blur = uniform(rng) < p.blur_probability;
    let sigma = between(rng, p.blur_sigma[0], p.blur_sigma[1]);
    let brightness = between(rng, 1.0 - p.brightness, 1.0 + p.brightness);
    let contrast = between(rng, 1.0 - p.contrast, 1.0 + p.contrast);
    let erase = uniform(rng) < p.erase_probability;
    let area = between(rng, p.erase_area[0], p.erase_area[1]) * (rows * cols) as f64;
    let aspect = libm::exp(between(rng, libm::log(1.0 / 3.0), libm::log(3.0)));
    let erase_h = (libm::sqrt(area * aspect).round() as usize).clamp(1, rows);
    let erase_w = (libm::sqrt(area / aspect).round() as usize).clamp(1, cols);
    let erase_top = (uniform(rng) * (rows - erase_h + 1) as f64) as usize;
    let erase_left = (uniform(rng) * (cols - erase_w + 1) as f64) as usize;
    let dates = shape.planes / shape.bands;
    let mut lights = Vec::with_capacity(dates);
    for _ in 0..dates {
        let strength = between(rng, 0.0, p.lighting);
        let angle = between(rng, 0.0, 2.0 * std::f64::consts::PI);
        lights.push((strength * libm::cos(angle), strength * libm::sin(angle)));
    }
    // The geometry is the same in every plane: sampling positions and blur taps once.
    let ys = sampling(rows, top, h);
    let xs = sampling(cols, left, w);
    if blur {
        gaussian_weights(sigma, &mut scratch.weights);
        taps(rows, scratch.weights.len() - 1, &mut scratch.row_taps);
        taps(cols, scratch.weights.len() - 1, &mut scratch.col_taps);
    }
    let n = rows * cols;
    for plane in 0..shape.planes {
        let src = &patch[plane * n..(plane + 1) * n];
        let dst = &mut out[plane * n..(plane + 1) * n];
        resize(src, cols, &ys, &xs, dst);
        if blur {
            scratch.plane.clear();
            scratch.plane.extend_from_slice(dst);
            blur_plane(&mut scratch.plane, dst, rows, cols, &scratch.weights, &scratch.row_taps, &scratch.col_taps);
        }
        let (gy, gx) = lights[plane / shape.bands];
        // Mean of the valid values for the contrast's centre.
        let (mut sum, mut count) = (0f64, 0usize);
        for &v in dst.iter() {
            if !v.is_nan() {
                sum += v as f64;
                count += 1;
            }
        }
        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
        for r in 0..rows {
            let y = if rows > 1 { 2.0 * r as f64 / (rows - 1) as f64 - 1.0 } else { 0.0 };
            for c in 0..cols {
                let x = if cols > 1 { 2.0 * c as f64 / (cols - 1) as f64 - 1.0 } else { 0.0 };
                let v = &mut dst[r * cols + c];
                if v.is_nan() {
                    continue;
                }
                let gain = 1.0 + gy * y + gx * x;
                let lit = *v as f64 * gain;
                *v = (((lit - mean * gain) * contrast + mean * gain) * brightness) as f32;
            }
        }
        if erase {
            for r in erase_top..erase_top + erase_h {
                dst[r * cols + erase_left..r * cols + erase_left + erase_w].fill(f32::NAN);
            }
        }
    }
}

/// Where each output row (or column) samples the source: the two neighbours and the
/// weight of the second, for a window starting at `start` of `extent` source px resized
/// onto `n` px (pixel centres aligned).
fn sampling(n: usize, start: f64, extent: f64) -> Vec<(usize, usize, f64)> {
    let step = extent / n as f64;
    (0..n)
        .map(|i| {
            let y = (start + (i as f64 + 0.5) * step - 0.5).clamp(0.0, (n - 1) as f64);
            let y0 = (y.floor() as usize).min(n - 1);
            (y0, (y0 + 1).min(n - 1), y - y0 as f64)
        })
        .collect()
}

/// Bilinear resize along `ys` × `xs`, weighting only valid corners; NaN where none is.
fn resize(src: &[f32], cols: usize, ys: &[(usize, usize, f64)], xs: &[(usize, usize, f64)], dst: &mut [f32]) {
    if !src.iter().any(|v| v.is_nan()) {
        // Every corner valid (the usual plane): separable interpolation without the
        // weight bookkeeping. It may differ from the general path in the last bit; which
        // path runs depends on the data only, so the sandbox and native agree.
        for (r, &(y0, y1, fy)) in ys.iter().enumerate() {
            let (a, b) = (&src[y0 * cols..(y0 + 1) * cols], &src[y1 * cols..(y1 + 1) * cols]);
            for (c, &(x0, x1, fx)) in xs.iter().enumerate() {
                let top = a[x0] as f64 * (1.0 - fx) + a[x1] as f64 * fx;
                let bottom = b[x0] as f64 * (1.0 - fx) + b[x1] as f64 * fx;
                dst[r * cols + c] = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        }
        return;
    }
    for (r, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (c, &(x0, x1, fx)) in xs.iter().enumerate() {
            let corners = [
                (src[y0 * cols + x0], (1.0 - fy) * (1.0 - fx)),
                (src[y0 * cols + x1], (1.0 - fy) * fx),
                (src[y1 * cols + x0], fy * (1.0 - fx)),
                (src[y1 * cols + x1], fy * fx),
            ];
            let (mut sum, mut weight) = (0f64, 0f64);
            for (v, wt) in corners {
                if !v.is_nan() && wt > 0.0 {
                    sum += v as f64 * wt;
                    weight += wt;
                }
            }
            dst[r * cols + c] = if weight > 0.0 { (sum / weight) as f32 } else { f32::NAN };
        }
    }
}

/// The half kernel `w[k] = exp(−k² / 2σ²)`, k = 0..=⌈3σ⌉ (normalised where applied).
fn gaussian_weights(sigma: f64, out: &mut Vec<f64>) {
    let radius = libm::ceil(3.0 * sigma) as usize;
    out.clear();
    for k in 0..=radius {
        out.push(libm::exp(-((k * k) as f64) / (2.0 * sigma * sigma)));
    }
}

/// Index `i` mirrored into `0..n` without repeating the edge (as the host pads).
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let i = i.rem_euclid(period);
    (if i < n as isize { i } else { period - i }) as usize
}

/// The reflected source index of each tap `k = −radius..=radius` of each of `n` positions.
fn taps(n: usize, radius: usize, out: &mut Vec<u32>) {
    out.clear();
    for i in 0..n {
        for k in -(radius as isize)..=radius as isize {
            out.push(reflect(i as isize + k, n) as u32);
        }
    }
}

/// Separable blur of `plane` into `out`, each pass normalised over the valid neighbours.
fn blur_plane(plane: &mut [f32], out: &mut [f32], rows: usize, cols: usize, weights: &[f64], row_taps: &[u32], col_taps: &[u32]) {
    let radius = weights.len() - 1;
    let width = 2 * radius + 1;
    // The kernel over taps −radius..=radius.
    let kernel: Vec<f64> = (0..width).map(|t| weights[t.abs_diff(radius)]).collect();
    if !plane.iter().any(|v| v.is_nan()) {
        // No missing value: one normalised kernel (its sum differs at reflected edges
        // only by which taps repeat, not by how many), plain multiply-adds.
        let total: f64 = kernel.iter().sum();
        let normalised: Vec<f64> = kernel.iter().map(|k| k / total).collect();
        for r in 0..rows {
            let line = &plane[r * cols..(r + 1) * cols];
            for c in 0..cols {
                let t = &col_taps[c * width..(c + 1) * width];
                out[r * cols + c] = t.iter().zip(&normalised).map(|(&j, k)| line[j as usize] as f64 * k).sum::<f64>() as f32;
            }
        }
        plane.copy_from_slice(out);
        for r in 0..rows {
            let t = &row_taps[r * width..(r + 1) * width];
            for c in 0..cols {
                out[r * cols + c] = t.iter().zip(&normalised).map(|(&i, k)| plane[i as usize * cols + c] as f64 * k).sum::<f64>() as f32;
            }
        }
        return;
    }
    #[inline(always)]
    fn convolve(kernel: &[f64], taps: &[u32], value: impl Fn(usize) -> f32) -> f32 {
        let (mut sum, mut weight) = (0f64, 0f64);
        for (&t, &wt) in taps.iter().zip(kernel) {
            let v = value(t as usize);
            if !v.is_nan() {
                sum += v as f64 * wt;
                weight += wt;
            }
        }
        if weight > 0.0 { (sum / weight) as f32 } else { f32::NAN }
    }
    for r in 0..rows {
        let line = &plane[r * cols..(r + 1) * cols];
        for c in 0..cols {
            out[r * cols + c] = convolve(&kernel, &col_taps[c * width..(c + 1) * width], |j| line[j]);
        }
    }
    plane.copy_from_slice(out);
    for r in 0..rows {
        let t = &row_taps[r * width..(r + 1) * width];
        for c in 0..cols {
            out[r * cols + c] = convolve(&kernel, t, |i| plane[i * cols + c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(count: usize, rows: usize, cols: usize) -> PatchBatch {
        let dates = vec!["2018-04-01".to_string(), "2018-06-01".to_string()];
        let bands = vec!["B04".to_string(), "B08".to_string(), "B11".to_string()];
        let len = dates.len() * bands.len() * rows * cols;
        let data = (0..count * len).map(|i| 0.05 + 0.4 * ((i * 7919) % 1000) as f32 / 1000.0).collect();
        PatchBatch { count, dates, bands, rows, cols, data, seeds: (0..count as u64).map(|s| 1000 + s).collect() }
    }

    fn params(json: &str) -> Params {
        SimclrAugment::parse_params(json).unwrap()
    }

    #[test]
    fn views_are_seeded_per_patch_and_independent_of_the_batch() {
        let b = batch(3, 16, 12);
        let all = SimclrAugment::augment(b.clone(), params("{}")).unwrap();
        let len = b.patch_len();
        let mut one = b.clone();
        one.count = 1;
        one.data = b.data[len..2 * len].to_vec();
        one.seeds = vec![b.seeds[1]];
        let alone = SimclrAugment::augment(one, params("{}")).unwrap();
        assert_eq!(alone.first, all.first[len..2 * len]);
        assert_eq!(alone.second, all.second[len..2 * len]);
        // The two views differ, and another seed gives other views.
        assert_ne!(all.first[..len], all.second[..len]);
        let mut reseeded = b.clone();
        reseeded.seeds[0] += 1;
        assert_ne!(SimclrAugment::augment(reseeded, params("{}")).unwrap().first[..len], all.first[..len]);
    }

    #[test]
    fn with_every_step_off_a_view_is_the_patch() {
        let b = batch(2, 8, 8);
        let off = params(r#"{"crop": 0, "blur_probability": 0, "erase_probability": 0, "brightness": 0, "contrast": 0, "lighting": 0}"#);
        let v = SimclrAugment::augment(b.clone(), off).unwrap();
        for (a, x) in v.first.iter().zip(&b.data) {
            assert!((a - x).abs() < 1e-6, "{a} vs {x}");
        }
    }

    #[test]
    fn erasing_leaves_a_nan_rectangle_of_the_asked_area_in_every_plane() {
        let b = batch(1, 20, 20);
        let p = params(r#"{"erase_probability": 1, "erase_area": [0.1, 0.1], "blur_probability": 0}"#);
        let v = SimclrAugment::augment(b.clone(), p).unwrap();
        let n = 400;
        let per_plane: Vec<usize> = (0..6).map(|k| v.first[k * n..(k + 1) * n].iter().filter(|x| x.is_nan()).count()).collect();
        assert!(per_plane.iter().all(|&c| c == per_plane[0]), "{per_plane:?}");
        assert!((25..=60).contains(&per_plane[0]), "{per_plane:?}");
    }

    #[test]
    fn blur_ignores_missing_pixels_instead_of_spreading_them() {
        let mut b = batch(1, 10, 10);
        b.data[55] = f32::NAN;
        let p = params(r#"{"blur_probability": 1, "blur_sigma": [1, 1], "erase_probability": 0, "crop": 0}"#);
        let v = SimclrAugment::augment(b, p).unwrap();
        assert_eq!(v.first[..100].iter().filter(|x| x.is_nan()).count(), 0);
        assert!(v.first.iter().skip(100).all(|x| x.is_finite()));
    }

    #[test]
    fn parameters_and_shapes_are_checked() {
        assert!(matches!(params(r#"{"crop": 1.0}"#).check(), Err(StageError::InvalidParams(m)) if m.contains("crop")));
        assert!(SimclrAugment::parse_params(r#"{"blurr": 1}"#).is_err());
        let mut b = batch(2, 8, 8);
        b.seeds.pop();
        assert!(matches!(SimclrAugment::augment(b, params("{}")), Err(StageError::InvalidInput(m)) if m.contains("seeds")));
    }
}
