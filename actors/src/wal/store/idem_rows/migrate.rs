//! Format 6 and earlier to format 7: the idempotency rows per key (format 5 and earlier)
//! become rows per commit, and format 6's rows (`idem_v3`) are packed again (`idem_v4`).

use super::*;

/// Format 6: each `idem_v3` row is packed again into `idem_v4` (same id, time and entries),
/// and `idem_v3` goes.
/// Format 5 and earlier: a row per key in `idem_v2` becomes a row per WAL time in `idem_v4`
/// (the keys one commit stored share its time), and `idem_v2` goes. Format 1's `idem_by_ts`
/// is dropped (its keys were not scoped to the device; see `idem.rs`): `Some(keys)` dropped.
/// `meta.idem_keys` is recounted by [`load_index`]. In the opening transaction: a crash leaves
/// the old format whole.
pub(in crate::wal::store) fn migrate(
    txn: &WriteTransaction,
    meta: &Meta,
) -> Result<Option<u64>, WalError> {
    let find = |name: &str| -> Result<Option<redb::UntypedTableHandle>, WalError> {
        Ok(txn
            .list_tables()?
            .find(|t| redb::TableHandle::name(t) == name))
    };
    let dropped = match find(idem::IDEM_V1_NAME)? {
        Some(old) => {
            txn.delete_table(old)?;
            Some(meta.idem_keys)
        }
        None => None,
    };
    if let Some(old) = find(idem::IDEM_V2_NAME)? {
        let mut to = txn.open_table(IDEM)?;
        let from = txn.open_table(idem::IDEM_V2)?;
        // One row per run of equal times, its entries in seq order (its id the first).
        type Run = (u64, Vec<(u64, String, String, u64)>); // time, (seq, key, corr, fp)
        let flush = |run: &mut Option<Run>,
                     to: &mut redb::Table<'_, u64, (u64, &'static [u8])>|
         -> Result<(), WalError> {
            let Some((at, mut es)) = run.take() else {
                return Ok(());
            };
            es.sort_unstable_by_key(|e| e.0);
            let mut bytes = Vec::new();
            let id = es.first().map_or(0, |e| e.0);
            for (seq, key, correlation_id, fp) in &es {
                let e = Entry {
                    key,
                    seq: *seq,
                    fp: *fp,
                    correlation_id: Corr::of(correlation_id),
                };
                pack(&mut bytes, id, &e);
            }
            if !es.is_empty() {
                to.insert(id, (at, bytes.as_slice()))?;
            }
            Ok(())
        };
        let mut run: Option<Run> = None;
        for row in from.iter()? {
            let (k, v) = row?;
            let (at, key) = k.value();
            let (seq, corr, fp) = v.value();
            if run.as_ref().is_some_and(|(t, _)| *t != at) {
                flush(&mut run, &mut to)?;
            }
            let (_, es) = run.get_or_insert_with(|| (at, Vec::new()));
            es.push((seq, key.to_string(), corr.to_string(), fp));
        }
        flush(&mut run, &mut to)?;
        drop(from);
        txn.delete_table(old)?;
    }
    if let Some(old) = find("idem_v3")? {
        let mut to = txn.open_table(IDEM)?;
        let from = txn.open_table(IDEM_V3)?;
        let mut bytes = Vec::new();
        for row in from.iter()? {
            let (k, v) = row?;
            let (id, (at, old_bytes)) = (k.value(), v.value());
            bytes.clear();
            // A damaged row keeps its whole entries, as reading it would.
            for (key, seq, fp, correlation_id) in entry::legacy::entries(old_bytes) {
                let e = Entry {
                    key,
                    seq,
                    fp,
                    correlation_id: Corr::of(correlation_id),
                };
                pack(&mut bytes, id, &e);
            }
            to.insert(id, (at, bytes.as_slice()))?;
        }
        drop(from);
        txn.delete_table(old)?;
    }
    Ok(dropped)
}
