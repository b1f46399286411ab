//! The ordered record of the operations a mount served, for `lossfs explore`'s recording
//! run: one JSON line per change or durability operation (kind, its number among the
//! operations of that kind, paths, offset and length, whether it is an O_SYNC write), in
//! the order the fault engine counted them, so that `--op KIND --nth N` of a crash point or
//! a fault rule names exactly the recorded operation.
//!
//! It is on only when the daemon starts with [`RECORD_ENV`] naming a file (explore sets it
//! for its recording run alone): otherwise it costs the request path nothing (the fault
//! engine's one atomic load stays false).

use crate::faultspec::Op;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The environment variable naming the file a daemon records its operations to.
pub const RECORD_ENV: &str = "LOSSFS_EXPLORE_RECORD";

/// Operations after which the data or the names a program relies on may have become
/// durable (an O_SYNC write too, see [`RecordedOp::durable`]).
pub const DURABILITY_OPS: [&str; 4] = ["fsync", "fdatasync", "fsyncdir", "rename"];

/// Operations that change data or names.
pub const CHANGE_OPS: [&str; 12] = [
    "write",
    "truncate",
    "fallocate",
    "copy_file_range",
    "create",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "link",
    "rename",
];

/// Whether operations of this kind are recorded.
pub fn recorded(op: &str) -> bool {
    DURABILITY_OPS.contains(&op) || CHANGE_OPS.contains(&op)
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOp {
    /// The kind (`write`, `fsync`...).
    pub op: String,
    /// Its number among the operations of its kind, from 1 (`--nth`).
    pub nth: u64,
    /// Relative to the mount root; two for a rename (from, to); none when the file has no
    /// name any more.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// A write through a handle opened O_SYNC or O_DSYNC: durable when it returns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
}

impl RecordedOp {
    /// A durability point: a cut right before and right after it differ.
    pub fn durable(&self) -> bool {
        self.sync || DURABILITY_OPS.contains(&self.op.as_str())
    }

    /// A change of data or names: what a partial cut may keep part of.
    pub fn changes(&self) -> bool {
        CHANGE_OPS.contains(&self.op.as_str())
    }

    /// In words: `fsync #3 of /wal`, `write #47 of /db at offset 8192 (4096 bytes)`,
    /// `rename #1 of /a.tmp to /a`, `O_SYNC write #2 of /log ...`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}{} #{}",
            if self.sync { "O_SYNC " } else { "" },
            self.op,
            self.nth
        );
        match self.paths.as_slice() {
            [] => s.push_str(" of a deleted file"),
            [p] => s.push_str(&format!(" of /{p}")),
            [from, to, ..] => s.push_str(&format!(" of /{from} to /{to}")),
        }
        if let Some(off) = self.offset {
            s.push_str(&format!(" at offset {off}"));
        }
        if let Some(len) = self.length {
            s.push_str(&format!(" ({len} bytes)"));
        }
        s
    }
}

/// Reads a record file (one [`RecordedOp`] per line).
pub fn read(path: &Path) -> Result<Vec<RecordedOp>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the operation record {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The daemon side: numbers and appends each recorded operation.
pub struct Recorder {
    file: File,
    counts: HashMap<Op, u64>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        Ok(Recorder {
            file: File::create(path)?,
            counts: HashMap::new(),
        })
    }

    /// Appends one operation; called with the fault engine's lock held, in the order the
    /// rules count operations.  A failed write is logged, not the client's problem.
    pub fn record(&mut self, op: Op, paths: &[&str], span: Option<(u64, u64)>, sync: bool) {
        if !recorded(op.name()) {
            return;
        }
        let nth = self.counts.entry(op).or_insert(0);
        *nth += 1;
        let r = RecordedOp {
            op: op.name().to_string(),
            nth: *nth,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            offset: span.map(|s| s.0),
            length: span.map(|s| s.1),
            sync,
        };
        let line = match serde_json::to_string(&r) {
            Ok(l) => l + "\n",
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a recorded operation");
                return;
            }
        };
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot append to the operation record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_number_each_kind_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ops");
        let mut r = Recorder::create(&p).unwrap();
        r.record(Op::Write, &["db"], Some((8192, 4096)), false);
        r.record(Op::Getattr, &["db"], None, false);
        r.record(Op::Fsync, &["db"], None, false);
        r.record(Op::Write, &["log"], Some((0, 10)), true);
        r.record(Op::Rename, &["a.tmp", "a"], None, false);
        let ops = read(&p).unwrap();
        let kinds: Vec<(&str, u64)> = ops.iter().map(|o| (o.op.as_str(), o.nth)).collect();
        assert_eq!(
            kinds,
            [("write", 1), ("fsync", 1), ("write", 2), ("rename", 1)],
            "getattr is not recorded"
        );
        assert_eq!(
            ops[0].describe(),
            "write #1 of /db at offset 8192 (4096 bytes)"
        );
        assert!(!ops[0].durable() && ops[0].changes());
        assert!(ops[1].durable() && !ops[1].changes());
        assert!(ops[2].durable(), "an O_SYNC write is a durability point");
        assert_eq!(
            ops[2].describe(),
            "O_SYNC write #2 of /log at offset 0 (10 bytes)"
        );
        assert_eq!(ops[3].describe(), "rename #1 of /a.tmp to /a");
        assert!(ops[3].durable() && ops[3].changes());
    }
}
