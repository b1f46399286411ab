//! `-o lazyfs_fifo=PATH`: LazyFS commands written to the FIFO act on the mount
//! (clear-cache = power cut without kill, cache-checkpoint = sync, the two reports are
//! logged); unknown and malformed lines are logged as errors and change nothing.

use lossfs_tests::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

fn send(fifo: &Path, line: &[u8]) {
    // The daemon holds the FIFO open for reading, so this open does not block.
    let mut f = OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap_or_else(|e| panic!("open {}: {e}", fifo.display()));
    f.write_all(line).expect("write to the FIFO");
}

fn wait_until(what: &str, m: &Mount, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} within 20 s; daemon stderr:\n{}",
            m.daemon_stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `lossfs BACKING MNT -o lazyfs_fifo=FIFO -f` fails saying `why`, and mounts nothing.
fn assert_fifo_refused(backing: &Path, mnt: &Path, fifo: &Path, why: &str) {
    let out = run_bounded(
        std::process::Command::new(lossfs_bin())
            .arg(backing)
            .arg(mnt)
            .args(cache_args())
            .arg("-o")
            .arg(format!("lazyfs_fifo={}", fifo.display()))
            .arg("-f"),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(why),
        "{}",
        output_text(&out)
    );
    assert!(!is_mounted(mnt), "left a mount behind");
}

#[test]
fn lazyfs_fifo_commands_act_on_the_mount() {
    check_preconditions();
    let dir = unique_tmp_dir("lazyfs");
    let fifo = dir.join("faults.fifo");
    let opt = format!("lazyfs_fifo={}", fifo.display());
    let m = Mount::new(&[&opt, "log=info"]);
    let ft = fs::symlink_metadata(&fifo)
        .expect("the FIFO was created")
        .file_type();
    assert!(ft.is_fifo(), "{} is not a FIFO", fifo.display());

    // Unknown and malformed lines: errors, nothing done.
    fs::write(m.path("a"), b"unsynced").expect("write");
    send(
        &fifo,
        b"lazyfs::crash::timing=before::op=write::from_rgx=a\n\xff\xfe\n",
    );
    wait_until("two errors logged", &m, || {
        m.daemon_stderr().matches("not done").count() >= 2
    });
    let err = m.daemon_stderr();
    assert!(
        err.contains("unknown command \"lazyfs::crash::timing"),
        "{err}"
    );
    assert!(err.contains("not UTF-8"), "{err}");
    assert!(
        !err.contains(" done ("),
        "an unknown line was reported as done:\n{err}"
    );
    assert_eq!(num(&m.status_json(), "unsynced_bytes"), 8);

    send(
        &fifo,
        b"lazyfs::display-cache-usage\nlazyfs::unsynced-data-report\n",
    );
    wait_until("the reports logged", &m, || {
        m.daemon_stderr().contains("unsynced-data-report:")
    });
    assert!(
        m.daemon_stderr()
            .contains("display-cache-usage: 8 unsynced bytes in 1 files"),
        "{}",
        m.daemon_stderr()
    );

    // clear-cache: the unsynced bytes are gone, and no process was killed (we hold a file
    // open on the mount).
    let held = fs::File::open(m.path("a")).expect("open");
    send(&fifo, b"lazyfs::clear-cache\n");
    wait_until("clear-cache done", &m, || {
        m.daemon_stderr().contains("clear-cache done")
    });
    assert_eq!(
        read_all(&m.path("a")),
        b"",
        "unsynced bytes survived clear-cache"
    );
    drop(held);

    // cache-checkpoint: everything written becomes durable.
    fs::write(m.path("b"), b"kept").expect("write");
    send(&fifo, b"lazyfs::cache-checkpoint\n");
    wait_until("cache-checkpoint done", &m, || {
        m.daemon_stderr().contains("cache-checkpoint done")
    });
    assert_eq!(num(&m.status_json(), "unsynced_bytes"), 0);
    let cut = m.powercut_nokill_json();
    assert_eq!(num(&cut, "lost_bytes"), 0, "{cut}");
    assert_eq!(read_all(&m.path("b")), b"kept");
    drop(m);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn lazyfs_fifo_on_a_regular_file_is_refused() {
    check_preconditions();
    let dir = unique_tmp_dir("lazyfs-bad");
    let (b, mnt, not_fifo) = (dir.join("b"), dir.join("m"), dir.join("plain"));
    fs::create_dir(&b).expect("mkdir");
    fs::create_dir(&mnt).expect("mkdir");
    fs::write(&not_fifo, b"").expect("write");
    assert_fifo_refused(&b, &mnt, &not_fifo, "is not a FIFO");
    let _ = fs::remove_dir_all(&dir);
}

/// Whoever may write to the FIFO cuts and syncs the mount: the one lossfs creates is
/// closed to other users, and one that another user made (and could write) is refused.
#[test]
fn only_the_daemons_user_may_write_to_the_fifo() {
    check_preconditions();
    let dir = unique_tmp_dir("lazyfs-private");
    let fifo = dir.join("cmd.fifo");
    let opt = format!("lazyfs_fifo={}", fifo.display());
    let m = Mount::new(&[&opt]);
    fs::write(m.path("a"), b"unsynced").expect("write");
    // User nobody may not open it for writing (the daemon holds it open, so a permitted
    // open would not block).
    let out = run_bounded(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([
                "sh",
                "-c",
                "echo lazyfs::clear-cache > \"$0\"",
                fifo.to_str().unwrap(),
            ]),
        Duration::from_secs(20),
    );
    assert!(
        !out.status.success(),
        "nobody wrote to the FIFO: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        output_text(&out)
    );
    // Nothing was cut: the unsynced bytes are still there.
    assert!(
        num(&m.status_json(), "unsynced_bytes") > 0,
        "{}",
        m.daemon_stderr()
    );
    drop(m);

    // A FIFO that belongs to nobody: refused, the mount never happens.
    let theirs = dir.join("theirs.fifo");
    let out = run_bounded(
        std::process::Command::new("mkfifo").args(["-m", "600", theirs.to_str().unwrap()]),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "mkfifo: {}", output_text(&out));
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown the FIFO");
    let (b, mnt) = (dir.join("b"), dir.join("m"));
    fs::create_dir(&b).expect("mkdir");
    fs::create_dir(&mnt).expect("mkdir");
    assert_fifo_refused(&b, &mnt, &theirs, "belongs to uid 65534");
    let _ = fs::remove_dir_all(&dir);
}
