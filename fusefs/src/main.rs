//! `lossfs BACKING MOUNTPOINT [-o OPTIONS] [-f]`: mount a lossfs view of BACKING; and
//! `lossfs run --backing DIR --mount DIR [-o OPTIONS] [--restart] -- PROGRAM ARGS...`: mount
//! it, run PROGRAM on it, unmount when PROGRAM exits.

use clap::Parser;
use lossfs::daemon::{run, MountArgs};
use lossfs::run::RunArgs;
use std::ffi::OsString;
use std::path::PathBuf;

/// Mount BACKING at MOUNTPOINT through lossfs: every change passes through to BACKING, and
/// every change not yet made durable by fsync is remembered so that `lossctl powercut` can
/// throw it away.
#[derive(Parser, Debug)]
#[command(name = "lossfs", version, after_help = after_help())]
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

/// Mount BACKING at MOUNT, start PROGRAM once the mount is ready, forward SIGTERM, SIGINT
/// and SIGHUP to it, unmount when it exits and exit with its status (128+N if signal N
/// killed it).  A power cut that kills PROGRAM ends the run with status 137 and a message,
/// or with --restart starts PROGRAM again on the rolled-back data.
#[derive(Parser, Debug)]
#[command(name = "lossfs run", version, after_help = after_help())]
struct RunCli {
    /// The directory that holds the real data.
    #[arg(long, value_name = "DIR")]
    backing: PathBuf,
    /// Where to mount the lossfs view of it.
    #[arg(long = "mount", value_name = "DIR")]
    mountpoint: PathBuf,
    /// Mount options, comma separated (see below); may be given more than once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Start PROGRAM again after each power cut that kills it (as a machine reboots).
    #[arg(long)]
    restart: bool,
    /// The program to run and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "PROGRAM ARGS")]
    program: Vec<OsString>,
}

/// The text after the flags in `--help`: the `-o` options, from their table in options.rs.
fn after_help() -> String {
    format!(
        "{}Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`.\n\
         Run a program on a mount: lossfs run --backing DIR --mount DIR [-o OPTIONS] [--restart] \
         -- PROGRAM ARGS...",
        lossfs::options::options_help()
    )
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "run") {
        let cli = RunCli::parse_from(
            std::iter::once(OsString::from("lossfs run")).chain(argv.into_iter().skip(2)),
        );
        std::process::exit(lossfs::run::run(RunArgs {
            backing: cli.backing,
            mountpoint: cli.mountpoint,
            options: cli.options,
            restart: cli.restart,
            program: cli.program,
        }));
    }
    let cli = Cli::parse_from(argv);
    std::process::exit(run(MountArgs {
        backing: cli.backing,
        mountpoint: cli.mountpoint,
        options: cli.options,
        foreground: cli.foreground,
    }));
}
