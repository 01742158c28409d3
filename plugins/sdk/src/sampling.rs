//! Helpers samplers share: a small seeded generator, a random draw, and checked
//! access to the candidates' class layers.

use crate::{SampleInput, StageError};

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
