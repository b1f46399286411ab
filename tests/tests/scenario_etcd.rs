//! Scenario: a single-node etcd 3.4 with its data directory on a lossfs mount. N
//! acknowledged puts, a power cut, a restart on the same mount, and a count of the keys
//! that are still there. `--unsafe-no-fsync` loses acknowledged puts; the default keeps
//! them all.

use lossfs_tests::scenario::etcd::{keys, put, Member};
use lossfs_tests::scenario::{lost_bytes, powercut, Server, Verdict, READY_TIMEOUT};
use lossfs_tests::Mount;

/// Acknowledged puts per scenario.
const N: u64 = 300;

fn start_etcd(m: &Mount, e: &Member, unsafe_no_fsync: bool) -> Server {
    let mut s = e.spawn(
        std::slice::from_ref(e),
        &m.path("etcd"),
        &m.root,
        unsafe_no_fsync,
    );
    if let Err(st) = e.wait_healthy(&mut s, READY_TIMEOUT) {
        panic!(
            "etcd exited ({st:?}) before healthy\n--- log ---\n{}",
            s.log_text()
        );
    }
    s
}

fn scenario(unsafe_no_fsync: bool) -> Verdict {
    let m = Mount::new(&[]);
    let e = Member::new("s1");
    let mut server = start_etcd(&m, &e, unsafe_no_fsync);
    // The freshly bootstrapped member (WAL, snapshot db, member id) is written back by a
    // real machine within seconds of the first start, long before the workload.
    m.sync();

    let mut acked = 0;
    for i in 0..N {
        put(e.client, &format!("k/{i:05}"), &format!("value-{i}"))
            .unwrap_or_else(|err| panic!("{err}\n--- log ---\n{}", server.log_text()));
        acked += 1;
    }
    let rep = powercut(&m, &mut server);
    eprintln!(
        "etcd unsafe_no_fsync={unsafe_no_fsync}: powercut lost {} bytes",
        lost_bytes(&rep)
    );
    drop(server);

    let mut server = start_etcd(&m, &e, unsafe_no_fsync);
    let found = keys(e.client, "k/").len() as u64;
    let setting = if unsafe_no_fsync {
        "--unsafe-no-fsync"
    } else {
        "default"
    };
    let v = Verdict::new("etcd", setting, acked, found);
    v.print();
    server.stop();
    v
}

#[test]
fn etcd_unsafe_no_fsync_loses_acknowledged_puts() {
    scenario(true).assert_some_lost();
}

#[test]
fn etcd_default_keeps_every_acknowledged_put() {
    scenario(false).assert_none_lost();
}
