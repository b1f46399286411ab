//! `lossctl`: the command line client of running lossfs mounts.  Owns finding a mount's control
//! socket from a path (through /proc/self/mountinfo), the commands, their output and the
//! exit codes scripts rely on.

use clap::{CommandFactory, Parser, Subcommand};
use lossfs::control::{self, ClientError, Request};
use lossfs::faultspec::{CrashSpec, FaultCommand, FaultSpec, Op, When, MAX_DELAY_MS};
use lossfs::keep::{check_granularity, KeepMode, KeepRequest};
use lossfs::mountinfo::{self, MountEntry, FSTYPE};
use lossfs::report::{FaultsStatus, PowercutReport, StatusReport, SyncReport};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes (stable, for scripts):
  0  success
  1  the lossfs daemon answered with an error
  2  usage error (bad arguments, or several lossfs mounts and none named)
  3  not a lossfs mount, no such path, no lossfs mount at all, or cannot connect to the
     control socket (is the daemon running?)
  4  no valid answer: timed out, or the reply was not understood

With --all, the highest code of any mount is returned; the other mounts are still cut.";

#[derive(Parser, Debug)]
#[command(
    name = "lossctl",
    version,
    about = "Control running lossfs mounts: show unsynced data, sync, cut the power",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the daemon's report as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Talk to this control socket directly instead of finding it from the mount point.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the unsynced bytes of every file, and in total.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
    },
    /// Make every file of the mount durable, like sync(1).
    #[command(after_help = EXIT_CODES)]
    Sync {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
    },
    /// Cut the power: kill the processes using the mount and roll every file back to its
    /// last durable state.
    #[command(after_help = EXIT_CODES)]
    Powercut {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        #[arg(conflicts_with = "all")]
        mountpoint: Option<PathBuf>,
        /// Do not kill the processes using the mount (the caller kills them itself).
        #[arg(long)]
        no_kill: bool,
        /// Cut every lossfs mount on the host at once (JSON output is an array of reports).
        #[arg(long)]
        all: bool,
        /// What survives of the unsynced data: none (all lost), all (all kept), prefix (per
        /// file, a random-length prefix of its unsynced operations) or random (a random
        /// subset of its unsynced blocks).  Rules: docs/fault-model.md.
        #[arg(long, value_name = "MODE", default_value = "none", value_parser = parse_keep_mode)]
        keep: KeepMode,
        /// Seed of the prefix/random draws; the report prints the one used, give it back to
        /// replay the same crash state.
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Block size of --keep random: a power of two from 512 to 1048576 (default 4096).
        #[arg(long, value_name = "BYTES", value_parser = parse_granularity)]
        granularity: Option<u64>,
    },
    /// Arm a crash point: cut the power exactly at an operation.
    #[command(after_help = EXIT_CODES)]
    Arm {
        #[command(subcommand)]
        what: ArmCmd,
    },
    /// Remove the armed crash point (fault rules stay).
    #[command(after_help = EXIT_CODES)]
    Disarm {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
    },
    /// Inject errors, delays and fsync lies; disk-full mode.
    #[command(after_help = EXIT_CODES)]
    Fault {
        #[command(subcommand)]
        what: FaultCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ArmCmd {
    /// Cut the power (kill the users, roll back) at the Nth operation OP matching --path,
    /// before it is applied (default) or after it is applied and before its answer.  Fires
    /// once; `lossctl status` shows it and the cut's report.
    #[command(after_help = EXIT_CODES)]
    Powercut {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
        /// The operation: write, fsync, fdatasync, rename, create, unlink, mkdir, rmdir,
        /// link, symlink, truncate, fallocate, open, ... (see docs/fault-model.md).
        #[arg(long, value_parser = parse_op)]
        op: Op,
        /// Only operations on paths matching this pattern, relative to the mount root
        /// (`*`, `?`, `[...]`, `**`); a rename matches by its old or new path.
        #[arg(long, value_name = "GLOB")]
        path: Option<String>,
        /// Cut at the Nth matching operation (default 1).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..))]
        nth: u64,
        /// Cut before the operation is applied (the default).
        #[arg(long, conflicts_with = "after")]
        before: bool,
        /// Cut after the operation is applied, before the program sees the answer.
        #[arg(long)]
        after: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FaultCmd {
    /// Add a fault rule: matching operations fail with an errno, are delayed, or (fsync,
    /// fdatasync, fsyncdir) succeed without making anything durable.
    #[command(after_help = EXIT_CODES)]
    Add {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
        /// The operation (see `lossctl arm powercut --help`).
        #[arg(long, value_parser = parse_op)]
        op: Op,
        /// Only operations on paths matching this pattern, relative to the mount root.
        #[arg(long, value_name = "GLOB")]
        path: Option<String>,
        /// Fail with this errno: EIO, ENOSPC, EDQUOT, EROFS, EPERM, ...
        #[arg(long, value_name = "ERRNO", required_unless_present_any = ["delay", "lie"],
              conflicts_with_all = ["delay", "lie"])]
        errno: Option<String>,
        /// Delay the operation (e.g. 200ms, 2s) on its own thread, then do it.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms,
              conflicts_with = "lie")]
        delay: Option<u64>,
        /// fsync/fdatasync/fsyncdir answer success and make nothing durable.
        #[arg(long)]
        lie: bool,
        /// Fire from the Nth match on (default 1).
        #[arg(long, value_name = "N", conflicts_with = "probability",
              value_parser = clap::value_parser!(u64).range(1..))]
        nth: Option<u64>,
        /// Fire on each match with this probability (0 to 1); needs --seed.
        #[arg(long, value_name = "P", requires = "seed")]
        probability: Option<f64>,
        /// Seed of the generator behind --probability: same seed, same faults.
        #[arg(long, value_name = "S", requires = "probability")]
        seed: Option<u64>,
        /// Fire at most K times (default: no limit).
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// List the fault rules, the crash point and the disk-full mode.
    #[command(after_help = EXIT_CODES)]
    List {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
    },
    /// Remove one fault rule by ID, or all of them; delays in progress end at once.
    #[command(after_help = EXIT_CODES)]
    Clear {
        /// `[MOUNTPOINT] [ID]`; a lone number is an ID.
        #[arg(num_args = 0..=2, value_name = "MOUNTPOINT|ID")]
        args: Vec<String>,
    },
    /// Disk-full mode: writes, fallocates and creates fail with ENOSPC once the mount
    /// holds more than --limit bytes (sizes like 10M or 1G are accepted).
    #[command(name = "disk-full", after_help = EXIT_CODES)]
    DiskFull {
        /// The lossfs mount point; may be left out when exactly one lossfs mount exists.
        mountpoint: Option<PathBuf>,
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes,
              required_unless_present = "clear", conflicts_with = "clear")]
        limit: Option<u64>,
        /// End disk-full mode.
        #[arg(long)]
        clear: bool,
    },
}

fn parse_op(s: &str) -> Result<Op, String> {
    Op::parse(s)
}

/// `250ms`, `2s`, `1.5s`, `1m` -> milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(format!("{s:?}: give a unit, e.g. 200ms, 2s or 1m"));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 200ms, 2s, 1m)"))?;
    let ms = (v * scale).round();
    if !(1.0..=MAX_DELAY_MS as f64).contains(&ms) {
        return Err(format!("{s:?}: a delay is from 1ms to 1h"));
    }
    Ok(ms as u64)
}

/// `4096`, `64K`, `10M`, `1G` (binary multiples) -> bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size in bytes (e.g. 1048576, 64K, 10M, 1G)"))
}

fn parse_keep_mode(s: &str) -> Result<KeepMode, String> {
    s.parse()
}

fn parse_granularity(s: &str) -> Result<u64, String> {
    let g: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    check_granularity(g)
}

/// The keep part of a powercut request, checked like the daemon checks it.
fn keep_request(
    mode: KeepMode,
    seed: Option<u64>,
    granularity: Option<u64>,
) -> Result<KeepRequest, Failure> {
    if granularity.is_some() && mode != KeepMode::Random {
        return Err(Failure::Usage(format!(
            "--granularity applies to --keep random only (not --keep {mode})"
        )));
    }
    Ok(KeepRequest {
        mode,
        seed,
        granularity,
    })
}

/// A failure, with the exit code it maps to.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Daemon(String),
    Usage(String),
    NotLossfs(String),
    NoAnswer(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Daemon(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotLossfs(_) => 3,
            Failure::NoAnswer(_) => 4,
        }
    }
    /// The failure as `--json` prints it: `{"error": "...", "exit_code": N}`.
    fn to_json(&self) -> Value {
        serde_json::json!({ "error": self.message(), "exit_code": self.code() })
    }

    fn message(&self) -> &str {
        match self {
            Failure::Daemon(m)
            | Failure::Usage(m)
            | Failure::NotLossfs(m)
            | Failure::NoAnswer(m) => m,
        }
    }
}

/// Where to send a request, and what to call it in messages.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    name: String,
    socket: PathBuf,
}

impl Target {
    fn of_mount(mount_point: &Path) -> Target {
        Target {
            name: mount_point.display().to_string(),
            socket: control::default_socket_path(mount_point),
        }
    }
}

/// One entry per lossfs filesystem: a bind mount of a lossfs mount shares its device number
/// and its daemon, which only serves the mount point it was started on.
fn distinct_lossfs(mounts: &[MountEntry]) -> Vec<&MountEntry> {
    let mut out: Vec<&MountEntry> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == FSTYPE) {
        match out
            .iter_mut()
            .find(|o| (o.major, o.minor) == (m.major, m.minor))
        {
            Some(o) => {
                let served = |e: &MountEntry| control::default_socket_path(&e.mount_point).exists();
                if !served(o) && served(m) {
                    *o = m;
                }
            }
            None => out.push(m),
        }
    }
    out
}

fn list(mounts: &[&MountEntry]) -> String {
    mounts
        .iter()
        .map(|m| m.mount_point.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mount to use when none is named: the only lossfs mount there is.
fn pick_default(mounts: &[MountEntry]) -> Result<Target, Failure> {
    match distinct_lossfs(mounts).as_slice() {
        [] => Err(Failure::NotLossfs(
            "no lossfs mount found on this host".into(),
        )),
        [one] => Ok(Target::of_mount(&one.mount_point)),
        several => Err(Failure::Usage(format!(
            "{} lossfs mounts exist, name one: {}",
            several.len(),
            list(several)
        ))),
    }
}

/// The lossfs mount whose root is `arg` (compared with the kernel's mount table, after
/// resolving symlinks; only the mount root is stat()ed, never anything inside).
fn resolve(arg: &Path, mounts: &[MountEntry]) -> Result<Target, Failure> {
    let canon = std::fs::canonicalize(arg).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Failure::NotLossfs(format!("{}: no such file or directory", arg.display()))
        } else {
            Failure::NotLossfs(format!("{}: {e}", arg.display()))
        }
    })?;
    match mountinfo::topmost_at(mounts, &canon) {
        Some(m) if m.fstype == FSTYPE => return Ok(Target::of_mount(&m.mount_point)),
        _ => {}
    }
    let shown = arg.display();
    Err(Failure::NotLossfs(
        match mountinfo::containing(mounts, &canon) {
            Some(m) if m.fstype == FSTYPE => format!(
                "{shown} is not a lossfs mount (it is inside the lossfs mount {}; name that)",
                m.mount_point.display()
            ),
            Some(m) => format!(
                "{shown} is not a lossfs mount (it is on {} mounted at {})",
                m.fstype,
                m.mount_point.display()
            ),
            None => format!("{shown} is not a lossfs mount (no mount contains it)"),
        },
    ))
}

fn mount_table() -> Result<Vec<MountEntry>, Failure> {
    mountinfo::read().map_err(|e| Failure::NotLossfs(e.to_string()))
}

fn target(cli: &Cli, mountpoint: Option<&Path>) -> Result<Target, Failure> {
    match (&cli.socket, mountpoint) {
        (Some(_), Some(_)) => Err(Failure::Usage(
            "give either --socket or a mount point, not both".into(),
        )),
        (Some(s), None) => Ok(Target {
            name: s.display().to_string(),
            socket: s.clone(),
        }),
        (None, Some(p)) => resolve(p, &mount_table()?),
        (None, None) => pick_default(&mount_table()?),
    }
}

fn ask(cli: &Cli, t: &Target, req: &Request) -> Result<Value, Failure> {
    control::call(&t.socket, req, Duration::from_secs(cli.timeout)).map_err(|e| match e {
        ClientError::Server(m) => Failure::Daemon(format!("{}: {m}", t.name)),
        ClientError::Connect { ref source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            // The socket is 0600: only its owner (and root) may connect.
            Failure::NotLossfs(format!(
                "{}: {e} (only root and the user running the lossfs daemon may control it)",
                t.name
            ))
        }
        e @ ClientError::Connect { .. } => {
            Failure::NotLossfs(format!("{}: {e} (is the lossfs daemon running?)", t.name))
        }
        e @ (ClientError::Timeout { .. } | ClientError::Protocol { .. }) => {
            Failure::NoAnswer(format!("{}: {e}", t.name))
        }
    })
}

/// The report as the user asked for it: the daemon's JSON as is (fields this lossctl does not
/// know survive), or the text rendering of the decoded report.
fn render(
    cli: &Cli,
    t: &Target,
    value: Value,
    text: impl Fn(Value) -> Result<String, serde_json::Error>,
) -> Result<String, Failure> {
    if cli.json {
        return Ok(format!("{value}\n"));
    }
    text(value).map_err(|e| {
        Failure::NoAnswer(format!(
            "{}: report not understood (lossctl too old?): {e}",
            t.name
        ))
    })
}

fn status_text(v: Value) -> Result<String, serde_json::Error> {
    serde_json::from_value::<StatusReport>(v).map(|r| r.to_text())
}

fn sync_text(v: Value) -> Result<String, serde_json::Error> {
    serde_json::from_value::<SyncReport>(v).map(|r| r.to_text())
}

fn powercut_text(v: Value) -> Result<String, serde_json::Error> {
    serde_json::from_value::<PowercutReport>(v).map(|r| r.to_text())
}

fn faults_text(v: Value) -> Result<String, serde_json::Error> {
    serde_json::from_value::<FaultsStatus>(v).map(|r| r.to_text())
}

fn run_one(cli: &Cli, mountpoint: Option<&Path>, req: Request) -> Result<String, Failure> {
    let t = target(cli, mountpoint)?;
    let value = ask(cli, &t, &req)?;
    match req {
        Request::Status => render(cli, &t, value, status_text),
        Request::Sync => render(cli, &t, value, sync_text),
        Request::Powercut { .. } => render(cli, &t, value, powercut_text),
        Request::Faults(_) => render(cli, &t, value, faults_text),
    }
}

/// The request a fault subcommand sends, and the mount it names.
fn fault_request(cmd: &Cmd) -> Result<(Option<PathBuf>, FaultCommand), Failure> {
    Ok(match cmd {
        Cmd::Arm {
            what:
                ArmCmd::Powercut {
                    mountpoint,
                    op,
                    path,
                    nth,
                    after,
                    ..
                },
        } => (
            mountpoint.clone(),
            FaultCommand::Arm(CrashSpec {
                op: *op,
                path: path.clone(),
                nth: *nth,
                when: if *after { When::After } else { When::Before },
            }),
        ),
        Cmd::Disarm { mountpoint } => (mountpoint.clone(), FaultCommand::Disarm),
        Cmd::Fault { what } => match what {
            FaultCmd::Add {
                mountpoint,
                op,
                path,
                errno,
                delay,
                lie,
                nth,
                probability,
                seed,
                count,
            } => (
                mountpoint.clone(),
                FaultCommand::Add(FaultSpec {
                    op: Some(*op),
                    path: path.clone(),
                    errno: errno.clone(),
                    delay_ms: *delay,
                    lie: *lie,
                    nth: *nth,
                    probability: *probability,
                    seed: *seed,
                    count: *count,
                }),
            ),
            FaultCmd::List { mountpoint } => (mountpoint.clone(), FaultCommand::List),
            FaultCmd::Clear { args } => {
                let (mp, id) = match args.as_slice() {
                    [] => (None, None),
                    [one] => match one.parse::<u64>() {
                        Ok(id) => (None, Some(id)),
                        Err(_) => (Some(PathBuf::from(one)), None),
                    },
                    [mp, id] => (
                        Some(PathBuf::from(mp)),
                        Some(id.parse::<u64>().map_err(|_| {
                            Failure::Usage(format!("fault clear: {id:?} is not a rule id"))
                        })?),
                    ),
                    _ => return Err(Failure::Usage("fault clear takes [MOUNTPOINT] [ID]".into())),
                };
                (mp, FaultCommand::Clear(id))
            }
            FaultCmd::DiskFull {
                mountpoint, limit, ..
            } => (mountpoint.clone(), FaultCommand::DiskFull(*limit)),
        },
        _ => return Err(Failure::Usage("not a fault command".into())),
    })
}

/// Cuts every lossfs mount, all at the same time (one thread each) so that processes on one
/// mount do not keep running long after another mount lost its data.
fn powercut_all(cli: &Cli, no_kill: bool, keep: KeepRequest) -> (String, Vec<Failure>) {
    if cli.socket.is_some() {
        return (
            String::new(),
            vec![Failure::Usage(
                "--all and --socket exclude each other".into(),
            )],
        );
    }
    let mounts = match mount_table() {
        Ok(m) => m,
        Err(f) => return (String::new(), vec![f]),
    };
    let targets: Vec<Target> = distinct_lossfs(&mounts)
        .into_iter()
        .map(|m| Target::of_mount(&m.mount_point))
        .collect();
    if targets.is_empty() {
        return (
            if cli.json {
                "[]\n".into()
            } else {
                String::new()
            },
            vec![Failure::NotLossfs(
                "no lossfs mount found on this host".into(),
            )],
        );
    }
    // One number replays a host-wide cut, but each mount draws from its own seed, derived
    // from that number and its mount point: mounts with the same relative paths (replicas)
    // lose different blocks, as independent machines would.  (Left out of plain cuts, which
    // daemons without --keep must still accept.)
    let host_seed = keep
        .mode
        .is_seeded()
        .then(|| keep.seed.unwrap_or_else(lossfs::prng::fresh_seed));
    let reqs: Vec<Request> = targets
        .iter()
        .map(|t| Request::Powercut {
            no_kill,
            keep: KeepRequest {
                seed: host_seed.map(|s| mount_seed(s, &t.name)),
                ..keep
            },
        })
        .collect();
    let answers: Vec<Result<Value, Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .zip(&reqs)
            .map(|(t, req)| s.spawn(move || ask(cli, t, req)))
            .collect();
        handles
            .into_iter()
            .zip(&targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| {
                    Err(Failure::NoAnswer(format!(
                        "{}: the request thread panicked",
                        t.name
                    )))
                })
            })
            .collect()
    });
    let answers = answers.into_iter().map(|a| {
        a.map(|mut v| {
            if let (Some(h), Some(o)) = (host_seed, v.as_object_mut()) {
                o.insert("host_seed".into(), h.into());
            }
            v
        })
    });
    let mut failures = Vec::new();
    let mut values = Vec::new();
    let mut text = match host_seed {
        Some(h) if !cli.json => format!(
            "host seed {h}: each mount's seed below is derived from it and the mount point \
             (replay one mount with lossctl powercut MNT --keep {} --seed SEED)\n",
            keep.mode.as_str()
        ),
        _ => String::new(),
    };
    for (answer, t) in answers.zip(&targets) {
        match answer {
            Ok(v) if cli.json => values.push(v),
            Ok(v) => match render(cli, t, v, powercut_text) {
                Ok(s) => text.push_str(&s),
                Err(f) => failures.push(f),
            },
            Err(f) => {
                // A mount that was not cut is in the JSON too, so a script sees every mount.
                if cli.json {
                    let mut e = f.to_json();
                    e["mountpoint"] = Value::from(t.name.as_str());
                    values.push(e);
                }
                failures.push(f);
            }
        }
    }
    if cli.json {
        text = format!("{}\n", Value::Array(values));
    }
    (text, failures)
}

/// The seed one mount of a `--all` cut draws from: depends on the host seed and the mount
/// point only, so the same command on the same mounts replays the same crash states.
fn mount_seed(host_seed: u64, mount_point: &str) -> u64 {
    lossfs::prng::SplitMix64::for_item(host_seed, mount_point.as_bytes()).next_u64()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (out, failures) = match &cli.cmd {
        Cmd::Powercut {
            mountpoint,
            no_kill,
            all,
            keep,
            seed,
            granularity,
        } => match keep_request(*keep, *seed, *granularity) {
            Err(f) => (String::new(), vec![f]),
            Ok(keep) if *all => powercut_all(&cli, *no_kill, keep),
            Ok(keep) => split(run_one(
                &cli,
                mountpoint.as_deref(),
                Request::Powercut {
                    no_kill: *no_kill,
                    keep,
                },
            )),
        },
        Cmd::Status { mountpoint } => split(run_one(&cli, mountpoint.as_deref(), Request::Status)),
        Cmd::Sync { mountpoint } => split(run_one(&cli, mountpoint.as_deref(), Request::Sync)),
        cmd @ (Cmd::Arm { .. } | Cmd::Disarm { .. } | Cmd::Fault { .. }) => split(
            fault_request(cmd).and_then(|(mp, c)| run_one(&cli, mp.as_deref(), Request::Faults(c))),
        ),
    };
    // With --json, stdout is JSON whatever happens: a command that failed before it had
    // anything to print prints its error as JSON (the message goes to stderr as well).
    if cli.json && out.is_empty() {
        if let Some(f) = failures.first() {
            println!("{}", f.to_json());
        }
    }
    print!("{out}");
    let mut code = 0;
    for f in &failures {
        if let Failure::Usage(m) = f {
            // clap's usage error format and exit code (2), for consistency with bad flags.
            let _ = Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, m)
                .print();
        } else {
            eprintln!("lossctl: {}", f.message());
        }
        code = code.max(f.code());
    }
    ExitCode::from(code)
}

fn split(r: Result<String, Failure>) -> (String, Vec<Failure>) {
    match r {
        Ok(s) => (s, Vec::new()),
        Err(f) => (String::new(), vec![f]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, minor: u32, mp: &str, fstype: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: 1,
            major: 0,
            minor,
            root: "/".into(),
            mount_point: mp.into(),
            fstype: fstype.into(),
            source: "/backing".into(),
        }
    }

    #[test]
    fn default_mount_needs_exactly_one_lossfs_filesystem() {
        let root = entry(1, 1, "/", "ext4");
        assert_eq!(
            pick_default(std::slice::from_ref(&root)),
            Err(Failure::NotLossfs(
                "no lossfs mount found on this host".into()
            ))
        );
        let a = entry(2, 50, "/var/lib/kafka", FSTYPE);
        let t = pick_default(&[root.clone(), a.clone()]).unwrap();
        assert_eq!(t.socket, Path::new("/run/lossfs/var-lib-kafka.sock"));
        // A bind mount of the same filesystem is not a second mount.
        let bind = entry(3, 50, "/srv/kafka-view", FSTYPE);
        assert!(pick_default(&[root.clone(), a.clone(), bind]).is_ok());
        let b = entry(4, 51, "/var/lib/etcd", FSTYPE);
        match pick_default(&[root, a, b]) {
            Err(f @ Failure::Usage(_)) => {
                assert!(
                    f.message().contains("/var/lib/kafka, /var/lib/etcd"),
                    "{f:?}"
                );
                assert_eq!(f.code(), 2);
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn resolve_names_the_mount_a_path_is_on() {
        let mounts = vec![entry(1, 1, "/", "ext4"), entry(2, 50, "/tmp", FSTYPE)];
        assert_eq!(
            resolve(Path::new("/tmp/"), &mounts).unwrap().socket,
            Path::new("/run/lossfs/tmp.sock")
        );
        let f = resolve(Path::new("/proc/self"), &mounts).unwrap_err();
        assert_eq!(f.code(), 3);
        assert!(
            f.message().contains("(it is on ext4 mounted at /)"),
            "{f:?}"
        );
        let f = resolve(Path::new("/definitely/not/here"), &mounts).unwrap_err();
        assert_eq!(
            f,
            Failure::NotLossfs("/definitely/not/here: no such file or directory".into())
        );
    }

    #[test]
    fn keep_arguments_are_checked_before_anything_is_cut() {
        let f = keep_request(KeepMode::Prefix, Some(1), Some(512)).unwrap_err();
        assert_eq!(f.code(), 2);
        assert!(f.message().contains("--keep random only"), "{f:?}");
        let k = keep_request(KeepMode::Random, Some(7), Some(512)).unwrap();
        assert_eq!(
            (k.mode, k.seed, k.granularity),
            (KeepMode::Random, Some(7), Some(512))
        );
        let cli = Cli::try_parse_from(["lossctl", "powercut", "--keep", "prefix", "--seed", "9"])
            .unwrap();
        match cli.cmd {
            Cmd::Powercut { keep, seed, .. } => {
                assert_eq!((keep, seed), (KeepMode::Prefix, Some(9)))
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["lossctl", "powercut", "--keep", "some"]).is_err());
        assert!(Cli::try_parse_from(["lossctl", "powercut", "--seed", "-1"]).is_err());
        assert!(Cli::try_parse_from([
            "lossctl",
            "powercut",
            "--keep",
            "random",
            "--granularity",
            "4095"
        ])
        .is_err());
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert!(parse_duration_ms("5").unwrap_err().contains("give a unit"));
        assert!(parse_duration_ms("0ms").is_err());
        assert!(parse_duration_ms("2h").is_err());
        assert!(parse_duration_ms("xs").is_err());
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64K"), Ok(65536));
        assert_eq!(parse_bytes("10M"), Ok(10 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn fault_clear_takes_a_mount_an_id_or_both() {
        let req = |args: &[&str]| {
            let mut v = vec!["lossctl", "fault", "clear"];
            v.extend_from_slice(args);
            fault_request(&Cli::try_parse_from(v).unwrap().cmd)
        };
        assert_eq!(req(&[]), Ok((None, FaultCommand::Clear(None))));
        assert_eq!(req(&["3"]), Ok((None, FaultCommand::Clear(Some(3)))));
        assert_eq!(
            req(&["/mnt"]),
            Ok((Some(PathBuf::from("/mnt")), FaultCommand::Clear(None)))
        );
        assert_eq!(
            req(&["/mnt", "4"]),
            Ok((Some(PathBuf::from("/mnt")), FaultCommand::Clear(Some(4))))
        );
        assert_eq!(req(&["/mnt", "x"]).unwrap_err().code(), 2);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
