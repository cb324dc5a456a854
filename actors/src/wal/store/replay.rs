//! Replay (issue 14, part 3): records re-enqueued for one sink — from a dead-letter export, a
//! file sink's output, or any JSON Lines of records — keeping their idempotency keys, so a
//! sink that already has them de-duplicates. A replay is an operator's explicit re-send: it
//! bypasses the idempotency window (and writes no key rows), but not the WAL's limits.

use super::*;

impl WalStore {
    pub(super) fn replay(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        records: Vec<Record>,
        now: u64,
    ) -> Result<Result<usize, AppendRefused>, WalError> {
        let bodies: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
        let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        if let Err(full) = self.room_for(meta, bodies.len() as u64, bytes) {
            return Ok(Err(full.into()));
        }
        // Replayed for one sink: rows, cut out of every sink's unleased ranges.
        self.unleased
            .remove_all(meta.next_seq, meta.next_seq + records.len() as u64);
        for (r, body) in records.iter().zip(&bodies) {
            let seq = meta.next_seq;
            meta.next_seq += 1;
            tx.records.insert(seq, body.as_slice())?;
            tx.pending.insert((sink, seq), 0u32)?;
            self.note_appended(tx, seq, now)?;
            meta.sink(sink).0 += 1;
            meta.records += 1;
            meta.live_bytes += body.len() as u64;
            self.devices.add(&r.device_id, body.len() as u64);
        }
        Ok(Ok(records.len()))
    }
}
