//! The report of an explore run: states visited, findings grouped by cause, each with the
//! command that replays it; as text, or as one JSON object (`--json`).

use super::state::State;
use super::{replay_command, ExploreArgs};
use crate::faults::record::RecordedOp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// What one state showed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub state: State,
    /// False when the workload never reached the state's operation (it did fewer of them
    /// than in the recording run).
    pub reached: bool,
    /// Keys the workload acknowledged before the cut.
    pub acked: usize,
    pub finding: Option<Finding>,
    /// Why the state could not be built (the workload failed without any cut: it is not
    /// deterministic, or its environment is short of something).
    pub error: Option<String>,
}

impl Outcome {
    /// A state not reached (the workload did fewer operations), or not built (`error`).
    pub fn not_reached(state: &State, error: Option<String>) -> Outcome {
        Outcome {
            state: state.clone(),
            reached: false,
            acked: 0,
            finding: None,
            error,
        }
    }
}

/// A state that broke the program.
#[derive(Clone, Debug)]
pub struct Finding {
    pub cause: String,
    /// Acknowledged keys the check did not find.
    pub missing: Vec<String>,
    pub check_end: String,
    /// The last lines the check printed.
    pub check_output: String,
}

/// A whole run.
pub struct Summary {
    pub seed: u64,
    /// The recording run's operations, in order (empty for a replay of one state).
    pub ops: Vec<RecordedOp>,
    /// How many of each kind.
    pub counts: BTreeMap<String, u64>,
    /// Keys the workload acknowledged in the recording run.
    pub acked: usize,
    pub outcomes: Vec<Outcome>,
    pub findings: Vec<usize>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn new(
        seed: u64,
        ops: Vec<RecordedOp>,
        acked: usize,
        outcomes: Vec<Outcome>,
        elapsed: Duration,
    ) -> Summary {
        let findings = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.finding.is_some())
            .map(|(i, _)| i)
            .collect();
        let mut counts = BTreeMap::new();
        for o in &ops {
            *counts.entry(o.op.clone()).or_insert(0) += 1;
        }
        Summary {
            seed,
            ops,
            counts,
            acked,
            outcomes,
            findings,
            elapsed,
        }
    }

    fn reached(&self) -> usize {
        self.outcomes.iter().filter(|o| o.reached).count()
    }

    fn errors(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.error.is_some()).collect()
    }

    fn unreached(&self) -> usize {
        self.outcomes.len() - self.reached() - self.errors().len()
    }

    /// Findings by cause, causes in order of first appearance.
    fn groups(&self) -> Vec<(String, Vec<&Outcome>)> {
        let mut groups: Vec<(String, Vec<&Outcome>)> = Vec::new();
        for &i in &self.findings {
            let o = &self.outcomes[i];
            let Some(f) = &o.finding else { continue };
            match groups.iter_mut().find(|(c, _)| *c == f.cause) {
                Some((_, v)) => v.push(o),
                None => groups.push((f.cause.clone(), vec![o])),
            }
        }
        groups
    }

    /// The recorded operation a state cuts at, in words (`fsync #3 of /wal`), else its
    /// kind and number.
    fn operation(&self, op: &str, nth: u64) -> String {
        self.ops
            .iter()
            .find(|o| o.op == op && o.nth == nth)
            .map(RecordedOp::describe)
            .unwrap_or_else(|| format!("{op} #{nth}"))
    }

    /// What a state means, in words, naming its operation.
    pub fn describe(&self, st: &State) -> String {
        match st {
            State::Crash { op, nth, after } => format!(
                "power cut right {} {} (every unsynced byte lost)",
                if *after { "after" } else { "before" },
                self.operation(op, *nth)
            ),
            State::Pause {
                op,
                nth,
                keep,
                seed,
            } => format!(
                "power cut right before {}, keeping {} of the unsynced data (seed {seed})",
                self.operation(op, *nth),
                keep_words(*keep)
            ),
            State::End { keep, seed } => {
                let s = if keep.is_seeded() {
                    format!(" (seed {seed})")
                } else {
                    String::new()
                };
                format!(
                    "power cut after the whole workload, keeping {}{s}",
                    keep_words(*keep)
                )
            }
        }
    }
}

fn keep_words(k: crate::keep::KeepMode) -> &'static str {
    use crate::keep::KeepMode;
    match k {
        KeepMode::None => "nothing",
        KeepMode::All => "everything",
        KeepMode::Prefix => "a random prefix per file",
        KeepMode::Random => "a random subset of the blocks",
    }
}

fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(op, n)| format!("{n} {op}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many missing keys a report lists per finding.
const SHOWN_KEYS: usize = 10;

pub fn text(s: &Summary, args: &ExploreArgs) -> String {
    let mut t = String::new();
    if !s.counts.is_empty() {
        let _ = writeln!(
            t,
            "recording run: {} ({} keys acknowledged)",
            counts_text(&s.counts),
            s.acked
        );
    }
    let unreached = s.unreached();
    let _ = writeln!(
        t,
        "explored {} crash states in {:.1} s (seed {}){}: {} findings",
        s.reached(),
        s.elapsed.as_secs_f64(),
        s.seed,
        if unreached > 0 {
            format!(", {unreached} more not reached (the workload did fewer operations)")
        } else {
            String::new()
        },
        s.findings.len()
    );
    for o in s.errors() {
        let _ = writeln!(
            t,
            "state {} not built: {}",
            o.state,
            o.error.as_deref().unwrap_or_default()
        );
    }
    for (cause, v) in s.groups() {
        let _ = writeln!(t, "\n{cause}: {} states", v.len());
        for o in v.iter().take(5) {
            let Some(f) = &o.finding else { continue };
            let _ = writeln!(t, "  {} ({})", o.state, s.describe(&o.state));
            if !f.missing.is_empty() {
                let shown: Vec<&str> = f
                    .missing
                    .iter()
                    .take(SHOWN_KEYS)
                    .map(String::as_str)
                    .collect();
                let more = f.missing.len().saturating_sub(SHOWN_KEYS);
                let _ = writeln!(
                    t,
                    "    lost {} of {} acknowledged keys: {}{}",
                    f.missing.len(),
                    o.acked,
                    shown.join(" "),
                    if more > 0 {
                        format!(" (+{more})")
                    } else {
                        String::new()
                    }
                );
            }
            let _ = writeln!(t, "    replay: {}", replay_command(args, &o.state));
        }
        if v.len() > 5 {
            let _ = writeln!(t, "  ... and {} more (--json lists them all)", v.len() - 5);
        }
    }
    t
}

pub fn json(s: &Summary, args: &ExploreArgs) -> String {
    let findings: Vec<Value> = s
        .findings
        .iter()
        .filter_map(|&i| {
            let o = &s.outcomes[i];
            let f = o.finding.as_ref()?;
            Some(json!({
                "state": o.state.to_string(),
                "what": s.describe(&o.state),
                "cause": f.cause,
                "acked": o.acked,
                "missing": f.missing,
                "check": f.check_end,
                "check_output": f.check_output,
                "replay": replay_command(args, &o.state),
            }))
        })
        .collect();
    let groups: Vec<Value> = s
        .groups()
        .into_iter()
        .map(|(cause, v)| {
            json!({
                "cause": cause,
                "states": v.iter().map(|o| o.state.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let v = json!({
        "states": s.reached(),
        "unreached": s.unreached(),
        "errors": s.errors().iter().map(|o| json!({
            "state": o.state.to_string(),
            "error": o.error,
        })).collect::<Vec<_>>(),
        "seed": s.seed,
        "operations": s.counts,
        "recording": s.ops,
        "acked_in_recording": s.acked,
        "elapsed_ms": s.elapsed.as_millis() as u64,
        "findings": findings,
        "causes": groups,
    });
    format!("{v}\n")
}

/// Width of the progress bar, in characters between its brackets.
const BAR: usize = 30;

/// The progress line on a terminal, rewritten in place after each state: a bar, the
/// states done, the findings so far, and the time left at the pace so far.
pub fn progress_line(done: usize, total: usize, findings: usize, elapsed: Duration) -> String {
    let total = total.max(1);
    let done = done.min(total);
    let filled = done * BAR / total;
    let left = if done == 0 {
        String::from("?")
    } else {
        let per = elapsed.as_secs_f64() / done as f64;
        format!("{:.0} s", per * (total - done) as f64)
    };
    format!(
        "\r[{}{}] {done}/{total} states, {findings} findings, {:.0} s, about {left} left ",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        elapsed.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_fills_with_the_states_done_and_tells_the_time_left() {
        let start = progress_line(0, 60, 0, Duration::ZERO);
        assert!(
            start.starts_with(&format!("\r[{}]", ".".repeat(BAR))),
            "{start:?}"
        );
        assert!(start.contains("0/60 states, 0 findings") && start.contains("about ? left"));
        let half = progress_line(30, 60, 2, Duration::from_secs(40));
        let bar = format!("[{}{}]", "#".repeat(BAR / 2), ".".repeat(BAR / 2));
        assert!(half.contains(&bar), "{half:?}");
        assert!(
            half.contains("30/60 states, 2 findings, 40 s, about 40 s left"),
            "{half:?}"
        );
        let full = progress_line(7, 7, 0, Duration::from_secs(3));
        assert!(full.contains(&format!("[{}]", "#".repeat(BAR))), "{full:?}");
        assert!(full.contains("about 0 s left"), "{full:?}");
    }
}
