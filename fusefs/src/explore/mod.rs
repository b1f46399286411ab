//! `lossfs explore`: runs a program's workload on every crash state it could meet (a cut
//! before and after each durability point, partial cuts before each change, cuts after the
//! whole run), runs the program's own recovery check on each, and reports the states where an
//! acknowledged key was lost or the check failed, each with the command that replays it.
//!
//! Each state is rebuilt by running the workload again, from a fresh copy of the template,
//! with the cut armed at its operation; not by applying recorded operations to the
//! template.  A rerun needs nothing recorded but where the operations are, cuts with exactly the
//! journal, crash point and `--keep` code a user's own `lossctl` cut runs, and makes every
//! state replayable with the lossctl commands a user would type; the price is one workload
//! run per state, and a workload that does not do the same operations from run to run
//! (threads racing, timers) reaches some states differently or not at all (counted as
//! unreached).  How a state is reached:
//!
//! The recording run numbers the workload's operations in order (path, offset, length,
//! which are durability points) through the daemon's operation record; the states are cut
//! at those operations, and findings name them.
//!
//! - crash states (`crash:OP:N:before|after`): `lossctl arm powercut --op OP --nth N`;
//! - partial states (`pause:OP:N:KEEP:SEED`): a fault rule holds the Nth OP before it is
//!   applied (`lossctl fault add --op OP --nth N --count 1 --delay ...`); once it is held,
//!   `lossctl powercut --keep KEEP --seed SEED` cuts (and kills the workload);
//! - end states (`end:KEEP[:SEED]`): the workload runs to its end, then the same cut.
//!
//! Explore is a child subreaper: what a workload or check daemonizes is killed and reaped
//! after its run ([`reaper`]).
//!
//! [`state`] says which states exist and which a bounded run visits, [`verdict`] judges one,
//! [`session`] drives the mount and the commands, [`output`] prints the report.

pub mod output;
pub mod reaper;
pub mod session;
pub mod state;
pub mod verdict;

use self::output::{Finding, Outcome, Summary};
use self::session::{lossfs_binary, Job, Running};
use self::state::State;
use self::verdict::{keys, CheckEnd, Verdict};
use crate::faults::record::{self, RecordedOp};
use crate::keep::KeepMode;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `lossfs explore` was asked for.
#[derive(Clone, Debug)]
pub struct ExploreArgs {
    /// The template directory (never modified: each state starts from a copy of it).
    pub backing: PathBuf,
    /// Where the copies are mounted (job 0; job N uses `MOUNT.jobN`).
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub workload: String,
    pub check: String,
    /// At most this many states.
    pub states: usize,
    pub seed: Option<u64>,
    pub jobs: usize,
    /// Bound of each workload and check run.
    pub timeout: Duration,
    pub json: bool,
    /// Only this state (a replay).
    pub only: Option<State>,
}

/// How long a held operation is held: longer than any run may take, so that only the cut
/// ends it.
fn hold_ms(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64)
        .saturating_mul(2)
        .clamp(1000, 3_600_000)
}

/// The options the mounts get: the user's, and `commit=0` for `metadata=journal` unless
/// given, since a commit every few seconds would make the states depend on timing.
pub fn mount_options(user: &[String]) -> Vec<String> {
    let all: Vec<&str> = user.iter().flat_map(|o| o.split(',')).collect();
    let journal = all.contains(&"metadata=journal");
    let commit = all.iter().any(|o| o.starts_with("commit="));
    let mut out = user.to_vec();
    if journal && !commit {
        out.push("commit=0".into());
    }
    out
}

/// Entry of `lossfs explore`: the exit code (0 no finding, 1 findings, 2 the run failed or
/// some state could not be built).
pub fn run(args: ExploreArgs) -> i32 {
    match explore(&args) {
        Ok(summary) => {
            let text = if args.json {
                output::json(&summary, &args)
            } else {
                output::text(&summary, &args)
            };
            print!("{text}");
            if !summary.findings.is_empty() {
                1
            } else if summary.outcomes.iter().any(|o| o.error.is_some()) {
                2
            } else {
                0
            }
        }
        Err(e) => {
            if args.json {
                println!("{}", serde_json::json!({ "error": e }));
            } else {
                eprintln!("lossfs explore: {e}");
            }
            2
        }
    }
}

fn explore(args: &ExploreArgs) -> Result<Summary, String> {
    if !args.backing.is_dir() {
        return Err(format!(
            "--backing {}: not a directory (the template every state starts from)",
            args.backing.display()
        ));
    }
    if !args.mountpoint.is_dir() {
        return Err(format!(
            "--mount {}: not a directory",
            args.mountpoint.display()
        ));
    }
    let lossfs = lossfs_binary()?;
    reaper::become_subreaper()?;
    // Dropped last: after every job's runs and mounts are over.
    let _reap = reaper::ReapAtEnd;
    let options = mount_options(&args.options);
    let work = std::env::temp_dir().join(format!("lossfs-explore-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let seed = args.seed.unwrap_or_else(crate::prng::fresh_seed);
    let jobs = args.jobs.max(1);
    let mut mounts = vec![args.mountpoint.clone()];
    let mut made = Vec::new();
    for j in 1..jobs {
        let mut m = args.mountpoint.clone().into_os_string();
        m.push(format!(".job{j}"));
        let m = PathBuf::from(m);
        if !m.exists() {
            std::fs::create_dir(&m).map_err(|e| format!("creating {}: {e}", m.display()))?;
            made.push(m.clone());
        }
        mounts.push(m);
    }
    let _made = RemoveDirsOnDrop(made);
    let mut first = Job::new(
        0,
        lossfs.clone(),
        &args.backing,
        &work.join("job0"),
        &mounts[0],
        options.clone(),
    )?;
    let started = Instant::now();
    let (states, ops, acked_in_recording) = match &args.only {
        Some(s) => (vec![s.clone()], Vec::new(), 0),
        None => {
            let (ops, acked) = record(&mut first, &work.join("operations.jsonl"), args)?;
            let all = state::enumerate(&ops, seed);
            (state::choose(all, args.states.max(1)), ops, acked)
        }
    };
    let total = states.len();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(AtomicUsize::new(0));
    let progress = std::io::stderr().is_terminal() && !args.json;
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut firstjob = Some(first);
        for (j, mnt) in mounts.iter().enumerate() {
            let job = match firstjob.take() {
                Some(job) => Ok(job),
                None => Job::new(
                    j,
                    lossfs.clone(),
                    &args.backing,
                    &work.join(format!("job{j}")),
                    mnt,
                    options.clone(),
                ),
            };
            let (states, next, done, found) = (&states, &next, &done, &found);
            handles.push(s.spawn(move || {
                let mut job = job?;
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(st) = states.get(i) else { break };
                    let o = visit(&mut job, st, args)?;
                    if o.finding.is_some() {
                        found.fetch_add(1, Ordering::SeqCst);
                    }
                    let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if progress {
                        let f = found.load(Ordering::SeqCst);
                        eprint!("{}", output::progress_line(d, total, f, started.elapsed()));
                    }
                    out.push((i, o));
                }
                job.stop()?;
                Ok::<_, String>(out)
            }));
        }
        for h in handles {
            match h.join() {
                Ok(Ok(v)) => outcomes.extend(v),
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push("an explore job panicked".into()),
            }
        }
    });
    if progress {
        eprintln!();
    }
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    Ok(Summary::new(
        seed,
        ops,
        acked_in_recording,
        outcomes,
        started.elapsed(),
    ))
}

/// The recording run: the workload once on a fresh copy, on a daemon that records every
/// change and durability operation in order (see [`crate::faults::record`]).  Returns the
/// operations and how many keys the workload acknowledged.
fn record(
    job: &mut Job,
    file: &Path,
    args: &ExploreArgs,
) -> Result<(Vec<RecordedOp>, usize), String> {
    job.start_recording(file)?;
    let ran = Running::spawn(&args.workload, &job.mnt, &job.env(), args.timeout)?.finish()?;
    job.stop()?;
    if ran.end != CheckEnd::Exit(0) {
        return Err(format!(
            "the workload failed on a fresh copy of the template, before any cut ({}): {}",
            describe(&ran.end),
            last_lines(&ran.stderr, &ran.stdout)
        ));
    }
    Ok((record::read(file)?, keys(&ran.stdout, "ACK").len()))
}

fn describe(end: &CheckEnd) -> String {
    match end {
        CheckEnd::Exit(c) => format!("exit status {c}"),
        CheckEnd::Signal(s) => format!("killed by signal {s}"),
        CheckEnd::Timeout => "timed out".into(),
    }
}

fn last_lines(a: &str, b: &str) -> String {
    let s = if a.trim().is_empty() { b } else { a };
    let v: Vec<&str> = s.lines().rev().take(3).collect();
    v.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Builds one state on a fresh copy, runs the check on it, judges it.
fn visit(job: &mut Job, st: &State, args: &ExploreArgs) -> Result<Outcome, String> {
    job.start()?;
    let env = job.env();
    let reached = match st {
        State::Crash { op, nth, after } => {
            job.arm(op, *nth, *after)?;
            let ran = Running::spawn(&args.workload, &job.mnt, &env, args.timeout)?.finish()?;
            let fired = wait_cut_done(job)?;
            Reached::from(fired, ran)
        }
        State::Pause {
            op,
            nth,
            keep,
            seed,
        } => {
            job.hold(op, *nth, hold_ms(args.timeout))?;
            let mut w = Running::spawn(&args.workload, &job.mnt, &env, args.timeout)?;
            let held = loop {
                let list = job.fault_list()?;
                let fired = list["faults"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["fired"].as_u64() > Some(0));
                if fired {
                    break true;
                }
                if w.exited().is_some() || w.timed_out() {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            if held {
                // The rule counted the operation just before it starts waiting: give it
                // the moment to get there, so the cut's wake-up finds it waiting.
                std::thread::sleep(Duration::from_millis(20));
                cut(job, *keep, *seed)?;
            }
            let ran = w.finish()?;
            Reached::from(held, ran)
        }
        State::End { keep, seed } => {
            let ran = Running::spawn(&args.workload, &job.mnt, &env, args.timeout)?.finish()?;
            if ran.end != CheckEnd::Exit(0) {
                job.stop()?;
                return Ok(Outcome::not_reached(
                    st,
                    Some(format!(
                        "the workload failed without any cut ({}): {}",
                        describe(&ran.end),
                        last_lines(&ran.stderr, &ran.stdout)
                    )),
                ));
            }
            cut(job, *keep, *seed)?;
            Reached::from(true, ran)
        }
    };
    let Reached::Yes { acked } = reached else {
        job.stop()?;
        return Ok(Outcome::not_reached(st, None));
    };
    let check = Running::spawn(&args.check, &job.mnt, &env, args.timeout)?.finish()?;
    job.stop()?;
    let have = keys(&check.stdout, "HAVE");
    let v = Verdict::judge(&acked, &have, &check.end);
    let finding = v.is_finding().then(|| {
        let said = format!("{}{}", check.stdout, check.stderr);
        Finding {
            cause: v.cause(&said),
            missing: v.missing.clone(),
            check_end: describe(&check.end),
            check_output: tail(&said, 20),
        }
    });
    Ok(Outcome {
        state: st.clone(),
        reached: true,
        acked: acked.len(),
        finding,
        error: None,
    })
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

enum Reached {
    Yes {
        acked: std::collections::BTreeSet<String>,
    },
    No,
}

impl Reached {
    fn from(reached: bool, ran: session::Ran) -> Reached {
        if reached {
            Reached::Yes {
                acked: keys(&ran.stdout, "ACK"),
            }
        } else {
            Reached::No
        }
    }
}

/// `lossctl powercut --keep KEEP [--seed SEED]` (which kills the workload).
fn cut(job: &Job, keep: KeepMode, seed: u64) -> Result<(), String> {
    job.powercut(keep, keep.is_seeded().then_some(seed))
        .map(drop)
}

/// After a crash-point run: whether the crash point fired, once its cut is over.
fn wait_cut_done(job: &Job) -> Result<bool, String> {
    let start = Instant::now();
    loop {
        let list = job.fault_list()?;
        let fired =
            list["crash_point"]["fired"].as_bool() == Some(true) || !list["last_cut"].is_null();
        if !fired {
            return Ok(false);
        }
        if list["last_cut"]["done"].as_bool() == Some(true) {
            return Ok(true);
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the crash point's cut on {} did not end within 120 s: {list}",
                job.mnt.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                eprintln!("lossfs explore: removing {}: {e}", self.0.display());
            }
        }
    }
}

struct RemoveDirsOnDrop(Vec<PathBuf>);

impl Drop for RemoveDirsOnDrop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command that replays one state.
pub fn replay_command(args: &ExploreArgs, st: &State) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut c = format!(
        "lossfs explore --backing {} --mount {}",
        q(&args.backing),
        q(&args.mountpoint)
    );
    for o in &args.options {
        c.push_str(&format!(" -o {}", shell_quote(o)));
    }
    c.push_str(&format!(
        " --workload {} --check {} --timeout {} --state {}",
        shell_quote(&args.workload),
        shell_quote(&args.check),
        args.timeout.as_secs(),
        st
    ));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_mounts_commit_only_at_syncs_unless_told() {
        assert_eq!(mount_options(&["metadata=journal".into()]).len(), 2);
        assert_eq!(
            mount_options(&["allow_other,metadata=journal,commit=3".into()]),
            vec!["allow_other,metadata=journal,commit=3".to_string()]
        );
        assert!(mount_options(&["metadata=posix".into()]).len() == 1);
    }

    #[test]
    fn replay_commands_quote_what_the_shell_would_split() {
        assert_eq!(shell_quote("a/b.c"), "a/b.c");
        assert_eq!(shell_quote("it's x"), r"'it'\''s x'");
        assert_eq!(shell_quote(""), "''");
        let args = ExploreArgs {
            backing: "/t/tmpl".into(),
            mountpoint: "/t/m".into(),
            options: vec!["metadata=journal".into()],
            workload: "python3 w.py".into(),
            check: "sh c.sh".into(),
            states: 10,
            seed: None,
            jobs: 1,
            timeout: Duration::from_secs(30),
            json: false,
            only: None,
        };
        let st = State::parse("pause:write:3:prefix:5").unwrap();
        assert_eq!(
            replay_command(&args, &st),
            "lossfs explore --backing /t/tmpl --mount /t/m -o metadata=journal \
             --workload 'python3 w.py' --check 'sh c.sh' --timeout 30 \
             --state pause:write:3:prefix:5"
        );
    }
}
