//! `lossfs run`: PROGRAM starts on the ready mount, its exit status becomes the run's, a
//! power cut that kills it ends the run with 137 (or restarts it on the rolled-back data
//! with `--restart`), SIGTERM is forwarded, and the mount is gone afterwards; as PID 1 of a
//! PID namespace (a container) it reaps orphans and passes SIGTERM on.

use lossfs_tests::scratch::ScratchMount;
use lossfs_tests::*;
use std::fs::{self, File};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A PROGRAM for `lossfs run`: records what it finds in the mount to `$1/../starts`, writes
/// a synced and an unsynced file, then sleeps (exec, so a signal to PROGRAM reaches sleep).
const PROG: &str = r#"#!/bin/sh
mnt="$1"; log="$2"
cd "$mnt" || exit 3
echo "start synced=$(cat synced 2>/dev/null) unsynced=$(cat unsynced 2>/dev/null)" >> "$log"
printf durable > synced && sync synced
printf volatile > unsynced
echo written >> "$log"
exec sleep 300
"#;

/// The mount's directories (root, backing, mnt), plus PROGRAM's log and script and the
/// run's stderr.
struct RunDir {
    dirs: ScratchMount,
    log: PathBuf,
    prog: PathBuf,
    stderr: PathBuf,
}

impl Deref for RunDir {
    type Target = ScratchMount;
    fn deref(&self) -> &ScratchMount {
        &self.dirs
    }
}

/// `unshare` arguments that make the command after them PID 1 of a new PID namespace with
/// its own /proc, and so its own mount namespace: its mounts disappear with it.
const PID_NAMESPACE: [&str; 5] = [
    "--pid",
    "--fork",
    "--mount-proc",
    "--propagation",
    "private",
];

impl RunDir {
    fn new(tag: &str) -> RunDir {
        let dirs = ScratchMount::new(tag);
        let d = RunDir {
            log: dirs.root.join("log"),
            prog: dirs.root.join("prog.sh"),
            stderr: dirs.root.join("run.stderr"),
            dirs,
        };
        fs::write(&d.prog, PROG).expect("write prog.sh");
        let ok = Command::new("chmod")
            .arg("755")
            .arg(&d.prog)
            .status()
            .expect("chmod");
        assert!(ok.success(), "chmod prog.sh failed");
        d
    }

    /// Starts `lossfs run [extra] -- PROGRAM...` with stderr to a file.
    fn spawn(&self, extra: &[&str], program: &[&str]) -> ChildGuard {
        let errf = File::create(&self.stderr).expect("create run.stderr");
        let mut cmd = Command::new(lossfs_bin());
        cmd.args(self.run_args())
            .args(extra)
            .arg("--")
            .args(program)
            .stderr(Stdio::from(errf));
        spawn_guarded(cmd, Stdio::null())
    }

    /// Starts `lossfs run -- PROGRAM...` as PID 1 of a new PID namespace (a container's
    /// entrypoint), with stderr to a file and stdout to `stdout`.
    fn spawn_as_pid1(&self, program: &[&str], stdout: Stdio) -> ChildGuard {
        let errf = File::create(&self.stderr).expect("create run.stderr");
        let mut cmd = Command::new("unshare");
        cmd.args(PID_NAMESPACE)
            .arg(lossfs_bin())
            .args(self.run_args())
            .arg("--")
            .args(program)
            .stderr(Stdio::from(errf));
        spawn_guarded(cmd, stdout)
    }

    fn spawn_prog(&self, extra: &[&str]) -> ChildGuard {
        let prog = self.prog.to_str().expect("utf-8");
        let mnt = self.mnt.to_str().expect("utf-8");
        let log = self.log.to_str().expect("utf-8");
        self.spawn(extra, &[prog, mnt, log])
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until PROGRAM has logged `n` "written" lines.
    fn wait_written(&self, n: usize, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("written").count() < n {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "lossfs run exited ({st:?}) before PROGRAM wrote {n} times; log:\n{}\nstderr:\n{}",
                    self.log(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "PROGRAM did not write {n} times within 20 s; log:\n{}\nstderr:\n{}",
                self.log(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the run to end, and asserts it ended with `code` and said `says` on stderr.
    fn expect_exit(&self, child: &mut Child, code: i32, says: &str) {
        let st = self.wait_exit(child);
        let err = self.stderr();
        assert!(
            st.code() == Some(code) && err.contains(says),
            "run exit {st:?}, expected {code} with {says:?} on stderr:\n{err}"
        );
    }

    fn wait_exit(&self, child: &mut Child) -> std::process::ExitStatus {
        wait_bounded(child, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "lossfs run still running after 30 s; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

/// Spawns `cmd` with no stdin and its stdout to `stdout`; killed and reaped at drop.
fn spawn_guarded(mut cmd: Command, stdout: Stdio) -> ChildGuard {
    cmd.stdin(Stdio::null()).stdout(stdout);
    ChildGuard(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}")),
    )
}

fn powercut(mnt: &Path) -> serde_json::Value {
    let out = lossctl(&["powercut", mnt.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "powercut: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("powercut JSON")
}

#[test]
fn exit_status_of_program_is_the_runs() {
    let d = RunDir::new("run-exit");
    let mut g = d.spawn(
        &[],
        &[
            "sh",
            "-c",
            "test -d \"$0\" && grep -q \" $0 \" /proc/self/mountinfo && exit 7",
            d.mnt.to_str().unwrap(),
        ],
    );
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(7), "run exit; stderr:\n{}", d.stderr());
    assert!(
        !is_mounted(&d.mnt),
        "mount left behind after PROGRAM exited"
    );

    // PROGRAM starts with no blocked signals (the daemon blocks SIGTERM/SIGINT/SIGHUP in
    // its own threads) and with the umask of the run, not the daemon's 0.
    let mut g = d.spawn(
        &[],
        &["grep", "-q", "^SigBlk:[[:space:]]*0*$", "/proc/self/status"],
    );
    let st = d.wait_exit(&mut g.0);
    assert_eq!(
        st.code(),
        Some(0),
        "PROGRAM has blocked signals; stderr:\n{}",
        d.stderr()
    );
    // SAFETY: umask has no preconditions; it is set back at once.
    let mask = unsafe {
        let m = libc::umask(0o027);
        libc::umask(m);
        m
    };
    let mut g = d.spawn(
        &[],
        &[
            "sh",
            "-c",
            "test \"$(umask)\" = \"$0\"",
            &format!("{mask:04o}"),
        ],
    );
    let st = d.wait_exit(&mut g.0);
    assert_eq!(
        st.code(),
        Some(0),
        "PROGRAM's umask is not {mask:04o}; stderr:\n{}",
        d.stderr()
    );

    // A PROGRAM that does not exist: 127, nothing left mounted.
    let mut g = d.spawn(&[], &["/nonexistent/program"]);
    d.expect_exit(&mut g.0, 127, "cannot start /nonexistent/program");
    assert!(!is_mounted(&d.mnt), "mount left behind");
}

#[test]
fn powercut_ends_the_run_and_keeps_only_synced_data() {
    let d = RunDir::new("run-cut");
    let mut g = d.spawn_prog(&[]);
    d.wait_written(1, &mut g.0);
    assert!(is_lossfs_mounted(&d.mnt), "not mounted while PROGRAM runs");
    let report = powercut(&d.mnt);
    assert_eq!(num(&report, "lost_bytes"), 8, "report: {report}");
    d.expect_exit(&mut g.0, 137, "was killed by a power cut");
    assert!(!is_mounted(&d.mnt), "mount left behind after the run");
    assert_eq!(read_all(&d.backing.join("synced")), b"durable");
    assert_eq!(
        read_all(&d.backing.join("unsynced")),
        b"",
        "unsynced data survived"
    );
    assert_eq!(
        d.log().matches("start").count(),
        1,
        "PROGRAM restarted without --restart"
    );
}

#[test]
fn restart_runs_program_again_on_rolled_back_data_and_sigterm_stops_it() {
    let d = RunDir::new("run-restart");
    let mut g = d.spawn_prog(&["--restart"]);
    d.wait_written(1, &mut g.0);
    powercut(&d.mnt);
    d.wait_written(2, &mut g.0);
    let log = d.log();
    let starts: Vec<&str> = log.lines().filter(|l| l.starts_with("start")).collect();
    assert_eq!(
        starts,
        ["start synced= unsynced=", "start synced=durable unsynced="],
        "log:\n{log}\nstderr:\n{}",
        d.stderr()
    );
    assert!(
        d.stderr().contains("starting it again"),
        "stderr:\n{}",
        d.stderr()
    );
    // SIGTERM to the run reaches PROGRAM (exec'd sleep), which dies of it: 128+15.
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(143), "run exit; stderr:\n{}", d.stderr());
    assert!(!is_mounted(&d.mnt), "mount left behind after SIGTERM");
    // The clean unmount made the second run's unsynced write durable.
    assert_eq!(read_all(&d.backing.join("unsynced")), b"volatile");
}

/// Sends one RESP command and returns the first reply line.
fn redis_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

#[test]
fn redis_server_runs_on_the_mount_and_stops_cleanly_on_sigterm() {
    let d = RunDir::new("run-redis");
    let redis = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("redis-server is not installed (apt-get install -y redis-server); this test runs it under lossfs run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
        .to_string();
    let mnt = d.mnt.to_str().expect("utf-8");
    let mut g = d.spawn(
        &[],
        &[
            redis,
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--dir",
            mnt,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ],
    );
    let port: u16 = port.parse().expect("port");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_cmd(port, &["PING"]).ok().as_deref() != Some("+PONG") {
        if let Ok(Some(st)) = g.0.try_wait() {
            panic!(
                "lossfs run exited ({st:?}) before redis answered; stderr:\n{}",
                d.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "redis did not answer PING within 30 s; stderr:\n{}",
            d.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        redis_cmd(port, &["SET", "lossfs-key", "lossfs-value"]).expect("SET"),
        "+OK"
    );
    // appendfsync always: the write is durable at once.
    let status = lossctl(&["status", mnt, "--json"]);
    assert!(status.status.success(), "status: {}", output_text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(num(&status, "unsynced_bytes"), 0, "status: {status}");
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let st = d.wait_exit(&mut g.0);
    assert_eq!(
        st.code(),
        Some(0),
        "redis did not shut down cleanly; stderr:\n{}",
        d.stderr()
    );
    assert!(!is_mounted(&d.mnt), "mount left behind after redis exited");
    let aof_dir = d.backing.join("appendonlydir");
    let found = fs::read_dir(&aof_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", aof_dir.display()))
        .filter_map(Result::ok)
        .any(|e| {
            fs::read(e.path())
                .map(|b| b.windows(12).any(|w| w == b"lossfs-value"))
                .unwrap_or(false)
        });
    assert!(found, "the SET is not in the AOF in {}", aof_dir.display());
}

#[test]
fn a_mount_that_fails_never_starts_program() {
    let d = RunDir::new("run-nomount");
    let marker = d.root.join("started");
    fs::remove_dir(&d.backing).expect("remove the backing directory");
    let mut g = d.spawn(&[], &["touch", marker.to_str().unwrap()]);
    d.expect_exit(&mut g.0, 1, "does not exist");
    assert!(!marker.exists(), "PROGRAM ran although the mount failed");
    assert!(!is_mounted(&d.mnt));
}

/// PROGRAM runs as the user of `lossfs run` and inherits nothing of the daemon's: no
/// /dev/fuse fd, no control socket, no LazyFS FIFO.  So a PROGRAM that drops to another user
/// (as servers do) can neither cut nor sync the mount: the socket and the FIFO refuse it.
#[test]
fn a_program_that_drops_privileges_cannot_control_the_mount() {
    let d = RunDir::new("run-drop");
    let fifo = d.root.join("cmd.fifo");
    let fds = d.root.join("fds");
    let out = d.root.join("as-nobody");
    let script = r#"
ls -l /proc/$$/fd/ > "$2"
setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c '
  "$0" powercut "$1"; echo "powercut exit $?"
  "$0" sync "$1"; echo "sync exit $?"
  echo lazyfs::clear-cache > "$2" && echo "fifo written"
' "$3" "$1" "$4" > "$5" 2>&1
exit 0
"#;
    let opt = format!("lazyfs_fifo={}", fifo.display());
    let lossctl = lossctl_bin();
    let mut child = d.spawn(
        &["-o", &opt],
        &[
            "sh",
            "-c",
            script,
            "sh",
            d.mnt.to_str().unwrap(),
            fds.to_str().unwrap(),
            lossctl.to_str().unwrap(),
            fifo.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let st = d.wait_exit(&mut child.0);
    assert!(st.success(), "{st:?}; stderr:\n{}", d.stderr());
    let fds = fs::read_to_string(&fds).expect("PROGRAM listed its fds");
    for leaked in ["/dev/fuse", "socket:", fifo.to_str().unwrap()] {
        assert!(!fds.contains(leaked), "PROGRAM inherited {leaked}:\n{fds}");
    }
    let out = fs::read_to_string(&out).expect("PROGRAM ran the commands as nobody");
    assert!(
        out.contains("powercut exit 3") && out.contains("sync exit 3"),
        "lossctl as nobody was not refused:\n{out}"
    );
    assert!(
        out.contains("Permission denied") && !out.contains("fifo written"),
        "nobody wrote to the FIFO:\n{out}"
    );
    assert!(
        !d.stderr().contains("power cut"),
        "a cut happened: {}",
        d.stderr()
    );
}

/// PROGRAM for the PID 1 test: leaves an orphan (a child of a shell that exits at once, so
/// the kernel hands it to PID 1), then waits, bounded, until the orphan is reaped (a zombie
/// keeps its /proc entry until then).  Exits 0 once it is gone, 3 if it stays.
const ORPHAN_PROG: &str = r#"#!/bin/sh
pidfile="$1"
sh -c 'sleep 0.2 & echo $! > "$1"' sh "$pidfile"
orphan=$(cat "$pidfile")
echo "orphan $orphan, parent $(awk '{print $4}' /proc/$orphan/stat 2>/dev/null)"
i=0
while [ -e "/proc/$orphan" ]; do
    i=$((i + 1))
    if [ "$i" -ge 400 ]; then
        echo "orphan $orphan not reaped after 20 s: $(cat /proc/$orphan/stat)"
        exit 3
    fi
    sleep 0.05
done
echo reaped
"#;

/// As the first process of a PID namespace (a container's entrypoint), `lossfs run` reaps
/// the orphans the kernel hands it, and still passes PROGRAM's exit status on.
#[test]
fn as_pid_1_it_reaps_orphans_and_keeps_the_exit_status() {
    let d = RunDir::new("run-pid1");
    let prog = d.root.join("orphan.sh");
    fs::write(&prog, ORPHAN_PROG).expect("write orphan.sh");
    let pidfile = d.root.join("orphan.pid");
    let outf = d.root.join("run.stdout");
    let mut g = d.spawn_as_pid1(
        &["sh", prog.to_str().unwrap(), pidfile.to_str().unwrap()],
        Stdio::from(File::create(&outf).expect("create run.stdout")),
    );
    let st = d.wait_exit(&mut g.0);
    let out = fs::read_to_string(&outf).unwrap_or_default();
    assert!(
        st.success() && out.contains("reaped"),
        "lossfs run as PID 1: {st:?}\nstdout:\n{out}\nstderr:\n{}",
        d.stderr()
    );
    assert!(
        out.contains(", parent 1\n"),
        "the orphan went to PID 1:\n{out}"
    );

    // The status of PROGRAM still comes through PID 1.
    let mut g = d.spawn_as_pid1(&["sh", "-c", "exit 7"], Stdio::null());
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(7), "{st:?}");

    // SIGTERM to PID 1 (what `docker stop` sends) reaches PROGRAM through the run.
    let up = d.root.join("up");
    let script = format!(
        "trap 'exit 42' TERM; echo up > {}; while :; do sleep 0.05; done",
        up.display()
    );
    let mut g = d.spawn_as_pid1(&["sh", "-c", &script], Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up.exists() {
        assert!(
            Instant::now() < deadline,
            "PROGRAM did not start within 20 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // PID 1 of the namespace is unshare's only child.
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", g.0.id()))
        .expect("children of unshare");
    let pid1: i32 = children.trim().parse().expect("one child of unshare");
    // SAFETY: kill(2) of a process of this test (it cannot be reaped while unshare waits).
    assert_eq!(unsafe { libc::kill(pid1, libc::SIGTERM) }, 0);
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(42), "PROGRAM's TERM trap: {st:?}");
}
