//! The syscalls of the filesystem operations and the namespace models, on borrowed fds and
//! C-string names, with errors that keep their raw OS error.

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Status of `fd` itself (a symlink's own, for an `O_PATH` fd of one).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstatat(
        fd,
        c"",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
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

/// Opens a path (a `/proc/self/fd/N` link, to reopen a file; close-on-exec added).
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
