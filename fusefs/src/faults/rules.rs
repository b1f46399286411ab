//! The armed crash point and the fault rules at run time: which operations match, and which
//! matches fire (nth, seeded probability, count).  Pure state, no I/O: the decisions are
//! unit-tested without a mount.

use crate::faultspec::glob::Glob;
use crate::faultspec::{CrashSpec, FaultAction, FaultSpec, Op, When};
use crate::prng::SplitMix64;
use crate::report::{CrashPointStatus, RuleStatus};

/// When a matching operation fires: from the `nth` match on, or with a seeded probability;
/// at most `count` times.
#[derive(Clone, Debug)]
pub struct Trigger {
    nth: u64,
    chance: Option<(f64, SplitMix64)>,
    count: Option<u64>,
    pub matched: u64,
    pub fired: u64,
}

impl Trigger {
    pub fn new(nth: u64, chance: Option<(f64, u64)>, count: Option<u64>) -> Trigger {
        Trigger {
            nth: nth.max(1),
            chance: chance.map(|(p, seed)| (p, SplitMix64::new(seed))),
            count,
            matched: 0,
            fired: 0,
        }
    }

    /// Counts one matching operation; true if it fires.  The generator advances on every
    /// match, so the same seed and the same operations fire the same way.
    pub fn on_match(&mut self) -> bool {
        self.matched += 1;
        let fire = match &mut self.chance {
            Some((p, rng)) => rng.chance(*p),
            None => self.matched >= self.nth,
        };
        let fire = fire && self.count.is_none_or(|c| self.fired < c);
        if fire {
            self.fired += 1;
        }
        fire
    }
}

fn matches(op: Op, glob: &Option<Glob>, want: Op, paths: &[&str]) -> bool {
    op == want
        && match glob {
            None => true,
            // An operation whose path is unknown (an unlinked file) matches no pattern; a
            // rename matches by its old or its new path.
            Some(g) => paths.iter().any(|p| g.matches(p)),
        }
}

/// The armed crash point: fires once, on the Nth match.
#[derive(Clone, Debug)]
pub struct CrashPoint {
    pub spec: CrashSpec,
    glob: Option<Glob>,
    trigger: Trigger,
    pub fired: bool,
}

impl CrashPoint {
    pub fn new(spec: CrashSpec) -> Result<CrashPoint, String> {
        let glob = spec.check()?;
        let trigger = Trigger::new(spec.nth, None, Some(1));
        Ok(CrashPoint {
            spec,
            glob,
            trigger,
            fired: false,
        })
    }

    pub fn wants_path(&self, op: Op) -> bool {
        !self.fired && self.spec.op == op && self.glob.is_some()
    }

    /// Counts the operation if it matches; `Some(when)` if the cut must happen at it.
    pub fn check(&mut self, op: Op, paths: &[&str]) -> Option<When> {
        if self.fired || !matches(self.spec.op, &self.glob, op, paths) {
            return None;
        }
        if self.trigger.on_match() {
            self.fired = true;
            return Some(self.spec.when);
        }
        None
    }

    pub fn status(&self) -> CrashPointStatus {
        CrashPointStatus {
            spec: self.spec.clone(),
            matched: self.trigger.matched,
            fired: self.fired,
        }
    }
}

/// One fault rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: u64,
    spec: FaultSpec,
    op: Op,
    pub action: FaultAction,
    glob: Option<Glob>,
    trigger: Trigger,
}

impl Rule {
    pub fn new(id: u64, spec: FaultSpec) -> Result<Rule, String> {
        let (op, action, glob) = spec.check()?;
        let chance = spec.probability.zip(spec.seed);
        let trigger = Trigger::new(spec.nth.unwrap_or(1), chance, spec.count);
        Ok(Rule {
            id,
            spec,
            op,
            action,
            glob,
            trigger,
        })
    }

    pub fn wants_path(&self, op: Op) -> bool {
        self.op == op && self.glob.is_some()
    }

    /// Counts the operation if it matches; the action if it fires.
    pub fn check(&mut self, op: Op, paths: &[&str]) -> Option<FaultAction> {
        if !matches(self.op, &self.glob, op, paths) {
            return None;
        }
        self.trigger.on_match().then_some(self.action)
    }

    pub fn status(&self) -> RuleStatus {
        RuleStatus {
            id: self.id,
            spec: self.spec.clone(),
            matched: self.trigger.matched,
            fired: self.trigger.fired,
        }
    }
}

/// What to do to one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Cut the power at this operation.
    pub crash: Option<When>,
    /// The first fault rule (lowest id) that fired; every matching rule counts the match.
    pub fault: Option<FaultAction>,
}

/// The crash point and rules together: one decision per operation.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub crash: Option<CrashPoint>,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Whether deciding `op` needs the operation's path.
    pub fn wants_path(&self, op: Op) -> bool {
        self.crash.as_ref().is_some_and(|c| c.wants_path(op))
            || self.rules.iter().any(|r| r.wants_path(op))
    }

    /// Whether a rule or an unfired crash point names `op` (whatever its path).
    pub fn names(&self, op: Op) -> bool {
        self.crash
            .as_ref()
            .is_some_and(|c| !c.fired && c.spec.op == op)
            || self.rules.iter().any(|r| r.op == op)
    }

    /// Whether any rule or an unfired crash point could act at all.
    pub fn is_armed(&self) -> bool {
        self.crash.as_ref().is_some_and(|c| !c.fired) || !self.rules.is_empty()
    }

    /// A crash point that fires wins: the faults are not consulted (nor counted) for that
    /// operation, since the machine is going down.
    pub fn decide(&mut self, op: Op, paths: &[&str]) -> Decision {
        if let Some(when) = self.crash.as_mut().and_then(|c| c.check(op, paths)) {
            return Decision {
                crash: Some(when),
                fault: None,
            };
        }
        let mut fault = None;
        for r in &mut self.rules {
            if let Some(a) = r.check(op, paths) {
                fault = fault.or(Some(a));
            }
        }
        Decision { crash: None, fault }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno_rule(op: Op, path: Option<&str>) -> FaultSpec {
        FaultSpec {
            op: Some(op),
            path: path.map(String::from),
            errno: Some("EIO".into()),
            ..Default::default()
        }
    }

    #[test]
    fn nth_and_count() {
        let mut r = Rule::new(
            1,
            FaultSpec {
                nth: Some(3),
                count: Some(2),
                ..errno_rule(Op::Write, None)
            },
        )
        .unwrap();
        let fired: Vec<bool> = (0..6)
            .map(|_| r.check(Op::Write, &["x"]).is_some())
            .collect();
        assert_eq!(fired, [false, false, true, true, false, false]);
        assert_eq!(r.check(Op::Read, &["x"]), None);
        let st = r.status();
        assert_eq!((st.matched, st.fired), (6, 2));
    }

    #[test]
    fn without_nth_or_count_every_match_fires() {
        let mut r = Rule::new(1, errno_rule(Op::Fsync, Some("wal"))).unwrap();
        assert_eq!(
            r.check(Op::Fsync, &["wal"]),
            Some(FaultAction::Errno(libc::EIO))
        );
        assert_eq!(
            r.check(Op::Fsync, &["wal"]),
            Some(FaultAction::Errno(libc::EIO))
        );
        assert_eq!(r.check(Op::Fsync, &["other"]), None);
        assert_eq!(
            r.check(Op::Fsync, &[]),
            None,
            "unknown path matches no pattern"
        );
        assert_eq!(r.status().matched, 2);
    }

    #[test]
    fn probability_is_reproducible_from_the_seed() {
        let spec = FaultSpec {
            probability: Some(0.3),
            seed: Some(99),
            ..errno_rule(Op::Write, None)
        };
        let run = |spec: &FaultSpec| -> Vec<bool> {
            let mut r = Rule::new(1, spec.clone()).unwrap();
            (0..200)
                .map(|_| r.check(Op::Write, &[]).is_some())
                .collect()
        };
        let a = run(&spec);
        assert_eq!(a, run(&spec));
        let hits = a.iter().filter(|&&b| b).count();
        assert!((30..90).contains(&hits), "{hits}");
        let other = run(&FaultSpec {
            seed: Some(100),
            ..spec.clone()
        });
        assert_ne!(a, other);
        let limited = run(&FaultSpec {
            count: Some(5),
            ..spec
        });
        assert_eq!(limited.iter().filter(|&&b| b).count(), 5);
    }

    #[test]
    fn crash_point_fires_once_on_the_nth_match() {
        let mut set = RuleSet {
            crash: Some(
                CrashPoint::new(CrashSpec {
                    op: Op::Fsync,
                    path: Some("wal".into()),
                    nth: 3,
                    when: When::After,
                })
                .unwrap(),
            ),
            rules: vec![Rule::new(1, errno_rule(Op::Fsync, None)).unwrap()],
        };
        assert!(set.wants_path(Op::Fsync));
        assert!(!set.wants_path(Op::Write));
        let d = |set: &mut RuleSet, p: &str| set.decide(Op::Fsync, &[p]);
        assert_eq!(d(&mut set, "wal").crash, None);
        assert_eq!(d(&mut set, "other").crash, None);
        assert_eq!(d(&mut set, "wal").crash, None);
        let third = d(&mut set, "wal");
        assert_eq!(third.crash, Some(When::After));
        assert_eq!(third.fault, None, "the crash wins over faults");
        assert_eq!(d(&mut set, "wal").crash, None, "one shot");
        let st = set.crash.as_ref().unwrap().status();
        assert!(st.fired);
        assert_eq!(st.matched, 3);
        assert_eq!(set.rules[0].status().matched, 4);
    }

    #[test]
    fn first_rule_wins_but_all_count() {
        let mut set = RuleSet::default();
        set.rules
            .push(Rule::new(1, errno_rule(Op::Write, Some("a*"))).unwrap());
        set.rules.push(
            Rule::new(
                2,
                FaultSpec {
                    errno: None,
                    delay_ms: Some(5),
                    ..errno_rule(Op::Write, None)
                },
            )
            .unwrap(),
        );
        assert_eq!(
            set.decide(Op::Write, &["abc"]).fault,
            Some(FaultAction::Errno(libc::EIO))
        );
        assert_eq!(
            set.decide(Op::Write, &["zzz"]).fault,
            Some(FaultAction::DelayMs(5))
        );
        assert_eq!(set.rules[1].status().matched, 2);
    }

    #[test]
    fn specs_are_validated() {
        let bad = |s: FaultSpec| Rule::new(1, s).unwrap_err();
        assert!(bad(FaultSpec::default()).contains("operation"));
        assert!(bad(FaultSpec {
            errno: None,
            ..errno_rule(Op::Write, None)
        })
        .contains("exactly one"));
        assert!(bad(FaultSpec {
            delay_ms: Some(3),
            ..errno_rule(Op::Write, None)
        })
        .contains("exactly one"));
        assert!(bad(FaultSpec {
            errno: Some("ENOSYS".into()),
            ..errno_rule(Op::Write, None)
        })
        .contains("unknown or unsupported errno"));
        assert!(bad(FaultSpec {
            errno: None,
            lie: true,
            ..errno_rule(Op::Write, None)
        })
        .contains("fsync"));
        assert!(bad(FaultSpec {
            probability: Some(0.5),
            ..errno_rule(Op::Write, None)
        })
        .contains("seed"));
        assert!(bad(FaultSpec {
            probability: Some(1.5),
            seed: Some(1),
            ..errno_rule(Op::Write, None)
        })
        .contains("from 0 to 1"));
        assert!(bad(FaultSpec {
            probability: Some(f64::NAN),
            seed: Some(1),
            ..errno_rule(Op::Write, None)
        })
        .contains("from 0 to 1"));
        assert!(bad(FaultSpec {
            probability: Some(0.5),
            seed: Some(1),
            nth: Some(2),
            ..errno_rule(Op::Write, None)
        })
        .contains("not both"));
        assert!(bad(FaultSpec {
            count: Some(0),
            ..errno_rule(Op::Write, None)
        })
        .contains("count"));
        assert!(bad(FaultSpec {
            nth: Some(0),
            ..errno_rule(Op::Write, None)
        })
        .contains("nth"));
        assert!(bad(FaultSpec {
            errno: None,
            delay_ms: Some(0),
            ..errno_rule(Op::Write, None)
        })
        .contains("delay"));
        assert!(bad(errno_rule(Op::Write, Some("/abs"))).contains("relative"));
        assert!(CrashPoint::new(CrashSpec {
            op: Op::Write,
            path: None,
            nth: 0,
            when: When::Before
        })
        .is_err());
        assert!(Rule::new(
            1,
            FaultSpec {
                errno: None,
                lie: true,
                ..errno_rule(Op::Fdatasync, None)
            }
        )
        .is_ok());
    }
}
