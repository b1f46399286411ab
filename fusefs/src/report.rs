//! The reports lossfs hands out (status, sync, powercut, recovery), shared by the daemon,
//! the control protocol and `lossctl`, with their human-readable renderings.

use crate::faults::spec::FaultsStatus;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// A half-open byte range `[start, end)` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unsynced state of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// Path relative to the mount root, or `None` if the file has no name any more.
    pub path: Option<String>,
    /// Size a power cut would leave the file with.
    pub durable_size: u64,
    /// Size now.
    pub size: u64,
    /// Byte ranges changed since the file was last durable.
    pub unsynced: Vec<ByteRange>,
    /// Sum of the lengths of `unsynced`.
    pub unsynced_bytes: u64,
}

/// Answer to `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub mountpoint: String,
    pub backing: String,
    pub files: Vec<FileStatus>,
    pub unsynced_bytes: u64,
    /// Number of power cuts this daemon has done.
    pub powercuts: u64,
    /// Armed crash point, fault rules, disk-full mode, last crash-point cut.
    #[serde(default)]
    pub faults: FaultsStatus,
}

/// Answer to `sync`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub files_synced: u64,
    pub bytes_synced: u64,
}

/// What a power cut did to one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLoss {
    pub path: Option<String>,
    /// Size before the cut.
    pub size_before: u64,
    /// Size after the cut (the durable size).
    pub size_after: u64,
    /// Byte ranges whose unsynced content was lost.
    pub lost: Vec<ByteRange>,
    pub lost_bytes: u64,
    /// Set when the file could not be restored (for example it was unlinked): why.
    pub error: Option<String>,
}

/// A process killed by a power cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KilledProcess {
    pub pid: i32,
    pub comm: String,
    /// Why it was killed: "fd", "cwd", "root", "exe", "mmap".
    pub reasons: Vec<String>,
}

/// Answer to `powercut`, and what a mount prints after rolling back an unclean journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowercutReport {
    pub mountpoint: String,
    pub files: Vec<FileLoss>,
    pub lost_bytes: u64,
    pub killed: Vec<KilledProcess>,
    /// Wall time the cut took, in milliseconds.
    pub elapsed_ms: u64,
}

fn ranges_text(ranges: &[ByteRange]) -> String {
    const SHOWN: usize = 8;
    let mut s = String::new();
    for (i, r) in ranges.iter().take(SHOWN).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}..{}", r.start, r.end);
    }
    if ranges.len() > SHOWN {
        let _ = write!(s, ", ... ({} ranges)", ranges.len());
    }
    s
}

fn name(path: &Option<String>) -> &str {
    path.as_deref().unwrap_or("(unnamed)")
}

impl StatusReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} (backing {}): {} unsynced bytes in {} files, {} power cuts so far\n",
            self.mountpoint,
            self.backing,
            self.unsynced_bytes,
            self.files.len(),
            self.powercuts
        );
        for f in &self.files {
            let _ = writeln!(
                s,
                "  {}: {} unsynced bytes (size {}, durable size {}) in {}",
                name(&f.path),
                f.unsynced_bytes,
                f.size,
                f.durable_size,
                ranges_text(&f.unsynced)
            );
        }
        if !self.faults.is_empty() {
            s.push_str(&self.faults.to_text());
        }
        s
    }
}

impl SyncReport {
    pub fn to_text(&self) -> String {
        format!(
            "synced {} files, {} bytes made durable\n",
            self.files_synced, self.bytes_synced
        )
    }
}

impl PowercutReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "power cut on {}: {} unsynced bytes lost in {} files, {} processes killed ({} ms)\n",
            self.mountpoint,
            self.lost_bytes,
            self.files.len(),
            self.killed.len(),
            self.elapsed_ms
        );
        for p in &self.killed {
            let _ = writeln!(
                s,
                "  killed pid {} ({}): {}",
                p.pid,
                p.comm,
                p.reasons.join(",")
            );
        }
        for f in &self.files {
            let _ = write!(
                s,
                "  {}: lost {} bytes, size {} -> {}",
                name(&f.path),
                f.lost_bytes,
                f.size_before,
                f.size_after
            );
            if !f.lost.is_empty() {
                let _ = write!(s, ", ranges {}", ranges_text(&f.lost));
            }
            if let Some(e) = &f.error {
                let _ = write!(s, " [not restored: {e}]");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powercut_text_names_files_and_ranges() {
        let r = PowercutReport {
            mountpoint: "/m".into(),
            files: vec![FileLoss {
                path: Some("log".into()),
                size_before: 20,
                size_after: 10,
                lost: vec![ByteRange { start: 10, end: 20 }],
                lost_bytes: 10,
                error: None,
            }],
            lost_bytes: 10,
            killed: vec![],
            elapsed_ms: 3,
        };
        let t = r.to_text();
        assert!(t.contains("10 unsynced bytes lost in 1 files"), "{t}");
        assert!(
            t.contains("log: lost 10 bytes, size 20 -> 10, ranges 10..20"),
            "{t}"
        );
    }
}
