//! Format 5 and earlier to format 6: the idempotency rows per key become rows per commit.

use super::*;

/// Format 5 and earlier: a row per key in `idem_v2` becomes a row per WAL time in `idem_v3`
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
        let mut to = txn.open_table(IDEM_V3)?;
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
            for (seq, key, correlation_id, fp) in &es {
                let e = Entry {
                    key,
                    seq: *seq,
                    fp: *fp,
                    correlation_id,
                };
                pack(&mut bytes, &e);
            }
            if let Some(&(id, ..)) = es.first() {
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
    Ok(dropped)
}
