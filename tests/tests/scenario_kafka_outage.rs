//! Scenario: the whole Kafka cluster loses power at once (the situation of KAFKA-3919).
//! Three brokers, each on its own lossfs mount; two topics with one partition on brokers
//! 1, 2, 3, replication factor 3, `min.insync.replicas=2`: `acks1` written by a producer
//! with acks=1, `acksall` by one with acks=all, both steady (a record every few ms).
//!
//! 1. The topics exist, every replica is in sync, every mount is synced.
//! 2. The producers run until each has some hundreds of acknowledgements.
//! 3. Every broker is frozen at one instant and every mount is cut (`lossctl powercut
//!    --all`, or mount by mount when other lossfs mounts are up on the host).
//! 4. The producers stop; every broker restarts; the partitions are read back, and after
//!    a clean stop each replica's log is read from its mount: log end offset and the
//!    CRC of every record batch.
//!
//! Kafka acknowledges from memory on every replica, so no replica has the records after
//! the outage: both settings lose what they acknowledged. Whether the brokers restart and
//! whether the replicas agree is printed as found.

use std::time::Duration;

use lossfs_tests::scenario::kafka::{
    records, replica_batches, tally, Cluster, Leader, Record, Version,
};
use lossfs_tests::scenario::Verdict;

/// The topics and the acks setting of each one's producer.
const TOPICS: [(&str, &str); 2] = [("acks1", "1"), ("acksall", "all")];
/// Acknowledgements each producer must have before the cut.
const BEFORE_CUT: usize = 300;
/// Every topic's config: a write needs two replicas in sync.
const MIN_ISR: &[&str] = &["min.insync.replicas=2"];

fn scenario(version: Version) {
    let mut c = Cluster::start(version, 3, &[]);
    c.create_topics_synced(&TOPICS.map(|(t, _)| (t, MIN_ISR)));

    // Steady producers: a record every 2 ms until stopped.
    let mut producer = c.produce_until(&TOPICS, 1_000_000, 2, BEFORE_CUT, Duration::from_secs(120));

    let reports = c.powercut_all();
    let lost_bytes: u64 = reports
        .iter()
        .map(|r| r["lost_bytes"].as_u64().unwrap_or(0))
        .sum();
    producer.stop();
    let acked = records(&producer.log_text(), "ACK");

    let mut refused = Vec::new();
    for id in 1..=3 {
        if let Err(e) = c.restart(id) {
            eprintln!("kafka {}: {e}", version.label());
            refused.push(id);
        }
    }
    let mut lines = Vec::new();
    for (topic, acks) in TOPICS {
        let mine: Vec<Record> = acked.iter().filter(|r| r.topic == topic).cloned().collect();
        let state = c.await_partition(topic, Leader::Any, (1, 3), Duration::from_secs(120));
        let t = match &state {
            Ok(_) => tally(&mine, &c.consume(topic)),
            Err(e) => panic!("{topic}: no leader after the restart: {e}"),
        };
        let in_sync = c
            .await_partition(topic, Leader::Any, (3, 3), Duration::from_secs(60))
            .is_ok();
        let v = Verdict::new(
            "kafka",
            &format!("{} outage acks={acks}", version.label()),
            t.acknowledged,
            t.found,
        );
        lines.push((topic, v, t.offsets_reused, in_sync));
    }
    c.stop_all();
    for (topic, v, reused, in_sync) in &lines {
        let logs: Vec<_> = (1..=3)
            .map(|id| replica_batches(&c.log_dir(id), topic))
            .collect();
        let leo: Vec<String> = logs
            .iter()
            .map(|b| b.last().map_or(0, |b| b.last_offset + 1).to_string())
            .collect();
        println!(
            "{}, offsets reused {reused}; brokers restarted {}/3; replicas in sync {}; \
             replica logs identical: {} (log end offsets {}); powercut lost {lost_bytes} bytes",
            v.line(),
            3 - refused.len(),
            if *in_sync { "yes" } else { "no" },
            if logs.iter().all(|l| *l == logs[0]) {
                "yes"
            } else {
                "no"
            },
            leo.join("/")
        );
        assert!(v.acknowledged > 0, "{}: no acknowledgement", v.line());
        v.assert_some_lost();
    }
}

#[test]
fn kafka_39_zookeeper_whole_cluster_outage_loses_acknowledged_records() {
    scenario(Version::ZooKeeper39);
}

#[test]
fn kafka_4_kraft_whole_cluster_outage_loses_acknowledged_records() {
    scenario(Version::Kraft4);
}
