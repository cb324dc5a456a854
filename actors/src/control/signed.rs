//! Signed control requests over MQTT (pure).
//!
//! With `control.hmac_secret_file` set, a request's MQTT payload must be the envelope
//! `{"signed": "<the request, JSON text>", "hmac_sha256": "<hex>"}` where the hex is
//! HMAC-SHA256(secret, the bytes of `signed`). Signing the text as sent (not a re-encoded
//! object) needs no canonical JSON on either side. A replay of a signed request is answered
//! by its `command_id`'s first record and acts no more.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a request was refused before it was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    #[error("not a signed envelope ({{\"signed\": ..., \"hmac_sha256\": ...}})")]
    NotEnvelope,
    #[error("the signature does not match")]
    BadSignature,
}

impl Unsigned {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Unsigned::NotEnvelope => "unsigned",
            Unsigned::BadSignature => "bad_signature",
        }
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Equal without an early exit, so timing tells nothing about where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request inside a signed envelope, if its signature holds. The caller parses it.
pub fn open<'a>(envelope: &'a Value, secret: &[u8]) -> Result<&'a str, Unsigned> {
    let signed = envelope
        .get("signed")
        .and_then(Value::as_str)
        .ok_or(Unsigned::NotEnvelope)?;
    let mac = envelope
        .get("hmac_sha256")
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Unsigned::NotEnvelope)?;
    if same(&mac, &hmac_sha256(secret, signed.as_bytes())) {
        Ok(signed)
    } else {
        Err(Unsigned::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn only_a_matching_signature_opens_the_envelope() {
        let body = r#"{"command_id":"c-1","kind":"ping"}"#;
        let sig = hex::encode(hmac_sha256(b"s3cret", body.as_bytes()));
        let env = json!({"signed": body, "hmac_sha256": sig});
        assert_eq!(open(&env, b"s3cret"), Ok(body));
        assert_eq!(open(&env, b"other"), Err(Unsigned::BadSignature));
        let tampered = json!({"signed": body.replace("ping", "config.get"), "hmac_sha256": sig});
        assert_eq!(open(&tampered, b"s3cret"), Err(Unsigned::BadSignature));
        assert_eq!(
            open(&json!({"command_id": "c-1", "kind": "ping"}), b"s3cret"),
            Err(Unsigned::NotEnvelope)
        );
        assert_eq!(
            open(&json!({"signed": body, "hmac_sha256": "zz"}), b"s3cret"),
            Err(Unsigned::NotEnvelope)
        );
    }
}
