//! The `fuser::Filesystem` adapter: decode a request, call [`LossFs`] through the fault
//! hook ([`guarded`], which holds the power-cut gate), reply.  No semantics live here.
//!
//! Each request is served inside a DEBUG span (request id, op, inode, handle, pid), so every
//! event logged on its behalf names it when debug logging is on; when it is off the span
//! costs a level check.  A failed request is logged on its own line with the same fields, at
//! the error's level (DEBUG for the errors programs provoke themselves, such as ENOENT).

use crate::cpupin::CpuPin;
use crate::error::{event_at, FsError, FsResult};
use crate::faults::hook::{guarded, guarded_sync, Call, Target};
use crate::faults::Faults;
use crate::faultspec::Op;
use crate::fs::{Caller, DirPlusSink, DirSink, LossFs, SetAttr, SetTime};
use crate::inode::Inode;
use crate::iomode::{Grant, IoModes};
use crate::readgate::{Kind, ReadGate, Turn};
use fuser::{
    BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes and names.  Every change goes through this
/// daemon (and a power cut invalidates the caches explicitly), so the cache is never stale
/// for changes made through the mount.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel may send in one request.  Big writes make sequential writes
/// cheap: one round trip per MiB instead of per 128 KiB.
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseAdapter {
    pub fs: Arc<LossFs>,
    /// Crash points and injected faults ([`crate::faults`]), applied around each request.
    pub faults: Arc<Faults>,
    /// Turn-taking of the FUSE threads while fsyncs go on; `None` with one thread.
    pub gate: Option<ReadGate>,
    /// Pins the thread serving one program's fsyncs (needs the gate to know when).
    pub pin: Option<Arc<CpuPin>>,
    /// `-o passthrough=ro`: the io mode of every open handle; `None` when off or when the
    /// kernel offers no passthrough.
    pub passthrough: Option<IoModes<BackingId>>,
}

/// Backing files may sit on a stacked file system themselves (overlayfs, as in many
/// containers); 2 is the kernel's maximum.
const PASSTHROUGH_STACK_DEPTH: u32 = 2;

/// Set once a backing file could not be registered for passthrough, so that the reason is
/// logged once, not on every open.
static PASSTHROUGH_REFUSED: AtomicBool = AtomicBool::new(false);

/// One request being served, until its handler returns (i.e. after the reply): its pass
/// through the read gate, its entered log span, and what its failure is logged with.
struct Scope<'g, 'a> {
    _turn: Option<Turn<'g>>,
    _span: tracing::span::EnteredSpan,
    call: Call<'a>,
    req: u64,
    fh: Option<u64>,
}

impl Scope<'_, '_> {
    /// The errno to answer `e` with, after logging the failure at the error's level with
    /// the request's operation, inode (or parent and name) and handle.
    fn fail(&self, e: &FsError) -> Errno {
        let name = match self.call.target {
            Target::Name(_, name) | Target::Rename { name, .. } => Some(name),
            _ => None,
        };
        event_at!(
            e.level(),
            req = self.req,
            op = self.call.op.name(),
            ino = target_ino(&self.call.target),
            name = name.map(tracing::field::debug),
            fh = self.fh,
            pid = self.call.pid,
            errno = e.errno,
            "request failed: {e}"
        );
        Errno::from_i32(e.errno)
    }
}

impl FuseAdapter {
    /// How the kernel may cache an open file.  With the writeback cache, pages stay cached
    /// across opens (every change goes through this mount, and a power cut invalidates
    /// every inode); an append-only file's handle bypasses the cache (see
    /// [`LossFs::bypasses_cache`]).
    fn open_flags(&self, fh: u64) -> FopenFlags {
        if !self.fs.writeback_cache {
            FopenFlags::empty()
        } else if self.fs.bypasses_cache(fh) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// The fault engine's view of a request, and the scope it is served in (see [`Scope`]).
    fn call<'a>(
        &self,
        op: Op,
        req: &Request,
        target: Target<'a>,
        fh: Option<u64>,
    ) -> (Call<'a>, Scope<'_, 'a>) {
        let span = tracing::debug_span!(
            "request",
            req = req.unique().0,
            op = op.name(),
            ino = target_ino(&target),
            fh,
            pid = req.pid()
        )
        .entered();
        let kind = match op {
            Op::Fsync | Op::Fdatasync | Op::Fsyncdir => Kind::Sync,
            _ => Kind::Other,
        };
        let turn = self.gate.as_ref().map(|g| g.enter(kind, req.pid()));
        if let (Some(pin), Some(turn)) = (&self.pin, &turn) {
            pin.set(turn.solo());
        }
        let call = Call {
            op,
            pid: req.pid(),
            target,
            fh,
        };
        let scope = Scope {
            _turn: turn,
            _span: span,
            call,
            req: req.unique().0,
            fh,
        };
        (call, scope)
    }
}

impl FuseAdapter {
    /// How to answer the open of handle `fh` of inode `ino` (see [`crate::iomode`]), its
    /// backing file registered with the kernel through `register` when it is needed.
    fn grant(
        &self,
        ino: u64,
        fh: u64,
        read_only: bool,
        register: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> Grant<BackingId> {
        let Some(modes) = &self.passthrough else {
            return Grant::Cached;
        };
        // Reads a rule or crash point names must reach the daemon.
        let may = !self.faults.watches(Op::Read);
        let (grant, failed) = modes.open(ino, fh, read_only, may, || {
            let f = self.fs.open_file(fh)?;
            register(f.as_fd()).map_err(FsError::from)
        });
        if let Some(e) = failed {
            if !PASSTHROUGH_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    ino,
                    "no backing file for read passthrough ({e}); files opened for reading are \
                     read through lossfs when this happens (logged once)"
                );
            }
        }
        grant
    }
}

/// An open for reading only: O_RDONLY, and no O_TRUNC (which would change the file).
fn reads_only(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0
}

/// `cache=writeback`: asks the kernel for its writeback cache, and checks that it can
/// start a new dentry epoch (FUSE_NOTIFY_INC_EPOCH, protocol 7.44, Linux 6.16), which the
/// power cut needs to make the kernel drop the file sizes it keeps for itself.
fn writeback_cache(config: &mut KernelConfig) -> io::Result<()> {
    let abi = config.kernel_abi();
    let refuse = |why: String| {
        tracing::error!("cache=writeback: {why}");
        Err(io::Error::new(io::ErrorKind::Unsupported, why))
    };
    if (abi.0, abi.1) < (7, INC_EPOCH_MINOR) {
        return refuse(format!(
            "the kernel speaks FUSE {}.{}; the writeback cache needs 7.{INC_EPOCH_MINOR}              (Linux 6.16) so that a power cut can drop the sizes the kernel caches",
            abi.0, abi.1
        ));
    }
    if config
        .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
        .is_err()
    {
        return refuse("the kernel offers no writeback cache to FUSE".into());
    }
    Ok(())
}

/// The FUSE minor version that brought FUSE_NOTIFY_INC_EPOCH.
const INC_EPOCH_MINOR: u32 = 44;

/// The inode a request is about (the parent directory for name operations).
fn target_ino(t: &Target<'_>) -> Option<u64> {
    match *t {
        Target::None => None,
        Target::Node(ino) | Target::Data { ino, .. } => Some(ino),
        Target::Name(parent, _) | Target::Rename { parent, .. } => Some(parent),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::from_nanos(nsec as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dirent_kind(t: u8) -> FileType {
    match t {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub fn attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::Omit,
        Some(TimeOrNow::Now) => SetTime::Now,
        Some(TimeOrNow::SpecificTime(t)) => {
            let ts = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => libc::timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos() as i64,
                },
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -(d.subsec_nanos() as i64);
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    libc::timespec {
                        tv_sec: sec,
                        tv_nsec: nsec,
                    }
                }
            };
            SetTime::At(ts)
        }
    }
}

/// An entry with the generation it belongs to, read while the request holds the power-cut
/// gate, so a cut cannot come between the attributes and their generation.
fn with_gen<T>(fs: &LossFs, r: FsResult<T>) -> FsResult<(T, u64)> {
    r.map(|v| (v, fs.generation()))
}

type Entry = ((Arc<Inode>, libc::stat), u64);

fn entry(s: &Scope<'_, '_>, reply: ReplyEntry, r: FsResult<Entry>) {
    match r {
        Ok(((_, st), g)) => reply.entry(&TTL, &attr(&st), Generation(g)),
        Err(e) => reply.error(s.fail(&e)),
    }
}

fn empty(s: &Scope<'_, '_>, reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(s.fail(&e)),
    }
}

fn xattr_reply(s: &Scope<'_, '_>, reply: ReplyXattr, size: u32, r: FsResult<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(s.fail(&e)),
    }
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Plain<'a>(&'a mut ReplyDirectory);
impl DirSink for Plain<'_> {
    fn add(&mut self, ino: u64, offset: i64, kind: u8, name: &OsStr) -> bool {
        self.0
            .add(INodeNo(ino), offset as u64, dirent_kind(kind), name)
    }
}

struct Plus<'a>(&'a mut ReplyDirectoryPlus, u64);
impl DirPlusSink for Plus<'_> {
    fn add(&mut self, offset: i64, name: &OsStr, e: Option<(&Inode, &libc::stat)>) -> bool {
        match e {
            Some((_, st)) => self.0.add(
                INodeNo(st.st_ino),
                offset as u64,
                name,
                &TTL,
                &attr(st),
                Generation(self.1),
            ),
            // "." and "..": no entry to hand over; the kernel ignores nodeid 0 here.
            None => {
                // SAFETY: an all-zero stat is a valid value.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                st.st_mode = libc::S_IFDIR;
                self.0.add(
                    INodeNo(0),
                    offset as u64,
                    name,
                    &Duration::ZERO,
                    &attr(&st),
                    Generation(0),
                )
            }
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if self.fs.writeback_cache {
            writeback_cache(config)?;
        }
        // Without this the kernel asks getxattr(security.capability) before every write.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel checks permissions for us (default_permissions); without this it
        // ignores ACLs and reads a file's group bits, which are the ACL's mask, as the owning
        // group's rights, granting that group what the backing file system refuses it.
        if config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            tracing::warn!(
                "the kernel offers no POSIX ACLs to FUSE: permissions of files with ACLs are \
                 checked from their mode bits alone"
            );
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(64);
        if self.passthrough.is_some() {
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
                let _ = config.set_max_stack_depth(PASSTHROUGH_STACK_DEPTH);
            } else {
                tracing::warn!(
                    "the kernel offers no read passthrough to FUSE (Linux 6.9 or later with \
                     CONFIG_FUSE_PASSTHROUGH): passthrough=ro is off, every read goes through \
                     lossfs"
                );
                self.passthrough = None;
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (c, s) = self.call(Op::Lookup, req, Target::Name(parent.0, name), None);
        entry(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                with_gen(&self.fs, self.fs.lookup(parent.0, name))
            }),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let (c, s) = self.call(Op::Getattr, req, Target::Node(ino.0), fh.map(|f| f.0));
        match guarded(&self.fs, &self.faults, c, || self.fs.getattr(ino.0)) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = if size.is_some() {
            Op::Truncate
        } else {
            Op::Setattr
        };
        let (c, s) = self.call(op, req, Target::Node(ino.0), fh.map(|f| f.0));
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            truncated_by: size.map(|_| req.pid()),
        };
        match guarded(&self.fs, &self.faults, c, || {
            self.fs.setattr(ino.0, fh.map(|f| f.0), a)
        }) {
            Ok(st) => reply.attr(&TTL, &attr(&st)),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (c, s) = self.call(Op::Readlink, req, Target::Node(ino.0), None);
        match guarded(&self.fs, &self.faults, c, || self.fs.readlink(ino.0)) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, s) = self.call(Op::Mknod, req, Target::Name(parent.0, name), None);
        entry(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                with_gen(
                    &self.fs,
                    self.fs.mknod(parent.0, name, mode, rdev, caller(req)),
                )
            }),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, s) = self.call(Op::Mkdir, req, Target::Name(parent.0, name), None);
        entry(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                with_gen(&self.fs, self.fs.mkdir(parent.0, name, mode, caller(req)))
            }),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, s) = self.call(Op::Unlink, req, Target::Name(parent.0, name), None);
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || self.fs.unlink(parent.0, name)),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, s) = self.call(Op::Rmdir, req, Target::Name(parent.0, name), None);
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || self.fs.rmdir(parent.0, name)),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (c, s) = self.call(Op::Symlink, req, Target::Name(parent.0, link_name), None);
        entry(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                let r = self
                    .fs
                    .symlink(parent.0, link_name, target.as_os_str(), caller(req));
                with_gen(&self.fs, r)
            }),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (c, s) = self.call(
            Op::Rename,
            req,
            Target::Rename {
                parent: parent.0,
                name,
                newparent: newparent.0,
                newname,
                flags: flags.bits(),
            },
            None,
        );
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                self.fs
                    .rename(parent.0, name, newparent.0, newname, flags.bits())
            }),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (c, s) = self.call(Op::Link, req, Target::Name(newparent.0, newname), None);
        entry(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                with_gen(&self.fs, self.fs.link(ino.0, newparent.0, newname))
            }),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (c, s) = self.call(Op::Open, req, Target::Node(ino.0), None);
        match guarded(&self.fs, &self.faults, c, || self.fs.open(ino.0, flags.0)) {
            Ok(fh) => {
                let h = FileHandle(fh);
                match self.grant(ino.0, fh, reads_only(flags.0), |fd| reply.open_backing(fd)) {
                    Grant::Cached => reply.opened(h, self.open_flags(fh)),
                    Grant::Passthrough(b) => reply.opened_passthrough(h, FopenFlags::empty(), &b),
                    Grant::Direct(b) => {
                        reply.opened_passthrough(h, FopenFlags::FOPEN_DIRECT_IO, &b)
                    }
                }
            }
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (c, s) = self.call(Op::Read, req, Target::Node(ino.0), Some(fh.0));
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            match guarded(&self.fs, &self.faults, c, || {
                self.fs.read(fh.0, offset, size, &mut buf)
            }) {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(s.fail(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let target = Target::Data {
            ino: ino.0,
            off: offset,
            len: data.len() as u64,
            frees: false,
        };
        let (c, s) = self.call(Op::Write, req, target, Some(fh.0));
        match guarded(&self.fs, &self.faults, c, || {
            self.fs.write(fh.0, offset, data, kill)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (c, s) = self.call(Op::Flush, req, Target::Node(ino.0), Some(fh.0));
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || self.fs.flush(fh.0)),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        if let Some(modes) = &self.passthrough {
            modes.release(fh.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = if datasync { Op::Fdatasync } else { Op::Fsync };
        let (c, s) = self.call(op, req, Target::Node(ino.0), Some(fh.0));
        empty(
            &s,
            reply,
            guarded_sync(&self.fs, &self.faults, c, || self.fs.fsync(fh.0, datasync)),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (c, s) = self.call(Op::Opendir, req, Target::Node(ino.0), None);
        match guarded(&self.fs, &self.faults, c, || self.fs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (c, s) = self.call(Op::Readdir, req, Target::Node(ino.0), Some(fh.0));
        let r = guarded(&self.fs, &self.faults, c, || {
            self.fs.readdir(fh.0, offset as i64, &mut Plain(&mut reply))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (c, s) = self.call(Op::Readdir, req, Target::Node(ino.0), Some(fh.0));
        let r = guarded(&self.fs, &self.faults, c, || {
            self.fs.readdirplus(
                fh.0,
                offset as i64,
                &mut Plus(&mut reply, self.fs.generation()),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (c, s) = self.call(Op::Fsyncdir, req, Target::Node(ino.0), Some(fh.0));
        empty(
            &s,
            reply,
            guarded_sync(&self.fs, &self.faults, c, || {
                self.fs.fsyncdir(fh.0, datasync)
            }),
        );
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (c, s) = self.call(Op::Statfs, req, Target::None, None);
        match guarded(&self.fs, &self.faults, c, || self.fs.statfs()) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (c, s) = self.call(Op::Setxattr, req, Target::Node(ino.0), None);
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                self.fs.setxattr(ino.0, name, value, flags)
            }),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (c, s) = self.call(Op::Getxattr, req, Target::Node(ino.0), None);
        let r = guarded(&self.fs, &self.faults, c, || {
            self.fs.getxattr(ino.0, name, size)
        });
        xattr_reply(&s, reply, size, r);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (c, s) = self.call(Op::Listxattr, req, Target::Node(ino.0), None);
        let r = guarded(&self.fs, &self.faults, c, || self.fs.listxattr(ino.0, size));
        xattr_reply(&s, reply, size, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, s) = self.call(Op::Removexattr, req, Target::Node(ino.0), None);
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                self.fs.removexattr(ino.0, name)
            }),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, s) = self.call(Op::Create, req, Target::Name(parent.0, name), None);
        match guarded(&self.fs, &self.faults, c, || {
            with_gen(
                &self.fs,
                self.fs.create(parent.0, name, mode, flags, caller(req)),
            )
        }) {
            // Counted as a writer: a file that existed after all may have passthrough readers.
            Ok(((_, st, fh), g)) => {
                match self.grant(st.st_ino, fh, false, |fd| reply.open_backing(fd)) {
                    Grant::Cached => reply.created(
                        &TTL,
                        &attr(&st),
                        Generation(g),
                        FileHandle(fh),
                        self.open_flags(fh),
                    ),
                    Grant::Passthrough(b) | Grant::Direct(b) => reply.created_passthrough(
                        &TTL,
                        &attr(&st),
                        Generation(g),
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO,
                        &b,
                    ),
                }
            }
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let target = Target::Data {
            ino: ino.0,
            off: offset,
            len: length,
            frees: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
        };
        let (c, s) = self.call(Op::Fallocate, req, target, Some(fh.0));
        empty(
            &s,
            reply,
            guarded(&self.fs, &self.faults, c, || {
                self.fs.fallocate(fh.0, offset, length, mode)
            }),
        );
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let (c, s) = self.call(Op::Lseek, req, Target::Node(ino.0), Some(fh.0));
        match guarded(&self.fs, &self.faults, c, || {
            self.fs.lseek(fh.0, offset, whence)
        }) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(s.fail(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let target = Target::Data {
            ino: ino_out.0,
            off: offset_out,
            len,
            frees: false,
        };
        let (c, s) = self.call(Op::CopyFileRange, req, target, Some(fh_out.0));
        let r = guarded(&self.fs, &self.faults, c, || {
            self.fs.copy_file_range(
                fh_in.0,
                offset_in,
                fh_out.0,
                offset_out,
                len,
                flags.bits() as u32,
            )
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(s.fail(&e)),
        }
    }
}
