//! Partial power cuts on a real mount (`lossctl powercut --keep all|random|prefix --seed N`)
//! and kernel-like writeback (`-o writeback=SECONDS`): what survives, that a seed replays
//! the same crash state, torn multi-block writes, prefixes of an append log.

use lossfs_tests::{lossctl, num, output_text, pattern, read_all, report_file, Mount};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Puts `rel` back to a durable `content` (write + fsync through the mount).
fn durable_file(m: &Mount, rel: &str, content: &[u8]) {
    let mut f = fs::File::create(m.path(rel)).unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
}

/// The unsynced changes every random test makes: an overwrite across blocks and an append.
fn scribble(m: &Mount, rel: &str) {
    let f = OpenOptions::new().write(true).open(m.path(rel)).unwrap();
    f.write_all_at(&pattern(2, 8192, 32 * 1024), 8192).unwrap();
    f.write_all_at(&pattern(3, 64 * 1024, 16 * 1024), 64 * 1024)
        .unwrap();
}

fn cut(m: &Mount, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["powercut", "--no-kill"];
    args.extend_from_slice(extra);
    m.ctl_json(&args)
}

#[test]
fn same_seed_on_the_same_ops_gives_identical_files() {
    let m = Mount::new(&[]);
    let durable = pattern(1, 0, 64 * 1024);
    let mut results = Vec::new();
    for _ in 0..2 {
        durable_file(&m, "db", &durable);
        scribble(&m, "db");
        let rep = cut(&m, &["--keep", "random", "--seed", "42"]);
        assert_eq!(rep["keep"], "random", "{rep}");
        assert_eq!(num(&rep, "seed"), 42, "{rep}");
        assert_eq!(num(&rep, "granularity"), 4096, "{rep}");
        let f = report_file(&rep, "db").unwrap_or_else(|| panic!("no db in {rep}"));
        results.push((
            read_all(&m.path("db")),
            f["kept"].clone(),
            f["lost"].clone(),
        ));
    }
    assert_eq!(results[0], results[1], "same seed, same crash state");
    // Another seed gives another state (2^-24 chance of a false alarm with 24 blocks).
    durable_file(&m, "db", &durable);
    scribble(&m, "db");
    cut(&m, &["--keep", "random", "--seed", "43"]);
    assert_ne!(read_all(&m.path("db")), results[0].0, "seed 43 differs");
}

#[test]
fn keep_all_keeps_every_unsynced_byte_and_makes_it_durable() {
    let m = Mount::new(&[]);
    durable_file(&m, "db", &pattern(1, 0, 64 * 1024));
    scribble(&m, "db");
    let latest = read_all(&m.path("db"));
    let rep = cut(&m, &["--keep", "all"]);
    assert_eq!(num(&rep, "lost_bytes"), 0, "{rep}");
    assert_eq!(num(&rep, "kept_bytes"), 32 * 1024 + 16 * 1024, "{rep}");
    assert_eq!(read_all(&m.path("db")), latest);
    // Everything is durable now: a plain cut has nothing to take.
    let rep = m.powercut_nokill_json();
    assert_eq!(num(&rep, "lost_bytes"), 0, "{rep}");
    assert_eq!(read_all(&m.path("db")), latest);
}

#[test]
fn a_multi_block_write_can_be_torn() {
    let m = Mount::new(&[]);
    let old = pattern(1, 0, 64 * 1024);
    let new = pattern(9, 0, 64 * 1024);
    for seed in 0..20u64 {
        durable_file(&m, "page", &old);
        let f = OpenOptions::new().write(true).open(m.path("page")).unwrap();
        // One write(2) of 16 blocks.
        f.write_all_at(&new, 0).unwrap();
        drop(f);
        let rep = cut(&m, &["--keep", "random", "--seed", &seed.to_string()]);
        let got = read_all(&m.path("page"));
        assert_eq!(got.len(), old.len());
        let mut from_new = 0;
        for (i, block) in got.chunks(4096).enumerate() {
            let r = i * 4096..(i + 1) * 4096;
            if block == &new[r.clone()] {
                from_new += 1;
            } else {
                assert_eq!(
                    block, &old[r],
                    "seed {seed}: block {i} is neither old nor new"
                );
            }
        }
        let kept = num(&rep, "kept_bytes");
        assert_eq!(kept, from_new * 4096, "{rep}");
        if from_new > 0 && from_new < 16 {
            return;
        }
    }
    panic!("no seed of 0..20 tore the 16-block write");
}

#[test]
fn prefix_on_an_append_log_keeps_a_prefix_of_the_records() {
    // Write-through only: with the writeback cache the 100 appends reach lossfs as one or
    // a few page writebacks, so a prefix of operations is a prefix of writebacks, not of
    // records (docs/fault-model.md, "The writeback cache"; cache_writeback.rs checks
    // prefix cuts there).
    let m = Mount::new(&["cache=writethrough"]);
    let mut inside = 0;
    for seed in 0..4u64 {
        durable_file(&m, "wal", b"");
        let records: Vec<String> = (0..100).map(|i| format!("record {i:04}\n")).collect();
        let mut f = OpenOptions::new().append(true).open(m.path("wal")).unwrap();
        for r in &records {
            f.write_all(r.as_bytes()).unwrap();
        }
        drop(f);
        let rep = cut(&m, &["--keep", "prefix", "--seed", &seed.to_string()]);
        assert_eq!(rep["keep"], "prefix", "{rep}");
        let e = report_file(&rep, "wal").unwrap_or_else(|| panic!("no wal in {rep}"));
        assert_eq!(num(e, "ops_total"), 100, "{rep}");
        let k = num(e, "ops_kept") as usize;
        let got = String::from_utf8(read_all(&m.path("wal"))).unwrap();
        assert_eq!(
            got,
            records[..k].concat(),
            "seed {seed}: not the first {k} records"
        );
        if k > 0 && k < 100 {
            inside += 1;
        }
    }
    assert!(inside > 0, "some seed keeps a strict prefix");
}

#[test]
fn bad_keep_arguments_are_refused_clearly() {
    let m = Mount::new(&[]);
    let mnt = m.mnt.to_str().unwrap();
    let out = lossctl(&["powercut", mnt, "--keep", "most"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("unknown keep mode"),
        "{}",
        output_text(&out)
    );
    let out = lossctl(&["powercut", mnt, "--keep", "random", "--granularity", "1000"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("power of two"),
        "{}",
        output_text(&out)
    );
    let out = lossctl(&["powercut", mnt, "--keep", "prefix", "--granularity", "512"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    // Nothing was cut by the refused requests.
    assert_eq!(num(&m.status_json(), "powercuts"), 0);
    // The text report names the mode and the seed to replay with.
    fs::write(m.path("x"), b"data").unwrap();
    let out = lossctl(&["powercut", mnt, "--no-kill", "--keep", "random"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("keep random, seed "), "{text}");
}

#[test]
fn writeback_makes_old_data_durable_and_fresh_data_is_still_lost() {
    let m = Mount::new(&["writeback=1"]);
    fs::write(m.path("old"), b"old data").unwrap();
    // The flusher takes it within a couple of ticks; bounded wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while num(&m.status_json(), "unsynced_bytes") > 0 {
        assert!(
            Instant::now() < deadline,
            "writeback=1 never made the data durable: {}",
            m.status_json()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fresh data cut right away is lost.  A cut that came later than the window (a loaded
    // machine) proves nothing and is retried.
    for attempt in 0..5 {
        let t0 = Instant::now();
        fs::write(m.path("fresh"), b"fresh data").unwrap();
        let rep = m.powercut_nokill_json();
        let late = t0.elapsed() >= Duration::from_secs(1);
        assert_eq!(read_all(&m.path("old")), b"old data", "old data survives");
        if late && read_all(&m.path("fresh")) == b"fresh data" {
            eprintln!("attempt {attempt}: the cut came after the window, retrying");
            fs::remove_file(m.path("fresh")).unwrap();
            continue;
        }
        assert_eq!(read_all(&m.path("fresh")), b"", "fresh data lost: {rep}");
        assert!(num(&rep, "lost_bytes") >= 10, "{rep}");
        return;
    }
    panic!("every cut came more than a second after its write");
}
