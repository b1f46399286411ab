//! The namespace undo log (`state_dir/namespace`): record format, appending, parsing, and
//! the in-memory mirror of its live records.
//!
//! Same framing as the data journal's log: one record per line, `CRC PAYLOAD\n` (crc32 of
//! PAYLOAD as 8 hex digits); a torn or corrupt line ends the replay.  Names are hex-encoded
//! (a name may hold any byte but `/` and NUL).  A directory is written as `DEV:INO:HANDLE`.
//!
//! - `H 1`: header.
//! - `C seq kind DIR name`: an entry of `kind` (`f` file, `d` dir, `l` symlink, `n` node,
//!   `h` hard link) is about to be created as `name` in DIR.  Written before the change.
//! - `I seq dev ino`: the entry of creation `seq` exists and is that inode.
//! - `R seq DIR name grave dev ino`: entry `name` of DIR (inode dev:ino) was moved to
//!   `graveyard/<grave>` instead of being removed.  Written before the move.
//! - `M seq DIR name DIR name dev ino grave|- rdev rino XDEV:XINO|-`: rename of inode
//!   dev:ino from the first to the second name; `grave` holds the entry it replaced (inode
//!   rdev:rino); a last field other than `-` marks RENAME_EXCHANGE and names the inode that
//!   was at the second name.  Written before the change.
//! - `D seq`: change `seq` is settled (committed, cancelled or undone): forget it.

use crate::error::Context as _;
use crate::filekey::FileKey;
use crate::handle::FileHandle;
use crate::sys::open_private;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;
/// Rewrite the log with its live records only once it is larger than this.
const COMPACT_MIN: u64 = 1 << 20;

/// A directory as the log names it: its identity and its persistent handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirRef {
    pub key: FileKey,
    pub handle: FileHandle,
}

/// What a creation makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Node,
    HardLink,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::File => "f",
            Kind::Dir => "d",
            Kind::Symlink => "l",
            Kind::Node => "n",
            Kind::HardLink => "h",
        }
    }

    fn from_tag(s: &str) -> Option<Kind> {
        Some(match s {
            "f" => Kind::File,
            "d" => Kind::Dir,
            "l" => Kind::Symlink,
            "n" => Kind::Node,
            "h" => Kind::HardLink,
            _ => return None,
        })
    }

    /// The operation's name in reports.
    pub fn op(self) -> &'static str {
        match self {
            Kind::File => "create",
            Kind::Dir => "mkdir",
            Kind::Symlink => "symlink",
            Kind::Node => "mknod",
            Kind::HardLink => "link",
        }
    }
}

/// One namespace change not yet settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Create {
        kind: Kind,
        dir: DirRef,
        name: Vec<u8>,
        /// Known once the creation succeeded.
        made: Option<FileKey>,
    },
    Remove {
        dir: DirRef,
        name: Vec<u8>,
        grave: String,
        victim: FileKey,
    },
    Rename {
        from: DirRef,
        from_name: Vec<u8>,
        to: DirRef,
        to_name: Vec<u8>,
        moved: FileKey,
        /// Graveyard name and identity of the entry the rename replaced.
        replaced: Option<(String, FileKey)>,
        /// RENAME_EXCHANGE: the inode that was at the second name (now at the first).
        exchange: Option<FileKey>,
    },
}

impl Change {
    /// The directories whose fsync this change waits for in the posix model.
    pub fn parents(&self) -> Vec<FileKey> {
        match self {
            Change::Create { dir, .. } | Change::Remove { dir, .. } => vec![dir.key],
            Change::Rename { from, to, .. } if from.key == to.key => vec![from.key],
            Change::Rename { from, to, .. } => vec![from.key, to.key],
        }
    }

    /// The (directory, name) pairs the change touches.
    pub fn names(&self) -> Vec<(FileKey, &[u8])> {
        match self {
            Change::Create { dir, name, .. } | Change::Remove { dir, name, .. } => {
                vec![(dir.key, name.as_slice())]
            }
            Change::Rename {
                from,
                from_name,
                to,
                to_name,
                ..
            } => vec![
                (from.key, from_name.as_slice()),
                (to.key, to_name.as_slice()),
            ],
        }
    }

    /// The inodes whose entries the change makes, removes or moves.
    pub fn subjects(&self) -> Vec<FileKey> {
        match self {
            Change::Create { made, .. } => made.iter().copied().collect(),
            Change::Remove { victim, .. } => vec![*victim],
            Change::Rename {
                moved,
                replaced,
                exchange,
                ..
            } => {
                let mut v = vec![*moved];
                v.extend(replaced.iter().map(|(_, k)| *k));
                v.extend(exchange.iter().copied());
                v
            }
        }
    }

    /// The inodes the change's graveyard entries hold, one per entry.
    pub fn buried(&self) -> Vec<FileKey> {
        match self {
            Change::Create { .. } => Vec::new(),
            Change::Remove { victim, .. } => vec![*victim],
            Change::Rename { replaced, .. } => replaced.iter().map(|(_, k)| *k).collect(),
        }
    }

    /// Graveyard entries the change owns (deleted when it is committed).
    pub fn graves(&self) -> Vec<&str> {
        match self {
            Change::Create { .. } => Vec::new(),
            Change::Remove { grave, .. } => vec![grave.as_str()],
            Change::Rename { replaced, .. } => replaced.iter().map(|(g, _)| g.as_str()).collect(),
        }
    }
}

// Records only exist briefly while one is encoded or parsed: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Header,
    Change { seq: u64, change: Change },
    Identity { seq: u64, key: FileKey },
    Done { seq: u64 },
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s == "-" {
        return Some(Vec::new());
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn dir_text(d: &DirRef) -> String {
    format!("{}:{}:{}", d.key.dev, d.key.ino, d.handle.to_text())
}

fn parse_dir(s: &str) -> Option<DirRef> {
    let mut it = s.splitn(3, ':');
    let dev = it.next()?.parse().ok()?;
    let ino = it.next()?.parse().ok()?;
    let handle = FileHandle::from_text(it.next()?)?;
    Some(DirRef {
        key: FileKey { dev, ino },
        handle,
    })
}

impl Record {
    fn payload(&self) -> String {
        match self {
            Record::Header => format!("H {VERSION}"),
            Record::Identity { seq, key } => format!("I {seq} {} {}", key.dev, key.ino),
            Record::Done { seq } => format!("D {seq}"),
            Record::Change { seq, change } => match change {
                Change::Create {
                    kind, dir, name, ..
                } => format!("C {seq} {} {} {}", kind.tag(), dir_text(dir), hex(name)),
                Change::Remove {
                    dir,
                    name,
                    grave,
                    victim,
                } => format!(
                    "R {seq} {} {} {grave} {} {}",
                    dir_text(dir),
                    hex(name),
                    victim.dev,
                    victim.ino
                ),
                Change::Rename {
                    from,
                    from_name,
                    to,
                    to_name,
                    moved,
                    replaced,
                    exchange,
                } => {
                    let (g, r) = match replaced {
                        Some((g, r)) => (g.as_str(), *r),
                        None => ("-", FileKey { dev: 0, ino: 0 }),
                    };
                    format!(
                        "M {seq} {} {} {} {} {} {} {g} {} {} {}",
                        dir_text(from),
                        hex(from_name),
                        dir_text(to),
                        hex(to_name),
                        moved.dev,
                        moved.ino,
                        r.dev,
                        r.ino,
                        match exchange {
                            Some(k) => format!("{}:{}", k.dev, k.ino),
                            None => "-".into(),
                        }
                    )
                }
            },
        }
    }

    pub fn encode_into(&self, out: &mut String) {
        let payload = self.payload();
        let crc = crc32fast::hash(payload.as_bytes());
        out.push_str(&format!("{crc:08x} {payload}\n"));
    }

    fn parse(payload: &str) -> Option<Record> {
        let f: Vec<&str> = payload.split(' ').collect();
        let num = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
        let key = |i: usize| -> Option<FileKey> {
            Some(FileKey {
                dev: num(i)?,
                ino: num(i + 1)?,
            })
        };
        let (rec, n) = match *f.first()? {
            "H" => {
                if num(1)? != u64::from(VERSION) {
                    return None;
                }
                (Record::Header, 2)
            }
            "I" => (
                Record::Identity {
                    seq: num(1)?,
                    key: key(2)?,
                },
                4,
            ),
            "D" => (Record::Done { seq: num(1)? }, 2),
            "C" => (
                Record::Change {
                    seq: num(1)?,
                    change: Change::Create {
                        kind: Kind::from_tag(f.get(2)?)?,
                        dir: parse_dir(f.get(3)?)?,
                        name: unhex(f.get(4)?)?,
                        made: None,
                    },
                },
                5,
            ),
            "R" => (
                Record::Change {
                    seq: num(1)?,
                    change: Change::Remove {
                        dir: parse_dir(f.get(2)?)?,
                        name: unhex(f.get(3)?)?,
                        grave: grave_name(f.get(4)?)?,
                        victim: key(5)?,
                    },
                },
                7,
            ),
            "M" => {
                let grave = *f.get(8)?;
                let replaced = if grave == "-" {
                    None
                } else {
                    Some((grave_name(grave)?, key(9)?))
                };
                (
                    Record::Change {
                        seq: num(1)?,
                        change: Change::Rename {
                            from: parse_dir(f.get(2)?)?,
                            from_name: unhex(f.get(3)?)?,
                            to: parse_dir(f.get(4)?)?,
                            to_name: unhex(f.get(5)?)?,
                            moved: key(6)?,
                            replaced,
                            exchange: match *f.get(11)? {
                                "-" => None,
                                x => {
                                    let (d, i) = x.split_once(':')?;
                                    Some(FileKey {
                                        dev: d.parse().ok()?,
                                        ino: i.parse().ok()?,
                                    })
                                }
                            },
                        },
                    },
                    12,
                )
            }
            _ => return None,
        };
        (f.len() == n).then_some(rec)
    }
}

/// A graveyard name read from the log must be one plain component of our own making.
fn grave_name(s: &str) -> Option<String> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| s.to_string())
}

/// Applies one record to the live map.
fn apply(live: &mut BTreeMap<u64, Change>, rec: &Record) {
    match rec {
        Record::Header => {}
        Record::Change { seq, change } => {
            live.insert(*seq, change.clone());
        }
        Record::Identity { seq, key } => {
            if let Some(Change::Create { made, .. }) = live.get_mut(seq) {
                *made = Some(*key);
            }
        }
        Record::Done { seq } => {
            live.remove(seq);
        }
    }
}

/// The live changes of a log's bytes, and how many bytes were valid.
pub fn parse_log(bytes: &[u8]) -> (BTreeMap<u64, Change>, usize) {
    let mut live = BTreeMap::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            tracing::warn!(offset = pos, "namespace log: ignoring torn tail record");
            break;
        };
        let Some(rec) = parse_line(&bytes[pos..pos + nl]) else {
            tracing::warn!(
                offset = pos,
                "namespace log: ignoring corrupt record and everything after it"
            );
            break;
        };
        if pos == 0 && rec != Record::Header {
            tracing::warn!("namespace log lacks its header, ignoring it");
            break;
        }
        apply(&mut live, &rec);
        pos += nl + 1;
    }
    (live, pos)
}

fn parse_line(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, payload) = line.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(payload.as_bytes()) {
        return None;
    }
    Record::parse(payload)
}

fn open_log(path: &Path) -> io::Result<File> {
    open_private(path, "namespace log")
}

/// The open log and the mirror of its live changes.
pub struct NsLog {
    path: PathBuf,
    file: File,
    len: u64,
    live: BTreeMap<u64, Change>,
    compact_at: u64,
}

impl NsLog {
    /// Opens (creating) the log; returns it and its live changes (also in its mirror, so
    /// that settling them one by one keeps the log valid until the last one).
    pub fn open(path: &Path) -> io::Result<(NsLog, BTreeMap<u64, Change>)> {
        let file = open_log(path)?;
        let bytes = std::fs::read(path).ctx_path("reading namespace log", path)?;
        let (live, valid) = parse_log(&bytes);
        Ok((
            NsLog {
                path: path.to_path_buf(),
                file,
                len: valid as u64,
                live: live.clone(),
                compact_at: COMPACT_MIN,
            },
            live,
        ))
    }

    pub fn live(&self) -> &BTreeMap<u64, Change> {
        &self.live
    }

    /// Writes one record with one write(2), then mirrors it.  Never fsynced: like the data
    /// journal, it guards against the daemon dying, not the host.
    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        let mut buf = String::new();
        if self.len == 0 {
            Record::Header.encode_into(&mut buf);
        }
        rec.encode_into(&mut buf);
        let written = self.file.write_all_at(buf.as_bytes(), self.len);
        if let Err(e) = written.ctx_path("writing namespace log", &self.path) {
            let _ = self.file.set_len(self.len);
            return Err(e.into());
        }
        self.len += buf.len() as u64;
        apply(&mut self.live, rec);
        if self.live.is_empty() {
            // Nothing left to undo: the next record starts a fresh log.
            self.reset()?;
        } else if self.len > self.compact_at {
            self.compact()?;
        }
        Ok(())
    }

    pub fn reset(&mut self) -> io::Result<()> {
        self.file
            .set_len(0)
            .ctx_path("truncating namespace log", &self.path)?;
        self.len = 0;
        self.live.clear();
        self.compact_at = COMPACT_MIN;
        Ok(())
    }

    /// Rewrites the log with its live records (temp file renamed over it: a daemon killed
    /// midway leaves the old or the new log, both complete).
    fn compact(&mut self) -> io::Result<()> {
        let mut text = String::new();
        Record::Header.encode_into(&mut text);
        for (&seq, change) in &self.live {
            Record::Change {
                seq,
                change: change.clone(),
            }
            .encode_into(&mut text);
            if let Change::Create {
                made: Some(key), ..
            } = change
            {
                Record::Identity { seq, key: *key }.encode_into(&mut text);
            }
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text.as_bytes()).ctx_path("writing", &tmp)?;
        std::fs::rename(&tmp, &self.path).ctx_path("renaming over the namespace log", &tmp)?;
        self.file = open_log(&self.path)?;
        self.len = text.len() as u64;
        self.compact_at = COMPACT_MIN.max(self.len * 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(ino: u64) -> DirRef {
        DirRef {
            key: FileKey { dev: 7, ino },
            handle: FileHandle {
                handle_type: 1,
                bytes: vec![ino as u8, 2, 3],
            },
        }
    }

    fn samples() -> Vec<Record> {
        let k = |ino| FileKey { dev: 7, ino };
        vec![
            Record::Header,
            Record::Change {
                seq: 1,
                change: Change::Create {
                    kind: Kind::Dir,
                    dir: dir(2),
                    name: b"new dir".to_vec(),
                    made: None,
                },
            },
            Record::Identity { seq: 1, key: k(10) },
            Record::Change {
                seq: 2,
                change: Change::Remove {
                    dir: dir(2),
                    name: b"old".to_vec(),
                    grave: "2".into(),
                    victim: k(11),
                },
            },
            Record::Change {
                seq: 3,
                change: Change::Rename {
                    from: dir(2),
                    from_name: b"tmp".to_vec(),
                    to: dir(10),
                    to_name: b"\xff".to_vec(),
                    moved: k(12),
                    replaced: Some(("3".into(), k(13))),
                    exchange: None,
                },
            },
            Record::Change {
                seq: 4,
                change: Change::Rename {
                    from: dir(2),
                    from_name: b"a".to_vec(),
                    to: dir(2),
                    to_name: b"b".to_vec(),
                    moved: k(14),
                    replaced: None,
                    exchange: Some(k(15)),
                },
            },
            Record::Done { seq: 2 },
        ]
    }

    #[test]
    fn records_roundtrip_and_done_forgets() {
        let mut text = String::new();
        for r in samples() {
            r.encode_into(&mut text);
            let line = text.lines().last().unwrap_or_default();
            assert_eq!(parse_line(line.as_bytes()), Some(r));
        }
        let (live, valid) = parse_log(text.as_bytes());
        assert_eq!(valid, text.len());
        assert_eq!(live.keys().copied().collect::<Vec<_>>(), vec![1, 3, 4]);
        match &live[&1] {
            Change::Create { made, .. } => assert_eq!(*made, Some(FileKey { dev: 7, ino: 10 })),
            c => panic!("unexpected {c:?}"),
        }
    }

    #[test]
    fn torn_tail_and_bad_grave_names_are_rejected() {
        let mut text = String::new();
        for r in &samples()[..3] {
            r.encode_into(&mut text);
        }
        let (live, _) = parse_log(&text.as_bytes()[..text.len() - 3]);
        assert!(matches!(
            live.get(&1),
            Some(Change::Create { made: None, .. })
        ));
        let payload = format!("R 9 {} 61 ../x 7 1", dir_text(&dir(2)));
        assert_eq!(Record::parse(&payload), None);
    }
}
