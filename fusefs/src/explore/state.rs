//! The crash states `lossfs explore` visits: what each one is (a crash point at a durability
//! point, a pause before an operation followed by a partial cut, or a cut after the whole
//! run), how it is written on a command line (`--state SPEC`), and which ones a run visits
//! given the operation counts of the recording run and the `--states` bound.

use crate::keep::KeepMode;
use crate::prng::SplitMix64;
use std::collections::BTreeMap;
use std::fmt;

/// Operations after which (or before which) the data or the names a program relies on may
/// have become durable: a cut right before and right after each one.
pub const DURABILITY_OPS: [&str; 4] = ["fsync", "fdatasync", "fsyncdir", "rename"];

/// Operations that change data or names: a partial cut (`--keep prefix|random`) right
/// before each one.
pub const CHANGE_OPS: [&str; 12] = [
    "write",
    "truncate",
    "fallocate",
    "copy_file_range",
    "create",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "link",
    "rename",
];

/// Every operation kind the recording run counts.
pub fn recorded_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = DURABILITY_OPS.to_vec();
    for op in CHANGE_OPS {
        if !v.contains(&op) {
            v.push(op);
        }
    }
    v
}

/// One crash state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// `lossctl arm powercut --op OP --nth N --before|--after`: the program dies at that
    /// operation and every unsynced byte is lost.
    Crash { op: String, nth: u64, after: bool },
    /// The program is held before its Nth operation OP, then `lossctl powercut --keep KEEP
    /// --seed SEED` cuts: part of what it wrote since its last durability point survives.
    Pause {
        op: String,
        nth: u64,
        keep: KeepMode,
        seed: u64,
    },
    /// The program ran to its end, then `lossctl powercut --keep KEEP [--seed SEED]`.
    End { keep: KeepMode, seed: u64 },
}

impl fmt::Display for State {
    /// The `--state` spelling: `crash:fsync:3:after`, `pause:write:5:prefix:SEED`,
    /// `end:none`, `end:random:SEED`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Crash { op, nth, after } => {
                let when = if *after { "after" } else { "before" };
                write!(f, "crash:{op}:{nth}:{when}")
            }
            State::Pause {
                op,
                nth,
                keep,
                seed,
            } => write!(f, "pause:{op}:{nth}:{keep}:{seed}"),
            State::End { keep, seed } if keep.is_seeded() => write!(f, "end:{keep}:{seed}"),
            State::End { keep, .. } => write!(f, "end:{keep}"),
        }
    }
}

fn known_op(op: &str, list: &[&str]) -> Result<String, String> {
    if list.contains(&op) {
        Ok(op.to_string())
    } else {
        Err(format!(
            "operation {op:?} is not one explore cuts at (expected one of {})",
            list.join(", ")
        ))
    }
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not a number from 0 to 2^64-1"))
}

impl State {
    /// Parses the `--state` spelling (see [`fmt::Display`]).
    pub fn parse(s: &str) -> Result<State, String> {
        let f: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!(
                "bad state {s:?}: expected crash:OP:N:before|after, pause:OP:N:prefix|random:SEED, \
                 end:none|all or end:prefix|random:SEED"
            )
        };
        let seeded = |m: &str| -> Result<KeepMode, String> {
            match m.parse::<KeepMode>()? {
                k if k.is_seeded() => Ok(k),
                _ => Err(bad()),
            }
        };
        match f.as_slice() {
            ["crash", op, n, when] => Ok(State::Crash {
                op: known_op(op, &DURABILITY_OPS)?,
                nth: positive(n)?,
                after: match *when {
                    "before" => false,
                    "after" => true,
                    _ => return Err(bad()),
                },
            }),
            ["pause", op, n, keep, seed] => Ok(State::Pause {
                op: known_op(op, &CHANGE_OPS)?,
                nth: positive(n)?,
                keep: seeded(keep)?,
                seed: number(seed, "seed")?,
            }),
            ["end", keep] => match keep.parse::<KeepMode>()? {
                k if !k.is_seeded() => Ok(State::End { keep: k, seed: 0 }),
                _ => Err(bad()),
            },
            ["end", keep, seed] => Ok(State::End {
                keep: seeded(keep)?,
                seed: number(seed, "seed")?,
            }),
            _ => Err(bad()),
        }
    }

    /// The keep mode of the cut this state ends with.
    pub fn keep(&self) -> KeepMode {
        match self {
            State::Crash { .. } => KeepMode::None,
            State::Pause { keep, .. } | State::End { keep, .. } => *keep,
        }
    }
}

fn positive(s: &str) -> Result<u64, String> {
    match number(s, "operation number")? {
        0 => Err("operation numbers start at 1".into()),
        n => Ok(n),
    }
}

/// The seed of one seeded state: depends on the run's seed and the state's place only.
fn state_seed(seed: u64, label: &str) -> u64 {
    SplitMix64::for_item(seed, label.as_bytes()).next_u64()
}

/// Every state of a run whose recording counted `counts` operations per kind, in the order
/// they are visited: the cuts after the whole run, then the crash points at each durability
/// point, then the partial cuts before each change.
pub fn enumerate(counts: &BTreeMap<String, u64>, seed: u64) -> Vec<Vec<State>> {
    let count = |op: &str| counts.get(op).copied().unwrap_or(0);
    let mut end = vec![
        // The state with nothing lost: a check failing here is a broken check, not a
        // crash bug, and says so early.
        State::End {
            keep: KeepMode::All,
            seed: 0,
        },
        State::End {
            keep: KeepMode::None,
            seed: 0,
        },
    ];
    for keep in [KeepMode::Prefix, KeepMode::Random] {
        end.push(State::End {
            keep,
            seed: state_seed(seed, &format!("end:{keep}")),
        });
    }
    let mut crash = Vec::new();
    for op in DURABILITY_OPS {
        for nth in 1..=count(op) {
            for after in [false, true] {
                crash.push(State::Crash {
                    op: op.into(),
                    nth,
                    after,
                });
            }
        }
    }
    let mut pause = Vec::new();
    for op in CHANGE_OPS {
        for nth in 1..=count(op) {
            for keep in [KeepMode::Prefix, KeepMode::Random] {
                pause.push(State::Pause {
                    op: op.into(),
                    nth,
                    keep,
                    seed: state_seed(seed, &format!("pause:{op}:{nth}:{keep}")),
                });
            }
        }
    }
    vec![end, crash, pause]
}

/// At most `limit` states out of the groups [`enumerate`] made, chosen without randomness:
/// the cuts after the run first, then the budget left shared between crash points and
/// partial cuts (what one group does not use goes to the other), each group's share taken
/// evenly spaced over its whole length so that early and late operations are both visited.
pub fn choose(groups: Vec<Vec<State>>, limit: usize) -> Vec<State> {
    let mut out = Vec::new();
    let mut groups = groups.into_iter();
    let end = groups.next().unwrap_or_default();
    let rest: Vec<Vec<State>> = groups.collect();
    out.extend(end.into_iter().take(limit));
    let mut budget = limit - out.len();
    let mut shares = vec![0usize; rest.len()];
    // Fair shares, handing what a small group cannot use to the others.
    let mut open: Vec<usize> = (0..rest.len()).filter(|&i| !rest[i].is_empty()).collect();
    while budget > 0 && !open.is_empty() {
        let each = (budget / open.len()).max(1);
        let mut next = Vec::new();
        for &i in &open {
            if budget == 0 {
                break;
            }
            let take = each.min(rest[i].len() - shares[i]).min(budget);
            shares[i] += take;
            budget -= take;
            if shares[i] < rest[i].len() {
                next.push(i);
            }
        }
        open = next;
    }
    for (g, share) in rest.into_iter().zip(shares) {
        out.extend(evenly(g, share));
    }
    out
}

/// `m` items of `v` at evenly spaced positions (all of them when `m >= v.len()`).
fn evenly<T>(v: Vec<T>, m: usize) -> Vec<T> {
    let len = v.len();
    if m >= len {
        return v;
    }
    let picks: Vec<usize> = (0..m).map(|i| i * len / m).collect();
    v.into_iter()
        .enumerate()
        .filter(|(i, _)| picks.binary_search(i).is_ok())
        .map(|(_, x)| x)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn spellings_round_trip_and_bad_ones_are_refused() {
        for s in [
            "crash:fsync:3:after",
            "crash:rename:1:before",
            "pause:write:5:prefix:42",
            "pause:unlink:2:random:18446744073709551615",
            "end:none",
            "end:all",
            "end:random:7",
        ] {
            let st = State::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(st.to_string(), s);
        }
        for s in [
            "",
            "crash:write:1:after",
            "crash:fsync:0:after",
            "crash:fsync:1:later",
            "pause:write:1:none:3",
            "pause:write:1:prefix",
            "end:prefix",
            "end:none:3",
            "end:random:x",
            "crash:fsync:-1:after",
        ] {
            assert!(State::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn every_durability_point_and_change_gets_its_states() {
        let g = enumerate(&counts(&[("fsync", 2), ("write", 3), ("rename", 1)]), 9);
        assert_eq!(g[0].len(), 4, "end: all, none, prefix, random");
        // fsync 1..2 and rename 1, before and after each.
        assert_eq!(g[1].len(), 6);
        assert!(g[1].contains(&State::Crash {
            op: "rename".into(),
            nth: 1,
            after: true
        }));
        // write 1..3 and rename 1, prefix and random each.
        assert_eq!(g[2].len(), 8);
        let seeds: Vec<u64> = g[2]
            .iter()
            .map(|s| match s {
                State::Pause { seed, .. } => *seed,
                _ => unreachable!(),
            })
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len(), "one seed per state");
        assert_eq!(
            enumerate(&counts(&[("fsync", 2), ("write", 3)]), 9)[2][0],
            g[2][0],
            "a state's seed depends on the run's seed and its place only"
        );
        assert_ne!(enumerate(&counts(&[("write", 3)]), 10)[2][0], g[2][0]);
    }

    #[test]
    fn the_bound_keeps_the_end_states_and_shares_the_rest_evenly() {
        let g = enumerate(&counts(&[("fsync", 50), ("write", 100)]), 1);
        let (crash_total, pause_total) = (g[1].len(), g[2].len());
        assert_eq!((crash_total, pause_total), (100, 200));
        let chosen = choose(g.clone(), 24);
        assert_eq!(chosen.len(), 24);
        assert_eq!(&chosen[..4], &g[0][..]);
        let crashes = chosen
            .iter()
            .filter(|s| matches!(s, State::Crash { .. }))
            .count();
        assert_eq!(crashes, 10);
        assert_eq!(chosen[4], g[1][0], "the first durability point is visited");
        assert!(chosen.contains(&g[2][180]), "late changes too");
        assert_eq!(chosen, choose(g.clone(), 24), "the same choice every time");
        // A small group hands its unused share to the other.
        let small = enumerate(&counts(&[("fsync", 1), ("write", 100)]), 1);
        let chosen = choose(small, 24);
        assert_eq!(chosen.len(), 24);
        assert_eq!(
            chosen
                .iter()
                .filter(|s| matches!(s, State::Crash { .. }))
                .count(),
            2
        );
        // Under the bound: everything.
        let all = enumerate(&counts(&[("fsync", 2), ("write", 2)]), 1);
        let n: usize = all.iter().map(Vec::len).sum();
        assert_eq!(choose(all, 1000).len(), n);
        assert_eq!(choose(enumerate(&counts(&[]), 1), 2).len(), 2);
    }
}
