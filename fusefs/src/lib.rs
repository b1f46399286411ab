//! lossfs: a FUSE passthrough filesystem that remembers every change not yet made durable
//! by fsync, and on a power cut throws exactly those changes away.
//!
//! Layers, bottom up: [`handle`] names backing files; [`rangeset`] and [`journal`] keep the
//! durability state and the on-disk undo journal; [`inode`] maps FUSE inodes to backing files;
//! [`fs`] holds every operation's semantics; [`fuse`] is the thin `fuser` adapter; [`control`]
//! serves `lossctl` (and [`lazyfs`] a LazyFS-style command FIFO); [`procscan`] and [`mountinfo`] find the processes and mounts a power cut
//! acts on; [`options`] reads the command line; [`pause`] holds the crash-test pause points; [`daemon`] wires it all for the `lossfs` binary, and [`run`] supervises a program on the mount.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod control;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod handle;
pub mod inode;
pub mod journal;
pub mod lazyfs;
pub mod mountinfo;
pub mod options;
pub mod pause;
pub mod procscan;
pub mod rangeset;
pub mod report;
pub mod run;
