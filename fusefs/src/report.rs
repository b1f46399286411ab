//! The reports lossfs hands out (status, sync, powercut, recovery, the fault engine's
//! state), shared by the daemon, the control protocol and `lossctl`, with their
//! human-readable renderings.

use crate::faultspec::{ordinal, path_text, CrashSpec, FaultSpec, Op, When};
use crate::keep::KeepMode;
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
    /// Path relative to the mount root, or `None` if no name of it was found.
    pub path: Option<String>,
    /// The backing inode number, when no name was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Size a power cut would leave the file with.
    pub durable_size: u64,
    /// Size now.
    pub size: u64,
    /// Byte ranges changed since the file was last durable.
    pub unsynced: Vec<ByteRange>,
    /// Sum of the lengths of `unsynced`: `unsynced_data_bytes + unsynced_hole_bytes`.
    pub unsynced_bytes: u64,
    /// Unsynced bytes the file holds as data.
    #[serde(default)]
    pub unsynced_data_bytes: u64,
    /// Unsynced bytes the file holds no data for: holes (growth by a truncate or a
    /// preallocation never written) and what a truncate cut off.
    #[serde(default)]
    pub unsynced_hole_bytes: u64,
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
    /// Namespace durability model (`durable`, `journal`, `posix`).
    #[serde(default)]
    pub metadata: String,
    /// Namespace changes (create, unlink, rename...) a power cut would undo now.
    #[serde(default)]
    pub namespace_uncommitted: u64,
    /// Armed crash point, fault rules, disk-full mode, last crash-point cut.
    #[serde(default)]
    pub faults: FaultsStatus,
    /// What `sync_file_range(2)` makes durable: `volatile` or `stable` (empty from a daemon
    /// that predates the option).
    #[serde(default)]
    pub sync_file_range: String,
}

/// Answer to `sync`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub files_synced: u64,
    pub bytes_synced: u64,
    /// Namespace changes committed.
    #[serde(default)]
    pub namespace_committed: u64,
}

/// A namespace change a power cut (or the replay after a killed daemon) undid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceUndo {
    /// create, mkdir, mknod, symlink, link, unlink, rmdir or rename.
    pub op: String,
    /// The name the change made or removed; for a rename, its source.
    pub path: String,
    /// For a rename, its destination.
    #[serde(default)]
    pub to: Option<String>,
    /// Set when the change could not be undone: why.
    #[serde(default)]
    pub error: Option<String>,
}

/// What a power cut did to one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLoss {
    /// Path relative to the mount root, or `None` if no name of it was found.
    pub path: Option<String>,
    /// The backing inode number, when no name was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// The file had no name left (unlinked, and no namespace undo can bring it back): none
    /// of its data could ever be read again, so there was nothing to restore.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Size before the cut.
    pub size_before: u64,
    /// Size after the cut (the durable size).
    pub size_after: u64,
    /// Byte ranges whose unsynced content was lost.
    pub lost: Vec<ByteRange>,
    /// Sum of the lengths of `lost`: `lost_data_bytes + lost_hole_bytes`.
    pub lost_bytes: u64,
    /// Lost bytes the file held as data before the cut: what programs wrote and lost.
    #[serde(default)]
    pub lost_data_bytes: u64,
    /// Lost bytes the file held no data for before the cut: its holes (growth by a truncate
    /// or a preallocation never written; they read as zeros) and what a truncate had cut
    /// off (the cut brings the durable bytes back).
    #[serde(default)]
    pub lost_hole_bytes: u64,
    /// Byte ranges whose unsynced content survived (`--keep` other than none).
    #[serde(default)]
    pub kept: Vec<ByteRange>,
    #[serde(default)]
    pub kept_bytes: u64,
    /// `--keep prefix`: how many of the file's unsynced operations were kept, of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_kept: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_total: Option<u64>,
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

/// A process a power cut killed that was not gone when the cut returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreaped {
    pub pid: i32,
    pub comm: String,
    /// Dead but not reaped by its parent (else it did not even die).
    pub zombie: bool,
    pub parent: i32,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Answer to `powercut`, and what a mount prints after rolling back an unclean journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowercutReport {
    pub mountpoint: String,
    /// Every file the cut put back (deleted files are only counted, in `deleted_files`).
    pub files: Vec<FileLoss>,
    /// `lost_data_bytes + lost_hole_bytes`.
    pub lost_bytes: u64,
    #[serde(default)]
    pub lost_data_bytes: u64,
    #[serde(default)]
    pub lost_hole_bytes: u64,
    /// Tracked files that had no name left: nothing of them could come back, nothing was
    /// restored.
    #[serde(default)]
    pub deleted_files: u64,
    pub killed: Vec<KilledProcess>,
    /// Wall time the cut took, in milliseconds.
    pub elapsed_ms: u64,
    /// Namespace changes undone, newest first.
    #[serde(default)]
    pub namespace: Vec<NamespaceUndo>,
    /// What the cut kept of the unsynced data.
    #[serde(default)]
    pub keep: KeepMode,
    /// The seed of a `prefix` or `random` cut: give it back with `--seed` to replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The block size of a `random` cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u64>,
    /// Bytes of unsynced data that survived.
    #[serde(default)]
    pub kept_bytes: u64,
    /// Killed processes still there when the cut returned (the wait for them is bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreaped: Vec<Unreaped>,
    /// What the cut could not do exactly (e.g. the sync_file_range tracer not drained).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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

/// A file's name in a report: its path, else its backing inode number.
fn name(path: &Option<String>, inode: Option<u64>) -> String {
    match (path, inode) {
        (Some(p), _) => p.clone(),
        (None, Some(ino)) => format!("(no name found: backing inode {ino})"),
        (None, None) => "(no name found)".to_string(),
    }
}

/// ` (D of data, H in holes)` when some lost bytes were holes.
fn split_text(data: u64, holes: u64) -> String {
    if holes == 0 {
        String::new()
    } else {
        format!(" ({data} of data, {holes} in holes)")
    }
}

impl StatusReport {
    pub fn to_text(&self) -> String {
        let holes: u64 = self.files.iter().map(|f| f.unsynced_hole_bytes).sum();
        let mut s = format!(
            "{} (backing {}): {} unsynced bytes{} in {} files, {} power cuts so far\n",
            self.mountpoint,
            self.backing,
            self.unsynced_bytes,
            split_text(self.unsynced_bytes.saturating_sub(holes), holes),
            self.files.len(),
            self.powercuts
        );
        if self.namespace_uncommitted > 0 {
            let _ = writeln!(
                s,
                "  {} uncommitted namespace changes (metadata={})",
                self.namespace_uncommitted, self.metadata
            );
        }
        for f in &self.files {
            let _ = writeln!(
                s,
                "  {}: {} unsynced bytes{} (size {}, durable size {}) in {}",
                name(&f.path, f.inode),
                f.unsynced_bytes,
                split_text(f.unsynced_data_bytes, f.unsynced_hole_bytes),
                f.size,
                f.durable_size,
                ranges_text(&f.unsynced)
            );
        }
        if self.sync_file_range == "stable" {
            s.push_str("  sync_file_range=stable: its write-and-wait calls commit their pages\n");
        }
        if !self.faults.is_empty() {
            s.push_str(&self.faults.to_text());
        }
        s
    }
}

impl SyncReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "synced {} files, {} bytes made durable",
            self.files_synced, self.bytes_synced
        );
        if self.namespace_committed > 0 {
            let _ = write!(
                s,
                ", {} namespace changes committed",
                self.namespace_committed
            );
        }
        s.push('\n');
        s
    }
}

impl PowercutReport {
    /// A report of `files` (as the journal gives them) with their totals: deleted files
    /// leave the list and are counted in `deleted_files`.
    pub fn of_files(files: Vec<FileLoss>) -> PowercutReport {
        let (deleted, files): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| f.deleted);
        PowercutReport {
            lost_bytes: files.iter().map(|f| f.lost_bytes).sum(),
            lost_data_bytes: files.iter().map(|f| f.lost_data_bytes).sum(),
            lost_hole_bytes: files.iter().map(|f| f.lost_hole_bytes).sum(),
            kept_bytes: files.iter().map(|f| f.kept_bytes).sum(),
            deleted_files: deleted.len() as u64,
            files,
            ..Default::default()
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "power cut on {}: {} unsynced bytes lost{} in {} files, {} processes killed ({} ms)\n",
            self.mountpoint,
            self.lost_bytes,
            split_text(self.lost_data_bytes, self.lost_hole_bytes),
            self.files.iter().filter(|f| f.lost_bytes > 0).count(),
            self.killed.len(),
            self.elapsed_ms
        );
        if self.deleted_files > 0 {
            let _ = writeln!(
                s,
                "  {} deleted files needed no restore (no name left, nothing of them can come back)",
                self.deleted_files
            );
        }
        if self.keep != KeepMode::None {
            let _ = write!(s, "  keep {}", self.keep);
            if let Some(seed) = self.seed {
                let _ = write!(s, ", seed {seed}");
            }
            if let Some(g) = self.granularity {
                let _ = write!(s, ", granularity {g}");
            }
            let _ = writeln!(s, ": {} unsynced bytes kept", self.kept_bytes);
        }
        for p in &self.killed {
            let _ = writeln!(
                s,
                "  killed pid {} ({}): {}",
                p.pid,
                p.comm,
                p.reasons.join(",")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        for p in &self.unreaped {
            let what = if p.zombie {
                "a zombie its parent has not reaped"
            } else {
                "still alive"
            };
            let _ = writeln!(
                s,
                "  not gone: pid {} ({}) is {what} (parent pid {})",
                p.pid, p.comm, p.parent
            );
        }
        // Files that lost and kept nothing (their changes were undone by later ones) are in
        // the JSON report only.
        let changed = self.files.iter().filter(|f| {
            f.lost_bytes > 0
                || f.kept_bytes > 0
                || f.size_before != f.size_after
                || f.error.is_some()
        });
        for f in changed {
            let _ = write!(
                s,
                "  {}: lost {} bytes{}, size {} -> {}",
                name(&f.path, f.inode),
                f.lost_bytes,
                split_text(f.lost_data_bytes, f.lost_hole_bytes),
                f.size_before,
                f.size_after
            );
            if !f.lost.is_empty() {
                let _ = write!(s, ", ranges {}", ranges_text(&f.lost));
            }
            if f.kept_bytes > 0 || !f.kept.is_empty() {
                let _ = write!(s, "; kept {} bytes", f.kept_bytes);
                if !f.kept.is_empty() {
                    let _ = write!(s, ", ranges {}", ranges_text(&f.kept));
                }
            }
            if let (Some(k), Some(n)) = (f.ops_kept, f.ops_total) {
                let _ = write!(s, "; kept {k} of {n} operations");
            }
            if let Some(e) = &f.error {
                let _ = write!(s, " [not restored: {e}]");
            }
            s.push('\n');
        }
        if !self.namespace.is_empty() {
            let _ = writeln!(s, "  {} namespace changes undone:", self.namespace.len());
        }
        for n in &self.namespace {
            let _ = write!(s, "    undone {} {}", n.op, n.path);
            if let Some(to) = &n.to {
                let _ = write!(s, " -> {to}");
            }
            if let Some(e) = &n.error {
                let _ = write!(s, " [not undone: {e}]");
            }
            s.push('\n');
        }
        s
    }
}

/// The armed crash point and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPointStatus {
    pub spec: CrashSpec,
    /// Operations that matched so far.
    pub matched: u64,
    /// Whether the cut happened.
    pub fired: bool,
}

/// One fault rule and its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub id: u64,
    pub spec: FaultSpec,
    pub matched: u64,
    pub fired: u64,
}

/// Disk-full mode: the limit and what the mount is counted to hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFullStatus {
    pub limit: u64,
    pub used: u64,
}

/// The last cut a crash point made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCut {
    pub op: Op,
    pub when: When,
    /// The path of the operation that triggered it, if it was computed.
    pub path: Option<String>,
    /// False while the cut is still running.
    pub done: bool,
    pub report: Option<PowercutReport>,
    pub error: Option<String>,
}

/// Everything the fault engine holds, for `lossctl status` and the fault commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultsStatus {
    pub crash_point: Option<CrashPointStatus>,
    pub faults: Vec<RuleStatus>,
    pub disk_full: Option<DiskFullStatus>,
    pub last_cut: Option<LastCut>,
    /// `drop` (Linux) or `retry`: what an fsync error does to the file's unsynced data.
    pub fsync_error: String,
}

impl FaultsStatus {
    /// Whether anything is armed, set or remembered.
    pub fn is_empty(&self) -> bool {
        self.crash_point.is_none()
            && self.faults.is_empty()
            && self.disk_full.is_none()
            && self.last_cut.is_none()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        match &self.crash_point {
            Some(c) => {
                let when = match c.spec.when {
                    When::Before => "before",
                    When::After => "after",
                };
                let _ = writeln!(
                    s,
                    "crash point: power cut {when} the {} {}{} ({}, {} matched so far)",
                    ordinal(c.spec.nth),
                    c.spec.op.name(),
                    path_text(&c.spec.path),
                    if c.fired { "fired" } else { "armed" },
                    c.matched
                );
            }
            None => s.push_str("crash point: none armed\n"),
        }
        if self.faults.is_empty() {
            s.push_str("faults: none\n");
        }
        for r in &self.faults {
            let _ = writeln!(
                s,
                "fault {}: {} (matched {}, fired {})",
                r.id,
                r.spec.to_text(),
                r.matched,
                r.fired
            );
        }
        if let Some(d) = &self.disk_full {
            let _ = writeln!(
                s,
                "disk full: limit {} bytes, the mount holds {} bytes",
                d.limit, d.used
            );
        }
        let _ = writeln!(s, "fsync errors: {}", self.fsync_error);
        if let Some(c) = &self.last_cut {
            let _ = write!(
                s,
                "last crash-point cut: at {} {}{}: ",
                match c.when {
                    When::Before => "before",
                    When::After => "after",
                },
                c.op.name(),
                path_text(&c.path)
            );
            match (&c.report, &c.error) {
                (Some(r), _) => s.push_str(&r.to_text()),
                (None, Some(e)) => {
                    let _ = writeln!(s, "failed: {e}");
                }
                (None, None) if !c.done => s.push_str("in progress\n"),
                (None, None) => s.push_str("done\n"),
            }
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
                ..Default::default()
            }],
            lost_bytes: 10,
            killed: vec![],
            elapsed_ms: 3,
            namespace: vec![NamespaceUndo {
                op: "rename".into(),
                path: "tmp".into(),
                to: Some("data".into()),
                error: None,
            }],
            ..Default::default()
        };
        let t = r.to_text();
        assert!(t.contains("10 unsynced bytes lost in 1 files"), "{t}");
        assert!(
            t.contains("log: lost 10 bytes, size 20 -> 10, ranges 10..20"),
            "{t}"
        );
        assert!(t.contains("1 namespace changes undone"), "{t}");
        assert!(t.contains("undone rename tmp -> data"), "{t}");
        assert!(!t.contains("keep"), "{t}");
    }

    #[test]
    fn cut_text_splits_data_from_holes_counts_losers_and_sums_deleted_files_once() {
        let file = |path: Option<&str>, data: u64, holes: u64| FileLoss {
            path: path.map(Into::into),
            inode: path.is_none().then_some(77),
            size_before: 100 + data + holes,
            size_after: 100,
            lost_bytes: data + holes,
            lost_data_bytes: data,
            lost_hole_bytes: holes,
            ..Default::default()
        };
        let deleted = FileLoss {
            deleted: true,
            inode: Some(5),
            ..Default::default()
        };
        let mut files = vec![
            file(Some("index"), 20, 10_000),
            file(None, 800, 0),
            deleted.clone(),
            deleted,
        ];
        // Tracked, but its changes were undone by later ones: lost nothing.
        files.push(FileLoss {
            path: Some("same".into()),
            size_before: 100,
            size_after: 100,
            ..Default::default()
        });
        let r = PowercutReport {
            mountpoint: "/m".into(),
            ..PowercutReport::of_files(files)
        };
        assert_eq!(r.files.len(), 3);
        assert_eq!(r.deleted_files, 2);
        assert_eq!(
            (r.lost_bytes, r.lost_data_bytes, r.lost_hole_bytes),
            (10_820, 820, 10_000)
        );
        let t = r.to_text();
        assert!(
            t.contains("10820 unsynced bytes lost (820 of data, 10000 in holes) in 2 files"),
            "{t}"
        );
        assert!(t.contains("2 deleted files needed no restore"), "{t}");
        assert!(
            t.contains("index: lost 10020 bytes (20 of data, 10000 in holes), size 10120 -> 100"),
            "{t}"
        );
        assert!(
            t.contains("(no name found: backing inode 77): lost 800 bytes, size 900 -> 100"),
            "{t}"
        );
        assert!(!t.contains("same"), "{t}");
        assert!(!t.contains("unnamed") && !t.contains("not restored"), "{t}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["deleted_files"], 2);
        assert_eq!(json["lost_hole_bytes"], 10_000);
        assert_eq!(json["files"][0]["lost_data_bytes"], 20);
    }

    #[test]
    fn status_text_splits_data_from_holes_and_names_unnamed_files_by_inode() {
        let r = StatusReport {
            mountpoint: "/m".into(),
            backing: "/b".into(),
            files: vec![FileStatus {
                path: None,
                inode: Some(12),
                durable_size: 0,
                size: 1000,
                unsynced: vec![ByteRange {
                    start: 0,
                    end: 1000,
                }],
                unsynced_bytes: 1000,
                unsynced_data_bytes: 10,
                unsynced_hole_bytes: 990,
            }],
            unsynced_bytes: 1000,
            ..Default::default()
        };
        let t = r.to_text();
        assert!(!t.contains("sync_file_range"), "{t}");
        let stable = StatusReport {
            sync_file_range: "stable".into(),
            ..r.clone()
        };
        assert!(
            stable.to_text().contains("sync_file_range=stable"),
            "{}",
            stable.to_text()
        );
        assert!(
            t.contains("1000 unsynced bytes (10 of data, 990 in holes) in 1 files"),
            "{t}"
        );
        assert!(
            t.contains("(no name found: backing inode 12): 1000 unsynced bytes (10 of data"),
            "{t}"
        );
    }

    #[test]
    fn cut_text_names_killed_processes_not_gone() {
        let r = PowercutReport {
            unreaped: vec![Unreaped {
                pid: 42,
                comm: "postgres".into(),
                zombie: true,
                parent: 7,
            }],
            ..Default::default()
        };
        let t = r.to_text();
        assert!(
            t.contains(
                "not gone: pid 42 (postgres) is a zombie its parent has not reaped (parent pid 7)"
            ),
            "{t}"
        );
        assert!(!serde_json::to_string(&PowercutReport::default())
            .unwrap()
            .contains("unreaped"));
    }

    #[test]
    fn partial_cut_text_names_mode_seed_and_kept_ranges() {
        let r = PowercutReport {
            mountpoint: "/m".into(),
            files: vec![FileLoss {
                path: Some("db".into()),
                size_before: 8192,
                size_after: 8192,
                lost: vec![ByteRange {
                    start: 0,
                    end: 4096,
                }],
                lost_bytes: 4096,
                kept: vec![ByteRange {
                    start: 4096,
                    end: 8192,
                }],
                kept_bytes: 4096,
                ops_kept: Some(1),
                ops_total: Some(2),
                error: None,
                ..Default::default()
            }],
            lost_bytes: 4096,
            keep: KeepMode::Random,
            seed: Some(42),
            granularity: Some(4096),
            kept_bytes: 4096,
            ..Default::default()
        };
        let t = r.to_text();
        assert!(
            t.contains("keep random, seed 42, granularity 4096: 4096 unsynced bytes kept"),
            "{t}"
        );
        assert!(
            t.contains("; kept 4096 bytes, ranges 4096..8192; kept 1 of 2 operations"),
            "{t}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["keep"], "random");
        assert_eq!(json["seed"], 42);
        // Reports from before these fields still decode.
        let old = r#"{"mountpoint":"/m","files":[{"path":"a","size_before":1,"size_after":0,
            "lost":[],"lost_bytes":1,"error":null}],"lost_bytes":1,"killed":[],"elapsed_ms":0}"#;
        let back: PowercutReport = serde_json::from_str(old).unwrap();
        assert_eq!(back.keep, KeepMode::None);
    }
}
