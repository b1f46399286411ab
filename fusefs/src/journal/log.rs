//! The journal's on-disk log: record format, appending, replay parsing and compaction, plus
//! the in-memory mirror of its live records (what a rollback or a compaction needs).
//!
//! Format: one record per line, `CRC PAYLOAD\n`, where CRC is the crc32 of PAYLOAD as 8 hex
//! digits and PAYLOAD starts with a one-letter tag.  A line that is torn, lacks its newline or
//! fails its crc ends the replay: everything from it on is ignored.  Records of a tag this
//! version does not know are skipped, so later record kinds fit in.  (Namespace undo records
//! live in a log of their own, `namespace/`.)
//!
//! - `H 1`: header, first line of every log (format version).
//! - `F id dev ino durable_size handle`: a file entered a sync epoch; until its `S`, a rollback
//!   truncates it to durable_size.  Written before the first change of the epoch, or ahead of
//!   it, in the same write(2) as the `S` that ended the file's previous epoch (a *reserved*
//!   epoch, see [`Log::end_epoch`]), then tagged `R` instead of `F`: an `R` file found with its
//!   durable size and no pre-image was not changed since, and a replay does not report it.
//! - `P id start len undo_off`: bytes `[start, start+len)` of file `id` had, when it was last
//!   durable, the content stored at `undo_off` of `undo/<id>`.  Written after that data and
//!   before the change it protects.
//! - `S id`: file `id` is durable again; forget its `F` and `P` records.
//! - `O id size_before start end`: the next unsynced operation (write, truncate or
//!   fallocate) of file `id`, in the order they were made: the file's size just before it
//!   and the bytes it may change.  Read by `--keep prefix` only; a replay after a killed
//!   daemon ignores it.  Buffered (see [`Log::append_op`]): it may reach the file after the
//!   operation it describes, which only a live cut reads, after flushing.
//! - `B id start len undo_off`: a byte-exact pre-image, in `undo/<id>`, of unsynced bytes
//!   the next `O` of file `id` overwrites.  The undo bytes are written before the operation.
//! - `C id start end`: bytes `[start, end)` of file `id` were committed (a write-and-wait
//!   `sync_file_range` with `-o sync_file_range=stable`): their `P` pre-images in the undo
//!   file were overwritten with the content they had then, before this record, so a
//!   rollback or a replay restores that content.  Placed among the `O` records, where
//!   `--keep prefix` reads it; a replay needs only the undo data.

use crate::error::Context as _;
use crate::handle::FileHandle;
use crate::sys::open_private;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Log format version written in the header.
const VERSION: u32 = 1;
/// Below this size the log is never compacted: rewriting it would cost more than it saves.
const COMPACT_MIN: u64 = 1 << 20;
/// Op records wait in memory until this many bytes are pending (or another record is
/// written): about a thousand small writes per write(2) of the log, in bounded memory.
const PENDING_MAX: usize = 64 << 10;
/// Most files with an epoch reserved at once; the oldest reservation is retired for a new one.
pub(crate) const MAX_RESERVED: usize = 64;

/// An epoch registered in the log ahead of the file's next change (its `F` record is
/// written), so that change costs no log write and no fstat.
#[derive(Clone, Debug)]
pub(crate) struct Reserved {
    pub id: u64,
    pub durable_size: u64,
    pub handle: FileHandle,
    /// Age, for retiring the oldest reservation.
    seq: u64,
}

/// One pre-image: bytes `[start, start+len)` of a file, saved at `undo_off` of its undo file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub start: u64,
    pub len: u64,
    pub undo_off: u64,
}

/// One unsynced operation as the log records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpRec {
    /// File size just before the operation.
    pub size_before: u64,
    /// Bytes the operation may have changed (content, not size).
    pub start: u64,
    pub end: u64,
    /// Byte-exact pre-images of the unsynced bytes it overwrote (in the undo file).
    pub pre: Vec<Extent>,
}

/// Everything the log says about one file in its current epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveFile {
    pub handle: FileHandle,
    pub dev: u64,
    pub ino: u64,
    pub durable_size: u64,
    pub extents: Vec<Extent>,
    /// Entered by a reservation (`R`): if the file is as it was (same size, no pre-image),
    /// its epoch never started and a replay has nothing to report.
    pub reserved: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Header,
    /// `F`, or `R` when `reserved` (registered ahead of the file's next change).
    File {
        id: u64,
        dev: u64,
        ino: u64,
        durable_size: u64,
        handle: FileHandle,
        reserved: bool,
    },
    PreImage {
        id: u64,
        extent: Extent,
    },
    Durable {
        id: u64,
    },
    Op {
        id: u64,
        size_before: u64,
        start: u64,
        end: u64,
    },
    OpPre {
        id: u64,
        extent: Extent,
    },
    /// `C`: a committed range (see the module header).
    Commit {
        id: u64,
        start: u64,
        end: u64,
    },
}

/// One entry of a file's recorded order: an operation, or a range commit between two.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Logged<'a> {
    Op(&'a OpRec),
    Commit { start: u64, end: u64 },
}

impl Record {
    fn payload(&self) -> String {
        match self {
            Record::Header => format!("H {VERSION}"),
            Record::File {
                id,
                dev,
                ino,
                durable_size,
                handle,
                reserved,
            } => {
                let tag = if *reserved { "R" } else { "F" };
                format!("{tag} {id} {dev} {ino} {durable_size} {}", handle.to_text())
            }
            Record::PreImage { id, extent } => {
                format!("P {id} {} {} {}", extent.start, extent.len, extent.undo_off)
            }
            Record::Durable { id } => format!("S {id}"),
            Record::Op {
                id,
                size_before,
                start,
                end,
            } => format!("O {id} {size_before} {start} {end}"),
            Record::OpPre { id, extent } => {
                format!("B {id} {} {} {}", extent.start, extent.len, extent.undo_off)
            }
            Record::Commit { id, start, end } => format!("C {id} {start} {end}"),
        }
    }

    /// Appends the record's line (with crc and newline) to `out`.
    pub fn encode_into(&self, out: &mut String) {
        let payload = self.payload();
        let crc = crc32fast::hash(payload.as_bytes());
        out.push_str(&format!("{crc:08x} {payload}\n"));
    }

    /// Parses one payload; `Ok(None)` for a well-formed record of an unknown kind.
    fn parse(payload: &str) -> Result<Option<Record>, ()> {
        let mut it = payload.split(' ');
        let tag = it.next().ok_or(())?;
        let mut num = || -> Result<u64, ()> { it.next().ok_or(())?.parse().map_err(|_| ()) };
        let rec = match tag {
            "H" => {
                if num()? != u64::from(VERSION) {
                    return Err(());
                }
                Record::Header
            }
            "F" | "R" => {
                let id = num()?;
                let dev = num()?;
                let ino = num()?;
                let durable_size = num()?;
                let handle = FileHandle::from_text(it.next().ok_or(())?).ok_or(())?;
                Record::File {
                    id,
                    dev,
                    ino,
                    durable_size,
                    handle,
                    reserved: tag == "R",
                }
            }
            "P" => {
                let id = num()?;
                let start = num()?;
                let len = num()?;
                let undo_off = num()?;
                Record::PreImage {
                    id,
                    extent: Extent {
                        start,
                        len,
                        undo_off,
                    },
                }
            }
            "S" => Record::Durable { id: num()? },
            "O" => Record::Op {
                id: num()?,
                size_before: num()?,
                start: num()?,
                end: num()?,
            },
            "B" => Record::OpPre {
                id: num()?,
                extent: Extent {
                    start: num()?,
                    len: num()?,
                    undo_off: num()?,
                },
            },
            "C" => Record::Commit {
                id: num()?,
                start: num()?,
                end: num()?,
            },
            _ => return Ok(None),
        };
        if it.next().is_some() {
            return Err(());
        }
        Ok(Some(rec))
    }
}

/// Applies one record to the live map (replay and the in-memory mirror share this).
fn apply(live: &mut BTreeMap<u64, LiveFile>, rec: &Record) {
    match rec {
        Record::Header => {}
        Record::File {
            id,
            dev,
            ino,
            durable_size,
            handle,
            reserved,
        } => {
            live.insert(
                *id,
                LiveFile {
                    handle: handle.clone(),
                    dev: *dev,
                    ino: *ino,
                    durable_size: *durable_size,
                    extents: Vec::new(),
                    reserved: *reserved,
                },
            );
        }
        Record::PreImage { id, extent } => {
            if let Some(f) = live.get_mut(id) {
                // Sequential overwrites save contiguous pages into contiguous undo space:
                // keep them as one extent so memory grows with ranges, not pages.
                match f.extents.last_mut() {
                    Some(last)
                        if last.start + last.len == extent.start
                            && last.undo_off + last.len == extent.undo_off =>
                    {
                        last.len += extent.len;
                    }
                    _ => f.extents.push(*extent),
                }
            }
        }
        Record::Durable { id } => {
            live.remove(id);
        }
        // Operation order matters to a live cut only (read back by `Log::for_each_op`).
        Record::Op { .. } | Record::OpPre { .. } | Record::Commit { .. } => {}
    }
}

/// Parses a log's bytes into its live files.  Stops at the first torn or corrupt line.
/// Returns the live files and how many bytes were valid.
pub(crate) fn parse_log(bytes: &[u8]) -> (BTreeMap<u64, LiveFile>, usize) {
    let mut live = BTreeMap::new();
    let mut pos = 0;
    let mut first = true;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            tracing::warn!(offset = pos, "journal: ignoring torn tail record");
            break;
        };
        let line = &bytes[pos..pos + nl];
        let Some(rec) = parse_line(line) else {
            tracing::warn!(
                offset = pos,
                "journal: ignoring corrupt record and everything after it"
            );
            break;
        };
        match rec {
            Some(Record::Header) => {}
            Some(_) if first => {
                tracing::warn!("journal: log lacks its header, ignoring it");
                break;
            }
            Some(r) => apply(&mut live, &r),
            None => tracing::warn!(offset = pos, "journal: skipping record of unknown kind"),
        }
        first = false;
        pos += nl + 1;
    }
    (live, pos)
}

/// Appends `payload` as one record line (crc, space, payload, newline) to `out`.
fn push_line(out: &mut String, payload: &str) {
    let crc = crc32fast::hash(payload.as_bytes());
    let _ = writeln!(out, "{crc:08x} {payload}");
}

/// `None` when the line is corrupt; `Some(None)` for a valid record of unknown kind.
fn parse_line(line: &[u8]) -> Option<Option<Record>> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, payload) = line.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(payload.as_bytes()) {
        return None;
    }
    Record::parse(payload).ok()
}

/// The open log plus the mirror of its live records.
pub(crate) struct Log {
    path: PathBuf,
    file: File,
    /// Bytes of valid records in the file; the next record goes here.
    len: u64,
    live: BTreeMap<u64, LiveFile>,
    /// Compact once `len` exceeds this.
    compact_at: u64,
    /// Reused encode buffer, so appends do not allocate once warmed up.
    buf: String,
    /// Op records not yet written (at most about [`PENDING_MAX`] bytes).
    pending: String,
    /// Reused payload buffer for op records.
    scratch: String,
    /// Set when op records were dropped (a failed write of the log): `--keep prefix` cannot
    /// be trusted until the next reset.
    ops_lost: bool,
    /// Reserved epochs by (dev, ino); each one's `F` record is live in the log.
    reserved: HashMap<(u64, u64), Reserved>,
    reserve_seq: u64,
}

fn open_log(path: &Path) -> io::Result<File> {
    open_private(path, "journal log")
}

impl Log {
    /// Opens (creating) the log at `path` and returns it with what its valid records say.
    /// The log is left as found; call [`Log::reset`] once the old records are dealt with.
    pub fn open(path: &Path) -> io::Result<(Log, BTreeMap<u64, LiveFile>)> {
        let file = open_log(path)?;
        let bytes = std::fs::read(path).ctx_path("reading journal log", path)?;
        let (live, valid) = parse_log(&bytes);
        Ok((Log::with_file(path, file, valid as u64), live))
    }

    /// The log over `file`, whose first `len` bytes are valid records.
    fn with_file(path: &Path, file: File, len: u64) -> Log {
        Log {
            path: path.to_path_buf(),
            file,
            len,
            live: BTreeMap::new(),
            compact_at: COMPACT_MIN,
            buf: String::new(),
            pending: String::new(),
            scratch: String::new(),
            ops_lost: false,
            reserved: HashMap::new(),
            reserve_seq: 0,
        }
    }

    /// Empties the log: every file is durable.
    pub fn reset(&mut self) -> io::Result<()> {
        self.file
            .set_len(0)
            .ctx_path("truncating journal log", &self.path)?;
        self.len = 0;
        self.live.clear();
        self.compact_at = COMPACT_MIN;
        self.pending.clear();
        self.ops_lost = false;
        self.reserved.clear();
        Ok(())
    }

    /// Writes one record (with one write(2)) and mirrors it.  On failure the log is cut back
    /// so that a torn record never hides the ones written after it.
    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        self.append_all(std::slice::from_ref(rec))
    }

    /// Writes records in one write(2), in order, and mirrors them.
    fn append_all(&mut self, recs: &[Record]) -> io::Result<()> {
        self.buf.clear();
        if self.len == 0 {
            Record::Header.encode_into(&mut self.buf);
        }
        // Pending op records go first, in the same write(2): they happened before.
        self.buf.push_str(&self.pending);
        for rec in recs {
            rec.encode_into(&mut self.buf);
        }
        let written = self.file.write_all_at(self.buf.as_bytes(), self.len);
        if let Err(e) = written.ctx_path("writing journal log", &self.path) {
            // Best effort: if even this fails the crc still rejects the torn record.
            let _ = self.file.set_len(self.len);
            return Err(e.into());
        }
        self.len += self.buf.len() as u64;
        self.pending.clear();
        for rec in recs {
            apply(&mut self.live, rec);
        }
        Ok(())
    }

    /// Ends epoch `id` of file (dev, ino) (its `S` record) and, with `next`, reserves the
    /// file's next epoch in the same write(2): a program that writes and fsyncs in a loop
    /// then costs one log write per cycle instead of two and an fstat.  Makes room by
    /// retiring the oldest reservation when [`MAX_RESERVED`] are held.
    pub fn end_epoch(
        &mut self,
        id: u64,
        dev: u64,
        ino: u64,
        next: Option<(u64, u64, FileHandle)>,
    ) -> io::Result<()> {
        let key = (dev, ino);
        let mut recs = vec![Record::Durable { id }];
        let mut retire = Vec::new();
        // Never two epochs of one file live: a stale reservation goes first.
        if let Some(old) = self.reserved.get(&key) {
            recs.push(Record::Durable { id: old.id });
            retire.push(key);
        }
        if next.is_some() && self.reserved.len() - retire.len() >= MAX_RESERVED {
            if let Some((&k, old)) = self
                .reserved
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, r)| r.seq)
            {
                recs.push(Record::Durable { id: old.id });
                retire.push(k);
            }
        }
        if let Some((next_id, durable_size, handle)) = &next {
            recs.push(Record::File {
                id: *next_id,
                dev,
                ino,
                durable_size: *durable_size,
                handle: handle.clone(),
                reserved: true,
            });
        }
        self.append_all(&recs)?;
        for k in retire {
            self.reserved.remove(&k);
        }
        if let Some((id, durable_size, handle)) = next {
            self.reserve_seq += 1;
            self.reserved.insert(
                key,
                Reserved {
                    id,
                    durable_size,
                    handle,
                    seq: self.reserve_seq,
                },
            );
        }
        Ok(())
    }

    /// Takes the epoch reserved for file (dev, ino), if any.  The caller starts it, or
    /// retires it with an `S` record when it belongs to another file (a reused inode).
    pub fn take_reserved(&mut self, dev: u64, ino: u64) -> Option<Reserved> {
        if self.reserved.is_empty() {
            return None;
        }
        self.reserved.remove(&(dev, ino))
    }

    /// Reserved epochs held (for tests).
    #[cfg(test)]
    pub fn reserved_count(&self) -> usize {
        self.reserved.len()
    }

    /// Records one unsynced operation of file `id` (its `B` pre-images, then its `O`) in the
    /// pending buffer; writes the buffer out only once it is full, so the common small write
    /// costs no syscall here.  No allocation once the buffers are warm.
    pub fn append_op(&mut self, id: u64, op: &OpRec) -> io::Result<()> {
        for x in &op.pre {
            self.scratch.clear();
            let _ = write!(self.scratch, "B {id} {} {} {}", x.start, x.len, x.undo_off);
            push_line(&mut self.pending, &self.scratch);
        }
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "O {id} {} {} {}",
            op.size_before, op.start, op.end
        );
        push_line(&mut self.pending, &self.scratch);
        if self.pending.len() >= PENDING_MAX {
            self.flush_ops()?;
        }
        Ok(())
    }

    /// Writes the pending op records out.  On failure they are dropped (memory stays
    /// bounded) and the log remembers that its op order is incomplete.
    pub fn flush_ops(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        if self.len == 0 {
            Record::Header.encode_into(&mut self.buf);
        }
        self.buf.push_str(&self.pending);
        self.pending.clear();
        let written = self.file.write_all_at(self.buf.as_bytes(), self.len);
        if let Err(e) = written.ctx_path("writing journal log", &self.path) {
            let _ = self.file.set_len(self.len);
            self.ops_lost = true;
            return Err(e.into());
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    /// Bytes of op records waiting in memory.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether some op records were dropped since the last reset.
    pub fn ops_lost(&self) -> bool {
        self.ops_lost
    }

    /// Calls `f` with every recorded operation of the files `ids`, in order, streamed from
    /// the log (pending ones flushed first): only one operation's pre-images per file are
    /// held at a time.
    pub fn for_each_op(
        &mut self,
        ids: &HashSet<u64>,
        mut f: impl FnMut(u64, Logged<'_>),
    ) -> io::Result<()> {
        self.flush_ops()?;
        let mut pre: HashMap<u64, Vec<Extent>> = HashMap::new();
        self.for_each_valid_line(|rec, _| match rec {
            Record::OpPre { id, extent } if ids.contains(&id) => {
                pre.entry(id).or_default().push(extent)
            }
            Record::Op {
                id,
                size_before,
                start,
                end,
            } if ids.contains(&id) => f(
                id,
                Logged::Op(&OpRec {
                    size_before,
                    start,
                    end,
                    pre: pre.remove(&id).unwrap_or_default(),
                }),
            ),
            Record::Commit { id, start, end } if ids.contains(&id) => {
                f(id, Logged::Commit { start, end })
            }
            _ => {}
        })
    }

    /// Calls `f` with every valid record of the log file (up to `len`) and its line.
    fn for_each_valid_line(&self, mut f: impl FnMut(Record, &[u8])) -> io::Result<()> {
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        let mut reader = BufReader::new(file.take(self.len));
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            if let Some(Some(rec)) = parse_line(body) {
                f(rec, &line);
            }
        }
    }

    pub fn live(&self) -> &BTreeMap<u64, LiveFile> {
        &self.live
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Rewrites the log with only its live records once it has grown past its threshold,
    /// so a long run with many fsyncs does not grow it without bound.  The temp file is
    /// renamed over the log: a daemon killed midway leaves either the old or the new log,
    /// both complete.
    pub fn maybe_compact(&mut self) -> io::Result<()> {
        // Only once the log is large: a log whose records are all retired replays to
        // nothing, and truncating it on every fsync puts a metadata change of the journal
        // into the same ext4 commit each fdatasync of the data must wait for.
        if self.len <= self.compact_at {
            return Ok(());
        }
        if self.live.is_empty() {
            return self.reset();
        }
        self.flush_ops()?;
        let mut text = String::new();
        Record::Header.encode_into(&mut text);
        for (&id, f) in &self.live {
            Record::File {
                id,
                dev: f.dev,
                ino: f.ino,
                durable_size: f.durable_size,
                handle: f.handle.clone(),
                reserved: f.reserved,
            }
            .encode_into(&mut text);
            for extent in &f.extents {
                Record::PreImage {
                    id,
                    extent: *extent,
                }
                .encode_into(&mut text);
            }
        }
        let tmp = self.path.with_extension("tmp");
        let write_tmp = || -> io::Result<u64> {
            // Private like the log it replaces (the daemon runs with umask 0).
            let f = open_private(&tmp, "compacted journal")?;
            f.set_len(0)?;
            let mut w = BufWriter::new(f);
            w.write_all(text.as_bytes())?;
            let mut len = text.len() as u64;
            // Op records of live files follow, in their order, streamed from the old log.
            let mut err = None;
            self.for_each_valid_line(|rec, line| {
                let live = match &rec {
                    Record::Op { id, .. }
                    | Record::OpPre { id, .. }
                    | Record::Commit { id, .. } => self.live.contains_key(id),
                    _ => false,
                };
                if live && err.is_none() {
                    match w.write_all(line) {
                        Ok(()) => len += line.len() as u64,
                        Err(e) => err = Some(e),
                    }
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            w.flush()?;
            Ok(len)
        };
        let new_len = write_tmp().ctx_path("writing compacted journal", &tmp)?;
        crate::pause::point("compact-before-rename");
        std::fs::rename(&tmp, &self.path)
            .with_ctx(|| format!("renaming {} over {}", tmp.display(), self.path.display()))?;
        crate::pause::point("compact-after-rename");
        self.file = open_log(&self.path)?;
        self.len = new_len;
        self.compact_at = COMPACT_MIN.max(self.len * 2);
        tracing::debug!(bytes = self.len, "journal: compacted log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{errno_of, FsError};

    fn handle() -> FileHandle {
        FileHandle {
            handle_type: 1,
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    fn encode(recs: &[Record]) -> String {
        let mut s = String::new();
        for r in recs {
            r.encode_into(&mut s);
        }
        s
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Header,
            Record::File {
                id: 1,
                dev: 2,
                ino: 3,
                durable_size: 10_000,
                handle: handle(),
                reserved: false,
            },
            Record::PreImage {
                id: 1,
                extent: Extent {
                    start: 0,
                    len: 4096,
                    undo_off: 0,
                },
            },
            Record::PreImage {
                id: 1,
                extent: Extent {
                    start: 4096,
                    len: 4096,
                    undo_off: 4096,
                },
            },
            Record::File {
                id: 2,
                dev: 2,
                ino: 4,
                durable_size: 5,
                handle: handle(),
                reserved: false,
            },
            Record::Durable { id: 2 },
        ]
    }

    #[test]
    fn roundtrip_merges_contiguous_extents_and_drops_durable_files() {
        let text = encode(&sample());
        let (live, valid) = parse_log(text.as_bytes());
        assert_eq!(valid, text.len());
        assert_eq!(live.len(), 1);
        let f = &live[&1];
        assert_eq!(f.durable_size, 10_000);
        assert_eq!(
            f.extents,
            vec![Extent {
                start: 0,
                len: 8192,
                undo_off: 0
            }]
        );
    }

    #[test]
    fn torn_and_corrupt_tails_are_ignored() {
        let text = encode(&sample()[..3]);
        let full = parse_log(text.as_bytes()).0;
        // Torn: the last line loses its end.
        let torn = &text.as_bytes()[..text.len() - 5];
        let (live, valid) = parse_log(torn);
        assert_eq!(live[&1].extents, vec![]);
        assert!(valid < torn.len());
        // Corrupt: one flipped digit in the last record, then a valid record after it.
        let mut bad = text.clone().into_bytes();
        let n = bad.len();
        bad[n - 2] = if bad[n - 2] == b'0' { b'1' } else { b'0' };
        bad.extend_from_slice(encode(&[Record::Durable { id: 1 }]).as_bytes());
        let (live, _) = parse_log(&bad);
        assert_eq!(
            live[&1].extents,
            vec![],
            "corrupt record and what follows ignored"
        );
        assert_ne!(full[&1].extents, live[&1].extents);
    }

    /// A full state dir: /dev/full fails every write with ENOSPC.  The error the journal
    /// hands up keeps that errno (a program must see ENOSPC, not EIO) and names the log.
    #[test]
    fn a_failed_log_write_keeps_the_os_errno() {
        let path = Path::new("/dev/full");
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let mut log = Log::with_file(path, file, 0);
        let e = log.append(&Record::Durable { id: 1 }).unwrap_err();
        assert_eq!(errno_of(&e), libc::ENOSPC, "{e}");
        let e = FsError::from(e);
        assert_eq!(e.errno, libc::ENOSPC);
        assert!(
            e.to_string().contains("writing journal log /dev/full"),
            "{e}"
        );
        // Op records wait in memory; writing them out meets the same full disk.
        let op = OpRec {
            size_before: 0,
            start: 0,
            end: 100,
            pre: Vec::new(),
        };
        log.append_op(1, &op).unwrap();
        let e = log.flush_ops().unwrap_err();
        assert_eq!(errno_of(&e), libc::ENOSPC, "{e}");
        assert!(log.ops_lost());
        assert_eq!(log.len(), 0, "a failed write must not count as written");
    }

    #[test]
    fn unknown_kinds_are_skipped_and_headerless_logs_ignored() {
        let mut text = encode(&sample()[..2]);
        let payload = "N future record";
        text.push_str(&format!(
            "{:08x} {payload}\n",
            crc32fast::hash(payload.as_bytes())
        ));
        text.push_str(&encode(&[Record::Durable { id: 1 }]));
        let (live, valid) = parse_log(text.as_bytes());
        assert!(live.is_empty());
        assert_eq!(valid, text.len());
        let headerless = encode(&sample()[1..2]);
        assert!(parse_log(headerless.as_bytes()).0.is_empty());
    }
}
