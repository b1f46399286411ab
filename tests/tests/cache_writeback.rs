//! `-o cache=writeback` (the kernel's writeback cache), whatever `LOSSFS_TEST_CACHE` says:
//! what the kernel still holds at a cut is lost, sizes and contents after the cut are the
//! rolled-back ones (the kernel keeps its own i_size in this mode), nothing written back
//! late reaches a rolled-back file, O_SYNC, fsync, fdatasync and msync(MS_SYNC) make
//! exactly their file durable while a page written back through an O_SYNC handle for
//! another writer stays unsynced, sizes follow appends, truncates and fallocate, an
//! injected write error reaches the program at fsync, and a `--no-kill` cut and `lossctl
//! sync` take the pages a live program still holds.

use lossfs_tests::{num, pattern, read_all, report_file, Mount};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const WB: &[&str] = &["cache=writeback"];

fn size(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// A file of `durable` bytes made durable by fsync.
fn durable_file(p: &Path, durable: &[u8]) {
    let f = File::create(p).unwrap();
    f.write_all_at(durable, 0).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn dirty_pages_at_the_cut_are_lost_and_the_kernel_forgets_its_sizes() {
    let m = Mount::new(WB);
    let (p, q) = (m.path("log"), m.path("new"));
    let durable = pattern(1, 0, 10_000);
    durable_file(&p, &durable);
    {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&pattern(2, 10_000, 5_000)).unwrap();
        let g = OpenOptions::new().write(true).open(&p).unwrap();
        g.write_all_at(b"overwritten", 2_000).unwrap();
        fs::write(&q, pattern(3, 0, 3_000)).unwrap();
    }
    assert_eq!(size(&p), 15_000);
    assert_eq!(size(&q), 3_000);
    let rep = m.powercut_json();
    // The kernel handed its dirty pages over before the rollback: the report counts them.
    let e = report_file(&rep, "log").unwrap_or_else(|| panic!("no entry for log in {rep}"));
    assert_eq!(num(e, "size_before"), 15_000, "{rep}");
    assert_eq!(num(e, "size_after"), 10_000, "{rep}");
    assert!(num(e, "lost_bytes") >= 5_011, "{rep}");
    // The kernel's own i_size and pages are gone: stat, a read and the backing file agree.
    assert_eq!(size(&p), 10_000, "stat size after the cut");
    assert_eq!(size(&q), 0, "stat size of the never-synced file");
    assert_eq!(read_all(&p), durable, "content after the cut");
    assert_eq!(read_all(&q), b"", "never-synced file");
    assert_eq!(
        read_all(&m.backing_path("log")),
        durable,
        "backing after the cut"
    );
    // Appending after the cut starts at the rolled-back end, not the old one.
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"after")
        .unwrap();
    assert_eq!(size(&p), 10_005);
    let mut expect = durable.clone();
    expect.extend_from_slice(b"after");
    assert_eq!(read_all(&p), expect);
}

#[test]
fn keep_all_and_prefix_leave_the_kernel_with_the_backing_sizes() {
    let m = Mount::new(WB);
    let p = m.path("k");
    durable_file(&p, &pattern(4, 0, 4_096));
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(&pattern(5, 4_096, 8_192))
        .unwrap();
    let rep = m.ctl_json(&["powercut", "--keep", "all"]);
    assert!(num(&rep, "kept_bytes") >= 8_192, "{rep}");
    assert_eq!(size(&p), 12_288);
    assert_eq!(read_all(&p), read_all(&m.backing_path("k")));
    for seed in 1..=4u64 {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        for i in 0..8u8 {
            f.write_all(&pattern(6 + i, 0, 5_000)).unwrap();
        }
        drop(f);
        let seed = seed.to_string();
        m.ctl_json(&["powercut", "--keep", "prefix", "--seed", &seed]);
        let backing = read_all(&m.backing_path("k"));
        assert_eq!(size(&p), backing.len() as u64, "seed {seed}: stat size");
        assert_eq!(
            read_all(&p),
            backing,
            "seed {seed}: content through the mount"
        );
    }
}

#[test]
fn no_late_writeback_reaches_a_rolled_back_file() {
    let m = Mount::new(WB);
    let p = m.path("late");
    let durable = pattern(8, 0, 8_192);
    durable_file(&p, &durable);
    // A program the cut does not kill keeps dirty pages of an old handle.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&pattern(9, 0, 6_000), 1_000).unwrap();
    m.powercut_nokill_json();
    assert_eq!(
        read_all(&m.backing_path("late")),
        durable,
        "backing after cut"
    );
    // More writes into the cache through the old handle, then its sync and close: they
    // must fail or go nowhere, never onto the rolled-back file.
    let _ = f.write_all_at(&pattern(10, 0, 4_000), 0);
    let _ = f.write_all_at(&pattern(10, 0, 4_000), 8_192);
    assert!(f.sync_all().is_err(), "fsync of a pre-cut handle succeeded");
    drop(f);
    m.sync();
    assert_eq!(
        read_all(&m.backing_path("late")),
        durable,
        "backing after sync"
    );
    assert_eq!(read_all(&p), durable, "through the mount");
    assert_eq!(size(&p), 8_192);
}

#[test]
fn sync_calls_make_exactly_their_file_durable() {
    let m = Mount::new(WB);
    let names = ["osync", "fsync", "fdatasync", "msync", "other"];
    let durable = pattern(11, 0, 8_192);
    for n in names {
        durable_file(&m.path(n), &durable);
    }
    // O_SYNC: the kernel sends an FSYNC after the write.
    {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(m.path("osync"))
            .unwrap();
        f.write_all_at(b"osync bytes", 100).unwrap();
    }
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.path("fsync"))
            .unwrap();
        f.write_all_at(b"fsync bytes", 100).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(b"lost", 200).unwrap();
    }
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.path("fdatasync"))
            .unwrap();
        f.write_all_at(b"fdatasync bytes", 100).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"lost", 200).unwrap();
    }
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("msync"))
            .unwrap();
        // SAFETY: a fresh shared mapping of 8192 bytes of an open file, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8_192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        // SAFETY: map is 8192 writable bytes; msync and munmap take the same range.
        unsafe {
            std::ptr::copy_nonoverlapping(b"msync bytes".as_ptr(), map.cast::<u8>().add(100), 11);
            assert_eq!(libc::msync(map, 8_192, libc::MS_SYNC), 0, "msync");
            std::ptr::copy_nonoverlapping(b"lost".as_ptr(), map.cast::<u8>().add(200), 4);
            libc::munmap(map, 8_192);
        }
    }
    OpenOptions::new()
        .write(true)
        .open(m.path("other"))
        .unwrap()
        .write_all_at(b"lost", 100)
        .unwrap();
    m.powercut_json();
    for (n, synced) in [
        ("osync", &b"osync bytes"[..]),
        ("fsync", b"fsync bytes"),
        ("fdatasync", b"fdatasync bytes"),
        ("msync", b"msync bytes"),
        ("other", b""),
    ] {
        let mut expect = durable.clone();
        expect[100..100 + synced.len()].copy_from_slice(synced);
        assert_eq!(read_all(&m.path(n)), expect, "{n} after the cut");
    }
}

/// The kernel writes a file's dirty pages back through one of its writable handles, the
/// latest opened first: here the O_SYNC one, for bytes another handle wrote.  They stay
/// unsynced; only the O_SYNC handle's own writes (followed by the kernel's FSYNC) count.
#[test]
fn pages_written_back_through_an_o_sync_handle_stay_unsynced() {
    let m = Mount::new(WB);
    let p = m.path("shared");
    let durable = pattern(12, 0, 8_192);
    durable_file(&p, &durable);
    {
        let plain = OpenOptions::new().write(true).open(&p).unwrap();
        let osync = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(&p)
            .unwrap();
        plain.write_all_at(b"plain, unsynced", 4_000).unwrap();
        // close(plain) writes its pages back, through `osync`.
        drop(plain);
        drop(osync);
    }
    let st = m.status_json();
    let e = report_file(&st, "shared").unwrap_or_else(|| panic!("shared not unsynced: {st}"));
    assert!(num(e, "unsynced_bytes") >= 15, "{st}");
    m.powercut_json();
    assert_eq!(read_all(&p), durable, "the plain handle's bytes survived");
}

#[test]
fn sizes_follow_appends_truncates_fallocate_and_copies() {
    let m = Mount::new(WB);
    let (p, q) = (m.path("s"), m.path("c"));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&pattern(13, 0, 10_000)).unwrap();
    assert_eq!(size(&p), 10_000);
    f.set_len(3_000).unwrap();
    assert_eq!(size(&p), 3_000);
    // SAFETY: valid fd; plain fallocate extending the file.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 20_000) }, 0);
    assert_eq!(size(&p), 20_000);
    f.write_all_at(b"end", 19_999).unwrap();
    assert_eq!(size(&p), 20_002);
    let g = File::create(&q).unwrap();
    let (mut oi, mut oo) = (0i64, 5_000i64);
    // SAFETY: valid fds and offset pointers.
    let n =
        unsafe { libc::copy_file_range(f.as_raw_fd(), &mut oi, g.as_raw_fd(), &mut oo, 3_000, 0) };
    assert_eq!(n, 3_000, "copy_file_range");
    assert_eq!(size(&q), 8_000);
    drop((f, g));
    m.sync();
    assert_eq!(size(&m.backing_path("s")), 20_002);
    assert_eq!(read_all(&p), read_all(&m.backing_path("s")));
    assert_eq!(read_all(&q), read_all(&m.backing_path("c")));
}

/// An injected write error hits a page writeback, not the program's write(2): the program
/// learns of it at fsync (as EIO, the kernel's error for a failed writeback).
#[test]
fn an_injected_write_error_reaches_the_program_at_fsync() {
    let m = Mount::new(WB);
    let p = m.path("f");
    durable_file(&p, &pattern(14, 0, 4_096));
    let mnt = m.path("");
    let out = m.lossctl(&[
        "fault",
        "add",
        mnt.to_str().unwrap(),
        "--op",
        "write",
        "--path",
        "f",
        "--errno",
        "EIO",
    ]);
    assert!(out.status.success(), "fault add: {out:?}");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"into the cache", 10)
        .expect("write(2) into the page cache fails only at writeback");
    let err = f.sync_all().expect_err("fsync after a failed writeback");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(f);
    m.powercut_json();
    assert_eq!(read_all(&p), pattern(14, 0, 4_096));
}

/// 1 GiB written by a program that stays alive, the file still open and nothing synced.
const HELD: usize = 1 << 30;

fn write_held(p: &Path) -> File {
    let f = File::create(p).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for i in 0..HELD / chunk.len() {
        f.write_all_at(&chunk, (i * chunk.len()) as u64).unwrap();
    }
    f
}

/// A `--no-kill` cut leaves the programs alive; syncfs alone only starts the writeback of
/// their pages: the cut waits for the pages of the files they hold, so its report counts
/// every byte a running program loses.
#[test]
fn a_no_kill_cut_counts_the_pages_a_live_program_still_holds() {
    let m = Mount::new(WB);
    let p = m.path("held");
    let f = write_held(&p);
    let rep = m.powercut_nokill_json();
    let file = report_file(&rep, "held").unwrap_or_else(|| panic!("held not reported: {rep}"));
    assert_eq!(num(file, "lost_bytes"), HELD as u64, "{rep}");
    assert_eq!(num(&rep, "lost_bytes"), HELD as u64, "{rep}");
    drop(f);
    assert_eq!(size(&p), 0, "none of its data was ever durable");
}

/// `lossctl sync` makes what a live program still holds in the page cache durable, as
/// sync(2) does on a disk: a cut after it loses nothing.
#[test]
fn lossctl_sync_takes_the_pages_a_live_program_still_holds() {
    let m = Mount::new(WB);
    let p = m.path("held");
    let f = write_held(&p);
    let rep = m.sync();
    assert_eq!(num(&rep, "bytes_synced"), HELD as u64, "{rep}");
    let cut = m.powercut_nokill_json();
    assert_eq!(num(&cut, "lost_bytes"), 0, "{cut}");
    drop(f);
    assert_eq!(size(&p), HELD as u64);
}
