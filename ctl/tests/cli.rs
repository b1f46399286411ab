//! Runs the `lossctl` binary: discovery errors and exit codes against real paths, and every
//! command against a fake daemon's control socket (through `--socket`).

use lossfs::control::{ControlHandler, ControlServer};
use lossfs::error::{FsError, FsResult};
use lossfs::report::{FileLoss, PowercutReport, StatusReport, SyncReport};
use std::os::unix::net::UnixListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn lossctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lossctl"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn a_path_that_is_not_a_lossfs_mount_exits_3() {
    let out = lossctl(&["status", "/tmp"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("lossctl: /tmp is not a lossfs mount (it is on "),
        "{err}"
    );
    assert!(err.contains(" mounted at /"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_path_exits_3() {
    let out = lossctl(&["powercut", "/no/such/lossfs/dir"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr),
        "lossctl: /no/such/lossfs/dir: no such file or directory\n"
    );
    let out = lossctl(&["powercut", "--json", "/no/such/lossfs/dir"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["error"], "/no/such/lossfs/dir: no such file or directory");
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let out = lossctl(&["powercut", "--all", "/tmp"]);
    assert_eq!(out.status.code(), Some(2));
    let out = lossctl(&["status", "--timeout", "0", "/tmp"]);
    assert_eq!(out.status.code(), Some(2));
    let out = lossctl(&["--socket", "/x.sock", "status", "/tmp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("either --socket or a mount point"));
    let out = lossctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for line in [
        "0  success",
        "1  the lossfs daemon",
        "2  usage",
        "3  not a lossfs",
        "4  no valid answer",
    ] {
        assert!(help.contains(line), "help lacks {line:?}:\n{help}");
    }
}

struct Fake {
    powercuts: AtomicUsize,
    no_kill_seen: AtomicUsize,
}

impl ControlHandler for Fake {
    fn status(&self) -> FsResult<StatusReport> {
        Ok(StatusReport {
            mountpoint: "/fake".into(),
            backing: "/fake-backing".into(),
            unsynced_bytes: 4096,
            ..Default::default()
        })
    }
    fn sync(&self) -> FsResult<SyncReport> {
        // EIO: errno 5 on Linux.
        Err(FsError::new(5, "fsync of data/log failed"))
    }
    fn powercut(&self, no_kill: bool) -> FsResult<PowercutReport> {
        self.powercuts.fetch_add(1, Ordering::SeqCst);
        if no_kill {
            self.no_kill_seen.fetch_add(1, Ordering::SeqCst);
        }
        Ok(PowercutReport {
            mountpoint: "/fake".into(),
            files: vec![FileLoss {
                path: Some("wal".into()),
                size_before: 100,
                size_after: 40,
                lost: vec![],
                lost_bytes: 60,
                error: None,
                ..Default::default()
            }],
            lost_bytes: 60,
            ..Default::default()
        })
    }
}

fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lossctl-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn commands_against_a_fake_daemon() {
    let dir = temp_dir("fake");
    let sock = dir.path().join("ctl.sock");
    let fake = Arc::new(Fake {
        powercuts: AtomicUsize::new(0),
        no_kill_seen: AtomicUsize::new(0),
    });
    let handler: Arc<dyn ControlHandler> = fake.clone();
    let server = ControlServer::start(&sock, handler).unwrap();
    let s = sock.to_str().unwrap();

    let out = lossctl(&["--socket", s, "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("4096 unsynced bytes in 0 files"));

    let out = lossctl(&["status", "--json", "--socket", s]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backing"], "/fake-backing");

    let out = lossctl(&["--socket", s, "sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("lossctl: {s}: fsync of data/log failed: Input/output error (os error 5)\n")
    );

    // With --json the error is JSON on stdout as well.
    let out = lossctl(&["--socket", s, "--json", "sync"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "error": format!("{s}: fsync of data/log failed: Input/output error (os error 5)"),
            "exit_code": 1
        })
    );

    let out = lossctl(&["--socket", s, "powercut", "--no-kill"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("wal: lost 60 bytes, size 100 -> 40"));
    let out = lossctl(&["--socket", s, "--json", "powercut"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lost_bytes"], 60);
    assert_eq!(fake.powercuts.load(Ordering::SeqCst), 2);
    assert_eq!(fake.no_kill_seen.load(Ordering::SeqCst), 1);

    server.shutdown();
    let out = lossctl(&["--socket", s, "status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains("cannot connect to control socket"), "{err}");
    assert!(err.contains(s), "{err}");
}

#[test]
fn a_daemon_that_never_answers_exits_4_after_the_timeout() {
    let dir = temp_dir("mute");
    let sock = dir.path().join("mute.sock");
    // Listening but never accepting: connect succeeds, no answer ever comes.
    let _listener = UnixListener::bind(&sock).unwrap();
    let started = Instant::now();
    let out = lossctl(&[
        "--timeout",
        "1",
        "--socket",
        sock.to_str().unwrap(),
        "status",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no answer from"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
