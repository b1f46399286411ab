//! The mount's backing-device settings in sysfs (`/sys/class/bdi/MAJOR:MINOR/`): the
//! readahead window, and with the writeback cache how much dirty data the mount may hold.
//!
//! A FUSE mount starts with the kernel's 128 KiB window, so a sequential reader gets one
//! 128 KiB read request after another although a request may carry 1 MiB (max_pages follows
//! max_write).  Every request is a round trip through the daemon; a 1 MiB window cuts them
//! eightfold.  The kernel lowers the window to the value agreed in FUSE_INIT when that reply
//! arrives: so it is set only once INIT is over.
//!
//! The kernel lets a FUSE mount hold at most 1% of the system's dirty-page limit
//! (`max_ratio`, enforced strictly) where a disk may hold all of it: with the writeback
//! cache, a program writing more than that (about 48 MiB on a 24 GiB machine) waits for
//! page writebacks one by one, as it never would on a disk (random 4 KiB overwrites of a
//! 256 MiB file: 0.2x native at 1%, 0.98x at 100%; docs/BENCHMARKS.md).

use std::io;
use std::path::{Path, PathBuf};

use crate::mountinfo;

/// A sysfs file of a backing device (the mount's anonymous device for FUSE).
pub fn sysfs_path(major: u32, minor: u32, knob: &str) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/{knob}"))
}

/// Returns once the mount at `mountpoint` answers: the kernel holds every request on a FUSE
/// mount until it has taken the daemon's FUSE_INIT reply, so this must run on a thread of
/// its own while the session serves requests.  An error means the session ended first.
pub fn wait_for_init(mountpoint: &Path) -> io::Result<()> {
    // Answered by our own statfs handler, once INIT has been processed.
    nix::sys::statvfs::statvfs(mountpoint).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("statfs {}: {e}", mountpoint.display()),
        )
    })?;
    Ok(())
}

/// Sets the readahead window of the FUSE mount at `mountpoint` to `kb` KiB (after
/// [`wait_for_init`]).
pub fn set_read_ahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    set(mountpoint, "read_ahead_kb", kb)
}

/// Lets the mount at `mountpoint` hold `percent` of the system's dirty-page limit.
pub fn set_max_dirty_ratio(mountpoint: &Path, percent: u32) -> io::Result<()> {
    set(mountpoint, "max_ratio", percent)
}

fn set(mountpoint: &Path, knob: &str, value: u32) -> io::Result<()> {
    let m = mountinfo::mount_at(mountpoint)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not in /proc/self/mountinfo", mountpoint.display()),
        )
    })?;
    let path = sysfs_path(m.major, m.minor, knob);
    std::fs::write(&path, format!("{value}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_path_names_the_bdi_by_device_numbers() {
        assert_eq!(
            sysfs_path(0, 52, "max_ratio"),
            PathBuf::from("/sys/class/bdi/0:52/max_ratio")
        );
    }
}
