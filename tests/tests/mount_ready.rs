//! `lossfs BACKING MNT` (detached) returns once the mount answers, with nothing of the
//! daemon's own in flight on it, so an unmount right away is never busy.  A file of its own:
//! the 200 processes it starts must not fork beside another test's open files on its mount
//! (a child between fork and exec holds them, and that mount's unmount is then busy).

use lossfs_tests::scratch::ScratchMount;
use lossfs_tests::{output_text, run_bounded};
use std::process::Command;
use std::time::Duration;

/// It used to return before FUSE_INIT, while its readahead setter's statfs waited on the
/// mount.
#[test]
fn an_unmount_right_after_the_mount_returns_is_never_busy() {
    let dirs = ScratchMount::new("mount-unmount");
    // The old code failed about one run in three of 30 rounds on a loaded machine.
    for round in 1..=100 {
        let out = run_bounded(&mut dirs.lossfs(), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "round {round}: lossfs: {}",
            output_text(&out)
        );
        let u = run_bounded(
            Command::new("fusermount3").arg("-u").arg(&dirs.mnt),
            Duration::from_secs(20),
        );
        assert!(
            u.status.success(),
            "round {round}: fusermount3 -u right after lossfs returned: {}",
            output_text(&u)
        );
    }
}
