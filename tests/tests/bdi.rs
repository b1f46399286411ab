//! The mount's backing-device settings: the readahead window, 1 MiB by default (so
//! sequential reads arrive as 1 MiB requests), `read_ahead_kb=N` sets it, `read_ahead_kb=0`
//! leaves the kernel's own; with the writeback cache, the share of the dirty-page limit the
//! mount may hold: all of it by default (`max_ratio` 100, as a disk), `dirty_ratio=N` sets
//! it, and without the writeback cache the kernel's 1% for FUSE stays.

use lossfs_tests::Mount;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// A bdi setting of the mount.  The daemon sets them once FUSE_INIT is over, so with
/// `want` this waits (bounded) for that value; without, it reads once.
fn knob(m: &Mount, name: &str, want: Option<&str>) -> String {
    let dev = std::fs::metadata(&m.mnt).expect("stat mount point").dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/{name}",
        libc::major(dev),
        libc::minor(dev)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {path}: {e}"))
            .trim()
            .to_string();
        if want.is_none_or(|w| v == w) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_ahead_kb(m: &Mount, want: Option<&str>) -> String {
    knob(m, "read_ahead_kb", want)
}

#[test]
fn default_window_is_one_mib() {
    let m = Mount::new(&[]);
    assert_eq!(read_ahead_kb(&m, Some("1024")), "1024");
}

#[test]
fn option_sets_the_window() {
    let m = Mount::new(&["read_ahead_kb=256"]);
    assert_eq!(read_ahead_kb(&m, Some("256")), "256");
}

#[test]
fn zero_leaves_the_kernel_default() {
    let m = Mount::new(&["read_ahead_kb=0"]);
    // Give a (wrong) setter thread time to act before reading the value it would change.
    std::thread::sleep(Duration::from_millis(300));
    let v = read_ahead_kb(&m, None);
    assert_ne!(v, "1024", "read_ahead_kb=0 must not set the 1 MiB window");
}

#[test]
fn the_writeback_cache_may_hold_what_a_disk_may() {
    let m = Mount::new(&["cache=writeback"]);
    assert_eq!(knob(&m, "max_ratio", Some("100")), "100");
    let m = Mount::new(&["cache=writeback,dirty_ratio=7"]);
    assert_eq!(knob(&m, "max_ratio", Some("7")), "7");
}

#[test]
fn write_through_keeps_the_kernels_share() {
    let m = Mount::new(&["cache=writethrough"]);
    // Give a (wrong) setter thread time to act before reading the value it would change.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(knob(&m, "max_ratio", None), "1");
}
