//! `-o passthrough=ro`: which io mode each open handle of an inode gets from the kernel, and
//! the one backing id per inode that kernel read passthrough needs.
//!
//! The kernel (fs/fuse/iomode.c) keeps one counter per inode: positive while handles are
//! open in cached mode (the daemon serves their reads and writes), negative while handles
//! are open in passthrough mode (reads go straight to the backing file).  An open whose mode
//! conflicts fails with EIO: a cached open of an inode in passthrough mode, a passthrough
//! open of an inode in cached mode (ETXTBSY inside the kernel), and a passthrough open with
//! another backing file than the inode's (EBUSY).  So the daemon decides per inode, in one
//! step with its own count of the handles it has handed out:
//!
//! - an open for reading only gets passthrough when no cached handle of the inode is open;
//! - an open for writing gets a cached handle when no passthrough handle is open, else
//!   passthrough with direct io: the kernel then sends its reads and writes to the daemon
//!   (writes are journalled as always) and only maps it (mmap) on the backing file.
//!
//! The kernel drops its count when a file is closed, before RELEASE reaches the daemon, so
//! the daemon's counts only ever include more handles than the kernel's, never fewer: a
//! handle is counted before the open is answered and uncounted when its RELEASE arrives.
//! Counting too many cached handles only costs a reader passthrough; counting too many
//! passthrough handles only makes a writer use direct io.  The backing id (its drop closes
//! it in the kernel) lives while the daemon counts a passthrough handle of the inode, so the
//! kernel, which keeps its own reference to the backing file while its count is negative,
//! never meets two backing files for one inode.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// How one open is to be answered.
#[derive(Debug)]
pub enum Grant<B> {
    /// A plain open: the daemon serves reads and writes through the kernel's page cache.
    Cached,
    /// Kernel read passthrough to the backing file registered as `B`.
    Passthrough(Arc<B>),
    /// Passthrough with direct io: reads and writes reach the daemon, mmap maps the
    /// backing file (the inode is in passthrough mode because of other handles).
    Direct(Arc<B>),
}

#[derive(Debug)]
struct InodeModes<B> {
    cached: usize,
    uncached: usize,
    backing: Option<Arc<B>>,
}

impl<B> Default for InodeModes<B> {
    fn default() -> Self {
        InodeModes {
            cached: 0,
            uncached: 0,
            backing: None,
        }
    }
}

#[derive(Debug)]
struct State<B> {
    inodes: HashMap<u64, InodeModes<B>>,
    /// Handle -> (inode, counted as passthrough).
    handles: HashMap<u64, (u64, bool)>,
}

/// The io modes of every open handle, by inode.  `B` is the kernel's backing id
/// (`fuser::BackingId`); tests use any type.
#[derive(Debug)]
pub struct IoModes<B> {
    state: Mutex<State<B>>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            state: Mutex::new(State {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
        }
    }
}

impl<B> IoModes<B> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides how to answer the open of handle `fh` of inode `ino` and counts the handle.
    /// `read_only`: opened for reading only, without truncation.  `may_passthrough`: a
    /// reader may be given passthrough now (false while read faults are armed).
    /// `register` makes the inode's backing id; it is called (under the lock) only when the
    /// inode has none, and if it fails the reader gets a cached handle.
    pub fn open<E>(
        &self,
        ino: u64,
        fh: u64,
        read_only: bool,
        may_passthrough: bool,
        register: impl FnOnce() -> Result<B, E>,
    ) -> (Grant<B>, Option<E>) {
        let mut st = self.state.lock();
        let m = st.inodes.entry(ino).or_default();
        let mut failed = None;
        // The inode holds a backing id exactly while passthrough handles of it are counted.
        let grant = match m.backing.clone() {
            // The kernel accepts only passthrough opens of the inode now.
            Some(b) if read_only && may_passthrough => Grant::Passthrough(b),
            Some(b) => Grant::Direct(b),
            None if read_only && may_passthrough && m.cached == 0 => match register() {
                Ok(b) => {
                    let b = Arc::new(b);
                    m.backing = Some(b.clone());
                    Grant::Passthrough(b)
                }
                Err(e) => {
                    failed = Some(e);
                    Grant::Cached
                }
            },
            None => Grant::Cached,
        };
        let uncached = !matches!(grant, Grant::Cached);
        if uncached {
            m.uncached += 1;
        } else {
            m.cached += 1;
        }
        st.handles.insert(fh, (ino, uncached));
        (grant, failed)
    }

    /// RELEASE of `fh` arrived: the kernel no longer counts it.  Drops the inode's backing
    /// id with its last passthrough handle.  Unknown handles (directories, handles opened
    /// with passthrough off) are ignored.
    pub fn release(&self, fh: u64) {
        let mut st = self.state.lock();
        let Some((ino, uncached)) = st.handles.remove(&fh) else {
            return;
        };
        let mut dropped = None;
        if let Some(m) = st.inodes.get_mut(&ino) {
            if uncached {
                m.uncached = m.uncached.saturating_sub(1);
                if m.uncached == 0 {
                    dropped = m.backing.take();
                }
            } else {
                m.cached = m.cached.saturating_sub(1);
            }
            if m.cached == 0 && m.uncached == 0 {
                st.inodes.remove(&ino);
            }
        }
        drop(st);
        // Closing the backing id is an ioctl: done outside the lock.
        drop(dropped);
    }

    /// Handles counted, cached and passthrough, of inode `ino` (for tests and logs).
    pub fn counts(&self, ino: u64) -> (usize, usize) {
        let st = self.state.lock();
        st.inodes
            .get(&ino)
            .map_or((0, 0), |m| (m.cached, m.uncached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backing id that counts how many are alive, as the kernel's table of them would.
    struct Id(&'static AtomicUsize);
    impl Drop for Id {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn reg(live: &'static AtomicUsize) -> impl FnOnce() -> Result<Id, ()> {
        move || {
            live.fetch_add(1, Ordering::SeqCst);
            Ok(Id(live))
        }
    }

    fn kind<B>(g: &(Grant<B>, Option<()>)) -> &'static str {
        match g.0 {
            Grant::Cached => "cached",
            Grant::Passthrough(_) => "passthrough",
            Grant::Direct(_) => "direct",
        }
    }

    #[test]
    fn readers_share_one_backing_id_until_the_last_release() {
        static LIVE: AtomicUsize = AtomicUsize::new(0);
        let m = IoModes::new();
        let a = m.open(7, 1, true, true, reg(&LIVE));
        let b = m.open(7, 2, true, true, || -> Result<Id, ()> {
            panic!("a second backing id for the same inode")
        });
        assert_eq!((kind(&a), kind(&b)), ("passthrough", "passthrough"));
        match (&a.0, &b.0) {
            (Grant::Passthrough(x), Grant::Passthrough(y)) => assert!(Arc::ptr_eq(x, y)),
            _ => unreachable!(),
        }
        drop((a, b));
        assert_eq!(LIVE.load(Ordering::SeqCst), 1);
        m.release(1);
        assert_eq!(
            LIVE.load(Ordering::SeqCst),
            1,
            "handle 2 still reads through it"
        );
        m.release(2);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
        assert_eq!(m.counts(7), (0, 0));
    }

    #[test]
    fn a_writer_among_passthrough_readers_gets_direct_io_with_their_backing_id() {
        static LIVE: AtomicUsize = AtomicUsize::new(0);
        let m = IoModes::new();
        let r = m.open(7, 1, true, true, reg(&LIVE));
        let w = m.open(7, 2, false, true, reg(&LIVE));
        assert_eq!(kind(&w), "direct");
        assert_eq!(LIVE.load(Ordering::SeqCst), 1);
        drop((r, w));
        // The reader closes first: the writer still holds the inode in passthrough mode,
        // so the id stays and a new reader reuses it.
        m.release(1);
        assert_eq!(LIVE.load(Ordering::SeqCst), 1);
        let r2 = m.open(7, 3, true, true, || -> Result<Id, ()> { panic!("new id") });
        assert_eq!(kind(&r2), "passthrough");
        drop(r2);
        m.release(2);
        m.release(3);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reader_among_cached_writers_gets_a_cached_handle() {
        static LIVE: AtomicUsize = AtomicUsize::new(0);
        let m = IoModes::new();
        let w = m.open(7, 1, false, true, reg(&LIVE));
        assert_eq!(kind(&w), "cached");
        let r = m.open(7, 2, true, true, reg(&LIVE));
        assert_eq!(kind(&r), "cached");
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
        assert_eq!(m.counts(7), (2, 0));
        // Until the writer's RELEASE arrives it counts, whatever the kernel did already.
        m.release(1);
        assert_eq!(m.counts(7), (1, 0));
        m.release(2);
        let r = m.open(7, 3, true, true, reg(&LIVE));
        assert_eq!(kind(&r), "passthrough");
        // Other inodes are independent.
        let o = m.open(8, 4, false, true, reg(&LIVE));
        assert_eq!(kind(&o), "cached");
        drop((r, o));
        m.release(3);
        m.release(4);
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn no_passthrough_while_read_faults_are_armed_or_registration_fails() {
        static LIVE: AtomicUsize = AtomicUsize::new(0);
        let m = IoModes::new();
        let r = m.open(7, 1, true, false, reg(&LIVE));
        assert_eq!(kind(&r), "cached");
        m.release(1);
        let r = m.open(7, 2, true, true, || Err::<Id, ()>(()));
        assert_eq!(kind(&r), "cached");
        assert_eq!(r.1, Some(()));
        assert_eq!(m.counts(7), (1, 0));
        m.release(2);
        // Once an inode is in passthrough mode, a reader opened while faults are armed
        // must still be a passthrough open (the kernel refuses any other), so it gets
        // direct io: its reads reach the daemon and the rules.
        let r = m.open(7, 3, true, true, reg(&LIVE));
        let f = m.open(7, 4, true, false, reg(&LIVE));
        assert_eq!((kind(&r), kind(&f)), ("passthrough", "direct"));
        drop((r, f));
        m.release(3);
        m.release(4);
        m.release(4);
        m.release(99);
        assert_eq!(m.counts(7), (0, 0));
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    }
}
