//! Keeps the thread that serves a program fsyncing alone on one CPU: the CPU that takes the
//! backing disk's completion interrupts.
//!
//! A write+fdatasync loop spends most of each cycle waiting for the disk.  When the I/O
//! completes, the interrupt (and the filesystem's completion work) runs on one CPU and wakes
//! the FUSE thread waiting in fdatasync.  Left to itself the scheduler often wakes that
//! thread on another, idle CPU, and on a virtual machine waking an idle CPU costs tens of
//! microseconds each time (measured: `wal` loses about a quarter when the thread is kept on
//! the wrong CPU, and gains 10-25 % over no pinning on the right one; docs/BENCHMARKS.md).
//! So a thread serving a request that [`crate::readgate`] counts as one program's fsync
//! stretch ([`crate::readgate::Turn::solo`]) is pinned to the completion CPU, and it gets
//! its old mask back with the first request it serves outside such a stretch: a thread that
//! parked pinned moves back as soon as it works for anybody else.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Whether this thread is pinned now: affinity is per thread, and only a change costs a
    /// system call.
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// The pinning of one mount's FUSE threads.
pub struct CpuPin {
    cpu: usize,
    pinned: CpuSet,
    /// The mask the daemon started with (taskset, cgroup cpusets), restored on unpinning.
    home: CpuSet,
    /// Set after a failed sched_setaffinity (a CPU taken offline): stop trying.
    broken: AtomicBool,
}

impl CpuPin {
    /// Pinning to `cpu`; fails if the daemon may not run there.  Call before the FUSE
    /// threads start: they inherit the mask read here.
    pub fn new(cpu: usize) -> io::Result<CpuPin> {
        let home = sched_getaffinity(Pid::from_raw(0))?;
        if !home.is_set(cpu).unwrap_or(false) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "CPU {cpu} is not one lossfs may run on (allowed: {})",
                    cpu_list(&home)
                ),
            ));
        }
        let mut pinned = CpuSet::new();
        pinned.set(cpu)?;
        Ok(CpuPin {
            cpu,
            pinned,
            home,
            broken: AtomicBool::new(false),
        })
    }

    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Pins the calling thread (`true`) or gives it its old mask back (`false`); does
    /// nothing if it is already so.
    pub fn set(&self, pin: bool) {
        // Once broken, threads still pinned must yet be able to move back.
        if PINNED.get() == pin || (pin && self.broken.load(Ordering::Relaxed)) {
            return;
        }
        let mask = if pin { &self.pinned } else { &self.home };
        let mut result = sched_setaffinity(Pid::from_raw(0), mask);
        if result.is_err() && !pin {
            // A cpuset that shrank since the start can refuse the old mask; every CPU (of
            // which the kernel keeps the cpuset's part) still unpins.
            result = sched_setaffinity(Pid::from_raw(0), &every_cpu());
        }
        match result {
            Ok(()) => PINNED.set(pin),
            Err(e) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::warn!(cpu = self.cpu, error = %e, "cannot move the fsync thread; not pinning any more");
                }
            }
        }
    }
}

fn every_cpu() -> CpuSet {
    let mut set = CpuSet::new();
    for c in 0..CpuSet::count() {
        let _ = set.set(c);
    }
    set
}

/// A CPU mask as a list ("0,1,3"), for messages.
fn cpu_list(set: &CpuSet) -> String {
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    fn allowed() -> Vec<usize> {
        let set = current();
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    #[test]
    fn pins_the_calling_thread_and_gives_its_mask_back() {
        // A thread of its own: the test harness's threads keep their masks.
        std::thread::spawn(|| {
            let home = allowed();
            let cpu = *home.last().unwrap();
            let pin = CpuPin::new(cpu).unwrap();
            pin.set(true);
            assert_eq!(allowed(), vec![cpu]);
            // Repeated: no change, no error.
            pin.set(true);
            assert_eq!(allowed(), vec![cpu]);
            pin.set(false);
            assert_eq!(allowed(), home);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    pin.set(true);
                    assert_eq!(allowed(), vec![cpu]);
                })
                .join()
                .unwrap();
            });
            assert_eq!(allowed(), home, "only the calling thread moves");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_cpu_outside_the_mask_is_refused_with_the_allowed_list() {
        let home = allowed();
        let outside = (0..CpuSet::count()).find(|c| !home.contains(c)).unwrap();
        let e = CpuPin::new(outside).err().expect("must be refused");
        let msg = e.to_string();
        assert!(msg.contains(&format!("CPU {outside}")), "{msg}");
        assert!(
            msg.contains(
                &home
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "{msg}"
        );
    }
}
