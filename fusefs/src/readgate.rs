//! How many FUSE worker threads wait in `read(/dev/fuse)`, right after an fsync.
//!
//! With several threads blocked in `read`, the kernel hands each request to the thread that
//! has waited longest.  A program that writes and fdatasyncs in a loop then meets a cold
//! thread for every request: the one that waited through the whole fdatasync, its CPU long
//! asleep.  That cost lossfs 15-20 % on the `wal` benchmark against single-threaded bindfs.
//! With a single thread reading, the thread that served the fdatasync also receives the next
//! write, warm.  But a single reader halves rapid small requests without fsync (1 KiB
//! appends, 4 KiB random writes: many waiting readers let the kernel place the next one on
//! the program's CPU), and one slow request would stall all others.
//!
//! So the turn-taking only applies while one program is fsyncing alone: for [`SYNC_WINDOW`]
//! after an fsync-like request ends, a thread that finishes a request goes back to `read`
//! only if no other thread is there; otherwise it parks.  A serial write+fsync program thus
//! converges to one thread serving both of its requests.  A request from any other caller
//! (another program, another thread, the kernel's writeback) within the window ends it at
//! once: concurrent fsyncs must stay concurrent (the filesystem batches them into one
//! journal commit), and nobody else should queue behind one program's fsyncs.  When the window passes without another
//! fsync ending, every parked thread goes back to `read`: a request that stalls the sole
//! reader (an fsync on a slow disk, a read from a cold one, a request frozen by a power cut)
//! holds up the others for one window at most, and after the last fsync of a burst the mount
//! is back to every thread reading.  One parked thread (the watcher) sleeps until the window
//! ends; the others sleep until it wakes them.
//!
//! The same stretch of one program fsyncing alone is what [`Turn::solo`] reports, for
//! [`crate::cpupin`] to run its requests on the disk's completion CPU.
//!
//! No bookkeeping per thread: the threads reading are the pool minus those serving a request
//! through the gate and those parked (fuser starts them all in `read`, and a request fuser
//! answers itself leaves its thread counted as reading).

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long after an fsync-like request ended only one thread reads.  Longer than one
/// write+fdatasync cycle on a disk (about 0.3 ms here), short enough to bound a stall.
pub const SYNC_WINDOW: Duration = Duration::from_millis(2);

/// What a request is, as far as taking turns goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// fsync, fdatasync, fsyncdir: the program waited for the disk and usually sends its
    /// next request at once.
    Sync,
    Other,
}

#[derive(Default)]
struct State {
    /// Size of the pool.
    threads: usize,
    /// Requests being served through the gate.
    running: usize,
    /// Threads parked here (the watcher included).
    parked: usize,
    /// A parked thread sleeps until the window ends.
    watcher: bool,
    /// When the last fsync-like request ended, and whose it was (FUSE's pid: the
    /// calling thread).
    sync_ended: Option<Instant>,
    syncer: u32,
    /// Another caller was seen in the window: no turn-taking until then.
    mixed_until: Option<Instant>,
}

impl State {
    /// Whether threads take turns at `now`.
    fn in_window(&self, now: Instant, window: Duration) -> bool {
        self.sync_ended.is_some_and(|t| now < t + window)
            && self.mixed_until.is_none_or(|t| now >= t)
    }

    /// Threads in `read`, counting one that has just left a request as reading.
    fn reading(&self) -> usize {
        self.threads.saturating_sub(self.running + self.parked)
    }
}

/// The turn-taking of one mount's FUSE threads.
pub struct ReadGate {
    state: Mutex<State>,
    followers: Condvar,
    window: Duration,
}

/// One request's pass through the gate; dropping it (after the reply is sent) decides
/// whether this thread reads next or parks.
pub struct Turn<'a> {
    gate: &'a ReadGate,
    kind: Kind,
    pid: u32,
    solo: bool,
}

impl ReadGate {
    /// The gate of a pool of `threads` threads, all of them reading at first.
    pub fn new(threads: usize) -> Self {
        Self::with_window(threads, SYNC_WINDOW)
    }

    pub fn with_window(threads: usize, window: Duration) -> Self {
        ReadGate {
            state: Mutex::new(State {
                threads,
                ..State::default()
            }),
            followers: Condvar::new(),
            window,
        }
    }

    /// Called by a FUSE thread when a request of caller `pid` arrives, before serving it.
    pub fn enter(&self, kind: Kind, pid: u32) -> Turn<'_> {
        let mut st = self.state.lock();
        st.running += 1;
        // An fsync starts a stretch of one program fsyncing alone, until shown otherwise.
        let mut solo = kind == Kind::Sync;
        if st.sync_ended.is_some() {
            let now = Instant::now();
            if st.in_window(now, self.window) {
                if pid == st.syncer {
                    solo = true;
                } else {
                    st.mixed_until = Some(now + self.window);
                    if st.parked > 0 {
                        self.followers.notify_all();
                    }
                }
            }
            if st.mixed_until.is_some_and(|t| now < t) {
                solo = false;
            }
        }
        Turn {
            gate: self,
            kind,
            pid,
            solo,
        }
    }

    /// Threads waiting in `read` (for tests).
    pub fn reading(&self) -> usize {
        self.state.lock().reading()
    }

    /// Threads parked (for tests).
    pub fn parked(&self) -> usize {
        self.state.lock().parked
    }

    /// After the reply: back to `read`, or park while fsyncs go on and another thread reads.
    fn leave(&self, kind: Kind, pid: u32) {
        let mut st = self.state.lock();
        st.running -= 1;
        let now = Instant::now();
        if kind == Kind::Sync {
            st.sync_ended = Some(now);
            st.syncer = pid;
        }
        let in_window = |st: &State, now: Instant| st.in_window(now, self.window);
        // `reading` counts this thread: park only if another one reads.
        if !in_window(&st, now) || st.reading() <= 1 {
            return;
        }
        st.parked += 1;
        loop {
            let now = Instant::now();
            if !in_window(&st, now) {
                break;
            }
            if st.watcher {
                self.followers.wait(&mut st);
                continue;
            }
            st.watcher = true;
            let end = st.sync_ended.map_or(now, |t| t + self.window);
            let end = st.mixed_until.map_or(end, |m| end.max(m));
            self.followers.wait_until(&mut st, end);
            st.watcher = false;
            if !in_window(&st, Instant::now()) {
                // The fsyncs are over: everybody reads again.
                self.followers.notify_all();
                break;
            }
            // Another fsync ended meanwhile: watch the new window.
        }
        st.parked -= 1;
    }
}

impl Turn<'_> {
    /// Whether this request belongs to one program fsyncing alone: an fsync, or a request
    /// of the program whose fsync just ended, with no other caller in the window.
    pub fn solo(&self) -> bool {
        self.solo
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gate.leave(self.kind, self.pid);
    }
}

#[cfg(test)]
#[path = "readgate_tests.rs"]
mod tests;
