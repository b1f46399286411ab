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
    fn start(gate: &Arc<ReadGate>, threads: usize) -> (Arc<Device>, Vec<thread::JoinHandle<()>>) {
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
