//! The gate driven by a stand-in for fuser's worker loop: threads that "read" requests
//! from a shared queue (as they would from /dev/fuse) and pass each through the gate.

use super::*;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, ThreadId};
use std::time::Instant;

/// What a queued request does while its thread serves it.
enum Work {
    /// Returns at once; tells the test which thread served it.
    Note(mpsc::Sender<ThreadId>),
    /// Holds its thread until the flag is set, like an fsync waiting for the disk.
    Hold(Arc<AtomicBool>),
}

struct Request {
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
    fn start(gate: &ReadGate, threads: usize) -> (Arc<Device>, Vec<thread::JoinHandle<()>>) {
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
            let _turn = gate.enter();
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

    fn push(&self, work: Work) {
        self.queue.lock().requests.push_back(Request { work });
        self.ready.notify_one();
    }

    /// Sends one quick request and waits (bounded) for the thread that served it.
    fn serve(&self) -> Option<ThreadId> {
        let (tx, rx) = mpsc::channel();
        self.push(Work::Note(tx));
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

/// Serves `n` quick requests one after the other, as a serial program would.
fn warm_up(dev: &Device, n: usize) {
    for i in 0..n {
        assert!(dev.serve().is_some(), "request {i} not served");
    }
}

#[test]
fn serial_requests_meet_one_thread_and_only_one_thread_reads() {
    let gate = ReadGate::with_tick(Duration::from_millis(5));
    let (dev, handles) = Device::start(&gate, 6);
    // fuser starts every thread in read; each joins the turn-taking after its first request.
    warm_up(&dev, 12);
    eventually("one reader left", || dev.reading() == 1);
    let mut served = HashSet::new();
    for _ in 0..200 {
        served.insert(dev.serve().expect("request served"));
        assert!(dev.reading() <= 1, "{} threads reading", dev.reading());
    }
    assert_eq!(
        served.len(),
        1,
        "serial requests went to {} threads",
        served.len()
    );
    dev.close();
    join_all(handles);
}

#[test]
fn the_standby_takes_over_from_a_stalled_request() {
    let gate = ReadGate::with_tick(Duration::from_millis(2));
    let (dev, handles) = Device::start(&gate, 4);
    warm_up(&dev, 8);
    eventually("one reader left", || dev.reading() == 1);
    let release = Arc::new(AtomicBool::new(false));
    // A request that does not return (an fsync on a slow disk, an open of a FIFO).
    dev.push(Work::Hold(release.clone()));
    let other = dev.serve();
    let stalled_still = !release.load(Ordering::SeqCst);
    release.store(true, Ordering::SeqCst);
    assert!(other.is_some(), "the stalled request blocked the next one");
    assert!(stalled_still, "served only after the stall ended");
    assert!(gate.takeovers() >= 1, "no take-over was counted");
    dev.close();
    join_all(handles);
}

#[test]
fn every_thread_can_be_busy_and_the_reading_still_goes_on() {
    let gate = ReadGate::with_tick(Duration::from_millis(2));
    let (dev, handles) = Device::start(&gate, 3);
    warm_up(&dev, 6);
    let release = Arc::new(AtomicBool::new(false));
    // Two threads held: the third must still read and serve.
    dev.push(Work::Hold(release.clone()));
    dev.push(Work::Hold(release.clone()));
    assert!(dev.serve().is_some(), "the last free thread did not serve");
    release.store(true, Ordering::SeqCst);
    warm_up(&dev, 6);
    dev.close();
    join_all(handles);
}

#[test]
fn the_standby_stops_ticking_when_the_mount_is_idle_and_wakes_for_the_next_request() {
    let gate = ReadGate::with_tick(Duration::from_millis(1));
    let (dev, handles) = Device::start(&gate, 3);
    warm_up(&dev, 6);
    // After IDLE_TICKS ticks without a request the standby sleeps without a timeout.
    eventually("the standby asleep", || {
        gate.shared.state.lock().standby_asleep
    });
    let release = Arc::new(AtomicBool::new(false));
    dev.push(Work::Hold(release.clone()));
    // The sleeping standby must wake up and take over from this stalled request.
    let served = dev.serve();
    release.store(true, Ordering::SeqCst);
    assert!(served.is_some(), "the sleeping standby never took over");
    dev.close();
    join_all(handles);
}

#[test]
fn threads_parked_in_the_gate_end_when_the_device_closes() {
    let gate = ReadGate::new();
    let (dev, handles) = Device::start(&gate, 8);
    warm_up(&dev, 20);
    eventually("threads parked", || {
        let st = gate.shared.state.lock();
        st.parked + usize::from(st.standby) == 7
    });
    dev.close();
    join_all(handles);
    assert!(gate.is_closing(), "the reader's exit did not open the gate");
}

#[test]
fn a_closed_gate_lets_every_thread_read() {
    let gate = ReadGate::new();
    let (dev, handles) = Device::start(&gate, 4);
    warm_up(&dev, 8);
    gate.close();
    eventually("all threads reading", || dev.reading() == 4);
    dev.close();
    join_all(handles);
}
