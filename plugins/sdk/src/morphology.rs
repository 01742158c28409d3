//! Square-window morphology on `rows × cols` planes: binary dilation, and running
//! maximum and minimum (grey-level dilation and erosion) for closings.
//!
//! A square window of radius `r` is separable: a pass along each row, then a pass along
//! each column. Each pass takes a window of `w = 2r + 1` in `⌈log₂ w⌉ + 1` sweeps of the
//! line by doubling (van Herk's idea in its logarithmic form): after the sweep with shift
//! `s`, cell `i` holds the extreme of `[i, i + 2s)`, and the last sweep combines two
//! overlapping windows of the largest power of two `≤ w`. That works because max, min and
//! "or" are idempotent. Every sweep is one elementwise operation over two contiguous
//! slices, which LLVM vectorises (SSE natively, `simd128` in the sandbox) and which loops
//! back once per vector rather than once per window cell — in the sandbox each loop
//! back-edge also checks the deadline. The column pass works on whole rows, so it is
//! contiguous too.
//!
//! Cells outside the plane are the operation's identity (never set, −∞ for a maximum,
//! +∞ for a minimum): a window at the border is clipped to the plane. The results equal
//! a brute-force scan of each clipped window exactly (max and min are exact).
//!
//! `imageproc` has grey-level and binary morphology too, but for `u8` images or with a
//! cost per pixel that grows with the structuring element; these kernels are for `f32`
//! reflectance and grow with `log r`.

/// Takes `buf` (lines of cells, each padded by `r = (w − 1) / 2` identity cells at both
/// ends) from single cells to windows of `w` cells: afterwards `buf[i]` is the extreme of
/// `buf[i], buf[i + unit], …, buf[i + (w − 1)·unit]` as they were. `unit` is 1 for a pass
/// along rows and `cols` for a pass along columns (whole rows at a time).
///
/// Sweeps may mix the end of one padded line with the next; no window that starts in a
/// line's first `len` cells reads those cells.
fn windows<T: Copy>(buf: &mut Vec<T>, w: usize, unit: usize, op: impl Fn(T, T) -> T + Copy) {
    let mut next = Vec::with_capacity(buf.len());
    let mut s = 1;
    while 2 * s <= w {
        combine(buf, &mut next, s * unit, op);
        s *= 2;
    }
    // Now buf[i] covers s cells; w cells are two such windows, at 0 and at w − s ≤ s.
    if w > s {
        combine(buf, &mut next, (w - s) * unit, op);
    }
}

/// `buf[i] = op(buf[i], buf[i + shift])` for every cell that has a partner (the last
/// `shift` keep their value), through `next`.
fn combine<T: Copy>(buf: &mut Vec<T>, next: &mut Vec<T>, shift: usize, op: impl Fn(T, T) -> T) {
    let shift = shift.min(buf.len());
    next.clear();
    next.extend(buf.iter().zip(&buf[shift..]).map(|(&a, &b)| op(a, b)));
    next.extend_from_slice(&buf[buf.len() - shift..]);
    std::mem::swap(buf, next);
}

/// Along each row: `out[row][c] = op over plane[row][c − r ..= c + r]` (clipped).
fn along_rows<T: Copy>(plane: &[T], rows: usize, cols: usize, r: usize, identity: T, op: impl Fn(T, T) -> T + Copy) -> Vec<T> {
    let line = cols + 2 * r;
    let mut padded = Vec::with_capacity(rows * line);
    for row in plane.chunks_exact(cols) {
        padded.extend(std::iter::repeat_n(identity, r));
        padded.extend_from_slice(row);
        padded.extend(std::iter::repeat_n(identity, r));
    }
    windows(&mut padded, 2 * r + 1, 1, op);
    let mut out = Vec::with_capacity(rows * cols);
    for row in padded.chunks_exact(line) {
        out.extend_from_slice(&row[..cols]);
    }
    out
}

/// Along each column, on whole rows: `out[row] = op over plane[row − r ..= row + r]`
/// (clipped), elementwise.
fn along_columns<T: Copy>(plane: &[T], rows: usize, cols: usize, r: usize, identity: T, op: impl Fn(T, T) -> T + Copy) -> Vec<T> {
    // `r` identity rows above and below: the window of row `i` starts at padded row `i`.
    let mut padded = Vec::with_capacity((rows + 2 * r) * cols);
    padded.extend(std::iter::repeat_n(identity, r * cols));
    padded.extend_from_slice(plane);
    padded.extend(std::iter::repeat_n(identity, r * cols));
    windows(&mut padded, 2 * r + 1, cols, op);
    padded.truncate(rows * cols);
    padded
}

fn square<T: Copy>(plane: &[T], rows: usize, cols: usize, r: usize, identity: T, op: impl Fn(T, T) -> T + Copy) -> Vec<T> {
    assert_eq!(plane.len(), rows * cols, "a plane of rows × cols cells");
    if r == 0 || plane.is_empty() {
        return plane.to_vec();
    }
    along_columns(&along_rows(plane, rows, cols, r, identity, op), rows, cols, r, identity, op)
}

/// Binary dilation by a `(2r + 1)²` square: a cell is set if any set cell lies within `r`
/// rows and `r` columns of it. Cells outside the plane are never set.
pub fn dilate_square(mask: &[bool], rows: usize, cols: usize, r: usize) -> Vec<bool> {
    square(mask, rows, cols, r, false, |a, b| a | b)
}

/// The maximum over the clipped `(2r + 1)²` square around each cell (grey-level
/// dilation). No NaN allowed: map missing values to −∞ (or +∞) first.
pub fn max_filter_square(plane: &[f32], rows: usize, cols: usize, r: usize) -> Vec<f32> {
    square(plane, rows, cols, r, f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// The minimum over the clipped `(2r + 1)²` square around each cell (grey-level erosion).
/// No NaN allowed, as for [`max_filter_square`].
pub fn min_filter_square(plane: &[f32], rows: usize, cols: usize, r: usize) -> Vec<f32> {
    square(plane, rows, cols, r, f32::INFINITY, |a, b| if b < a { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extreme over each clipped window, cell by cell.
    fn brute<T: Copy>(plane: &[T], rows: usize, cols: usize, r: usize, op: impl Fn(T, T) -> T) -> Vec<T> {
        let mut out = plane.to_vec();
        for row in 0..rows {
            for c in 0..cols {
                let mut v = plane[row * cols + c];
                for rr in row.saturating_sub(r)..(row + r + 1).min(rows) {
                    for cc in c.saturating_sub(r)..(c + r + 1).min(cols) {
                        v = op(v, plane[rr * cols + cc]);
                    }
                }
                out[row * cols + c] = v;
            }
        }
        out
    }

    /// A deterministic stream for the test planes.
    fn stream(seed: u64) -> impl FnMut() -> f32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn filters_equal_a_brute_force_scan_of_each_window() {
        let mut next = stream(7);
        for (rows, cols) in [(1, 1), (1, 9), (9, 1), (5, 7), (16, 3), (13, 29)] {
            for r in [0, 1, 2, 3, 5, 6, 12, 40] {
                let plane: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
                let max = |a: f32, b: f32| if b > a { b } else { a };
                let min = |a: f32, b: f32| if b < a { b } else { a };
                assert_eq!(max_filter_square(&plane, rows, cols, r), brute(&plane, rows, cols, r, max), "max {rows}×{cols} r={r}");
                assert_eq!(min_filter_square(&plane, rows, cols, r), brute(&plane, rows, cols, r, min), "min {rows}×{cols} r={r}");
                let mask: Vec<bool> = plane.iter().map(|&v| v > 0.93).collect();
                assert_eq!(dilate_square(&mask, rows, cols, r), brute(&mask, rows, cols, r, |a, b| a | b), "dilate {rows}×{cols} r={r}");
            }
        }
    }

    #[test]
    fn dilation_clips_at_the_edges() {
        #[rustfmt::skip]
        let mask = [
            true,  false, false, false,
            false, false, false, false,
            false, false, false, true,
        ];
        #[rustfmt::skip]
        let expect = [
            true,  true,  false, false,
            true,  true,  true,  true,
            false, false, true,  true,
        ];
        assert_eq!(dilate_square(&mask, 3, 4, 1), expect);
        assert_eq!(dilate_square(&mask, 3, 4, 0), mask);
        assert!(dilate_square(&mask, 3, 4, 5).iter().all(|&v| v));
    }

    #[test]
    fn infinities_stand_for_missing_cells() {
        let row = [0.5, f32::NEG_INFINITY, 0.1, 0.5];
        assert_eq!(max_filter_square(&row, 1, 4, 1), [0.5, 0.5, 0.5, 0.5]);
        let low = f32::NEG_INFINITY;
        assert_eq!(min_filter_square(&row, 1, 4, 1), [low, low, low, 0.1]);
    }
}
