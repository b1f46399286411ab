//! The `lossfs` daemon: checks the command line, recovers an unclean journal, mounts, serves
//! the control socket, and carries out power cuts (kill, flush, freeze, roll back, thaw,
//! invalidate).  Also the clean shutdown: unmount on SIGTERM/SIGINT, then make everything
//! durable, as a real filesystem does when it is unmounted.

use crate::bdi;
use crate::control::{self, ControlHandler, ControlServer};
use crate::cpupin::{self, CpuPin};
use crate::error::{Context as _, FsError, FsResult};
use crate::faults::{self, Cutter, Faults};
use crate::faultspec::FaultCommand;
use crate::filekey::FileKey;
use crate::fs::{Hidden, LossFs};
use crate::fuse::FuseAdapter;
use crate::handle::FileHandle;
use crate::inode::InodeTable;
use crate::irqcpu;
use crate::journal::Journal;
use crate::keep::{KeepMode, KeepRequest, KeepSpec};
use crate::mountinfo;
use crate::namespace::{Model, Namespace};
use crate::options::{self, Cache, MountOptions, Recover, SyncCpu, SyncFileRange};
use crate::procscan::{self, MountTarget};
use crate::report::FaultsStatus;
use crate::report::{KilledProcess, PowercutReport, StatusReport, SyncReport};
use crate::sys::fstat;
use fuser::{Config, INodeNo, MountOption, Notifier, SessionACL};
use parking_lot::{Condvar, Mutex};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `lossfs BACKING MOUNTPOINT -o ...` asked for.
#[derive(Debug, Clone)]
pub struct MountArgs {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
}

/// How long a power cut waits for killed processes to die, and for the kernel to hand over
/// dirty mmap pages.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a power cut waits for the processes it killed to be reaped by their parents.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a mount waits for the lossfs before it on the same state dir to exit.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a power cut waits for the sync_file_range tracer to handle the events recorded
/// before it.
const SFR_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The state the control socket acts on.
pub struct Daemon {
    fs: Arc<LossFs>,
    /// Crash points and injected faults, shared with the FUSE adapter that applies them.
    faults: Arc<Faults>,
    notifier: Mutex<Option<Notifier>>,
    mountpoint: PathBuf,
    backing: PathBuf,
    powercuts: AtomicU64,
    /// Power cuts begun and ended (successful or not), for `lossfs run`, which must know
    /// whether its program died in a cut and when the rollback is over.
    cuts: Mutex<CutCounts>,
    cut_ended: Condvar,
    /// Serializes syncs and power cuts from the control socket and the LazyFS FIFO.
    ops: Mutex<()>,
    /// `cache=writeback`: the session's /dev/fuse fd, to start a new dentry epoch at a cut.
    epoch_fd: Option<OwnedFd>,
    /// `sync_file_range=stable`: the tracer (taken, and its instance removed, at shutdown).
    sfr: Mutex<Option<crate::sfrtrace::Tracer>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct CutCounts {
    started: u64,
    ended: u64,
}

/// Marks a power cut ended when dropped, also when it fails half way.
struct CutGuard<'a>(&'a Daemon);

impl Drop for CutGuard<'_> {
    fn drop(&mut self) {
        self.0.cuts.lock().ended += 1;
        self.0.cut_ended.notify_all();
    }
}

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// A control request the daemon refuses as given (bad keep spec, bad fault rule).
fn invalid(message: String) -> FsError {
    FsError::msg(libc::EINVAL, message)
}

/// Asks the kernel to write back every dirty page it holds for the mount (shared mmap
/// writes live there, and every write with the writeback cache), so they reach the journal
/// now rather than after a cut.  With `live` (the mount, when its programs stay alive: a
/// `--no-kill` cut, `lossctl sync`) it also waits for the pages of the files they hold,
/// which syncfs alone does not (see [`crate::pageflush`]).  Bounded: a wedged writeback must
/// not hang the control socket.
fn flush_kernel_dirty_pages(mountpoint: &Path, live: Option<MountTarget>) -> FsResult<()> {
    let mp = mountpoint.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lossfs-syncfs".into())
        .spawn(move || {
            let r = File::open(&mp).and_then(|f| {
                // SAFETY: valid fd.
                if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
            if let Some(target) = live {
                let flushed = crate::pageflush::write_back_users_pages(&target);
                for e in &flushed.errors {
                    tracing::info!("waiting for the dirty pages of {e}");
                }
                tracing::debug!("waited for the dirty pages of {} open files", flushed.files);
            }
            let _ = tx.send(r);
        })
        .ctx("starting the writeback thread")?;
    match rx.recv_timeout(FLUSH_TIMEOUT) {
        // Every dirty page was handed over or failed: syncfs reports a page the kernel
        // could not write back (with the writeback cache: pages of a handle from before a
        // power cut, refused with EIO, or a write error its program meets at fsync or
        // close).  Its job here, getting the pages out of the kernel, is done either way.
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
            tracing::info!(
                "syncfs {}: some dirty pages could not be written back: {e}",
                mountpoint.display()
            );
            Ok(())
        }
        Ok(r) => r.ctx_path("syncfs", mountpoint),
        Err(_) => Err(FsError::msg(
            libc::ETIMEDOUT,
            format!("syncfs did not finish within {FLUSH_TIMEOUT:?}"),
        )
        .path(mountpoint)),
    }
}

/// FUSE_NOTIFY_INC_EPOCH (Linux 6.16; fuser 0.18 does not know it): every dentry the
/// kernel holds is looked up again at its next use.  With the writeback cache the kernel
/// never takes a file size from the daemon for an inode it holds, and `inval_inode` drops
/// pages, not the size; a lookup after the cut drops the old inode (nobody uses it: the
/// users are dead) or, with `--no-kill`, finds its generation stale (see
/// [`LossFs::generation`]), and the kernel starts afresh from the rolled-back file.
fn new_dentry_epoch(fd: &OwnedFd) -> std::io::Result<()> {
    const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
    // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }.
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
    // SAFETY: valid fd; msg is a readable buffer of msg.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Daemon {
    /// How many power cuts (with or without kill) have begun on this mount.  A cut counts
    /// as begun before it kills anything.
    pub fn cuts_started(&self) -> u64 {
        self.cuts.lock().started
    }

    /// Waits until every power cut begun so far has ended (rolled back and invalidated, or
    /// failed), at most `timeout`; false on timeout.
    pub fn wait_cuts_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self.cuts.lock();
        while c.ended < c.started {
            if self.cut_ended.wait_until(&mut c, deadline).timed_out() {
                return c.ended >= c.started;
            }
        }
        true
    }

    fn target(&self) -> FsResult<MountTarget> {
        let e = mountinfo::mount_at(&self.mountpoint)
            .ctx("reading /proc/self/mountinfo")?
            .ok_or_else(|| {
                FsError::new(libc::ENOTCONN, "not mounted any more").path(&self.mountpoint)
            })?;
        Ok(MountTarget {
            mount_id: e.mount_id,
            major: e.major,
            minor: e.minor,
            mount_point: e.mount_point,
        })
    }

    /// The power cut sequence, once counted as begun (`cuts.started`); counts it ended
    /// however it goes.
    fn begun_cut(&self, no_kill: bool, spec: &KeepSpec) -> FsResult<PowercutReport> {
        let _ended = CutGuard(self);
        let _one_at_a_time = self.ops.lock();
        let t0 = Instant::now();
        let killed = if no_kill {
            self.faults.abort_delays();
            Vec::new()
        } else {
            let target = self.target()?;
            // Kill first, then end the injected delays (a delayed request never returns to
            // its program: the machine is going down), then wait for the deaths (a program
            // cannot die while one of its requests is delayed).
            let signalled = procscan::signal_users(&target);
            self.faults.abort_delays();
            let mut killed = procscan::kill_users(&target, KILL_TIMEOUT)
                .map_err(|m| FsError::msg(libc::EBUSY, m))?;
            // The first scan saw them alive; a dying process may already have lost its
            // mappings by the time the next scan looks, so keep the reasons of both.
            for k in signalled {
                match killed.iter_mut().find(|have| have.pid == k.pid) {
                    Some(have) => {
                        for r in k.reasons {
                            if !have.reasons.contains(&r) {
                                have.reasons.push(r);
                            }
                        }
                    }
                    None => killed.push(k),
                }
            }
            killed
        };
        let victims = procscan::victims(&killed);
        let live = if no_kill { self.target().ok() } else { None };
        if let Err(e) = flush_kernel_dirty_pages(&self.mountpoint, live) {
            // Go on: the cut itself must happen; late pages will meet EIO handles.
            tracing::warn!("power cut: {e}");
        }
        let warnings = self.drain_sfr_tracer();
        // Data first, by inode, wherever its names are now; then the names.
        let (files, (namespace, mut touched)) = self.fs.frozen(|| {
            let files = self.fs.journal.cut(spec);
            let names = match (&self.fs.ns, spec.mode) {
                (None, _) => Default::default(),
                // The disk kept everything: the names too.
                (Some(ns), KeepMode::All) => {
                    if let Err(e) = ns.commit_all() {
                        tracing::error!("power cut --keep all: namespace commit: {e}");
                    }
                    Default::default()
                }
                (Some(ns), _) => ns.undo_all(),
            };
            (files, names)
        });
        let files = self.fs.journal.name_unnamed(files.ctx("rollback")?);
        if self.epoch_fd.is_some() {
            touched.extend(
                files
                    .iter()
                    .filter_map(|f| self.entry_of(f.path.as_deref()?)),
            );
        }
        self.powercuts.fetch_add(1, Ordering::Relaxed);
        // After the thaw, from this (non-FUSE) thread: invalidation may make the kernel send
        // us requests, which the workers must be free to answer.
        self.invalidate_all(&touched);
        // Last, so that the parents reap while the cut runs.  A crash point's cut answers
        // no caller, so it has nobody to hold back.
        let unreaped = match control::server::requester_pid() {
            Some(pid) => {
                procscan::wait_reaped(&victims, &procscan::spared_parents(Some(pid)), REAP_TIMEOUT)
            }
            None => Vec::new(),
        };
        let report = PowercutReport {
            mountpoint: self.mountpoint.display().to_string(),
            killed,
            elapsed_ms: t0.elapsed().as_millis() as u64,
            namespace,
            keep: spec.mode,
            seed: spec.mode.is_seeded().then_some(spec.seed),
            granularity: (spec.mode == KeepMode::Random).then_some(spec.granularity),
            unreaped,
            warnings,
            ..PowercutReport::of_files(files)
        };
        tracing::info!("{}", report.to_text().trim_end());
        Ok(report)
    }

    /// Before the rollback, with every user dead: lets the sync_file_range tracer commit
    /// every call that returned before the cut.  Returns the report's warnings.
    fn drain_sfr_tracer(&self) -> Vec<String> {
        match &*self.sfr.lock() {
            Some(t) if !t.drain(SFR_DRAIN_TIMEOUT) => {
                let w = format!(
                    "the sync_file_range tracer was not drained within {SFR_DRAIN_TIMEOUT:?}: \
                     a sync_file_range that returned just before the cut may be rolled back"
                );
                tracing::warn!("power cut: {w}");
                vec![w]
            }
            _ => Vec::new(),
        }
    }

    /// The (parent directory, name) of a path relative to the mount, for `inval_entry`.
    /// With the writeback cache each rolled-back file's name is dropped at once, so that
    /// the next use of the name looks it up again even where the kernel would keep the
    /// dentry of the new epoch's lookup (a file whose last close was still in flight).
    fn entry_of(&self, rel: &str) -> Option<(FileKey, Vec<u8>)> {
        let rel = Path::new(rel);
        let name = rel.file_name()?.as_bytes().to_vec();
        let parent = self.backing.join(rel.parent()?);
        let st = std::fs::symlink_metadata(parent).ok()?;
        Some((
            FileKey {
                dev: st.dev(),
                ino: st.ino(),
            },
            name,
        ))
    }

    fn invalidate_all(&self, entries: &[(FileKey, Vec<u8>)]) {
        let Some(n) = self.notifier.lock().clone() else {
            return;
        };
        for id in self.fs.inodes.all_ids() {
            // ENOENT: the kernel already forgot it; nothing cached to drop.
            let _ = n.inval_inode(INodeNo(id), 0, 0);
        }
        // Names the namespace undo changed: the kernel must look them up again.
        for (parent, name) in entries {
            if let Some(id) = self.fs.inodes.nodeid_of(parent) {
                let _ = n.inval_entry(INodeNo(id), std::ffi::OsStr::from_bytes(name));
            }
        }
        if let Some(fd) = &self.epoch_fd {
            if let Err(e) = new_dentry_epoch(fd) {
                tracing::error!("power cut: cannot make the kernel look names up again: {e}");
            }
        }
    }
}

impl ControlHandler for Daemon {
    fn status(&self) -> FsResult<StatusReport> {
        let files = self.fs.journal.status();
        Ok(StatusReport {
            mountpoint: self.mountpoint.display().to_string(),
            backing: self.backing.display().to_string(),
            unsynced_bytes: files.iter().map(|f| f.unsynced_bytes).sum(),
            files,
            powercuts: self.powercuts.load(Ordering::Relaxed),
            metadata: self
                .fs
                .ns
                .as_ref()
                .map_or(Model::Durable, |n| n.model())
                .name()
                .into(),
            namespace_uncommitted: self.fs.ns.as_ref().map_or(0, |n| n.uncommitted() as u64),
            faults: self.faults.status(),
            sync_file_range: if self.sfr.lock().is_some() {
                "stable"
            } else {
                "volatile"
            }
            .into(),
        })
    }

    fn sync(&self) -> FsResult<SyncReport> {
        let _one_at_a_time = self.ops.lock();
        flush_kernel_dirty_pages(&self.mountpoint, self.target().ok())?;
        let mut report = self.fs.journal.sync_all().ctx("sync")?;
        if let Some(ns) = &self.fs.ns {
            report.namespace_committed = ns.commit_all().ctx("sync: namespace commit")? as u64;
        }
        Ok(report)
    }

    fn powercut(&self, no_kill: bool) -> FsResult<PowercutReport> {
        self.powercut_keep(no_kill, KeepRequest::default())
    }

    fn powercut_keep(&self, no_kill: bool, keep: KeepRequest) -> FsResult<PowercutReport> {
        let spec = keep.resolve().map_err(invalid)?;
        self.cuts.lock().started += 1;
        self.begun_cut(no_kill, &spec)
    }

    fn faults(&self, cmd: FaultCommand) -> FsResult<FaultsStatus> {
        let f = &self.faults;
        match cmd {
            FaultCommand::Arm(spec) => f.arm(spec).map_err(invalid),
            FaultCommand::Disarm => Ok(f.disarm()),
            FaultCommand::Add(spec) => f.add(spec).map_err(invalid),
            FaultCommand::List => Ok(f.status()),
            FaultCommand::Clear(id) => f.clear(id).map_err(invalid),
            FaultCommand::DiskFull(Some(limit)) => {
                let used = faults::hook::measure_disk(&self.fs, &self.faults)
                    .map_err(|m| FsError::msg(libc::EIO, m))?;
                Ok(f.set_disk_full(Some((limit, used))))
            }
            FaultCommand::DiskFull(None) => Ok(f.set_disk_full(None)),
        }
    }
}

impl Cutter for Daemon {
    fn kill_users_now(&self) -> Vec<KilledProcess> {
        match self.target() {
            Ok(t) => procscan::signal_users(&t),
            Err(e) => {
                tracing::warn!("crash point: {e}");
                Vec::new()
            }
        }
    }

    fn begin_cut(&self) {
        self.cuts.lock().started += 1;
    }

    fn powercut_begun(&self) -> FsResult<PowercutReport> {
        // A crash point cuts like a plain `lossctl powercut`: every unsynced byte is lost.
        self.begun_cut(false, &KeepSpec::none())
    }

    fn abandon_begun_cut(&self) {
        drop(CutGuard(self));
    }

    fn invalidate(&self, nodeid: u64) {
        if let Some(n) = self.notifier.lock().clone() {
            let _ = n.inval_inode(INodeNo(nodeid), 0, 0);
        }
    }

    fn invalidate_entry(&self, parent: u64, name: &std::ffi::OsStr) {
        if let Some(n) = self.notifier.lock().clone() {
            // ENOENT: nothing cached under that name.
            let _ = n.inval_entry(INodeNo(parent), name);
        }
    }
}

/// Logging of a process that stays in the foreground (see [`crate::logging`]).
pub(crate) fn init_logging(level: Option<&str>) {
    crate::logging::init(level, true);
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, and the hard limit first to the kernel's
/// ceiling (`/proc/sys/fs/nr_open`) where we may (root, and no container limit in the way):
/// every file a program opens through the mount costs the daemon one fd, so the daemon's
/// limit must not be what stops a program before its own limit does.  Returns the limit
/// before, if it changed.
fn raise_fd_limit() -> Option<libc::rlimit> {
    // SAFETY: an all-zero rlimit is a valid out-buffer.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource id and writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return None;
    }
    let before = rl;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    if let Some(ceiling) = nr_open.filter(|&c| c > rl.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: ceiling,
        };
        // SAFETY: valid resource id and rlimit.  EPERM (not root, or a limit we may not
        // raise) leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(before);
        }
    }
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid resource id and rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0 {
            return Some(before);
        }
    }
    None
}

fn open_dir_path(p: &Path) -> Result<OwnedFd, String> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(err)?;
    // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
    crate::sys::open_proc(&c, libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// Tells systemd (Type=notify) the daemon's state, if it is listening: `READY=1` once the
/// mount is ready, `STOPPING=1` once it is gone and the daemon winds down.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_bytes();
    let r = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::warn!("sd_notify {state} to {:?}: {e}", path);
    }
}

/// Forks; the parent waits until the child reports the mount ready (exit 0) or failed
/// (prints the child's message, exit 1), which is what mount(8) and fstab expect.  Returns
/// in the child the pipe to report on.
fn daemonize() -> Result<File, String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned here.
    let (mut rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other threads exist yet (called before anything spawns one).
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(rd);
            // SAFETY: setsid in the fresh child detaches it from the terminal session.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        _ => {
            drop(wr);
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "lossfs: the daemon died before the mount was ready".into();
            }
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds of our own process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Block the termination signals in every thread; one thread waits for them and unmounts.
fn block_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    let _ = set.thread_block();
    set
}

/// Whether BACKING is on a noexec mount: the lossfs mount then is too, or a program could
/// run through it what BACKING refuses to run.  (fuser always mounts nosuid and nodev.)
fn backing_is_noexec(backing: &std::path::Path) -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    match statvfs(backing) {
        Ok(st) => st.flags().contains(FsFlags::ST_NOEXEC),
        Err(e) => {
            tracing::warn!(
                "statvfs {}: {e}; mounting without noexec",
                backing.display()
            );
            false
        }
    }
}

/// A mount's pinning, and what follows the interrupt for `sync_cpu=auto`.
type SyncPin = (Arc<CpuPin>, Option<irqcpu::Follow>);

/// The pinning `sync_cpu=` asks for on a backing filesystem of device `dev`, and for
/// `auto` the look-up that follows the interrupt (started with [`cpupin::follow`] once the
/// signals are blocked).  A CPU named outright must be usable; `auto` never fails the mount.
/// What `auto` chose is logged at level warn, the default: it is asked for by name and
/// decides where threads run, so it must be visible without raising the log level.
fn sync_cpu_pin(choice: SyncCpu, dev: u64) -> Result<Option<SyncPin>, String> {
    match choice {
        SyncCpu::Off => Ok(None),
        SyncCpu::Cpu(cpu) => CpuPin::new(cpu)
            .map(|pin| Some((Arc::new(pin), None)))
            .map_err(|e| format!("mount option sync_cpu={cpu}: {e}")),
        SyncCpu::Auto => {
            let pin = match CpuPin::without_target() {
                Ok(pin) => pin,
                Err(e) => {
                    tracing::warn!("sync_cpu=auto: {e}; not pinning");
                    return Ok(None);
                }
            };
            let follow = irqcpu::Follow::new(dev);
            let every = cpupin::FOLLOW_EVERY.as_secs();
            match follow.cpu().map(|cpu| (cpu, pin.retarget(Some(cpu)))) {
                Some((cpu, Ok(()))) => tracing::warn!(
                    cpu,
                    "sync_cpu=auto: a program fsyncing alone is served on CPU {cpu}, which takes \
                     the backing disk's completion interrupts (looked up again every {every} s)"
                ),
                Some((_, Err(e))) => tracing::warn!(
                    "sync_cpu=auto: {e}; not pinning unless the interrupt moves (looked up \
                     again every {every} s)"
                ),
                None => tracing::warn!(
                    "sync_cpu=auto: no one CPU takes the backing disk's completion interrupts \
                     (a multi-queue disk such as NVMe, or no block device); not pinning unless \
                     that changes (looked up again every {every} s)"
                ),
            }
            Ok(Some((Arc::new(pin), Some(follow))))
        }
    }
}

/// Entry of the `lossfs BACKING MOUNTPOINT` command: returns the process exit code.
pub fn run(args: MountArgs) -> i32 {
    let opts = match options::parse_mount_options(&args.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lossfs: {e}");
            return 2;
        }
    };
    let foreground = args.foreground || opts.foreground;
    crate::logging::init(opts.log.as_deref(), foreground && opts.log_file.is_none());
    if let Some(path) = &opts.log_file {
        if let Err(e) = crate::logging::to_file(path) {
            eprintln!("lossfs: mount option log_file: {e}");
            return 2;
        }
    }
    let pipe = if foreground {
        None
    } else {
        match daemonize() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("lossfs: {e}");
                return 1;
            }
        }
    };
    // The child reports once, then closes the pipe so the parent sees EOF and exits.
    let pipe = Mutex::new(pipe);
    let report = |msg: &str| {
        if let Some(mut p) = pipe.lock().take() {
            let _ = p.write_all(msg.as_bytes());
            true
        } else {
            false
        }
    };
    let ready = |m: Mounted| {
        if pipe.lock().is_none() {
            return;
        }
        // Before stderr becomes /dev/null; a failure is still seen on the terminal.
        if opts.log_file.is_none() {
            if let Err(e) = crate::logging::to_file(&m.state_dir.join("lossfs.log")) {
                tracing::warn!("{e}: the daemon's messages are lost from now on");
            }
        }
        if report("ok") {
            detach_stdio();
        }
    };
    match serve(&args, &opts, &ready, None) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("lossfs: {e}");
            if !report(&msg) {
                eprintln!("{msg}");
            }
            1
        }
    }
}

/// Handed to the caller of [`serve`] once the mount is ready.
pub struct Mounted {
    /// The mount's daemon state (power cut counts).
    pub daemon: Arc<Daemon>,
    /// Unmounts the mount; the session then ends and [`serve`] returns.
    pub unmounter: Arc<Unmounter>,
    /// The umask the process had before the daemon cleared it (for programs it starts).
    pub umask: libc::mode_t,
    /// The RLIMIT_NOFILE the process had before the daemon raised it, if it did.
    pub nofile: Option<libc::rlimit>,
    /// The state dir (journal, lock, and the detached daemon's log).
    pub state_dir: PathBuf,
}

/// Unmounts a running session: normally, and if the mount is busy, lazily (the session
/// then ends when its last user lets go).
pub struct Unmounter {
    inner: Mutex<fuser::SessionUnmounter>,
    mountpoint: PathBuf,
    /// Injected delays end at unmount, or the session could not end.
    faults: Arc<Faults>,
}

impl Unmounter {
    /// Unmounts; errors are logged (the mount may be busy or already gone).
    pub fn unmount(&self) {
        self.faults.shutdown();
        if let Err(e) = self.inner.lock().unmount() {
            tracing::error!("unmount {}: {e}", self.mountpoint.display());
        }
    }

    /// For a termination signal.  A mount can be busy for a moment (a statfs in flight, a
    /// child forked elsewhere holding one of its files until it execs), so retry for up to
    /// two seconds, then detach it lazily: giving up would leave the daemon serving with
    /// nobody left to stop it.  (fuser's unmounter works once only, so the retries go to
    /// the kernel directly.)
    pub fn unmount_for_signal(&self) {
        self.faults.shutdown();
        match self.inner.lock().unmount() {
            Ok(()) => return,
            Err(e) => tracing::info!("unmount {}: {e}; retrying", self.mountpoint.display()),
        }
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            match unmount_path(&self.mountpoint, false) {
                Ok(()) => return,
                // Not a mount point any more: someone else unmounted it.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => tracing::debug!("unmount {}: {e}", self.mountpoint.display()),
            }
        }
        tracing::warn!(
            "{} stayed busy for 2 s; detaching it lazily",
            self.mountpoint.display()
        );
        if let Err(e) = unmount_path(&self.mountpoint, true) {
            tracing::error!("lazy unmount {}: {e}", self.mountpoint.display());
        }
    }

    /// Unmounts, and if that fails (busy), detaches the mount lazily; errors are logged.
    pub fn unmount_or_detach(&self) {
        self.faults.shutdown();
        if let Err(e) = self.inner.lock().unmount() {
            tracing::warn!(
                "unmount {}: {e}; detaching it lazily",
                self.mountpoint.display()
            );
            if let Err(e) = unmount_path(&self.mountpoint, true) {
                tracing::error!("lazy unmount {}: {e}", self.mountpoint.display());
            }
        }
    }
}

/// umount2(2) (lazily with `lazy`); where the kernel refuses a user that (EPERM), the
/// setuid fusermount3 does it.
fn unmount_path(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string; umount2 has no memory effects on our side.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let status = std::process::Command::new("fusermount3")
        .arg(if lazy { "-uz" } else { "-u" })
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u: {status}")))
    }
}

/// Called on SIGTERM, SIGINT or SIGHUP instead of unmounting; returns true to unmount now.
pub type SignalHook = Arc<dyn Fn(nix::sys::signal::Signal) -> bool + Send + Sync>;

/// Recovers, mounts and serves until the mount goes away.  `ready` runs (on a thread of its
/// own) once the mount answers requests and the control socket is up; a termination signal unmounts, or with `on_signal` is handed
/// to it.  The FUSE session runs on the calling thread.
pub fn serve(
    args: &MountArgs,
    opts: &MountOptions,
    ready: &(dyn Fn(Mounted) + Sync),
    on_signal: Option<SignalHook>,
) -> Result<(), String> {
    let (backing, mountpoint) = check_mount_target(args, opts)?;
    // Before anything is touched: a mount that cannot trace is refused with nothing lost.
    let sfr = match opts.sync_file_range {
        SyncFileRange::Stable => Some(
            crate::sfrtrace::Tracer::prepare()
                .map_err(|e| format!("sync_file_range=stable: {e}"))?,
        ),
        SyncFileRange::Volatile => None,
    };
    let threads = opts.threads.unwrap_or(8);
    let pin = choose_sync_pin(opts, &backing, threads)?;
    // Before any thread starts (the namespace commit thread, the workers...): every thread
    // inherits the mask, so termination signals reach only the signal thread.
    let signals = block_signals();
    let pin = pin.map(start_pin_follower);
    // Files are created with the caller's mode.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty()).bits();
    let nofile = raise_fd_limit();

    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| backing.join(".lossfs"));
    let fs = open_state(opts, &backing, &mountpoint, &state_dir)?;
    if sfr.is_some() {
        fs.journal.enable_range_commits();
    }
    let faults = Arc::new(Faults::new());
    let (mut session, daemon) = mount(opts, &backing, &mountpoint, threads, &fs, &faults, pin)?;
    *daemon.sfr.lock() = sfr;
    let services = start_services(opts, &mut session, &daemon, &faults)?;
    let unmounter = Arc::new(Unmounter {
        inner: Mutex::new(session.unmount_callable()),
        mountpoint: mountpoint.clone(),
        faults: faults.clone(),
    });
    start_signal_thread(signals, on_signal, unmounter.clone())?;

    tracing::info!(
        "mounted {} on {} (state {}, control {})",
        backing.display(),
        mountpoint.display(),
        state_dir.display(),
        services.sock.display()
    );
    let mounted = Mounted {
        daemon: daemon.clone(),
        unmounter,
        umask,
        nofile,
        state_dir: state_dir.clone(),
    };
    let mut session = session;
    let result = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("lossfs-ready".into())
            .spawn_scoped(s, || {
                announce_when_answering(&mountpoint, opts, ready, mounted)
            });
        if let Err(e) = spawned {
            let _ = session.unmount();
            return Err(std::io::Error::other(format!(
                "cannot start the thread that reports the mount ready: {e}"
            )));
        }
        serve_until_unmounted(session)
    });
    shut_down(&daemon, &fs, services);
    result.map_err(|e| format!("FUSE session: {e}"))
}

/// The checks before anything is touched: FUSE is there, BACKING and MOUNTPOINT are usable,
/// and MOUNTPOINT is not a lossfs mount already.  Returns both paths, canonical.
fn check_mount_target(args: &MountArgs, opts: &MountOptions) -> Result<(PathBuf, PathBuf), String> {
    options::check_fuse_available()?;
    crate::pause::init();
    let (backing, mountpoint) =
        options::check_paths(&args.backing, &args.mountpoint, opts.state_dir.as_deref())?;
    if let Ok(Some(m)) = mountinfo::mount_at(&mountpoint) {
        if m.fstype == mountinfo::FSTYPE {
            return Err(format!(
                "{} is already a lossfs mount (of {}); unmount it first with fusermount3 -u {}",
                mountpoint.display(),
                m.source,
                mountpoint.display()
            ));
        }
    }
    Ok((backing, mountpoint))
}

/// The `sync_cpu=` pinning, chosen before anything changes (the journal's recovery), so
/// that a bad `sync_cpu=N` fails the mount with nothing done.  Pinning follows the gate's
/// turn-taking: with one thread there is none.
fn choose_sync_pin(
    opts: &MountOptions,
    backing: &Path,
    threads: usize,
) -> Result<Option<SyncPin>, String> {
    if threads > 1 {
        let dev = std::fs::metadata(backing)
            .map_err(|e| format!("stat {}: {e}", backing.display()))?
            .dev();
        sync_cpu_pin(opts.sync_cpu, dev)
    } else {
        if opts.sync_cpu != SyncCpu::Off {
            tracing::warn!("sync_cpu: threads=1 leaves no thread to pin; not pinning");
        }
        Ok(None)
    }
}

/// For `sync_cpu=auto`: starts the thread that moves the pin with the interrupt (once the
/// signals are blocked, as for every thread).
fn start_pin_follower((pin, follow): SyncPin) -> Arc<CpuPin> {
    if let Some(mut follow) = follow {
        let weak = Arc::downgrade(&pin);
        if let Err(e) = cpupin::follow(weak, cpupin::FOLLOW_EVERY, move || follow.changed()) {
            tracing::warn!(
                "sync_cpu=auto: cannot start the thread that follows the interrupt: {e}"
            );
        }
    }
    pin
}

/// Opens the durability state (journal and namespace log in `state_dir`), recovering what
/// a killed daemon left, and builds the filesystem on BACKING with it.
fn open_state(
    opts: &MountOptions,
    backing: &Path,
    mountpoint: &Path,
    state_dir: &Path,
) -> Result<Arc<LossFs>, String> {
    let root = open_dir_path(backing)?;
    let (journal, recovered) =
        open_journal_waiting(state_dir, &root, backing, opts.recover == Recover::Rollback)?;
    let journal = Arc::new(journal);
    let ns_root = root
        .try_clone()
        .map_err(|e| format!("dup backing fd: {e}"))?;
    let (ns, ns_recovered) = Namespace::open(
        state_dir,
        ns_root,
        backing,
        journal.clone(),
        opts.metadata,
        opts.recover == Recover::Rollback,
    )
    .map_err(|e| format!("namespace log in {}: {e}", state_dir.display()))?;
    if let Some(undone) = ns_recovered {
        let r = PowercutReport {
            mountpoint: mountpoint.display().to_string(),
            namespace: undone,
            ..Default::default()
        };
        tracing::warn!(
            "found pending namespace changes in {} (the previous lossfs was killed): {}\n{}",
            state_dir.display(),
            if opts.recover == Recover::Rollback {
                "undone"
            } else {
                "kept (recover=keep)"
            },
            r.to_text().trim_end()
        );
    }
    if let Some(files) = recovered {
        let files = journal.name_unnamed(files);
        let verb = if opts.recover == Recover::Rollback {
            "rolled back"
        } else {
            "kept (recover=keep)"
        };
        let r = PowercutReport {
            mountpoint: mountpoint.display().to_string(),
            ..PowercutReport::of_files(files)
        };
        tracing::warn!(
            "found an unclean journal in {} (the previous lossfs was killed): unsynced data {verb}\n{}",
            state_dir.display(),
            r.to_text().trim_end()
        );
    }
    // Whatever is on the backing disk now is the durable baseline.
    let _ = nix::unistd::syncfs(&root);

    let st = fstat(root.as_fd()).map_err(|e| format!("stat {}: {e}", backing.display()))?;
    let root_key = FileKey {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    let root_handle = FileHandle::of_fd(root.as_fd()).map_err(|e| {
        format!(
            "{} does not support file handles (name_to_handle_at: {e}); lossfs needs a backing filesystem that does (ext4, xfs, btrfs, tmpfs)",
            backing.display()
        )
    })?;
    let hidden = hidden_state_dir(state_dir, backing);
    let mut fs = LossFs::new(
        InodeTable::new(root, root_key, root_handle),
        journal,
        hidden,
    );
    if opts.cache == Cache::Writeback {
        fs = fs.with_writeback_cache();
    }
    if let Some(mib) = opts.writebehind_mib {
        fs = fs.with_writebehind(mib);
    }
    if ns.model() != Model::Durable {
        ns.start_periodic_commit(opts.commit_interval())
            .map_err(|e| e.to_string())?;
        fs = fs.with_namespace(ns);
    }
    Ok(Arc::new(fs))
}

/// The FUSE mount options and session settings the mount options ask for.
fn mount_config(opts: &MountOptions, backing: &Path, threads: usize) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(backing.display().to_string()),
        MountOption::Subtype("lossfs".into()),
        // As root fuser mounts with mount(2) and drops Subtype; this makes the type
        // "fuse.lossfs", which is how lossctl recognises our mounts.
        MountOption::CUSTOM("subtype=lossfs".into()),
    ];
    // Always: the daemon acts as root, so the kernel's check is all that stands between a
    // program and what the backing file system would refuse it (options.rs refuses to turn
    // it off).  With allow_other fuser lets every user's requests through (SessionACL::All)
    // and checks nothing itself.
    config.mount_options.push(MountOption::DefaultPermissions);
    for (on, o) in [
        (opts.ro, MountOption::RO),
        (opts.noatime, MountOption::NoAtime),
        (opts.nosuid, MountOption::NoSuid),
        (opts.nodev, MountOption::NoDev),
        (
            opts.noexec || backing_is_noexec(backing),
            MountOption::NoExec,
        ),
    ] {
        if on {
            config.mount_options.push(o);
        }
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

/// Mounts `fs` on MOUNTPOINT behind the FUSE adapter (not served yet) and makes the daemon
/// state the control socket acts on.
fn mount(
    opts: &MountOptions,
    backing: &Path,
    mountpoint: &Path,
    threads: usize,
    fs: &Arc<LossFs>,
    faults: &Arc<Faults>,
    pin: Option<Arc<CpuPin>>,
) -> Result<(fuser::Session<FuseAdapter>, Arc<Daemon>), String> {
    let config = mount_config(opts, backing, threads);
    let adapter = FuseAdapter {
        fs: fs.clone(),
        faults: faults.clone(),
        gate: (threads > 1).then(|| crate::readgate::ReadGate::new(threads)),
        pin,
        passthrough: (opts.passthrough == options::Passthrough::Ro)
            .then(crate::iomode::IoModes::new),
    };

    let session = fuser::Session::new(adapter, mountpoint, &config)
        .map_err(|e| format!("mount on {}: {e}", mountpoint.display()))?;
    let epoch_fd = match opts.cache {
        Cache::Writeback => Some(
            session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("dup /dev/fuse fd: {e}"))?,
        ),
        Cache::Writethrough => None,
    };
    let daemon = Arc::new(Daemon {
        fs: fs.clone(),
        faults: faults.clone(),
        notifier: Mutex::new(Some(session.notifier())),
        mountpoint: mountpoint.to_path_buf(),
        backing: backing.to_path_buf(),
        powercuts: AtomicU64::new(0),
        cuts: Mutex::new(CutCounts::default()),
        cut_ended: Condvar::new(),
        ops: Mutex::new(()),
        epoch_fd,
        sfr: Mutex::new(None),
    });
    Ok((session, daemon))
}

/// What runs beside the FUSE session until it ends.
struct Services {
    writeback: Option<crate::writeback::Writeback>,
    server: ControlServer,
    sock: PathBuf,
    default_sock: PathBuf,
}

/// Starts the writeback thread, arms the fault engine, and starts the control server (and
/// the LazyFS FIFO); on failure unmounts.
fn start_services(
    opts: &MountOptions,
    session: &mut fuser::Session<FuseAdapter>,
    daemon: &Arc<Daemon>,
    faults: &Arc<Faults>,
) -> Result<Services, String> {
    let fs = &daemon.fs;
    let mountpoint = &daemon.mountpoint;
    let writeback = match opts.writeback {
        Some(secs) => {
            match crate::writeback::Writeback::start(fs.journal.clone(), Duration::from_secs(secs))
            {
                Ok(w) => Some(w),
                Err(e) => {
                    let _ = session.unmount();
                    return Err(format!("cannot start the writeback thread: {e}"));
                }
            }
        }
        None => None,
    };
    if let Err(e) = start_sfr_tracer(daemon) {
        let _ = session.unmount();
        return Err(format!("sync_file_range=stable: {e}"));
    }
    faults.set_fsync_error(opts.fsync_error);
    // `lossfs explore`'s recording run (see faults::record).
    if let Some(p) = std::env::var_os(crate::faults::record::RECORD_ENV) {
        if let Err(e) = faults.record_to(std::path::Path::new(&p)) {
            let _ = session.unmount();
            return Err(format!("cannot record operations to {p:?}: {e}"));
        }
    }
    let cutter: Arc<dyn Cutter> = daemon.clone();
    faults.set_cutter(Arc::downgrade(&cutter));
    let default_sock = control::default_socket_path(mountpoint);
    let sock = opts.control.clone().unwrap_or_else(|| default_sock.clone());
    let server = match ControlServer::start(&sock, daemon.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = session.unmount();
            return Err(format!("control socket {}: {e}", sock.display()));
        }
    };
    if let Some(fifo) = &opts.lazyfs_fifo {
        if let Err(e) = crate::lazyfs::start(fifo, daemon.clone()) {
            server.shutdown();
            let _ = session.unmount();
            return Err(e);
        }
    }
    if sock != default_sock {
        // lossctl finds the socket from the mount point alone.
        if let Some(dir) = default_sock.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::remove_file(&default_sock);
        if let Err(e) = std::os::unix::fs::symlink(&sock, &default_sock) {
            tracing::warn!(
                "cannot link {} -> {}: {e}",
                default_sock.display(),
                sock.display()
            );
        }
    }
    Ok(Services {
        writeback,
        server,
        sock,
        default_sock,
    })
}

/// Starts reading the sync_file_range events, for the mount's device, once mounted.
fn start_sfr_tracer(daemon: &Daemon) -> Result<(), String> {
    let tracer = daemon.sfr.lock();
    let Some(t) = &*tracer else {
        return Ok(());
    };
    let e = mountinfo::mount_at(&daemon.mountpoint)
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?
        .ok_or_else(|| format!("{} is not mounted", daemon.mountpoint.display()))?;
    let dev = libc::makedev(e.major, e.minor);
    t.start(dev, daemon.fs.clone())
}

/// The thread that takes the blocked termination signals: each unmounts, or with
/// `on_signal` is handed to it first.
fn start_signal_thread(
    signals: nix::sys::signal::SigSet,
    on_signal: Option<SignalHook>,
    sig_unmounter: Arc<Unmounter>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("lossfs-signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                if let Some(hook) = &on_signal {
                    if !hook(sig) {
                        continue;
                    }
                }
                tracing::info!("{sig:?}: unmounting");
                sig_unmounter.unmount_for_signal();
                break;
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;
    Ok(())
}

/// Reports the mount ready (`ready`, then READY=1 to systemd) once it answers, after
/// setting its backing-device knobs ([`bdi`]).  The kernel holds every request on the
/// mount until the session, running meanwhile on the calling thread, has answered INIT:
/// reported any earlier, a caller that unmounts at once would meet our own statfs still in
/// flight (EBUSY), and systemd would start its next unit before the mount works.
fn announce_when_answering(
    mountpoint: &Path,
    opts: &MountOptions,
    ready: &(dyn Fn(Mounted) + Sync),
    mounted: Mounted,
) {
    if let Err(e) = bdi::wait_for_init(mountpoint) {
        // The session ended before INIT: `serve` returns why.
        tracing::warn!("the mount never answered: {e}");
        return;
    }
    // Neither is fatal: they change speed, not what the mount keeps or loses.
    let read_ahead_kb = opts.read_ahead_kb.unwrap_or(options::DEFAULT_READ_AHEAD_KB);
    if read_ahead_kb > 0 {
        match bdi::set_read_ahead(mountpoint, read_ahead_kb) {
            Ok(()) => tracing::debug!(
                "readahead of {} set to {read_ahead_kb} KiB",
                mountpoint.display()
            ),
            Err(e) => tracing::warn!("cannot set the readahead window: {e}"),
        }
    }
    if opts.cache == options::Cache::Writeback {
        let ratio = opts.dirty_ratio.unwrap_or(options::DEFAULT_DIRTY_RATIO);
        if let Err(e) = bdi::set_max_dirty_ratio(mountpoint, ratio) {
            tracing::warn!(
                "cannot let the writeback cache hold {ratio}% of the dirty-page limit \
                 (the kernel's 1% stays): {e}"
            );
        }
    }
    ready(mounted);
    sd_notify("READY=1");
}

/// Serves FUSE requests on the calling thread until the mount goes away.
fn serve_until_unmounted(session: fuser::Session<FuseAdapter>) -> std::io::Result<()> {
    let result = session.run();
    sd_notify("STOPPING=1");
    match result {
        // The connection ended by the kernel rather than by the unmount (seen once the last
        // user of a busy mount, detached lazily at SIGTERM, let go; also what an abort
        // through /sys/fs/fuse/connections gives): the mount is gone all the same, and the
        // shutdown that follows is the one of an unmount.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::warn!("the kernel ended the FUSE connection ({e}); shutting down");
            Ok(())
        }
        r => r,
    }
}

/// After the session: stops what ran beside it, and makes everything durable, as a clean
/// unmount writes everything back.
fn shut_down(daemon: &Daemon, fs: &LossFs, services: Services) {
    *daemon.notifier.lock() = None;
    // Stops its reader and removes its tracefs instance.
    drop(daemon.sfr.lock().take());
    if let Some(w) = services.writeback {
        w.stop();
    }
    services.server.shutdown();
    if services.sock != services.default_sock {
        let _ = std::fs::remove_file(&services.default_sock);
    }
    // A clean unmount is a clean shutdown: the kernel would write everything back.
    if let Err(e) = fs.journal.sync_all() {
        tracing::error!("final sync after unmount: {e}");
    }
    if let Some(ns) = &fs.ns {
        if let Err(e) = ns.commit_all() {
            tracing::error!("final namespace commit after unmount: {e}");
        }
    }
}

/// Opens the journal, waiting up to [`LOCK_WAIT`] while another lossfs holds the state
/// dir: the kernel completes an unmount (and `fusermount3 -u` returns) before the daemon
/// has made its journal clean and let go of the lock, so a mount right after an unmount
/// would otherwise be refused.  A lossfs still mounted on the same BACKING is no such
/// case: that refusal comes at once.
fn open_journal_waiting(
    state_dir: &Path,
    root: &OwnedFd,
    backing: &Path,
    rollback: bool,
) -> Result<(Journal, Option<Vec<crate::report::FileLoss>>), String> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        let root = root
            .try_clone()
            .map_err(|e| format!("dup backing fd: {e}"))?;
        match Journal::open(state_dir, root, backing, rollback) {
            Ok(opened) => return Ok(opened),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && Instant::now() < deadline
                    && !backing_mounted(backing) =>
            {
                if !said {
                    tracing::warn!("{e}: waiting up to {LOCK_WAIT:?} for it to finish");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("journal in {}: {e}", state_dir.display())),
        }
    }
}

/// Whether a lossfs mount of `backing` (its source, as the daemon names it) is up.
fn backing_mounted(backing: &Path) -> bool {
    let name = backing.display().to_string();
    mountinfo::lossfs_mounts().is_ok_and(|ms| ms.iter().any(|m| m.source == name))
}

/// The state dir, if it lives inside BACKING, is hidden from the mount by (parent, name).
fn hidden_state_dir(state_dir: &Path, backing: &Path) -> Option<Hidden> {
    let sd = state_dir.canonicalize().ok()?;
    if !sd.starts_with(backing) || sd == backing {
        return None;
    }
    let parent = sd.parent()?;
    let st = std::fs::metadata(parent).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some(Hidden {
        parent: FileKey {
            dev: st.dev(),
            ino: st.ino(),
        },
        name: sd.file_name()?.to_os_string(),
    })
}
