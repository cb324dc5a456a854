//! One entry of an idempotency row, packed (format 7, `idem_v4`):
//!
//! `varint len(key), key, varint (seq - row id), fingerprint u64 LE, correlation id`, where the
//! correlation id is `0x01` + 16 bytes when it is the text of a UUID in its canonical form
//! (lowercase, hyphenated: what the ingest edge makes, and what a reading carries back), else
//! `0x00, varint len, text`. Entries back to back.
//!
//! Format 6's entries (`len u32, key, seq u64, fingerprint u64, len u32, corr`) were 75 bytes
//! for a typical key and a UUID; these are 42 — a third of a reading's bytes on disk was its
//! idempotency entry (docs/benchmarks.md, "Session 16"). Format 6's parser stays for the
//! migration (`legacy`).

use super::super::idem;

/// A correlation id as packed: a UUID's 16 bytes, or text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Corr<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> Corr<'a> {
    /// The packed form of `s`: 16 bytes if printing them gives `s` back exactly.
    pub(super) fn of(s: &'a str) -> Corr<'a> {
        if s.len() == uuid::fmt::Hyphenated::LENGTH {
            if let Ok(u) = uuid::Uuid::try_parse(s) {
                let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                if u.hyphenated().encode_lower(&mut buf) == s {
                    return Corr::Uuid(*u.as_bytes());
                }
            }
        }
        Corr::Text(s)
    }
}

impl std::fmt::Display for Corr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corr::Uuid(b) => uuid::Uuid::from_bytes(*b).hyphenated().fmt(f),
            Corr::Text(s) => f.write_str(s),
        }
    }
}

/// One remembered key, as packed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub(super) key: &'a str,
    pub(super) seq: u64,
    pub(super) fp: u64,
    pub(super) correlation_id: Corr<'a>,
}

/// Appends one entry of the row whose id is `id` (`e.seq >= id`).
pub(super) fn pack(buf: &mut Vec<u8>, id: u64, e: &Entry<'_>) {
    put_varint(buf, e.key.len() as u64);
    buf.extend_from_slice(e.key.as_bytes());
    put_varint(buf, e.seq.saturating_sub(id));
    buf.extend_from_slice(&e.fp.to_le_bytes());
    match e.correlation_id {
        Corr::Uuid(b) => {
            buf.push(1);
            buf.extend_from_slice(&b);
        }
        Corr::Text(s) => {
            buf.push(0);
            put_varint(buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// The entries of row `id`, in the order they were remembered. A damaged row ends at its
/// first malformed entry: the keys after it are forgotten (a retry of them is stored again —
/// a duplicate, never a loss); [`Entries::rest`] is then not empty.
pub(super) fn entries(id: u64, b: &[u8]) -> Entries<'_> {
    Entries { id, rest: b }
}

pub(super) struct Entries<'a> {
    id: u64,
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// What is left unparsed: empty after the last entry of a whole row.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let (e, rest) = parse(self.id, self.rest)?;
        self.rest = rest;
        Some(e)
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_at(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

fn str_at(b: &[u8], len: u64) -> Option<(&str, &[u8])> {
    let (s, rest) = b.split_at_checked(usize::try_from(len).ok()?)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

fn parse(id: u64, b: &[u8]) -> Option<(Entry<'_>, &[u8])> {
    let (len, b) = varint_at(b)?;
    let (key, b) = str_at(b, len)?;
    let (delta, b) = varint_at(b)?;
    let (fp, b) = b.split_first_chunk::<8>()?;
    let (tag, b) = b.split_first()?;
    let (correlation_id, b) = match tag {
        1 => {
            let (u, b) = b.split_first_chunk::<16>()?;
            (Corr::Uuid(*u), b)
        }
        0 => {
            let (len, b) = varint_at(b)?;
            let (s, b) = str_at(b, len)?;
            (Corr::Text(s), b)
        }
        _ => return None,
    };
    let e = Entry {
        key,
        seq: id.checked_add(delta)?,
        fp: u64::from_le_bytes(*fp),
        correlation_id,
    };
    Some((e, b))
}

/// `key`'s newest entry in row `id`.
pub(super) fn find(id: u64, row: &[u8], key: &str) -> Option<idem::Seen> {
    entries(id, row)
        .filter(|e| e.key == key)
        .last()
        .map(|e| idem::Seen {
            seq: e.seq,
            correlation_id: e.correlation_id.to_string(),
            fingerprint: e.fp,
        })
}

/// Format 6's entries (`idem_v3`): `len(key) u32, key, seq u64, fingerprint u64, len(corr)
/// u32, corr`, little-endian. Read by the migration only.
pub(super) mod legacy {
    /// One entry: key, seq, fingerprint, correlation id.
    pub(in super::super) type Entry<'a> = (&'a str, u64, u64, &'a str);

    pub(in super::super) fn entries(mut b: &[u8]) -> impl Iterator<Item = Entry<'_>> {
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
        let (corr, b) = str_at(b, len)?;
        Some(((key, seq, fp, corr), b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn entries_round_trip_and_a_damaged_row_ends_early() {
        let a = Entry {
            key: "d/seq/1",
            seq: 7,
            fp: 0xabcd,
            correlation_id: Corr::of(UUID),
        };
        let b = Entry {
            key: "d/key/ü",
            seq: 7 + 300,
            fp: 1,
            correlation_id: Corr::of(""),
        };
        let mut row = Vec::new();
        pack(&mut row, 7, &a);
        assert_eq!(
            row.len(),
            1 + 7 + 1 + 8 + 1 + 16,
            "a UUID packs to 16 bytes"
        );
        pack(&mut row, 7, &b);
        let mut es = entries(7, &row);
        assert_eq!(es.by_ref().collect::<Vec<_>>(), vec![a.clone(), b]);
        assert!(es.rest().is_empty());
        assert_eq!(a.correlation_id.to_string(), UUID);
        // Cut inside the second entry: the first survives, the rest is named.
        row.truncate(row.len() - 3);
        let mut es = entries(7, &row);
        assert_eq!(es.by_ref().collect::<Vec<_>>(), vec![a]);
        assert!(!es.rest().is_empty());
        assert_eq!(entries(0, &[1, 0]).count(), 0);
        assert_eq!(
            entries(0, &[0, 0xff]).count(),
            0,
            "a varint that never ends"
        );
    }

    #[test]
    fn only_a_canonical_uuid_is_packed_as_bytes_and_any_text_comes_back_as_it_was() {
        for s in [
            UUID,
            "67E55044-10B1-426F-9247-BB680E5FE0C8", // upper case
            "67e5504410b1426f9247bb680e5fe0c8",     // simple form
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "c-1",
            "",
            "67e55044-10b1-426f-9247-bb680e5fe0cX",
        ] {
            let corr = Corr::of(s);
            assert_eq!(matches!(corr, Corr::Uuid(_)), s == UUID, "{s}");
            let mut row = Vec::new();
            let e = Entry {
                key: "k",
                seq: 1,
                fp: 2,
                correlation_id: corr,
            };
            pack(&mut row, 1, &e);
            let seen = find(1, &row, "k").unwrap();
            assert_eq!(seen.correlation_id, s);
        }
    }

    #[test]
    fn the_newest_entry_of_a_key_counts() {
        let mut row = Vec::new();
        for (seq, fp) in [(1, 10), (2, 20)] {
            let e = Entry {
                key: "k",
                seq,
                fp,
                correlation_id: Corr::of("c"),
            };
            pack(&mut row, 1, &e);
        }
        let seen = find(1, &row, "k").unwrap();
        assert_eq!((seen.seq, seen.fingerprint), (2, 20));
        assert!(find(1, &row, "other").is_none());
    }
}
