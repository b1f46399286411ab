//! The one call every FUSE operation goes through ([`guarded`]): hold the power-cut gate
//! while the operation runs, and when anything is armed, consult the fault engine first
//! (crash point, errno, delay, lie, disk full) and after (crash point after the operation,
//! disk accounting).  Paths are computed only when a rule with a pattern waits for that
//! operation.

use super::diskfull;
use super::{Faults, FsyncError, Slept};
use crate::error::{FsError, FsResult};
use crate::faultspec::{is_writeback_error, FaultAction, Op, When};
use crate::fs::LossFs;
use crate::sys::fstat;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;
use std::time::Duration;

/// What an operation acts on, as far as rules care.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    None,
    /// An inode (open, fsync, getattr, setattr...).
    Node(u64),
    /// Bytes `[off, off+len)` of an inode that may be allocated (write, fallocate,
    /// copy_file_range's destination); `frees` for hole punching.
    Data {
        ino: u64,
        off: u64,
        len: u64,
        frees: bool,
    },
    /// A name in a directory (create, mkdir, unlink...).
    Name(u64, &'a OsStr),
    Rename {
        parent: u64,
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    },
}

/// One operation as the fault engine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub op: Op,
    /// The calling thread (FUSE's pid field), 0 for the kernel's own requests.
    pub pid: u32,
    pub target: Target<'a>,
    /// The file handle the operation goes through, if any.
    pub fh: Option<u64>,
}

fn cut_error() -> FsError {
    FsError::new(libc::EIO, "power cut at a crash point").at_level(tracing::Level::INFO)
}

/// Runs `f` (the operation) under the power-cut gate, with the armed faults applied.
pub fn guarded<T>(
    fs: &LossFs,
    faults: &Arc<Faults>,
    call: Call<'_>,
    f: impl FnOnce() -> FsResult<T>,
) -> FsResult<T> {
    if !faults.active() {
        let _gate = fs.enter();
        return f();
    }
    slow(fs, faults, call, f, || None)
}

/// [`guarded`] for fsync, fdatasync and fsyncdir, which a `lie` rule may answer with
/// success without doing anything.
pub fn guarded_sync(
    fs: &LossFs,
    faults: &Arc<Faults>,
    call: Call<'_>,
    f: impl FnOnce() -> FsResult<()>,
) -> FsResult<()> {
    if !faults.active() {
        let _gate = fs.enter();
        return f();
    }
    slow(fs, faults, call, f, || Some(()))
}

fn slow<T>(
    fs: &LossFs,
    faults: &Arc<Faults>,
    call: Call<'_>,
    f: impl FnOnce() -> FsResult<T>,
    lie: impl FnOnce() -> Option<T>,
) -> FsResult<T> {
    if !faults.caller_survives_cut(call.pid) {
        return Err(FsError::new(
            libc::EIO,
            "caller killed by a crash-point power cut; not applied",
        )
        .at_level(tracing::Level::INFO));
    }
    let recording = faults.recording() && super::record::recorded(call.op.name());
    let paths = if recording || faults.wants_path(call.op) {
        paths_of(fs, faults, &call.target)
    } else {
        Vec::new()
    };
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let rec = recording.then(|| {
        let span = match call.target {
            Target::Data { off, len, .. } => Some((off, len)),
            _ => None,
        };
        let sync = call.op == Op::Write && call.fh.is_some_and(|fh| fs.writes_are_sync(fh));
        (span, sync)
    });
    let d = faults.decide(call.op, &path_refs, rec);
    let first_path = paths.first().cloned();
    if d.crash == Some(When::Before) {
        faults.start_cut(call.pid, call.op, When::Before, first_path, Vec::new());
        return Err(cut_error());
    }
    if let Some(FaultAction::DelayMs(ms)) = d.fault {
        // No gate held while sleeping: a power cut must not wait for a delay.
        if faults.sleep(Duration::from_millis(ms)) == Slept::Aborted {
            return Err(
                FsError::new(libc::EIO, "delayed request abandoned by a power cut")
                    .at_level(tracing::Level::INFO),
            );
        }
    }
    let gate = fs.enter();
    match d.fault {
        Some(FaultAction::Errno(e)) => {
            if matches!(call.op, Op::Fsync | Op::Fdatasync)
                && is_writeback_error(e)
                && faults.fsync_error() == FsyncError::Drop
            {
                if let Target::Node(ino) = call.target {
                    discard_unsynced(fs, faults, ino);
                }
            }
            return Err(FsError::new(e, "injected by a fault rule"));
        }
        Some(FaultAction::Lie) => {
            if let Some(v) = lie() {
                return Ok(v);
            }
        }
        Some(FaultAction::DelayMs(_)) | None => {}
    }
    let disk = if faults.disk_full_on() {
        Some(disk_before(fs, faults, &call)?)
    } else {
        None
    };
    let r = f();
    if let Some(before) = disk {
        if r.is_ok() {
            disk_after(fs, faults, before);
        }
    }
    if d.crash == Some(When::After) {
        drop(gate);
        faults.start_cut(
            call.pid,
            call.op,
            When::After,
            first_path,
            changed_entries(&call.target),
        );
        return Err(cut_error());
    }
    r
}

/// Linux semantics of a failed fsync: the unsynced data of the file will never be durable.
/// lossfs rolls it back at once and invalidates the kernel's cache of the file.
fn discard_unsynced(fs: &LossFs, faults: &Faults, ino: u64) {
    let Some(inode) = fs.inodes.get(ino) else {
        return;
    };
    let lost = fs.journal.lock(inode.key, &inode.handle).discard_unsynced();
    match lost {
        Ok(bytes) => tracing::info!(
            ino,
            bytes,
            "injected fsync error: the file's unsynced data is dropped"
        ),
        Err(e) => {
            tracing::warn!(ino, error = %e, "injected fsync error: cannot drop the unsynced data")
        }
    }
    faults.invalidate_later(ino);
}

/// The names an operation may have changed, which the kernel must forget when it is told
/// the operation failed.
fn changed_entries(t: &Target<'_>) -> Vec<(u64, OsString)> {
    match *t {
        Target::Name(parent, name) => vec![(parent, name.to_os_string())],
        Target::Rename {
            parent,
            name,
            newparent,
            newname,
            ..
        } => vec![
            (parent, name.to_os_string()),
            (newparent, newname.to_os_string()),
        ],
        _ => Vec::new(),
    }
}

// ---- paths ----

fn readlink(path: &CString) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid C string and a writable buffer of the given length.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn backing_root(fs: &LossFs, faults: &Faults) -> Option<Vec<u8>> {
    if let Some(root) = faults.backing_root.get() {
        return Some(root.clone());
    }
    let fd = fs.inodes.backing_root().as_raw_fd();
    let c = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let root = readlink(&c)?;
    Some(faults.backing_root.get_or_init(|| root).clone())
}

/// Path of an inode relative to the mount root (`""` for the root); `None` if it has no
/// name any more or lies outside the backing directory.
fn node_path(fs: &LossFs, faults: &Faults, ino: u64) -> Option<String> {
    let inode = fs.inodes.get(ino)?;
    let pfd = fs.inodes.path_fd(&inode).ok()?;
    let full = readlink(&pfd.proc_path())?;
    if full.ends_with(b" (deleted)") {
        return None;
    }
    let root = backing_root(fs, faults)?;
    let rel = if full == root {
        &[][..]
    } else {
        let rest = full.strip_prefix(root.as_slice())?;
        match rest.strip_prefix(b"/") {
            Some(r) => r,
            // "/" as the backing root: every path is under it.
            None if root == b"/" => rest,
            None => return None,
        }
    };
    Some(String::from_utf8_lossy(rel).into_owned())
}

fn child_path(fs: &LossFs, faults: &Faults, parent: u64, name: &OsStr) -> Option<String> {
    let p = node_path(fs, faults, parent)?;
    let name = String::from_utf8_lossy(name.as_bytes());
    Some(if p.is_empty() {
        name.into_owned()
    } else {
        format!("{p}/{name}")
    })
}

fn paths_of(fs: &LossFs, faults: &Faults, t: &Target<'_>) -> Vec<String> {
    match *t {
        Target::None => Vec::new(),
        Target::Node(ino) | Target::Data { ino, .. } => {
            node_path(fs, faults, ino).into_iter().collect()
        }
        Target::Name(parent, name) => child_path(fs, faults, parent, name).into_iter().collect(),
        Target::Rename {
            parent,
            name,
            newparent,
            newname,
            ..
        } => child_path(fs, faults, parent, name)
            .into_iter()
            .chain(child_path(fs, faults, newparent, newname))
            .collect(),
    }
}

// ---- disk full ----

/// What to account once the operation succeeded.
struct DiskBefore {
    /// The inode whose allocation may change, and its allocation before.
    node: Option<(u64, u64)>,
    /// Bytes freed if the operation succeeds (the last name of a file removed).
    freed: u64,
}

fn stat_node(fs: &LossFs, ino: u64) -> Option<libc::stat> {
    let inode = fs.inodes.get(ino)?;
    let pfd = fs.inodes.path_fd(&inode).ok()?;
    fstat(pfd.fd()).ok()
}

/// Allocated bytes freed if the name `name` in `parent` goes away (its last link).
fn freed_by_removing(fs: &LossFs, parent: u64, name: &OsStr) -> u64 {
    let Some(inode) = fs.inodes.get(parent) else {
        return 0;
    };
    let Ok(pfd) = fs.inodes.path_fd(&inode) else {
        return 0;
    };
    let Ok(c) = CString::new(name.as_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, C string and writable stat.
    let rc = unsafe {
        libc::fstatat(
            pfd.fd().as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_nlink != 1 {
        return 0;
    }
    diskfull::allocated(&st)
}

fn no_space() -> FsError {
    FsError::new(libc::ENOSPC, "disk full (lossctl fault disk-full)")
}

/// Space a new directory entry or inode is counted to need.
const ENTRY_BYTES: u64 = 4096;

fn disk_before(fs: &LossFs, faults: &Faults, call: &Call<'_>) -> FsResult<DiskBefore> {
    let mut out = DiskBefore {
        node: None,
        freed: 0,
    };
    match (call.op, call.target) {
        (
            _,
            Target::Data {
                ino,
                off,
                len,
                frees,
            },
        ) => {
            if let Some(st) = stat_node(fs, ino) {
                let alloc = diskfull::allocated(&st);
                let adds = if frees {
                    0
                } else {
                    diskfull::write_may_add(st.st_size as u64, alloc, off, len)
                };
                if adds > 0 && !faults.room_for(adds) {
                    return Err(no_space());
                }
                out.node = Some((ino, alloc));
            }
        }
        (Op::Truncate, Target::Node(ino)) => {
            out.node = stat_node(fs, ino).map(|st| (ino, diskfull::allocated(&st)));
        }
        (Op::Create | Op::Mkdir | Op::Mknod | Op::Symlink | Op::Link, _)
            if !faults.room_for(ENTRY_BYTES) =>
        {
            return Err(no_space());
        }
        (Op::Unlink, Target::Name(parent, name)) => {
            out.freed = freed_by_removing(fs, parent, name);
        }
        (
            Op::Rename,
            Target::Rename {
                newparent,
                newname,
                flags,
                ..
            },
        ) if flags & libc::RENAME_EXCHANGE == 0 => {
            out.freed = freed_by_removing(fs, newparent, newname);
        }
        _ => {}
    }
    Ok(out)
}

fn disk_after(fs: &LossFs, faults: &Faults, before: DiskBefore) {
    if let Some((ino, alloc)) = before.node {
        if let Some(st) = stat_node(fs, ino) {
            let now = diskfull::allocated(&st);
            faults.account(now as i64 - alloc as i64);
        }
    }
    if before.freed > 0 {
        faults.account(-(before.freed as i64));
    }
}

/// Counts what the mount holds now, for `lossctl fault disk-full`.
pub fn measure_disk(fs: &LossFs, faults: &Faults) -> Result<u64, String> {
    let root = backing_root(fs, faults).ok_or("cannot name the backing directory")?;
    let root = std::path::PathBuf::from(std::ffi::OsString::from_vec(root));
    diskfull::walk(&root, fs.journal.state_dir())
        .map_err(|e| format!("measuring {}: {e}", root.display()))
}
