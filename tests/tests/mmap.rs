//! Shared writable mappings: msync+fsync makes mapped writes durable; unsynced mapped
//! writes are lost at a power cut and never come back (not from late writeback, not after
//! a remount).

use lossfs_tests::{last_err, pattern, read_all, Mount};
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

const PAGE: usize = 4096;
const LEN: usize = 4 * PAGE;

/// A shared read-write mapping of the whole of `f`, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &fs::File, len: usize) -> Map {
        // SAFETY: mapping a file we opened read-write; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", last_err());
        Map {
            ptr: ptr.cast(),
            len,
        }
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: the range lies inside the live mapping, which nothing else aliases in
        // this process.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }

    fn msync(&self) {
        // SAFETY: ptr/len describe the live mapping.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) };
        assert_eq!(rc, 0, "msync: {}", last_err());
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping made by Map::new and not yet unmapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn open_rw(p: &std::path::Path) -> fs::File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// Checks the file now, after 2 s (late writeback), and after a remount.
fn assert_stays(m: &mut Mount, rel: &str, want: &[u8]) {
    assert!(
        read_all(&m.path(rel)) == want,
        "{rel}: wrong content right after the cut"
    );
    thread::sleep(Duration::from_secs(2));
    assert!(
        read_all(&m.path(rel)) == want,
        "{rel}: lost bytes reappeared after 2 s"
    );
    assert!(
        read_all(&m.backing_path(rel)) == want,
        "{rel}: backing file differs after 2 s"
    );
    m.remount();
    assert!(
        read_all(&m.path(rel)) == want,
        "{rel}: lost bytes reappeared after remount"
    );
}

fn zeroed_durable_file(m: &Mount, rel: &str) {
    let f = fs::File::create(m.path(rel)).unwrap();
    f.set_len(LEN as u64).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn msync_and_fsync_make_mapped_writes_durable() {
    let mut m = Mount::new(&[]);
    zeroed_durable_file(&m, "idx");
    let mut want = vec![0u8; LEN];
    {
        let f = open_rw(&m.path("idx"));
        let mut map = Map::new(&f, LEN);
        let data = pattern(9, 100, PAGE + 500);
        map.write(100, &data);
        want[100..100 + data.len()].copy_from_slice(&data);
        map.msync();
        f.sync_all().unwrap();
    }
    m.powercut_json();
    assert_stays(&mut m, "idx", &want);
}

#[test]
fn unsynced_mapped_writes_are_lost_after_munmap() {
    let mut m = Mount::new(&[]);
    zeroed_durable_file(&m, "idx");
    let mut want = vec![0u8; LEN];
    {
        let f = open_rw(&m.path("idx"));
        let mut map = Map::new(&f, LEN);
        let synced = pattern(10, 0, 200);
        map.write(0, &synced);
        want[..200].copy_from_slice(&synced);
        map.msync();
        f.sync_all().unwrap();
        // Dirty pages left behind without msync or fsync; munmap does not write them.
        map.write(PAGE + 7, &pattern(11, 0, 2 * PAGE));
        map.write(50, b"volatile");
    }
    m.powercut_json();
    assert_stays(&mut m, "idx", &want);
}

#[test]
fn unsynced_mapped_writes_are_lost_with_mapping_held_across_cut() {
    let mut m = Mount::new(&[]);
    zeroed_durable_file(&m, "idx");
    let want = vec![0u8; LEN];
    let f = open_rw(&m.path("idx"));
    let mut map = Map::new(&f, LEN);
    map.write(0, &pattern(12, 0, LEN));
    m.powercut_nokill_json();
    drop(map);
    drop(f);
    assert_stays(&mut m, "idx", &want);
}

#[test]
fn msync_ms_sync_alone_makes_mapped_writes_durable() {
    // The kernel turns msync(MS_SYNC) of a shared mapping into an fdatasync of the file (as
    // on a local filesystem), which reaches lossfs as FSYNC: no separate fsync needed.
    let mut m = Mount::new(&[]);
    zeroed_durable_file(&m, "idx");
    let mut want = vec![0u8; LEN];
    {
        let f = open_rw(&m.path("idx"));
        let mut map = Map::new(&f, LEN);
        let data = pattern(13, 0, PAGE + 9);
        map.write(PAGE - 3, &data);
        want[PAGE - 3..2 * PAGE + 6].copy_from_slice(&data);
        map.msync();
    }
    m.powercut_json();
    assert_stays(&mut m, "idx", &want);
}
