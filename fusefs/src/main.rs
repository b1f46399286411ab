//! `lossfs BACKING MOUNTPOINT [-o OPTIONS] [-f]`: mount a lossfs view of BACKING.

use clap::Parser;
use lossfs::daemon::{run, MountArgs};
use std::path::PathBuf;

/// Mount BACKING at MOUNTPOINT through lossfs: every change passes through to BACKING, and
/// every change not yet made durable by fsync is remembered so that `lossctl powercut` can
/// throw it away.
#[derive(Parser, Debug)]
#[command(name = "lossfs", version, after_help = OPTIONS_HELP)]
struct Cli {
    /// The directory that holds the real data.
    backing: PathBuf,
    /// Where to mount the lossfs view of it.
    mountpoint: PathBuf,
    /// Mount options, comma separated (see below); may be given more than once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (default: return once the mount is ready, as mount(8) expects).
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
}

const OPTIONS_HELP: &str = "\
Options (-o):
  allow_other           let users other than the mounting one use the mount
  default_permissions   let the kernel check permissions from the file modes
  state_dir=PATH        undo journal directory (default BACKING/.lossfs, hidden from the mount)
  control=PATH          control socket (default /run/lossfs/<escaped mount point>.sock)
  log=LEVEL             error|warn|info|debug|trace (default warn; also env LOSSFS_LOG)
  recover=rollback|keep after the previous daemon was killed: undo its unsynced data
                        (rollback, default: the same as a power cut) or make it durable (keep)
  threads=N             FUSE worker threads (default 8)
  ro, noatime, nosuid, nodev, noexec   as for mount(8)
Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`.";

fn main() {
    let cli = Cli::parse();
    std::process::exit(run(MountArgs {
        backing: cli.backing,
        mountpoint: cli.mountpoint,
        options: cli.options,
        foreground: cli.foreground,
    }));
}
