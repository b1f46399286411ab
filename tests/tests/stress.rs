//! Several worker processes do mixed I/O (appends, overwrites, truncates, fsync, fdatasync,
//! temp file + rename, shared mmap stores + msync) on one mount while `lossctl powercut`
//! fires at seeded random moments; after every cut each worker's files must equal the
//! durable state its reports predict, the daemon must be alive, and every wait is bounded.
//! Every 6th cut is a SIGKILL of the daemon itself under load, then a remount
//! (see `lossfs_tests::stress`).  `LOSSFS_SEED` replays a seed; `LOSSFS_STRESS_CUTS`
//! overrides the number of cuts.  The long version is the `soak` binary (docs/testing.md).

use lossfs_tests::rng::seed_from_env_or_clock;
use lossfs_tests::stress::{self, Config};
use lossfs_tests::Mount;

fn cuts() -> u64 {
    match std::env::var("LOSSFS_STRESS_CUTS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("LOSSFS_STRESS_CUTS={s:?}: {e}")),
        Err(_) => 60,
    }
}

#[test]
fn workers_under_random_powercuts_keep_exactly_the_durable_state() {
    let seed = seed_from_env_or_clock();
    eprintln!("stress seed {seed} (replay with LOSSFS_SEED={seed})");
    let cfg = Config {
        workers: 3,
        cuts: Some(cuts()),
        duration: None,
        seed,
        min_delay_ms: 30,
        max_delay_ms: 500,
        kill_daemon_every: Some(6),
        progress: None,
    };
    let mut m = Mount::new(&[]);
    let sum =
        stress::run(&mut m, &cfg).unwrap_or_else(|e| panic!("seed {seed}: stress run failed: {e}"));
    assert!(
        sum.divergences.is_empty(),
        "seed {seed}: {} divergences after {} cuts:\n{}",
        sum.divergences.len(),
        sum.cuts,
        sum.divergences.join("\n")
    );
    assert_eq!(sum.cuts, cfg.cuts.unwrap_or(0), "seed {seed}");
    assert_eq!(sum.daemon_kills, sum.cuts / 6, "seed {seed}");
    // The workers must really have worked between the cuts, or the check proves nothing.
    assert!(
        sum.ops >= sum.cuts * 5,
        "seed {seed}: only {} operations in {} cuts",
        sum.ops,
        sum.cuts
    );
    eprintln!("stress seed {seed}: {}; {}", sum.counts(), sum.in_flight());
    assert!(m.daemon_alive(), "daemon gone at the end");
    m.unmount();
}
