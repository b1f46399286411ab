//! Namespace durability models (`-o metadata=durable|journal|posix`, `commit=SECONDS`) on a
//! real mount: the classic patterns (write temp + rename over, a new log segment, unlink,
//! mkdir/rmdir, hard links, rename over a file) across a power cut, the journal model's
//! periodic commit, `lossctl status`/`sync`, and the replay after a killed daemon.

use lossfs_tests::{
    cache_args, lossfs_bin, num, output_text, read_all, renameat2, unique_tmp_dir, unmount_all,
    wait_bounded, writeback_cache, ChildGuard, Mount,
};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn fsync_dir(p: &Path) {
    File::open(p)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", p.display()));
}

/// Writes `content` to a new file, fsynced or not.
fn write_file(p: &Path, content: &[u8], fsync: bool) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(content).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// The `op` values of the powercut report's undone namespace changes, newest first.
fn undone_ops(rep: &serde_json::Value) -> Vec<String> {
    rep["namespace"]
        .as_array()
        .unwrap_or_else(|| panic!("no namespace list in {rep}"))
        .iter()
        .map(|u| u["op"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A durable `data` file holding `content`, its creation committed.
fn durable_file(m: &Mount, name: &str, content: &[u8]) {
    write_file(&m.path(name), content, true);
    fsync_dir(&m.path(""));
}

#[test]
fn posix_rename_over_without_dir_fsync_brings_the_old_file_back() {
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "data", b"old");
    write_file(&m.path("tmp"), b"new", true);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    assert_eq!(read_all(&m.path("data")), b"new");
    let st = m.status_json();
    assert_eq!(st["metadata"], "posix", "{st}");
    assert_eq!(
        num(&st, "namespace_uncommitted"),
        2,
        "create + rename: {st}"
    );
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["rename", "create"], "{rep}");
    assert_eq!(rep["namespace"][0]["path"], "tmp", "{rep}");
    assert_eq!(rep["namespace"][0]["to"], "data", "{rep}");
    assert_eq!(read_all(&m.path("data")), b"old");
    assert!(!exists(&m.path("tmp")), "tmp was never made durable");
    assert_eq!(num(&m.status_json(), "namespace_uncommitted"), 0);
}

#[test]
fn posix_rename_over_with_file_and_dir_fsync_persists() {
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "data", b"old");
    write_file(&m.path("tmp"), b"new", true);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    fsync_dir(&m.path(""));
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), Vec::<String>::new(), "{rep}");
    assert_eq!(read_all(&m.path("data")), b"new");
}

#[test]
fn posix_rename_over_with_dir_fsync_but_no_file_fsync_leaves_an_empty_file() {
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "data", b"old");
    write_file(&m.path("tmp"), b"new", false);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    fsync_dir(&m.path(""));
    m.powercut_json();
    // The name persisted, the data did not: the zero-length file after a crash.
    assert_eq!(read_all(&m.path("data")), b"");
}

#[test]
fn journal_rename_over_is_committed_by_the_file_fsync() {
    let m = Mount::new(&["metadata=journal,commit=0"]);
    durable_file(&m, "data", b"old");
    write_file(&m.path("tmp"), b"new", false);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    // Unsynced: the rename is undone and the old file comes back.
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["rename", "create"], "{rep}");
    assert_eq!(read_all(&m.path("data")), b"old");
    // fsync of the new file before the rename: ext4's pattern, it all persists.
    write_file(&m.path("tmp"), b"new", true);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    File::open(m.path("data")).unwrap().sync_all().unwrap();
    m.powercut_json();
    assert_eq!(read_all(&m.path("data")), b"new");
}

#[test]
fn new_log_segment_without_dir_fsync() {
    // posix: the segment disappears, even though its data was fsynced.
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "seg1", b"one");
    write_file(&m.path("seg2"), b"two", true);
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["create"], "{rep}");
    assert!(!exists(&m.path("seg2")));
    assert_eq!(read_all(&m.path("seg1")), b"one");
    drop(m);
    // journal: an fsync of any file commits it.
    let m = Mount::new(&["metadata=journal,commit=0"]);
    durable_file(&m, "seg1", b"one");
    write_file(&m.path("seg2"), b"two", false);
    OpenOptions::new()
        .append(true)
        .open(m.path("seg1"))
        .unwrap()
        .sync_data()
        .unwrap();
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), Vec::<String>::new(), "{rep}");
    assert!(exists(&m.path("seg2")), "committed by the fsync of seg1");
    assert_eq!(read_all(&m.path("seg2")), b"", "its data was never synced");
}

#[test]
fn unlink_then_powercut_brings_the_file_back_with_its_durable_content() {
    for model in ["metadata=posix", "metadata=journal,commit=0"] {
        let m = Mount::new(&[model]);
        durable_file(&m, "f", b"durable");
        let mut f = OpenOptions::new().append(true).open(m.path("f")).unwrap();
        f.write_all(b" and lost").unwrap();
        fs::remove_file(m.path("f")).unwrap();
        assert!(!exists(&m.path("f")));
        // The open fd still works on the unlinked file.
        f.write_all(b" more").unwrap();
        drop(f);
        let st = m.status_json();
        assert_eq!(num(&st, "namespace_uncommitted"), 1, "{model}: {st}");
        let rep = m.powercut_json();
        assert_eq!(undone_ops(&rep), vec!["unlink"], "{model}: {rep}");
        assert_eq!(rep["namespace"][0]["path"], "f", "{rep}");
        assert_eq!(read_all(&m.path("f")), b"durable", "{model}");
        // lossctl sync commits an unlink for good.
        fs::remove_file(m.path("f")).unwrap();
        let s = m.sync();
        assert_eq!(num(&s, "namespace_committed"), 1, "{model}: {s}");
        m.powercut_json();
        assert!(!exists(&m.path("f")), "{model}");
        let graveyard = m.backing_path(".lossfs/graveyard");
        assert_eq!(fs::read_dir(&graveyard).unwrap().count(), 0, "{model}");
    }
}

#[test]
fn committed_unlink_drops_the_files_unsynced_state() {
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "f", b"durable");
    OpenOptions::new()
        .append(true)
        .open(m.path("f"))
        .unwrap()
        .write_all(b" unsynced")
        .unwrap();
    // With the writeback cache the page is written back (at close) from offset 0: the 7
    // durable bytes are rewritten, unchanged, and count as unsynced too.
    let unsynced = if writeback_cache() { 16 } else { 9 };
    assert_eq!(num(&m.status_json(), "unsynced_bytes"), unsynced);
    fs::remove_file(m.path("f")).unwrap();
    fsync_dir(&m.path(""));
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 0, "{st}");
    assert_eq!(num(&st, "namespace_uncommitted"), 0, "{st}");
    let rep = m.powercut_json();
    assert_eq!(rep["files"].as_array().map(|a| a.len()), Some(0), "{rep}");
    assert!(!exists(&m.path("f")));
}

#[test]
fn mkdir_and_rmdir() {
    let m = Mount::new(&["metadata=posix"]);
    fs::create_dir(m.path("keep")).unwrap();
    fs::create_dir(m.path("gone")).unwrap();
    fsync_dir(&m.path(""));
    // A file in a new dir, committed by fsyncing that dir: the mkdir comes along.
    fs::create_dir_all(m.path("a/b")).unwrap();
    write_file(&m.path("a/b/f"), b"x", true);
    fsync_dir(&m.path("a/b"));
    // An uncommitted mkdir with a file in it, and an rmdir.
    fs::create_dir(m.path("tmpdir")).unwrap();
    write_file(&m.path("tmpdir/f"), b"y", true);
    fs::remove_dir(m.path("gone")).unwrap();
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["rmdir", "create", "mkdir"], "{rep}");
    assert!(m.path("gone").is_dir(), "rmdir undone");
    assert!(!exists(&m.path("tmpdir")), "mkdir undone with its content");
    assert_eq!(read_all(&m.path("a/b/f")), b"x");
    assert!(m.path("keep").is_dir());
}

#[test]
fn hard_links_come_and_go_by_name() {
    let m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "a", b"content");
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    fs::remove_file(m.path("a")).unwrap();
    assert_eq!(
        fs::metadata(m.path("b")).unwrap().nlink(),
        1,
        "a is kept until commit, but no program can tell"
    );
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["unlink", "link"], "{rep}");
    assert_eq!(read_all(&m.path("a")), b"content");
    assert!(!exists(&m.path("b")));
    // Unlinking one of two durable names brings back exactly that name.
    fs::hard_link(m.path("a"), m.path("c")).unwrap();
    fsync_dir(&m.path(""));
    fs::remove_file(m.path("c")).unwrap();
    m.powercut_json();
    let (a, c) = (
        fs::metadata(m.path("a")).unwrap(),
        fs::metadata(m.path("c")).unwrap(),
    );
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 2);
}

/// The graveyard that keeps removed entries until their commit is invisible in link counts,
/// in both models, and through a handle opened before the removal (fstat).
#[test]
fn link_counts_do_not_count_the_graveyard() {
    for model in ["metadata=journal", "metadata=posix"] {
        let m = Mount::new(&[model]);
        durable_file(&m, "a", b"a");
        durable_file(&m, "old", b"old");
        fs::hard_link(m.path("a"), m.path("a2")).unwrap();
        fsync_dir(&m.path(""));
        let a = File::open(m.path("a")).unwrap();
        let old = File::open(m.path("old")).unwrap();
        assert_eq!(a.metadata().unwrap().nlink(), 2, "{model}");
        fs::remove_file(m.path("a2")).unwrap();
        assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 1, "{model}");
        fs::remove_file(m.path("a")).unwrap();
        assert_eq!(
            a.metadata().unwrap().nlink(),
            0,
            "{model}: fstat after unlink"
        );
        write_file(&m.path("new"), b"new", false);
        fs::rename(m.path("new"), m.path("old")).unwrap();
        assert_eq!(
            old.metadata().unwrap().nlink(),
            0,
            "{model}: replaced by rename"
        );
        assert_eq!(fs::metadata(m.path("old")).unwrap().nlink(), 1, "{model}");
        drop((a, old));
        m.powercut_json();
        assert_eq!(
            fs::metadata(m.path("a")).unwrap().nlink(),
            2,
            "{model}: back"
        );
        assert_eq!(read_all(&m.path("old")), b"old");
    }
}

#[test]
fn rename_replacing_a_file_in_another_dir_waits_for_both_dirs() {
    let m = Mount::new(&["metadata=posix"]);
    fs::create_dir(m.path("src")).unwrap();
    fs::create_dir(m.path("dst")).unwrap();
    write_file(&m.path("src/x"), b"moved", true);
    write_file(&m.path("dst/x"), b"replaced", true);
    fsync_dir(&m.path(""));
    fsync_dir(&m.path("src"));
    fsync_dir(&m.path("dst"));
    fs::rename(m.path("src/x"), m.path("dst/x")).unwrap();
    fsync_dir(&m.path("dst"));
    assert_eq!(num(&m.status_json(), "namespace_uncommitted"), 1);
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), vec!["rename"], "{rep}");
    assert_eq!(read_all(&m.path("src/x")), b"moved");
    assert_eq!(read_all(&m.path("dst/x")), b"replaced");
    fs::rename(m.path("src/x"), m.path("dst/x")).unwrap();
    fsync_dir(&m.path("dst"));
    fsync_dir(&m.path("src"));
    m.powercut_json();
    assert!(!exists(&m.path("src/x")));
    assert_eq!(read_all(&m.path("dst/x")), b"moved");
}

#[test]
fn journal_periodic_commit() {
    let m = Mount::new(&["metadata=journal,commit=1"]);
    write_file(&m.path("f"), b"", false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while num(&m.status_json(), "namespace_uncommitted") != 0 {
        assert!(
            Instant::now() < deadline,
            "commit=1 did not commit within 15 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), Vec::<String>::new(), "{rep}");
    assert!(exists(&m.path("f")));
    drop(m);
    // commit=0: never on its own.
    let m = Mount::new(&["metadata=journal,commit=0"]);
    write_file(&m.path("f"), b"", false);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(num(&m.status_json(), "namespace_uncommitted"), 1);
    m.powercut_json();
    assert!(!exists(&m.path("f")));
}

#[test]
fn durable_model_is_the_default_and_changes_nothing() {
    let m = Mount::new(&[]);
    durable_file(&m, "f", b"x");
    write_file(&m.path("new"), b"", false);
    fs::remove_file(m.path("f")).unwrap();
    let st = m.status_json();
    assert_eq!(st["metadata"], "durable", "{st}");
    assert_eq!(num(&st, "namespace_uncommitted"), 0, "{st}");
    let rep = m.powercut_json();
    assert_eq!(undone_ops(&rep), Vec::<String>::new(), "{rep}");
    assert!(exists(&m.path("new")));
    assert!(!exists(&m.path("f")));
}

#[test]
fn text_report_lists_undone_changes() {
    let m = Mount::new(&["metadata=posix"]);
    write_file(&m.path("x"), b"", false);
    let mnt = m.path("");
    let st = m.lossctl(&["status", mnt.to_str().unwrap()]);
    assert!(st.status.success(), "{}", output_text(&st));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("1 uncommitted namespace changes"),
        "{}",
        output_text(&st)
    );
    let out = m.lossctl(&["powercut", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("undone create x"), "{text}");
}

#[test]
fn replay_after_a_killed_daemon_undoes_pending_changes() {
    let mut m = Mount::new(&["metadata=posix"]);
    durable_file(&m, "data", b"old");
    durable_file(&m, "victim", b"v");
    fs::create_dir(m.path("gone")).unwrap();
    fsync_dir(&m.path(""));
    write_file(&m.path("tmp"), b"new", true);
    fs::rename(m.path("tmp"), m.path("data")).unwrap();
    fs::remove_file(m.path("victim")).unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    fs::create_dir(m.path("newdir")).unwrap();
    m.kill_daemon();
    m.remount();
    assert_eq!(read_all(&m.path("data")), b"old");
    assert_eq!(read_all(&m.path("victim")), b"v");
    assert!(m.path("gone").is_dir());
    assert!(!exists(&m.path("newdir")));
    assert!(!exists(&m.path("tmp")));
    assert!(
        m.daemon_stderr().contains("namespace"),
        "the recovery is logged: {}",
        m.daemon_stderr()
    );
    assert_eq!(num(&m.status_json(), "namespace_uncommitted"), 0);
    // A clean unmount commits: nothing is undone at the next mount.
    fs::remove_file(m.path("victim")).unwrap();
    m.remount();
    assert!(!exists(&m.path("victim")));
}

#[test]
fn posix_refuses_a_state_dir_on_another_filesystem() {
    let root = unique_tmp_dir("nsx");
    let (backing, mnt) = (root.join("backing"), root.join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let state = Path::new("/dev/shm").join(format!("lossfs-nsx-{}", std::process::id()));
    let dev = |p: &Path| {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("this test needs {}: {e}", p.display()))
            .dev()
    };
    assert_ne!(
        dev(Path::new("/dev/shm")),
        dev(&backing),
        "this test needs /dev/shm on another filesystem than /tmp"
    );
    let stderr = root.join("stderr");
    let child = Command::new(lossfs_bin())
        .arg(&backing)
        .arg(&mnt)
        .args(cache_args())
        .arg("-o")
        .arg(format!("metadata=posix,state_dir={}", state.display()))
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(&stderr).unwrap()))
        .spawn()
        .expect("spawn lossfs");
    let mut guard = ChildGuard(child);
    let st = wait_bounded(&mut guard.0, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&read_all(&stderr)).into_owned();
    if st.is_none() || st.is_some_and(|s| s.success()) {
        unmount_all(&mnt);
    }
    let _ = fs::remove_dir_all(&state);
    let st = st.unwrap_or_else(|| panic!("lossfs still running after 10 s; stderr:\n{err}"));
    assert!(!st.success(), "lossfs mounted anyway; stderr:\n{err}");
    assert!(err.contains("same filesystem as BACKING"), "{err}");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn name_operations_keep_their_errors_in_the_tracked_models() {
    for model in ["metadata=posix", "metadata=journal"] {
        let m = Mount::new(&[model]);
        fs::create_dir(m.path("full")).unwrap();
        write_file(&m.path("full/x"), b"", false);
        fs::create_dir(m.path("empty")).unwrap();
        write_file(&m.path("f"), b"f", false);
        write_file(&m.path("g"), b"g", false);
        let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
        assert_eq!(
            errno(fs::remove_dir(m.path("full"))),
            Some(libc::ENOTEMPTY),
            "{model}"
        );
        assert_eq!(
            errno(fs::remove_dir(m.path("f"))),
            Some(libc::ENOTDIR),
            "{model}"
        );
        assert_eq!(
            errno(fs::remove_file(m.path("nope"))),
            Some(libc::ENOENT),
            "{model}"
        );
        assert_eq!(
            errno(fs::rename(m.path("f"), m.path("empty"))),
            Some(libc::EISDIR),
            "{model}"
        );
        assert_eq!(
            errno(fs::rename(m.path("empty"), m.path("full"))),
            Some(libc::ENOTEMPTY),
            "{model}"
        );
        assert_eq!(
            renameat2(&m.path("f"), &m.path("g"), libc::RENAME_NOREPLACE),
            Err(libc::EEXIST),
            "{model}"
        );
        renameat2(&m.path("f"), &m.path("g"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(read_all(&m.path("f")), b"g", "{model}");
        // Two names of one inode: rename does nothing and succeeds.
        fs::hard_link(m.path("f"), m.path("h")).unwrap();
        fs::rename(m.path("f"), m.path("h")).unwrap();
        assert!(exists(&m.path("f")) && exists(&m.path("h")), "{model}");
        // A rename over an empty directory.
        fs::create_dir(m.path("src")).unwrap();
        fs::rename(m.path("src"), m.path("empty")).unwrap();
        assert!(!exists(&m.path("src")), "{model}");
        let st = m.status_json();
        // f, g, full, full/x, empty, exchange, link h, rename over empty, mkdir src... all
        // pending; failed operations left nothing behind.
        assert_eq!(num(&st, "namespace_uncommitted"), 9, "{model}: {st}");
        m.powercut_json();
        assert!(
            fs::read_dir(m.path("")).unwrap().next().is_none(),
            "{model}: all undone"
        );
    }
}

#[test]
fn keep_all_keeps_uncommitted_names_and_keep_none_undoes_them() {
    let m = Mount::new(&["metadata=posix"]);
    write_file(&m.path("kept"), b"k", false);
    let rep = m.ctl_json(&["powercut", "--no-kill", "--keep", "all"]);
    assert!(undone_ops(&rep).is_empty(), "--keep all undid names: {rep}");
    assert_eq!(read_all(&m.path("kept")), b"k");
    assert_eq!(
        num(&m.status_json(), "namespace_uncommitted"),
        0,
        "--keep all commits the names"
    );
    // Committed by that cut: a plain cut now leaves it, while a new uncommitted name goes.
    write_file(&m.path("gone"), b"g", false);
    let rep = m.ctl_json(&["powercut", "--no-kill"]);
    assert_eq!(undone_ops(&rep), ["create"], "{rep}");
    assert!(exists(&m.path("kept")));
    assert!(!exists(&m.path("gone")));
}
