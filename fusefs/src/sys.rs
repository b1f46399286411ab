//! The syscalls of the filesystem operations and the namespace models, on borrowed fds and
//! C-string names, with errors that keep their raw OS error.

use crate::error::{cvt, Context as _};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, FallocateFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Status of `fd` itself (a symlink's own, for an `O_PATH` fd of one).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstatat(
        fd,
        c"",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// Device, inode number and whether it is a regular file, of what `path` names, from the
/// attributes the kernel has cached (`AT_STATX_DONT_SYNC`): on a FUSE mount this sends no
/// request, so it cannot wait on a daemon, not even on a frozen one.
pub fn stat_cached(path: &CStr) -> io::Result<(u64, u64, bool)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is a valid C string and `stx` a writable statx buffer.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE | libc::STATX_INO,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded, so it filled the buffer (zeroed before anyway).
    let stx = unsafe { stx.assume_init() };
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let is_file = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG;
    Ok((dev, stx.stx_ino, is_file))
}

/// `sync_file_range(fd, 0, 0, WAIT_BEFORE|WRITE|WAIT_AFTER)`: writes back the whole file's
/// dirty pages and waits for them, without any cache flush or metadata (no FSYNC).
pub fn write_back_and_wait(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid fd; offset 0 with length 0 means the whole file.
    cvt(unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, flags) }).map(drop)
}

/// Opens `name` in `dir` (close-on-exec added).
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::openat(
        dir,
        name,
        OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        Mode::from_bits_retain(mode),
    )?)
}

/// Opens a path (the backing root, or a `/proc/self/fd/N` link to reopen a file; close-on-exec
/// added).
pub fn open_proc(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        Mode::empty(),
    )?)
}

pub fn sync_fd(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    if datasync {
        nix::unistd::fdatasync(fd)?;
    } else {
        nix::unistd::fsync(fd)?;
    }
    Ok(())
}

/// lstat of `name` in `dir`; `None` when there is no such entry.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn rename_at(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    new_name: &CStr,
    flags: u32,
) -> io::Result<()> {
    // The kernel validates the flags.
    let flags = RenameFlags::from_bits_retain(flags);
    Ok(nix::fcntl::renameat2(from, name, to, new_name, flags)?)
}

/// A second name for the entry `name` (never following a symlink).
pub fn link_at(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    Ok(nix::unistd::linkat(
        from,
        name,
        to,
        new_name,
        AtFlags::empty(),
    )?)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, rmdir: bool) -> io::Result<()> {
    let flags = if rmdir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    Ok(nix::unistd::unlinkat(dir, name, flags)?)
}

/// Opens a directory entry of `dir` as a directory (not following symlinks).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat(dir, name, flags | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

/// An `O_PATH` fd of entry `name` of `dir` (a symlink itself, not its target).
pub fn open_path_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// True when directory `name` of `dir` holds nothing but `.` and `..`.
pub fn dir_is_empty(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    let mut d = Dir::from_fd(open_dir_at(dir, name, libc::O_RDONLY)?)?;
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::mkdirat(
        dir,
        name,
        Mode::from_bits_retain(mode),
    )?)
}

/// mknod with `mode` holding both the file type and the permissions, as mknod(2) takes it.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u32) -> io::Result<()> {
    Ok(nix::sys::stat::mknodat(
        dir,
        name,
        SFlag::from_bits_retain(mode & libc::S_IFMT),
        Mode::from_bits_retain(mode & !libc::S_IFMT),
        rdev as libc::dev_t,
    )?)
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

/// A new name `name` in `dir` for the inode the `O_PATH` fd `fd` names.
pub fn link_fd_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::linkat(
        fd,
        c"",
        dir,
        name,
        AtFlags::AT_EMPTY_PATH,
    )?)
}

/// The target of the symlink the `O_PATH` fd `fd` names.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Ok(nix::fcntl::readlinkat(fd, c"")?.into_vec())
}

/// chmod through a path (a `/proc/self/fd/N` link: an `O_PATH` fd takes no fchmod).
pub fn chmod_path(path: &CStr, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmodat(
        AT_FDCWD,
        path,
        Mode::from_bits_retain(mode),
        FchmodatFlags::FollowSymlink,
    )?)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmod(fd, Mode::from_bits_retain(mode))?)
}

/// chown of what the `O_PATH` fd `fd` names (a symlink itself); `None` leaves an id as is.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    Ok(nix::unistd::fchownat(
        fd,
        c"",
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: libc::off_t) -> io::Result<()> {
    Ok(nix::unistd::ftruncate(fd, size)?)
}

/// utimensat through a path (`/proc/self/fd/N`), following it to the file.
pub fn utimens_path(path: &CStr, ts: [libc::timespec; 2]) -> io::Result<()> {
    Ok(nix::sys::stat::utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::from(ts[0]),
        &TimeSpec::from(ts[1]),
        UtimensatFlags::FollowSymlink,
    )?)
}

/// utimensat of what the `O_PATH` fd `fd` names (a symlink itself).
pub fn utimens_fd(fd: BorrowedFd<'_>, ts: [libc::timespec; 2]) -> io::Result<()> {
    // nix's utimensat takes no AT_EMPTY_PATH.
    // SAFETY: valid fd, empty C string used with AT_EMPTY_PATH, ts holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            ts.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    cvt(rc)?;
    Ok(())
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // nix's Statvfs does not hand out the libc struct the FUSE reply is built from.
    // SAFETY: an all-zero statvfs is a valid out-buffer.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid and sv is writable.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut sv) })?;
    Ok(sv)
}

pub fn fallocate(
    fd: BorrowedFd<'_>,
    mode: i32,
    off: libc::off_t,
    len: libc::off_t,
) -> io::Result<()> {
    Ok(nix::fcntl::fallocate(
        fd,
        FallocateFlags::from_bits_retain(mode),
        off,
        len,
    )?)
}

/// copy_file_range(2) with its flags passed through (nix's wrapper has none; the kernel
/// refuses any it does not know).
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: &mut libc::off_t,
    fd_out: BorrowedFd<'_>,
    off_out: &mut libc::off_t,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    // SAFETY: valid fds and offset pointers; the kernel checks len and flags.
    let n = unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            off_in,
            fd_out.as_raw_fd(),
            off_out,
            len,
            flags,
        )
    };
    Ok(cvt(n)? as usize)
}

/// lseek(2) with any `whence` (nix's wrapper takes only the ones it names).
pub fn lseek(fd: BorrowedFd<'_>, offset: libc::off_t, whence: i32) -> io::Result<libc::off_t> {
    // SAFETY: valid fd; the kernel validates offset and whence.
    cvt(unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) })
}

/// Reads directory entries into `buf` in the kernel's `linux_dirent64` layout, whose
/// `d_off` cookies are what readdir hands back (nix's `Dir` hides them); 0 at the end.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid fd and writable buffer of the given size.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    Ok(cvt(n)? as usize)
}

// nix has no xattr wrappers.

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: valid C strings and a value buffer of the given length.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

/// The value's length; with an empty `buf`, the length it needs.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid C strings; buf is writable for buf.len() bytes (0 = size query).
    let r = cvt(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    Ok(r as usize)
}

/// The names' length; with an empty `buf`, the length it needs.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid C string; buf is writable for buf.len() bytes (0 = size query).
    let r = cvt(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(r as usize)
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// Opens (creating, never truncating) a file of the state dir, mode 0600, close-on-exec.
pub fn open_private(path: &Path, what: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .with_ctx(|| format!("opening {what} {}", path.display()))
        .map_err(io::Error::from)
}
