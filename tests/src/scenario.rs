//! Reusable parts of the scenario tests: a real server (Redis, PostgreSQL, etcd...) runs
//! with its data directory on a lossfs mount, a real client writes acknowledged records, a
//! `lossctl powercut` SIGKILLs the server, the server restarts on the same mount, and the
//! test counts what survived.
//!
//! A system's scenario file only says how to start its server, write one record and count
//! them; this module starts and stops servers (always bounded, always reaped in `Drop`),
//! picks free ports on 127.0.0.1, waits for readiness with a bound, cuts the power and
//! prints the verdict line.

pub mod etcd;
pub mod kafka;
pub mod nats;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::{wait_bounded, Mount};

/// How long a server may take to become ready (start or crash recovery).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a single client command may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a program the scenario needs: `name` if it contains a `/`, else looked up
/// in `PATH`. Panics naming the Debian package to install when it is missing.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let found = if name.contains('/') {
        let p = PathBuf::from(name);
        p.is_file().then_some(p)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "scenario cannot run: {name} is not installed \
             (apt-get install -y --no-install-recommends {package}; .ci/run does this)"
        )
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    // The kernel may hand a just-released port to the next bind(0), e.g. to a test running
    // in parallel: never give out the same port twice in one process.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to pick a free port: {e}"));
        let port = l
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr of a bound listener: {e}"))
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port that this process has not handed out yet after 100 tries");
}

/// Uid and gid of a system user, panicking if it does not exist.
pub fn user_ids(name: &str) -> (u32, u32) {
    let c = crate::cstr(name);
    // SAFETY: getpwnam with a valid NUL-terminated string; the result is read at once,
    // before any other call that could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(
        !pw.is_null(),
        "scenario cannot run: system user {name:?} does not exist (its package creates it)"
    );
    // SAFETY: pw is non-null and points to getpwnam's static passwd record.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A server process started by a scenario, in its own process group, with stdout and
/// stderr in a log file. Dropping it SIGKILLs the whole group and reaps the server, so
/// nothing outlives a failing test.
pub struct Server {
    /// Name used in messages, e.g. `redis-server`.
    pub name: String,
    /// The log file (stdout and stderr) of every start of this server.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Spawns `cmd` with stdin closed, output appended to `log`, in a new process group.
    /// Set the working directory (outside the mount!) on `cmd` before.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Server {
        become_subreaper();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log fd: {e}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({cmd:?}): {e}"));
        Server {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    /// Pid of the server process, if it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The exit status if the server has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }

    /// Polls `probe` until it returns `Ok`, at most `timeout`. Panics with the last probe
    /// error and the log if the server exits or the time runs out.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> Result<(), String>,
    ) {
        if let Err((st, last)) = self.wait_ready_or_exit(what, timeout, probe) {
            panic!(
                "{} exited ({st:?}) before {what}; last probe: {last}\n--- log ---\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// Like [`Server::wait_ready`], but a server that exits first is an answer, not a
    /// failure: its exit status and the last probe error (a server refusing to start
    /// after a power cut is a finding). Still panics if the time runs out.
    pub fn wait_ready_or_exit(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), (ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(not probed)");
        loop {
            if let Some(st) = self.exited() {
                return Err((st, last));
            }
            match probe() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not {what} within {timeout:?}; last probe: {last}\n{}\n--- log ---\n{}",
                    self.name,
                    self.where_it_waits(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where each thread of the server waits (state and kernel wait channel, from /proc): a
    /// thread in state D on a FUSE wait channel points at the mount, not at the server.
    pub fn where_it_waits(&self) -> String {
        let Some(pid) = self.pid() else {
            return "(not running)".into();
        };
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut lines = vec![format!("threads of pid {pid} (state, wait channel):")];
        for t in tasks {
            let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            let wchan = std::fs::read_to_string(t.join("wchan")).unwrap_or_default();
            lines.push(format!("  {} {state} {wchan}", t.display()));
        }
        lines.join("\n")
    }

    /// Waits until 127.0.0.1:`port` accepts TCP connections, bounded.
    pub fn wait_port(&mut self, port: u16, timeout: Duration) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.wait_ready(&format!("listening on {addr}"), timeout, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}"))
        });
    }

    /// Waits (bounded) for the server to have died of SIGKILL, as `lossctl powercut`
    /// does to it, and reaps it.
    pub fn assert_killed(&mut self, timeout: Duration) {
        let name = self.name.clone();
        let mut c = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} was already reaped"));
        let st = wait_bounded(&mut c, timeout);
        let Some(st) = st else {
            self.child = Some(c);
            panic!("{name} still running {timeout:?} after the power cut");
        };
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "{name} should have died of SIGKILL from the power cut, exit: {st:?}\n--- log ---\n{}",
            self.log_text()
        );
    }

    /// Stops the server: SIGTERM to its process group, then SIGKILL after
    /// [`STOP_TIMEOUT`]. Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal_group(&c, libc::SIGTERM);
        if let Some(st) = wait_bounded(&mut c, STOP_TIMEOUT) {
            // Reaped: its group id may be reused now, so no further signal to it (a
            // postmaster exits only after its backends).
            return Some(st);
        }
        signal_group(&c, libc::SIGKILL);
        wait_bounded(&mut c, Duration::from_secs(10))
    }
}

/// Makes this test process the reaper of its orphaned descendants (a postmaster's
/// backends SIGKILLed together with it), so [`reap_pids`] can collect them instead of
/// leaving zombies to the init process.
fn become_subreaper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag on this process.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", crate::last_err());
    });
}

/// Pids of the direct children of `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<libc::pid_t> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let child: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// SIGKILLs `pids`: children of a server that may have left its process group, as
/// PostgreSQL backends do (setsid).
fn kill_pids(pids: &[libc::pid_t]) {
    for &p in pids {
        // SAFETY: kill(2) of a child of our own server, which is not reaped yet, so the
        // child is alive or a zombie and its pid is not reused.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// Reaps `pids`, orphans of a dead server that were reparented to us (see
/// [`become_subreaper`]), for at most `timeout` in all.
fn reap_pids(pids: &[libc::pid_t], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for &p in pids {
        loop {
            let mut status = 0;
            // SAFETY: waitpid of one pid with a valid out-pointer; ECHILD if it is not ours.
            let r = unsafe { libc::waitpid(p, &mut status, libc::WNOHANG) };
            if r != 0 || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn signal_group(c: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) of the process group the child leads (process_group(0) made its
    // pgid its pid); the child is not reaped yet, so the id is still ours.
    unsafe { libc::kill(-(c.id() as libc::pid_t), sig) };
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let children = children_of(c.id());
            signal_group(&c, libc::SIGKILL);
            kill_pids(&children);
            let _ = c.kill();
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
            reap_pids(&children, Duration::from_secs(10));
        }
    }
}

/// Cuts the power of `m` with `lossctl powercut` while `server` runs on it (SIGSTOPped
/// first, so the cut happens right after the last acknowledgement): asserts that
/// lossctl reports the server among the killed processes and that it died of SIGKILL.
/// Returns the powercut report.
pub fn powercut(m: &Mount, server: &mut Server) -> serde_json::Value {
    let pid = server
        .pid()
        .unwrap_or_else(|| panic!("{} is not running at the power cut", server.name));
    // The power fails at one instant: stop the server's process group first, so no
    // background fsync (Redis everysec, a checkpointer) lands between the last
    // acknowledgement and the kill.
    if let Some(c) = server.child.as_ref() {
        signal_group(c, libc::SIGSTOP);
    }
    let children = children_of(pid);
    let rep = m.powercut_json();
    let killed = rep["killed"]
        .as_array()
        .is_some_and(|a| a.iter().any(|k| k["pid"].as_u64() == Some(u64::from(pid))));
    assert!(
        killed,
        "powercut did not report killing {} (pid {pid}): {rep}",
        server.name
    );
    server.assert_killed(Duration::from_secs(20));
    reap_pids(&children, Duration::from_secs(10));
    rep
}

/// Standard base64 (RFC 4648, with padding): etcd's JSON gateway wants keys and values
/// in it, JetStream returns message data in it.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Total bytes a powercut report says were lost.
pub fn lost_bytes(rep: &serde_json::Value) -> u64 {
    crate::num(rep, "lost_bytes")
}

/// The outcome of one scenario: how many records the client saw acknowledged and how
/// many of them the restarted server still has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// System name, e.g. `redis`.
    pub system: String,
    /// The durability setting under test, e.g. `appendfsync=no`.
    pub setting: String,
    /// Records the server acknowledged before the cut.
    pub acknowledged: u64,
    /// Acknowledged records found after the restart.
    pub found: u64,
}

impl Verdict {
    /// A verdict; panics if more were found than acknowledged (the count is then wrong).
    pub fn new(system: &str, setting: &str, acknowledged: u64, found: u64) -> Verdict {
        assert!(
            found <= acknowledged,
            "{system} {setting}: found {found} of {acknowledged} acknowledged records?"
        );
        Verdict {
            system: system.to_string(),
            setting: setting.to_string(),
            acknowledged,
            found,
        }
    }

    /// Acknowledged records that are gone.
    pub fn lost(&self) -> u64 {
        self.acknowledged - self.found
    }

    /// `scenario redis appendfsync=no: acknowledged 500, found 0, lost 500`
    pub fn line(&self) -> String {
        format!(
            "scenario {} {}: acknowledged {}, found {}, lost {}",
            self.system,
            self.setting,
            self.acknowledged,
            self.found,
            self.lost()
        )
    }

    /// Prints the verdict line (shown by `cargo test -- --nocapture`, and with a failure).
    pub fn print(&self) {
        println!("{}", self.line());
    }

    /// Asserts that some acknowledged records were lost (the unsafe setting).
    pub fn assert_some_lost(&self) {
        assert!(
            self.lost() > 0,
            "{}: expected acknowledged records to be lost without fsync",
            self.line()
        );
    }

    /// Asserts that every acknowledged record survived (the safe setting).
    pub fn assert_none_lost(&self) {
        assert_eq!(
            self.lost(),
            0,
            "{}: acknowledged records lost although the server syncs",
            self.line()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
