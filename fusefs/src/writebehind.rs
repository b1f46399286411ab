//! `-o writebehind=N`: starts the backing disk's writeback of a file's large sequential
//! writes while the program is still writing, so that its final fsync finds little left.
//!
//! Without it the daemon's `pwrite`s only fill the backing file's page cache, and a program
//! that writes a large file and then fsyncs waits for the copy through the mount and then for
//! the whole disk write, one after the other.  Natively the disk write is all there is after
//! the copy; through lossfs the copy costs about three times as much (into the mount's cache,
//! through /dev/fuse, into the backing file's cache), so the disk write is better overlapped
//! with that copy than left until the fsync.
//!
//! The rule is stateless: a write of at least [`MIN_WRITE`] bytes that completes the chunk
//! `[k*C, (k+1)*C)` (C = the option's chunk size) asks the kernel, with
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)`, to start writing the completed chunks to the
//! disk.  It neither waits for that I/O nor reports it: nothing about durability changes (a
//! page on the disk but not fsynced is still rolled back at a power cut, as the journal
//! tracks what was made durable by fsync, not what the disk happens to hold).  Small WRITE
//! requests (write-through: random 4 KiB overwrites, 1 KiB appends, a WAL's records) never
//! trigger it; with the writeback cache the requests are the kernel's page writebacks, up
//! to 1 MiB for any stream of appends, so those streams trigger it too.
//!
//! Whether it pays depends on the disk and on the program: on this project's virtio disk,
//! where the backing fsync of 1 GiB takes about as long as copying it through the mount, a
//! 1 GiB write+fsync ran 15-30 % faster; a program that streams data and never fsyncs it
//! (1 KiB appends with the writeback cache) lost about 13 %, paying for disk writes it
//! would otherwise leave to the kernel's flusher, and on a disk much slower than the copy
//! the overlap saves little.  Hence an option, off by default (docs/BENCHMARKS.md).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Writes smaller than this never start a write-behind: they are not a large sequential
/// stream (the kernel sends a cached file's writeback in requests of up to 1 MiB, and
/// write-through programs streaming data use large writes too).
pub const MIN_WRITE: u64 = 128 << 10;

/// The write-behind policy of a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteBehind {
    chunk: u64,
}

impl WriteBehind {
    /// Write-behind in chunks of `chunk` bytes (at least [`MIN_WRITE`]).
    pub fn new(chunk: u64) -> WriteBehind {
        WriteBehind {
            chunk: chunk.max(MIN_WRITE),
        }
    }

    /// The byte range whose disk writeback a write of `[off, off+len)` should start: the
    /// chunks this write completes, or `None`.
    pub fn range(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        if len < MIN_WRITE {
            return None;
        }
        let c = self.chunk;
        let end = off.saturating_add(len);
        // The first chunk boundary after `off`; the write completes the chunk before it
        // when it reaches that boundary.
        let first = (off / c + 1).checked_mul(c)?;
        if end < first {
            return None;
        }
        let start = first - c;
        let stop = end / c * c;
        Some((start, stop - start))
    }

    /// Call after writing `[off, off+len)` of `file` (no lock held): starts the disk
    /// writeback of the chunks the write completed.  Errors are the caller's to log; the
    /// write itself has succeeded either way.
    pub fn after_write(&self, file: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
        match self.range(off, len) {
            Some((start, n)) => start_writeback(file, start, n),
            None => Ok(()),
        }
    }
}

/// `sync_file_range(fd, start, len, SYNC_FILE_RANGE_WRITE)`: queue the range's dirty pages
/// for writeback without waiting for any of it.
fn start_writeback(file: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: plain syscall on a valid borrowed fd; no memory is passed.
    let r =
        unsafe { libc::sync_file_range(file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sequential_stream_starts_each_chunk_once() {
        let w = WriteBehind::new(8 * MIB);
        let started: Vec<_> = (0..32).filter_map(|i| w.range(i * MIB, MIB)).collect();
        assert_eq!(
            started,
            vec![
                (0, 8 * MIB),
                (8 * MIB, 8 * MIB),
                (16 * MIB, 8 * MIB),
                (24 * MIB, 8 * MIB)
            ]
        );
    }

    #[test]
    fn a_write_that_crosses_a_boundary_starts_the_chunk_it_completed() {
        let w = WriteBehind::new(8 * MIB);
        assert_eq!(w.range(7 * MIB + 512 * 1024, MIB), Some((0, 8 * MIB)));
        // Several chunks completed by one large write.
        assert_eq!(w.range(MIB, 20 * MIB), Some((0, 16 * MIB)));
        assert_eq!(w.range(MIB, 6 * MIB), None);
    }

    #[test]
    fn small_writes_never_start_writeback() {
        let w = WriteBehind::new(MIN_WRITE);
        assert_eq!(w.range(MIN_WRITE - 4096, 4096), None);
        assert_eq!(w.range(0, MIN_WRITE - 1), None);
        assert_eq!(w.range(0, MIN_WRITE), Some((0, MIN_WRITE)));
    }

    #[test]
    fn offsets_near_the_end_of_the_range_do_not_overflow() {
        let w = WriteBehind::new(8 * MIB);
        assert_eq!(w.range(u64::MAX - MIB, MIB), None);
    }

    #[test]
    fn the_chunk_is_at_least_the_minimum_write() {
        assert_eq!(
            WriteBehind::new(1).range(0, MIN_WRITE),
            Some((0, MIN_WRITE))
        );
    }
}
