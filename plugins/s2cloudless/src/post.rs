//! s2cloudless's post-processing (`S2PixelCloudDetector.get_mask_from_prob` in
//! `cloud_detector.py`, version 1.7.3), rebuilt on plain arrays:
//!
//! 1. `cv2.filter2D(prob, -1, disk / sum(disk), borderType=cv2.BORDER_REFLECT)`: the mean of
//!    the probability over a disk, with `abc|cba` borders;
//! 2. `> threshold`, compared in `f32` (NumPy casts the Python float to the array's `f32`);
//! 3. `cv2.dilate(mask, disk)`: binary dilation, pixels outside the image never set.
//!
//! The disk is `cv2_disk` from s2cloudless's `utils.py`, a filled `cv2.circle`.

/// s2cloudless's `cv2_disk(radius)`: `cv2.circle(zeros((2r+1, 2r+1)), (r, r), r, 1, thickness=-1)`,
/// as a `(2r+1) × (2r+1)` row-major 0/1 array. OpenCV draws a filled circle with the
/// midpoint algorithm (`Circle` in `imgproc/src/drawing.cpp`), filling four horizontal
/// spans per step; this repeats its integer arithmetic.
pub fn disk(radius: usize) -> Vec<u8> {
    let side = 2 * radius + 1;
    let mut out = vec![0u8; side * side];
    let c = radius as i64;
    let mut span = |row: i64, from: i64, to: i64| {
        for col in from..=to {
            out[row as usize * side + col as usize] = 1;
        }
    };
    let (mut err, mut dx, mut dy, mut plus, mut minus) = (0i64, c, 0i64, 1i64, 2 * c - 1);
    while dx >= dy {
        span(c - dy, c - dx, c + dx);
        span(c + dy, c - dx, c + dx);
        span(c - dx, c - dy, c + dy);
        span(c + dx, c - dy, c + dy);
        dy += 1;
        err += plus;
        plus += 2;
        // OpenCV's branch-free step: mask is 0 while err <= 0, else all ones (-1).
        let mask = if err <= 0 { 0 } else { -1 };
        err -= minus & mask;
        dx += mask;
        minus -= mask & 2;
    }
    out
}

/// The disk as row spans: for each row offset `dy` in `-r..=r`, the half-open column offset
/// range it covers (a filled circle is convex, so each row is one span).
fn disk_spans(radius: usize) -> Vec<(isize, isize, isize)> {
    let side = 2 * radius + 1;
    let d = disk(radius);
    let r = radius as isize;
    (0..side)
        .filter_map(|row| {
            let line = &d[row * side..(row + 1) * side];
            let first = line.iter().position(|&v| v == 1)?;
            let last = line.iter().rposition(|&v| v == 1)?;
            Some((row as isize - r, first as isize - r, last as isize - r + 1))
        })
        .collect()
}

/// OpenCV's `borderInterpolate(p, len, BORDER_REFLECT)`: `fedcba|abcdefgh|hgfedcb`, the edge
/// pixel repeated, folding again for offsets longer than the axis.
pub fn reflect(p: isize, len: usize) -> usize {
    let len = len as isize;
    if len == 1 {
        return 0;
    }
    let mut p = p;
    while p < 0 || p >= len {
        p = if p < 0 { -p - 1 } else { len - 1 - (p - len) };
    }
    p as usize
}

/// Mean of `prob` over `disk(radius)` around every pixel, borders reflected, as
/// `cv2.filter2D` computes it for an `f32` image: weights `1/n` in `f32`, taken in the
/// kernel's row-major order, each step a fused multiply-add (OpenCV's SIMD filter loop).
///
/// Pixels with `usable[p] == false` (no data) are left out and the weights of the rest are
/// renormalised, so a gap never darkens or brightens its neighbours; where every pixel of
/// the disk is usable this is exactly the plain filter. The value at unusable pixels is 0.
pub fn mean_filter(prob: &[f32], usable: &[bool], rows: usize, cols: usize, radius: usize) -> Vec<f32> {
    assert_eq!(prob.len(), rows * cols);
    assert_eq!(usable.len(), rows * cols);
    let side = 2 * radius + 1;
    let d = disk(radius);
    let offsets: Vec<(isize, isize)> = (0..side * side)
        .filter(|&k| d[k] == 1)
        .map(|k| ((k / side) as isize - radius as isize, (k % side) as isize - radius as isize))
        .collect();
    let weight = (1.0 / offsets.len() as f64) as f32;
    // Reflected copies with a `radius` border make the inner loop branch-free.
    let (prow, pcol) = (rows + 2 * radius, cols + 2 * radius);
    let mut padded = vec![0f32; prow * pcol];
    let mut padded_ok = vec![false; prow * pcol];
    for r in 0..prow {
        let sr = reflect(r as isize - radius as isize, rows);
        for c in 0..pcol {
            let sc = reflect(c as isize - radius as isize, cols);
            padded[r * pcol + c] = prob[sr * cols + sc];
            padded_ok[r * pcol + c] = usable[sr * cols + sc];
        }
    }
    let deltas: Vec<usize> = offsets
        .iter()
        .map(|&(dr, dc)| ((dr + radius as isize) as usize) * pcol + (dc + radius as isize) as usize)
        .collect();
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            if !usable[r * cols + c] {
                continue;
            }
            let base = r * pcol + c;
            let mut sum = 0f32;
            let mut weights = 0f32;
            let mut all = true;
            for &delta in &deltas {
                if padded_ok[base + delta] {
                    sum = fma_f32(padded[base + delta], weight, sum);
                    weights += weight;
                } else {
                    all = false;
                }
            }
            out[r * cols + c] = if all { sum } else { sum / weights };
        }
    }
    out
}

/// `a * b + c` rounded once to `f32`: the product of two `f32` is exact in `f64`, so only the
/// sum rounds there first (a double rounding that can differ from a true fused multiply-add
/// only when the `f64` sum lands exactly halfway between two `f32`).
#[inline]
fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    (a as f64 * b as f64 + c as f64) as f32
}

/// `cv2.dilate(mask, disk(radius))` of a 0/1 mask: a pixel is set if any set pixel lies
/// within the disk around it; pixels outside the image count as unset (OpenCV's default
/// border for dilation). Uses per-row prefix counts, so the cost per pixel grows with the
/// disk's height, not its area.
pub fn dilate(mask: &[u8], rows: usize, cols: usize, radius: usize) -> Vec<u8> {
    assert_eq!(mask.len(), rows * cols);
    if radius == 0 {
        return mask.to_vec();
    }
    let spans = disk_spans(radius);
    // prefix[r * (cols + 1) + c] = set pixels in row r before column c.
    let mut prefix = vec![0u32; rows * (cols + 1)];
    for r in 0..rows {
        let mut n = 0;
        for c in 0..cols {
            prefix[r * (cols + 1) + c] = n;
            n += (mask[r * cols + c] != 0) as u32;
        }
        prefix[r * (cols + 1) + cols] = n;
    }
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let hit = spans.iter().any(|&(dr, from, to)| {
                let rr = r as isize + dr;
                if rr < 0 || rr >= rows as isize {
                    return false;
                }
                let a = (c as isize + from).clamp(0, cols as isize) as usize;
                let b = (c as isize + to).clamp(0, cols as isize) as usize;
                let row = &prefix[rr as usize * (cols + 1)..];
                row[b] > row[a]
            });
            out[r * cols + c] = hit as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_match_opencv_circles() {
        assert_eq!(disk(0), [1]);
        // Radius 1 is the 5-pixel cross s2cloudless's defaults use.
        assert_eq!(disk(1), [0, 1, 0, 1, 1, 1, 0, 1, 0]);
        #[rustfmt::skip]
        let two = [
            0, 0, 1, 0, 0,
            0, 1, 1, 1, 0,
            1, 1, 1, 1, 1,
            0, 1, 1, 1, 0,
            0, 0, 1, 0, 0,
        ];
        assert_eq!(disk(2), two);
        // Radius 3 by hand through OpenCV's steps: (dx, dy) = (3, 0), (2, 1), (2, 2) → row 0
        // spans ±3, rows ±1 and ±2 span ±2, rows ±3 span 0 (the same as skimage's x² + y² ≤ 9).
        #[rustfmt::skip]
        let three = [
            0, 0, 0, 1, 0, 0, 0,
            0, 1, 1, 1, 1, 1, 0,
            0, 1, 1, 1, 1, 1, 0,
            1, 1, 1, 1, 1, 1, 1,
            0, 1, 1, 1, 1, 1, 0,
            0, 1, 1, 1, 1, 1, 0,
            0, 0, 0, 1, 0, 0, 0,
        ];
        assert_eq!(disk(3), three);
    }

    #[test]
    fn reflect_repeats_the_edge() {
        // fedcba|abcdefgh|hgfedcb on a 4-long axis "abcd".
        let got: Vec<usize> = (-3..7).map(|p| reflect(p, 4)).collect();
        assert_eq!(got, [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        assert_eq!(reflect(-2, 1), 0);
        // Folding twice on a 2-long axis: -3 → 2 → 1.
        assert_eq!(reflect(-3, 2), 1);
    }

    #[test]
    fn mean_filter_uses_the_cross_and_reflected_borders() {
        // 2 × 3 image, radius 1 (cross of 5, weight 0.2).
        let prob = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let all = [true; 6];
        let m = mean_filter(&prob, &all, 2, 3, 1);
        // Top-left: itself 1, up (reflected) 1, down 4, left (reflected) 1, right 2 → 9/5.
        // Bottom-right: 6, down 6, up 3, right 6, left 5 → 26/5.
        // Top-middle: 2, up 2, down 5, left 1, right 3 → 13/5.
        let expect = [9.0 / 5.0, 13.0 / 5.0, 17.0 / 5.0, 18.0 / 5.0, 22.0 / 5.0, 26.0 / 5.0];
        for (g, e) in m.iter().zip(expect) {
            assert!((g - e).abs() < 1e-6, "{m:?}");
        }
        // A pixel without data drops out and the rest are renormalised: top-middle then
        // sees 2 + 2 + 1 + 3 (the 5 below is gone) over 4 weights.
        let mut usable = all;
        usable[4] = false;
        let m = mean_filter(&prob, &usable, 2, 3, 1);
        assert!((m[1] - 2.0).abs() < 1e-6, "{m:?}");
        assert_eq!(m[4], 0.0);
    }

    #[test]
    fn dilation_grows_by_the_disk_and_ignores_outside() {
        let mut mask = vec![0u8; 25];
        mask[12] = 1; // centre of 5 × 5
        mask[0] = 1; // corner
        let out = dilate(&mask, 5, 5, 1);
        #[rustfmt::skip]
        let expect = [
            1, 1, 0, 0, 0,
            1, 0, 1, 0, 0,
            0, 1, 1, 1, 0,
            0, 0, 1, 0, 0,
            0, 0, 0, 0, 0,
        ];
        assert_eq!(out, expect);
        // Radius 2 from the centre is disk(2) itself.
        let mut centre = vec![0u8; 25];
        centre[12] = 1;
        assert_eq!(dilate(&centre, 5, 5, 2), disk(2));
        assert_eq!(dilate(&centre, 5, 5, 0), centre);
    }
}
