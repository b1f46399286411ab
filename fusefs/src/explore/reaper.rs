//! Servers the workload or the check left behind.  A program that daemonizes (`redis-server
//! --daemonize yes`, `pg_ctl start`) leaves its command's process group and outlives it;
//! a real power cut would kill it.  Explore makes itself a child subreaper, so such
//! orphans become its children instead of init's, and after each workload and check run it
//! kills and reaps those of the job that ran (they carry the job's `LOSSFS_EXPLORE_JOB` in
//! their environment): none survives into the next state or past explore, and none lingers
//! as a zombie that a restarting server would take for its running predecessor.
//!
//! Orphans that a cut killed before any sweep saw them alive come to us as zombies, whose
//! environment can no longer be read: every zombie child is reaped, except the commands
//! explore waits for by pid itself ([`spawn_waited`]) and the children of its own process
//! group (the mount daemons, `cp`, `fusermount3`), whose waits would otherwise fail.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The commands (workload and check shells, each leading a process group of its own)
/// explore waits for by pid: a sweep leaves their zombies to those waits.
static WAITED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Spawns a command that the caller will wait for by pid, registered so that no sweep of
/// another job reaps it first (the lock spans the spawn: it cannot exit unregistered).
pub fn spawn_waited(cmd: &mut Command) -> std::io::Result<Child> {
    let mut waited = WAITED.lock();
    let child = cmd.spawn()?;
    waited.insert(child.id() as i32);
    Ok(child)
}

/// After the wait for a [`spawn_waited`] command.
pub fn waited(pid: u32) {
    WAITED.lock().remove(&(pid as i32));
}

/// The environment variable that tells whose an orphan is.
pub const JOB_ENV: &str = "LOSSFS_EXPLORE_JOB";

/// How long killed orphans may take to die.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes this process the reaper of its descendants' orphans.
pub fn become_subreaper() -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER): {e}"))
}

/// State, parent pid and process group in the text of `/proc/PID/stat` (the fields after
/// the command name in parentheses, a name that may hold spaces and parentheses itself).
fn stat_fields(stat: &str) -> Option<(char, i32, i32)> {
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Whether a NUL-separated environment holds `entry` exactly.
fn environ_has(environ: &[u8], entry: &str) -> bool {
    environ.split(|&b| b == 0).any(|e| e == entry.as_bytes())
}

/// Whether a NUL-separated environment sets `name`, to any value.
fn environ_sets(environ: &[u8], name: &str) -> bool {
    let prefix = format!("{name}=");
    environ
        .split(|&b| b == 0)
        .any(|e| e.starts_with(prefix.as_bytes()))
}

/// The environment of `pid`, read again for a while when it reads empty: a process in the
/// middle of execve(2) shows none, and one that carries the tag must not slip through then.
/// `None` once it is gone.
fn environ_of(pid: i32) -> Option<Vec<u8>> {
    for _ in 0..50 {
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(env) if !env.is_empty() => return Some(env),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    Some(Vec::new())
}

/// Our children whose environment says they were started for job `job` (for any job with
/// `None`: the mount daemons explore starts carry no tag), and our zombie children that
/// nobody waits for (see the module's notes).
fn orphans_of(job: Option<usize>) -> Vec<Pid> {
    let me = std::process::id() as i32;
    let my_group = nix::unistd::getpgrp().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let waited = WAITED.lock();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((state, ppid, pgrp)) = stat_fields(&stat) else {
                return false;
            };
            if ppid != me {
                return false;
            }
            if state == 'Z' {
                return pgrp != my_group && !waited.contains(&pid);
            }
            environ_of(pid).is_some_and(|env| match job {
                Some(j) => environ_has(&env, &format!("{JOB_ENV}={j}")),
                None => environ_sets(&env, JOB_ENV),
            })
        })
        .map(Pid::from_raw)
        .collect()
}

/// At the end of explore, kills and reaps whatever any job left that a run's own sweep
/// missed, so nothing outlives explore.
pub struct ReapAtEnd;

impl Drop for ReapAtEnd {
    fn drop(&mut self) {
        if let Err(e) = kill_tagged(None) {
            eprintln!("lossfs explore: {e}");
        }
    }
}

/// Kills and reaps the orphans job `job` left (and theirs, which become ours in turn).
/// Called when no command of that job is running, so every child carrying its tag is an
/// orphan.  Returns how many were killed; an error names those still alive at the bound.
pub fn kill_orphans(job: usize) -> Result<usize, String> {
    kill_tagged(Some(job))
}

fn kill_tagged(job: Option<usize>) -> Result<usize, String> {
    let start = Instant::now();
    let mut killed = 0;
    loop {
        let pids = orphans_of(job);
        if pids.is_empty() {
            return Ok(killed);
        }
        for &p in &pids {
            if kill(p, Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        for &p in &pids {
            // Reap by pid only: a wait for any child would steal the exit of a command
            // another job is waiting for.
            loop {
                match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(_) | Err(Errno::ECHILD) => break,
                    Err(e) => return Err(format!("waitpid({p}): {e}")),
                }
                if start.elapsed() > REAP_TIMEOUT {
                    return Err(format!(
                        "process {p}, left behind by a workload or check, did not die within \
                         {} s of SIGKILL",
                        REAP_TIMEOUT.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_environ_are_read_by_their_shapes() {
        assert_eq!(stat_fields("42 (sh) S 7 42 42 0"), Some(('S', 7, 42)));
        assert_eq!(stat_fields("42 (a) b) (c) Z 9 1 1"), Some(('Z', 9, 1)));
        assert_eq!(stat_fields("garbage"), None);
        let env = b"A=1\0LOSSFS_EXPLORE_JOB=1\0B=2\0";
        assert!(environ_has(env, "LOSSFS_EXPLORE_JOB=1"));
        assert!(!environ_has(env, "LOSSFS_EXPLORE_JOB=0"));
        assert!(!environ_has(
            b"LOSSFS_EXPLORE_JOB=10\0",
            "LOSSFS_EXPLORE_JOB=1"
        ));
        assert!(environ_sets(env, JOB_ENV));
        assert!(!environ_sets(b"A=1\0LOSSFS_EXPLORE_JOBS=1\0", JOB_ENV));
    }
}
