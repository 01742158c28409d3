//! The trained forest as flat arrays (what the model blob stores) and prediction.
//!
//! Prediction ([`Predictor`]) renumbers each tree in preorder and packs a node into 8
//! bytes (threshold; feature, missing-goes-left flag and offset of the right child;
//! the left child is the next node), falling back to 16 bytes for forests too wide or
//! trees too large for that. It then walks the pixels block by block (1024 rows, which
//! stay in L2), tree by tree (each tree's nodes read in order first, so the prefetcher
//! brings them in before the walks' random accesses need them), 8 pixels in lockstep
//! so that their memory loads overlap, choosing children with conditional moves
//! rather than branches. Measured on the benchmark forest (100 fully grown trees from
//! 50,000 samples, natively, one thread): the plain one-pixel branchy walk took about
//! 270 ns per tree and pixel, this about 40 ns.

use crate::train::{LEAF, Tree};

/// A trained forest. Node arrays are global over all trees: tree `t`'s nodes are
/// `roots[t]..roots[t + 1]` (the last tree ends at the node count) in preorder.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    pub feature_names: Vec<String>,
    /// Class codes, ascending: the columns of the probabilities.
    pub classes: Vec<u16>,
    /// Index of each tree's root node.
    pub roots: Vec<u32>,
    /// Split feature per node, −1 for a leaf.
    pub feature: Vec<i32>,
    /// `value <= threshold` goes left.
    pub threshold: Vec<f32>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// 1 if a missing value (NaN) goes left.
    pub missing_left: Vec<u8>,
    /// Start of a leaf's class distribution in `leaf_values`; `u32::MAX` for a split node.
    pub leaf_offset: Vec<u32>,
    /// `leaves × classes` class probabilities.
    pub leaf_values: Vec<f32>,
}

/// Why a forest's arrays are not a usable model.
pub type Invalid = String;

impl Forest {
    /// Flattens grown trees. Leaves with the same class distribution share one copy
    /// in `leaf_values`: fully grown trees end mostly in pure leaves, so this keeps
    /// the model (and the part of it prediction must keep in cache) small.
    pub fn from_trees(feature_names: Vec<String>, classes: Vec<u16>, trees: &[Tree]) -> Forest {
        let k = classes.len();
        let mut shared: std::collections::HashMap<Vec<u32>, u32> = std::collections::HashMap::new();
        let mut f = Forest {
            feature_names,
            classes,
            roots: Vec::with_capacity(trees.len()),
            feature: Vec::new(),
            threshold: Vec::new(),
            left: Vec::new(),
            right: Vec::new(),
            missing_left: Vec::new(),
            leaf_offset: Vec::new(),
            leaf_values: Vec::new(),
        };
        for tree in trees {
            let base = f.feature.len() as u32;
            f.roots.push(base);
            for node in 0..tree.len() {
                if tree.feature[node] == LEAF {
                    f.feature.push(-1);
                    f.threshold.push(0.0);
                    f.left.push(0);
                    f.right.push(0);
                    f.missing_left.push(0);
                    let distribution = &tree.value[node * k..(node + 1) * k];
                    let key: Vec<u32> = distribution.iter().map(|v| v.to_bits()).collect();
                    let offset = *shared.entry(key).or_insert_with(|| {
                        f.leaf_values.extend_from_slice(distribution);
                        (f.leaf_values.len() - k) as u32
                    });
                    f.leaf_offset.push(offset);
                } else {
                    f.feature.push(tree.feature[node] as i32);
                    f.threshold.push(tree.threshold[node]);
                    f.left.push(base + tree.left[node]);
                    f.right.push(base + tree.right[node]);
                    f.missing_left.push(tree.missing_left[node] as u8);
                    f.leaf_offset.push(u32::MAX);
                }
            }
        }
        f
    }

    pub fn n_nodes(&self) -> usize {
        self.feature.len()
    }

    /// Checks every index so that prediction can neither read out of bounds nor loop:
    /// children lie after their parent and inside its tree.
    pub fn validate(&self) -> Result<(), Invalid> {
        let n = self.n_nodes();
        let k = self.classes.len();
        if k == 0 {
            return Err("it has no classes".into());
        }
        if self.feature_names.is_empty() {
            return Err("it has no features".into());
        }
        if self.roots.is_empty() {
            return Err("it has no trees".into());
        }
        for (name, len) in [
            ("threshold", self.threshold.len()),
            ("left", self.left.len()),
            ("right", self.right.len()),
            ("missing_left", self.missing_left.len()),
            ("leaf_offset", self.leaf_offset.len()),
        ] {
            if len != n {
                return Err(format!("array {name} has {len} entries for {n} nodes"));
            }
        }
        if !self.leaf_values.len().is_multiple_of(k) {
            return Err(format!("leaf_values has {} entries, not a multiple of the {k} classes", self.leaf_values.len()));
        }
        let mut classes = self.classes.clone();
        classes.dedup();
        if classes.len() != k || self.classes.windows(2).any(|w| w[0] >= w[1]) {
            return Err("its class codes are not distinct and ascending".into());
        }
        if self.feature_names.len() >= i32::MAX as usize {
            return Err("it has too many features".into());
        }
        for t in 0..self.roots.len() {
            let begin = self.roots[t] as usize;
            let end = self.roots.get(t + 1).map_or(n, |&r| r as usize);
            if begin >= end || end > n {
                return Err(format!("tree {t} spans nodes {begin}..{end} of {n}"));
            }
            for i in begin..end {
                match self.feature[i] {
                    -1 => {
                        let o = self.leaf_offset[i] as usize;
                        if !o.is_multiple_of(k) || o + k > self.leaf_values.len() {
                            return Err(format!("leaf {i} points at values {o}..{} of {}", o + k, self.leaf_values.len()));
                        }
                    }
                    f if f < 0 || f as usize >= self.feature_names.len() => {
                        return Err(format!("node {i} splits on feature {f} of {}", self.feature_names.len()));
                    }
                    _ => {
                        let (l, r) = (self.left[i] as usize, self.right[i] as usize);
                        if l <= i || r <= i || l >= end || r >= end {
                            return Err(format!("node {i} of tree {t} has children {l} and {r} outside {}..{end}", i + 1));
                        }
                    }
                }
            }
            // Each node but the root has exactly one parent: a tree, not a graph whose
            // shared subtrees would multiply when laid out for prediction.
            let mut parents = vec![0u8; end - begin];
            for i in begin..end {
                if self.feature[i] >= 0 {
                    for child in [self.left[i], self.right[i]] {
                        if let Some(count) = parents.get_mut((child as usize).wrapping_sub(begin)) {
                            *count = count.saturating_add(1);
                        }
                    }
                }
            }
            if let Some(orphan) = parents.iter().skip(1).position(|&c| c != 1) {
                return Err(format!("node {} of tree {t} has {} parents", begin + 1 + orphan, parents[orphan + 1]));
            }
        }
        Ok(())
    }

    /// Class probabilities of `samples` rows of `data` (`samples × features`, row-major),
    /// `samples × classes`; see [`Predictor`] to lay the forest out once for many calls.
    pub fn predict(&self, data: &[f32], samples: usize) -> Vec<f32> {
        Predictor::new(self).predict(data, samples)
    }
}

/// A forest laid out for prediction.
pub struct Predictor {
    width: usize,
    layout: Layout,
}

enum Layout {
    Compact(Compiled<Compact>),
    Wide(Compiled<Wide>),
}

impl Predictor {
    /// Lays out a forest that passed [`Forest::validate`] (panics on one that did not).
    pub fn new(f: &Forest) -> Predictor {
        let layout = match Compiled::compact(f, preorder(f)) {
            Ok(compiled) => Layout::Compact(compiled),
            Err(order) => Layout::Wide(Compiled::wide(f, order)),
        };
        Predictor { width: f.feature_names.len(), layout }
    }

    /// Class probabilities of `samples` rows of `data` (`samples × features`, row-major),
    /// `samples × classes`.
    pub fn predict(&self, data: &[f32], samples: usize) -> Vec<f32> {
        assert_eq!(data.len(), samples * self.width, "samples × features values");
        match &self.layout {
            Layout::Compact(c) => c.predict(data, samples),
            Layout::Wide(c) => c.predict(data, samples),
        }
    }
}

/// A node packed for prediction. Every layout makes a leaf a node that loops onto
/// itself (its threshold is NaN, so every value goes "right", to itself): one step is
/// then the same for split nodes and leaves, and several pixels can walk a tree in
/// lockstep without branching on what kind of node each one is at.
trait Packed: Copy {
    /// The node after node `i` for feature values `row`.
    ///
    /// # Safety
    /// `row` must be longer than [`Packed::feature`]. (Unchecked because the check
    /// cost about an eighth of prediction time in the sandbox; see [`Compiled::checked`].)
    unsafe fn step(&self, i: u32, row: &[f32]) -> u32;
    /// The feature the node reads (0 for a leaf).
    fn feature(&self) -> usize;
    /// The right child of node `i`; `i` itself for a leaf.
    fn right(&self, i: u32) -> u32;
    /// For a leaf, where its distribution starts in `Compiled::values`.
    fn value(&self) -> u32;
}

/// A feature value as the node's comparison `x <= threshold` should see it, given the
/// node's flag word (bit 31 set: missing values go left). NaN fails that comparison,
/// so it goes right as it is; a node that sends missing values left sees −∞ instead
/// (no threshold is −∞). Both choices are conditional moves, not branches: whether a
/// node sends missing values left is a coin flip from one node to the next, and so is
/// the comparison deep in a tree, and a mispredicted branch costs more than a step.
#[inline(always)]
fn missing_as(x: f32, flags: u32) -> f32 {
    // −∞ is 0xFF80_0000, a quiet NaN with the sign set 0xFFC0_0000.
    let replacement = f32::from_bits(0xFF80_0000 | ((!flags >> 31) << 22));
    std::hint::select_unpredictable(x.is_nan(), replacement, x)
}

/// 8 bytes: the left child is the next node (preorder), the right one `delta` further.
/// A leaf's threshold is a quiet NaN whose payload numbers its distribution, so that
/// reaching a leaf needs no second lookup (a side table of value offsets, read once
/// per tree and pixel, cost as much as the walk itself).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Compact {
    threshold: f32,
    /// Missing-goes-left flag (bit 31), feature (bits 20..31), right child − this node
    /// (bits 0..20; 0 for a leaf).
    meta: u32,
}

const COMPACT_FEATURES: usize = 1 << 11;
const COMPACT_DELTA: usize = 1 << 20;
/// Distinct leaf distributions a NaN payload can number.
const COMPACT_VALUES: usize = 1 << 22;
const QUIET_NAN: u32 = 0x7FC0_0000;

impl Packed for Compact {
    #[inline(always)]
    unsafe fn step(&self, i: u32, row: &[f32]) -> u32 {
        // SAFETY: the caller guarantees `row.len() > self.feature()`.
        let x = missing_as(unsafe { *row.get_unchecked(self.feature()) }, self.meta);
        let go_left = x <= self.threshold;
        // A leaf's delta of 0 gives i itself.
        std::hint::select_unpredictable(go_left, i + 1, self.right(i))
    }

    #[inline(always)]
    fn feature(&self) -> usize {
        ((self.meta >> 20) & 0x7FF) as usize
    }

    #[inline(always)]
    fn right(&self, i: u32) -> u32 {
        i + (self.meta & 0xF_FFFF)
    }

    #[inline(always)]
    fn value(&self) -> u32 {
        self.threshold.to_bits() & !QUIET_NAN
    }
}

/// 16 bytes, for forests too wide or trees too large for [`Compact`].
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Wide {
    threshold: f32,
    /// Missing-goes-left flag (bit 31) and feature.
    feature: u32,
    /// Right child (the left one is the next node); for a leaf the leaf itself.
    right: u32,
    /// For a leaf, where its distribution starts in `Compiled::values`.
    value: u32,
}

impl Packed for Wide {
    #[inline(always)]
    unsafe fn step(&self, i: u32, row: &[f32]) -> u32 {
        // SAFETY: the caller guarantees `row.len() > self.feature()`.
        let x = missing_as(unsafe { *row.get_unchecked(Packed::feature(self)) }, self.feature);
        let go_left = x <= self.threshold;
        std::hint::select_unpredictable(go_left, i + 1, self.right)
    }

    #[inline(always)]
    fn feature(&self) -> usize {
        (self.feature & 0x7FFF_FFFF) as usize
    }

    #[inline(always)]
    fn right(&self, _: u32) -> u32 {
        self.right
    }

    #[inline(always)]
    fn value(&self) -> u32 {
        self.value
    }
}

/// The forest laid out for prediction.
struct Compiled<N> {
    nodes: Vec<N>,
    roots: Vec<u32>,
    /// Leaf distributions padded to `stride` classes (zeros), for whole-vector adds.
    values: Vec<f32>,
    classes: usize,
    stride: usize,
    /// Features per row, checked against every node.
    width: usize,
}

/// Pixels per block: each tree is brought into cache once per block, so larger
/// blocks amortise that better, up to where the block's rows (400 KiB at 100
/// features) stop fitting in L2 next to the tree.
const BLOCK: usize = 1024;
/// Pixels walking a tree in lockstep: their loads overlap instead of each waiting
/// for the previous node. 8 beat 4, 6, 12 and 16 natively and tied with 4 in the
/// sandbox.
const LANES: usize = 8;

/// A node in prediction order, before packing.
#[derive(Debug, Clone, Copy)]
enum Laid {
    Split {
        feature: u32,
        threshold: f32,
        missing_left: bool,
        right: u32,
    },
    /// The leaf's distribution is number `value` in `leaf_values`.
    Leaf {
        value: u32,
    },
}

/// The forest's nodes renumbered so that every tree is in preorder with each left
/// child right after its parent, whatever order a blob stored them in.
struct Preorder {
    roots: Vec<u32>,
    nodes: Vec<Laid>,
}

fn preorder(f: &Forest) -> Preorder {
    let k = f.classes.len() as u32;
    let mut roots = Vec::with_capacity(f.roots.len());
    let mut nodes = Vec::with_capacity(f.n_nodes());
    for &root in &f.roots {
        roots.push(nodes.len() as u32);
        // (node in `f`, where in `nodes` the parent whose right child it is went)
        let mut stack = vec![(root as usize, None::<usize>)];
        while let Some((i, parent)) = stack.pop() {
            let at = nodes.len();
            if let Some(Laid::Split { right, .. }) = parent.map(|p| &mut nodes[p]) {
                *right = at as u32;
            }
            if f.feature[i] < 0 {
                nodes.push(Laid::Leaf { value: f.leaf_offset[i] / k });
            } else {
                let (feature, threshold, missing_left) = (f.feature[i] as u32, f.threshold[i], f.missing_left[i] != 0);
                nodes.push(Laid::Split { feature, threshold, missing_left, right: 0 });
                stack.push((f.right[i] as usize, Some(at)));
                stack.push((f.left[i] as usize, None));
            }
        }
    }
    Preorder { roots, nodes }
}

/// Lays the forest out with `pack(index, node)`.
fn compile<N: Packed>(f: &Forest, order: Preorder, pack: impl Fn(u32, Laid) -> N) -> Compiled<N> {
    let k = f.classes.len();
    let stride = k.div_ceil(4) * 4;
    let mut values = Vec::with_capacity(f.leaf_values.len() / k * stride);
    for distribution in f.leaf_values.chunks_exact(k) {
        values.extend_from_slice(distribution);
        values.resize(values.len() + stride - k, 0.0);
    }
    let nodes = order.nodes.iter().enumerate().map(|(i, node)| pack(i as u32, *node)).collect();
    Compiled { nodes, roots: order.roots, values, classes: k, stride, width: 0 }.checked(f.feature_names.len())
}

impl Compiled<Compact> {
    /// The compact layout, if the forest fits it.
    fn compact(f: &Forest, order: Preorder) -> Result<Self, Preorder> {
        let fits = f.feature_names.len() <= COMPACT_FEATURES
            && f.leaf_values.len() / f.classes.len() <= COMPACT_VALUES
            && order.nodes.iter().enumerate().all(|(i, node)| match node {
                Laid::Split { right, .. } => (*right as usize - i) < COMPACT_DELTA,
                Laid::Leaf { .. } => true,
            });
        if !fits {
            return Err(order);
        }
        Ok(compile(f, order, |i, node| match node {
            Laid::Leaf { value } => Compact { threshold: f32::from_bits(QUIET_NAN | value), meta: 0 },
            Laid::Split { feature, threshold, missing_left, right } => {
                Compact { threshold, meta: (missing_left as u32) << 31 | feature << 20 | (right - i) }
            }
        }))
    }
}

impl Compiled<Wide> {
    fn wide(f: &Forest, order: Preorder) -> Self {
        compile(f, order, |i, node| match node {
            Laid::Leaf { value } => Wide { threshold: f32::NAN, feature: 0, right: i, value },
            Laid::Split { feature, threshold, missing_left, right } => {
                Wide { threshold, feature: (missing_left as u32) << 31 | feature, right, value: 0 }
            }
        })
    }
}

impl<N: Packed> Compiled<N> {
    /// Checks what the walks take on trust, so that they can index without bounds
    /// checks: roots are nodes; a split node's children (the next node and `right`)
    /// are nodes; a leaf's `right` is itself; every feature read is below `width`, the
    /// length of every row the walks are given. Laying out a validated forest always
    /// gives this; a failure is a bug here, so it panics.
    fn checked(mut self, width: usize) -> Self {
        let n = self.nodes.len();
        assert!(self.roots.iter().all(|&r| (r as usize) < n), "a root outside the nodes");
        for (i, node) in self.nodes.iter().enumerate() {
            assert!(node.feature() < width, "node {i} reads feature {} of {width}", node.feature());
            let right = node.right(i as u32) as usize;
            assert!(right == i || (i + 1 < n && right < n), "node {i} has children outside the {n} nodes");
        }
        self.width = width;
        self
    }

    /// The leaf `row` (one row of `width` values) reaches from node `i`.
    #[inline(always)]
    fn leaf(&self, mut i: u32, row: &[f32]) -> u32 {
        debug_assert_eq!(row.len(), self.width);
        loop {
            // SAFETY: `row` has the forest's width and `i` is a node (see `checked`).
            let next = unsafe { self.nodes.get_unchecked(i as usize).step(i, row) };
            if next == i {
                return i;
            }
            i = next;
        }
    }

    /// Adds leaf `leaf`'s distribution to `sums`.
    #[inline(always)]
    fn add_leaf(&self, leaf: u32, sums: &mut [f32]) {
        let v = self.nodes[leaf as usize].value() as usize * self.stride;
        add(sums, &self.values[v..v + self.stride]);
    }

    /// Walks every row of `rows` through the tree at `root`, adding each leaf's
    /// distribution to the row's `sums`, `LANES` rows at once in lockstep (a lane at
    /// its leaf stays there until the others arrive).
    fn walk(&self, root: u32, rows: &[f32], sums: &mut [f32]) {
        let (stride, width) = (self.stride, self.width);
        assert!(rows.len().is_multiple_of(width) && sums.len() == rows.len() / width * stride, "whole rows and their sums");
        let mut groups = rows.chunks_exact(LANES * width);
        let mut group_sums = sums.chunks_exact_mut(LANES * stride);
        for (group, sums) in (&mut groups).zip(&mut group_sums) {
            let lane_rows: [&[f32]; LANES] = std::array::from_fn(|lane| &group[lane * width..(lane + 1) * width]);
            let mut at = [root; LANES];
            loop {
                let mut moved = false;
                for (i, row) in at.iter_mut().zip(lane_rows) {
                    // SAFETY: `at` holds roots and steps' results, which are nodes, and
                    // `row` has the forest's width (see `checked`).
                    let next = unsafe { self.nodes.get_unchecked(*i as usize).step(*i, row) };
                    moved |= next != *i;
                    *i = next;
                }
                if !moved {
                    break;
                }
            }
            for (leaf, sums) in at.into_iter().zip(sums.chunks_exact_mut(stride)) {
                self.add_leaf(leaf, sums);
            }
        }
        for (row, sums) in groups.remainder().chunks_exact(width).zip(group_sums.into_remainder().chunks_exact_mut(stride)) {
            self.add_leaf(self.leaf(root, row), sums);
        }
    }

    fn predict(&self, data: &[f32], samples: usize) -> Vec<f32> {
        let (k, stride, width) = (self.classes, self.stride, self.width);
        let mut out = vec![0.0f32; samples * k];
        let mut acc = vec![0.0f32; BLOCK * stride];
        let scale = 1.0 / self.roots.len() as f32;
        for block in (0..samples).step_by(BLOCK) {
            let m = BLOCK.min(samples - block);
            let rows = &data[block * width..(block + m) * width];
            let acc = &mut acc[..m * stride];
            acc.fill(0.0);
            for (t, &root) in self.roots.iter().enumerate() {
                let end = self.roots.get(t + 1).map_or(self.nodes.len(), |&r| r as usize);
                warm(&self.nodes[root as usize..end]);
                self.walk(root, rows, acc);
            }
            for (sums, probs) in acc.chunks_exact(stride).zip(out[block * k..(block + m) * k].chunks_exact_mut(k)) {
                for (p, s) in probs.iter_mut().zip(sums) {
                    *p = s * scale;
                }
            }
        }
        out
    }
}

/// Reads a tree's nodes in order so that the hardware prefetcher streams them into
/// cache ahead of the walks, whose own accesses are random and would each wait.
#[inline(never)]
fn warm<N>(nodes: &[N]) {
    let bytes = std::mem::size_of_val(nodes);
    let base = nodes.as_ptr() as *const u8;
    let mut sum = 0u8;
    let mut at = 0;
    while at < bytes {
        // SAFETY: `at` < the slice's size in bytes, so the read is inside it.
        sum = sum.wrapping_add(unsafe { base.add(at).read_volatile() });
        at += 64;
    }
    std::hint::black_box(sum);
}

/// `sums += values`, both a multiple of 4 long.
#[inline(always)]
fn add(sums: &mut [f32], values: &[f32]) {
    for (s, v) in sums.chunks_exact_mut(4).zip(values.chunks_exact(4)) {
        s[0] += v[0];
        s[1] += v[1];
        s[2] += v[2];
        s[3] += v[3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Params;
    use crate::train::{TrainSet, grow_forest};

    /// A forest on noisy data with gaps: deep trees, NaN-left and NaN-right nodes.
    fn forest(n_features: usize, max_features: usize) -> (Forest, Vec<f32>, usize) {
        let n = 400;
        let mut state = 17u64;
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut rows = vec![0.0f32; n * n_features];
        let mut y = vec![0u16; n];
        for i in 0..n {
            y[i] = (i % 3) as u16;
            for f in 0..n_features {
                let v = uniform() + if f % 7 == 0 { y[i] as f32 * 0.3 } else { 0.0 };
                rows[i * n_features + f] = if uniform() < 0.2 { f32::NAN } else { v };
            }
        }
        let mut x = vec![0.0f32; n * n_features];
        for i in 0..n {
            for f in 0..n_features {
                x[f * n + i] = rows[i * n_features + f];
            }
        }
        let data = TrainSet { n, n_features, x, y, n_classes: 3 };
        let params: Params =
            sitsflow_sdk::serde_json::from_str(&format!(r#"{{"n_trees": 12, "max_features": {max_features}, "seed": 9}}"#)).unwrap();
        let grown = grow_forest(&data, &params.resolve(n_features).unwrap(), |_| {});
        let names = (0..n_features).map(|f| format!("f{f}")).collect();
        (Forest::from_trees(names, vec![10, 20, 30], &grown.trees), rows, n)
    }

    /// Prediction written as plainly as possible, from the blob's arrays.
    fn reference(f: &Forest, rows: &[f32], n: usize) -> Vec<f32> {
        let (k, width) = (f.classes.len(), f.feature_names.len());
        let mut out = vec![0.0f32; n * k];
        for p in 0..n {
            let row = &rows[p * width..(p + 1) * width];
            for &root in &f.roots {
                let mut i = root as usize;
                while f.feature[i] >= 0 {
                    let x = row[f.feature[i] as usize];
                    let left = if x.is_nan() { f.missing_left[i] == 1 } else { x <= f.threshold[i] };
                    i = if left { f.left[i] } else { f.right[i] } as usize;
                }
                let o = f.leaf_offset[i] as usize;
                for c in 0..k {
                    out[p * k + c] += f.leaf_values[o + c];
                }
            }
        }
        out.iter_mut().for_each(|v| *v /= f.roots.len() as f32);
        out
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-6, "value {i}: {x} vs {y}");
        }
    }

    #[test]
    fn both_layouts_predict_what_the_plain_walk_does() {
        let (f, rows, n) = forest(30, 15);
        f.validate().unwrap();
        assert!(f.missing_left.contains(&1) && f.missing_left.iter().zip(&f.feature).any(|(&m, &x)| m == 0 && x >= 0));
        let expected = reference(&f, &rows, n);
        assert_close(&Compiled::compact(&f, preorder(&f)).ok().expect("fits the compact layout").predict(&rows, n), &expected);
        assert_close(&Compiled::wide(&f, preorder(&f)).predict(&rows, n), &expected);
        // Fewer rows than one lockstep group, and a ragged last group.
        assert_close(&f.predict(&rows[..3 * 30], 3), &expected[..9]);
        assert_close(&f.predict(&rows[..(LANES * 3 + 1) * 30], LANES * 3 + 1), &expected[..(LANES * 3 + 1) * 3]);
    }

    #[test]
    fn a_forest_too_wide_for_the_compact_layout_uses_the_wide_one() {
        let (f, rows, n) = forest(COMPACT_FEATURES + 5, 20);
        assert!(Compiled::compact(&f, preorder(&f)).is_err());
        assert_close(&f.predict(&rows, n), &reference(&f, &rows, n));
    }

    #[test]
    fn nodes_stored_breadth_first_predict_the_same() {
        // Another writer may number nodes differently; prediction renumbers them.
        let (f, rows, n) = forest(20, 10);
        let mut g = f.clone();
        let mut order = Vec::new();
        for t in 0..f.roots.len() {
            let mut queue = std::collections::VecDeque::from([f.roots[t] as usize]);
            g.roots[t] = order.len() as u32;
            while let Some(i) = queue.pop_front() {
                order.push(i);
                if f.feature[i] >= 0 {
                    queue.push_back(f.left[i] as usize);
                    queue.push_back(f.right[i] as usize);
                }
            }
        }
        let mut new_index = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new as u32;
        }
        for (new, &old) in order.iter().enumerate() {
            g.feature[new] = f.feature[old];
            g.threshold[new] = f.threshold[old];
            g.missing_left[new] = f.missing_left[old];
            g.leaf_offset[new] = f.leaf_offset[old];
            g.left[new] = if f.feature[old] >= 0 { new_index[f.left[old] as usize] } else { 0 };
            g.right[new] = if f.feature[old] >= 0 { new_index[f.right[old] as usize] } else { 0 };
        }
        g.validate().unwrap();
        assert_ne!(g.left, f.left, "breadth-first differs from preorder");
        assert_close(&g.predict(&rows, n), &reference(&f, &rows, n));
    }

    #[test]
    fn pure_leaves_share_one_distribution() {
        let (f, _, _) = forest(10, 5);
        let leaves = f.feature.iter().filter(|&&x| x < 0).count();
        assert!(f.leaf_values.len() / 3 < leaves, "{} distributions for {leaves} leaves", f.leaf_values.len() / 3);
    }
}
