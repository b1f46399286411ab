//! `lossfs run --backing DIR --mount DIR [-o OPTIONS] [--restart] -- PROGRAM ARGS...`:
//! mounts lossfs in this process (the same [`daemon::serve`] as a normal mount), starts
//! PROGRAM once the mount is ready, forwards SIGTERM, SIGINT and SIGHUP to it, and unmounts
//! when it exits, exiting with its status (128+N if signal N killed it).
//!
//! A power cut that kills PROGRAM ends the run with [`EXIT_POWERCUT`] (137, as for any
//! SIGKILL) and a message saying it was a power cut; with `--restart` PROGRAM is started
//! again on the rolled-back data instead, once per cut, like a machine that reboots after
//! each power failure.  A PROGRAM that exits on its own, or is killed by anything other than
//! a cut, always ends the run.

use crate::daemon::{self, MountArgs, Mounted, SignalHook};
use crate::options;
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

/// Exit code of `lossfs run` when a power cut killed PROGRAM and `--restart` was not given.
pub const EXIT_POWERCUT: i32 = 128 + libc::SIGKILL;
/// Exit code when PROGRAM cannot be started (as a shell does for a command not found).
pub const EXIT_NOT_STARTED: i32 = 127;

/// How long `run` waits for a power cut that killed PROGRAM to finish its rollback.
const CUT_END_TIMEOUT: Duration = Duration::from_secs(180);

/// What `lossfs run` was asked for.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// Directory that holds the real data.
    pub backing: PathBuf,
    /// Where to mount the lossfs view.
    pub mountpoint: PathBuf,
    /// `-o` options, as for a normal mount.
    pub options: Vec<String>,
    /// Start PROGRAM again after a power cut kills it.
    pub restart: bool,
    /// PROGRAM and its arguments.
    pub program: Vec<OsString>,
}

/// The running PROGRAM, shared with the signal thread.
#[derive(Default)]
struct ChildSlot {
    /// Pid of the unreaped PROGRAM, 0 if none runs.
    pid: i32,
    /// The termination signal that asked the run to stop, if any.
    stop: Option<Signal>,
}

/// Entry of `lossfs run`: returns the process exit code.
pub fn run(args: RunArgs) -> i32 {
    let opts = match options::parse_mount_options(&args.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lossfs run: {e}");
            return 2;
        }
    };
    if args.program.is_empty() {
        eprintln!("lossfs run: no PROGRAM given (lossfs run --backing DIR --mount DIR -- PROGRAM ARGS...)");
        return 2;
    }
    // Before anything starts a thread: as PID 1, fork off an init that reaps orphans.
    crate::init::reap_orphans_if_pid1();
    daemon::init_logging(opts.log.as_deref());
    let slot = Arc::new(Mutex::new(ChildSlot::default()));
    let sig_slot = slot.clone();
    let on_signal: SignalHook = Arc::new(move |sig: Signal| {
        let mut s = sig_slot.lock();
        s.stop.get_or_insert(sig);
        if s.pid > 0 {
            // SAFETY: kill(2) of our own unreaped child: the supervisor clears the pid
            // under this lock before reaping it, so the pid cannot have been reused.
            unsafe { libc::kill(s.pid, sig as i32) };
        }
        // PROGRAM decides when it is done; the supervisor unmounts after it exits.
        false
    });
    let code = Arc::new(Mutex::new(None::<i32>));
    let supervisor = Mutex::new(None::<std::thread::JoinHandle<()>>);
    let mount_args = MountArgs {
        backing: args.backing.clone(),
        mountpoint: args.mountpoint.clone(),
        options: args.options.clone(),
        foreground: true,
    };
    let ready = |m: Mounted| {
        let (slot, code_out, args) = (slot.clone(), code.clone(), args.clone());
        let spawned = std::thread::Builder::new()
            .name("lossfs-run".into())
            .spawn(move || {
                let c = supervise(&args, &m, &slot);
                *code_out.lock() = Some(c);
                m.unmounter.unmount_or_detach();
            });
        match spawned {
            Ok(h) => *supervisor.lock() = Some(h),
            Err(e) => {
                eprintln!("lossfs run: cannot start the supervisor thread: {e}");
                *code.lock() = Some(1);
            }
        }
    };
    let served = daemon::serve(&mount_args, &opts, &ready, Some(on_signal));
    // The mount is gone.  If it went away under a running PROGRAM (someone unmounted it),
    // stop PROGRAM: it has lost its data directory.
    {
        let mut s = slot.lock();
        s.stop.get_or_insert(Signal::SIGTERM);
        if s.pid > 0 {
            eprintln!(
                "lossfs run: {} was unmounted while {} was running; sending it SIGTERM",
                args.mountpoint.display(),
                args.program[0].to_string_lossy()
            );
            // SAFETY: as in the signal hook: the pid is our unreaped child.
            unsafe { libc::kill(s.pid, libc::SIGTERM) };
        }
    }
    if let Some(h) = supervisor.lock().take() {
        let _ = h.join();
    }
    if let Err(e) = served {
        eprintln!("lossfs run: {e}");
        if code.lock().is_none() {
            return 1;
        }
    }
    let c = code.lock().unwrap_or(1);
    c
}

/// Exit code for a PROGRAM status: its code, or 128+N if signal N killed it.
fn status_code(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Starts PROGRAM (again after each power cut with `--restart`) and returns the run's exit
/// code once it is done.
fn supervise(args: &RunArgs, m: &Mounted, slot: &Mutex<ChildSlot>) -> i32 {
    let name = args.program[0].to_string_lossy().into_owned();
    let mut starts = 0u64;
    loop {
        let cuts_before = m.daemon.cuts_started();
        let mut cmd = Command::new(&args.program[0]);
        cmd.args(&args.program[1..]);
        let (umask, nofile) = (m.umask, m.nofile);
        // SAFETY: the closure only makes async-signal-safe calls (sigemptyset, sigprocmask,
        // umask, setrlimit) on its own stack data: PROGRAM gets no blocked signals (the
        // daemon blocks the termination signals in every thread, and the mask is inherited)
        // and the umask and fd limit `lossfs run` was started with.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                libc::umask(umask);
                if let Some(rl) = nofile {
                    libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
                }
                Ok(())
            });
        }
        let mut child = {
            let mut s = slot.lock();
            if let Some(sig) = s.stop {
                return if starts == 0 {
                    128 + sig as i32
                } else {
                    EXIT_POWERCUT
                };
            }
            match cmd.spawn() {
                Ok(c) => {
                    s.pid = c.id() as i32;
                    c
                }
                Err(e) => {
                    eprintln!("lossfs run: cannot start {name}: {e}");
                    return EXIT_NOT_STARTED;
                }
            }
        };
        starts += 1;
        tracing::info!("started {name} (pid {})", child.id());
        wait_exited(child.id() as i32);
        let status = {
            let mut s = slot.lock();
            s.pid = 0;
            child.wait()
        };
        let status = match status {
            Ok(st) => st,
            Err(e) => {
                eprintln!("lossfs run: waiting for {name}: {e}");
                return 1;
            }
        };
        let cut = status.signal() == Some(libc::SIGKILL) && m.daemon.cuts_started() > cuts_before;
        if !cut {
            return status_code(status);
        }
        if !m.daemon.wait_cuts_ended(CUT_END_TIMEOUT) {
            eprintln!(
                "lossfs run: the power cut that killed {name} did not finish within {CUT_END_TIMEOUT:?}"
            );
            return EXIT_POWERCUT;
        }
        if !args.restart {
            eprintln!(
                "lossfs run: {name} (pid {}) was killed by a power cut; exiting with {EXIT_POWERCUT} (use --restart to start it again)",
                child.id()
            );
            return EXIT_POWERCUT;
        }
        eprintln!(
            "lossfs run: {name} (pid {}) was killed by a power cut; starting it again on the rolled-back data",
            child.id()
        );
    }
}

/// Waits until the child `pid` has exited, without reaping it (so its pid stays ours until
/// the caller reaps it under the slot lock).
fn wait_exited(pid: i32) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid out-buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid out-buffer; WNOWAIT leaves it
        // unreaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}
