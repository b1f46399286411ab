//! The crash states `lossfs explore` visits: what each one is (a crash point at a durability
//! point, a pause before an operation followed by a partial cut, or a cut after the whole
//! run), how it is written on a command line (`--state SPEC`), and which ones a run visits
//! given the ordered operations of the recording run and the `--states` bound.

use crate::faults::record::{recorded, RecordedOp};
use crate::keep::KeepMode;
use crate::prng::SplitMix64;
use std::fmt;

/// One crash state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// `lossctl arm powercut --op OP --nth N --before|--after`: the program dies at that
    /// operation (a durability point) and every unsynced byte is lost.
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

fn known_op(op: &str) -> Result<String, String> {
    if recorded(op) {
        Ok(op.to_string())
    } else {
        Err(format!(
            "operation {op:?} is not one explore cuts at (expected a change or a sync: {}, {})",
            crate::faults::record::CHANGE_OPS.join(", "),
            crate::faults::record::DURABILITY_OPS[..3].join(", ")
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
                op: known_op(op)?,
                nth: positive(n)?,
                after: match *when {
                    "before" => false,
                    "after" => true,
                    _ => return Err(bad()),
                },
            }),
            ["pause", op, n, keep, seed] => Ok(State::Pause {
                op: known_op(op)?,
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

/// Every state of a run whose recording run did `ops` (in order), in groups: the cuts after
/// the whole run; a crash point right before and right after each durability point; and,
/// at each operation boundary with unsynced changes before it (since the last durability
/// point), a partial cut keeping a prefix of each file's operations, and one keeping a
/// seeded random subset of the blocks.  Within a group, in the order of the recording.
pub fn enumerate(ops: &[RecordedOp], seed: u64) -> Vec<Vec<State>> {
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
    let (mut crash, mut prefix, mut random) = (Vec::new(), Vec::new(), Vec::new());
    let mut unsynced = 0usize;
    for o in ops {
        let (op, nth) = (o.op.clone(), o.nth);
        if unsynced > 0 {
            for (keep, group) in [
                (KeepMode::Prefix, &mut prefix),
                (KeepMode::Random, &mut random),
            ] {
                group.push(State::Pause {
                    op: op.clone(),
                    nth,
                    keep,
                    seed: state_seed(seed, &format!("pause:{op}:{nth}:{keep}")),
                });
            }
        }
        if o.durable() {
            for after in [false, true] {
                crash.push(State::Crash {
                    op: op.clone(),
                    nth,
                    after,
                });
            }
            unsynced = 0;
        } else if o.changes() {
            unsynced += 1;
        }
    }
    vec![end, crash, prefix, random]
}

/// At most `limit` states out of the groups [`enumerate`] made, chosen without randomness:
/// the cuts after the run first, then the budget left shared between crash points, prefix
/// and random partial cuts (what one group does not use goes to the others), each group's share taken
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

    /// Operations in order, `KIND` or `KIND!` for an O_SYNC write; numbered per kind.
    fn ops(spec: &str) -> Vec<RecordedOp> {
        let mut n = std::collections::HashMap::new();
        spec.split_whitespace()
            .map(|k| {
                let (op, sync) = match k.strip_suffix('!') {
                    Some(op) => (op, true),
                    None => (k, false),
                };
                let nth = n.entry(op).or_insert(0);
                *nth += 1;
                RecordedOp {
                    op: op.into(),
                    nth: *nth,
                    paths: vec!["f".into()],
                    offset: None,
                    length: None,
                    sync,
                }
            })
            .collect()
    }

    fn names(v: &[State]) -> Vec<String> {
        v.iter()
            .map(|s| match s {
                State::Pause { op, nth, keep, .. } => format!("pause:{op}:{nth}:{keep}"),
                s => s.to_string(),
            })
            .collect()
    }

    #[test]
    fn spellings_round_trip_and_bad_ones_are_refused() {
        for s in [
            "crash:fsync:3:after",
            "crash:rename:1:before",
            "crash:write:2:after",
            "pause:write:5:prefix:42",
            "pause:fsync:2:random:18446744073709551615",
            "end:none",
            "end:all",
            "end:random:7",
        ] {
            let st = State::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(st.to_string(), s);
        }
        for s in [
            "",
            "crash:read:1:after",
            "crash:fsync:0:after",
            "crash:fsync:1:later",
            "pause:write:1:none:3",
            "pause:write:1:prefix",
            "pause:getattr:1:prefix:3",
            "end:prefix",
            "end:none:3",
            "end:random:x",
            "crash:fsync:-1:after",
        ] {
            assert!(State::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn cuts_around_each_durability_point_and_at_each_unsynced_boundary() {
        let rec = ops("create write write fsync write! write rename fsyncdir");
        let g = enumerate(&rec, 9);
        assert_eq!(g.len(), 4);
        assert_eq!(names(&g[0][..2]), ["end:all", "end:none"]);
        assert!(matches!(
            g[0][2],
            State::End {
                keep: KeepMode::Prefix,
                ..
            }
        ));
        assert!(matches!(
            g[0][3],
            State::End {
                keep: KeepMode::Random,
                ..
            }
        ));
        assert_eq!(
            names(&g[1]),
            [
                "crash:fsync:1:before",
                "crash:fsync:1:after",
                "crash:write:3:before",
                "crash:write:3:after",
                "crash:rename:1:before",
                "crash:rename:1:after",
                "crash:fsyncdir:1:before",
                "crash:fsyncdir:1:after",
            ],
            "fsync, the O_SYNC write, rename and fsyncdir, in the recording's order"
        );
        // Before the first op nothing is unsynced; right after a durability point neither
        // (that state is the crash after it).
        assert_eq!(
            names(&g[2]),
            [
                "pause:write:1:prefix",
                "pause:write:2:prefix",
                "pause:fsync:1:prefix",
                "pause:rename:1:prefix",
            ]
        );
        assert_eq!(names(&g[3]).len(), 4);
        assert!(names(&g[3]).iter().all(|n| n.ends_with(":random")));
        let seeds: Vec<u64> = g[2]
            .iter()
            .chain(&g[3])
            .map(|s| match s {
                State::Pause { seed, .. } => *seed,
                _ => unreachable!(),
            })
            .collect();
        let mut distinct = seeds.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), seeds.len(), "one seed per state");
        let again = enumerate(&ops("create write write fsync"), 9);
        assert_eq!(
            again[2][0], g[2][0],
            "a seed depends on the run's seed and the state"
        );
        assert_ne!(enumerate(&rec, 10)[2][0], g[2][0]);
    }

    #[test]
    fn the_bound_keeps_the_end_states_and_shares_the_rest_evenly() {
        // 50 rounds of two writes and an fsync: 100 crash states, 100 boundaries each with
        // a prefix and a random state.
        let rec = ops(&"write write fsync ".repeat(50));
        let g = enumerate(&rec, 1);
        let totals: Vec<usize> = g.iter().map(Vec::len).collect();
        assert_eq!(totals, [4, 100, 100, 100]);
        let chosen = choose(g.clone(), 34);
        assert_eq!(chosen.len(), 34);
        assert_eq!(&chosen[..4], &g[0][..]);
        let crashes = chosen
            .iter()
            .filter(|s| matches!(s, State::Crash { .. }))
            .count();
        assert_eq!(crashes, 10);
        assert_eq!(chosen[4], g[1][0], "the first durability point is visited");
        assert!(chosen.contains(&g[2][90]), "late boundaries too");
        assert_eq!(chosen, choose(g.clone(), 34), "the same choice every time");
        // A small group hands its unused share to the others.
        let small = enumerate(&ops(&format!("{}fsync", "write ".repeat(100))), 1);
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
        let all = enumerate(&ops("write fsync write fsync"), 1);
        let n: usize = all.iter().map(Vec::len).sum();
        assert_eq!(choose(all, 1000).len(), n);
        assert_eq!(choose(enumerate(&[], 1), 2).len(), 2);
    }
}
