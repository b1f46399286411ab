//! The lossfs daemon itself SIGKILLed: the mount is left dead, a lazy unmount clears it,
//! and the next mount rolls the unclean journal back (or keeps the data with
//! `recover=keep`).

use lossfs_tests::{pattern, read_all, Mount};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Leaves "a" with 4096 durable bytes plus unsynced overwrite and append, and "b" unsynced.
fn dirty_files(m: &Mount) -> (Vec<u8>, Vec<u8>) {
    let durable = pattern(20, 0, 4096);
    let f = fs::File::create(m.path("a")).unwrap();
    f.write_all_at(&durable, 0).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"OVERWRITE", 10).unwrap();
    f.write_all_at(&pattern(21, 4096, 3000), 4096).unwrap();
    let mut current = durable.clone();
    current[10..19].copy_from_slice(b"OVERWRITE");
    current.extend_from_slice(&pattern(21, 4096, 3000));
    drop(f);
    let mut g = fs::File::create(m.path("b")).unwrap();
    g.write_all(b"never synced").unwrap();
    drop(g);
    (durable, current)
}

fn kill_and_clear(m: &mut Mount) {
    m.kill_daemon();
    let err = fs::metadata(m.path("a")).expect_err("dead mount must not answer");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "dead mount should give ENOTCONN: {err}"
    );
    m.lazy_unmount();
}

#[test]
fn daemon_sigkill_then_remount_rolls_back() {
    let mut m = Mount::new(&[]);
    let (durable, _) = dirty_files(&m);
    kill_and_clear(&mut m);
    m.remount();
    assert_eq!(read_all(&m.path("a")), durable, "a must be rolled back");
    assert_eq!(
        read_all(&m.path("b")),
        b"",
        "b must be rolled back to empty"
    );
    let log = m.daemon_stderr().to_lowercase();
    assert!(
        log.contains("roll") || log.contains("recover"),
        "remount should say on stderr that it rolled back an unclean journal; got:\n{log}"
    );
    // The recovered state is a clean starting point: nothing unsynced remains.
    let st = m.status_json();
    assert_eq!(lossfs_tests::num(&st, "unsynced_bytes"), 0, "{st}");
}

#[test]
fn daemon_sigkill_then_remount_keep() {
    let mut m = Mount::new(&[]);
    let (_, current) = dirty_files(&m);
    kill_and_clear(&mut m);
    m.remount_with(&["recover=keep"]);
    assert_eq!(
        read_all(&m.path("a")),
        current,
        "recover=keep must keep a's data"
    );
    assert_eq!(
        read_all(&m.path("b")),
        b"never synced",
        "recover=keep must keep b"
    );
    let log = m.daemon_stderr().to_lowercase();
    assert!(
        log.contains("keep") || log.contains("kept") || log.contains("recover"),
        "remount should say on stderr that it kept an unclean journal's data; got:\n{log}"
    );
}

#[test]
fn clean_unmount_then_remount_keeps_journal_state() {
    // After a clean unmount the daemon exits 0; the next mount must not roll back
    // anything that was synced.
    let mut m = Mount::new(&[]);
    let f = fs::File::create(m.path("c")).unwrap();
    f.write_all_at(b"synced data", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    assert!(!lossfs_tests::is_mounted(&m.mnt));
    m.remount();
    assert_eq!(read_all(&m.path("c")), b"synced data");
    assert!(
        !m.path(".lossfs").exists(),
        "the state dir must be hidden from the mount"
    );
}
