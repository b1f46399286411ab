//! Scenario: PostgreSQL 15 with its data directory on a lossfs mount. N rows inserted, one
//! committed transaction each, a power cut, crash recovery on the same mount, and a count
//! of the rows that are still there. `fsync=off` with `synchronous_commit=off` loses
//! committed rows; the defaults lose none.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lossfs_tests::scenario::{
    free_port, lost_bytes, powercut, require_program, user_ids, Server, Verdict, CLIENT_TIMEOUT,
    READY_TIMEOUT,
};
use lossfs_tests::{output_text, run_bounded, Mount};

/// Rows inserted (and committed) per scenario.
const N: u64 = 300;
const BIN: &str = "/usr/lib/postgresql/15/bin";

struct Pg {
    data: PathBuf,
    sock: PathBuf,
    uid: u32,
    gid: u32,
}

impl Pg {
    fn bin(name: &str) -> PathBuf {
        require_program(&format!("{BIN}/{name}"), "postgresql-15")
    }

    /// A command run as the postgres user, from the socket directory (outside the mount).
    fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(Pg::bin(name));
        c.current_dir(&self.sock).uid(self.uid).gid(self.gid);
        c
    }

    fn start(&self, m: &Mount, port: u16, settings: &[&str]) -> Server {
        let mut c = self.cmd("postgres");
        c.arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.sock)
            .arg("-p")
            .arg(port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for s in settings {
            c.arg("-c").arg(s);
        }
        let mut s = Server::spawn("postgres", &mut c, &m.root.join("postgres.log"));
        s.wait_ready("accepting queries", READY_TIMEOUT, || {
            let o = self.psql(port, &["-c", "select 1"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(output_text(&o))
            }
        });
        s
    }

    fn psql(&self, port: u16, args: &[&str]) -> Output {
        let mut c = self.cmd("psql");
        c.arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-X", "-q", "-tA"])
            .args(["-v", "ON_ERROR_STOP=1"])
            .args(args);
        run_bounded(&mut c, CLIENT_TIMEOUT)
    }

    fn psql_ok(&self, port: u16, args: &[&str]) -> String {
        let o = self.psql(port, args);
        assert!(o.status.success(), "psql {args:?}:\n{}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// Runs the scenario; `settings` are the `-c` durability settings under test. Returns
/// the verdict, or the restart's failure log if the server refused to start.
fn scenario(setting: &str, settings: &[&str]) -> Result<Verdict, String> {
    let (uid, gid) = user_ids("postgres");
    let m = Mount::new(&["allow_other", "default_permissions"]);
    let pg = Pg {
        data: m.path("pgdata"),
        sock: m.root.join("pgsock"),
        uid,
        gid,
    };
    for d in [&pg.data, &pg.sock] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        chown(d, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", d.display()));
    }
    let mut init = pg.cmd("initdb");
    init.arg("-D").arg(&pg.data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    ]);
    let o = run_bounded(&mut init, CLIENT_TIMEOUT);
    assert!(o.status.success(), "initdb:\n{}", output_text(&o));
    // initdb ran with --no-sync; a real machine writes the new cluster back within seconds
    // of initdb, long before anyone cuts the power, so make it durable here.
    m.sync();

    let port = free_port();
    let mut server = pg.start(&m, port, settings);
    pg.psql_ok(port, &["-c", "create table t (id int primary key, v text)"]);
    // Same for the table: it was created long before the workload on a real machine, and
    // the writeback of those seconds has made it durable. With synchronous_commit=off the
    // commit of CREATE TABLE may still sit in the WAL buffers (the WAL writer hands them to
    // the kernel within 200 ms); a checkpoint hands WAL and pages to the kernel at once.
    pg.psql_ok(port, &["-c", "checkpoint"]);
    m.sync();

    let script = m.root.join("insert.sql");
    let sql: String = (0..N)
        .map(|i| format!("insert into t values ({i}, 'row-{i}');\n"))
        .collect();
    std::fs::write(&script, sql).unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
    let mut c = pg.cmd("psql");
    c.arg("-h")
        .arg(&pg.sock)
        .arg("-p")
        .arg(port.to_string())
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .arg("-f")
        .arg(&script);
    let o = run_bounded(&mut c, CLIENT_TIMEOUT);
    // Every statement runs in its own transaction (autocommit); psql prints the command
    // tag once the commit is acknowledged.
    let acked = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.trim() == "INSERT 0 1")
        .count() as u64;
    assert!(o.status.success(), "inserts:\n{}", output_text(&o));
    assert_eq!(acked, N, "every insert acknowledged:\n{}", output_text(&o));

    let rep = powercut(&m, &mut server);
    eprintln!(
        "postgres {setting}: powercut lost {} bytes",
        lost_bytes(&rep)
    );
    let log_before = server.log_text();
    drop(server);

    let port = free_port();
    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.start(&m, port, settings)
    }));
    let mut server = match restarted {
        Ok(s) => s,
        Err(_) => {
            let log = std::fs::read_to_string(m.root.join("postgres.log")).unwrap_or_default();
            return Err(log[log_before.len().min(log.len())..].to_string());
        }
    };
    let count = pg.psql_ok(port, &["-c", "select count(*) from t"]);
    let found: u64 = count
        .parse()
        .unwrap_or_else(|e| panic!("count(*) printed {count:?}: {e}"));
    let v = Verdict::new("postgres", setting, acked, found);
    v.print();
    server.stop();
    assert!(Path::new(&pg.data).is_dir());
    Ok(v)
}

#[test]
fn postgres_fsync_off_loses_committed_rows() {
    let settings = [
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
    ];
    match scenario("fsync=off,synchronous_commit=off", &settings) {
        Ok(v) => v.assert_some_lost(),
        Err(log) => panic!("postgres refused to start after the cut:\n{log}"),
    }
}

#[test]
fn postgres_defaults_keep_every_committed_row() {
    match scenario("defaults (fsync=on,synchronous_commit=on)", &[]) {
        Ok(v) => v.assert_none_lost(),
        Err(log) => panic!("postgres refused to start after the cut:\n{log}"),
    }
}
