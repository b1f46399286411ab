//! Randomness for the randomized tests: lossfs's own seeded generator (SplitMix64, so the
//! same seed gives the same sequence on every machine and a failure can be replayed) and the
//! seed each run starts from.

/// The generator the tests draw from: `Rng::new(seed)`.
pub use lossfs::prng::SplitMix64 as Rng;

/// A seed from `LOSSFS_SEED` (decimal), else from the clock rounded to a multiple of 1000
/// (so a test may add small indexes to it); panics on a malformed value.
pub fn seed_from_env_or_clock() -> u64 {
    match std::env::var("LOSSFS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("LOSSFS_SEED={s:?} is not a number: {e}")),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                / 1000
                * 1000
        }
    }
}
