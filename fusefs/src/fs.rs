//! `LossFs`: the semantics of every filesystem operation, with plain arguments and
//! `FsResult` returns, so that it is tested without a mount.  The FUSE adapter in
//! [`crate::fuse`] only decodes, calls and replies.
//!
//! Every name operation is relative to the parent's fd (`*at()` with `O_NOFOLLOW`); data fds
//! are reopened through `/proc/self/fd/N`.  Every change to file content first goes through
//! the durability journal ([`crate::journal`]) and then straight to the backing file.
//!
//! A power cut freezes all operations through `gate` (every operation holds a read lock while
//! it runs), rolls back, and bumps `epoch`: handles opened in an older epoch answer EIO.

use crate::ascaller::AsCaller;
use crate::error::{Context, FsError, FsResult};
use crate::filekey::FileKey;
use crate::inode::{Inode, InodeTable, PathFd, ROOT};
use crate::journal::Journal;
use crate::namespace::{Creating, Kind, Namespace, Parent};
use crate::sys::{self, fstat, open_proc, openat, sync_fd};
use crate::writebehind::WriteBehind;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Who asked: the requesting process's credentials.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A time to set: unchanged, now, or a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Omit,
    Now,
    At(libc::timespec),
}

/// The changes a setattr asks for.
#[derive(Clone, Copy, Debug)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
    /// The pid of the caller, for a truncate: unless it holds CAP_FSETID, the file loses
    /// its set-user-ID (and group-executable set-group-ID) bit, as a truncate by it would
    /// do on a local filesystem.  With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to
    /// us, and the daemon's own ftruncate (as root) would keep the bits.
    pub truncated_by: Option<u32>,
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    pub inode: Arc<Inode>,
    file: File,
    epoch: u64,
    /// Opened O_SYNC/O_DSYNC: every write is durable when it returns.
    sync_writes: bool,
    /// The backing fd is O_APPEND (an append-only file): every write lands at its end.
    appends: bool,
}

impl AsFd for OpenFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// An open directory: its own fd, positioned by the offsets the kernel hands back.
#[derive(Debug)]
struct OpenDir {
    inode: Arc<Inode>,
    fd: OwnedFd,
    epoch: u64,
    lock: Mutex<()>,
}

/// Where readdir puts entries; `add` returns true when the reply buffer is full.
pub trait DirSink {
    fn add(&mut self, ino: u64, offset: i64, kind: u8, name: &OsStr) -> bool;
}

/// Where readdirplus puts entries with their looked-up attributes; true when full (the
/// entry was then not taken and its lookup is undone).
pub trait DirPlusSink {
    fn add(&mut self, offset: i64, name: &OsStr, entry: Option<(&Inode, &libc::stat)>) -> bool;
}

/// A name hidden from the mount: the state directory, when it lives under BACKING.
#[derive(Clone, Debug)]
pub struct Hidden {
    pub parent: FileKey,
    pub name: OsString,
}

pub struct LossFs {
    pub inodes: InodeTable,
    pub journal: Arc<Journal>,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: RwLock<HashMap<u64, Arc<OpenDir>>>,
    next_fh: AtomicU64,
    epoch: AtomicU64,
    gate: RwLock<()>,
    hidden: Option<Hidden>,
    /// The namespace durability model's undo state; `None` for `metadata=durable`, where
    /// name operations go straight to the backing directory.
    pub ns: Option<Arc<Namespace>>,
    /// `cache=writeback`: the kernel's writeback cache is on.  Writes then arrive as page
    /// writebacks through whichever writable handle of the inode the kernel picks.
    pub writeback_cache: bool,
    /// `writebehind=N`: start the disk writeback of large sequential writes early.
    pub writebehind: Option<WriteBehind>,
}

fn cstr(name: &OsStr) -> FsResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| FsError::new(libc::EINVAL, "name with NUL"))
}

/// A name a program may create or look up inside a directory: one component.
fn component(name: &OsStr) -> FsResult<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(FsError::new(libc::EINVAL, "name is not one path component"));
    }
    cstr(name)
}

/// Writes as much of `data` at `off` as the backing file takes.  An error after some bytes
/// were written (a disk filling up) gives the count written, as write(2) does: the program
/// is told exactly what reached the file, and learns of the error on its next write.
fn write_some_at(file: &File, data: &[u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match file.write_at(&data[done..], off + done as u64) {
            Ok(0) if done == 0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Runs the rest of the scope with the caller's filesystem credentials (see `ascaller`).
fn as_caller(c: Caller) -> FsResult<AsCaller> {
    AsCaller::new(c.uid, c.gid, c.pid).ctx("switch to the caller's credentials")
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::At(ts) => ts,
    }
}

impl LossFs {
    pub fn new(inodes: InodeTable, journal: Arc<Journal>, hidden: Option<Hidden>) -> LossFs {
        LossFs {
            inodes,
            journal,
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            gate: RwLock::new(()),
            hidden,
            ns: None,
            writeback_cache: false,
            writebehind: None,
        }
    }

    /// Starts the backing disk's writeback of large sequential writes every `mib` MiB.
    pub fn with_writebehind(mut self, mib: u64) -> LossFs {
        self.writebehind = Some(WriteBehind::new(mib << 20));
        self
    }

    /// Serves the mount with the kernel's writeback cache (`cache=writeback`).
    pub fn with_writeback_cache(mut self) -> LossFs {
        self.writeback_cache = true;
        self
    }

    /// The generation handed to the kernel with every entry.  With the writeback cache the
    /// kernel keeps its own file size and never takes ours for an inode it holds, so each
    /// power cut starts a new generation: an inode the kernel still holds from before the
    /// cut (a `--no-kill` program's open file) is found stale at its next lookup, made bad
    /// (its I/O fails with EIO) and replaced by a fresh inode with the rolled-back size.
    pub fn generation(&self) -> u64 {
        if self.writeback_cache {
            self.epoch.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Tracks name operations with `ns` (a model other than `durable`).
    pub fn with_namespace(mut self, ns: Arc<Namespace>) -> LossFs {
        self.ns = Some(ns);
        self
    }

    /// Logs an upcoming creation when a namespace model tracks it.
    fn before_create<'a>(
        &'a self,
        p: &Inode,
        pfd: &PathFd,
        name: &CStr,
        kind: Kind,
    ) -> FsResult<Option<Creating<'a>>> {
        match &self.ns {
            None => Ok(None),
            Some(ns) => ns
                .before_create(parent_of(p, pfd), name, kind)
                .map(Some)
                .ctx("namespace log"),
        }
    }

    /// The range of a write-and-wait `sync_file_range` on node `nodeid`, seen by the tracer
    /// (`-o sync_file_range=stable`) in cut epoch `epoch`: committed unless a power cut
    /// came since (the call belonged to the machine before it).
    pub fn commit_synced_range(&self, nodeid: u64, epoch: u64, start: u64, end: u64) {
        let _gate = self.enter();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let Some(inode) = self.inodes.get(nodeid).filter(|i| i.is_reg()) else {
            return;
        };
        match self
            .journal
            .commit_range(inode.key, &inode.handle, start, end)
        {
            Ok(n) => tracing::debug!(nodeid, start, end, committed = n, "sync_file_range commit"),
            Err(e) => tracing::warn!(nodeid, "sync_file_range commit: {e}"),
        }
    }

    /// Held by every operation while it runs; a power cut takes it exclusively.
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Freezes every operation, runs `f` (the rollback), then starts a new epoch so that
    /// handles opened before it answer EIO.
    pub fn frozen<T>(&self, f: impl FnOnce() -> T) -> T {
        let _frozen = self.gate.write();
        let out = f();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // Old handles will never work again: close their backing fds now.
        self.files.write().clear();
        self.dirs.write().clear();
        out
    }

    fn inode(&self, nodeid: u64) -> FsResult<Arc<Inode>> {
        self.inodes
            .get(nodeid)
            .ok_or(FsError::new(libc::ESTALE, "unknown inode"))
    }

    fn path_fd(&self, inode: &Arc<Inode>) -> FsResult<PathFd> {
        self.inodes.path_fd(inode).ctx("reopen by file handle")
    }

    fn is_hidden(&self, parent: &Inode, name: &OsStr) -> bool {
        match &self.hidden {
            Some(h) => parent.key == h.parent && name == h.name,
            None => false,
        }
    }

    /// Whether writes through `fh` are durable when they return (opened O_SYNC/O_DSYNC).
    pub fn writes_are_sync(&self, fh: u64) -> bool {
        self.files.read().get(&fh).is_some_and(|f| f.sync_writes)
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        let f = self.files.read().get(&fh).cloned().ok_or(
            FsError::new(libc::EIO, "handle from before a power cut")
                .at_level(tracing::Level::INFO),
        )?;
        if f.epoch != self.epoch.load(Ordering::Acquire) {
            return Err(FsError::new(libc::EIO, "handle from before a power cut")
                .at_level(tracing::Level::INFO));
        }
        Ok(f)
    }

    /// An open file of this epoch, for the kernel to read its backing file directly
    /// (`-o passthrough=ro`).
    pub fn open_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.file(fh)
    }

    fn dir(&self, fh: u64) -> FsResult<Arc<OpenDir>> {
        let d = self.dirs.read().get(&fh).cloned().ok_or(
            FsError::new(libc::EIO, "directory handle from before a power cut")
                .at_level(tracing::Level::INFO),
        )?;
        if d.epoch != self.epoch.load(Ordering::Acquire) {
            return Err(
                FsError::new(libc::EIO, "directory handle from before a power cut")
                    .at_level(tracing::Level::INFO),
            );
        }
        Ok(d)
    }

    /// The attributes of an inode, as programs will see them (st_ino = node id).
    pub fn stat_of(&self, inode: &Arc<Inode>) -> FsResult<libc::stat> {
        let fd = self.path_fd(inode)?;
        let mut st = fstat(fd.fd()).ctx("fstat")?;
        self.hide_graves(&mut st);
        st.st_ino = inode.nodeid;
        Ok(st)
    }

    /// Link counts as if the namespace model's graveyard did not exist.
    fn hide_graves(&self, st: &mut libc::stat) {
        if let Some(ns) = &self.ns {
            ns.hide_graves(st);
        }
    }

    // ---- names ----

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<(Arc<Inode>, libc::stat)> {
        let p = self.inode(parent)?;
        if name == ".." && parent == ROOT || name == "." {
            // Never above the backing root.
            let st = self.stat_of(&p)?;
            self.inodes.incref(&p);
            return Ok((p, st));
        }
        if name.as_bytes().contains(&b'/') {
            return Err(FsError::new(libc::EINVAL, "name with /"));
        }
        if self.is_hidden(&p, name) {
            return Err(FsError::new(libc::ENOENT, "lookup"));
        }
        let c = cstr(name)?;
        let pfd = self.path_fd(&p)?;
        let fd = self
            .inodes
            .with_fd_room(|| openat(pfd.fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0))
            .ctx("lookup")?;
        self.adopt(fd)
    }

    /// Registers a freshly opened `O_PATH` fd as an inode the kernel now references.
    fn adopt(&self, fd: OwnedFd) -> FsResult<(Arc<Inode>, libc::stat)> {
        let mut st = fstat(fd.as_fd()).ctx("fstat")?;
        let inode = self.inodes.remember(fd, &st).ctx("name_to_handle_at")?;
        self.hide_graves(&mut st);
        st.st_ino = inode.nodeid;
        Ok((inode, st))
    }

    fn lookup_new(&self, pfd: &PathFd, name: &CStr) -> FsResult<(Arc<Inode>, libc::stat)> {
        let fd = self
            .inodes
            .with_fd_room(|| openat(pfd.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0))
            .ctx("lookup new")?;
        self.adopt(fd)
    }

    pub fn forget(&self, nodeid: u64, n: u64) {
        self.inodes.forget(nodeid, n);
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        who: Caller,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        let creating = self.before_create(&p, &pfd, &c, Kind::Dir)?;
        {
            let _as = as_caller(who)?;
            sys::mkdir_at(pfd.fd(), &c, mode).ctx("mkdir")?;
        }
        with_identity(creating, self.lookup_new(&pfd, &c))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        let creating = self.before_create(&p, &pfd, &c, Kind::Node)?;
        {
            let _as = as_caller(who)?;
            sys::mknod_at(pfd.fd(), &c, mode, rdev).ctx("mknod")?;
        }
        with_identity(creating, self.lookup_new(&pfd, &c))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        who: Caller,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        let t = cstr(target)?;
        let creating = self.before_create(&p, &pfd, &c, Kind::Symlink)?;
        {
            let _as = as_caller(who)?;
            sys::symlink_at(&t, pfd.fd(), &c).ctx("symlink")?;
        }
        with_identity(creating, self.lookup_new(&pfd, &c))
    }

    pub fn link(
        &self,
        nodeid: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        let inode = self.inode(nodeid)?;
        let fd = self.path_fd(&inode)?;
        let (p, pfd, c) = self.parent_dir(newparent, newname)?;
        let creating = self.before_create(&p, &pfd, &c, Kind::HardLink)?;
        sys::link_fd_at(fd.fd(), pfd.fd(), &c).ctx("link")?;
        with_identity(creating, self.lookup_new(&pfd, &c))
    }

    fn parent_dir(&self, parent: u64, name: &OsStr) -> FsResult<(Arc<Inode>, PathFd, CString)> {
        let p = self.inode(parent)?;
        if self.is_hidden(&p, name) {
            return Err(FsError::new(
                libc::EACCES,
                "name reserved for the lossfs state dir",
            ));
        }
        let c = component(name)?;
        let pfd = self.path_fd(&p)?;
        Ok((p, pfd, c))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        if let Some(ns) = &self.ns {
            return ns.remove(parent_of(&p, &pfd), &c, false).ctx("unlink");
        }
        sys::unlink_at(pfd.fd(), &c, false).ctx("unlink")?;
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        if let Some(ns) = &self.ns {
            return ns.remove(parent_of(&p, &pfd), &c, true).ctx("rmdir");
        }
        sys::unlink_at(pfd.fd(), &c, true).ctx("rmdir")?;
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        let (np, npfd, nc) = self.parent_dir(newparent, newname)?;
        if let Some(ns) = &self.ns {
            return ns
                .rename(parent_of(&p, &pfd), &c, parent_of(&np, &npfd), &nc, flags)
                .ctx("rename");
        }
        sys::rename_at(pfd.fd(), &c, npfd.fd(), &nc, flags).ctx("rename")?;
        Ok(())
    }

    pub fn readlink(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        let fd = self.path_fd(&inode)?;
        sys::readlink_fd(fd.fd()).ctx("readlink")
    }

    // ---- attributes ----

    pub fn getattr(&self, nodeid: u64) -> FsResult<libc::stat> {
        let inode = self.inode(nodeid)?;
        self.stat_of(&inode)
    }

    pub fn setattr(&self, nodeid: u64, fh: Option<u64>, a: SetAttr) -> FsResult<libc::stat> {
        let inode = self.inode(nodeid)?;
        let pfd = self.path_fd(&inode)?;
        let is_link = inode.kind == libc::S_IFLNK;
        if let Some(mode) = a.mode {
            if is_link {
                return Err(FsError::new(libc::EOPNOTSUPP, "chmod of a symlink"));
            }
            sys::chmod_path(&pfd.proc_path(), mode & 0o7777).ctx("chmod")?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::chown_fd(pfd.fd(), a.uid, a.gid).ctx("chown")?;
        }
        if let Some(size) = a.size {
            let kill = |fd: BorrowedFd<'_>| match a.truncated_by {
                Some(pid) => kill_suid_after_truncate(fd, pid),
                None => Ok(()),
            };
            match fh.map(|fh| self.file(fh)).transpose()? {
                Some(f) => {
                    self.truncate(&inode, f.file.as_fd(), size)?;
                    kill(f.file.as_fd())?;
                }
                None => {
                    let fd = self
                        .inodes
                        .with_fd_room(|| open_proc(&pfd.proc_path(), libc::O_RDWR))
                        .ctx("open for truncate")?;
                    self.truncate(&inode, fd.as_fd(), size)?;
                    kill(fd.as_fd())?;
                }
            }
        }
        self.set_times(&pfd, is_link, a)?;
        self.stat_of(&inode)
    }

    fn truncate(&self, inode: &Inode, file: BorrowedFd<'_>, size: u64) -> FsResult<()> {
        let mut g = self.journal.lock(inode.key, &inode.handle);
        g.before_truncate(file, size).ctx("journal truncate")?;
        sys::ftruncate(file.as_fd(), off(size)?).ctx("truncate")?;
        Ok(())
    }

    fn set_times(&self, pfd: &PathFd, is_link: bool, a: SetAttr) -> FsResult<()> {
        if a.atime == SetTime::Omit && a.mtime == SetTime::Omit {
            return Ok(());
        }
        let ts = [timespec(a.atime), timespec(a.mtime)];
        if is_link {
            // The /proc path would follow the link; the O_PATH fd names the link itself, and
            // utimensat takes it with AT_EMPTY_PATH (as `touch -h` on the backing would).
            sys::utimens_fd(pfd.fd(), ts).ctx("utimens of a symlink")?;
            return Ok(());
        }
        sys::utimens_path(&pfd.proc_path(), ts).ctx("utimens")?;
        Ok(())
    }

    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        sys::fstatvfs(self.inodes.backing_root().as_fd()).ctx("statfs")
    }

    // ---- files ----

    fn new_handle(&self, inode: Arc<Inode>, fd: OwnedFd, flags: i32, appends: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // With the writeback cache the kernel writes dirty pages back through any writable
        // handle of the inode, so an O_SYNC handle carries other writers' pages too; the
        // kernel sends an FSYNC after each O_SYNC/O_DSYNC write instead (generic_write_sync),
        // which makes exactly the right file durable at the right time.
        let sync_flag = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let f = Arc::new(OpenFile {
            inode,
            file: File::from(fd),
            epoch: self.epoch.load(Ordering::Acquire),
            sync_writes: sync_flag && !self.writeback_cache,
            appends,
        });
        self.files.write().insert(fh, f);
        fh
    }

    /// Flags for the backing fd: always readable (the journal reads pre-images), writable
    /// when the program may write; never O_APPEND (the kernel gives explicit offsets) nor
    /// O_DIRECT (our buffers are not aligned); never O_NOFOLLOW, which would refuse the
    /// `/proc/self/fd` magic link (the inode is already pinned, nothing is resolved by name).
    fn backing_flags(flags: i32) -> i32 {
        let acc = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        acc | (flags
            & !(libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_DIRECT
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_TRUNC
                | libc::O_NOCTTY
                | libc::O_NOFOLLOW))
    }

    pub fn open(&self, nodeid: u64, flags: i32) -> FsResult<u64> {
        let inode = self.inode(nodeid)?;
        let pfd = self.path_fd(&inode)?;
        let path = pfd.proc_path();
        let mut appends = false;
        let fd = match self
            .inodes
            .with_fd_room(|| open_proc(&path, Self::backing_flags(flags)))
        {
            // An append-only file (chattr +a) opens for writing only with O_APPEND.  Its
            // writes all land at its end, which is where the kernel sends O_APPEND writes.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && flags & libc::O_APPEND != 0 => {
                appends = true;
                self.inodes
                    .with_fd_room(|| open_proc(&path, Self::backing_flags(flags) | libc::O_APPEND))
            }
            r => r,
        }
        .ctx("open")?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.truncate(&inode, fd.as_fd(), 0)?;
        }
        Ok(self.new_handle(inode, fd, flags, appends))
    }

    /// Whether the kernel must send this handle's writes as the program made them, past its
    /// page cache: its backing fd appends (an append-only file), so a page written back at
    /// an offset inside the file would be appended again at its end.
    pub fn bypasses_cache(&self, fh: u64) -> bool {
        self.writeback_cache && self.files.read().get(&fh).is_some_and(|f| f.appends)
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> FsResult<(Arc<Inode>, libc::stat, u64)> {
        let (p, pfd, c) = self.parent_dir(parent, name)?;
        let bflags = Self::backing_flags(flags);
        let mut creating = self.before_create(&p, &pfd, &c, Kind::File)?;
        let created = {
            let _as = as_caller(who)?;
            // EMFILE comes before the file is made, so the retry creates it at most once.
            self.inodes
                .with_fd_room(|| openat(pfd.fd(), &c, bflags | libc::O_CREAT | libc::O_EXCL, mode))
        };
        let fd = match created {
            Ok(fd) => fd,
            // It appeared since the kernel looked: open it as open(2) would.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                // Not a creation after all.
                drop(creating.take());
                let fd = self
                    .inodes
                    .with_fd_room(|| openat(pfd.fd(), &c, bflags, 0))
                    .ctx("create (open existing)")?;
                if flags & libc::O_TRUNC != 0 {
                    let (inode, _) = self.lookup_new(&pfd, &c)?;
                    self.truncate(&inode, fd.as_fd(), 0)?;
                    self.inodes.forget(inode.nodeid, 1);
                }
                fd
            }
            Err(e) => return Err(e).ctx("create"),
        };
        let (inode, st) = with_identity(creating, self.lookup_new(&pfd, &c))?;
        let fh = self.new_handle(inode.clone(), fd, flags, false);
        Ok((inode, st, fh))
    }

    pub fn read<'b>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &'b mut Vec<u8>,
    ) -> FsResult<&'b [u8]> {
        let f = self.file(fh)?;
        buf.resize(size as usize, 0);
        let mut done = 0;
        while done < buf.len() {
            match f.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx("read"),
            }
        }
        Ok(&buf[..done])
    }

    /// `kill_priv`: the kernel left clearing set-id bits to us (FUSE_HANDLE_KILLPRIV_V2) and
    /// the writer lacks CAP_FSETID.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill_priv: bool) -> FsResult<usize> {
        let f = self.file(fh)?;
        if kill_priv {
            kill_suid(f.file.as_fd())?;
        }
        let mut g = self.journal.lock(f.inode.key, &f.inode.handle);
        g.before_write(f.file.as_fd(), offset, data.len() as u64)
            .ctx("journal write")?;
        let written = match write_some_at(&f.file, data, offset) {
            Ok(n) => n,
            Err(e) => {
                g.after_short_write(f.file.as_fd());
                return Err(e).ctx("write");
            }
        };
        if written < data.len() {
            g.after_short_write(f.file.as_fd());
        }
        if f.sync_writes {
            sync_fd(f.file.as_fd(), true).ctx("O_SYNC write")?;
            g.mark_durable_and_reserve(f.file.as_fd())
                .ctx("journal sync")?;
            drop(g);
            self.namespace_file_synced()?;
        } else {
            drop(g);
            if let Some(wb) = &self.writebehind {
                // Only a hint to the disk: the write has succeeded whatever it says.
                if let Err(e) = wb.after_write(f.file.as_fd(), offset, written as u64) {
                    tracing::debug!(ino = f.inode.nodeid, error = %e, "write-behind");
                }
            }
        }
        Ok(written)
    }

    /// Write-through leaves nothing to flush.  A handle from before a cut answers EIO to
    /// reads and writes, but its close(2) succeeds: there is nothing left to lose.
    pub fn flush(&self, _fh: u64) -> FsResult<()> {
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        let closed = self.files.write().remove(&fh);
        if let Some(f) = closed {
            // A deleted file's undo data goes with its handle (not in the middle of a cut).
            let _gate = self.enter();
            self.journal
                .closed(f.inode.key, &f.inode.handle, f.file.as_fd());
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let f = self.file(fh)?;
        let mut g = self.journal.lock(f.inode.key, &f.inode.handle);
        sync_fd(f.file.as_fd(), datasync).ctx("fsync")?;
        g.mark_durable_and_reserve(f.file.as_fd())
            .ctx("journal sync")?;
        // Released first: a namespace commit may drop a deleted file's journal state.
        drop(g);
        self.namespace_file_synced()
    }

    fn namespace_file_synced(&self) -> FsResult<()> {
        match &self.ns {
            Some(ns) => ns.file_synced().ctx("namespace commit"),
            None => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let f = self.file(fh)?;
        let mut g = self.journal.lock(f.inode.key, &f.inode.handle);
        g.before_fallocate(f.file.as_fd(), mode, offset, length)
            .ctx("journal fallocate")?;
        sys::fallocate(f.file.as_fd(), mode, off(offset)?, off(length)?).ctx("fallocate")?;
        Ok(())
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> FsResult<usize> {
        let fin = self.file(fh_in)?;
        let fout = self.file(fh_out)?;
        // The reply carries a u32 count; a short copy is allowed, programs loop.
        let len = len.min(1 << 30);
        let mut g = self.journal.lock(fout.inode.key, &fout.inode.handle);
        g.before_write(fout.file.as_fd(), off_out, len)
            .ctx("journal copy_file_range")?;
        let mut oi = off(off_in)?;
        let mut oo = off(off_out)?;
        let n = sys::copy_file_range(
            fin.file.as_fd(),
            &mut oi,
            fout.file.as_fd(),
            &mut oo,
            len as usize,
            flags,
        )
        .ctx("copy_file_range");
        // A short copy (the source ends first) leaves the file smaller than announced; the
        // journal's idea of the size must follow (it becomes the next durable size).
        if !matches!(n, Ok(n) if n as u64 == len) {
            g.after_short_write(fout.file.as_fd());
        }
        Ok(n? as usize)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let f = self.file(fh)?;
        let r = sys::lseek(f.file.as_fd(), offset, whence).ctx("lseek")?;
        Ok(r)
    }

    // ---- directories ----

    pub fn opendir(&self, nodeid: u64) -> FsResult<u64> {
        let inode = self.inode(nodeid)?;
        let pfd = self.path_fd(&inode)?;
        let fd = self
            .inodes
            .with_fd_room(|| open_proc(&pfd.proc_path(), libc::O_RDONLY | libc::O_DIRECTORY))
            .ctx("opendir")?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let d = Arc::new(OpenDir {
            inode,
            fd,
            epoch: self.epoch.load(Ordering::Acquire),
            lock: Mutex::new(()),
        });
        self.dirs.write().insert(fh, d);
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.write().remove(&fh);
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let d = self.dir(fh)?;
        sync_fd(d.fd.as_fd(), datasync).ctx("fsyncdir")?;
        if let Some(ns) = &self.ns {
            ns.dir_synced(d.inode.key).ctx("namespace commit")?;
        }
        Ok(())
    }

    /// Reads entries from `offset` (0 = start; otherwise a d_off returned before) and hands
    /// them to `each` until it says stop.
    fn scan_dir(
        &self,
        d: &OpenDir,
        offset: i64,
        mut each: impl FnMut(u64, i64, u8, &OsStr) -> bool,
    ) -> FsResult<()> {
        let _one_reader = d.lock.lock();
        let fd = d.fd.as_fd();
        // Directory offsets are the cookies getdents returned.
        sys::lseek(fd, offset, libc::SEEK_SET).ctx("seekdir")?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = sys::getdents64(fd, &mut buf).ctx("getdents")?;
            if n == 0 {
                return Ok(());
            }
            let mut pos = 0;
            while pos + 19 <= n {
                let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap_or([0; 8]));
                let doff = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap_or([0; 8]));
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                let kind = buf[pos + 18];
                if reclen == 0 || pos + reclen > n {
                    return Err(FsError::new(libc::EIO, "malformed getdents record"));
                }
                let name_bytes = &buf[pos + 19..pos + reclen];
                let len = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                let name = OsStr::from_bytes(&name_bytes[..len]);
                pos += reclen;
                if self.is_hidden(&d.inode, name) {
                    continue;
                }
                if each(ino, doff, kind, name) {
                    return Ok(());
                }
            }
        }
    }

    pub fn readdir(&self, fh: u64, offset: i64, sink: &mut dyn DirSink) -> FsResult<()> {
        let d = self.dir(fh)?;
        self.scan_dir(&d, offset, |ino, doff, kind, name| {
            sink.add(ino, doff, kind, name)
        })
    }

    pub fn readdirplus(&self, fh: u64, offset: i64, sink: &mut dyn DirPlusSink) -> FsResult<()> {
        let d = self.dir(fh)?;
        let parent = d.inode.nodeid;
        let mut failed = None;
        self.scan_dir(&d, offset, |_ino, doff, _kind, name| {
            if name == "." || name == ".." {
                return sink.add(doff, name, None);
            }
            match self.lookup(parent, name) {
                Ok((inode, st)) => {
                    let full = sink.add(doff, name, Some((&inode, &st)));
                    if full {
                        self.inodes.forget(inode.nodeid, 1);
                    }
                    full
                }
                // Removed since getdents saw it: skip it, as readdir would on a race.
                Err(e) if e.errno == libc::ENOENT => false,
                Err(e) => {
                    failed = Some(e);
                    true
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- extended attributes ----

    fn xattr_target(&self, nodeid: u64) -> FsResult<(PathFd, bool)> {
        let inode = self.inode(nodeid)?;
        let is_link = inode.kind == libc::S_IFLNK;
        Ok((self.path_fd(&inode)?, is_link))
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let (pfd, is_link) = self.xattr_target(nodeid)?;
        if is_link {
            return Err(FsError::new(libc::EPERM, "xattr on a symlink"));
        }
        let n = cstr(name)?;
        sys::setxattr(&pfd.proc_path(), &n, value, flags).ctx("setxattr")?;
        Ok(())
    }

    /// `size` 0 asks for the value's size; otherwise the value (ERANGE if larger than size).
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> FsResult<Vec<u8>> {
        let (pfd, is_link) = self.xattr_target(nodeid)?;
        if is_link {
            return Err(FsError::new(libc::ENODATA, "getxattr"));
        }
        let n = cstr(name)?;
        let mut buf = vec![0u8; size as usize];
        let r = sys::getxattr(&pfd.proc_path(), &n, &mut buf).ctx("getxattr")?;
        if size == 0 {
            return Ok(vec![0u8; r as usize]);
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> FsResult<Vec<u8>> {
        let (pfd, is_link) = self.xattr_target(nodeid)?;
        if is_link {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let r = sys::listxattr(&pfd.proc_path(), &mut buf).ctx("listxattr")?;
        if size == 0 {
            return Ok(vec![0u8; r as usize]);
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> FsResult<()> {
        let (pfd, is_link) = self.xattr_target(nodeid)?;
        if is_link {
            return Err(FsError::new(libc::EPERM, "xattr on a symlink"));
        }
        let n = cstr(name)?;
        sys::removexattr(&pfd.proc_path(), &n).ctx("removexattr")?;
        Ok(())
    }
}

fn parent_of<'a>(p: &'a Inode, pfd: &'a PathFd) -> Parent<'a> {
    Parent {
        key: p.key,
        handle: &p.handle,
        fd: pfd.fd(),
    }
}

/// Completes a logged creation with the inode it made.
fn with_identity(
    creating: Option<Creating<'_>>,
    r: FsResult<(Arc<Inode>, libc::stat)>,
) -> FsResult<(Arc<Inode>, libc::stat)> {
    if let (Some(c), Ok((inode, _))) = (creating, &r) {
        c.done(inode.key);
    }
    r
}

fn off(v: u64) -> FsResult<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| FsError::new(libc::EFBIG, "offset too large"))
}

/// Clears set-user-id, and set-group-id where group-execute is set, as a write by an
/// unprivileged program must (the kernel leaves this to us with HANDLE_KILLPRIV_V2).
/// capability(7) number of CAP_FSETID (linux/capability.h; not in the libc crate).
const CAP_FSETID: u32 = 4;

/// Whether process `pid` holds CAP_FSETID (may keep set-id bits when it changes a file).
/// A process that is gone, or whose status cannot be read, does not.
fn has_cap_fsetid(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(cap_eff)
        .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0)
}

/// The effective capability set in a `/proc/PID/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// After a truncate by process `pid`: its set-id bits go unless `pid` holds CAP_FSETID
/// (looked up only for a file that has such a bit).
fn kill_suid_after_truncate(fd: BorrowedFd<'_>, pid: u32) -> FsResult<()> {
    let st = fstat(fd).ctx("fstat after truncate")?;
    if st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0 || has_cap_fsetid(pid) {
        return Ok(());
    }
    kill_suid(fd)
}

fn kill_suid(fd: BorrowedFd<'_>) -> FsResult<()> {
    let st = fstat(fd).ctx("fstat before write")?;
    let mut mode = st.st_mode & 0o7777;
    let before = mode;
    mode &= !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    if mode != before {
        sys::fchmod(fd, mode).ctx("clear set-id bits")?;
    }
    Ok(())
}

impl crate::sfrtrace::RangeSink for LossFs {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn commit(&self, ino: u64, epoch: u64, start: u64, end: u64) {
        self.commit_synced_range(ino, epoch, start, end)
    }
}

#[cfg(test)]
mod tests {
    //! Containment at the core, without a mount: names that are not one component are
    //! refused by every name operation, `..` of the root is the root, and the state dir's
    //! name is neither found nor taken.
    use super::*;
    use crate::handle::FileHandle;
    use crate::testdir::TempDir;
    use std::path::{Path, PathBuf};

    struct Fixture {
        dir: PathBuf,
        fs: LossFs,
        _scratch: TempDir,
    }

    fn open_path(p: &Path) -> OwnedFd {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        openat(nix::fcntl::AT_FDCWD, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap()
    }

    /// A LossFs over `DIR/backing`, with its state dir at `DIR/backing/.lossfs` (hidden).
    fn fixture(tag: &str) -> Fixture {
        let scratch = TempDir::new(&format!("fs-{tag}"));
        let dir = scratch.path().to_path_buf();
        let backing = dir.join("backing");
        std::fs::create_dir_all(&backing).unwrap();
        let state = backing.join(".lossfs");
        let (journal, _) = Journal::open(&state, open_path(&backing), &backing, true).unwrap();
        let root = open_path(&backing);
        let st = fstat(root.as_fd()).unwrap();
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let handle = FileHandle::of_fd(root.as_fd()).unwrap();
        let hidden = Hidden {
            parent: key,
            name: ".lossfs".into(),
        };
        let fs = LossFs::new(
            InodeTable::new(root, key, handle),
            Arc::new(journal),
            Some(hidden),
        );
        Fixture {
            dir,
            fs,
            _scratch: scratch,
        }
    }

    fn root_caller() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
        }
    }

    fn errno<T>(r: FsResult<T>) -> i32 {
        match r {
            Ok(_) => panic!("operation succeeded"),
            Err(e) => e.errno,
        }
    }

    #[test]
    fn component_takes_exactly_one_name() {
        for bad in ["", ".", "..", "a/b", "/", "/etc", "../x", "x/", "a\0b"] {
            assert_eq!(
                errno(component(OsStr::new(bad))),
                libc::EINVAL,
                "{bad:?} was taken as a component"
            );
        }
        for good in ["a", "...", ".x", "x..", "a b", "\u{e9}"] {
            assert!(component(OsStr::new(good)).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn names_with_a_slash_are_refused_by_every_name_operation() {
        let f = fixture("slash");
        let who = root_caller();
        std::fs::create_dir(f.dir.join("outside")).unwrap();
        std::fs::write(f.dir.join("backing/in"), b"in").unwrap();
        let (inode, _) = f.fs.lookup(ROOT, OsStr::new("in")).unwrap();
        for name in ["../outside/x", "a/b", "/tmp/x", "../x"] {
            let n = OsStr::new(name);
            assert_eq!(errno(f.fs.lookup(ROOT, n)), libc::EINVAL, "lookup {name}");
            assert_eq!(errno(f.fs.mkdir(ROOT, n, 0o755, who)), libc::EINVAL);
            assert_eq!(
                errno(f.fs.mknod(ROOT, n, libc::S_IFREG | 0o644, 0, who)),
                libc::EINVAL
            );
            assert_eq!(
                errno(f.fs.symlink(ROOT, n, OsStr::new("t"), who)),
                libc::EINVAL
            );
            assert_eq!(errno(f.fs.link(inode.nodeid, ROOT, n)), libc::EINVAL);
            assert_eq!(
                errno(f.fs.create(ROOT, n, 0o644, libc::O_WRONLY, who)),
                libc::EINVAL
            );
            assert_eq!(errno(f.fs.unlink(ROOT, n)), libc::EINVAL);
            assert_eq!(errno(f.fs.rmdir(ROOT, n)), libc::EINVAL);
            let in_ = OsStr::new("in");
            assert_eq!(errno(f.fs.rename(ROOT, in_, ROOT, n, 0)), libc::EINVAL);
            assert_eq!(errno(f.fs.rename(ROOT, n, ROOT, in_, 0)), libc::EINVAL);
        }
        // Nothing appeared outside, and the file inside is untouched.
        assert_eq!(std::fs::read_dir(f.dir.join("outside")).unwrap().count(), 0);
        assert!(!f.dir.join("x").exists());
        assert_eq!(std::fs::read(f.dir.join("backing/in")).unwrap(), b"in");
    }

    #[test]
    fn cap_fsetid_is_read_from_the_callers_status() {
        crate::testdir::require_root("it checks that root holds CAP_FSETID");
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000000010\n";
        assert_eq!(cap_eff(status), Some(0x10));
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
        // The tests run as root with every capability; a pid that is gone has none.
        assert!(has_cap_fsetid(std::process::id()));
        assert!(!has_cap_fsetid(u32::MAX));
    }

    #[test]
    fn dotdot_of_the_root_is_the_root() {
        let f = fixture("dotdot");
        let (up, st) = f.fs.lookup(ROOT, OsStr::new("..")).unwrap();
        assert_eq!(up.nodeid, ROOT);
        assert_eq!(st.st_ino, ROOT);
        let (dot, _) = f.fs.lookup(ROOT, OsStr::new(".")).unwrap();
        assert_eq!(dot.nodeid, ROOT);
    }

    #[test]
    fn the_state_dir_is_neither_found_nor_taken() {
        let f = fixture("hidden");
        let who = root_caller();
        let name = OsStr::new(".lossfs");
        assert_eq!(errno(f.fs.lookup(ROOT, name)), libc::ENOENT);
        assert_eq!(errno(f.fs.mkdir(ROOT, name, 0o755, who)), libc::EACCES);
        assert_eq!(
            errno(f.fs.create(ROOT, name, 0o644, libc::O_WRONLY, who)),
            libc::EACCES
        );
        assert_eq!(
            errno(f.fs.symlink(ROOT, name, OsStr::new("t"), who)),
            libc::EACCES
        );
        assert_eq!(errno(f.fs.unlink(ROOT, name)), libc::EACCES);
        assert_eq!(errno(f.fs.rmdir(ROOT, name)), libc::EACCES);
        std::fs::write(f.dir.join("backing/x"), b"x").unwrap();
        let x = OsStr::new("x");
        assert_eq!(errno(f.fs.rename(ROOT, x, ROOT, name, 0)), libc::EACCES);
        assert_eq!(errno(f.fs.rename(ROOT, name, ROOT, x, 0)), libc::EACCES);
        let flags = libc::RENAME_EXCHANGE;
        assert_eq!(errno(f.fs.rename(ROOT, x, ROOT, name, flags)), libc::EACCES);
        assert!(f.dir.join("backing/.lossfs/journal").is_file());
        assert_eq!(std::fs::read(f.dir.join("backing/x")).unwrap(), b"x");
    }
}
