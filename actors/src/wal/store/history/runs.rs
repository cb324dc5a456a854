//! Acks kept as runs (format 5): one `acks` row per run of consecutive records a sink acked
//! in one settle batch with the same attempts, instead of a lifecycle row per record.
//!
//! Rows: `acks: (first seq, sink) -> (last seq, WAL time of the ack, attempts)`, 20 bytes,
//! fixed width. A run never spans more than [`RUN_MAX`] seqs, so every run covering a seq
//! starts within `RUN_MAX` below it: one bounded range read answers "who acked `seq`".
//!
//! Nothing here says whether a record is settled: it is when it is still stored, no sink holds
//! it (row, range or dead letter), and a run covers it — kept history. Its settle time is the
//! latest ack covering it (the last sink's ack settled it).

use super::super::*;
use super::SinkAck;

/// `(first seq, sink) -> [last seq, ack time, attempts]` (little endian).
pub(in crate::wal::store) const ACKS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("acks");

/// Longest run, in seqs: the bound of the lookback in [`acks_of`].
pub(in crate::wal::store) const RUN_MAX: u64 = 4096;

/// A sink's acks of `first..=last`, all at `at_ms` after `attempts` leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::wal::store) struct Run {
    pub first: u64,
    pub last: u64,
    pub at_ms: u64,
    pub attempts: u32,
}

impl Run {
    pub(in crate::wal::store) fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.last.to_le_bytes());
        b[8..16].copy_from_slice(&self.at_ms.to_le_bytes());
        b[16..].copy_from_slice(&self.attempts.to_le_bytes());
        b
    }

    /// `None` for a value that is not a run starting at `first` (a damaged row).
    pub(in crate::wal::store) fn decode(first: u64, v: &[u8]) -> Option<Run> {
        let v: &[u8; 20] = v.try_into().ok()?;
        let last = u64::from_le_bytes(v[..8].try_into().ok()?);
        let run = Run {
            first,
            last,
            at_ms: u64::from_le_bytes(v[8..16].try_into().ok()?),
            attempts: u32::from_le_bytes(v[16..].try_into().ok()?),
        };
        (first <= last && last - first < RUN_MAX).then_some(run)
    }

    pub(in crate::wal::store) fn contains(&self, seq: u64) -> bool {
        (self.first..=self.last).contains(&seq)
    }

    fn ack(&self, sink: &str) -> SinkAck {
        SinkAck {
            sink: sink.to_string(),
            attempts: self.attempts,
            at_ms: self.at_ms,
        }
    }
}

/// What a run's row counts in `history_bytes`: its key and value.
pub(in crate::wal::store) fn run_bytes(sink: &str) -> u64 {
    8 + sink.len() as u64 + 20
}

/// One settle batch's acks, cut into runs as they come (in any order; a gap, a change of
/// attempts or [`RUN_MAX`] starts a new run).
#[derive(Debug, Default)]
pub(in crate::wal::store) struct Runs(Vec<Run>);

impl Runs {
    pub(in crate::wal::store) fn push(&mut self, seq: u64, attempts: u32, at_ms: u64) {
        if let Some(r) = self.0.last_mut() {
            if r.last + 1 == seq && r.attempts == attempts && seq - r.first < RUN_MAX {
                r.last = seq;
                return;
            }
        }
        self.0.push(Run {
            first: seq,
            last: seq,
            at_ms,
            attempts,
        });
    }

    pub(in crate::wal::store) fn into_vec(self) -> Vec<Run> {
        self.0
    }
}

/// The acks table as a reader sees it.
pub(in crate::wal::store) type AcksTable = redb::ReadOnlyTable<(u64, &'static str), &'static [u8]>;

/// The acks table in a read transaction; `None` in a file no writer of format 5 opened yet.
pub(in crate::wal::store) fn table(
    txn: &redb::ReadTransaction,
) -> Result<Option<AcksTable>, WalError> {
    match txn.open_table(ACKS) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every sink's ack of `seq`, in the order they came. One range read of the runs that may cover it.
pub(in crate::wal::store) fn acks_of(
    table: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    seq: u64,
) -> Result<Vec<SinkAck>, WalError> {
    let lo = seq.saturating_sub(RUN_MAX - 1);
    let mut out = Vec::new();
    for row in table.range((lo, "")..(seq.saturating_add(1), ""))? {
        let (k, v) = row?;
        let (first, sink) = k.value();
        if let Some(r) = Run::decode(first, v.value()).filter(|r| r.contains(seq)) {
            out.push(r.ack(sink));
        }
    }
    out.sort_by(|a, b| (a.at_ms, &a.sink).cmp(&(b.at_ms, &b.sink)));
    Ok(out)
}

/// Answers "who acked `seq`" for rising seqs from runs read once in key order (a sweep line):
/// for exports and checks that walk the records table.
pub(in crate::wal::store) struct Covering<I: Iterator<Item = Result<(String, Run), WalError>>> {
    rows: std::iter::Peekable<I>,
    active: Vec<(String, Run)>,
}

impl<I: Iterator<Item = Result<(String, Run), WalError>>> Covering<I> {
    pub(in crate::wal::store) fn new(rows: I) -> Self {
        Covering {
            rows: rows.peekable(),
            active: Vec::new(),
        }
    }

    /// The acks covering `seq`; `seq` must not go down between calls.
    pub(in crate::wal::store) fn at(&mut self, seq: u64) -> Result<Vec<SinkAck>, WalError> {
        while let Some(next) = self.rows.peek() {
            match next {
                Ok((_, r)) if r.first > seq => break,
                _ => {}
            }
            let (sink, run) = self.rows.next().expect("peeked")?;
            self.active.push((sink, run));
        }
        self.active.retain(|(_, r)| r.last >= seq);
        let mut out: Vec<SinkAck> = self
            .active
            .iter()
            .filter(|(_, r)| r.contains(seq))
            .map(|(s, r)| r.ack(s))
            .collect();
        out.sort_by(|a, b| (a.at_ms, &a.sink).cmp(&(b.at_ms, &b.sink)));
        Ok(out)
    }
}

/// Every decodable run of `table` in key order, owned, for [`Covering`].
pub(in crate::wal::store) fn all_runs<'a>(
    table: &'a impl ReadableTable<(u64, &'static str), &'static [u8]>,
) -> Result<impl Iterator<Item = Result<(String, Run), WalError>> + 'a, WalError> {
    Ok(table.iter()?.filter_map(|row| match row {
        Ok((k, v)) => {
            let (first, sink) = k.value();
            Run::decode(first, v.value()).map(|r| Ok((sink.to_string(), r)))
        }
        Err(e) => Some(Err(e.into())),
    }))
}

/// Format 4 and earlier: seq -> a CBOR lifecycle per record.
pub(in crate::wal::store) const HISTORY_V4: TableDefinition<u64, &[u8]> =
    TableDefinition::new("history");

/// Format 4: each lifecycle row's acks become one-record runs and the `history` table goes.
/// Recounts `history_bytes` for the new rows. In the migrating transaction.
pub(in crate::wal::store) fn migrate_lifecycles(
    txn: &WriteTransaction,
    meta: &mut Meta,
) -> Result<(), WalError> {
    let rows: Vec<(u64, Vec<u8>)> = match txn.open_table(HISTORY_V4) {
        Ok(t) => t
            .iter()?
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut acks = txn.open_table(ACKS)?;
    for (seq, v) in rows {
        let Some(life) = super::Lifecycle::decode(&v) else {
            continue;
        };
        // Format 4 counted a lifecycle row from its record's settle on.
        if life.settled_at_ms.is_some() {
            meta.history_bytes = meta.history_bytes.saturating_sub(v.len() as u64);
        }
        for a in life.acked {
            let run = Run {
                first: seq,
                last: seq,
                at_ms: a.at_ms,
                attempts: a.attempts,
            };
            acks.insert((seq, a.sink.as_str()), run.encode().as_slice())?;
            meta.history_bytes += run_bytes(&a.sink);
        }
    }
    drop(acks);
    txn.delete_table(HISTORY_V4)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_at_gaps_attempts_and_the_longest_run() {
        let mut r = Runs::default();
        for seq in [1, 2, 3, 5, 6] {
            r.push(seq, 1, 9);
        }
        r.push(7, 2, 9);
        for seq in 8..8 + RUN_MAX + 1 {
            r.push(seq, 1, 9);
        }
        let spans: Vec<_> = r
            .into_vec()
            .iter()
            .map(|r| (r.first, r.last, r.attempts))
            .collect();
        assert_eq!(
            spans,
            [
                (1, 3, 1),
                (5, 6, 1),
                (7, 7, 2),
                (8, 8 + RUN_MAX - 1, 1),
                (8 + RUN_MAX, 8 + RUN_MAX, 1)
            ]
        );
    }

    #[test]
    fn a_run_round_trips_and_a_damaged_one_does_not_decode() {
        let r = Run {
            first: 10,
            last: 12,
            at_ms: 77,
            attempts: 3,
        };
        assert_eq!(Run::decode(10, &r.encode()), Some(r));
        assert_eq!(Run::decode(13, &r.encode()), None); // last below first
        assert_eq!(Run::decode(10, &r.encode()[..19]), None);
    }

    #[test]
    fn acks_are_found_by_lookback_and_by_the_sweep_line() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("a.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let runs = [
            ("a", 1, 1000, 10),
            ("b", 1, 5, 20),
            ("b", 6, 6, 30),
            ("a", 5000, 5000 + RUN_MAX - 1, 40),
        ];
        {
            let mut t = txn.open_table(ACKS).unwrap();
            for (sink, first, last, at_ms) in runs {
                let r = Run {
                    first,
                    last,
                    at_ms,
                    attempts: 1,
                };
                t.insert((first, sink), r.encode().as_slice()).unwrap();
            }
            let at = |seq| -> Vec<(String, u64)> {
                acks_of(&t, seq)
                    .unwrap()
                    .into_iter()
                    .map(|a| (a.sink, a.at_ms))
                    .collect()
            };
            assert_eq!(at(3), [("a".into(), 10), ("b".into(), 20)]);
            assert_eq!(at(6), [("a".into(), 10), ("b".into(), 30)]);
            assert_eq!(at(1000), [("a".into(), 10)]);
            assert_eq!(at(1001), []);
            assert_eq!(at(5000 + RUN_MAX - 1), [("a".into(), 40)]);
            let mut c = Covering::new(all_runs(&t).unwrap());
            for seq in [1, 3, 6, 1000, 1001, 5000 + RUN_MAX - 1] {
                let got: Vec<_> = c.at(seq).unwrap();
                assert_eq!(got, acks_of(&t, seq).unwrap(), "seq {seq}");
            }
        }
        txn.commit().unwrap();
    }
}
