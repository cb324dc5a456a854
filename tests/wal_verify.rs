//! `edge-gateway wal verify` (issue 14, part 5) against a WAL the test fills, then damages in
//! each way the table in docs/reliability.md lists: every damage is caught and named, exit
//! status 1; and a WAL file that does not open stops the gateway with the command to run —
//! it never starts on an empty WAL in its place.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use redb::{ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::process::Command;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const PENDING: TableDefinition<(&str, u64), u32> = TableDefinition::new("pending");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn verify(cfg: &Path) -> (bool, String) {
    let (ok, out, err) = cli(cfg, &["wal", "verify"]);
    (ok, out + &err)
}

/// A filled WAL (300 readings waiting for a sink that answers 503), and its config.
async fn filled(dir: &Path) -> (PathBuf, PathBuf) {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        dir,
        &format!(
            "[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    ingest_seqs(&gw, &["d-1", "d-2", "d-3"], 100, 50, 0).await;
    assert!(gw.terminate().success());
    (cfg, dir.join("data/wal.redb"))
}

/// Damages a copy of the good file in `damage`, checks `wal verify` names it as `kind`.
fn damaged(good: &[u8], cfg: &Path, wal: &Path, kind: &str, damage: impl FnOnce(&Path)) -> String {
    std::fs::write(wal, good).unwrap();
    damage(wal);
    let (ok, out) = verify(cfg);
    assert!(!ok, "{kind}: not caught:\n{out}");
    assert!(out.contains(&format!("PROBLEM [{kind}]")), "{kind}:\n{out}");
    out
}

/// Damage done to a WAL file.
type Damage = Box<dyn Fn(&Path)>;

fn with_db(wal: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(wal).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_damage_and_a_damaged_file_stops_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, wal) = filled(dir.path()).await;
    let (ok, out) = verify(&cfg);
    assert!(ok, "{out}");
    assert!(
        out.contains("300 records, 300 pending rows") && out.contains("OK"),
        "{out}"
    );
    let good = std::fs::read(&wal).unwrap();

    // The header overwritten: not a WAL any more. The gateway refuses to start, naming the
    // command to run; `wal verify` says why.
    damaged(&good, &cfg, &wal, "pages", |p| {
        let mut b = std::fs::read(p).unwrap();
        b[..64].iter_mut().for_each(|x| *x ^= 0xff);
        std::fs::write(p, b).unwrap();
    });
    let run = Command::new(BIN)
        .args([
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(said.contains("wal verify"), "{said}");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        good.len() as u64,
        "left as it was"
    );

    // Truncated to half (a copy cut short).
    damaged(&good, &cfg, &wal, "pages", |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(good.len() as u64 / 2).unwrap();
    });

    // A record's bytes replaced with garbage.
    damaged(&good, &cfg, &wal, "record", |p| {
        with_db(p, |t| {
            t.open_table(RECORDS)
                .unwrap()
                .insert(5, b"\xff\xfe not cbor".as_slice())
                .unwrap();
        })
    });

    // A pending row lost: the record is held by no sink, and the sink's counter disagrees.
    let out = damaged(&good, &cfg, &wal, "record", |p| {
        with_db(p, |t| {
            t.open_table(PENDING).unwrap().remove(("api", 7)).unwrap();
        })
    });
    assert!(
        out.contains("record 7 is held by no sink and not kept as history"),
        "{out}"
    );
    assert!(out.contains("PROBLEM [counter] sink \"api\""), "{out}");

    // A record lost under its rows.
    damaged(&good, &cfg, &wal, "orphan_row", |p| {
        with_db(p, |t| {
            t.open_table(RECORDS).unwrap().remove(9).unwrap();
        })
    });

    // A counter off.
    damaged(&good, &cfg, &wal, "counter", |p| {
        with_db(p, |t| {
            let mut m = t.open_table(META).unwrap();
            let v = m.get("records").unwrap().unwrap().value();
            m.insert("records", v + 3).unwrap();
        })
    });

    // `wal repair` on each damage it can fix: verify passes after it, and what could not be
    // kept is in the quarantine, never dropped silently.
    let quarantine = dir.path().join("q.jsonl");
    let repairs: [(&str, Damage, u64); 3] = [
        (
            "record",
            Box::new(|p: &Path| {
                with_db(p, |t| {
                    t.open_table(RECORDS)
                        .unwrap()
                        .insert(5, b"\xff\xfe not cbor".as_slice())
                        .unwrap();
                })
            }),
            299,
        ),
        (
            "orphan_row",
            Box::new(|p: &Path| {
                with_db(p, |t| {
                    t.open_table(RECORDS).unwrap().remove(9).unwrap();
                })
            }),
            299,
        ),
        (
            "record",
            Box::new(|p: &Path| {
                with_db(p, |t| {
                    t.open_table(PENDING).unwrap().remove(("api", 7)).unwrap();
                    let mut m = t.open_table(META).unwrap();
                    let v = m.get("live_bytes").unwrap().unwrap().value();
                    m.insert("live_bytes", v + 10).unwrap();
                })
            }),
            299,
        ),
    ];
    for (kind, damage, left) in repairs {
        let _ = std::fs::remove_file(&quarantine);
        damaged(&good, &cfg, &wal, kind, damage);
        let q = quarantine.to_str().unwrap();
        let (ok, _, err) = cli(&cfg, &["wal", "repair", "--quarantine", q]);
        assert!(ok, "{kind}: {err}");
        let (ok, report) = verify(&cfg);
        assert!(ok, "{kind}: still damaged after repair:\n{report}");
        assert!(
            report.contains(&format!("{left} records")),
            "{kind}: {report}"
        );
        let q = std::fs::read_to_string(&quarantine).unwrap();
        assert!(!q.trim().is_empty(), "{kind}: nothing quarantined");
    }

    // `wal compact` offline: the file shrinks or stays, and still verifies.
    std::fs::write(&wal, &good).unwrap();
    let (ok, out, err) = cli(&cfg, &["wal", "compact"]);
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        c["after_bytes"].as_u64() <= c["before_bytes"].as_u64(),
        "{c}"
    );
    assert!(verify(&cfg).0);

    // Put back: the good file verifies again and the gateway starts on it.
    std::fs::write(&wal, &good).unwrap();
    assert!(verify(&cfg).0);
    let gw = Gateway::start(&cfg);
    let stats = gw.admin_get("/admin/wal").await;
    assert_eq!(stats["records"], 300, "{stats}");
}
