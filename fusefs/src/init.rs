//! `lossfs run` as PID 1, the entrypoint of a container.  The kernel hands PID 1 every
//! orphaned process of its namespace (a daemonized helper of PROGRAM, a child whose parent
//! died), and nobody else reaps them: they would pile up as zombies.  So PID 1 forks at
//! once: the child goes on as the real `lossfs run`, and PID 1 stays a minimal init that
//! reaps every child that exits, passes SIGTERM, SIGINT and SIGHUP on to the run (`docker
//! stop` signals PID 1 only), and exits with the run's status.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// What PID 1 passes on: the signals `lossfs run` itself forwards to PROGRAM.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// In PID 1, forks: returns in the child, which goes on as the run; PID 1 itself never
/// returns and exits with the run's status.  Anywhere else it returns at once.  Must be
/// called while the process has a single thread (before the mount starts any).
pub fn reap_orphans_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    // Blocked across the fork, so a signal sent meanwhile waits for PID 1 to take it.
    let before = match set.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "lossfs run: as PID 1, cannot block signals ({e}); orphans will not be reaped"
            );
            return;
        }
    };
    // SAFETY: the process has one thread here (see above), so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = before.thread_set_mask();
        }
        Ok(ForkResult::Parent { child }) => std::process::exit(init(child, &set)),
        Err(e) => {
            eprintln!("lossfs run: as PID 1, cannot fork ({e}); orphans will not be reaped");
            let _ = before.thread_set_mask();
        }
    }
}

/// PID 1's loop: reap whatever exited, pass signals on, until the run itself exits.
fn init(run: Pid, signals: &SigSet) -> i32 {
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == run => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == run => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) => break,
                // An orphan reaped, or a stop/continue report.
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // ECHILD: no child left, not even the run; nothing to wait for.
                    eprintln!("lossfs run: PID 1 lost its child: {e}");
                    return 1;
                }
            }
        }
        // SIGCHLD is blocked, so one that came after the reaping above is still pending.
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(run, sig);
            }
        }
    }
}
