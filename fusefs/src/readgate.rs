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
                // pid 0: the kernel's own requests (page writebacks of the writeback cache,
                // sent without a caller), which an fsync makes on behalf of its program.
                if pid == st.syncer || pid == 0 {
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
mod tests {
    //! The gate driven by a stand-in for fuser's worker loop: threads that "read" requests
    //! from a shared queue (as they would from /dev/fuse) and pass each through the gate.

    use super::*;
    use std::collections::{HashSet, VecDeque};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread::{self, ThreadId};
    use std::time::{Duration, Instant};

    /// What a queued request does while its thread serves it.
    enum Work {
        /// Returns at once; tells the test which thread served it.
        Note(mpsc::Sender<ThreadId>),
        /// Holds its thread until the flag is set, like an fsync waiting for the disk.
        Hold(Arc<AtomicBool>),
    }

    struct Request {
        kind: Kind,
        pid: u32,
        work: Work,
    }

    #[derive(Default)]
    struct Queue {
        requests: VecDeque<Request>,
        closed: bool,
        /// Threads blocked in "read" right now.
        reading: usize,
    }

    /// The stand-in for /dev/fuse and fuser's threads.
    struct Device {
        queue: Mutex<Queue>,
        ready: Condvar,
    }

    impl Device {
        fn start(
            gate: &Arc<ReadGate>,
            threads: usize,
        ) -> (Arc<Device>, Vec<thread::JoinHandle<()>>) {
            let dev = Arc::new(Device {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
            });
            let handles = (0..threads)
                .map(|_| {
                    let dev = dev.clone();
                    let gate = gate.clone();
                    thread::spawn(move || dev.worker(&gate))
                })
                .collect();
            (dev, handles)
        }

        fn worker(&self, gate: &ReadGate) {
            loop {
                let req = {
                    let mut q = self.queue.lock();
                    q.reading += 1;
                    while q.requests.is_empty() && !q.closed {
                        self.ready.wait(&mut q);
                    }
                    q.reading -= 1;
                    match q.requests.pop_front() {
                        Some(r) => r,
                        // The connection is gone: fuser's loop returns, the thread ends.
                        None => return,
                    }
                };
                let _turn = gate.enter(req.kind, req.pid);
                match req.work {
                    Work::Note(tx) => {
                        let _ = tx.send(thread::current().id());
                    }
                    Work::Hold(flag) => {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
        }

        fn push(&self, kind: Kind, work: Work) {
            self.push_from(1, kind, work);
        }

        fn push_from(&self, pid: u32, kind: Kind, work: Work) {
            self.queue
                .lock()
                .requests
                .push_back(Request { kind, pid, work });
            self.ready.notify_one();
        }

        /// Sends one quick request and waits (bounded) for the thread that served it.
        fn serve(&self, kind: Kind) -> Option<ThreadId> {
            let (tx, rx) = mpsc::channel();
            self.push(kind, Work::Note(tx));
            rx.recv_timeout(Duration::from_secs(10)).ok()
        }

        fn reading(&self) -> usize {
            self.queue.lock().reading
        }

        fn close(&self) {
            self.queue.lock().closed = true;
            self.ready.notify_all();
        }
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Joins every worker, failing (instead of hanging) if one stays parked.
    fn join_all(handles: Vec<thread::JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel();
        let n = handles.len();
        thread::spawn(move || {
            for h in handles {
                let _ = h.join();
                let _ = tx.send(());
            }
        });
        for i in 0..n {
            assert!(
                rx.recv_timeout(Duration::from_secs(10)).is_ok(),
                "worker {i} of {n} never ended: parked in the gate after the device closed"
            );
        }
    }

    /// A write and an fdatasync, as a WAL writer sends them.
    fn cycle(dev: &Device) -> [ThreadId; 2] {
        [
            dev.serve(Kind::Other).expect("write served"),
            dev.serve(Kind::Sync).expect("fdatasync served"),
        ]
    }

    /// A gate and a device with its pool of threads.
    struct Pool {
        gate: Arc<ReadGate>,
        dev: Arc<Device>,
        handles: Vec<thread::JoinHandle<()>>,
    }

    impl Pool {
        fn start(threads: usize, window: Duration) -> Pool {
            let gate = Arc::new(ReadGate::with_window(threads, window));
            let (dev, handles) = Device::start(&gate, threads);
            Pool { gate, dev, handles }
        }

        /// Runs a write+fsync loop until one thread is left reading.
        fn converge(&self) {
            for _ in 0..20 {
                cycle(&self.dev);
            }
            eventually("one thread left reading", || self.dev.reading() == 1);
        }

        /// Closes the device and joins every thread (bounded).
        fn end(self) {
            self.dev.close();
            join_all(self.handles);
        }
    }

    #[test]
    fn a_write_fsync_loop_converges_to_one_thread_serving_both_requests() {
        let p = Pool::start(6, Duration::from_secs(1));
        p.converge();
        eventually("the others parked", || p.gate.parked() == 5);
        let mut served = HashSet::new();
        for _ in 0..100 {
            served.extend(cycle(&p.dev));
            assert!(p.dev.reading() <= 1, "{} threads reading", p.dev.reading());
        }
        assert_eq!(
            served.len(),
            1,
            "the loop was served by {} threads",
            served.len()
        );
        p.end();
    }

    #[test]
    fn without_fsyncs_every_thread_reads_and_parked_threads_return_after_the_window() {
        let p = Pool::start(4, Duration::from_millis(30));
        for _ in 0..20 {
            p.dev.serve(Kind::Other).expect("served");
        }
        assert_eq!(p.gate.parked(), 0, "nobody parks without an fsync");
        eventually("all threads reading", || p.dev.reading() == 4);
        for _ in 0..10 {
            cycle(&p.dev);
        }
        eventually("threads parked while fsyncs go on", || p.gate.parked() > 0);
        // No fsync any more: one window later every thread reads again.
        eventually("all threads back to reading", || {
            p.gate.parked() == 0 && p.dev.reading() == 4
        });
        p.end();
    }

    #[test]
    fn a_stalled_reader_holds_the_others_up_for_one_window_at_most() {
        let p = Pool::start(4, Duration::from_millis(50));
        p.converge();
        let release = Arc::new(AtomicBool::new(false));
        // The sole reader gets a request that does not return (an fsync on a stuck disk).
        p.dev.push(Kind::Sync, Work::Hold(release.clone()));
        let other = p.dev.serve(Kind::Other);
        let still_held = !release.load(Ordering::SeqCst);
        release.store(true, Ordering::SeqCst);
        assert!(other.is_some(), "a stalled reader blocked the next request");
        assert!(still_held, "served only after the stall ended");
        p.end();
    }

    #[test]
    fn parked_threads_end_when_the_device_closes() {
        let p = Pool::start(8, Duration::from_millis(500));
        p.converge();
        eventually("the others parked", || p.gate.parked() == 7);
        let gate = p.gate.clone();
        p.end();
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn another_caller_ends_the_turn_taking_at_once() {
        let p = Pool::start(4, Duration::from_secs(5));
        p.converge();
        // A second program: the parked threads go back to reading long before the window ends.
        let (tx, rx) = mpsc::channel();
        p.dev.push_from(2, Kind::Other, Work::Note(tx));
        rx.recv_timeout(Duration::from_secs(10)).expect("served");
        eventually("all threads reading again", || {
            p.gate.parked() == 0 && p.dev.reading() == 4
        });
        p.end();
    }

    /// `solo` marks the requests of one program fsyncing alone: what a thread may be pinned for.
    #[test]
    fn solo_marks_one_program_fsyncing_alone() {
        let window = Duration::from_millis(300);
        // One thread: leaving never parks, so the test thread can walk through it.
        let gate = ReadGate::with_window(1, window);
        let solo = |kind, pid| gate.enter(kind, pid).solo();
        assert!(!solo(Kind::Other, 7), "no fsync yet");
        assert!(solo(Kind::Sync, 7), "an fsync starts a stretch");
        assert!(
            solo(Kind::Other, 7),
            "its program's next request is part of it"
        );
        assert!(solo(Kind::Sync, 7));
        assert!(!solo(Kind::Other, 8), "another caller ends it");
        assert!(!solo(Kind::Other, 7), "for a window after the other caller");
        assert!(!solo(Kind::Sync, 7), "even for the program's fsyncs");
        thread::sleep(window + Duration::from_millis(50));
        assert!(!solo(Kind::Other, 7), "the stretch ended with the window");
        assert!(solo(Kind::Sync, 7), "a new fsync starts a new one");
        assert!(solo(Kind::Other, 7));
    }
}
