//! The forest's random numbers: xoshiro256++ seeded through SplitMix64.
//!
//! Written out here rather than taken from a crate so that the stream — and therefore
//! every model byte — stays the same for a given seed whatever dependency versions
//! the workspace resolves to. Each tree gets its own stream derived from the seed and
//! the tree's index, so a tree does not depend on how many numbers the others drew.

/// SplitMix64 step: spreads a seed into well-mixed 64-bit words.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman & Vigna).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The stream of tree `tree` of a forest seeded with `seed`.
    pub fn for_tree(seed: u64, tree: u64) -> Rng {
        let mut sm = seed ^ tree.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[0].wrapping_add(self.s[3]).rotate_left(23).wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`) by Lemire's multiply-shift; the bias is below n / 2^64.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `low..high` (`low < high`).
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct_per_tree() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_tree(7, 0);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_tree(7, 0);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::for_tree(7, 1).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut r = Rng::for_tree(1, 2);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10)] += 1;
        }
        // Each bin expects 10 000; 5 sigma is about 470.
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
