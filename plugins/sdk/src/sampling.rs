//! Helpers samplers share: a small seeded generator, a random draw, and checked
//! access to the candidates' class layers.

use crate::{SampleInput, StageError, for_each_index};

/// SplitMix64 (Steele, Lea & Flood 2014): small, fast, well mixed; enough for seeded
/// draws and tie-breaking keys. The same seed gives the same stream on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Puts `k` of `items` at random in front (partial Fisher–Yates).
pub fn shuffle_front(items: &mut [u32], k: usize, rng: &mut SplitMix) {
    for i in 0..k.min(items.len()) {
        let j = i + rng.below(items.len() - i);
        items.swap(i, j);
    }
}

/// `k` of `items` at random, in ascending order.
pub fn draw(items: &mut [u32], k: usize, rng: &mut SplitMix) -> Vec<u32> {
    let k = k.min(items.len());
    shuffle_front(items, k, rng);
    let mut out = items[..k].to_vec();
    out.sort_unstable();
    out
}

/// The names of the input's layers, for messages.
pub fn layer_names(input: &SampleInput) -> String {
    input.layers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// A layer by name, checked to have one value per candidate.
pub fn layer<'a>(input: &'a SampleInput, name: &str) -> Result<&'a [u32], StageError> {
    let values = input
        .layers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .ok_or_else(|| StageError::InvalidInput(format!("no layer '{name}' (layers: {})", layer_names(input))))?;
    check_layer(input, name, values)?;
    Ok(values)
}

/// Checks that a layer has one value per candidate.
pub fn check_layer(input: &SampleInput, name: &str, values: &[u32]) -> Result<(), StageError> {
    if values.len() != input.features.samples {
        return Err(StageError::InvalidInput(format!(
            "layer '{name}' has {} values for {} candidates",
            values.len(),
            input.features.samples
        )));
    }
    Ok(())
}

/// The `classes` allow-list of a sampler's parameters, checked: `None` = every class.
pub fn allowed_classes(classes: &Option<Vec<u32>>) -> Result<Option<std::collections::BTreeSet<u32>>, StageError> {
    match classes {
        Some(list) if list.is_empty() => {
            Err(StageError::InvalidParams("classes is empty: leave it out to sample every class".into()))
        }
        Some(list) if list.contains(&0) => Err(StageError::InvalidParams("classes contains 0, which means 'no class'".into())),
        Some(list) => Ok(Some(list.iter().copied().collect())),
        None => Ok(None),
    }
}

/// [`DenseCodes::index`] of a pixel whose code is 0 (no class / no cluster).
pub const NO_CODE: u32 = u32::MAX;

/// The codes of a class or cluster layer renumbered densely, so per-pixel tallies index
/// plain arrays instead of searching maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseCodes {
    /// The distinct non-zero codes, ascending.
    pub codes: Vec<u32>,
    /// Per pixel, the position of its code in `codes`, or [`NO_CODE`] for 0.
    pub index: Vec<u32>,
}

impl DenseCodes {
    pub fn new(layer: &[u32]) -> Self {
        // Eight pixels per loop round in the per-pixel loops: in the sandbox each loop
        // back-edge checks the deadline, which these one-operation loops would pay per
        // pixel.
        let (eights, rest) = layer.as_chunks::<8>();
        let max = eights.iter().fold(rest.iter().copied().max().unwrap_or(0), |m, e| m.max(e.iter().copied().fold(0, u32::max)));
        let max = max as usize;
        if max < 1 << 20 {
            // A lookup table over the code range (at most 4 MiB).
            let mut seen = vec![false; max + 1];
            for_each_index::<8>(layer.len(), |i| seen[layer[i] as usize] = true);
            seen[0] = false;
            let mut slot = vec![NO_CODE; max + 1];
            let mut codes = Vec::new();
            for (v, _) in seen.iter().enumerate().filter(|(_, s)| **s) {
                slot[v] = codes.len() as u32;
                codes.push(v as u32);
            }
            let mut index = Vec::with_capacity(layer.len());
            for e in eights {
                index.extend_from_slice(&e.map(|v| slot[v as usize]));
            }
            index.extend(rest.iter().map(|&v| slot[v as usize]));
            DenseCodes { codes, index }
        } else {
            let mut codes: Vec<u32> = layer.iter().copied().filter(|&v| v != 0).collect();
            codes.sort_unstable();
            codes.dedup();
            let index = layer
                .iter()
                .map(|&v| if v == 0 { NO_CODE } else { codes.binary_search(&v).expect("every code was collected") as u32 })
                .collect();
            DenseCodes { codes, index }
        }
    }

    /// Pixels per code, in the order of `codes`.
    pub fn counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.codes.len()];
        let index = &self.index;
        for_each_index::<8>(index.len(), |p| {
            if index[p] != NO_CODE {
                counts[index[p] as usize] += 1;
            }
        });
        counts
    }
}

#[cfg(test)]
mod dense_tests {
    use super::*;

    #[test]
    fn small_and_large_codes_are_renumbered_in_ascending_order() {
        for layer in [vec![0, 7, 3, 7, 0, 1], vec![0, 7_000_000, 3, 7_000_000, 0, 1]] {
            let d = DenseCodes::new(&layer);
            assert_eq!(d.codes, vec![1, 3, layer[1]]);
            assert_eq!(d.index, vec![NO_CODE, 2, 1, 2, NO_CODE, 0]);
            assert_eq!(d.counts(), vec![1, 1, 2]);
        }
        let empty = DenseCodes::new(&[0, 0]);
        assert!(empty.codes.is_empty());
        assert_eq!(empty.index, vec![NO_CODE, NO_CODE]);
    }
}
