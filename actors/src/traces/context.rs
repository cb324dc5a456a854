//! A W3C Trace Context (`traceparent`): parsed from what a device sends, stored with its
//! record in the WAL (a 25-byte CBOR byte string, 27 bytes), and written into what the sinks send.
//!
//! Parsing follows the W3C recommendation: a header that is not exactly a version-00
//! `traceparent` (or a later version's first four fields) is ignored, never an error — a
//! reading is not refused for its tracing header.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// The longest header looked at: a version-00 header is 55 characters; later versions may
/// append fields, which are ignored. Anything longer is not parsed at all.
const MAX_LEN: usize = 512;

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else (all-zero ids, version `ff`,
    /// upper-case hex, wrong lengths, a version-00 header with more fields).
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim();
        if s.len() > MAX_LEN || !s.is_ascii() {
            return None;
        }
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let more = parts.next().is_some();
        let version = hex_exact::<1>(version)?[0];
        if version == 0xff || (version == 0 && more) {
            return None;
        }
        if version > 0 && flags.len() != 2 {
            return None;
        }
        let tp = TraceParent {
            trace_id: hex_exact::<16>(trace)?,
            span_id: hex_exact::<8>(span)?,
            flags: hex_exact::<1>(flags)?[0],
        };
        (tp.trace_id != [0; 16] && tp.span_id != [0; 8]).then_some(tp)
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }

    fn to_bytes(self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..16].copy_from_slice(&self.trace_id);
        b[16..24].copy_from_slice(&self.span_id);
        b[24] = self.flags;
        b
    }

    fn from_bytes(b: &[u8]) -> Option<TraceParent> {
        (b.len() == 25).then(|| TraceParent {
            trace_id: b[..16].try_into().expect("16 bytes"),
            span_id: b[16..24].try_into().expect("8 bytes"),
            flags: b[24],
        })
    }
}

/// Lower-case hex of exactly `N` bytes.
fn hex_exact<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
    }
}

/// In the WAL: 25 raw bytes (trace id, span id, flags).
impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.to_bytes()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        TraceParent::from_bytes(&b)
            .ok_or_else(|| serde::de::Error::invalid_length(b.len(), &"25 bytes"))
    }
}

/// The JSON sinks send: the header's text.
pub struct TraceParentText(pub TraceParent);

impl Serialize for TraceParentText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert!(tp.sampled());
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(tp.to_string(), GOOD);
        let unsampled = TraceParent::parse(&GOOD.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn later_versions_keep_their_first_four_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert_eq!(TraceParent::parse(v).unwrap().to_string(), GOOD);
    }

    #[test]
    fn anything_else_is_ignored() {
        for bad in [
            "",
            "00",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            TraceParent::parse(&format!("{GOOD}{}", "-x".repeat(300))),
            None
        );
    }

    #[test]
    fn stored_as_25_bytes_and_read_back() {
        let tp = TraceParent::parse(GOOD).unwrap();
        let mut out = Vec::new();
        ciborium::into_writer(&tp, &mut out).unwrap();
        assert_eq!(out.len(), 27, "a 25-byte CBOR byte string (2-byte header)");
        let back: TraceParent = ciborium::from_reader(&out[..]).unwrap();
        assert_eq!(back, tp);
        let short = {
            let mut o = Vec::new();
            ciborium::into_writer(&serde_bytes::Bytes::new(&[1, 2, 3]), &mut o).unwrap();
            o
        };
        assert!(ciborium::from_reader::<TraceParent, _>(&short[..]).is_err());
    }
}
