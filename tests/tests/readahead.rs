//! The mount's kernel readahead window: 1 MiB by default (so sequential reads arrive as
//! 1 MiB requests), `read_ahead_kb=N` sets it, `read_ahead_kb=0` leaves the kernel's own.

use lossfs_tests::Mount;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The bdi setting of the mount.  The daemon sets it on a thread once FUSE_INIT is over, so
/// with `want` this waits (bounded) for that value; without, it reads once.
fn read_ahead_kb(m: &Mount, want: Option<&str>) -> String {
    let dev = std::fs::metadata(&m.mnt).expect("stat mount point").dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
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
