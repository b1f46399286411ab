//! The journal's state and reports on a mount: a sparse file keeps its holes in the undo
//! store (a 1 TiB file truncated on a 64 MiB backing disk), a deleted file's undo data goes
//! at its last close and cut reports say once that deleted files needed no restore, the
//! undo of an unlink (`metadata=journal`) still gets the file's data back, files are named
//! after the kernel dropped their dentries, and lost bytes are split into data and holes.

use lossfs_tests::{
    hand_over_dirty_pages, num, output_text, pattern, read_all, report_file, run_bounded,
    writeback_cache, Mount, MountSetup, CMD_TIMEOUT,
};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// A setup that mounts a tmpfs of `size` (mount(8) syntax) on the backing directory.
fn tmpfs_backing(size: &str) -> MountSetup {
    let opts = format!("size={size},mode=755");
    MountSetup {
        prepare_backing: Some(Box::new(move |b: &Path| {
            let out = run_bounded(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &opts, "lossfs-test"])
                    .arg(b),
                CMD_TIMEOUT,
            );
            assert!(
                out.status.success(),
                "mounting a tmpfs: {}",
                output_text(&out)
            );
        })),
        ..MountSetup::default()
    }
}

/// Bytes allocated under `dir` (recursively).
fn allocated(dir: &Path) -> u64 {
    let mut sum = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        sum += if md.is_dir() {
            allocated(&e.path())
        } else {
            md.blocks() * 512
        };
    }
    sum
}

fn rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn read_at(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).unwrap();
    buf
}

/// A durable file of `content` at `rel`.
fn durable(m: &Mount, rel: &str, content: &[u8]) {
    fs::write(m.path(rel), content).unwrap();
    rw(&m.path(rel)).sync_all().unwrap();
}

fn undo_files(m: &Mount) -> usize {
    fs::read_dir(m.backing_path(".lossfs/undo"))
        .unwrap()
        .count()
}

fn powercut_text(m: &Mount) -> String {
    let out = m.lossctl(&["powercut", m.mnt.to_str().unwrap(), "--no-kill"]);
    assert!(out.status.success(), "powercut: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_sparse_tib_truncated_without_fsync_comes_back_and_the_state_dir_stays_small() {
    let m = Mount::new_with(&[], tmpfs_backing("64m"));
    let head = pattern(1, 0, 8192);
    let mid = pattern(2, 0, 4096);
    {
        let f = File::create(m.path("sparse")).unwrap();
        f.set_len(TIB).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&mid, TIB / 2).unwrap();
        f.sync_all().unwrap();
        // Unsynced: the whole terabyte goes.
        f.set_len(0).unwrap();
    }
    let state = allocated(&m.backing_path(".lossfs"));
    assert!(
        state < 4 * MIB,
        "the state dir holds {state} bytes after the truncate"
    );
    let r = m.powercut_nokill_json();
    assert_eq!(num(&r, "lost_bytes"), TIB, "{r}");
    assert!(num(&r, "lost_hole_bytes") >= TIB - MIB, "{r}");
    let f = rw(&m.path("sparse"));
    assert_eq!(f.metadata().unwrap().len(), TIB);
    assert_eq!(read_at(&f, 0, head.len()), head);
    assert_eq!(read_at(&f, TIB / 2, mid.len()), mid);
    assert_eq!(read_at(&f, TIB / 4, 4096), vec![0u8; 4096]);
    let backing = fs::metadata(m.backing_path("sparse")).unwrap().blocks() * 512;
    assert!(
        backing < 4 * MIB,
        "the restored file allocates {backing} bytes"
    );
}

/// Hands a file's dirty pages to lossfs without making anything durable: with the writeback
/// cache they would otherwise still sit in the kernel (sync_file_range sends the writes
/// and no FSYNC); with write-through there is nothing to hand over.
fn hand_over(f: &File) {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: valid fd; the whole file.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
    assert_eq!(
        rc,
        0,
        "sync_file_range: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_deleted_file_leaves_nothing_behind_and_cut_reports_say_so_once() {
    let m = Mount::new(&[]);
    durable(&m, "open", &pattern(3, 0, MIB as usize));
    durable(&m, "closed", &pattern(4, 0, MIB as usize));
    durable(&m, "keep", &pattern(5, 0, 4096));
    // Written, unlinked while open, closed: everything goes at the close.
    {
        let f = rw(&m.path("open"));
        f.write_all_at(&pattern(6, 0, MIB as usize), 0).unwrap();
        hand_over(&f);
        assert_eq!(undo_files(&m), 1);
        fs::remove_file(m.path("open")).unwrap();
        f.write_all_at(b"more", 10).unwrap();
    }
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 0, "{st}");
    assert_eq!(undo_files(&m), 0);
    // Written, closed, then unlinked: left out of the status, counted once by the cut.
    rw(&m.path("closed"))
        .write_all_at(&pattern(7, 0, 4096), 0)
        .unwrap();
    rw(&m.path("keep")).write_all_at(b"unsynced", 0).unwrap();
    fs::remove_file(m.path("closed")).unwrap();
    let st = m.status_json();
    assert_eq!(st["files"].as_array().unwrap().len(), 1, "{st}");
    // With the writeback cache "keep"'s page is written back whole at its close.
    let unsynced = if writeback_cache() { 4096 } else { 8 };
    assert_eq!(num(&st, "unsynced_bytes"), unsynced, "{st}");
    let text = powercut_text(&m);
    assert!(
        text.contains(&format!("{unsynced} unsynced bytes lost in 1 files")),
        "{text}"
    );
    assert!(text.contains("1 deleted files needed no restore"), "{text}");
    assert!(
        !text.contains("unnamed") && !text.contains("not restored"),
        "{text}"
    );
    assert_eq!(read_all(&m.path("keep")), pattern(5, 0, 4096));
}

#[test]
fn an_unlink_that_a_cut_undoes_brings_the_file_back_with_its_durable_data() {
    let m = Mount::new(&["metadata=journal", "commit=0"]);
    let orig = pattern(8, 0, MIB as usize);
    durable(&m, "wal", &orig);
    {
        let f = rw(&m.path("wal"));
        f.write_all_at(&pattern(9, 0, 4096), 8192).unwrap();
        fs::remove_file(m.path("wal")).unwrap();
    }
    // Closed, but the unlink is not committed: the data must stay restorable.
    assert_eq!(undo_files(&m), 1);
    let r = m.powercut_nokill_json();
    assert_eq!(num(&r, "deleted_files"), 0, "{r}");
    // Named where the undo put it back, not by its place in the graveyard.
    let wal = report_file(&r, "wal").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(num(wal, "lost_bytes"), 4096, "{r}");
    assert!(
        read_all(&m.path("wal")) == orig,
        "the file came back changed"
    );
}

#[test]
fn files_are_named_after_the_kernel_drops_its_dentries() {
    let m = Mount::new(&[]);
    fs::create_dir_all(m.path("a/b")).unwrap();
    durable(&m, "a/b/c", &pattern(10, 0, 8192));
    rw(&m.path("a/b/c")).write_all_at(b"xyz", 100).unwrap();
    // Grown by a truncate (a hole) and 3 bytes written: data and holes apart.
    durable(&m, "idx", &[]);
    {
        let f = rw(&m.path("idx"));
        f.set_len(10 * MIB).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
    }
    // Twice: the first drop makes the kernel forget the inodes, which releases the
    // daemon's own references to the backing dentries, which the second drop frees.
    for _ in 0..2 {
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        let _ = fs::metadata(m.path("."));
    }
    let st = m.status_json();
    assert!(report_file(&st, "a/b/c").is_some(), "{st}");
    let idx = report_file(&st, "idx").unwrap_or_else(|| panic!("{st}"));
    assert_eq!(num(idx, "unsynced_bytes"), 10 * MIB, "{st}");
    assert!(
        (3..=8192).contains(&num(idx, "unsynced_data_bytes")),
        "{st}"
    );
    let r = m.powercut_nokill_json();
    assert!(report_file(&r, "a/b/c").is_some(), "{r}");
    let idx = report_file(&r, "idx").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(num(idx, "lost_bytes"), 10 * MIB, "{r}");
    assert!(num(idx, "lost_data_bytes") <= 8192, "{r}");
    assert!(num(idx, "lost_data_bytes") >= 3, "{r}");
}

#[test]
fn the_recovery_after_a_killed_daemon_names_files_and_counts_deleted_ones() {
    let mut m = Mount::new(&[]);
    fs::create_dir_all(m.path("a/b")).unwrap();
    durable(&m, "a/b/c", &pattern(11, 0, 8192));
    durable(&m, "gone", &pattern(12, 0, 8192));
    for name in ["a/b/c", "gone"] {
        let f = rw(&m.path(name));
        f.write_all_at(b"xyz", 100).unwrap();
        // The write must be the daemon's before the unlink and the kill.
        hand_over_dirty_pages(&f);
    }
    fs::remove_file(m.path("gone")).unwrap();
    m.kill_daemon();
    m.lazy_unmount();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    m.remount();
    let log = m.daemon_stderr();
    // A replay knows the saved pages, not the bytes written in them.
    assert!(log.contains("a/b/c: lost 4096 bytes"), "{log}");
    assert!(log.contains("1 deleted files needed no restore"), "{log}");
    assert!(
        !log.contains("unnamed") && !log.contains("not restored"),
        "{log}"
    );
    assert_eq!(read_all(&m.path("a/b/c")), pattern(11, 0, 8192));
}
