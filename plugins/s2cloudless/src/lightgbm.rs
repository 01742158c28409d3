//! LightGBM binary classifiers: the text model format, a compact binary form that the
//! component embeds, and inference that takes the same path through every tree as
//! LightGBM's `Tree::NumericalDecision` (include/LightGBM/tree.h).
//!
//! This file is shared: `build.rs` includes it to parse the text model and write the
//! binary form into `OUT_DIR`, and the crate includes it to decode that form and predict.
//!
//! Exactness: LightGBM compares `(double)x <= threshold` with an `f64` threshold. Our inputs
//! are `f32`, so each threshold is rounded *down* to the largest `f32` whose value is not
//! above it; then `x <= t32` on `f32` gives the same answer for every `f32` `x` (if
//! `x <= t` then `x` is an `f32` not above `t`, hence not above the largest such). Leaf
//! values are summed in `f64` in tree order, as LightGBM's predictor does, then the
//! sigmoid is applied.

/// Decision-type bits (LightGBM `kCategoricalMask`, `kDefaultLeftMask`), and the missing
/// type in bits 2..3: 0 none, 1 zero, 2 NaN.
const CATEGORICAL_MASK: u8 = 1;
const DEFAULT_LEFT_MASK: u8 = 2;
const MISSING_ZERO: u8 = 1;
const MISSING_NAN: u8 = 2;
/// LightGBM's `kZeroThreshold` (a `float`): values within it count as zero for `MissingType::Zero`.
const ZERO_THRESHOLD: f32 = 1e-35;

const MAGIC: &[u8; 8] = b"SFLGBM01";

/// One tree as LightGBM stores it: internal nodes `0..n`, children `>= 0` internal, `< 0` the leaf `!child`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTree {
    pub split_feature: Vec<u32>,
    pub threshold: Vec<f64>,
    pub decision_type: Vec<u8>,
    pub left_child: Vec<i32>,
    pub right_child: Vec<i32>,
    pub leaf_value: Vec<f64>,
}

/// A binary LightGBM model (`objective=binary sigmoid:<s>`), one tree per iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct RawModel {
    pub num_features: u32,
    pub sigmoid: f64,
    /// `average_output` (random-forest mode): the raw score is the mean, not the sum, of the trees.
    pub average_output: bool,
    pub trees: Vec<RawTree>,
}

fn parse_list<T: std::str::FromStr>(tree: usize, key: &str, text: Option<&str>, len: usize) -> Result<Vec<T>, String> {
    let text = text.ok_or_else(|| format!("tree {tree}: the field `{key}` is missing"))?;
    let values = text
        .split_ascii_whitespace()
        .map(|v| v.parse::<T>().map_err(|_| format!("tree {tree}: `{key}` holds '{v}', not a number")))
        .collect::<Result<Vec<T>, String>>()?;
    if values.len() != len {
        return Err(format!("tree {tree}: `{key}` has {} values, expected {len}", values.len()));
    }
    Ok(values)
}

impl RawModel {
    /// Parses LightGBM's text model format (`Booster.save_model`).
    pub fn parse_text(text: &str) -> Result<RawModel, String> {
        let mut lines = text.lines().peekable();
        let mut header = std::collections::HashMap::new();
        let mut average_output = false;
        while let Some(line) = lines.peek() {
            if line.starts_with("Tree=") || line.starts_with("end of trees") {
                break;
            }
            let line = lines.next().expect("peeked").trim();
            match line.split_once('=') {
                Some((k, v)) => {
                    header.insert(k.to_string(), v.to_string());
                }
                None if line == "average_output" => average_output = true,
                None => {}
            }
        }
        let get = |k: &str| header.get(k).map(String::as_str).ok_or_else(|| format!("the model header lacks `{k}`"));
        let objective = get("objective")?;
        let mut words = objective.split_ascii_whitespace();
        if words.next() != Some("binary") {
            return Err(format!("objective '{objective}' is not binary; only binary classifiers are supported"));
        }
        let sigmoid = words
            .find_map(|w| w.strip_prefix("sigmoid:"))
            .ok_or_else(|| format!("objective '{objective}' names no sigmoid"))?
            .parse::<f64>()
            .map_err(|_| format!("objective '{objective}': bad sigmoid"))?;
        if get("num_class")? != "1" || get("num_tree_per_iteration")? != "1" {
            return Err("expected num_class=1 and num_tree_per_iteration=1 for a binary model".into());
        }
        let num_features = get("max_feature_idx")?
            .parse::<u32>()
            .map_err(|_| "max_feature_idx is not a number".to_string())?
            + 1;

        let mut trees = Vec::new();
        while let Some(line) = lines.next() {
            if line.starts_with("end of trees") {
                break;
            }
            if !line.starts_with("Tree=") {
                continue;
            }
            let index = trees.len();
            let mut fields = std::collections::HashMap::new();
            for line in lines.by_ref() {
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once('=') {
                    fields.insert(k, v);
                }
            }
            let num_leaves: usize = fields
                .get("num_leaves")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("tree {index}: num_leaves is missing"))?;
            if num_leaves == 0 {
                return Err(format!("tree {index}: num_leaves is 0"));
            }
            if fields.get("is_linear").is_some_and(|v| v.trim() != "0") {
                return Err(format!("tree {index} is a linear tree, which this port does not evaluate"));
            }
            let n = num_leaves - 1;
            let leaf_value = parse_list::<f64>(index, "leaf_value", fields.get("leaf_value").copied(), num_leaves)?;
            let tree = if n == 0 {
                RawTree {
                    split_feature: vec![],
                    threshold: vec![],
                    decision_type: vec![],
                    left_child: vec![],
                    right_child: vec![],
                    leaf_value,
                }
            } else {
                RawTree {
                    split_feature: parse_list(index, "split_feature", fields.get("split_feature").copied(), n)?,
                    threshold: parse_list(index, "threshold", fields.get("threshold").copied(), n)?,
                    decision_type: parse_list(index, "decision_type", fields.get("decision_type").copied(), n)?,
                    left_child: parse_list(index, "left_child", fields.get("left_child").copied(), n)?,
                    right_child: parse_list(index, "right_child", fields.get("right_child").copied(), n)?,
                    leaf_value,
                }
            };
            tree.validate(index, num_features)?;
            trees.push(tree);
        }
        if trees.is_empty() {
            return Err("the model has no trees".into());
        }
        Ok(RawModel { num_features, sigmoid, average_output, trees })
    }

    /// The compact little-endian form embedded in the component.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.num_features.to_le_bytes());
        out.extend_from_slice(&self.sigmoid.to_le_bytes());
        out.push(self.average_output as u8);
        out.extend_from_slice(&(self.trees.len() as u32).to_le_bytes());
        for t in &self.trees {
            out.extend_from_slice(&(t.leaf_value.len() as u32).to_le_bytes());
            for i in 0..t.threshold.len() {
                out.extend_from_slice(&t.split_feature[i].to_le_bytes());
                out.extend_from_slice(&t.threshold[i].to_le_bytes());
                out.push(t.decision_type[i]);
                out.extend_from_slice(&t.left_child[i].to_le_bytes());
                out.extend_from_slice(&t.right_child[i].to_le_bytes());
            }
            for v in &t.leaf_value {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`RawModel::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<RawModel, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("not an encoded LightGBM model (bad magic)".into());
        }
        let num_features = r.u32()?;
        let sigmoid = r.f64()?;
        let average_output = r.take(1)?[0] != 0;
        let n_trees = r.u32()? as usize;
        let mut trees = Vec::with_capacity(n_trees);
        for index in 0..n_trees {
            let num_leaves = r.u32()? as usize;
            if num_leaves == 0 {
                return Err(format!("tree {index}: no leaves"));
            }
            let n = num_leaves - 1;
            let mut t = RawTree {
                split_feature: Vec::with_capacity(n),
                threshold: Vec::with_capacity(n),
                decision_type: Vec::with_capacity(n),
                left_child: Vec::with_capacity(n),
                right_child: Vec::with_capacity(n),
                leaf_value: Vec::with_capacity(num_leaves),
            };
            for _ in 0..n {
                t.split_feature.push(r.u32()?);
                t.threshold.push(r.f64()?);
                t.decision_type.push(r.take(1)?[0]);
                t.left_child.push(r.u32()? as i32);
                t.right_child.push(r.u32()? as i32);
            }
            for _ in 0..num_leaves {
                t.leaf_value.push(r.f64()?);
            }
            t.validate(index, num_features)?;
            trees.push(t);
        }
        if r.at != bytes.len() {
            return Err("trailing bytes after the last tree".into());
        }
        Ok(RawModel { num_features, sigmoid, average_output, trees })
    }
}

impl RawTree {
    /// Checks what inference relies on: features in range, numerical splits only, and
    /// children that form a tree reaching every leaf exactly once from the root.
    fn validate(&self, index: usize, num_features: u32) -> Result<(), String> {
        let n = self.threshold.len();
        let leaves = self.leaf_value.len();
        if leaves != n + 1 {
            return Err(format!("tree {index}: {n} splits need {} leaves, found {leaves}", n + 1));
        }
        let mut seen_nodes = vec![false; n];
        let mut seen_leaves = vec![false; leaves];
        for i in 0..n {
            if self.split_feature[i] >= num_features {
                return Err(format!("tree {index}: node {i} splits on feature {} of {num_features}", self.split_feature[i]));
            }
            if self.decision_type[i] & CATEGORICAL_MASK != 0 {
                return Err(format!("tree {index}: node {i} is a categorical split, which this port does not evaluate"));
            }
            if (self.decision_type[i] >> 2) & 3 > MISSING_NAN {
                return Err(format!("tree {index}: node {i} has an unknown missing type"));
            }
            if self.threshold[i].is_nan() {
                return Err(format!("tree {index}: node {i} has a NaN threshold"));
            }
            for child in [self.left_child[i], self.right_child[i]] {
                let seen = if child >= 0 {
                    seen_nodes.get_mut(child as usize)
                } else {
                    seen_leaves.get_mut(!child as usize)
                };
                match seen {
                    Some(s) if !*s && child != 0 => *s = true,
                    _ => return Err(format!("tree {index}: node {i} has a bad or repeated child {child}")),
                }
            }
        }
        if seen_nodes.iter().skip(1).any(|s| !s) || (n > 0 && seen_leaves.iter().any(|s| !s)) {
            return Err(format!("tree {index}: some nodes or leaves are unreachable"));
        }
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self.bytes.get(self.at..self.at + n).ok_or("the encoded model is truncated")?;
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// The largest `f32` whose value is not above `t`, so that `x <= result` on `f32` equals
/// `(x as f64) <= t` for every `f32` `x` (see the module docs).
pub fn threshold_f32(t: f64) -> f32 {
    let r = t as f32; // nearest, saturating to ±inf
    if (r as f64) > t { r.next_down() } else { r }
}

/// Bits of a split's `info` word (the high half of its slot): the two children's leaf flags,
/// the feature, and the slot of the left child (the right one is the next slot).
const LEFT_IS_LEAF: u32 = 1 << 30;
const FEATURE_SHIFT: u32 = 24;
const FEATURE_BITS: u32 = 0x3f;
const CHILD_BITS: u32 = (1 << FEATURE_SHIFT) - 1;

/// Where a tree starts: the slot of its root, or the value of a single-leaf tree.
#[derive(Debug, Clone, Copy)]
enum Root {
    Split(u32),
    Leaf(f64),
}

/// A binary LightGBM classifier flattened for fast, exact inference.
///
/// Layout: every tree is a run of 64-bit slots, its root first and then the two children of
/// each split side by side. A split's slot holds its `f32` threshold (low half) and an `info`
/// word: the left child's slot, the feature, and whether each child is a leaf. A leaf's slot
/// holds its `f64` value. So one step is one slot load, one feature load and a compare, the
/// next slot being `left + (x > threshold)`, and a leaf's value sits beside its sibling.
#[derive(Debug, Clone)]
pub struct Forest {
    slots: Vec<u64>,
    /// LightGBM's decision type per slot (missing type and default direction; 0 for leaves).
    decisions: Vec<u8>,
    roots: Vec<Root>,
    num_features: usize,
    sigmoid: f64,
    average_output: bool,
    /// Whether any split treats zero as missing; if not, zeros need no special path.
    zero_missing: bool,
}

/// Samples walking one tree at the same time (see [`Forest::raw_scores`]).
const LANES: usize = 8;

/// What one step from a split leads to.
enum Step {
    Split(u32),
    Leaf(u32),
}

impl Forest {
    /// Flattens a model; fails if it has more than 64 features or 2²⁴ nodes in all, the
    /// limits of the slot layout (`build.rs` checks the embedded model this way).
    pub fn new(model: &RawModel) -> Result<Forest, String> {
        if model.num_features > FEATURE_BITS + 1 {
            return Err(format!("{} features; the flattened forest takes at most {}", model.num_features, FEATURE_BITS + 1));
        }
        let mut slots: Vec<u64> = Vec::new();
        let mut decisions = Vec::new();
        let mut roots = Vec::with_capacity(model.trees.len());
        let mut zero_missing = false;
        for t in &model.trees {
            if t.threshold.is_empty() {
                roots.push(Root::Leaf(t.leaf_value[0]));
                continue;
            }
            roots.push(Root::Split(slots.len() as u32));
            // Breadth first: (LightGBM node, its slot), slots handed out in pairs.
            slots.push(0);
            decisions.push(0);
            let mut queue = std::collections::VecDeque::from([(0usize, slots.len() - 1)]);
            while let Some((node, slot)) = queue.pop_front() {
                let left = slots.len();
                if left + 2 > CHILD_BITS as usize {
                    return Err(format!("more than {CHILD_BITS} nodes; too many for the flattened forest"));
                }
                let mut info = (left as u32) | (t.split_feature[node] << FEATURE_SHIFT);
                for (side, child) in [t.left_child[node], t.right_child[node]].into_iter().enumerate() {
                    if child < 0 {
                        info |= LEFT_IS_LEAF << side;
                        slots.push(t.leaf_value[!child as usize].to_bits());
                    } else {
                        slots.push(0);
                        queue.push_back((child as usize, left + side));
                    }
                    decisions.push(0);
                }
                zero_missing |= (t.decision_type[node] >> 2) & 3 == MISSING_ZERO;
                slots[slot] = (info as u64) << 32 | threshold_f32(t.threshold[node]).to_bits() as u64;
                decisions[slot] = t.decision_type[node];
            }
        }
        Ok(Forest {
            slots,
            decisions,
            roots,
            num_features: model.num_features as usize,
            sigmoid: model.sigmoid,
            average_output: model.average_output,
            zero_missing,
        })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn num_trees(&self) -> usize {
        self.roots.len()
    }

    /// Whether plain `x <= threshold` decides every split for these features: no NaN, and
    /// no value LightGBM would treat as a missing zero.
    #[inline]
    fn plain(&self, x: &[f32]) -> bool {
        !x.iter().any(|v| v.is_nan() || (self.zero_missing && v.abs() <= ZERO_THRESHOLD))
    }

    /// One step from the split in `slot`: `go_right` from the decision.
    #[inline(always)]
    fn step(&self, slot: u32, go_right: bool) -> Step {
        let info = (self.slots[slot as usize] >> 32) as u32;
        let side = go_right as u32;
        let next = (info & CHILD_BITS) + side;
        if info & (LEFT_IS_LEAF << side) != 0 { Step::Leaf(next) } else { Step::Split(next) }
    }

    /// The threshold and feature of the split in `slot`.
    #[inline(always)]
    fn split(&self, slot: u32) -> (f32, usize) {
        let s = self.slots[slot as usize];
        (f32::from_bits(s as u32), ((s >> (32 + FEATURE_SHIFT)) as u32 & FEATURE_BITS) as usize)
    }

    /// LightGBM's `NumericalDecision` (true = right), for samples with NaN or zero-as-missing values.
    #[inline]
    fn exact_right(threshold: f32, decision: u8, x: f32) -> bool {
        let missing = (decision >> 2) & 3;
        // LightGBM turns NaN into 0.0 unless the split routes NaN itself.
        let x = if x.is_nan() && missing != MISSING_NAN { 0.0 } else { x };
        let is_missing = (missing == MISSING_ZERO && (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&x))
            || (missing == MISSING_NAN && x.is_nan());
        // NaN only remains where it is missing, so `>` is LightGBM's `!(x <= threshold)` here.
        if is_missing { decision & DEFAULT_LEFT_MASK == 0 } else { x > threshold }
    }

    /// The value of the leaf one sample reaches from the split in `from`, by LightGBM's rules.
    #[inline]
    fn walk(&self, from: u32, x: &[f32], plain: bool) -> f64 {
        let mut slot = from;
        loop {
            let (threshold, feature) = self.split(slot);
            let v = x[feature];
            let right = if plain { v > threshold } else { Self::exact_right(threshold, self.decisions[slot as usize], v) };
            match self.step(slot, right) {
                Step::Split(next) => slot = next,
                Step::Leaf(leaf) => return f64::from_bits(self.slots[leaf as usize]),
            }
        }
    }

    fn tree_value(&self, root: Root, x: &[f32], plain: bool) -> f64 {
        match root {
            Root::Leaf(v) => v,
            Root::Split(slot) => self.walk(slot, x, plain),
        }
    }

    /// The raw score (sum of leaf values) of one sample, on LightGBM's exact decision path.
    pub fn raw_score_one(&self, x: &[f32]) -> f64 {
        debug_assert_eq!(x.len(), self.num_features);
        let plain = self.plain(x);
        let mut score = 0.0f64;
        for &root in &self.roots {
            score += self.tree_value(root, x, plain);
        }
        self.finish(score)
    }

    fn finish(&self, score: f64) -> f64 {
        if self.average_output { score / self.roots.len() as f64 } else { score }
    }

    /// Probability of the positive class from a raw score (LightGBM's binary `ConvertOutput`).
    pub fn probability(&self, raw: f64) -> f64 {
        1.0 / (1.0 + (-self.sigmoid * raw).exp())
    }

    /// Raw scores of many samples: `features` is `samples × num_features` row-major and
    /// `scores` gets one value per sample, equal to [`Forest::raw_score_one`].
    ///
    /// Speed: trees are taken one at a time over the whole batch, so a tree stays in cache;
    /// within a tree, `LANES` samples walk at once, so their independent loads overlap
    /// instead of each waiting on the last, and a lane that reaches a leaf takes the next
    /// sample at the root, so no lane idles while another walks a long path. Samples that
    /// need LightGBM's missing-value rules (NaN, zero-as-missing) walk alone, exactly.
    pub fn raw_scores(&self, features: &[f32], scores: &mut [f64]) {
        self.raw_scores_lanes::<LANES>(features, scores)
    }

    fn raw_scores_lanes<const L: usize>(&self, features: &[f32], scores: &mut [f64]) {
        let f = self.num_features;
        assert_eq!(features.len(), scores.len() * f, "features must be samples × num_features");
        scores.fill(0.0);
        let (plain, special): (Vec<usize>, Vec<usize>) =
            (0..scores.len()).partition(|&k| self.plain(&features[k * f..(k + 1) * f]));
        for &root in &self.roots {
            for &k in &special {
                scores[k] += self.tree_value(root, &features[k * f..(k + 1) * f], false);
            }
            let root = match root {
                Root::Split(slot) if plain.len() >= L => slot,
                _ => {
                    for &k in &plain {
                        scores[k] += self.tree_value(root, &features[k * f..(k + 1) * f], true);
                    }
                    continue;
                }
            };
            // Lane l walks sample `sample[l]` (its features start at `row[l]`), now at split `at[l]`.
            let mut sample: [usize; L] = std::array::from_fn(|l| plain[l]);
            let mut row: [usize; L] = std::array::from_fn(|l| sample[l] * f);
            let mut at = [root; L];
            let mut next = L;
            'walk: loop {
                for l in 0..L {
                    let (threshold, feature) = self.split(at[l]);
                    let leaf = match self.step(at[l], features[row[l] + feature] > threshold) {
                        Step::Split(to) => {
                            at[l] = to;
                            continue;
                        }
                        Step::Leaf(leaf) => leaf,
                    };
                    scores[sample[l]] += f64::from_bits(self.slots[leaf as usize]);
                    if next == plain.len() {
                        // Out of samples: finish the other lanes one by one.
                        for m in (0..L).filter(|&m| m != l) {
                            scores[sample[m]] += self.walk(at[m], &features[row[m]..row[m] + f], true);
                        }
                        break 'walk;
                    }
                    sample[l] = plain[next];
                    row[l] = sample[l] * f;
                    at[l] = root;
                    next += 1;
                }
            }
        }
        if self.average_output {
            for s in scores.iter_mut() {
                *s = self.finish(*s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-split tree in LightGBM's text format, with a configurable decision type on the root.
    fn model_text(decision_type: u8, threshold: &str) -> String {
        format!(
            "tree\nversion=v3\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n\
             objective=binary sigmoid:1\n\nTree=0\nnum_leaves=3\nnum_cat=0\nsplit_feature=0 1\n\
             threshold={threshold} 0.5\ndecision_type={decision_type} 2\nleft_child=-1 -2\nright_child=1 -3\n\
             leaf_value=-1 0.25 2\nshrinkage=1\n\n\nTree=1\nnum_leaves=1\nnum_cat=0\nleaf_value=0.125\nshrinkage=1\n\n\nend of trees\n"
        )
    }

    fn forest(decision_type: u8, threshold: &str) -> Forest {
        let raw = RawModel::parse_text(&model_text(decision_type, threshold)).unwrap();
        Forest::new(&RawModel::decode(&raw.encode()).unwrap()).unwrap()
    }

    #[test]
    fn thresholds_round_down_to_f32() {
        // 0.7f32 lies below 0.7, so it stays; 0.3f32 lies above 0.3, so the next f32 down is taken.
        assert!((0.7f32 as f64) < 0.7 && (0.3f32 as f64) > 0.3);
        assert_eq!(threshold_f32(0.7), 0.7f32);
        assert_eq!(threshold_f32(0.3), 0.3f32.next_down());
        assert_eq!(threshold_f32(0.5), 0.5f32);
        assert_eq!(threshold_f32(1e300), f32::MAX);
        assert_eq!(threshold_f32(-1e300), f32::NEG_INFINITY);
        // x = 0.3f32 is above 0.3 in f64, so it must go right: x <= threshold_f32(0.3) is false.
        assert!(0.3f32 > threshold_f32(0.3));
    }

    #[test]
    fn decisions_follow_lightgbm_missing_rules() {
        // Root: feature 0 <= 0.3 → leaf -1, else node 1: feature 1 <= 0.5 → 0.25 else 2; plus 0.125.
        let f = forest(2, "0.29999999999999999");
        assert_eq!(f.raw_score_one(&[0.2, 9.0]), -1.0 + 0.125);
        assert_eq!(f.raw_score_one(&[0.3, 0.5]), 0.25 + 0.125); // 0.3f32 > 0.3
        assert_eq!(f.raw_score_one(&[0.4, 0.6]), 2.0 + 0.125);
        // Missing type None: NaN becomes 0.0, which is <= 0.3.
        assert_eq!(f.raw_score_one(&[f32::NAN, 0.6]), -1.0 + 0.125);
        // Missing type NaN (8), default right: NaN goes right, 0 compares normally.
        let f = forest(8, "0.3");
        assert_eq!(f.raw_score_one(&[f32::NAN, 0.6]), 2.0 + 0.125);
        assert_eq!(f.raw_score_one(&[0.0, 0.6]), -1.0 + 0.125);
        // Missing type Zero (4), default right: zero and NaN go right even though 0 <= 0.3.
        let f = forest(4, "0.3");
        assert_eq!(f.raw_score_one(&[0.0, 0.6]), 2.0 + 0.125);
        assert_eq!(f.raw_score_one(&[f32::NAN, 0.6]), 2.0 + 0.125);
        assert_eq!(f.raw_score_one(&[1e-36, 0.6]), 2.0 + 0.125);
        assert_eq!(f.raw_score_one(&[1e-30, 0.6]), -1.0 + 0.125);
        // Zero-as-missing with default left (6) on a negative threshold: zero goes left.
        let f = forest(6, "-1");
        assert_eq!(f.raw_score_one(&[0.0, 0.6]), -1.0 + 0.125);
        assert_eq!(f.raw_score_one(&[0.1, 0.6]), 2.0 + 0.125);
        assert!((f.probability(0.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn batched_scores_equal_one_at_a_time() {
        let f = forest(4, "0.3");
        let mut x = Vec::new();
        for k in 0..37 {
            let a = match k % 5 {
                0 => 0.0,
                1 => f32::NAN,
                _ => k as f32 / 50.0,
            };
            x.extend_from_slice(&[a, (k % 7) as f32 / 7.0]);
        }
        let mut scores = vec![0.0; 37];
        f.raw_scores(&x, &mut scores);
        for k in 0..37 {
            assert_eq!(scores[k], f.raw_score_one(&x[2 * k..2 * k + 2]), "sample {k}");
        }
    }

    #[test]
    fn malformed_models_are_named() {
        let bad = model_text(2, "0.3").replace("left_child=-1 -2", "left_child=-1 -1");
        assert!(RawModel::parse_text(&bad).unwrap_err().contains("repeated child"));
        let cat = model_text(1, "0.3");
        assert!(RawModel::parse_text(&cat).unwrap_err().contains("categorical"));
        let multi = model_text(2, "0.3").replace("objective=binary sigmoid:1", "objective=multiclass num_class:3");
        assert!(RawModel::parse_text(&multi).unwrap_err().contains("not binary"));
        assert!(RawModel::decode(b"nonsense").is_err());
    }
}

