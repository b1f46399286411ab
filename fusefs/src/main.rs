//! `lossfs BACKING MOUNTPOINT [-o OPTIONS] [-f]`: mount a lossfs view of BACKING; and
//! `lossfs run --backing DIR --mount DIR [-o OPTIONS] [--restart] -- PROGRAM ARGS...`: mount
//! it, run PROGRAM on it, unmount when PROGRAM exits; and `lossfs explore ...`: run a
//! workload on every crash state it could meet and check each (see `lossfs explore --help`).

use clap::Parser;
use lossfs::daemon::{run, MountArgs};
use lossfs::explore::ExploreArgs;
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
         -- PROGRAM ARGS...\n\
         Check a program on every crash state: lossfs explore --backing DIR --mount DIR \
         --workload CMD --check CMD",
        lossfs::options::options_help()
    )
}

/// Run WORKLOAD on a copy of BACKING mounted at MOUNT, once per crash state it could meet (a
/// cut before and after each fsync, fdatasync, fsyncdir and rename; partial cuts, --keep
/// prefix and random, before each change; cuts after the whole run), then CHECK on what the
/// cut left.  The workload prints `ACK <key>` for what it was told is durable, the check
/// prints `HAVE <key>` for what it finds; a lost acknowledged key, or a check exiting
/// non-zero, is a finding, reported with the command that replays it.  Both run with `sh -c`
/// in the mount, with LOSSFS_MOUNT (the mount point) and LOSSFS_EXPLORE_JOB (0 to J-1: the
/// job, so that parallel runs can use a port each) set.  Exit status: 0 no finding, 1 findings, 2 error.
#[derive(Parser, Debug)]
#[command(name = "lossfs explore", version, after_help = after_help())]
struct ExploreCli {
    /// The template directory every state starts from (copied, never modified).
    #[arg(long, value_name = "DIR")]
    backing: PathBuf,
    /// Where to mount the copies (with --jobs N, also MOUNT.job1 ... are used).
    #[arg(long = "mount", value_name = "DIR")]
    mountpoint: PathBuf,
    /// Mount options, as for a normal mount; may be given more than once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// The workload, a shell command; it prints `ACK <key>` lines.
    #[arg(long, value_name = "CMD")]
    workload: String,
    /// The recovery check, a shell command; it prints `HAVE <key>` lines, and exits
    /// non-zero on what it considers broken.
    #[arg(long, value_name = "CMD")]
    check: String,
    /// Visit at most N states (chosen evenly when there are more).
    #[arg(long, value_name = "N", default_value_t = 100)]
    states: usize,
    /// Seed of the partial cuts' draws (default: drawn, and reported).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// States explored at the same time, each on a mount of its own.
    #[arg(long, value_name = "J", default_value_t = 1)]
    jobs: usize,
    /// Bound of each workload and check run, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Only this state, as a finding's replay command gives it (e.g. crash:fsync:3:after).
    #[arg(long, value_name = "STATE", value_parser = lossfs::explore::state::State::parse)]
    state: Option<lossfs::explore::state::State>,
}

impl From<Cli> for MountArgs {
    fn from(c: Cli) -> MountArgs {
        MountArgs {
            backing: c.backing,
            mountpoint: c.mountpoint,
            options: c.options,
            foreground: c.foreground,
        }
    }
}

impl From<RunCli> for RunArgs {
    fn from(c: RunCli) -> RunArgs {
        RunArgs {
            backing: c.backing,
            mountpoint: c.mountpoint,
            options: c.options,
            restart: c.restart,
            program: c.program,
        }
    }
}

impl From<ExploreCli> for ExploreArgs {
    fn from(c: ExploreCli) -> ExploreArgs {
        ExploreArgs {
            backing: c.backing,
            mountpoint: c.mountpoint,
            options: c.options,
            workload: c.workload,
            check: c.check,
            states: c.states,
            seed: c.seed,
            jobs: c.jobs,
            timeout: std::time::Duration::from_secs(c.timeout.max(1)),
            json: c.json,
            only: c.state,
        }
    }
}

/// The arguments after `lossfs NAME` as the subcommand's `C`, named `lossfs NAME` in its
/// help and errors.
fn parse_subcommand<C: Parser>(name: &str, argv: Vec<OsString>) -> C {
    C::parse_from(
        std::iter::once(OsString::from(format!("lossfs {name}"))).chain(argv.into_iter().skip(2)),
    )
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // `run` and `explore` are words, not paths: a BACKING named so is given as ./run.
    let status = match argv.get(1).and_then(|a| a.to_str()) {
        Some("run") => lossfs::run::run(parse_subcommand::<RunCli>("run", argv).into()),
        Some("explore") => {
            lossfs::explore::run(parse_subcommand::<ExploreCli>("explore", argv).into())
        }
        _ => run(Cli::parse_from(argv).into()),
    };
    std::process::exit(status);
}
