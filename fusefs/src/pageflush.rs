//! Handing the kernel's dirty pages of a live mount to the daemon, and waiting for them.
//!
//! `syncfs` on a FUSE mount starts the writeback of its dirty pages but, on Linux 6.18, does
//! not wait for it (sync skips the integrity wait on FUSE mappings, so that a dead server
//! cannot hang it).  A cut that kills needs nothing more: a dying program's close writes its
//! file's pages back and waits.  A `--no-kill` cut and `lossctl sync` leave the programs
//! running, so their pages could reach the daemon after the rollback (refused, but never
//! counted) or after the sync.  Here every regular file of the mount that a live process has
//! open or mapped is opened again through `/proc/PID/fd/N` or `/proc/PID/map_files/RANGE`
//! and `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`'d: the kernel writes the file's dirty
//! pages back as page writebacks (unsynced writes, like any other) and waits for them.  No
//! FSYNC is sent, so nothing becomes durable.
//!
//! The files are told apart without entering any FUSE mount: their device and inode come
//! from the kernel's cached attributes (`sys::stat_cached`).

use crate::procscan::{self, MountTarget};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// What [`write_back_users_pages`] did: files waited for, and the ones that failed.
#[derive(Debug, Default)]
pub struct Flushed {
    pub files: usize,
    pub errors: Vec<String>,
}

/// Writes back and waits for the dirty pages of every file of the mount at `target` that a
/// process has open or mapped (the daemon itself excluded).
pub fn write_back_users_pages(target: &MountTarget) -> Flushed {
    let dev = libc::makedev(target.major, target.minor);
    let me = std::process::id() as i32;
    let mut seen = BTreeSet::new();
    let mut out = Flushed::default();
    for user in procscan::processes_using(target) {
        if user.pid == me {
            continue;
        }
        for link in candidates(user.pid) {
            let Ok(c) = CString::new(link.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            let Ok((d, ino, is_file)) = crate::sys::stat_cached(&c) else {
                continue;
            };
            if d != dev || !is_file || !seen.insert(ino) {
                continue;
            }
            match std::fs::File::open(&link)
                .and_then(|f| crate::sys::write_back_and_wait(f.as_fd()))
            {
                Ok(()) => out.files += 1,
                // Gone meanwhile (closed, unmapped, exited): nothing of it to wait for.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => out
                    .errors
                    .push(format!("{} (inode {ino}): {e}", link.display())),
            }
        }
    }
    out
}

/// The `/proc` links of a process's open files and mapped files.
fn candidates(pid: i32) -> Vec<PathBuf> {
    ["fd", "map_files"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(format!("/proc/{pid}/{d}"))
                .map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}
