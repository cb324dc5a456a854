//! One entry of an idempotency row, packed: `len(key) u32, key, seq u64, fingerprint u64,
//! len(correlation id) u32, correlation id`, little-endian, entries back to back.

use super::super::idem;

/// One remembered key, as packed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub(super) key: &'a str,
    pub(super) seq: u64,
    pub(super) fp: u64,
    pub(super) correlation_id: &'a str,
}

/// Appends one entry: `len(key) u32, key, seq u64, fingerprint u64, len(corr) u32, corr`,
/// little-endian.
pub(super) fn pack(buf: &mut Vec<u8>, e: &Entry<'_>) {
    buf.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.key.as_bytes());
    buf.extend_from_slice(&e.seq.to_le_bytes());
    buf.extend_from_slice(&e.fp.to_le_bytes());
    buf.extend_from_slice(&(e.correlation_id.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.correlation_id.as_bytes());
}

/// A row's entries in the order they were remembered. A damaged row ends at its first
/// malformed entry: the keys after it are forgotten (a retry of them is stored again —
/// a duplicate, never a loss).
pub(super) fn entries(mut b: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    std::iter::from_fn(move || {
        let (e, rest) = parse(b)?;
        b = rest;
        Some(e)
    })
}

fn parse(b: &[u8]) -> Option<(Entry<'_>, &[u8])> {
    fn u32_at(b: &[u8]) -> Option<(usize, &[u8])> {
        let (n, rest) = b.split_first_chunk::<4>()?;
        Some((u32::from_le_bytes(*n) as usize, rest))
    }
    fn u64_at(b: &[u8]) -> Option<(u64, &[u8])> {
        let (n, rest) = b.split_first_chunk::<8>()?;
        Some((u64::from_le_bytes(*n), rest))
    }
    fn str_at(b: &[u8], len: usize) -> Option<(&str, &[u8])> {
        let (s, rest) = b.split_at_checked(len)?;
        Some((std::str::from_utf8(s).ok()?, rest))
    }
    let (len, b) = u32_at(b)?;
    let (key, b) = str_at(b, len)?;
    let (seq, b) = u64_at(b)?;
    let (fp, b) = u64_at(b)?;
    let (len, b) = u32_at(b)?;
    let (correlation_id, b) = str_at(b, len)?;
    let e = Entry {
        key,
        seq,
        fp,
        correlation_id,
    };
    Some((e, b))
}

/// `key`'s newest entry in a row.
pub(super) fn find(row: &[u8], key: &str) -> Option<idem::Seen> {
    entries(row)
        .filter(|e| e.key == key)
        .last()
        .map(|e| idem::Seen {
            seq: e.seq,
            correlation_id: e.correlation_id.to_string(),
            fingerprint: e.fp,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_damaged_row_ends_early() {
        let a = Entry {
            key: "d/seq/1",
            seq: 7,
            fp: 0xabcd,
            correlation_id: "c-7",
        };
        let b = Entry {
            key: "d/key/ü",
            seq: 9,
            fp: 1,
            correlation_id: "",
        };
        let mut row = Vec::new();
        pack(&mut row, &a);
        pack(&mut row, &b);
        assert_eq!(entries(&row).collect::<Vec<_>>(), vec![a.clone(), b]);
        // Cut inside the second entry: the first survives.
        row.truncate(row.len() - 3);
        assert_eq!(entries(&row).collect::<Vec<_>>(), vec![a]);
        assert_eq!(entries(&[1, 0]).count(), 0);
    }

    #[test]
    fn the_newest_entry_of_a_key_counts() {
        let mut row = Vec::new();
        for (seq, fp) in [(1, 10), (2, 20)] {
            let e = Entry {
                key: "k",
                seq,
                fp,
                correlation_id: "c",
            };
            pack(&mut row, &e);
        }
        let seen = find(&row, "k").unwrap();
        assert_eq!((seen.seq, seen.fingerprint), (2, 20));
        assert!(find(&row, "other").is_none());
    }
}
