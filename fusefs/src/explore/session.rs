//! The machinery one explore job drives: a fresh copy of the template directory, a lossfs
//! daemon serving it at the job's mount point (our child, in the foreground), control
//! requests to that daemon (the ones `lossctl` sends, made in-process: a state makes
//! several, and a process per request would cost more than the state's own work), and the
//! workload and check commands run bounded in a process group of their own.

use super::reaper::{kill_orphans, spawn_waited, waited, JOB_ENV};
use super::verdict::CheckEnd;
use crate::control::{self, Request};
use crate::faultspec::{CrashSpec, FaultCommand, FaultSpec, Op, When};
use crate::keep::{KeepMode, KeepRequest};
use serde_json::Value;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a control request may take (a cut of a large mount included).
const CTL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a mount may take to come up, and an unmount to finish.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The lossfs binary explore runs for every state's daemon: this one.
pub fn lossfs_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the lossfs binary itself: {e}"))
}

/// Runs a program to its end, bounded; its output as text.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<std::process::Output, String> {
    cmd.stdin(Stdio::null())
        .env_remove(JOB_ENV)
        .output()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))
}

/// One job: its work directory (the copy of the template), mount point and daemon.
pub struct Job {
    /// 0 for the first job: lets a workload pick resources of its own (a port) per job.
    index: usize,
    lossfs: PathBuf,
    template: PathBuf,
    backing: PathBuf,
    pub mnt: PathBuf,
    /// The daemon's control socket (found from the canonical mount point, as lossctl does).
    socket: PathBuf,
    options: Vec<String>,
    log: PathBuf,
    daemon: Option<Child>,
}

impl Job {
    pub fn new(
        index: usize,
        lossfs: PathBuf,
        template: &Path,
        work: &Path,
        mnt: &Path,
        options: Vec<String>,
    ) -> Result<Job, String> {
        std::fs::create_dir_all(work)
            .map_err(|e| format!("creating the work directory {}: {e}", work.display()))?;
        let canonical = mnt
            .canonicalize()
            .map_err(|e| format!("--mount {}: {e}", mnt.display()))?;
        Ok(Job {
            index,
            lossfs,
            template: template.to_path_buf(),
            backing: work.join("backing"),
            mnt: mnt.to_path_buf(),
            socket: control::default_socket_path(&canonical),
            options,
            log: work.join("daemon.log"),
            daemon: None,
        })
    }

    /// Puts a fresh copy of the template in place (reflinked where the file system can)
    /// and mounts it.  The template's own state dir, if it was ever mounted, stays out.
    pub fn start(&mut self) -> Result<(), String> {
        self.start_with(None)
    }

    /// [`Job::start`], with the daemon recording its operations to `file`.
    pub fn start_recording(&mut self, file: &Path) -> Result<(), String> {
        self.start_with(Some(file))
    }

    fn start_with(&mut self, record: Option<&Path>) -> Result<(), String> {
        self.stop()?;
        if self.backing.exists() {
            std::fs::remove_dir_all(&self.backing)
                .map_err(|e| format!("removing {}: {e}", self.backing.display()))?;
        }
        let out = run_quiet(
            Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg(&self.template)
                .arg(&self.backing),
            "copying the template",
        )?;
        if !out.status.success() {
            return Err(format!(
                "copying {} to {}: {}",
                self.template.display(),
                self.backing.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let state = self.backing.join(".lossfs");
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .map_err(|e| format!("removing {}: {e}", state.display()))?;
        }
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("creating {}: {e}", self.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&self.lossfs);
        cmd.arg(&self.backing).arg(&self.mnt).arg("-f");
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        match record {
            Some(f) => cmd.env(crate::faults::record::RECORD_ENV, f),
            None => cmd.env_remove(crate::faults::record::RECORD_ENV),
        };
        cmd.env_remove(JOB_ENV);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.lossfs.display()))?;
        self.daemon = Some(child);
        let start = Instant::now();
        loop {
            if self.call(Request::Status).is_ok() {
                return Ok(());
            }
            let exited = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                self.daemon = None;
                return Err(format!(
                    "lossfs exited ({st}) before mounting {}: {}",
                    self.mnt.display(),
                    self.daemon_log()
                ));
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                return Err(format!(
                    "{} not mounted within {} s: {}",
                    self.mnt.display(),
                    MOUNT_TIMEOUT.as_secs(),
                    self.daemon_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn daemon_log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// Unmounts (a clean unmount) and waits for the daemon, bounded; a daemon that does not
    /// go is killed by its pid and the mount detached.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.daemon.take() else {
            return Ok(());
        };
        let mut unmounted = unmount(&self.mnt);
        if !unmounted {
            // A server the workload or the check left running (daemonized, out of their
            // process group) keeps the mount busy: kill every user of the mount the way a
            // cut does.  Keeping everything changes nothing that matters: the copy is
            // thrown away.  (Only when the plain unmount failed: a cut scans every process
            // on the machine.)
            if let Err(e) = self.powercut(KeepMode::All, None) {
                eprintln!("lossfs explore: {e}");
            }
        }
        let start = Instant::now();
        let mut tried = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                let _ = run_quiet(
                    Command::new("fusermount3")
                        .arg("-u")
                        .arg("-z")
                        .arg(&self.mnt),
                    "detaching",
                );
                return Err(format!(
                    "the lossfs daemon of {} did not exit within {} s of the unmount: killed \
                     (its log ends: {})",
                    self.mnt.display(),
                    MOUNT_TIMEOUT.as_secs(),
                    self.daemon_log()
                ));
            }
            // Busy right after a cut while the killed processes' files close: try again.
            if !unmounted && tried.elapsed() >= Duration::from_millis(200) {
                unmounted = unmount(&self.mnt);
                tried = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The environment of the workload and the check: `LOSSFS_MOUNT` (the mount point) and
    /// `LOSSFS_EXPLORE_JOB` (the job's number, from 0).
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("LOSSFS_MOUNT", self.mnt.clone().into_os_string()),
            (JOB_ENV, self.index.to_string().into()),
        ]
    }

    /// One control request to this job's daemon: its answer, or what went wrong.
    fn call(&self, req: Request) -> Result<Value, String> {
        control::call(&self.socket, &req, CTL_TIMEOUT).map_err(|e| {
            format!(
                "control request to the daemon of {}: {e}",
                self.mnt.display()
            )
        })
    }

    /// `lossctl arm powercut --op OP --nth N --before|--after`.
    pub fn arm(&self, op: &str, nth: u64, after: bool) -> Result<(), String> {
        let spec = CrashSpec {
            op: Op::parse(op)?,
            path: None,
            nth,
            when: if after { When::After } else { When::Before },
        };
        self.call(Request::Faults(FaultCommand::Arm(spec)))
            .map(drop)
    }

    /// `lossctl fault add --op OP --nth N --count 1 --delay MSms`: holds the Nth OP.
    pub fn hold(&self, op: &str, nth: u64, ms: u64) -> Result<(), String> {
        let spec = FaultSpec {
            op: Some(Op::parse(op)?),
            delay_ms: Some(ms),
            nth: Some(nth),
            count: Some(1),
            ..FaultSpec::default()
        };
        self.call(Request::Faults(FaultCommand::Add(spec)))
            .map(drop)
    }

    /// `lossctl fault list`: the rules, the crash point and the last cut.
    pub fn fault_list(&self) -> Result<Value, String> {
        self.call(Request::Faults(FaultCommand::List))
    }

    /// `lossctl powercut --keep KEEP [--seed SEED]`, which kills the mount's users.
    pub fn powercut(&self, keep: KeepMode, seed: Option<u64>) -> Result<Value, String> {
        self.call(Request::Powercut {
            no_kill: false,
            keep: KeepRequest {
                mode: keep,
                seed,
                granularity: None,
            },
        })
    }
}

/// `fusermount3 -u MNT`: whether it unmounted (the daemon then exits on its own).
fn unmount(mnt: &Path) -> bool {
    run_quiet(Command::new("fusermount3").arg("-u").arg(mnt), "unmounting")
        .is_ok_and(|o| o.status.success())
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("lossfs explore: {e}");
        }
    }
}

/// A shell command running in a process group of its own, its output collected.
pub struct Running {
    child: Child,
    /// The explore job it runs for (from its environment): whose orphans to kill after it.
    job: Option<usize>,
    pgid: i32,
    started: Instant,
    timeout: Duration,
    outputs: Vec<mpsc::Receiver<String>>,
}

/// A finished command: its output and how it ended.
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
    pub end: CheckEnd,
}

impl Running {
    /// Starts `sh -c CMD` in `cwd` with `env`.
    pub fn spawn(
        cmd: &str,
        cwd: &Path,
        env: &[(&str, OsString)],
        timeout: Duration,
    ) -> Result<Running, String> {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = spawn_waited(&mut c)
            .map_err(|e| format!("starting sh -c {cmd:?} in {}: {e}", cwd.display()))?;
        let mut outputs = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().ok_or("no stdout pipe")?),
            Box::new(child.stderr.take().ok_or("no stderr pipe")?),
        ];
        for mut p in pipes {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = p.read_to_end(&mut buf);
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            });
            outputs.push(rx);
        }
        let pgid = child.id() as i32;
        let job = env
            .iter()
            .find(|(k, _)| *k == JOB_ENV)
            .and_then(|(_, v)| v.to_str()?.parse().ok());
        Ok(Running {
            child,
            job,
            pgid,
            started: Instant::now(),
            timeout,
            outputs,
        })
    }

    /// Whether the command has ended (reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn timed_out(&self) -> bool {
        self.started.elapsed() > self.timeout
    }

    /// Waits for the end (killing the group at the timeout), then kills whatever of the
    /// group is left, and the processes that left the group (daemonized, see
    /// [`super::reaper`]), and collects the output.  Fails only when a left-behind process
    /// cannot be killed.
    pub fn finish(mut self) -> Result<Ran, String> {
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = self.exited() {
                break Some(st);
            }
            if self.timed_out() {
                timed_out = true;
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // SAFETY: kill(2) of the process group we created for this command; its leader is
        // our child, so the group id cannot name anyone else's processes while it exists.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let status = status.or_else(|| self.child.wait().ok());
        waited(self.child.id());
        if let Some(job) = self.job {
            kill_orphans(job)?;
        }
        let mut text = self.outputs.iter().map(|rx| {
            // A process that left the group may keep a pipe open: do not wait for it long.
            rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
        });
        let stdout = text.next().unwrap_or_default();
        let stderr = text.next().unwrap_or_default();
        let end = match (timed_out, status) {
            (true, _) | (false, None) => CheckEnd::Timeout,
            (false, Some(st)) => match (st.code(), st.signal()) {
                (Some(c), _) => CheckEnd::Exit(c),
                (None, Some(s)) => CheckEnd::Signal(s),
                (None, None) => CheckEnd::Exit(-1),
            },
        };
        Ok(Ran {
            stdout,
            stderr,
            end,
        })
    }
}
