//! `docker/entrypoint.sh`, run as a container would run it but without a Docker engine:
//! in a private mount namespace (`unshare -m --propagation private`), in its own process
//! group.  PROGRAM runs on the ready mount; SIGKILL of the whole group (what `docker kill`
//! does to a container) and a second run (`docker start`) roll the unsynced data back;
//! SIGTERM (`docker stop`) reaches PROGRAM.

use lossfs_tests::*;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Logs whether the mount is a lossfs mount in its (private) namespace, what it finds,
/// writes a synced and an unsynced file, then sleeps (or exits with `$3` if given).
const PROG: &str = r#"#!/bin/sh
mnt="$1"; log="$2"
if grep -q " $mnt [^-]* - fuse.lossfs " /proc/self/mountinfo; then echo mounted >> "$log"; fi
cd "$mnt" || exit 3
echo "start synced=$(cat synced 2>/dev/null) unsynced=$(cat unsynced 2>/dev/null)" >> "$log"
[ -n "$3" ] && exit "$3"
printf durable > synced && sync synced
printf volatile > unsynced
echo written >> "$log"
exec sleep 300
"#;

struct Container {
    root: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    prog: PathBuf,
}

impl Container {
    fn new() -> Container {
        check_preconditions();
        assert!(
            Path::new("/usr/bin/unshare").is_file() || Path::new("/bin/unshare").is_file(),
            "unshare (util-linux) is not installed; this test runs the entrypoint in a private mount namespace"
        );
        let root = unique_tmp_dir("docker");
        let c = Container {
            // The entrypoint creates both directories, as on a fresh volume.
            backing: root.join("volume/backing"),
            mnt: root.join("var/lib/kafka"),
            log: root.join("log"),
            prog: root.join("prog.sh"),
            root,
        };
        fs::write(&c.prog, PROG).expect("write prog.sh");
        let st = Command::new("chmod")
            .arg("755")
            .arg(&c.prog)
            .status()
            .expect("chmod");
        assert!(st.success());
        c
    }

    fn entrypoint() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repo")
            .join("docker/entrypoint.sh")
    }

    /// Starts the entrypoint in a private mount namespace and its own process group.
    fn start(&self, run: u32, exit_code: Option<&str>) -> ChildGuard {
        let errf = File::create(self.root.join(format!("run{run}.stderr"))).expect("stderr file");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh"])
            .arg(Self::entrypoint())
            .arg(&self.prog)
            .arg(&self.mnt)
            .arg(&self.log)
            .arg(exit_code.unwrap_or(""))
            .env("LOSSFS_BIN", lossfs_bin())
            .env("LOSSFS_BACKING", &self.backing)
            .env("LOSSFS_MOUNT", &self.mnt)
            .env(
                "LOSSFS_OPTIONS",
                format!(
                    "allow_other,default_permissions,cache={}",
                    test_cache_mode()
                ),
            )
            .env_remove("LOSSFS_RESTART")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        ChildGuard(cmd.spawn().expect("spawn unshare"))
    }

    fn stderr(&self, run: u32) -> String {
        fs::read_to_string(self.root.join(format!("run{run}.stderr"))).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The mounts lived in the private namespaces, which are gone with their processes.
        if !is_mounted(&self.mnt) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s:\n{}",
            diag()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn docker_kill_then_start_rolls_back_unsynced_data() {
    let c = Container::new();
    let mut g = c.start(0, None);
    let pgid = g.0.id() as i32;
    wait_for(
        "PROGRAM writing",
        || c.log().contains("written"),
        || format!("log:\n{}\nstderr:\n{}", c.log(), c.stderr(0)),
    );
    assert!(
        c.log().starts_with("mounted\nstart synced= unsynced=\n"),
        "PROGRAM did not start on the ready mount:\n{}",
        c.log()
    );
    assert!(
        !is_mounted(&c.mnt),
        "the mount leaked out of the private namespace"
    );
    // docker kill: SIGKILL to every process of the container at once.
    // SAFETY: kill(2) of the process group we created (pgid = our child's pid, unreaped).
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGKILL) }, 0);
    let st = wait_bounded(&mut g.0, Duration::from_secs(10)).expect("entrypoint died");
    assert_eq!(st.code(), None, "entrypoint was not killed: {st:?}");
    // The dead daemon rolled nothing back: the unsynced bytes are still in the backing dir.
    assert_eq!(read_all(&c.backing.join("unsynced")), b"volatile");

    // docker start: the next mount finds the unclean journal and rolls it back.
    let mut g = c.start(1, Some("5"));
    let st = wait_bounded(&mut g.0, Duration::from_secs(30)).expect("second run finished");
    assert_eq!(
        st.code(),
        Some(5),
        "second run did not exit with PROGRAM's status; stderr:\n{}",
        c.stderr(1)
    );
    let log = c.log();
    assert!(
        log.ends_with("mounted\nstart synced=durable unsynced=\n"),
        "after the restart PROGRAM saw:\n{log}\nstderr:\n{}",
        c.stderr(1)
    );
    assert!(
        c.stderr(1).contains("unclean journal"),
        "stderr:\n{}",
        c.stderr(1)
    );
    assert_eq!(read_all(&c.backing.join("unsynced")), b"");
    assert_eq!(read_all(&c.backing.join("synced")), b"durable");
}

#[test]
fn docker_stop_sigterm_reaches_program() {
    let c = Container::new();
    let mut g = c.start(0, None);
    wait_for(
        "PROGRAM writing",
        || c.log().contains("written"),
        || format!("log:\n{}\nstderr:\n{}", c.log(), c.stderr(0)),
    );
    // docker stop: SIGTERM to the container's PID 1 only.
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let st = wait_bounded(&mut g.0, Duration::from_secs(20)).expect("entrypoint exits on SIGTERM");
    assert_eq!(st.code(), Some(143), "stderr:\n{}", c.stderr(0));
    // A clean unmount: everything durable, nothing to roll back next time.
    assert_eq!(read_all(&c.backing.join("unsynced")), b"volatile");
}

#[test]
fn entrypoint_without_program_is_a_usage_error() {
    let out = run_bounded(
        Command::new("sh").arg(Container::entrypoint()),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no program"));
}
