//! Scenario: a three-member etcd 3.4 cluster on 127.0.0.1, showing that losing the
//! unsynced tail of ONE member loses acknowledged writes for the whole cluster. Only
//! member C's data directory is on the lossfs mount; A's and B's are plain directories.
//!
//! 1. A, B, C start and elect a leader; `lossctl sync` makes C's bootstrap durable.
//! 2. A is stopped (SIGTERM, a clean stop): it has none of what follows.
//! 3. The client writes N keys through C; each put is acknowledged once B and C, a
//!    majority, have it in their logs.
//! 4. B is stopped (SIGTERM): it keeps every key, but stays down.
//! 5. C's power is cut: C keeps only what it fsynced.
//! 6. A and C restart and form a majority of two; the client counts the keys.
//!
//! With `--unsafe-no-fsync` C's log loses the keys, A never had them, and the majority
//! A+C serves a history without them; with the default every key is there.

use std::path::Path;

use lossfs_tests::scenario::etcd::{keys, put, Member};
use lossfs_tests::scenario::{lost_bytes, powercut, Server, Verdict, READY_TIMEOUT};
use lossfs_tests::Mount;

/// Acknowledged puts per scenario.
const N: u64 = 200;

/// Starts `members` (their data dirs given in the same order) and waits until each is
/// healthy. Panics with the logs if one exits.
fn start_all(
    members: &[(&Member, &Path)],
    cluster: &[Member],
    cwd: &Path,
    unsafe_no_fsync: bool,
) -> Vec<Server> {
    let mut servers: Vec<Server> = members
        .iter()
        .map(|(m, dir)| m.spawn(cluster, dir, cwd, unsafe_no_fsync))
        .collect();
    for ((m, _), s) in members.iter().zip(servers.iter_mut()) {
        if let Err(st) = m.wait_healthy(s, READY_TIMEOUT) {
            panic!(
                "etcd {} exited ({st:?}) before healthy\n--- log ---\n{}",
                m.name,
                s.log_text()
            );
        }
    }
    servers
}

/// The outcome after A and C restart.
enum Outcome {
    /// A and C form a majority and serve; the keys they have.
    Served(Verdict),
    /// A member refused to start (its name, exit status, log).
    Refused(String, String),
}

fn scenario(unsafe_no_fsync: bool) -> Outcome {
    let m = Mount::new(&[]);
    let cluster = [Member::new("a"), Member::new("b"), Member::new("c")];
    let [a, b, c] = &cluster;
    let dir_a = m.root.join("etcd-a");
    let dir_b = m.root.join("etcd-b");
    let dir_c = m.path("etcd-c");

    let mut servers = start_all(
        &[(a, &dir_a), (b, &dir_b), (c, &dir_c)],
        &cluster,
        &m.root,
        unsafe_no_fsync,
    );
    // C's bootstrap (member ids, the cluster's first raft entries) is written back by a
    // real machine within seconds of the first start, long before the workload.
    m.sync();
    let mut server_c = servers.pop().expect("three servers");
    let mut server_b = servers.pop().expect("three servers");
    let mut server_a = servers.pop().expect("three servers");

    server_a.stop();
    // If A led, B and C elect a new leader first: health on C waits for it.
    if let Err(st) = c.wait_healthy(&mut server_c, READY_TIMEOUT) {
        panic!(
            "etcd c exited ({st:?}) after A stopped\n--- log ---\n{}",
            server_c.log_text()
        );
    }

    let mut acked = 0;
    for i in 0..N {
        put(c.client, &format!("k/{i:05}"), &format!("value-{i}"))
            .unwrap_or_else(|err| panic!("{err}\n--- log ---\n{}", server_c.log_text()));
        acked += 1;
    }
    assert_eq!(
        keys(b.client, "k/").len() as u64,
        acked,
        "B should hold every acknowledged key before it stops"
    );
    server_b.stop();
    let rep = powercut(&m, &mut server_c);
    eprintln!(
        "etcd cluster unsafe_no_fsync={unsafe_no_fsync}: powercut of C lost {} bytes",
        lost_bytes(&rep)
    );
    drop(server_c);
    drop(server_b);
    drop(server_a);

    let mut server_a = a.spawn(&cluster, &dir_a, &m.root, unsafe_no_fsync);
    let mut server_c = c.spawn(&cluster, &dir_c, &m.root, unsafe_no_fsync);
    for (mem, s) in [(a, &mut server_a), (c, &mut server_c)] {
        if let Err(st) = mem.wait_healthy(s, READY_TIMEOUT) {
            return Outcome::Refused(mem.name.clone(), format!("{st:?}\n{}", s.log_text()));
        }
    }
    let found_a = keys(a.client, "k/").len() as u64;
    let found_c = keys(c.client, "k/").len() as u64;
    assert_eq!(found_a, found_c, "A and C disagree after the restart");
    let setting = if unsafe_no_fsync {
        "--unsafe-no-fsync"
    } else {
        "default"
    };
    let v = Verdict::new("etcd-cluster", setting, acked, found_c);
    v.print();
    server_a.stop();
    server_c.stop();
    Outcome::Served(v)
}

#[test]
fn etcd_cluster_unsafe_no_fsync_on_one_member_loses_acknowledged_puts() {
    match scenario(true) {
        Outcome::Served(v) => v.assert_some_lost(),
        Outcome::Refused(name, log) => panic!("etcd {name} refused to restart: {log}"),
    }
}

#[test]
fn etcd_cluster_default_keeps_every_acknowledged_put() {
    match scenario(false) {
        Outcome::Served(v) => v.assert_none_lost(),
        Outcome::Refused(name, log) => panic!("etcd {name} refused to restart: {log}"),
    }
}
