//! lossfs: a FUSE passthrough filesystem that remembers every change not yet made durable
//! by fsync, and on a power cut throws exactly those changes away.
//!
//! Layers, bottom up: [`sys`] wraps the syscalls; [`handle`] names backing files and [`filekey`] identifies them; [`rangeset`] and [`journal`] keep the
//! durability state and the on-disk undo journal ([`keep`] and [`prng`] decide what a partial
//! power cut keeps, [`writeback`] makes old data durable on its own); [`namespace`] undoes
//! uncommitted name changes; [`inode`] maps FUSE inodes to backing files ([`iomode`]: which open handles the kernel reads
//! through to them); [`fs`] holds every
//! operation's semantics; [`faults`] injects crash points, errors and delays ([`faultspec`]: what a user asks of it); [`fuse`] is the
//! thin `fuser` adapter ([`readgate`]: how many of its threads wait for the next request); [`control`] serves `lossctl` (and [`lazyfs`] a LazyFS-style command
//! FIFO); [`procscan`] and [`mountinfo`] find the processes and mounts a power cut acts on;
//! [`options`] reads the command line; [`pause`] holds the crash-test pause points; [`daemon`] wires it all for the `lossfs` binary, and
//! [`run`] supervises a program on the mount ([`init`]: as PID 1, it reaps orphans).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod ascaller;
pub mod bdi;
pub mod control;
pub mod cpupin;
pub mod daemon;
pub mod error;
pub mod explore;
pub mod faults;
pub mod faultspec;
pub mod filekey;
pub mod fs;
pub mod fuse;
pub mod handle;
pub mod init;
pub mod inode;
pub mod iomode;
pub mod irqcpu;
pub mod journal;
pub mod keep;
pub mod lazyfs;
mod logging;
pub mod mountinfo;
pub mod namespace;
pub mod options;
pub mod pageflush;
pub mod pause;
pub mod prng;
pub mod procscan;
pub mod rangeset;
pub mod readgate;
pub mod report;
pub mod run;
pub mod sfrtrace;
pub mod sys;
#[cfg(test)]
mod testdir;
pub mod writeback;
pub mod writebehind;
