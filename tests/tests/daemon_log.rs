//! The daemon's log: kept in a file once a daemon without `-f` detaches (or where
//! `log_file=` says), plain text when not written to a terminal, and free of messages that
//! report expected events (a process killed mid-request, a clean unmount) as failures.

use lossfs_tests::{
    cache_args, check_preconditions, fusermount_u, is_lossfs_mounted, lossctl, lossfs_bin,
    run_bounded, spawn_python, unique_tmp_dir, unmount_all, Mount, MountSetup,
};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// The lines of a log that are warnings or errors.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// Pid of the running lossfs whose command line names `backing`, if any.
fn lossfs_serving(backing: &Path) -> Option<i32> {
    let needle = backing.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let is_lossfs = cmd.split(|&b| b == 0).next()?.ends_with(b"lossfs");
        (is_lossfs && cmd.windows(needle.len()).any(|w| w == needle)).then_some(pid)
    })
}

/// Waits (bounded) until a file contains `text`; its content at the end.
fn wait_contains(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = fs::read_to_string(path).unwrap_or_default();
        if s.contains(text) || Instant::now() >= deadline {
            return s;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts and removes a test directory also when the test fails.
struct Cleanup {
    root: PathBuf,
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if unmount_all(&self.mnt) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

#[test]
fn a_detached_daemon_logs_to_its_state_dir() {
    check_preconditions();
    let root = unique_tmp_dir("detached-log");
    let (backing, mnt) = (root.join("backing"), root.join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup {
        root: root.clone(),
        mnt: mnt.clone(),
    };
    // No -f: lossfs returns once the mount is ready and its daemon runs on, detached.
    let out = run_bounded(
        Command::new(lossfs_bin())
            .arg(&backing)
            .arg(&mnt)
            .args(cache_args())
            .args(["-o", "log=info"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "lossfs: {out:?}");
    assert!(is_lossfs_mounted(&mnt));
    let daemon = lossfs_serving(&backing).expect("the detached daemon's pid");
    // A power cut is logged (at info) after the detach: only a log that outlives stderr
    // has it.
    let cut = lossctl(&["powercut", mnt.to_str().unwrap()]);
    assert!(cut.status.success(), "{cut:?}");
    assert!(fusermount_u(&mnt, false));
    let log_path = backing.join(".lossfs/lossfs.log");
    let log = wait_contains(&log_path, "power cut on");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{daemon}")).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log.contains("power cut on"),
        "{}:\n{log}",
        log_path.display()
    );
    assert!(!log.contains('\x1b'), "colour codes in a file:\n{log}");
}

#[test]
fn log_file_option_takes_the_log() {
    let root = unique_tmp_dir("log-file");
    let log_path = root.join("daemon.log");
    let opt = format!("log_file={},log=info", log_path.display());
    let mut m = Mount::new_with(&[&opt], MountSetup::default());
    m.unmount();
    let log = fs::read_to_string(&log_path).expect("the log file");
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a file:\n{log}");
    assert!(
        !m.daemon_stderr().contains("mounted"),
        "the log went to stderr too:\n{}",
        m.daemon_stderr()
    );
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn stderr_that_is_no_terminal_gets_no_colour_codes() {
    let mut m = Mount::new(&["log=info"]);
    m.unmount();
    let log = m.daemon_stderr();
    assert!(log.contains("mounted"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes:\n{log}");
}

#[test]
fn killing_a_program_mid_request_and_a_clean_unmount_log_no_warning() {
    // Every warning on (LOSSFS_LOG is a full filter spec: fuser's own warnings too), as a
    // user chasing a problem sets it.  The kernel sends an INTERRUPT for the request a
    // killed program waits on; fuser's answer to it fails (ENOENT) when another thread has
    // answered the request itself in between: a race this test makes possible but cannot
    // force.  The second unmount fuser tries after `fusermount3 -u` fails every time.
    let mut m = Mount::new_with(
        &[],
        MountSetup {
            env: vec![("LOSSFS_LOG".into(), "warn".into())],
            ..Default::default()
        },
    );
    // Big writes and fsyncs back to back: the worker is nearly always serving one when the
    // kill comes.
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
block = b"x" * (1 << 20)
print("ready", flush=True)
while True:
    for i in range(8):
        os.pwrite(fd, block, i << 20)
    os.fsync(fd)
"#;
    let path = m.path("f");
    let mut child = spawn_python(script, &[path.to_str().unwrap()]);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "python: {line:?}");
    thread::sleep(Duration::from_millis(300));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    m.unmount();
    let log = m.daemon_stderr();
    assert!(warnings(&log).is_empty(), "daemon log:\n{log}");
}
