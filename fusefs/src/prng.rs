//! The one seeded pseudo-random generator (splitmix64) of lossfs and its tests: what a power
//! cut keeps at random, which operations a `--probability` fault rule hits, and the data of
//! randomized tests.  Ours, not a crate's, so that a seed printed in a report replays the
//! same crash state and the same faults with every future version of lossfs: the sequence is
//! fixed by this file alone.

/// splitmix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a constant, mixed on output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one item (a file) of a seeded run: depends on the seed and on the
    /// item's name only, so the order items are visited in does not change their draws.
    pub fn for_item(seed: u64, name: &[u8]) -> Self {
        // FNV-1a of the name, then mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in name {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SplitMix64::new(mix(seed ^ mix(h)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-shift with
    /// rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// `n` pseudo-random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A seed for a run that was given none: from the clock and the process id, so two cuts in a
/// row differ.  Reports print it so the run can be replayed.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(nanos ^ (u64::from(std::process::id()) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // Reference values of splitmix64 seeded with 1234567 (from the published C code).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(r.next_u64(), 9_817_491_932_198_370_423);
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn chance_follows_the_probability() {
        let mut r = SplitMix64::new(7);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!((0..100).all(|_| !r.chance(0.0)));
        assert!((0..100).all(|_| r.chance(1.0)));
        assert!((0..1000)
            .map(|_| r.next_f64())
            .all(|x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn bytes_are_the_draws_in_little_endian() {
        let mut a = SplitMix64::new(3);
        let mut b = SplitMix64::new(3);
        let v = a.bytes(13);
        assert_eq!(v.len(), 13);
        assert_eq!(v[..8], b.next_u64().to_le_bytes());
        assert_eq!(v[8..], b.next_u64().to_le_bytes()[..5]);
        assert!(a.bytes(0).is_empty());
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let a: Vec<u64> = (0..100)
            .scan(SplitMix64::new(7), |r, _| Some(r.below(1000)))
            .collect();
        let b: Vec<u64> = (0..100)
            .scan(SplitMix64::new(7), |r, _| Some(r.below(1000)))
            .collect();
        let c: Vec<u64> = (0..100)
            .scan(SplitMix64::new(8), |r, _| Some(r.below(1000)))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&x| x < 1000));
    }

    #[test]
    fn below_covers_its_range_and_coin_is_roughly_fair() {
        let mut r = SplitMix64::new(42);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        let heads = (0..10_000).filter(|_| r.coin()).count();
        assert!((4000..6000).contains(&heads), "{heads}");
        assert_eq!(r.below(1), 0);
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn item_generators_depend_on_seed_and_name_only() {
        let mut a = SplitMix64::for_item(5, b"log");
        let mut b = SplitMix64::for_item(5, b"log");
        let mut c = SplitMix64::for_item(5, b"log2");
        let mut d = SplitMix64::for_item(6, b"log");
        let (x, y, z, w) = (a.next_u64(), b.next_u64(), c.next_u64(), d.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, w);
    }
}
