//! `-o writebehind=MiB`: large sequential writes start the backing disk's writeback while the
//! program writes (the backing file holds no dirty pages for the chunks written, which
//! `cachestat(2)` shows), and nothing about durability changes: every byte written that way
//! without fsync is still rolled back at a cut, overwritten durable bytes come back, and
//! fsync still makes exactly its file durable.

use lossfs_tests::{num, pattern, read_all, report_file, Mount};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MIB: usize = 1 << 20;

/// `cachestat(2)` (Linux 6.5; number 451 on every architecture, libc does not name it for
/// x86_64 yet).
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Dirty pages of `p`'s page cache in `[0, len)`.
fn dirty_pages(p: &Path, len: usize) -> u64 {
    let f = File::open(p).unwrap();
    let range = CachestatRange {
        off: 0,
        len: len as u64,
    };
    let mut cs = Cachestat::default();
    // SAFETY: both pointers are valid for the call; the kernel writes only `cs`.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    assert_eq!(
        r,
        0,
        "cachestat({}): {} (needs Linux 6.5)",
        p.display(),
        std::io::Error::last_os_error()
    );
    cs.nr_dirty
}

/// Writes `data` to `f` at `off` in 1 MiB writes: a large sequential stream.
fn write_mib_chunks(f: &File, off: usize, data: &[u8]) {
    for (i, c) in data.chunks(MIB).enumerate() {
        f.write_all_at(c, (off + i * MIB) as u64).unwrap();
    }
}

#[test]
fn written_behind_data_is_on_its_way_to_disk_and_still_rolled_back_at_a_cut() {
    let m = Mount::new(&["writebehind=1"]);
    let p = m.path("big");
    let durable = pattern(1, 0, 3 * MIB);
    {
        let f = File::create(&p).unwrap();
        write_mib_chunks(&f, 0, &durable);
        f.sync_all().unwrap();
    }
    // Overwrite the durable 3 MiB and append 2 MiB, never fsynced.
    let unsynced = pattern(2, 0, 5 * MIB);
    {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        write_mib_chunks(&f, 0, &unsynced);
        // With the writeback cache the pages reach lossfs at the close.
    }
    assert_eq!(read_all(&m.backing_path("big")), unsynced);
    // Every chunk was handed to the disk as it was completed: (almost) nothing of it is
    // still dirty in the backing file's cache.  Without write-behind all 1280 pages are,
    // until the kernel's flusher comes by after 30 s; the bound leaves room for pages the
    // kernel's writeback skipped because they were busy, not for a chunk left unstarted.
    let dirty = dirty_pages(&m.backing_path("big"), 5 * MIB);
    assert!(
        dirty < (MIB / 4096) as u64 / 4,
        "{dirty} dirty pages of the backing file after write-behind"
    );

    let rep = m.powercut_json();
    let e = report_file(&rep, "big").unwrap_or_else(|| panic!("no entry for big in {rep}"));
    assert_eq!(num(e, "size_before"), (5 * MIB) as u64, "{rep}");
    assert_eq!(num(e, "size_after"), (3 * MIB) as u64, "{rep}");
    assert_eq!(read_all(&p), durable, "content after the cut");
    assert_eq!(
        read_all(&m.backing_path("big")),
        durable,
        "backing after the cut"
    );
}

#[test]
fn fsync_still_makes_exactly_its_file_durable() {
    let m = Mount::new(&["writebehind=1"]);
    let (p, q) = (m.path("synced"), m.path("unsynced"));
    let kept = pattern(3, 0, 4 * MIB);
    {
        let f = File::create(&p).unwrap();
        write_mib_chunks(&f, 0, &kept);
        f.sync_data().unwrap();
    }
    {
        let g = File::create(&q).unwrap();
        write_mib_chunks(&g, 0, &pattern(4, 0, 4 * MIB));
    }
    m.powercut_json();
    assert_eq!(read_all(&p), kept, "the fsynced file");
    assert_eq!(fs::metadata(&q).unwrap().len(), 0, "the file never fsynced");
}
