//! What a power cut keeps of the unsynced data (`lossctl powercut --keep MODE --seed N
//! --granularity BYTES`): the mode names, the checks on the granularity, and the resolved
//! spec the journal's crash-state computation takes.  The exact rules are in
//! docs/fault-model.md.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which unsynced changes survive a cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepMode {
    /// Every unsynced byte is lost.
    #[default]
    None,
    /// Every unsynced byte is kept (and becomes durable).
    All,
    /// Per file, a seeded random-length prefix of the unsynced operations is kept.
    Prefix,
    /// A seeded random subset of the unsynced blocks is kept.
    Random,
}

pub const KEEP_MODES: &str = "none, all, prefix or random";

impl KeepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepMode::None => "none",
            KeepMode::All => "all",
            KeepMode::Prefix => "prefix",
            KeepMode::Random => "random",
        }
    }

    /// Whether the mode draws random numbers (and so has a seed worth reporting).
    pub fn is_seeded(self) -> bool {
        matches!(self, KeepMode::Prefix | KeepMode::Random)
    }
}

impl fmt::Display for KeepMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeepMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(KeepMode::None),
            "all" => Ok(KeepMode::All),
            "prefix" => Ok(KeepMode::Prefix),
            "random" => Ok(KeepMode::Random),
            _ => Err(format!(
                "unknown keep mode {:?} (expected {KEEP_MODES})",
                s.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// Block size of `--keep random` when none is given: a page.
pub const DEFAULT_GRANULARITY: u64 = 4096;
pub const MIN_GRANULARITY: u64 = 512;
pub const MAX_GRANULARITY: u64 = 1 << 20;

/// Checks a `--granularity`: a power of two from 512 (a sector) to 1 MiB.
pub fn check_granularity(g: u64) -> Result<u64, String> {
    if g.is_power_of_two() && (MIN_GRANULARITY..=MAX_GRANULARITY).contains(&g) {
        Ok(g)
    } else {
        Err(format!(
            "granularity {g} is not a power of two from {MIN_GRANULARITY} to {MAX_GRANULARITY}"
        ))
    }
}

/// A resolved keep request: the seed is always set (drawn when the caller gave none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepSpec {
    pub mode: KeepMode,
    pub seed: u64,
    pub granularity: u64,
}

impl KeepSpec {
    /// `none`: today's clean cut.
    pub fn none() -> Self {
        KeepSpec {
            mode: KeepMode::None,
            seed: 0,
            granularity: DEFAULT_GRANULARITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_unknown_ones_are_refused() {
        for m in [
            KeepMode::None,
            KeepMode::All,
            KeepMode::Prefix,
            KeepMode::Random,
        ] {
            assert_eq!(m.as_str().parse::<KeepMode>(), Ok(m));
        }
        let e = "some".parse::<KeepMode>().unwrap_err();
        assert!(e.contains("unknown keep mode \"some\""), "{e}");
        assert!(e.contains(KEEP_MODES), "{e}");
    }

    #[test]
    fn granularity_must_be_a_power_of_two_in_range() {
        for g in [512, 1024, 4096, 1 << 20] {
            assert_eq!(check_granularity(g), Ok(g));
        }
        for g in [0, 1, 256, 4095, 3000, 2 << 20] {
            assert!(check_granularity(g).is_err(), "{g}");
        }
    }
}

/// A keep request as a client sends it: seed and granularity optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepRequest {
    pub mode: KeepMode,
    pub seed: Option<u64>,
    pub granularity: Option<u64>,
}

impl KeepRequest {
    /// True for a plain cut (what every client before `--keep` sent).
    pub fn is_default(&self) -> bool {
        *self == KeepRequest::default()
    }

    /// The spec a cut runs with: a seed drawn when none was given, the default block size.
    pub fn resolve(&self) -> Result<KeepSpec, String> {
        let granularity = check_granularity(self.granularity.unwrap_or(DEFAULT_GRANULARITY))?;
        Ok(KeepSpec {
            mode: self.mode,
            seed: self.seed.unwrap_or_else(crate::prng::fresh_seed),
            granularity,
        })
    }
}
