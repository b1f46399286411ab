//! Holes in pre-images: saving a range of a sparse file costs its allocated bytes only, and
//! a rollback gives the holes back as holes (real files under /tmp, as in `tests`).

use super::fileio::copy_range;
use super::tests::{pattern, Dirs, TFile};
use super::*;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;

/// Bytes allocated on disk under `dir` (files only, recursively).
fn allocated(dir: &Path) -> u64 {
    let mut sum = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        sum += if md.is_dir() {
            allocated(&e.path())
        } else {
            md.blocks() * 512
        };
    }
    sum
}

/// Where the first data of `f` at or after `off` is (`None`: only a hole follows).
fn data_from(f: &File, off: u64) -> Option<u64> {
    nix::unistd::lseek(f.as_fd(), off as i64, nix::unistd::Whence::SeekData)
        .ok()
        .map(|d| d as u64)
}

fn read_at(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).unwrap();
    buf
}

/// A durable 1 TiB file holding 8 KiB of data at its start and 4 KiB at 512 GiB, the rest
/// a hole.
fn sparse_tib(d: &Dirs) -> (TFile, Vec<u8>, Vec<u8>) {
    let t = TFile::create(d, "sparse", &[]);
    let head = pattern(8192, 41);
    let mid = pattern(4096, 42);
    t.file.set_len(TIB).unwrap();
    t.file.write_all_at(&head, 0).unwrap();
    t.file.write_all_at(&mid, TIB / 2).unwrap();
    t.file.sync_all().unwrap();
    (t, head, mid)
}

#[test]
fn truncating_a_sparse_tib_saves_only_its_data_and_the_cut_brings_it_back() {
    let d = Dirs::new("sparse-truncate");
    let (j, _) = d.open(true);
    let (t, head, mid) = sparse_tib(&d);
    t.truncate(&j, 0);
    assert_eq!(t.file.metadata().unwrap().len(), 0);
    let undo = allocated(&d.state);
    assert!(
        undo < MIB,
        "undo store holds {undo} bytes for 12 KiB of data"
    );

    let losses = j.rollback_all().unwrap();
    assert_eq!(losses.len(), 1);
    // Cut off by the truncate: no data of the file was lost.
    assert_eq!(losses[0].lost_bytes, TIB);
    assert_eq!(losses[0].lost_hole_bytes, TIB);
    assert_eq!(t.file.metadata().unwrap().len(), TIB);
    assert_eq!(read_at(&t.file, 0, head.len()), head);
    assert_eq!(read_at(&t.file, TIB / 2, mid.len()), mid);
    assert_eq!(read_at(&t.file, TIB / 4, 4096), vec![0u8; 4096]);
    // The holes are holes again: no data between the two pieces, none after the second.
    assert_eq!(data_from(&t.file, 64 * MIB), Some(TIB / 2));
    assert_eq!(data_from(&t.file, TIB / 2 + MIB), None);
    let file_bytes = t.file.metadata().unwrap().blocks() * 512;
    assert!(
        file_bytes < MIB,
        "the restored file allocates {file_bytes} bytes"
    );
}

#[test]
fn data_written_into_a_durable_hole_is_punched_out_again() {
    let d = Dirs::new("sparse-fill");
    let (j, _) = d.open(true);
    let (t, head, mid) = sparse_tib(&d);
    // 4 MiB of data in the middle of the hole, and a shrinking truncate through the
    // second piece.
    let fill = pattern(4 << 20, 43);
    t.write(&j, 100 * MIB, &fill);
    t.truncate(&j, TIB / 2 + 100);
    assert_eq!(data_from(&t.file, 64 * MIB), Some(100 * MIB));
    assert!(allocated(&d.state) < MIB);

    j.rollback_all().unwrap();
    assert_eq!(t.file.metadata().unwrap().len(), TIB);
    assert_eq!(read_at(&t.file, 0, head.len()), head);
    assert_eq!(read_at(&t.file, TIB / 2, mid.len()), mid);
    assert_eq!(read_at(&t.file, 100 * MIB, 4096), vec![0u8; 4096]);
    assert_eq!(data_from(&t.file, 64 * MIB), Some(TIB / 2));
}

#[test]
fn a_killed_daemon_replays_holes_as_holes() {
    let d = Dirs::new("sparse-replay");
    let (t, head, mid) = {
        let (j, _) = d.open(true);
        let (t, head, mid) = sparse_tib(&d);
        t.truncate(&j, 4096);
        // Dropped without cleaning: as if the daemon were killed.
        drop(j);
        (t, head, mid)
    };
    let (_j, report) = d.open(true);
    assert_eq!(report.map(|r| r.len()), Some(1));
    assert_eq!(t.file.metadata().unwrap().len(), TIB);
    assert_eq!(read_at(&t.file, 0, head.len()), head);
    assert_eq!(read_at(&t.file, TIB / 2, mid.len()), mid);
    assert_eq!(data_from(&t.file, 64 * MIB), Some(TIB / 2));
}

#[test]
fn a_sparse_copy_over_stale_bytes_leaves_zeros_and_reports_the_source_end() {
    let d = Dirs::new("sparse-copy");
    let src = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.data.join("src"))
        .unwrap();
    let dst = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.data.join("dst"))
        .unwrap();
    // src: 1 MiB hole, 64 KiB of data, a hole to 3 MiB.  dst: 4 MiB of old bytes.
    let data = pattern(64 << 10, 44);
    src.set_len(3 * MIB).unwrap();
    src.write_all_at(&data, MIB).unwrap();
    dst.write_all_at(&vec![0xeeu8; 4 << 20], 0).unwrap();
    // Asked for more than src has: copies up to its end.
    let n = copy_range(src.as_fd(), 0, dst.as_fd(), 512, 8 * MIB).unwrap();
    assert_eq!(n, 3 * MIB);
    assert_eq!(read_at(&dst, 0, 512), vec![0xeeu8; 512]);
    assert_eq!(read_at(&dst, 512, 1 << 20), vec![0u8; 1 << 20]);
    assert_eq!(read_at(&dst, MIB + 512, data.len()), data);
    let tail = read_at(
        &dst,
        MIB + 512 + data.len() as u64,
        (2 * MIB) as usize - data.len(),
    );
    assert!(tail.iter().all(|&b| b == 0), "stale bytes left in a hole");
    assert_eq!(read_at(&dst, 3 * MIB + 512, 100), vec![0xeeu8; 100]);
    // Past dst's end the hole only grows the file.
    let far = dst.metadata().unwrap().len() + MIB;
    let before = dst.metadata().unwrap().blocks() * 512;
    let n = copy_range(src.as_fd(), 0, dst.as_fd(), far, 3 * MIB).unwrap();
    assert_eq!(n, 3 * MIB);
    let grown = dst.metadata().unwrap().blocks() * 512 - before;
    assert!(
        grown < 2 * data.len() as u64,
        "3 MiB copied allocate {grown} bytes"
    );
    assert_eq!(dst.metadata().unwrap().len(), far + 3 * MIB);
    assert_eq!(read_at(&dst, far + MIB, data.len()), data);
}

#[test]
fn a_cut_tells_lost_data_from_lost_holes() {
    let d = Dirs::new("sparse-split");
    let (j, _) = d.open(true);
    let t = TFile::create(&d, "index", &pattern(4096, 45));
    // Preallocated by a truncate up to 10 MiB, 820 bytes written into it.
    t.truncate(&j, 10 * MIB);
    t.write(&j, 4096, &[7u8; 820]);
    let losses = j.rollback_all().unwrap();
    assert_eq!(losses.len(), 1);
    let l = &losses[0];
    assert_eq!(l.lost_bytes, 10 * MIB - 4096);
    // The filesystem allocates whole blocks: the written bytes' block is data.
    assert!(
        (820..=8192).contains(&l.lost_data_bytes),
        "lost data {} of {}",
        l.lost_data_bytes,
        l.lost_bytes
    );
    assert_eq!(l.lost_data_bytes + l.lost_hole_bytes, l.lost_bytes);
}
