//! Shared harness for the mounted end-to-end tests of lossfs and lossctl: checks the
//! preconditions (root, `/dev/fuse`, `fusermount3`), finds the binaries, mounts a fresh
//! backing directory with `lossfs -f`, runs `lossctl` with bounded waits, and tears every
//! mount and process down in `Drop`, also when a test panics.
//!
//! Nothing here skips: a missing precondition panics with the reason.

pub mod rng;
pub mod scenario;
pub mod scratch;
pub mod stress;

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a mount may take to show up in `/proc/self/mountinfo`.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any single `lossctl` or helper command may run.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Default lifetime of a [`Mount`] before its watchdog kills the daemon (env
/// `LOSSFS_TEST_TIMEOUT`, seconds, overrides).
pub const MOUNT_LIFETIME: Duration = Duration::from_secs(420);

fn mount_lifetime() -> Duration {
    match std::env::var("LOSSFS_TEST_TIMEOUT") {
        Ok(s) => Duration::from_secs(
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("LOSSFS_TEST_TIMEOUT={s:?}: {e}")),
        ),
        Err(_) => MOUNT_LIFETIME,
    }
}

/// Bounds every file operation a test makes through a mount: if the mount outlives its
/// deadline (a hung daemon blocks the test in a syscall, which no timeout can interrupt),
/// the watchdog SIGKILLs the daemon, which aborts the FUSE connection, so the blocked
/// operation fails with ENOTCONN and the test fails instead of hanging.
struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(mnt: PathBuf, pid: Arc<Mutex<i32>>, limit: Duration) -> Watchdog {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let pid = pid.lock().unwrap_or_else(|e| e.into_inner());
                if *pid > 0 {
                    eprintln!(
                        "lossfs test watchdog: mount {} still in use after {limit:?}; \
                         SIGKILLing lossfs pid {} so blocked operations fail",
                        mnt.display(),
                        *pid
                    );
                    // SAFETY: plain kill(2) of our own unreaped child (the mutex keeps the
                    // pid from being reaped, and so reused, while we hold it).
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
            }
        });
        Watchdog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Panics with a clear reason unless the tests can mount FUSE file systems here.
pub fn check_preconditions() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let res = CHECKED.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(format!(
                "lossfs mounted tests must run as root (euid is {euid}): they mount FUSE \
                 file systems, kill processes and read /proc of other processes"
            ));
        }
        if let Err(e) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            return Err(format!(
                "/dev/fuse cannot be opened ({e}); the mounted tests need FUSE \
                 (load the fuse module / run the container with --device /dev/fuse)"
            ));
        }
        if find_in_path("fusermount3").is_none() {
            return Err("fusermount3 is not installed (apt-get install -y fuse3); \
                        the mounted tests need it to unmount"
                .to_string());
        }
        Ok(())
    });
    if let Err(e) = res {
        panic!("cannot run lossfs mounted tests: {e}");
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env}={} does not name an existing file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A test runs from target/debug/deps/<test>, a binary of this package (the soak) from
    // target/debug/<bin>: look next to the executable, then one level up.
    let dirs: Vec<&Path> = exe.ancestors().skip(1).take(2).collect();
    for dir in &dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found in {dirs:?}: run `cargo build --workspace` first (or set {env})");
}

/// Path of the `stress_worker` binary of this package (env `LOSSFS_STRESS_WORKER_BIN`
/// overrides).
pub fn stress_worker_bin() -> PathBuf {
    bin("stress_worker", "LOSSFS_STRESS_WORKER_BIN")
}

/// The cache mode every lossfs the tests start runs with: env `LOSSFS_TEST_CACHE`,
/// `writethrough` (the default, also when unset) or `writeback`.  Panics on anything else,
/// so a typo never runs the suite in the wrong mode.
pub fn test_cache_mode() -> &'static str {
    match std::env::var("LOSSFS_TEST_CACHE").as_deref() {
        Err(_) | Ok("") | Ok("writethrough") => "writethrough",
        Ok("writeback") => "writeback",
        Ok(other) => panic!("LOSSFS_TEST_CACHE={other}: must be writethrough or writeback"),
    }
}

/// The `-o` arguments that put a lossfs (`lossfs BACKING MNT`, `lossfs run`, `lossfs
/// explore`) in [`test_cache_mode`]; every place a test starts lossfs adds them.
pub fn cache_args() -> [String; 2] {
    ["-o".into(), format!("cache={}", test_cache_mode())]
}

/// Whether the tests run with the kernel's writeback cache (`LOSSFS_TEST_CACHE=writeback`).
pub fn writeback_cache() -> bool {
    test_cache_mode() == "writeback"
}

/// Path of the `lossfs` binary (env `LOSSFS_BIN` overrides).
pub fn lossfs_bin() -> PathBuf {
    bin("lossfs", "LOSSFS_BIN")
}

/// Path of the `lossctl` binary (env `LOSSCTL_BIN` overrides).
pub fn lossctl_bin() -> PathBuf {
    bin("lossctl", "LOSSCTL_BIN")
}

/// Output of a bounded command run.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` to completion with piped stdout/stderr, killing it and panicking if it takes
/// longer than `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    run_bounded_stdin(cmd, Stdio::null(), timeout)
}

/// [`run_bounded`] with `stdin` as the command's standard input (a file of commands for
/// an interactive client, say).
pub fn run_bounded_stdin(cmd: &mut Command, stdin: Stdio, timeout: Duration) -> Output {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match wait_bounded(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?}; killed it");
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `marker` exists, at most `timeout`, while `alive()` holds; the error names
/// the wait (`what`) and why it ended.
pub fn wait_for_marker(
    marker: &Path,
    timeout: Duration,
    what: &str,
    mut alive: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if marker.exists() {
            return Ok(());
        }
        if !alive() {
            return Err(format!(
                "waiting for pause marker {} ({what}): the process died first",
                marker.display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "waiting for pause marker {} ({what}): timed out after {timeout:?}",
                marker.display()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Decodes the octal escapes (`\040` etc.) of a `/proc/self/mountinfo` field.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// File system types of every mount at `path` listed in `/proc/self/mountinfo`, in order.
pub fn mount_fstypes(path: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = path.as_os_str().as_bytes();
    let mut v = Vec::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || sep + 1 >= fields.len() {
            continue;
        }
        if unescape_mountinfo(fields[4]) == want {
            v.push(fields[sep + 1].to_string());
        }
    }
    v
}

/// True if a `fuse.lossfs` mount sits at `path`.
pub fn is_lossfs_mounted(path: &Path) -> bool {
    mount_fstypes(path).iter().any(|t| t == "fuse.lossfs")
}

/// True if anything is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    !mount_fstypes(path).is_empty()
}

/// The control socket lossctl would use for `mnt`: the daemon's own rule, from the library.
pub fn default_control_socket(mnt: &Path) -> PathBuf {
    lossfs::control::default_socket_path(mnt)
}

/// A fresh unique directory under /tmp whose name needs no escaping anywhere (tempfile's
/// random suffix is alphanumeric).  It is kept: the caller removes it, after unmounting
/// whatever it mounted there (a recursive removal must never run into a live mount).
pub fn unique_tmp_dir(tag: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("lossfs_t_{tag}_"))
        .tempdir_in("/tmp")
        .unwrap_or_else(|e| panic!("making a scratch directory lossfs_t_{tag}_* in /tmp: {e}"))
        .keep()
}

/// Runs `fusermount3 -u [-z] mnt`, bounded; true if it exited 0.
pub fn fusermount_u(mnt: &Path, lazy: bool) -> bool {
    let mut c = Command::new("fusermount3");
    c.arg("-u");
    if lazy {
        c.arg("-z");
    }
    c.arg(mnt);
    run_bounded(&mut c, Duration::from_secs(20))
        .status
        .success()
}

/// Unmounts whatever is at `mnt` (normal, then lazy), bounded. True if nothing is left.
pub fn unmount_all(mnt: &Path) -> bool {
    for _ in 0..4 {
        if !is_mounted(mnt) {
            return true;
        }
        if !fusermount_u(mnt, false) {
            fusermount_u(mnt, true);
        }
    }
    !is_mounted(mnt)
}

/// Kills (SIGKILL) and reaps a child if it is still running, bounded.
pub fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = wait_bounded(child, Duration::from_secs(10));
    }
}

/// A spawned helper process that is SIGKILLed and reaped when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_child(&mut self.0);
    }
}

/// A lossfs mount of a fresh backing directory, torn down on drop.
pub struct Mount {
    /// Temporary directory holding everything below.
    pub root: PathBuf,
    /// Backing directory.
    pub backing: PathBuf,
    /// Mount point.
    pub mnt: PathBuf,
    /// Options passed with `-o` (empty: none).
    pub opts: Vec<String>,
    daemon: Option<Child>,
    /// Pid of `daemon` while it is unreaped (0 otherwise), shared with the watchdog.
    daemon_pid: Arc<Mutex<i32>>,
    watchdog: Option<Watchdog>,
    stderr_path: PathBuf,
    generation: u32,
    nofile: Option<(u64, u64)>,
    /// Extra environment of every daemon started from now on.
    env: Vec<(String, String)>,
}

/// Prepares a fresh backing directory before the daemon starts.
pub type PrepareBacking = Box<dyn FnOnce(&Path)>;

/// How to start a [`Mount`] beyond its `-o` options.
#[derive(Default)]
pub struct MountSetup {
    /// Runs on the fresh empty backing directory before the daemon first starts, e.g. to
    /// mount a small tmpfs there.  Whatever is mounted on the backing directory is unmounted
    /// (lazily) when the `Mount` is dropped, after the daemon.
    pub prepare_backing: Option<PrepareBacking>,
    /// The RLIMIT_NOFILE (soft, hard) every daemon of this mount starts with.
    pub nofile: Option<(u64, u64)>,
    /// Extra environment of every daemon (kept for every remount until
    /// [`Mount::set_daemon_env`] changes it).
    pub env: Vec<(String, String)>,
    /// When the watchdog kills the daemon (default: `LOSSFS_TEST_TIMEOUT` or the harness's
    /// mount lifetime).
    pub lifetime: Option<Duration>,
}

impl Mount {
    /// Mounts a fresh empty backing directory with the given `-o` options.
    pub fn new(opts: &[&str]) -> Mount {
        Mount::new_with(opts, MountSetup::default())
    }

    /// Like [`Mount::new`], with the backing directory prepared, limits, daemon environment
    /// and watchdog lifetime set by `setup`.
    pub fn new_with(opts: &[&str], setup: MountSetup) -> Mount {
        check_preconditions();
        let root = unique_tmp_dir("m");
        let backing = root.join("backing");
        let mnt = root.join("mnt");
        fs::create_dir(&backing).expect("mkdir backing");
        fs::create_dir(&mnt).expect("mkdir mnt");
        if let Some(prepare) = setup.prepare_backing {
            prepare(&backing);
        }
        let mut m = Mount {
            stderr_path: root.join("daemon0.stderr"),
            root,
            backing,
            mnt,
            opts: opts.iter().map(|s| s.to_string()).collect(),
            daemon: None,
            daemon_pid: Arc::new(Mutex::new(0)),
            watchdog: None,
            generation: 0,
            nofile: setup.nofile,
            env: setup.env,
        };
        m.watchdog = Some(Watchdog::start(
            m.mnt.clone(),
            m.daemon_pid.clone(),
            setup.lifetime.unwrap_or_else(mount_lifetime),
        ));
        m.start();
        m
    }

    /// Replaces the extra environment of the daemons started from now on.
    pub fn set_daemon_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn start(&mut self) {
        self.spawn_daemon();
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_lossfs_mounted(&self.mnt) {
                return;
            }
            let child = self.daemon.as_mut().expect("daemon");
            if let Ok(Some(st)) = child.try_wait() {
                self.take_daemon();
                panic!(
                    "lossfs exited ({st:?}) before mounting {}:\n{}",
                    self.mnt.display(),
                    self.daemon_stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "lossfs did not mount {} within {MOUNT_TIMEOUT:?} (mount types there: \
                     {:?}); daemon stderr:\n{}",
                    self.mnt.display(),
                    mount_fstypes(&self.mnt),
                    self.daemon_stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a daemon on the (unmounted) mount point without waiting for the mount, and
    /// waits instead until `marker` exists (a pause point reached before mounting, see
    /// `LOSSFS_TEST_PAUSE`), at most `timeout`; panics naming the wait otherwise.
    pub fn start_until_marker(&mut self, marker: &Path, timeout: Duration) {
        if is_mounted(&self.mnt) {
            self.lazy_unmount();
        }
        self.spawn_daemon();
        wait_for_marker(marker, timeout, "daemon start", || self.daemon_alive())
            .unwrap_or_else(|e| panic!("{e}; daemon stderr:\n{}", self.daemon_stderr()));
    }

    fn spawn_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        self.stderr_path = self.root.join(format!("daemon{}.stderr", self.generation));
        self.generation += 1;
        let errf = File::create(&self.stderr_path).expect("create daemon stderr file");
        let mut cmd = Command::new(lossfs_bin());
        cmd.arg(&self.backing).arg(&self.mnt);
        if !self.opts.is_empty() {
            cmd.arg("-o").arg(self.opts.join(","));
        }
        // A test that names a cache mode itself keeps it.
        if !self
            .opts
            .iter()
            .flat_map(|o| o.split(','))
            .any(|o| o.starts_with("cache="))
        {
            cmd.args(cache_args());
        }
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let rl = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        *self.daemon_pid.lock().unwrap_or_else(|e| e.into_inner()) = child.id() as i32;
        self.daemon = Some(child);
    }

    /// Takes the daemon out, so the watchdog no longer targets its pid, before reaping it.
    fn take_daemon(&mut self) -> Option<Child> {
        let mut pid = self.daemon_pid.lock().unwrap_or_else(|e| e.into_inner());
        *pid = 0;
        self.daemon.take()
    }

    /// Everything the current daemon wrote to stderr so far.
    pub fn daemon_stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.stderr_path.display()))
    }

    /// Pid of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// True if the daemon process is still running.
    pub fn daemon_alive(&mut self) -> bool {
        match self.daemon.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A path inside the backing directory.
    pub fn backing_path(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    /// The control socket lossfs listens on for this mount (the default location).
    pub fn control_socket(&self) -> PathBuf {
        default_control_socket(&self.mnt)
    }

    /// Runs `lossctl ARGS`, bounded.
    pub fn lossctl(&self, args: &[&str]) -> Output {
        lossctl(args)
    }

    /// `lossctl status MNT --json`, asserting success; the parsed JSON.
    pub fn status_json(&self) -> serde_json::Value {
        self.ctl_json(&["status"])
    }

    /// `lossctl sync MNT --json`, asserting success.
    pub fn sync(&self) -> serde_json::Value {
        self.ctl_json(&["sync"])
    }

    /// `lossctl powercut MNT --json`, asserting success; the parsed report.
    pub fn powercut_json(&self) -> serde_json::Value {
        self.ctl_json(&["powercut"])
    }

    /// `lossctl powercut MNT --no-kill --json`, asserting success; the parsed report.
    pub fn powercut_nokill_json(&self) -> serde_json::Value {
        self.ctl_json(&["powercut", "--no-kill"])
    }

    /// `lossctl ARGS[0] MNT ARGS[1..] --json`, asserting success; the parsed JSON.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mnt = self.mnt.to_str().expect("utf-8 mount path");
        let mut full: Vec<&str> = vec![args[0], mnt];
        full.extend_from_slice(&args[1..]);
        full.push("--json");
        let out = lossctl(&full);
        assert!(
            out.status.success(),
            "lossctl {full:?} failed:\n{}\ndaemon stderr:\n{}",
            output_text(&out),
            self.daemon_stderr()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lossctl {full:?} printed invalid JSON ({e}):\n{}",
                output_text(&out)
            )
        })
    }

    /// SIGKILLs the daemon (the mount stays behind, dead) and reaps it.
    pub fn kill_daemon(&mut self) {
        let mut c = self.take_daemon().expect("no daemon running");
        let _ = c.kill();
        let st = wait_bounded(&mut c, Duration::from_secs(10))
            .expect("daemon did not die within 10 s of SIGKILL");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "daemon exit: {st:?}");
    }

    /// Unmounts cleanly with `fusermount3 -u` and asserts the daemon exits 0, bounded.
    pub fn unmount(&mut self) {
        // Right after a mount the daemon's readahead thread may still be in its statfs of
        // the mount point, and the unmount then fails with EBUSY (seen about once in ten
        // immediate unmounts, in both cache modes): retry, bounded, as the daemon itself
        // retries a busy unmount on SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !fusermount_u(&self.mnt, false) {
            assert!(
                Instant::now() < deadline,
                "fusermount3 -u {} failed for 2 s",
                self.mnt.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = self.take_daemon() {
            let st = wait_bounded(&mut c, Duration::from_secs(15));
            match st {
                Some(st) => assert!(
                    st.success(),
                    "daemon exited with {st:?} after unmount; stderr:\n{}",
                    self.daemon_stderr()
                ),
                None => {
                    kill_child(&mut c);
                    panic!("daemon still running 15 s after fusermount3 -u");
                }
            }
        }
    }

    /// Waits at most `timeout` for the daemon to exit (after the test unmounted it its own
    /// way); panics if it is still running or was killed by a signal (a crash).
    pub fn wait_daemon_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.take_daemon().expect("no daemon running");
        let st = match wait_bounded(&mut c, timeout) {
            Some(st) => st,
            None => {
                kill_child(&mut c);
                panic!("daemon still running {timeout:?} after the unmount");
            }
        };
        assert!(
            st.signal().is_none(),
            "daemon died of a signal ({st:?}); stderr:\n{}",
            self.daemon_stderr()
        );
        st
    }

    /// Lazily unmounts whatever is left at the mount point (after `kill_daemon`).
    pub fn lazy_unmount(&self) {
        assert!(
            fusermount_u(&self.mnt, true) || !is_mounted(&self.mnt),
            "fusermount3 -u -z {} failed",
            self.mnt.display()
        );
        assert!(
            !is_mounted(&self.mnt),
            "{} still mounted",
            self.mnt.display()
        );
    }

    /// Mounts again on the same backing directory and mount point. If the daemon is still
    /// running, unmounts it cleanly first.
    pub fn remount(&mut self) {
        if self.daemon.is_some() {
            self.unmount();
        }
        if is_mounted(&self.mnt) {
            self.lazy_unmount();
        }
        self.start();
    }

    /// Remount with other options.
    pub fn remount_with(&mut self, opts: &[&str]) {
        self.opts = opts.iter().map(|s| s.to_string()).collect();
        self.remount();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let clean = unmount_all(&self.mnt);
        if let Some(mut c) = self.take_daemon() {
            if wait_bounded(&mut c, Duration::from_secs(5)).is_none() {
                kill_child(&mut c);
            }
        }
        let clean = clean || unmount_all(&self.mnt);
        self.watchdog.take();
        if is_mounted(&self.backing) {
            let _ = run_bounded(
                Command::new("umount").arg("-l").arg(&self.backing),
                Duration::from_secs(20),
            );
        }
        if clean {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!(
                "lossfs test harness: {} is still mounted; leaving {} in place",
                self.mnt.display(),
                self.root.display()
            );
        }
    }
}

/// Runs `lossctl ARGS`, bounded by [`CMD_TIMEOUT`].
pub fn lossctl(args: &[&str]) -> Output {
    let mut c = Command::new(lossctl_bin());
    c.args(args);
    run_bounded(&mut c, CMD_TIMEOUT)
}

/// A C string from a path.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// A C string from bytes.
pub fn cstr(s: impl AsRef<OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).expect("string without NUL")
}

/// The last OS error, as an `io::Error`.
pub fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// renameat2(2) of two paths with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE); the errno
/// on failure.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Reads a whole file, panicking with the path on error.
pub fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A deterministic byte pattern for `tag` at file offset `off`.
pub fn pattern(tag: u8, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (off + i)
                .wrapping_mul(2654435761)
                .wrapping_add(tag as u64 * 97);
            (x >> 7) as u8 ^ tag
        })
        .collect()
}

/// The `files` entry of a status/powercut report whose `path` is `rel`.
pub fn report_file<'a>(report: &'a serde_json::Value, rel: &str) -> Option<&'a serde_json::Value> {
    report["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"].as_str() == Some(rel))
}

/// A JSON number field as u64, panicking with the report on mismatch.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} missing or not a number in {v}"))
}

/// `sync_file_range(2)` on `f`, asserting success.
pub fn sync_file_range(f: &std::fs::File, off: u64, len: u64, flags: u32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open fd; the kernel checks the range and flags.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), off as i64, len as i64, flags) };
    assert_eq!(
        rc,
        0,
        "sync_file_range({off}, {len}, {flags:#x}): {}",
        std::io::Error::last_os_error()
    );
}

/// Hands the kernel's dirty pages of `f` to the daemon and waits for them
/// (`sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)` over the whole file): nothing becomes
/// durable, but with the writeback cache the data has reached lossfs when this returns,
/// which a close alone does not promise on Linux 6.18 (its page writebacks may still be in
/// flight when the next request, an unlink say, arrives).  A no-op for write-through.
pub fn hand_over_dirty_pages(f: &std::fs::File) {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_file_range(f, 0, 0, flags);
}

/// Debian's python3 (`apt-get install python3`), named by path: a python3 earlier on PATH may
/// be a version manager's shim that costs a second of shell scripts per start (a crash-state
/// test starts hundreds) and lacks Debian's modules (python3-plyvel).
pub const PYTHON: &str = "/usr/bin/python3";

/// A python3 child running `script` with `args`, from `/` (so only its fds tie it to the
/// mount), stdout and stderr piped.
pub fn spawn_python(script: &str, args: &[&str]) -> ChildGuard {
    ChildGuard(
        Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn /usr/bin/python3 (apt-get install python3)"),
    )
}

/// The first line a child prints on its piped stdout (taken from it), waited for at most
/// `timeout` on a thread of its own, so that a child that prints nothing cannot hang the
/// test; `None` if no line came in time.
pub fn first_stdout_line(g: &mut ChildGuard, timeout: Duration) -> Option<String> {
    let out = g.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = io::BufRead::read_line(&mut io::BufReader::new(out), &mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok()
}
