//! The partial crash state of one file at a cut (`--keep all|random|prefix`): opening it,
//! drawing from its seeded generator, computing the plan ([`super::crashstate`]), applying
//! it and reporting what was kept and lost.

use super::crashstate::{self, CrashPlan, PrefixBuilder};
use super::fileio::{byte_ranges, hole_bytes, is_deleted, is_gone, path_of, size_of};
use super::log::LiveFile;
use super::{FileKey, Journal, Tracked};
use crate::error::Context as _;
use crate::handle::FileHandle;
use crate::keep::{KeepMode, KeepSpec};
use crate::prng::SplitMix64;
use crate::report::FileLoss;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

impl Journal {
    /// `--keep all|random|prefix` for one file: computes its crash state, applies it and
    /// fdatasyncs.  The file's draws come from a generator seeded by the cut's seed and the
    /// file's path, so neither other files nor the order of the cut change them.  A deleted
    /// file is left as it is (see [`super::fileio::is_deleted`]).
    pub(super) fn restore_partial(
        &self,
        t: &Tracked,
        live: &LiveFile,
        spec: &KeepSpec,
        mode: KeepMode,
        prefix: Option<PrefixBuilder>,
    ) -> io::Result<FileLoss> {
        let file = match live.handle.open(self.root.as_fd(), libc::O_RDWR) {
            Ok(file) if !is_deleted(file.as_fd()) => file,
            Ok(_) => return Ok(super::deleted(key_of(live))),
            Err(e) if is_gone(&e) => return Ok(super::deleted(key_of(live))),
            Err(e) => Err(e).ctx_ino("opening file to restore", live.ino)?,
        };
        let path = path_of(file.as_fd(), &self.root_path);
        let name = path
            .clone()
            .unwrap_or_else(|| format!("inode {}", live.ino));
        let size = size_of(file.as_fd()).with_ctx(|| format!("fstat of {name}"))?;
        let d = t.durable_size;
        let plan = match (mode, prefix) {
            (KeepMode::Random, _) => {
                let mut rng = SplitMix64::for_item(spec.seed, name.as_bytes());
                crashstate::random_plan(d, size, &t.dirty, spec.granularity, &mut rng)
            }
            (KeepMode::Prefix, Some(b)) => b.finish(size, &t.dirty),
            _ => CrashPlan {
                size,
                kept: crashstate::unsynced(d, size, &t.dirty),
                ..Default::default()
            },
        };
        let undo = if t.undo_len > 0 {
            let p = self.undo_dir.join(t.id.to_string());
            Some(File::open(&p).ctx_path("opening undo data", &p)?)
        } else {
            None
        };
        let lost_holes = hole_bytes(file.as_fd(), &plan.lost, size)
            .with_ctx(|| format!("finding the holes of {name}"))?;
        crashstate::apply_plan(
            file.as_fd(),
            undo.as_ref().map(|u| u.as_fd()),
            &live.extents,
            &plan,
        )
        .with_ctx(|| format!("restoring {name}"))?;
        nix::unistd::fdatasync(&file).with_ctx(|| format!("fdatasync of {name}"))?;
        Ok(FileLoss {
            path,
            size_before: size,
            size_after: plan.size,
            lost_bytes: plan.lost.total_len(),
            lost_data_bytes: plan.lost.total_len() - lost_holes.min(plan.lost.total_len()),
            lost_hole_bytes: lost_holes.min(plan.lost.total_len()),
            lost: byte_ranges(&plan.lost),
            kept_bytes: plan.kept.total_len(),
            kept: byte_ranges(&plan.kept),
            ops_kept: plan.ops.map(|(k, _)| k),
            ops_total: plan.ops.map(|(_, n)| n),
            error: None,
            ..Default::default()
        })
    }

    /// How many of its unsynced operations a `--keep prefix` cut keeps of this file: uniform
    /// in `0..=ops`, from the generator of the cut's seed and the file's name (its path, or
    /// `inode N` when it has none: the same name [`Self::restore_partial`] finds).
    pub(super) fn draw_prefix_len(
        &self,
        t: &Tracked,
        handle: &FileHandle,
        key: FileKey,
        seed: u64,
    ) -> u64 {
        let path = handle
            .open(self.root.as_fd(), libc::O_PATH)
            .ok()
            .and_then(|fd| path_of(fd.as_fd(), &self.root_path));
        let name = path.unwrap_or_else(|| format!("inode {}", key.ino));
        SplitMix64::for_item(seed, name.as_bytes()).below(t.ops + 1)
    }
}

fn key_of(live: &LiveFile) -> FileKey {
    FileKey {
        dev: live.dev,
        ino: live.ino,
    }
}
