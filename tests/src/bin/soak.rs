//! Soak run of the power-cut stress test (see `lossfs_tests::stress` and docs/testing.md):
//!
//! ```text
//! cargo build --workspace
//! cargo run -p lossfs-tests --bin soak -- --secs 3600 --workers 4 [--seed N]
//! ```
//!
//! Mounts a fresh lossfs, runs the workers and random power cuts for the time asked, prints
//! progress and a summary (operations, cuts, divergences), and exits 0 only if there was no
//! divergence and nothing else went wrong (1: divergences, 2: another failure, such as a
//! wait not met or the daemon gone).  Must run as root, like the mounted tests.

use lossfs_tests::rng::seed_from_env_or_clock;
use lossfs_tests::stress::{self, Config};
use lossfs_tests::{Mount, MountSetup};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: soak [--secs N] [--workers N] [--seed N] [--min-delay-ms N] [--max-delay-ms N] \
         [--kill-daemon-every N]\n\
         defaults: 60 s, 4 workers, seed from LOSSFS_SEED or the clock, delays 50..400 ms, \
         every 5th cut a SIGKILL of the daemon (0: never)"
    );
    std::process::exit(2);
}

fn main() {
    let mut secs = 60u64;
    let mut workers = 4usize;
    let mut seed = None;
    let (mut min_delay_ms, mut max_delay_ms) = (50u64, 400u64);
    let mut kill_every = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--secs" => secs = val(),
            "--workers" => workers = val() as usize,
            "--seed" => seed = Some(val()),
            "--min-delay-ms" => min_delay_ms = val(),
            "--max-delay-ms" => max_delay_ms = val(),
            "--kill-daemon-every" => kill_every = val(),
            _ => usage(),
        }
    }
    if workers == 0 || min_delay_ms > max_delay_ms {
        usage();
    }
    let seed = seed.unwrap_or_else(seed_from_env_or_clock);
    println!("soak: {secs} s, {workers} workers, seed {seed} (replay with --seed {seed})");
    let cfg = Config {
        workers,
        cuts: None,
        duration: Some(Duration::from_secs(secs)),
        seed,
        min_delay_ms,
        max_delay_ms,
        kill_daemon_every: (kill_every > 0).then_some(kill_every),
        progress: Some(Duration::from_secs(10)),
    };
    // The watchdog must outlive the run: the run itself bounds every wait.
    let mut m = Mount::new_with(
        &[],
        MountSetup {
            lifetime: Some(Duration::from_secs(secs + 600)),
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    // A harness helper that panics (a bounded command that timed out) is a failure of the
    // run like any other: report it with exit status 2.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stress::run(&mut m, &cfg)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_string());
                Err(msg)
            });
    let alive = m.daemon_alive();
    let code = match &result {
        Ok(sum) => {
            for d in &sum.divergences {
                println!("DIVERGENCE: {d}");
            }
            println!(
                "soak done in {} s: {}, daemon alive: {alive}",
                t0.elapsed().as_secs(),
                sum.counts()
            );
            println!("{} (both are accepted)", sum.in_flight());
            if !sum.divergences.is_empty() {
                1
            } else if !alive {
                2
            } else {
                0
            }
        }
        Err(e) => {
            println!("soak FAILED after {} s: {e}", t0.elapsed().as_secs());
            2
        }
    };
    if code == 0 {
        m.unmount();
    }
    drop(m);
    std::process::exit(code);
}
