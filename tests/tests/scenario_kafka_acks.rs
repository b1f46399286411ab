//! Scenario: producers with acks=0, acks=1 and acks=all write 10,000 records each while the
//! power of the partition leader's mount is cut (the seed "ChaosTestingCode" experiment,
//! with a power cut instead of a kill). Three brokers, each on its own lossfs mount; one
//! topic per acks setting, one partition on brokers 1, 2, 3 (1 leads), replication
//! factor 3, `min.insync.replicas=2`, newest Kafka 4.x.
//!
//! 1. The topics exist, every replica is in sync, every mount is synced.
//! 2. The three producers start at once; when each has a third of its acknowledgements,
//!    leader 1's mount alone is cut. Followers 2 and 3 run on: one of them takes over and
//!    the producers go on against it (retrying what failed).
//! 3. When the producers are done, broker 1 restarts and follows; each partition is read
//!    back and the acknowledged records are counted (for acks=0 a record counts as
//!    acknowledged once sent, as the producer can know no more).
//!
//! What must hold: with acks=all nothing acknowledged is lost, since both followers that
//! hold every acknowledged record live on. acks=1 and acks=0 are printed as found.

use std::time::{Duration, Instant};

use lossfs_tests::scenario::kafka::{records, tally, Cluster, Leader, Record, Version};
use lossfs_tests::scenario::{lost_bytes, Verdict};

/// The topics and the acks setting of each one's producer.
const TOPICS: [(&str, &str); 3] = [("acks0", "0"), ("acks1", "1"), ("acksall", "all")];
/// Records each producer sends.
const N: usize = 10_000;
/// Every topic's config: a write needs two replicas in sync.
const MIN_ISR: &[&str] = &["min.insync.replicas=2"];

#[test]
fn kafka_4_kraft_acks_settings_under_a_leader_power_cut() {
    let version = Version::Kraft4;
    let mut c = Cluster::start(version, 3, &[]);
    c.create_topics_synced(&TOPICS.map(|(t, _)| (t, MIN_ISR)));

    let mut producer = c.produce_until(&TOPICS, N, 0, N / 3, Duration::from_secs(180));
    let rep = c.powercut(1);

    // The producers finish against the new leader; every record is answered within the
    // producer's delivery timeout.
    let deadline = Instant::now() + Duration::from_secs(300);
    while producer.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "the producers did not finish after the power cut"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = producer.log_text();
    assert!(out.contains("DONE"), "producer output:\n{out}");
    let acked = records(&out, "ACK");

    c.restart(1)
        .unwrap_or_else(|e| panic!("the old leader refused to restart: {e}"));
    let mut verdicts = Vec::new();
    for (topic, acks) in TOPICS {
        let state = c
            .await_partition(topic, Leader::Any, (3, 3), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{topic}: replicas not back in sync: {e}"));
        let mine: Vec<Record> = acked.iter().filter(|r| r.topic == topic).cloned().collect();
        let failed = out
            .lines()
            .filter(|l| l.starts_with(&format!("ERR {topic} ")))
            .count();
        let t = tally(&mine, &c.consume(topic));
        let v = Verdict::new(
            "kafka",
            &format!("{} leader-cut acks={acks}", version.label()),
            t.acknowledged,
            t.found,
        );
        println!(
            "{}, offsets reused {}; sent {N}, failed {failed}; after: {state}; \
             powercut lost {} bytes",
            v.line(),
            t.offsets_reused,
            lost_bytes(&rep)
        );
        verdicts.push(v);
    }
    c.stop_all();
    verdicts[2].assert_none_lost();
}
