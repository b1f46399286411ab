//! The daemon SIGKILLed in the middle of a power cut's rollback, of a `lossctl sync`, or of
//! the recovery of an earlier crash: the next mount must finish the job exactly once, with
//! every file equal to the durable state byte for byte, and a further kill and remount must
//! change nothing.  The daemon is stopped at a named point with `LOSSFS_TEST_PAUSE`
//! (fusefs/src/pause.rs); the test checks the backing files there to prove the point really
//! is in the middle, then kills.

use lossfs_tests::{
    lossctl_bin, num, pattern, read_all, unique_tmp_dir, wait_bounded, wait_for_marker, ChildGuard,
    Mount,
};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PAUSE_TIMEOUT: Duration = Duration::from_secs(60);
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Durable and current content of each file in `NAMES`; every file's current size differs
/// from its durable size, so a restored file shows by its size alone.
struct Files {
    durable: Vec<Vec<u8>>,
    current: Vec<Vec<u8>>,
}

fn write_synced(m: &Mount, name: &str, data: &[u8]) -> fs::File {
    let f = fs::File::create(m.path(name)).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
    f
}

fn dirty_files(m: &Mount) -> Files {
    let da = pattern(1, 0, 10_000);
    let f = write_synced(m, "a", &da);
    f.write_all_at(&pattern(2, 100, 4900), 100).unwrap();
    f.write_all_at(&pattern(3, 10_000, 3000), 10_000).unwrap();
    let mut ca = da.clone();
    ca[100..5000].copy_from_slice(&pattern(2, 100, 4900));
    ca.extend_from_slice(&pattern(3, 10_000, 3000));

    let db = pattern(4, 0, 8192);
    let f = write_synced(m, "b", &db);
    f.set_len(1000).unwrap();
    f.write_all_at(&pattern(5, 900, 200), 900).unwrap();
    let mut cb = db[..900].to_vec();
    cb.extend_from_slice(&pattern(5, 900, 200));

    fs::write(m.path("c"), b"fresh").unwrap();

    let dd = pattern(6, 0, 5000);
    let f = write_synced(m, "d", &dd);
    f.set_len(20_000).unwrap();
    f.write_all_at(&pattern(7, 4000, 100), 4000).unwrap();
    let mut cd = dd.clone();
    cd.resize(20_000, 0);
    cd[4000..4100].copy_from_slice(&pattern(7, 4000, 100));

    let files = Files {
        durable: vec![da, db, Vec::new(), dd],
        current: vec![ca, cb, b"fresh".to_vec(), cd],
    };
    for (i, n) in NAMES.iter().enumerate() {
        assert_eq!(
            read_all(&m.path(n)),
            files.current[i],
            "{n} before the crash"
        );
        assert_ne!(files.current[i].len(), files.durable[i].len());
    }
    files
}

/// How many backing files hold their durable content, their current content, neither.
fn backing_counts(m: &Mount, f: &Files) -> (usize, usize, usize) {
    let (mut durable, mut current, mut neither) = (0, 0, 0);
    for (i, n) in NAMES.iter().enumerate() {
        let got = read_all(&m.backing_path(n));
        if got == f.durable[i] {
            durable += 1;
        } else if got == f.current[i] {
            current += 1;
        } else {
            neither += 1;
        }
    }
    (durable, current, neither)
}

fn journal_log_len(m: &Mount) -> u64 {
    fs::metadata(m.backing_path(".lossfs/journal"))
        .map(|md| md.len())
        .unwrap_or_else(|e| panic!("stat of the journal log: {e}"))
}

/// A marker file path in a fresh directory, removed on drop.
struct Marker(PathBuf);

impl Marker {
    fn new() -> Marker {
        Marker(unique_tmp_dir("pause").join("marker"))
    }
}

impl std::ops::Deref for Marker {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn pause_env(point: &str, nth: u32, marker: &Path) -> String {
    format!("{point}:{nth}:{}", marker.display())
}

/// Kills the (paused) daemon and clears the dead mount, if any.
fn kill(m: &mut Mount) {
    m.kill_daemon();
    if lossfs_tests::is_mounted(&m.mnt) {
        m.lazy_unmount();
    }
}

/// Remounts without pause, checks every file is `want` through the mount, that the journal
/// is clean; returns whether the daemon said it replayed an unclean journal.
fn remount_and_check(m: &mut Mount, want: &[Vec<u8>], what: &str) -> bool {
    m.set_daemon_env(&[]);
    m.remount();
    for (i, n) in NAMES.iter().enumerate() {
        let got = read_all(&m.path(n));
        assert!(
            got == want[i],
            "{what}: {n} has {} bytes, expected {} bytes{}",
            got.len(),
            want[i].len(),
            if got.len() == want[i].len() {
                " (same size, other content)"
            } else {
                ""
            }
        );
    }
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 0, "{what}: {st}");
    m.daemon_stderr().contains("unclean journal")
}

/// After the first recovery: a second kill and remount finds a clean journal and changes
/// nothing.
fn second_crash_changes_nothing(m: &mut Mount, want: &[Vec<u8>]) {
    kill(m);
    let replayed = remount_and_check(m, want, "after a second kill and remount");
    assert!(
        !replayed,
        "the second remount replayed the journal again (recovery must happen once):\n{}",
        m.daemon_stderr()
    );
}

/// Starts `lossctl CMD MNT` in the background, waits for the daemon to reach the pause,
/// returns the client (which must fail once the daemon is killed).
fn start_ctl_until_paused(m: &mut Mount, cmd: &str, marker: &Path) -> ChildGuard {
    let child = Command::new(lossctl_bin())
        .arg(cmd)
        .arg(&m.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lossctl");
    let child = ChildGuard(child);
    if let Err(e) = wait_for_marker(marker, PAUSE_TIMEOUT, &format!("lossctl {cmd}"), || {
        m.daemon_alive()
    }) {
        panic!("{e}; daemon stderr:\n{}", m.daemon_stderr());
    }
    child
}

fn reap_failed_client(mut ctl: ChildGuard, cmd: &str) {
    let st = wait_bounded(&mut ctl.0, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("lossctl {cmd} still running 20 s after the daemon died"));
    assert!(
        !st.success(),
        "lossctl {cmd} must fail when the daemon dies under it"
    );
}

/// A power cut paused at `point`/`nth` with `(durable, current, neither)` backing files
/// there; killed; the remount must finish the rollback.
fn powercut_killed_at(point: &str, nth: u32, at_pause: (usize, usize, usize)) {
    let marker = Marker::new();
    let mut m = Mount::new(&[]);
    m.set_daemon_env(&[("LOSSFS_TEST_PAUSE", &pause_env(point, nth, &marker))]);
    m.remount();
    let f = dirty_files(&m);
    let ctl = start_ctl_until_paused(&mut m, "powercut", &marker);
    assert_eq!(
        backing_counts(&m, &f),
        at_pause,
        "{point}:{nth}: backing files (durable, current, neither) at the pause"
    );
    if point == "rollback-after-reset" {
        assert_eq!(journal_log_len(&m), 0, "the log is reset at {point}");
    } else {
        assert!(
            journal_log_len(&m) > 0,
            "the log still holds records at {point}"
        );
    }
    kill(&mut m);
    reap_failed_client(ctl, "powercut");
    let replayed = remount_and_check(&mut m, &f.durable, &format!("killed at {point}:{nth}"));
    assert_eq!(
        replayed,
        point != "rollback-after-reset",
        "{point}: whether the remount had an unclean journal to replay; stderr:\n{}",
        m.daemon_stderr()
    );
    second_crash_changes_nothing(&mut m, &f.durable);
}

#[test]
fn killed_before_the_rollback_starts() {
    powercut_killed_at("rollback-start", 1, (0, 4, 0));
}

#[test]
fn killed_between_truncating_a_file_and_restoring_its_pages() {
    // The first file restored is truncated to its durable size but its pages are not back
    // yet: neither durable nor current (unless it had no saved pages, like c).
    let marker = Marker::new();
    let mut m = Mount::new(&[]);
    m.set_daemon_env(&[(
        "LOSSFS_TEST_PAUSE",
        &pause_env("restore-after-truncate", 1, &marker),
    )]);
    m.remount();
    let f = dirty_files(&m);
    let ctl = start_ctl_until_paused(&mut m, "powercut", &marker);
    let sizes_at_durable = NAMES
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            fs::metadata(m.backing_path(n)).unwrap().len() == f.durable[*i].len() as u64
        })
        .count();
    assert_eq!(
        sizes_at_durable, 1,
        "exactly one file truncated at the pause"
    );
    kill(&mut m);
    reap_failed_client(ctl, "powercut");
    assert!(remount_and_check(
        &mut m,
        &f.durable,
        "killed after a truncate"
    ));
    second_crash_changes_nothing(&mut m, &f.durable);
}

#[test]
fn killed_after_the_first_file_is_rolled_back() {
    powercut_killed_at("rollback-after-file", 1, (1, 3, 0));
}

#[test]
fn killed_after_the_third_file_is_rolled_back() {
    powercut_killed_at("rollback-after-file", 3, (3, 1, 0));
}

#[test]
fn killed_after_the_log_is_reset() {
    powercut_killed_at("rollback-after-reset", 1, (4, 0, 0));
}

#[test]
fn killed_in_the_middle_of_a_sync() {
    let marker = Marker::new();
    let mut m = Mount::new(&[]);
    m.set_daemon_env(&[(
        "LOSSFS_TEST_PAUSE",
        &pause_env("sync-after-file", 2, &marker),
    )]);
    m.remount();
    let f = dirty_files(&m);
    let ctl = start_ctl_until_paused(&mut m, "sync", &marker);
    assert_eq!(
        backing_counts(&m, &f),
        (0, 4, 0),
        "a sync changes no content"
    );
    kill(&mut m);
    reap_failed_client(ctl, "sync");
    // The two files synced before the kill keep their content, the others roll back.
    m.set_daemon_env(&[]);
    m.remount();
    let mut want = Vec::new();
    let mut synced = 0;
    for (i, n) in NAMES.iter().enumerate() {
        let got = read_all(&m.path(n));
        if got == f.current[i] {
            synced += 1;
            want.push(f.current[i].clone());
        } else {
            assert_eq!(got, f.durable[i], "{n} is neither synced nor rolled back");
            want.push(f.durable[i].clone());
        }
    }
    assert_eq!(
        synced, 2,
        "files made durable before the kill at sync-after-file:2"
    );
    assert!(m.daemon_stderr().contains("unclean journal"));
    second_crash_changes_nothing(&mut m, &want);
}

#[test]
fn killed_between_an_fsync_and_its_record() {
    // dirty_files makes three files durable first: the program's fsync is the fourth.
    let marker = Marker::new();
    let mut m = Mount::new(&[]);
    m.set_daemon_env(&[(
        "LOSSFS_TEST_PAUSE",
        &pause_env("durable-before-record", 4, &marker),
    )]);
    m.remount();
    let f = dirty_files(&m);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = m.path("a");
    let fsyncer = std::thread::spawn(move || {
        let r = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.sync_all());
        let _ = tx.send(r);
    });
    if let Err(e) = wait_for_marker(&marker, PAUSE_TIMEOUT, "fsync of a", || m.daemon_alive()) {
        panic!("{e}; daemon stderr:\n{}", m.daemon_stderr());
    }
    assert_eq!(
        backing_counts(&m, &f),
        (0, 4, 0),
        "an fsync changes no content"
    );
    kill(&mut m);
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the fsync did not return within 20 s of the daemon's death");
    let _ = fsyncer.join();
    let e = r.expect_err("an fsync cut short by the daemon's death must not report success");
    // Requests pending when the connection dies end with ECONNABORTED, later ones ENOTCONN.
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "fsync error: {e}"
    );
    assert!(remount_and_check(
        &mut m,
        &f.durable,
        "killed before an fsync's record"
    ));
    second_crash_changes_nothing(&mut m, &f.durable);
}

/// The daemon killed in the compaction of its journal log, at `point`: the log grows past
/// the compaction threshold with op records of small unsynced writes to a fifth file, whose
/// fsync then compacts it.  Whichever log the kill leaves (the old one with `journal.tmp`
/// beside it, or the compacted one) must roll the four dirty files back.
fn compaction_killed_at(point: &str) {
    // Write-through only: the log must grow by one record per small write(2); with the
    // writeback cache the kernel merges those writes into a few page writebacks and the
    // log never reaches its compaction threshold.
    let marker = Marker::new();
    let mut m = Mount::new(&["cache=writethrough"]);
    m.set_daemon_env(&[("LOSSFS_TEST_PAUSE", &pause_env(point, 1, &marker))]);
    m.remount();
    let f = dirty_files(&m);
    let filler = fs::File::create(m.path("filler")).unwrap();
    let threshold = (1 << 20) + (64 << 10); // COMPACT_MIN plus the op buffer
    let mut written = 0u64;
    while journal_log_len(&m) <= threshold {
        assert!(
            written < 400_000,
            "the log did not grow past {threshold} bytes"
        );
        for _ in 0..2000 {
            filler.write_all_at(&[written as u8], written).unwrap();
            written += 1;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let fsyncer = std::thread::spawn(move || {
        let _ = tx.send(filler.sync_all());
    });
    if let Err(e) = wait_for_marker(&marker, PAUSE_TIMEOUT, "compaction", || m.daemon_alive()) {
        panic!("{e}; daemon stderr:\n{}", m.daemon_stderr());
    }
    let tmp = m.backing_path(".lossfs/journal.tmp");
    let log_len = journal_log_len(&m);
    match point {
        "compact-before-rename" => {
            let tmp_len = fs::metadata(&tmp).map(|md| md.len()).unwrap_or(0);
            assert!(
                tmp_len > 0 && tmp_len < 64 << 10 && log_len > threshold,
                "paused before the rename: journal.tmp {tmp_len} bytes, log {log_len} bytes"
            );
        }
        _ => assert!(
            !tmp.exists() && log_len < 64 << 10,
            "paused after the rename: journal.tmp exists {}, log {log_len} bytes",
            tmp.exists()
        ),
    }
    kill(&mut m);
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the fsync did not return within 20 s of the daemon's death");
    let _ = fsyncer.join();
    assert!(
        r.is_err(),
        "an fsync cut short by the daemon's death reported success"
    );
    assert!(
        remount_and_check(&mut m, &f.durable, point),
        "{point}: the remount must replay the unclean journal:\n{}",
        m.daemon_stderr()
    );
    // The filler's `S` record was in the log before the compaction started.
    let got = read_all(&m.path("filler"));
    assert_eq!(got.len() as u64, written, "{point}: filler size");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == i as u8),
        "{point}: filler content"
    );
    second_crash_changes_nothing(&mut m, &f.durable);
}

#[test]
fn killed_while_compacting_before_the_rename() {
    compaction_killed_at("compact-before-rename");
}

#[test]
fn killed_while_compacting_after_the_rename() {
    compaction_killed_at("compact-after-rename");
}

/// A daemon killed by a plain SIGKILL, then the recovering mount killed at `point`/`nth`
/// of its replay, then a third mount.
fn replay_killed_at(point: &str, nth: u32, restored: usize) {
    let marker = Marker::new();
    let mut m = Mount::new(&[]);
    let f = dirty_files(&m);
    kill(&mut m);
    m.set_daemon_env(&[("LOSSFS_TEST_PAUSE", &pause_env(point, nth, &marker))]);
    m.start_until_marker(&marker, PAUSE_TIMEOUT);
    assert_eq!(
        backing_counts(&m, &f),
        (restored, 4 - restored, 0),
        "{point}:{nth}: backing files (durable, current, neither) at the pause"
    );
    kill(&mut m);
    let replayed = remount_and_check(
        &mut m,
        &f.durable,
        &format!("replay killed at {point}:{nth}"),
    );
    assert_eq!(
        replayed,
        point != "replay-after-reset",
        "{point}: whether the third mount had an unclean journal to replay; stderr:\n{}",
        m.daemon_stderr()
    );
    second_crash_changes_nothing(&mut m, &f.durable);
}

#[test]
fn recovery_killed_after_its_first_file() {
    replay_killed_at("replay-after-file", 1, 1);
}

#[test]
fn recovery_killed_after_its_log_reset() {
    replay_killed_at("replay-after-reset", 1, 4);
}

#[test]
fn unarmed_points_cost_nothing_visible() {
    // A malformed variable arms nothing: the daemon says so and works normally.
    let mut m = Mount::new(&[]);
    m.set_daemon_env(&[("LOSSFS_TEST_PAUSE", "rollback-start")]);
    m.remount();
    let f = dirty_files(&m);
    let cut = m.powercut_json();
    assert_eq!(cut["files"].as_array().map(Vec::len), Some(4), "{cut}");
    for (i, n) in NAMES.iter().enumerate() {
        assert_eq!(read_all(&m.path(n)), f.durable[i], "{n} after the cut");
    }
    assert!(
        m.daemon_stderr().contains("expected POINT:N:MARKER"),
        "the daemon must report the malformed LOSSFS_TEST_PAUSE:\n{}",
        m.daemon_stderr()
    );
}

#[test]
fn killed_after_dirty_files_were_deleted_the_remount_still_recovers() {
    // The journal still holds records of files deleted since their change (a rename over
    // them, an unlink): the recovery cannot open them (ESTALE) and must skip them, not
    // refuse to mount.
    let mut m = Mount::new(&[]);
    let durable = pattern(8, 0, 6000);
    for n in ["keep", "replaced", "unlinked"] {
        write_synced(&m, n, &durable);
    }
    for n in ["keep", "replaced", "unlinked"] {
        let f = fs::OpenOptions::new().write(true).open(m.path(n)).unwrap();
        f.write_all_at(b"unsynced", 10).unwrap();
    }
    fs::write(m.path("tmp"), b"new content").unwrap();
    fs::rename(m.path("tmp"), m.path("replaced")).unwrap();
    fs::remove_file(m.path("unlinked")).unwrap();
    kill(&mut m);
    m.remount();
    assert!(
        m.daemon_stderr().contains("unclean journal"),
        "{}",
        m.daemon_stderr()
    );
    assert_eq!(read_all(&m.path("keep")), durable, "keep rolled back");
    assert_eq!(
        read_all(&m.path("replaced")),
        b"",
        "the never-synced file renamed over 'replaced' rolls back to empty"
    );
    assert!(!m.path("unlinked").exists(), "unlinks are durable at once");
    kill(&mut m);
    m.remount();
    assert!(
        !m.daemon_stderr().contains("unclean journal"),
        "recovered once: {}",
        m.daemon_stderr()
    );
    assert_eq!(read_all(&m.path("keep")), durable);
}
