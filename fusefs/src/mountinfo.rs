//! Reading `/proc/self/mountinfo`: which mounts exist, which of them are lossfs mounts, and
//! what is mounted at a given path.  Everything here compares strings taken from the kernel's
//! table and never stats inside a mount, because a lossfs mount may be frozen by a power cut.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The filesystem type lossfs mounts show in mountinfo: fuser's `Subtype("lossfs")` makes the
/// kernel print `fuse.lossfs`.
pub const FSTYPE: &str = "fuse.lossfs";

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub parent_id: u64,
    pub major: u32,
    pub minor: u32,
    /// The directory of the mounted filesystem that forms this mount's root.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// For lossfs, the backing directory (fuser's `FSName`).
    pub source: String,
}

/// The kernel escapes space, tab, newline and backslash in mountinfo as `\ooo` octal.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let major = major.parse().ok()?;
    let minor = minor.parse().ok()?;
    let root = unescape_path(fields.next()?);
    let mount_point = unescape_path(fields.next()?);
    let _mount_options = fields.next()?;
    // Zero or more optional fields ("shared:1", "master:2"...) end with a lone "-".
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
    }
    let fstype = unescape_string(fields.next()?);
    let source = unescape_string(fields.next()?);
    Some(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        fstype,
        source,
    })
}

/// Parses mountinfo text.  Lines that do not have the documented shape are skipped: a future
/// kernel adding fields must not make lossctl unusable.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The calling process's mount table.
pub fn read() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {MOUNTINFO}: {e}")))?;
    Ok(parse(&text))
}

/// Among `entries`, the mount visible at `path` (compared as strings; `path` must already be
/// canonical).  When mounts are stacked on one mount point, the visible one is the one no
/// other mount at that point is stacked on; mountinfo order breaks remaining ties.
pub fn topmost_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let at: Vec<&MountEntry> = entries.iter().filter(|e| e.mount_point == path).collect();
    at.iter()
        .rev()
        .find(|e| !at.iter().any(|o| o.parent_id == e.mount_id))
        .or(at.last())
        .copied()
}

/// Among `entries`, the mount that contains `path` (the deepest mount point that is a prefix of
/// it), for error messages like "it is on ext4 mounted at /".
pub fn containing<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let deepest = entries
        .iter()
        .filter(|e| path.starts_with(&e.mount_point))
        .map(|e| e.mount_point.components().count())
        .max()?;
    let candidates: Vec<MountEntry> = entries
        .iter()
        .filter(|e| {
            e.mount_point.components().count() == deepest && path.starts_with(&e.mount_point)
        })
        .cloned()
        .collect();
    let top = topmost_at(&candidates, &candidates.first()?.mount_point)?;
    entries.iter().find(|e| e.mount_id == top.mount_id)
}

/// The topmost mount whose mount point is exactly `path` (already canonical).
pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    Ok(topmost_at(&read()?, path).cloned())
}

/// Every lossfs mount visible to this process, in mountinfo order.
pub fn lossfs_mounts() -> io::Result<Vec<MountEntry>> {
    Ok(read()?.into_iter().filter(|e| e.fstype == FSTYPE).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
120 27 0:52 / /var/lib/kafka rw,nosuid,nodev,relatime shared:70 master:3 - fuse.lossfs /srv/backing/kafka rw,user_id=0,group_id=0
121 27 0:53 / /mnt/with\\040space\\011tab rw,relatime - fuse.lossfs /srv/b\\134x rw,user_id=0,group_id=0
";

    #[test]
    fn parses_real_lines_with_optional_fields() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[1],
            MountEntry {
                mount_id: 27,
                parent_id: 1,
                major: 259,
                minor: 2,
                root: "/".into(),
                mount_point: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/nvme0n1p2".into(),
            }
        );
        assert_eq!(m[2].root, Path::new("/mnt1"));
        assert_eq!(m[2].mount_point, Path::new("/mnt2"));
        assert_eq!((m[2].major, m[2].minor), (98, 0));
        assert_eq!(m[3].fstype, FSTYPE);
        assert_eq!(m[3].source, "/srv/backing/kafka");
        assert_eq!(m[3].mount_point, Path::new("/var/lib/kafka"));
    }

    #[test]
    fn decodes_octal_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m[4].mount_point, Path::new("/mnt/with space\ttab"));
        assert_eq!(m[4].source, "/srv/b\\x");
        assert_eq!(unescape("a\\012b"), b"a\nb");
        // Not an escape: kept as is, never a panic at the end of the field.
        assert_eq!(unescape("a\\9x"), b"a\\9x");
        assert_eq!(unescape("end\\04"), b"end\\04");
        assert_eq!(unescape("\\"), b"\\");
        assert_eq!(unescape("\\777"), b"\\777");
    }

    #[test]
    fn non_utf8_mount_point_is_kept_as_bytes() {
        let m = parse("5 1 0:9 / /mnt/\\377x rw - tmpfs tmpfs rw\n");
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(m[0].mount_point.as_os_str().as_bytes(), b"/mnt/\xffx");
    }

    #[test]
    fn skips_malformed_lines() {
        let m = parse("garbage\n1 2 3\n1 2 0:1 / /a rw - \n\n7 1 0:3 / /ok rw - tmpfs none rw\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/ok"));
    }

    #[test]
    fn topmost_of_stacked_mounts_wins() {
        // 51 is stacked on 50 at /data; 50 appears later in the table on purpose.
        let text = "\
51 50 0:61 / /data rw - fuse.lossfs /b2 rw
50 27 0:60 / /data rw - fuse.lossfs /b1 rw
27 1 8:1 / / rw - ext4 /dev/sda1 rw
";
        let m = parse(text);
        assert_eq!(
            topmost_at(&m, Path::new("/data")).map(|e| e.mount_id),
            Some(51)
        );
        assert!(topmost_at(&m, Path::new("/dat")).is_none());
        assert_eq!(
            containing(&m, Path::new("/data/x/y")).map(|e| e.mount_id),
            Some(51)
        );
        assert_eq!(
            containing(&m, Path::new("/tmp")).map(|e| e.mount_id),
            Some(27)
        );
        // "/database" is not under "/data": components, not string prefixes.
        assert_eq!(
            containing(&m, Path::new("/database")).map(|e| e.mount_id),
            Some(27)
        );
    }

    #[test]
    fn reads_this_process_table() {
        let m = read().unwrap();
        assert!(m.iter().any(|e| e.mount_point == Path::new("/")));
        assert!(mount_at(Path::new("/")).unwrap().is_some());
        assert!(lossfs_mounts().unwrap().iter().all(|e| e.fstype == FSTYPE));
    }
}
