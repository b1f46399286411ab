//! Whether one crash state broke the program: the keys the workload acknowledged (`ACK
//! <key>` lines on its standard output) against the keys the check found (`HAVE <key>`
//! lines), and the check's exit status; and the cause a finding is grouped under.

use std::collections::BTreeSet;

/// The keys of the lines `PREFIX <key>` in `out` (the key is the rest of the line, trimmed).
pub fn keys(out: &str, prefix: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .map(|rest| rest.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// How a run of the check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckEnd {
    /// Exited with this status.
    Exit(i32),
    /// Killed by this signal (not by us).
    Signal(i32),
    /// Still running at the timeout (then killed).
    Timeout,
}

/// What a state did to the program, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged keys the check did not find.
    pub missing: Vec<String>,
    /// The check failed (any end but exit 0).
    pub check_failed: Option<CheckEnd>,
}

impl Verdict {
    pub fn judge(acked: &BTreeSet<String>, have: &BTreeSet<String>, end: &CheckEnd) -> Verdict {
        Verdict {
            missing: acked.difference(have).cloned().collect(),
            check_failed: (*end != CheckEnd::Exit(0)).then(|| end.clone()),
        }
    }

    pub fn is_finding(&self) -> bool {
        !self.missing.is_empty() || self.check_failed.is_some()
    }

    /// The cause findings are grouped under: how the check ended and whether acknowledged
    /// keys were lost, with the last line the check printed that is not a `HAVE` line
    /// (where programs and interpreters put the error), digits blanked so that the same error
    /// at another offset or page lands in the same group.
    pub fn cause(&self, check_output: &str) -> String {
        let mut parts = Vec::new();
        match &self.check_failed {
            None => {}
            Some(CheckEnd::Exit(c)) => parts.push(format!("check exited {c}")),
            Some(CheckEnd::Signal(s)) => parts.push(format!("check killed by signal {s}")),
            Some(CheckEnd::Timeout) => parts.push("check timed out".into()),
        }
        if !self.missing.is_empty() {
            parts.push("acknowledged keys lost".into());
        }
        if self.check_failed.is_some() {
            if let Some(line) = check_output
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.starts_with("HAVE ") && !l.starts_with("HAVE\t"))
            {
                let line: String = line
                    .chars()
                    .take(160)
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                parts.push(format!("\"{line}\""));
            }
        }
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_are_the_rest_of_their_lines() {
        let out = "ACK 1\nnoise ACK 2\nACK\t3 \nACKNOWLEDGED 4\nACK \nHAVE 5\nACK row 6\n";
        assert_eq!(keys(out, "ACK"), set(&["1", "3", "row 6"]));
        assert_eq!(keys(out, "HAVE"), set(&["5"]));
    }

    #[test]
    fn a_lost_key_or_a_failed_check_is_a_finding() {
        let acked = set(&["a", "b", "c"]);
        let ok = Verdict::judge(&acked, &set(&["a", "b", "c", "d"]), &CheckEnd::Exit(0));
        assert!(!ok.is_finding(), "unacknowledged extra keys are fine");
        let lost = Verdict::judge(&acked, &set(&["a"]), &CheckEnd::Exit(0));
        assert_eq!(lost.missing, vec!["b", "c"]);
        assert_eq!(lost.cause(""), "acknowledged keys lost");
        let broken = Verdict::judge(&acked, &acked, &CheckEnd::Exit(1));
        assert!(broken.is_finding());
        assert_eq!(
            broken
                .cause("Traceback:\nHAVE a\nError: database disk image is malformed at page 12\n"),
            "check exited 1: \"Error: database disk image is malformed at page ##\""
        );
        assert_eq!(
            Verdict::judge(&acked, &set(&[]), &CheckEnd::Timeout).cause(""),
            "check timed out: acknowledged keys lost"
        );
    }
}
