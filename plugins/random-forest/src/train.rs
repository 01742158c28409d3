//! Growing the forest: CART trees as scikit-learn's `DecisionTreeClassifier` grows them
//! (best splitter, depth-first), bootstrap as `RandomForestClassifier` draws it.
//!
//! What is mirrored on purpose, because it changes the trees:
//! - a bootstrap sample is a weight per sample (its draw count), so `min_samples_*`
//!   count distinct samples and leaf distributions are weighted counts;
//! - features are drawn without replacement (Fisher–Yates) and features found constant
//!   in a node are remembered for its descendants; the search goes on past
//!   `max_features` until one non-constant feature has been evaluated;
//! - values closer than 1e-7 count as one value (no split between them); thresholds
//!   are the midpoint of neighbouring values;
//! - missing values (NaN): each candidate threshold is tried with the node's missing
//!   samples on the left and on the right, plus "all non-missing left, missing right"
//!   (threshold +∞); the better side is stored per node. A node that saw no missing
//!   value sends NaN to the child that got more samples.
//! - ties between equally good splits go to the first one found (strict `>`).

use crate::params::{ClassWeight, Config, Criterion};
use crate::rng::Rng;
use sitsflow_sdk::for_each_index;

/// Values closer than this are one value (scikit-learn's `FEATURE_THRESHOLD`).
const FEATURE_THRESHOLD: f64 = 1e-7;
/// A node whose impurity is at most this is pure (rounding tolerance).
const EPSILON: f64 = f64::EPSILON;
/// `Tree::feature` of a leaf.
pub const LEAF: u32 = u32::MAX;

/// The labelled samples, column-major so that one feature of a node's samples is
/// read from one array.
pub struct TrainSet {
    pub n: usize,
    pub n_features: usize,
    /// `x[f * n + i]`: feature `f` of sample `i`.
    pub x: Vec<f32>,
    /// Class index (into the sorted class codes) of each sample.
    pub y: Vec<u16>,
    pub n_classes: usize,
}

impl TrainSet {
    fn column(&self, f: usize) -> &[f32] {
        &self.x[f * self.n..(f + 1) * self.n]
    }
}

/// One grown tree, nodes in preorder (a child's index is above its parent's).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Split feature, or [`LEAF`].
    pub feature: Vec<u32>,
    /// Samples with `value <= threshold` go left.
    pub threshold: Vec<f32>,
    /// Where a missing value goes.
    pub missing_left: Vec<bool>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    pub impurity: Vec<f64>,
    pub weighted_n: Vec<f64>,
    /// `nodes × classes` weighted class distribution of each node, summing to 1.
    pub value: Vec<f32>,
    /// Depth of the deepest leaf (a lone root is depth 0).
    pub depth: usize,
}

impl Tree {
    pub fn len(&self) -> usize {
        self.feature.len()
    }

    pub fn is_empty(&self) -> bool {
        self.feature.is_empty()
    }

    pub fn leaves(&self) -> usize {
        self.feature.iter().filter(|&&f| f == LEAF).count()
    }

    /// The leaf sample `i` of the training set lands in.
    fn leaf_of(&self, data: &TrainSet, i: usize) -> usize {
        let mut node = 0;
        while self.feature[node] != LEAF {
            let v = data.x[self.feature[node] as usize * data.n + i];
            let left = if v.is_nan() { self.missing_left[node] } else { v <= self.threshold[node] };
            node = if left { self.left[node] } else { self.right[node] } as usize;
        }
        node
    }

    /// Impurity decrease per feature, normalised to sum 1 (scikit-learn's
    /// `feature_importances_` of one tree).
    fn importances(&self, n_features: usize) -> Vec<f64> {
        let mut imp = vec![0.0; n_features];
        for node in 0..self.len() {
            if self.feature[node] == LEAF {
                continue;
            }
            let (l, r) = (self.left[node] as usize, self.right[node] as usize);
            imp[self.feature[node] as usize] +=
                self.weighted_n[node] * self.impurity[node] - self.weighted_n[l] * self.impurity[l] - self.weighted_n[r] * self.impurity[r];
        }
        let root = self.weighted_n[0];
        imp.iter_mut().for_each(|v| *v /= root);
        let total: f64 = imp.iter().sum();
        if total > 0.0 {
            imp.iter_mut().for_each(|v| *v /= total);
        }
        imp
    }
}

/// The impurity measure, written so that the split search moves one sample at a time
/// in O(1): `S = Σ_k term(c_k)` over a side's class weights, and `part(S, w)` is that
/// side's `−w · impurity`, the quantity scikit-learn's proxy improvement adds up.
trait Impurity {
    fn term(c: f64) -> f64;
    fn part(s: f64, w: f64) -> f64;
}

struct Gini;
impl Impurity for Gini {
    #[inline(always)]
    fn term(c: f64) -> f64 {
        c * c
    }
    #[inline(always)]
    fn part(s: f64, w: f64) -> f64 {
        // −w (1 − S/w²)
        s / w - w
    }
}

struct Entropy;
impl Impurity for Entropy {
    #[inline(always)]
    fn term(c: f64) -> f64 {
        // The running class weights may drift a hair below 0 when weights are fractional.
        if c > 0.0 { c * c.log2() } else { 0.0 }
    }
    #[inline(always)]
    fn part(s: f64, w: f64) -> f64 {
        // −w · (−Σ (c/w) log₂(c/w)) = Σ c log₂ c − w log₂ w
        if w > 0.0 { s - w * w.log2() } else { 0.0 }
    }
}

/// Impurity of a node from its class weights.
fn impurity(criterion: Criterion, sums: &[f64], w: f64) -> f64 {
    if w <= 0.0 {
        return 0.0;
    }
    match criterion {
        Criterion::Gini => 1.0 - sums.iter().map(|c| c * c).sum::<f64>() / (w * w),
        Criterion::Entropy => -sums.iter().filter(|&&c| c > 0.0).map(|c| (c / w) * (c / w).log2()).sum::<f64>(),
    }
}

/// Maps an f32 to a u32 whose unsigned order is the float order (for non-NaN values).
#[inline(always)]
fn ordered(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

#[inline(always)]
fn unordered(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7FFF_FFFF } else { !k })
}

/// The midpoint threshold between neighbouring values `a < b`, as an f32 that keeps
/// `a` on the left and `b` on the right.
fn midpoint(a: f32, b: f32) -> f32 {
    let m = (a as f64 / 2.0 + b as f64 / 2.0) as f32;
    if m >= b || m.is_infinite() { a } else { m }
}

#[derive(Debug, Clone, Copy)]
struct Split {
    feature: usize,
    threshold: f32,
    missing_left: bool,
}

/// Grows one tree on the samples with nonzero weight.
struct Builder<'a> {
    data: &'a TrainSet,
    cfg: &'a Config,
    /// Weight of each sample of `data` (0 = not in this tree's sample).
    w: &'a [f64],
    rng: Rng,
    samples: Vec<u32>,
    /// Permutation of the features; `[..n_constant]` are the node's known constants.
    features: Vec<usize>,
    constant_features: Vec<usize>,
    // Scratch for one feature of one node.
    keys: Vec<u64>,
    sorted: Vec<u32>,
    values: Vec<f32>,
    missing: Vec<u32>,
    left: Vec<f64>,
    right: Vec<f64>,
    missing_sum: Vec<f64>,
}

struct Pending {
    start: usize,
    end: usize,
    depth: usize,
    parent: Option<(usize, bool)>,
    impurity: Option<f64>,
    n_constant: usize,
}

impl<'a> Builder<'a> {
    fn new(data: &'a TrainSet, cfg: &'a Config, w: &'a [f64], rng: Rng) -> Self {
        let k = data.n_classes;
        Builder {
            data,
            cfg,
            w,
            rng,
            samples: (0..data.n as u32).filter(|&i| w[i as usize] > 0.0).collect(),
            features: (0..data.n_features).collect(),
            constant_features: vec![0; data.n_features],
            keys: Vec::new(),
            sorted: Vec::new(),
            values: Vec::new(),
            missing: Vec::new(),
            left: vec![0.0; k],
            right: vec![0.0; k],
            missing_sum: vec![0.0; k],
        }
    }

    fn class_sums(&self, range: &[u32], sums: &mut [f64]) -> f64 {
        sums.iter_mut().for_each(|s| *s = 0.0);
        let mut total = 0.0;
        for &s in range {
            let w = self.w[s as usize];
            sums[self.data.y[s as usize] as usize] += w;
            total += w;
        }
        total
    }

    fn grow(mut self) -> Tree {
        let k = self.data.n_classes;
        let mut tree = Tree::default();
        if self.samples.is_empty() {
            return tree;
        }
        let mut sums = vec![0.0; k];
        let w_total = self.class_sums(&self.samples, &mut sums);
        let mut stack = vec![Pending { start: 0, end: self.samples.len(), depth: 0, parent: None, impurity: None, n_constant: 0 }];
        while let Some(p) = stack.pop() {
            let n_node = p.end - p.start;
            let w_node = self.class_sums(&self.samples[p.start..p.end], &mut sums);
            let node_impurity = p.impurity.unwrap_or_else(|| impurity(self.cfg.criterion, &sums, w_node));
            let is_leaf = p.depth >= self.cfg.max_depth
                || n_node < self.cfg.min_samples_split
                || n_node < 2 * self.cfg.min_samples_leaf
                || node_impurity <= EPSILON;
            // The split, if the node is split: it may still become a leaf when no split
            // is valid or the best one decreases impurity too little.
            let mut chosen = None;
            let mut n_constant = p.n_constant;
            if !is_leaf {
                let (split, constants) = self.node_split(p.start, p.end, p.n_constant, &sums, w_node);
                n_constant = constants;
                if let Some(split) = split {
                    let pos = self.partition(p.start, p.end, split);
                    let mut l = vec![0.0; k];
                    let mut r = vec![0.0; k];
                    let wl = self.class_sums(&self.samples[p.start..pos], &mut l);
                    let wr = self.class_sums(&self.samples[pos..p.end], &mut r);
                    let (il, ir) = (impurity(self.cfg.criterion, &l, wl), impurity(self.cfg.criterion, &r, wr));
                    let improvement = (w_node / w_total) * (node_impurity - wr / w_node * ir - wl / w_node * il);
                    if improvement + EPSILON >= self.cfg.min_impurity_decrease {
                        chosen = Some((split, pos, il, ir));
                    }
                }
            }
            let id = tree.feature.len();
            if let Some((parent, is_left)) = p.parent {
                if is_left { tree.left[parent] = id as u32 } else { tree.right[parent] = id as u32 }
            }
            tree.feature.push(chosen.map_or(LEAF, |(s, ..)| s.feature as u32));
            tree.threshold.push(chosen.map_or(0.0, |(s, ..)| s.threshold));
            tree.missing_left.push(chosen.is_some_and(|(s, ..)| s.missing_left));
            tree.left.push(0);
            tree.right.push(0);
            tree.impurity.push(node_impurity);
            tree.weighted_n.push(w_node);
            tree.value.extend(sums.iter().map(|s| (s / w_node) as f32));
            tree.depth = tree.depth.max(p.depth);
            if let Some((_, pos, il, ir)) = chosen {
                // Right pushed first so that the left subtree is grown first (preorder).
                stack.push(Pending {
                    start: pos,
                    end: p.end,
                    depth: p.depth + 1,
                    parent: Some((id, false)),
                    impurity: Some(ir),
                    n_constant,
                });
                stack.push(Pending {
                    start: p.start,
                    end: pos,
                    depth: p.depth + 1,
                    parent: Some((id, true)),
                    impurity: Some(il),
                    n_constant,
                });
            }
        }
        tree
    }

    /// Sorts the node's samples by feature `f`: `sorted`/`values` hold the non-missing
    /// ones ascending, `missing` the others (with their class weights in `missing_sum`).
    fn sort_feature(&mut self, f: usize, start: usize, end: usize) {
        let column = self.data.column(f);
        self.keys.clear();
        self.missing.clear();
        self.missing_sum.iter_mut().for_each(|s| *s = 0.0);
        for &s in &self.samples[start..end] {
            let v = column[s as usize];
            if v.is_nan() {
                self.missing.push(s);
                self.missing_sum[self.data.y[s as usize] as usize] += self.w[s as usize];
            } else {
                self.keys.push(((ordered(v) as u64) << 32) | s as u64);
            }
        }
        self.keys.sort_unstable();
        self.sorted.clear();
        self.values.clear();
        for &key in &self.keys {
            self.sorted.push(key as u32);
            self.values.push(unordered((key >> 32) as u32));
        }
    }

    /// scikit-learn's `node_split_best`: the best split over up to `max_features`
    /// randomly drawn features, and the number of features now known to be constant.
    fn node_split(&mut self, start: usize, end: usize, n_known: usize, sums: &[f64], w_node: f64) -> (Option<Split>, usize) {
        let n_features = self.data.n_features;
        let max_features = self.cfg.max_features;
        let mut f_i = n_features;
        let (mut n_visited, mut n_found_constants, mut n_drawn_constants) = (0, 0, 0);
        let mut n_total_constants = n_known;
        let mut best: Option<Split> = None;
        let mut best_proxy = f64::NEG_INFINITY;
        while f_i > n_total_constants && (n_visited < max_features || n_visited <= n_found_constants + n_drawn_constants) {
            n_visited += 1;
            let mut f_j = self.rng.range(n_drawn_constants, f_i - n_found_constants);
            if f_j < n_known {
                self.features.swap(n_drawn_constants, f_j);
                n_drawn_constants += 1;
                continue;
            }
            f_j += n_found_constants;
            let feature = self.features[f_j];
            self.sort_feature(feature, start, end);
            let nm = self.values.len();
            let constant = nm == 0 || (self.missing.is_empty() && self.values[nm - 1] as f64 <= self.values[0] as f64 + FEATURE_THRESHOLD);
            if constant {
                self.features.swap(f_j, n_total_constants);
                n_found_constants += 1;
                n_total_constants += 1;
                continue;
            }
            f_i -= 1;
            self.features.swap(f_i, f_j);
            match self.cfg.criterion {
                Criterion::Gini => self.scan::<Gini>(feature, sums, w_node, &mut best, &mut best_proxy),
                Criterion::Entropy => self.scan::<Entropy>(feature, sums, w_node, &mut best, &mut best_proxy),
            }
        }
        // The known constants keep their order for the siblings; newly found ones are
        // handed down to the children.
        self.features[..n_known].copy_from_slice(&self.constant_features[..n_known]);
        self.constant_features[n_known..n_total_constants].copy_from_slice(&self.features[n_known..n_total_constants]);
        (best, n_total_constants)
    }

    /// Evaluates every threshold of the sorted feature, missing values right then left.
    fn scan<C: Impurity>(&mut self, feature: usize, sums: &[f64], w_node: f64, best: &mut Option<Split>, best_proxy: &mut f64) {
        let (y, w) = (&self.data.y, self.w);
        let nm = self.values.len();
        let n_missing = self.missing.len();
        let min_leaf = self.cfg.min_samples_leaf;
        let w_missing: f64 = self.missing_sum.iter().sum();
        for missing_left in [false, true] {
            if missing_left && n_missing == 0 {
                break;
            }
            // Start with only the missing samples on the left (or none).
            let (mut s_left, mut s_right) = (0.0, 0.0);
            for (c, &total) in sums.iter().enumerate() {
                let m = if missing_left { self.missing_sum[c] } else { 0.0 };
                self.left[c] = m;
                self.right[c] = total - m;
                s_left += C::term(self.left[c]);
                s_right += C::term(self.right[c]);
            }
            let mut w_left = if missing_left { w_missing } else { 0.0 };
            let mut w_right = w_node - w_left;
            // With missing values on the left, "every non-missing value left too" is no split.
            let last = if missing_left { nm - 1 } else { nm };
            let mut step = |q: usize| {
                let s = self.sorted[q - 1] as usize;
                let (c, a) = (y[s] as usize, w[s]);
                let (l, r) = (self.left[c], self.right[c]);
                s_left += C::term(l + a) - C::term(l);
                s_right += C::term(r - a) - C::term(r);
                self.left[c] = l + a;
                self.right[c] = r - a;
                w_left += a;
                w_right -= a;
                if q < nm {
                    if self.values[q] as f64 <= self.values[q - 1] as f64 + FEATURE_THRESHOLD {
                        return;
                    }
                } else if n_missing == 0 {
                    // Everything on the left: not a split (and the last position).
                    return;
                }
                let (n_left, n_right) = if missing_left { (n_missing + q, nm - q) } else { (q, nm - q + n_missing) };
                if n_left < min_leaf || n_right < min_leaf {
                    return;
                }
                let proxy = C::part(s_left, w_left) + C::part(s_right, w_right);
                if proxy > *best_proxy {
                    *best_proxy = proxy;
                    let threshold = if q == nm { f32::INFINITY } else { midpoint(self.values[q - 1], self.values[q]) };
                    let missing_left = if n_missing == 0 { n_left > n_right } else { missing_left };
                    *best = Some(Split { feature, threshold, missing_left });
                }
            };
            // Four positions per loop round: in the sandbox each back-edge checks the
            // deadline, and the running sums are stored and reloaded around the check.
            for_each_index::<4>(last, |i| step(i + 1));
        }
    }

    /// Puts the node's samples going left first; returns where the right ones start.
    fn partition(&mut self, start: usize, end: usize, split: Split) -> usize {
        let column = self.data.column(split.feature);
        let (mut i, mut j) = (start, end);
        while i < j {
            let v = column[self.samples[i] as usize];
            let left = if v.is_nan() { split.missing_left } else { v <= split.threshold };
            if left {
                i += 1;
            } else {
                j -= 1;
                self.samples.swap(i, j);
            }
        }
        i
    }
}

/// What training produced besides the trees.
pub struct Grown {
    pub trees: Vec<Tree>,
    /// Accuracy of the out-of-bag predictions and how many samples had one.
    pub oob: Option<(f64, usize)>,
    /// Mean decrease in impurity per feature, normalised to sum 1.
    pub importances: Vec<f64>,
    /// Samples with nonzero weight per tree (distinct samples in its bootstrap).
    pub in_bag: Vec<usize>,
}

/// Grows `cfg.n_trees` trees; `progress(t)` is called after tree `t` (1-based).
pub fn grow_forest(data: &TrainSet, cfg: &Config, mut progress: impl FnMut(usize)) -> Grown {
    let (n, k) = (data.n, data.n_classes);
    let mut class_count = vec![0usize; k];
    for &c in &data.y {
        class_count[c as usize] += 1;
    }
    let classes_present = class_count.iter().filter(|&&c| c > 0).count();
    // n / (classes × n_class), scikit-learn's "balanced" weights.
    let balanced: Vec<f64> = class_count.iter().map(|&c| if c > 0 { n as f64 / (classes_present * c) as f64 } else { 0.0 }).collect();
    let by_class: Vec<Vec<u32>> = {
        let mut by = vec![Vec::new(); k];
        for (i, &c) in data.y.iter().enumerate() {
            by[c as usize].push(i as u32);
        }
        by.retain(|v| !v.is_empty());
        by
    };
    let n_boot = cfg.max_samples.map_or(n, |m| ((m * n as f64) as usize).max(1));

    let mut trees = Vec::with_capacity(cfg.n_trees);
    let mut in_bag = Vec::with_capacity(cfg.n_trees);
    let mut oob_sum = if cfg.oob_score { vec![0.0f64; n * k] } else { Vec::new() };
    let mut oob_count = if cfg.oob_score { vec![0u32; n] } else { Vec::new() };
    let mut importance_sum = vec![0.0; data.n_features];
    let mut split_trees = 0usize;
    let mut w = vec![0.0f64; n];
    let mut counts = vec![0u32; n];
    for t in 0..cfg.n_trees {
        let mut rng = Rng::for_tree(cfg.seed, t as u64);
        if cfg.bootstrap {
            counts.iter_mut().for_each(|c| *c = 0);
            for _ in 0..n_boot {
                let i = if cfg.class_weight == ClassWeight::Balanced {
                    // A draw weighted by the balanced class weights gives every class
                    // the same total probability, uniform within the class.
                    let members = &by_class[rng.below(by_class.len())];
                    members[rng.below(members.len())] as usize
                } else {
                    rng.below(n)
                };
                counts[i] += 1;
            }
            for i in 0..n {
                w[i] = counts[i] as f64;
            }
            if cfg.class_weight == ClassWeight::BalancedSubsample {
                let mut drawn = vec![0.0f64; k];
                for i in 0..n {
                    drawn[data.y[i] as usize] += counts[i] as f64;
                }
                let present = drawn.iter().filter(|&&d| d > 0.0).count() as f64;
                for i in 0..n {
                    let d = drawn[data.y[i] as usize];
                    if d > 0.0 {
                        w[i] *= n_boot as f64 / (present * d);
                    }
                }
            }
        } else {
            for i in 0..n {
                w[i] = match cfg.class_weight {
                    ClassWeight::None => 1.0,
                    ClassWeight::Balanced | ClassWeight::BalancedSubsample => balanced[data.y[i] as usize],
                };
            }
        }
        let builder = Builder::new(data, cfg, &w, rng);
        in_bag.push(builder.samples.len());
        let tree = builder.grow();
        if cfg.oob_score {
            for i in 0..n {
                if counts[i] == 0 {
                    let leaf = tree.leaf_of(data, i);
                    for c in 0..k {
                        oob_sum[i * k + c] += tree.value[leaf * k + c] as f64;
                    }
                    oob_count[i] += 1;
                }
            }
        }
        if tree.len() > 1 {
            for (s, v) in importance_sum.iter_mut().zip(tree.importances(data.n_features)) {
                *s += v;
            }
            split_trees += 1;
        }
        trees.push(tree);
        progress(t + 1);
    }

    let oob = cfg.oob_score.then(|| {
        let (mut right, mut scored) = (0usize, 0usize);
        for i in 0..n {
            if oob_count[i] == 0 {
                continue;
            }
            scored += 1;
            let row = &oob_sum[i * k..(i + 1) * k];
            // First maximum, as numpy's argmax.
            let mut arg = 0;
            for c in 1..k {
                if row[c] > row[arg] {
                    arg = c;
                }
            }
            right += (arg == data.y[i] as usize) as usize;
        }
        (if scored > 0 { right as f64 / scored as f64 } else { f64::NAN }, scored)
    });
    let mut importances: Vec<f64> = importance_sum.iter().map(|s| if split_trees > 0 { s / split_trees as f64 } else { 0.0 }).collect();
    let total: f64 = importances.iter().sum();
    if total > 0.0 {
        importances.iter_mut().for_each(|v| *v /= total);
    }
    Grown { trees, oob, importances, in_bag }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_keys_sort_like_floats_and_round_trip() {
        let mut v = vec![3.5f32, -0.0, 0.0, -7.25, f32::MIN_POSITIVE, -f32::MAX, 1e-30, f32::INFINITY, f32::NEG_INFINITY];
        let mut keys: Vec<u32> = v.iter().map(|&x| ordered(x)).collect();
        keys.sort_unstable();
        v.sort_by(f32::total_cmp);
        let back: Vec<f32> = keys.iter().map(|&k| unordered(k)).collect();
        assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn midpoint_separates_neighbours_even_at_one_ulp() {
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        let m = midpoint(a, b);
        assert!(a <= m && m < b, "{m}");
        assert_eq!(midpoint(0.25, 0.75), 0.5);
        assert_eq!(midpoint(f32::MAX, f32::INFINITY), f32::MAX);
    }
}
