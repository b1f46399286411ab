//! The kernel's readahead window for the mount.
//!
//! A FUSE mount starts with the kernel's 128 KiB window, so a sequential reader gets one
//! 128 KiB read request after another although a request may carry 1 MiB (max_pages follows
//! max_write).  Every request is a round trip through the daemon; a 1 MiB window cuts them
//! eightfold.  The window is the mount's backing-device setting in sysfs
//! (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), which the kernel lowers to the value agreed
//! in FUSE_INIT when that reply arrives: so it is set only once INIT is over.

use std::io;
use std::path::{Path, PathBuf};

use crate::mountinfo;

/// The sysfs file of a backing device (the mount's anonymous device for FUSE).
pub fn sysfs_path(major: u32, minor: u32) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
}

/// Sets the readahead window of the FUSE mount at `mountpoint` to `kb` KiB.  Blocks until
/// the kernel has taken the daemon's FUSE_INIT reply (a statfs through the mount waits for
/// it), so it must run on its own thread while the session serves requests.
pub fn set_after_init(mountpoint: &Path, kb: u32) -> io::Result<()> {
    // Answered by our own statfs handler; returns once INIT has been processed.
    nix::sys::statvfs::statvfs(mountpoint).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("statfs {}: {e}", mountpoint.display()),
        )
    })?;
    let m = mountinfo::mount_at(mountpoint)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not in /proc/self/mountinfo", mountpoint.display()),
        )
    })?;
    let path = sysfs_path(m.major, m.minor);
    std::fs::write(&path, format!("{kb}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_path_names_the_bdi_by_device_numbers() {
        assert_eq!(
            sysfs_path(0, 52),
            PathBuf::from("/sys/class/bdi/0:52/read_ahead_kb")
        );
    }
}
