//! Power cut semantics on plain writes: unsynced bytes vanish, fsynced bytes stay,
//! overwritten durable bytes come back, truncation is undone, and `status` reports the
//! unsynced bytes per file and in total.

use lossfs_tests::{num, pattern, read_all, report_file, writeback_cache, Mount};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

#[test]
fn unsynced_append_is_lost_synced_is_kept() {
    let m = Mount::new(&[]);
    let p = m.path("log");
    let durable = pattern(1, 0, 10_000);
    {
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&durable).unwrap();
        f.sync_all().unwrap();
        f.write_all(&pattern(2, 10_000, 5_000)).unwrap();
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), 15_000);
    let rep = m.powercut_json();
    let entry = report_file(&rep, "log").unwrap_or_else(|| panic!("no entry for log in {rep}"));
    assert_eq!(num(entry, "size_before"), 15_000, "{rep}");
    assert_eq!(num(entry, "size_after"), 10_000, "{rep}");
    // With the writeback cache the kernel writes back the whole page holding the durable
    // tail (from 8192), so its unchanged durable bytes count as rewritten and lost too.
    let lost = if writeback_cache() {
        15_000 - 8_192
    } else {
        5_000
    };
    assert_eq!(num(entry, "lost_bytes"), lost, "{rep}");
    assert!(num(&rep, "lost_bytes") >= 5_000, "{rep}");
    assert_eq!(read_all(&p), durable, "content after cut");
    assert_eq!(
        read_all(&m.backing_path("log")),
        durable,
        "backing after cut"
    );
}

#[test]
fn never_synced_file_survives_empty() {
    let m = Mount::new(&[]);
    let p = m.path("new");
    fs::write(&p, b"not synced").unwrap();
    m.powercut_json();
    let meta = fs::metadata(&p).expect("created file must survive the cut (namespace is durable)");
    assert_eq!(meta.len(), 0);
}

#[test]
fn fdatasync_makes_durable() {
    let m = Mount::new(&[]);
    let p = m.path("d");
    {
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(b"hello world").unwrap();
        f.sync_data().unwrap();
    }
    m.powercut_json();
    assert_eq!(read_all(&p), b"hello world");
}

#[test]
fn overwrite_of_synced_data_is_restored() {
    let m = Mount::new(&[]);
    let p = m.path("ow");
    let old = pattern(3, 0, 3 * 4096 + 100);
    {
        let f = fs::File::create(&p).unwrap();
        f.write_all_at(&old, 0).unwrap();
        f.sync_all().unwrap();
        // Unaligned overwrite across a page boundary, plus one in the tail.
        f.write_all_at(&pattern(4, 4000, 300), 4000).unwrap();
        f.write_all_at(b"XY", 3 * 4096 + 50).unwrap();
    }
    let mut expect_now = old.clone();
    expect_now[4000..4300].copy_from_slice(&pattern(4, 4000, 300));
    expect_now[3 * 4096 + 50..3 * 4096 + 52].copy_from_slice(b"XY");
    assert_eq!(read_all(&p), expect_now);
    let st = m.status_json();
    let e = report_file(&st, "ow").unwrap_or_else(|| panic!("no entry for ow in {st}"));
    assert!(num(e, "unsynced_bytes") >= 302, "{st}");
    let rep = m.powercut_json();
    assert!(num(&rep, "lost_bytes") >= 302, "{rep}");
    assert_eq!(read_all(&p), old, "old bytes must be restored");
}

#[test]
fn truncate_down_is_undone() {
    let m = Mount::new(&[]);
    let p = m.path("tr");
    let old = pattern(5, 0, 50_000);
    {
        let f = fs::File::create(&p).unwrap();
        f.write_all_at(&old, 0).unwrap();
        f.sync_all().unwrap();
    }
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1000);
    // And a truncate through a path (setattr without a handle) on a second file.
    let q = m.path("tr2");
    {
        let f = fs::File::create(&q).unwrap();
        f.write_all_at(&old[..9000], 0).unwrap();
        f.sync_all().unwrap();
    }
    let cq = lossfs_tests::cpath(&q);
    // SAFETY: cq is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(cq.as_ptr(), 10) };
    assert_eq!(rc, 0, "truncate: {}", lossfs_tests::last_err());
    m.powercut_json();
    assert_eq!(read_all(&p), old, "truncated file restored");
    assert_eq!(read_all(&q), &old[..9000], "path-truncated file restored");
}

#[test]
fn status_reports_unsynced_bytes_and_sync_clears_them() {
    let m = Mount::new(&[]);
    let a = m.path("a");
    let b = m.path("sub/b");
    fs::create_dir(m.path("sub")).unwrap();
    fs::write(&a, vec![7u8; 1234]).unwrap();
    {
        let f = fs::File::create(&b).unwrap();
        f.write_all_at(&[1u8; 100], 0).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(&[2u8; 400], 100).unwrap();
    }
    let st = m.status_json();
    let ea = report_file(&st, "a").unwrap_or_else(|| panic!("no entry for a in {st}"));
    let eb = report_file(&st, "sub/b").unwrap_or_else(|| panic!("no entry for sub/b in {st}"));
    assert_eq!(num(ea, "unsynced_bytes"), 1234, "{st}");
    assert_eq!(num(ea, "durable_size"), 0, "{st}");
    assert_eq!(num(ea, "size"), 1234, "{st}");
    // With the writeback cache the kernel writes the page back from its start: the 100
    // durable bytes are rewritten (unchanged) and count as unsynced.
    let unsynced = if writeback_cache() { 500 } else { 400 };
    assert_eq!(num(eb, "unsynced_bytes"), unsynced, "{st}");
    assert_eq!(num(eb, "durable_size"), 100, "{st}");
    assert_eq!(num(eb, "size"), 500, "{st}");
    let ranges = eb["unsynced"].as_array().expect("unsynced array");
    assert_eq!(ranges.len(), 1, "{st}");
    assert_eq!(num(&ranges[0], "start"), 500 - unsynced, "{st}");
    assert_eq!(num(&ranges[0], "end"), 500, "{st}");
    assert_eq!(num(&st, "unsynced_bytes"), 1234 + unsynced, "{st}");
    assert_eq!(num(&st, "powercuts"), 0, "{st}");
    assert_eq!(
        st["mountpoint"].as_str(),
        Some(m.mnt.to_str().unwrap()),
        "{st}"
    );

    m.sync();
    let st = m.status_json();
    assert_eq!(num(&st, "unsynced_bytes"), 0, "{st}");
    for f in st["files"].as_array().into_iter().flatten() {
        assert_eq!(num(f, "unsynced_bytes"), 0, "{st}");
    }
    // sync made it durable: a cut loses nothing.
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), 0, "{rep}");
    assert_eq!(read_all(&a), vec![7u8; 1234]);
    let st = m.status_json();
    assert_eq!(num(&st, "powercuts"), 1, "{st}");
}

#[test]
fn text_output_and_no_kill_flag_work() {
    let m = Mount::new(&[]);
    fs::write(m.path("t"), b"abc").unwrap();
    let mnt = m.mnt.to_str().unwrap();
    let out = m.lossctl(&["status", mnt]);
    assert!(out.status.success(), "{}", lossfs_tests::output_text(&out));
    assert!(!out.stdout.is_empty(), "status printed nothing");
    let out = m.lossctl(&["powercut", mnt, "--no-kill"]);
    assert!(out.status.success(), "{}", lossfs_tests::output_text(&out));
    assert!(!out.stdout.is_empty(), "powercut printed nothing");
    assert_eq!(read_all(&m.path("t")), b"");
}

/// The backing file system reuses inode numbers of unlinked files (ext4 does at once):
/// a new file must not inherit the durability state of an unlinked one.
#[test]
fn new_file_on_a_reused_inode_number_starts_clean() {
    use std::os::unix::fs::MetadataExt;
    let m = Mount::new(&[]);
    let mut reused = 0;
    for i in 0..20 {
        let old = m.path(&format!("old{i}"));
        let f = fs::File::create(&old).unwrap();
        f.write_all_at(&pattern(6, 0, 50_000), 0).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(b"unsynced tail", 50_000).unwrap();
        drop(f);
        let old_ino = fs::metadata(m.backing_path(&format!("old{i}")))
            .unwrap()
            .ino();
        fs::remove_file(&old).unwrap();
        let new = m.path(&format!("new{i}"));
        fs::write(&new, b"never synced").unwrap();
        if fs::metadata(m.backing_path(&format!("new{i}")))
            .unwrap()
            .ino()
            == old_ino
        {
            reused += 1;
        }
    }
    // Status is checked after the data, so a failure says whether the data was lost too.
    let st = m.status_json();
    let mut status_wrong = Vec::new();
    for i in 0..20 {
        let name = format!("new{i}");
        let ok = report_file(&st, &name).is_some_and(|e| {
            num(e, "durable_size") == 0 && num(e, "size") == 12 && num(e, "unsynced_bytes") == 12
        });
        if !ok {
            status_wrong.push(name);
        }
    }
    m.powercut_json();
    for i in 0..20 {
        let name = format!("new{i}");
        assert_eq!(
            read_all(&m.path(&name)),
            b"",
            "{name} was never fsynced but kept data after the cut \
             ({reused}/20 new files reused an unlinked file's inode number)"
        );
    }
    assert!(
        status_wrong.is_empty(),
        "status before the cut did not show {status_wrong:?} as new files with 12 unsynced \
         bytes and durable size 0 ({reused}/20 inode numbers reused): {st}"
    );
}

/// Growing a file past its durable size by writing beyond EOF, then truncating back into
/// the hole, leaves bytes past the durable size: they are unsynced.
#[test]
fn extension_by_hole_counts_as_unsynced() {
    let m = Mount::new(&[]);
    let p = m.path("h");
    let f = fs::File::create(&p).unwrap();
    f.write_all_at(&[1u8; 1000], 0).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"far", 100_000).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let st = m.status_json();
    let e = report_file(&st, "h").unwrap_or_else(|| panic!("h missing from status: {st}"));
    assert_eq!(num(e, "durable_size"), 1000, "{st}");
    assert_eq!(num(e, "size"), 5000, "{st}");
    assert_eq!(
        num(e, "unsynced_bytes"),
        4000,
        "bytes 1000..5000 are unsynced: {st}"
    );
    let rep = m.powercut_json();
    let l = report_file(&rep, "h").unwrap_or_else(|| panic!("h missing from report: {rep}"));
    assert_eq!(num(l, "lost_bytes"), 4000, "{rep}");
    assert_eq!(read_all(&p), vec![1u8; 1000]);
}

/// sync(2), syncfs(2) and sync_file_range(2) never reach a FUSE daemon that is not
/// virtiofs (the kernel sends FUSE_SYNCFS to virtiofs servers only, and sync_file_range only
/// writes back the page cache, which holds nothing dirty without the writeback cache), so
/// none of them is a durable point on lossfs: a harness calls `lossctl sync` instead.  This
/// pins the documented behaviour; if a kernel ever sends them, the fault model must change.
#[test]
fn sync_syncfs_and_sync_file_range_make_nothing_durable() {
    use std::os::fd::AsRawFd;
    let m = Mount::new(&[]);
    let p = m.path("f");
    let durable = pattern(5, 0, 4096);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&durable, 0).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(&pattern(6, 0, 5000), 0).unwrap();
    // SAFETY: plain syscalls on an fd this test owns.
    unsafe {
        assert_eq!(libc::syncfs(f.as_raw_fd()), 0, "syncfs");
        libc::sync();
        let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        assert_eq!(libc::sync_file_range(f.as_raw_fd(), 0, 0, all), 0);
    }
    let st = m.status_json();
    let e = report_file(&st, "f").unwrap_or_else(|| panic!("no entry for f in {st}"));
    assert_eq!(num(e, "unsynced_bytes"), 5000, "{st}");
    drop(f);
    let rep = m.powercut_json();
    assert_eq!(num(&rep, "lost_bytes"), 5000, "{rep}");
    assert_eq!(read_all(&p), durable);
    // What a harness does instead of sync(1): everything on the mount becomes durable.
    fs::write(&p, b"synced by lossctl").unwrap();
    m.sync();
    m.powercut_json();
    assert_eq!(read_all(&p), b"synced by lossctl");
}
