//! `edge-gateway wal verify` (issue 14): the file's pages (redb's integrity check) and every
//! invariant the store keeps between its tables, read in one transaction with the gateway
//! stopped:
//! - the file is of this release's format (an older one is migrated by the gateway's open);
//! - every record decodes;
//! - every record is held by a sink (a `pending` or `dead` row, or an unleased range:
//!   `unleased.rs`) or kept as settled history (no sink holds it and a run of acks covers
//!   it: `history/runs.rs`); no `pending` or `dead` row names a missing record; every run of
//!   acks decodes;
//! - every dead entry decodes;
//! - every seq below `next_seq` in an unleased range names a stored record, and no `pending`
//!   row names a seq its sink's ranges still hold;
//! - append times (`times.rs`) rise with seq and cover the first stored record;
//! - idempotency rows (`idem_rows/`) rise in id and time, their entries parse whole, and
//!   each row's id is its first entry's seq;
//! - the counters in `meta` equal the rows they count (records, live bytes, per-sink pending
//!   and dead, kept history records and bytes).
//!
//! Nothing is changed beyond what redb itself does on open (recovery after a crash, as the
//! gateway would) and its integrity check's repair, which is reported.

use super::*;
use serde::Serialize;

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `pages`, `format`, `record`, `orphan_row`, `dead_entry`, `history`, `unleased`, `times`,
    /// `idempotency`, `counter`.
    pub kind: &'static str,
    pub detail: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub path: String,
    pub records: u64,
    /// Settled records kept with their lifecycle (not in `records`).
    pub history_records: u64,
    pub pending_rows: u64,
    pub dead_rows: u64,
    pub problems: Vec<Problem>,
    /// Problems beyond the first 1,000 of a kind are counted, not listed.
    pub problems_not_listed: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.problems_not_listed == 0
    }

    pub(super) fn problem(&mut self, kind: &'static str, detail: String) {
        if self.problems.iter().filter(|p| p.kind == kind).count() >= 1_000 {
            self.problems_not_listed += 1;
        } else {
            self.problems.push(Problem { kind, detail });
        }
    }
}

impl WalStore {
    /// Checks the WAL file at `path`, which no process may hold open.
    pub fn verify(path: &Path) -> Result<VerifyReport, WalError> {
        Self::verify_with(path, &mut |_, _| {})
    }

    /// [`WalStore::verify`], telling `progress` the rows checked of how many (after redb's
    /// own page check, which reports nothing while it runs).
    pub fn verify_with(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, WalError> {
        let mut report = VerifyReport {
            path: path.display().to_string(),
            ..Default::default()
        };
        let mut db = match Database::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(WalError::AlreadyOpen),
            Err(e) => {
                report.problem("pages", format!("the file does not open as a WAL: {e}"));
                return Ok(report);
            }
        };
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => report.problem(
                "pages",
                "redb found damaged pages and repaired the file (what they held may be gone: \
                 the checks below say what is inconsistent now)"
                    .into(),
            ),
            Err(e) => {
                report.problem("pages", format!("redb's integrity check failed: {e}"));
                return Ok(report);
            }
        }
        let txn = db.begin_write()?;
        let meta = Meta::load(&txn)?;
        txn.abort()?;
        if meta.format_version != FORMAT_VERSION {
            report.problem(
                "format",
                format!(
                    "the file is of WAL format {}, this release checks format {FORMAT_VERSION}: \
                     start the gateway once (it migrates the file), then verify",
                    meta.format_version
                ),
            );
            return Ok(report);
        }
        let txn = db.begin_read()?;
        let total = txn.open_table(PENDING)?.len()?
            + txn.open_table(DEAD)?.len()?
            + 2 * txn.open_table(RECORDS)?.len()?;
        let mut done = 0u64;
        let mut tick = |progress: &mut dyn FnMut(u64, u64)| {
            done += 1;
            if done.is_multiple_of(PROGRESS_EVERY) {
                progress(done, total);
            }
        };
        progress(0, total);
        // seq -> rows naming it (pending + dead).
        let mut named: HashMap<u64, u32> = HashMap::new();
        let mut per_sink: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for row in txn.open_table(PENDING)?.iter()? {
            let (k, _) = row?;
            let (sink, seq) = k.value();
            *named.entry(seq).or_default() += 1;
            per_sink.entry(sink.to_string()).or_default().0 += 1;
            report.pending_rows += 1;
            tick(progress);
        }
        for row in txn.open_table(DEAD)?.iter()? {
            let (k, v) = row?;
            let (sink, seq) = k.value();
            *named.entry(seq).or_default() += 1;
            per_sink.entry(sink.to_string()).or_default().1 += 1;
            report.dead_rows += 1;
            tick(progress);
            if ciborium::from_reader::<DeadEntry, _>(v.value()).is_err() {
                report.problem(
                    "dead_entry",
                    format!("the dead letter of seq {seq} for sink {sink:?} does not decode"),
                );
            }
        }
        // Records never leased stand for a pending row each.
        if let Some(t) = unleased::table(&txn)? {
            let records = txn.open_table(RECORDS)?;
            let (rows, missing) = unleased::virtual_rows(&t, &records, meta.next_seq)?;
            let pending = txn.open_table(PENDING)?;
            for (sink, seq) in rows {
                if pending.get((sink.as_str(), seq))?.is_some() {
                    report.problem(
                        "unleased",
                        format!("sink {sink:?} has a pending row for {seq}, which its unleased range still holds"),
                    );
                }
                *named.entry(seq).or_default() += 1;
                per_sink.entry(sink).or_default().0 += 1;
                report.pending_rows += 1;
            }
            for (sink, seq) in missing {
                report.problem(
                    "unleased",
                    format!("sink {sink:?}'s unleased range holds {seq}, which is not stored"),
                );
            }
        }
        // Every run of acks decodes; their rows count in the kept history's bytes (a run whose
        // records are all gone is legal until the history sweep deletes it).
        let acks = txn.open_table(history::runs::ACKS)?;
        let mut history_bytes = 0u64;
        for row in acks.iter()? {
            let (k, v) = row?;
            let (first, sink) = k.value();
            history_bytes += history::runs::run_bytes(sink);
            if history::runs::Run::decode(first, v.value()).is_none() {
                report.problem(
                    "history",
                    format!("the run of acks of sink {sink:?} from {first} does not decode"),
                );
            }
        }
        let mut covering = history::runs::Covering::new(history::runs::all_runs(&acks)?);
        let mut live_bytes = 0u64;
        let mut seen = std::collections::HashSet::new();
        for row in txn.open_table(RECORDS)?.iter()? {
            let (k, v) = row?;
            let seq = k.value();
            seen.insert(seq);
            tick(progress);
            if let Err(e) = Record::decode(v.value()) {
                report.problem("record", format!("record {seq} does not decode: {e}"));
            }
            // Held by a sink (a row or a range), or kept as settled history (acked, held by
            // none): nothing else.
            let held = named.get(&seq).copied().unwrap_or(0);
            if held > 0 {
                report.records += 1;
                live_bytes += v.value().len() as u64;
            } else if !covering.at(seq)?.is_empty() {
                report.history_records += 1;
                history_bytes += v.value().len() as u64;
            } else {
                report.problem(
                    "record",
                    format!("record {seq} is held by no sink and not kept as history"),
                );
            }
        }
        // Append times: rising, and covering the first record.
        let times = txn.open_table(TIMES)?;
        let mut last: Option<u64> = None;
        for row in times.iter()? {
            let (k, v) = row?;
            if last.is_some_and(|t| v.value() <= t) {
                report.problem(
                    "times",
                    format!("the append time of seq {} does not rise", k.value()),
                );
            }
            last = Some(v.value());
        }
        if let Some(first) = seen.iter().min() {
            if times::appended_at(&times, *first)?.is_none() {
                report.problem(
                    "times",
                    format!("no append time covers record {first}, the first stored"),
                );
            }
        }
        idem_rows::verify(&txn.open_table(IDEM)?, &meta, &mut report)?;
        if (meta.history_records, meta.history_bytes) != (report.history_records, history_bytes) {
            report.problem(
                "counter",
                format!(
                    "meta says {} kept records of {} bytes, the rows are {} of {history_bytes}",
                    meta.history_records, meta.history_bytes, report.history_records
                ),
            );
        }
        let mut missing: Vec<u64> = named
            .keys()
            .filter(|s| !seen.contains(s))
            .copied()
            .collect();
        missing.sort_unstable();
        for seq in missing {
            report.problem(
                "orphan_row",
                format!("pending or dead rows name record {seq}, which is gone"),
            );
        }
        if meta.records != report.records {
            report.problem(
                "counter",
                format!(
                    "meta says {} records, {} are stored",
                    meta.records, report.records
                ),
            );
        }
        if meta.live_bytes != live_bytes {
            report.problem(
                "counter",
                format!(
                    "meta says {} live bytes, the records hold {live_bytes}",
                    meta.live_bytes
                ),
            );
        }
        let sinks: std::collections::BTreeSet<&String> =
            meta.sinks.keys().chain(per_sink.keys()).collect();
        for sink in sinks {
            let (mp, md, _) = meta.sinks.get(sink).copied().unwrap_or_default();
            let (rp, rd) = per_sink.get(sink).copied().unwrap_or_default();
            if (mp, md) != (rp, rd) {
                report.problem(
                    "counter",
                    format!(
                        "sink {sink:?}: meta says {mp} pending and {md} dead, the rows are {rp} \
                         and {rd}"
                    ),
                );
            }
        }
        Ok(report)
    }
}
