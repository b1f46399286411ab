//! `lossfs run`: PROGRAM starts on the ready mount, its exit status becomes the run's, a
//! power cut that kills it ends the run with 137 (or restarts it on the rolled-back data
//! with `--restart`), SIGTERM is forwarded, and the mount is gone afterwards; as PID 1 of a
//! PID namespace (a container) it reaps orphans and passes SIGTERM on.

use lossfs_tests::*;
use std::fs::{self, File};
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

struct RunDir {
    root: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    prog: PathBuf,
    stderr: PathBuf,
}

impl RunDir {
    fn new(tag: &str) -> RunDir {
        check_preconditions();
        let root = unique_tmp_dir(tag);
        let d = RunDir {
            backing: root.join("backing"),
            mnt: root.join("mnt"),
            log: root.join("log"),
            prog: root.join("prog.sh"),
            stderr: root.join("run.stderr"),
            root,
        };
        fs::create_dir(&d.backing).expect("mkdir backing");
        fs::create_dir(&d.mnt).expect("mkdir mnt");
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
        cmd.arg("run")
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mount")
            .arg(&self.mnt)
            .args(cache_args())
            .args(extra)
            .arg("--")
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}")),
        )
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

    fn wait_exit(&self, child: &mut Child) -> std::process::ExitStatus {
        wait_bounded(child, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "lossfs run still running after 30 s; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if unmount_all(&self.mnt) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
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
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(127), "run exit; stderr:\n{}", d.stderr());
    assert!(
        d.stderr().contains("cannot start /nonexistent/program"),
        "stderr:\n{}",
        d.stderr()
    );
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
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(137), "run exit; stderr:\n{}", d.stderr());
    assert!(
        d.stderr().contains("was killed by a power cut"),
        "stderr:\n{}",
        d.stderr()
    );
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
    let missing = d.root.join("missing");
    let out = run_bounded(
        Command::new(lossfs_bin())
            .arg("run")
            .arg("--backing")
            .arg(&missing)
            .arg("--mount")
            .arg(&d.mnt)
            .args(cache_args())
            .arg("--")
            .arg("touch")
            .arg(&marker),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        output_text(&out)
    );
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
    let errf = File::create(&d.stderr).expect("create run.stderr");
    let outf = d.root.join("run.stdout");
    // A new PID namespace (lossfs run is its PID 1) with its own /proc, and so its own
    // mount namespace: the mount disappears with the namespace.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
    ])
    .arg(lossfs_bin())
    .arg("run")
    .arg("--backing")
    .arg(&d.backing)
    .arg("--mount")
    .arg(&d.mnt)
    .args(cache_args())
    .arg("--")
    .arg("sh")
    .arg(&prog)
    .arg(&pidfile)
    .stdin(Stdio::null())
    .stdout(Stdio::from(File::create(&outf).expect("create run.stdout")))
    .stderr(Stdio::from(errf));
    let mut g = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
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
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
    ])
    .arg(lossfs_bin())
    .arg("run")
    .arg("--backing")
    .arg(&d.backing)
    .arg("--mount")
    .arg(&d.mnt)
    .args(cache_args())
    .args(["--", "sh", "-c", "exit 7"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut g = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
    let st = d.wait_exit(&mut g.0);
    assert_eq!(st.code(), Some(7), "{st:?}");

    // SIGTERM to PID 1 (what `docker stop` sends) reaches PROGRAM through the run.
    let up = d.root.join("up");
    let script = format!(
        "trap 'exit 42' TERM; echo up > {}; while :; do sleep 0.05; done",
        up.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
    ])
    .arg(lossfs_bin())
    .arg("run")
    .arg("--backing")
    .arg(&d.backing)
    .arg("--mount")
    .arg(&d.mnt)
    .args(cache_args())
    .args(["--", "sh", "-c", &script])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut g = ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
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
