//! The inode table: FUSE node ids to backing files.
//!
//! Each inode is named by a kernel file handle, not a path, so renames by anyone cannot send
//! an operation to the wrong file and nothing is resolved through a string.  Open `O_PATH`
//! fds are a cache on top: our machines cap fds at 20,000, so at most [`FD_CACHE`] inodes hold
//! one at a time and the rest are reopened with `open_by_handle_at` when used again.

use crate::filekey::FileKey;
use crate::handle::FileHandle;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// How many inodes may hold an open `O_PATH` fd at once.
pub const FD_CACHE: usize = 8192;

/// How many `O_PATH` fds the cache may hold: [`FD_CACHE`], or half the fd limit if that is
/// lower, so that the files programs open (each holds a backing fd) have the other half
/// without waiting for the cache to give fds back.  Read again when fds run out: the limit
/// may have been lowered under a running daemon (`prlimit --pid`).
fn fd_cache_capacity() -> usize {
    // SAFETY: an all-zero rlimit is a valid out-buffer.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource id and writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return FD_CACHE;
    }
    let half = usize::try_from(rl.rlim_cur / 2).unwrap_or(usize::MAX);
    FD_CACHE.min(half).max(16)
}

/// The FUSE node id of the mount root.
pub const ROOT: u64 = 1;

/// Node ids at or above this were made up because the backing inode number was taken.
const SYNTHETIC: u64 = 1 << 63;

/// One backing file the kernel knows about.
#[derive(Debug)]
pub struct Inode {
    /// Our FUSE node id: the backing inode number unless that was taken.
    pub nodeid: u64,
    /// Backing (st_dev, st_ino), which also keys the durability journal.
    pub key: FileKey,
    /// Persistent name of the backing file.
    pub handle: FileHandle,
    /// `st_mode & S_IFMT` of the backing file.
    pub kind: u32,
    lookups: AtomicU64,
    fd: Mutex<Option<CachedFd>>,
}

/// An `O_PATH` fd held by the cache.  It counts itself in the table's count while it lives,
/// so the count is the number of fds the cache holds whichever way one leaves (eviction,
/// forget, or the inode dropped by its last user), and nothing can count one twice.
#[derive(Debug)]
struct CachedFd {
    fd: Arc<OwnedFd>,
    count: Arc<AtomicUsize>,
}

impl CachedFd {
    fn new(fd: Arc<OwnedFd>, count: &Arc<AtomicUsize>) -> CachedFd {
        count.fetch_add(1, Ordering::AcqRel);
        CachedFd {
            fd,
            count: count.clone(),
        }
    }
}

impl Drop for CachedFd {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.kind == libc::S_IFREG
    }
}

/// A borrowed `O_PATH` fd of an inode, kept alive while in use even if the cache evicts it.
#[derive(Debug, Clone)]
pub struct PathFd(Arc<OwnedFd>);

impl PathFd {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    /// `/proc/self/fd/N`: the way to reopen an `O_PATH` fd with real access modes, or to
    /// reach calls that have no fd form, without ever naming the file by its path.
    pub fn proc_path(&self) -> std::ffi::CString {
        // A decimal number never contains NUL.
        std::ffi::CString::new(format!("/proc/self/fd/{}", self.0.as_raw_fd())).unwrap_or_default()
    }
}

struct Maps {
    by_id: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<FileKey, u64>,
}

/// The table.  Lookups take a read lock; only inserting and forgetting take the write lock.
pub struct InodeTable {
    maps: RwLock<Maps>,
    next_id: AtomicU64,
    backing_root: Arc<OwnedFd>,
    /// Eviction order: the inodes that cached an fd, oldest first.  An entry whose inode has
    /// gone or holds no fd any more is skipped when reached, and such entries are swept out
    /// when they outnumber the live ones.
    cached: Mutex<VecDeque<Weak<Inode>>>,
    /// How many [`CachedFd`]s exist, the root's not included.
    cached_count: Arc<AtomicUsize>,
    /// Most `O_PATH` fds held at once ([`fd_cache_capacity`]).
    capacity: AtomicUsize,
}

impl InodeTable {
    /// `root` is an `O_PATH` fd of the backing root; `root_key` and `root_handle` name it.
    pub fn new(root: OwnedFd, root_key: FileKey, root_handle: FileHandle) -> InodeTable {
        Self::with_capacity(root, root_key, root_handle, fd_cache_capacity())
    }

    /// [`InodeTable::new`] with the cache holding at most `capacity` fds.
    fn with_capacity(
        root: OwnedFd,
        root_key: FileKey,
        root_handle: FileHandle,
        capacity: usize,
    ) -> InodeTable {
        let root = Arc::new(root);
        // The root's fd lives as long as the table and is not counted: the count must never
        // reach the root, which is never evicted.
        let uncounted = Arc::new(AtomicUsize::new(1));
        let inode = Arc::new(Inode {
            nodeid: ROOT,
            key: root_key,
            handle: root_handle,
            kind: libc::S_IFDIR,
            lookups: AtomicU64::new(1),
            fd: Mutex::new(Some(CachedFd::new(root.clone(), &uncounted))),
        });
        let mut by_id = HashMap::new();
        by_id.insert(ROOT, inode);
        let mut by_key = HashMap::new();
        by_key.insert(root_key, ROOT);
        InodeTable {
            maps: RwLock::new(Maps { by_id, by_key }),
            next_id: AtomicU64::new(ROOT + 1),
            backing_root: root,
            cached: Mutex::new(VecDeque::new()),
            cached_count: Arc::new(AtomicUsize::new(0)),
            capacity: AtomicUsize::new(capacity),
        }
    }

    pub fn backing_root(&self) -> BorrowedFd<'_> {
        self.backing_root.as_fd()
    }

    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.maps.read().by_id.get(&nodeid).cloned()
    }

    /// The node id of a known backing file.
    pub fn nodeid_of(&self, key: &FileKey) -> Option<u64> {
        self.maps.read().by_key.get(key).copied()
    }

    /// All inodes the kernel currently knows (for cache invalidation after a cut).
    pub fn all_ids(&self) -> Vec<u64> {
        self.maps.read().by_id.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.maps.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `O_PATH` fd of an inode, reopening it by handle if the cache dropped it.
    pub fn path_fd(&self, inode: &Arc<Inode>) -> io::Result<PathFd> {
        if let Some(cached) = inode.fd.lock().as_ref() {
            return Ok(PathFd(cached.fd.clone()));
        }
        let fd = Arc::new(self.with_fd_room(|| {
            inode
                .handle
                .open(self.backing_root(), libc::O_PATH | libc::O_NOFOLLOW)
        })?);
        self.cache_fd(inode, fd.clone());
        Ok(PathFd(fd))
    }

    fn cache_fd(&self, inode: &Arc<Inode>, fd: Arc<OwnedFd>) {
        {
            let mut slot = inode.fd.lock();
            if slot.is_some() {
                return;
            }
            *slot = Some(CachedFd::new(fd, &self.cached_count));
        }
        let mut queue = self.cached.lock();
        queue.push_back(Arc::downgrade(inode));
        // FIFO eviction: cheap, and a reopen by handle is one syscall.  Entries of inodes
        // that went away or were evicted already are passed over.
        let capacity = self.capacity.load(Ordering::Relaxed);
        while self.cached_count.load(Ordering::Acquire) > capacity {
            let Some(old) = queue.pop_front() else {
                break;
            };
            let Some(old) = old.upgrade() else {
                continue;
            };
            // Take it out of the slot under the slot's lock, drop it (and its count) after.
            let evicted = old.fd.lock().take();
            drop(evicted);
        }
        // Forgotten inodes leave their entries behind; sweep them before they pile up.
        if queue.len() > 2 * capacity.max(self.cached_count.load(Ordering::Acquire)) {
            queue.retain(|w| w.upgrade().is_some_and(|i| i.fd.lock().is_some()));
        }
    }

    /// Runs `open` (any call that takes a new fd), and when it fails for want of fds
    /// (EMFILE, or ENFILE system-wide) gives back the cached fds nobody else uses, sizes the
    /// cache from the fd limit of now, and runs it once more.  A program may thus open
    /// through the mount nearly as many files as the daemon's limit allows, whatever the
    /// cache held.
    pub fn with_fd_room<T>(&self, mut open: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match open() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.capacity.store(fd_cache_capacity(), Ordering::Relaxed);
                let freed = self.give_back_idle();
                tracing::debug!(freed, "out of fds: gave back idle cached O_PATH fds");
                open()
            }
            r => r,
        }
    }

    /// Closes every cached fd that only the cache holds (one a request is using stays open
    /// until the request ends, so evicting it would free nothing).  Returns how many.
    fn give_back_idle(&self) -> usize {
        let mut freed = Vec::new();
        self.cached.lock().retain(|w| {
            let Some(inode) = w.upgrade() else {
                return false;
            };
            let mut slot = inode.fd.lock();
            match slot.as_ref() {
                None => false,
                // Clones are made only under this lock, so the count cannot grow meanwhile.
                Some(c) if Arc::strong_count(&c.fd) == 1 => {
                    freed.extend(slot.take());
                    false
                }
                Some(_) => true,
            }
        });
        // Closed here, outside the locks.
        freed.len()
    }

    /// How many `O_PATH` fds the cache holds (the root's not counted).
    pub fn cached_fds(&self) -> usize {
        self.cached_count.load(Ordering::Acquire)
    }

    /// Registers a backing file found by a lookup or a create (its fresh `O_PATH` fd and
    /// `st`), counts one kernel reference, and returns the inode.  A known (dev, ino) whose
    /// file handle differs is a new file that reused the inode number: it gets a new node id.
    pub fn remember(&self, fd: OwnedFd, st: &libc::stat) -> io::Result<Arc<Inode>> {
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let existing = self.maps.read().by_key.get(&key).copied();
        let mut handle = None;
        if let Some(id) = existing {
            if let Some(inode) = self.get(id) {
                // While an inode holds an fd its (dev, ino) cannot be reused, so the match is
                // certain; otherwise compare handles, which carry the generation.
                let same = if inode.fd.lock().is_some() {
                    true
                } else {
                    let h = FileHandle::of_fd(fd.as_fd())?;
                    let same = h == inode.handle;
                    handle = Some(h);
                    same
                };
                if same {
                    inode.lookups.fetch_add(1, Ordering::Relaxed);
                    self.cache_fd(&inode, Arc::new(fd));
                    return Ok(inode);
                }
            }
        }
        let handle = match handle {
            Some(h) => h,
            None => FileHandle::of_fd(fd.as_fd())?,
        };
        let mut maps = self.maps.write();
        // Re-check under the write lock: another thread may have inserted it meanwhile.
        if let Some(id) = maps.by_key.get(&key).copied() {
            if let Some(inode) = maps.by_id.get(&id).cloned() {
                if inode.handle == handle {
                    inode.lookups.fetch_add(1, Ordering::Relaxed);
                    drop(maps);
                    self.cache_fd(&inode, Arc::new(fd));
                    return Ok(inode);
                }
            }
        }
        // The node id is also the st_ino programs see (fuser sends attr.ino for both), so use
        // the backing inode number, which then matches readdir's d_ino; fall back to a
        // synthetic id when that number is taken (the root's 1, another device, a reused ino
        // of an unlinked file the kernel still holds).
        let nodeid = if st.st_ino != ROOT && !maps.by_id.contains_key(&st.st_ino) {
            st.st_ino
        } else {
            SYNTHETIC | self.next_id.fetch_add(1, Ordering::Relaxed)
        };
        let inode = Arc::new(Inode {
            nodeid,
            key,
            handle,
            kind: st.st_mode & libc::S_IFMT,
            lookups: AtomicU64::new(1),
            fd: Mutex::new(None),
        });
        maps.by_id.insert(nodeid, inode.clone());
        maps.by_key.insert(key, nodeid);
        drop(maps);
        self.cache_fd(&inode, Arc::new(fd));
        Ok(inode)
    }

    /// The kernel took one more reference to an inode it already has.
    pub fn incref(&self, inode: &Inode) {
        inode.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel dropped `n` references to `nodeid`.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let Some(inode) = self.get(nodeid) else {
            return;
        };
        let prev = inode
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            })
            .unwrap_or(0);
        if prev > n {
            return;
        }
        let mut maps = self.maps.write();
        // A lookup may have revived it between the decrement and this lock.
        if inode.lookups.load(Ordering::Acquire) != 0 {
            return;
        }
        maps.by_id.remove(&nodeid);
        if maps.by_key.get(&inode.key) == Some(&nodeid) {
            maps.by_key.remove(&inode.key);
        }
        drop(maps);
        // The fd is no use to a forgotten inode; a user still holding the inode reopens it.
        let fd = inode.fd.lock().take();
        drop(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::FromRawFd;

    fn open_path(p: &std::path::Path) -> OwnedFd {
        let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string; the returned fd is checked and owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW) };
        assert!(fd >= 0);
        // SAFETY: fd is a new fd we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn fstat(fd: BorrowedFd<'_>) -> libc::stat {
        // SAFETY: zeroed stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is valid, st is writable.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st
    }

    #[test]
    fn same_file_same_node_and_forget_drops_it() {
        let scratch = crate::testdir::TempDir::new("inode");
        let dir = scratch.path();
        std::fs::write(dir.join("a"), b"x").unwrap();
        std::fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
        let root = open_path(dir);
        let st = fstat(root.as_fd());
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let h = FileHandle::of_fd(root.as_fd()).unwrap();
        let t = InodeTable::new(root, key, h);
        let fa = open_path(&dir.join("a"));
        let sa = fstat(fa.as_fd());
        let a = t.remember(fa, &sa).unwrap();
        let fb = open_path(&dir.join("b"));
        let sb = fstat(fb.as_fd());
        let b = t.remember(fb, &sb).unwrap();
        assert_eq!(a.nodeid, b.nodeid, "hard links share one node");
        assert!(t.path_fd(&a).is_ok());
        t.forget(a.nodeid, 1);
        assert!(t.get(a.nodeid).is_some(), "one reference left");
        t.forget(a.nodeid, 1);
        assert!(t.get(a.nodeid).is_none());
    }

    /// Fds of this process open on a path under `dir`: what the cache really holds.
    fn open_fds_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.starts_with(dir)))
            .count()
    }

    /// A table over `dir` whose cache holds `cap` fds.
    fn table_over(dir: &std::path::Path, cap: usize) -> InodeTable {
        // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd.
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C string; the returned fd is checked and owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: fd is a new fd we own.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(root.as_fd());
        let key = FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let h = FileHandle::of_fd(root.as_fd()).unwrap();
        InodeTable::with_capacity(root, key, h, cap)
    }

    /// Makes `n` files in `files` and has the table look them all up.
    fn lookup_all(t: &InodeTable, files: &std::path::Path, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let p = files.join(i.to_string());
                if !p.exists() {
                    std::fs::write(&p, b"x").unwrap();
                }
                let fd = open_path(&p);
                let st = fstat(fd.as_fd());
                t.remember(fd, &st).unwrap().nodeid
            })
            .collect()
    }

    #[test]
    fn fd_cache_stays_bounded_through_lookups_forgets_and_reopens() {
        const CAP: usize = 16;
        const FILES: usize = 200;
        let scratch = crate::testdir::TempDir::new("fdcache");
        let files = scratch.path().join("f");
        std::fs::create_dir_all(&files).unwrap();
        let t = table_over(scratch.path(), CAP);
        let lookup_all = |t: &InodeTable| lookup_all(t, &files, FILES);
        let check = |t: &InodeTable, when: &str| {
            let held = open_fds_under(&files);
            assert!(held <= CAP, "{when}: {held} fds held for a cache of {CAP}");
            assert_eq!(t.cached_fds(), held, "{when}: the count matches the fds");
        };
        // Several rounds, as a kernel dropping its caches between scans causes: every
        // inode is forgotten, then looked up again as a new one.
        for round in 0..4 {
            let ids = lookup_all(&t);
            check(&t, &format!("round {round} after lookups"));
            // Touch every inode again: the evicted ones reopen by handle.
            for id in &ids {
                let inode = t.get(*id).unwrap();
                t.path_fd(&inode).unwrap();
            }
            check(&t, &format!("round {round} after reopens"));
            // An inode a user still holds when the kernel forgets it.
            let held_on = t.get(ids[0]).unwrap();
            for id in &ids {
                t.forget(*id, 1);
            }
            assert_eq!(t.len(), 1, "only the root is left");
            check(&t, &format!("round {round} after forgets"));
            assert!(t.path_fd(&held_on).is_ok());
            check(
                &t,
                &format!("round {round} after a reopen of a forgotten inode"),
            );
            drop(held_on);
            check(&t, &format!("round {round} after its last user let go"));
        }
        assert_eq!(t.cached_fds(), 0);
        assert!(
            t.cached.lock().len() <= 2 * CAP,
            "stale eviction entries are swept"
        );
    }

    #[test]
    fn running_out_of_fds_gives_back_the_idle_cached_ones_and_retries_once() {
        const FILES: usize = 20;
        let scratch = crate::testdir::TempDir::new("fdroom");
        let files = scratch.path().join("f");
        std::fs::create_dir_all(&files).unwrap();
        let t = table_over(scratch.path(), 64);
        let ids = lookup_all(&t, &files, FILES);
        assert_eq!(open_fds_under(&files), FILES);
        // One fd a request is using: giving it back would free nothing.
        let in_use = t.path_fd(&t.get(ids[0]).unwrap()).unwrap();
        let mut calls = 0;
        let r = t.with_fd_room(|| {
            calls += 1;
            if calls == 1 {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                Ok(open_fds_under(&files))
            }
        });
        assert_eq!(calls, 2, "retried once");
        assert_eq!(
            r.unwrap(),
            1,
            "only the fd in use is left open at the retry"
        );
        assert_eq!(t.cached_fds(), 1, "and it stays cached");
        drop(in_use);
        // Evicted inodes reopen by handle when used again.
        for id in &ids {
            t.path_fd(&t.get(*id).unwrap()).unwrap();
        }
        assert_eq!(t.cached_fds(), FILES);
        // Any other error is the open's answer, given at once.
        let mut calls = 0;
        let r: io::Result<()> = t.with_fd_room(|| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(calls, 1);
        assert_eq!(t.cached_fds(), FILES, "nothing given back");
    }
}
