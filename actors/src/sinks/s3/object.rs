//! What a batch becomes in the store: its object key, its body (JSON Lines, compressed) and
//! the checksum the store verifies. Pure: no client, no I/O.
//!
//! Key: `{key_prefix}{gateway_id}/dt=YYYY-MM-DD/hour=HH/{first_seq:020}-{tag}.jsonl{.gz|.zst}`,
//! where the date is the first record's receive time (UTC) and `tag` is 8 hex digits of a
//! hash of the first record's idempotency key. Only the first record names the object: a
//! retry after a crash starts at the same record (a batch is settled as a whole, and a new
//! lease begins at the oldest pending record), so it re-puts the same key — with the same
//! records or more, never a second object holding the same readings. The tag keeps a WAL
//! created afresh (its seqs start again at 1) from overwriting an older archive.

use crate::sinks::json::write_stable;
use crate::wal::Leased;
use base64::Engine;
use edge_gateway_config::S3Compression;
use md5::{Digest, Md5};
use std::io::Write;

/// One object ready to put.
#[derive(Debug)]
pub struct Object {
    pub key: String,
    pub body: Vec<u8>,
    /// Base64 MD5 of `body` (`Content-MD5`): a body corrupted on the way is refused.
    pub content_md5: String,
    /// Bytes of JSON Lines before compression.
    pub raw_bytes: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The object key of a batch whose first record is `first`.
pub fn object_key(prefix: &str, gateway_id: &str, first: &Leased, ext: &str) -> String {
    let t = crate::sinks::utc::Civil::from_ms(first.record.receive_ts_ms);
    let (date, hour) = (t.date(), t.hour);
    let tag = sha2::Sha256::digest(first.record.idempotency_key.as_bytes());
    format!(
        "{prefix}{gateway_id}/dt={date}/hour={hour:02}/{:020}-{}.jsonl{ext}",
        first.seq,
        hex::encode(&tag[..4])
    )
}

/// JSON Lines of `batch` (the record JSON every sink receives), before compression.
pub fn json_lines(batch: &[Leased]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 256);
    for l in batch {
        write_stable(&mut out, l);
        out.push(b'\n');
    }
    out
}

/// Builds the object of a non-empty batch.
pub fn build(
    batch: &[Leased],
    prefix: &str,
    gateway_id: &str,
    compression: S3Compression,
) -> std::io::Result<Object> {
    let (first, last) = match (batch.first(), batch.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(std::io::Error::other("empty batch")),
    };
    let raw = json_lines(batch);
    let body = compress(&raw, compression)?;
    Ok(Object {
        key: object_key(prefix, gateway_id, first, compression.extension()),
        content_md5: base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body)),
        raw_bytes: raw.len(),
        body,
        first_seq: first.seq,
        last_seq: last.seq,
    })
}

fn compress(raw: &[u8], c: S3Compression) -> std::io::Result<Vec<u8>> {
    match c {
        S3Compression::None => Ok(raw.to_vec()),
        S3Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::default(),
            );
            e.write_all(raw)?;
            e.finish()
        }
        S3Compression::Zstd => zstd::bulk::compress(raw, 3),
    }
}

/// The `Content-Encoding` of a compression.
pub fn content_encoding(c: S3Compression) -> Option<&'static str> {
    match c {
        S3Compression::Gzip => Some("gzip"),
        S3Compression::Zstd => Some("zstd"),
        S3Compression::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn leased(seq: u64, key: &str, ts: u64) -> Leased {
        Leased {
            seq,
            attempts: 1,
            record: crate::wal::tests::rec(key, ts),
            live: false,
        }
    }

    #[test]
    fn the_first_record_names_the_object_and_the_body_reads_back() {
        let batch = vec![
            leased(7, "d1/seq/0", 1_795_386_600_000),
            leased(9, "d1/seq/1", 0),
        ];
        let o = build(&batch, "arch/", "gw-1", S3Compression::Gzip).unwrap();
        assert!(
            o.key
                .starts_with("arch/gw-1/dt=2026-11-22/hour=22/00000000000000000007-"),
            "{}",
            o.key
        );
        assert!(o.key.ends_with(".jsonl.gz"), "{}", o.key);
        // The same first record, more records after it: the same key (a retry re-puts it).
        let more = vec![
            batch[0].clone(),
            batch[1].clone(),
            leased(11, "d1/seq/2", 0),
        ];
        assert_eq!(
            build(&more, "arch/", "gw-1", S3Compression::Gzip)
                .unwrap()
                .key,
            o.key
        );
        // Another first record with the same seq (a WAL made afresh): another key.
        let other = vec![leased(7, "d2/seq/0", 1_795_386_600_000)];
        assert_ne!(
            build(&other, "arch/", "gw-1", S3Compression::Gzip)
                .unwrap()
                .key,
            o.key
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(&o.body[..])
            .read_to_string(&mut text)
            .unwrap();
        let keys: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["idempotency_key"].to_string()
            })
            .collect();
        assert_eq!(keys, ["\"d1/seq/0\"", "\"d1/seq/1\""]);
        assert_eq!(o.raw_bytes, text.len());
        assert_eq!((o.first_seq, o.last_seq), (7, 9));
        // The Content-MD5 the store checks (s3s-fs answers BadDigest on a mismatch).
        use base64::Engine;
        let md5 = base64::engine::general_purpose::STANDARD
            .decode(&o.content_md5)
            .unwrap();
        assert_eq!(md5, Md5::digest(&o.body).to_vec());
        let z = build(&batch, "", "gw-1", S3Compression::Zstd).unwrap();
        assert_eq!(zstd::decode_all(&z.body[..]).unwrap(), text.as_bytes());
        assert!(z.key.ends_with(".jsonl.zst"));
    }
}
