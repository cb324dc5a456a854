//! CBOR sequences (RFC 8742) for the recovery tools (issue 14): `dlq export --format cbor`
//! writes one CBOR item per entry — the same map a JSON Lines export has per line — and
//! `replay` reads either, telling them apart by the first byte (a JSON line opens with `{`, a
//! CBOR map with a byte in 0xa0..=0xbf).

use std::io::{BufRead, Write};

/// A writer that takes JSON Lines and writes each line to `inner` as one CBOR item, so every
/// producer of JSON Lines (the store's rows, the running gateway's stream) exports CBOR too.
pub struct CborSeqWriter<W: Write> {
    inner: W,
    line: Vec<u8>,
}

impl<W: Write> CborSeqWriter<W> {
    pub fn new(inner: W) -> Self {
        CborSeqWriter {
            inner,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) -> std::io::Result<()> {
        let text = std::mem::take(&mut self.line);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
        ciborium::into_writer(&v, &mut self.inner).map_err(std::io::Error::other)
    }
}

impl<W: Write> Write for CborSeqWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for part in buf.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(part);
            if part.ends_with(b"\n") {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }

    /// A partial line stays buffered until its newline (a stream may pause mid-line).
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for CborSeqWriter<W> {
    fn drop(&mut self) {
        // A last line without its newline still counts.
        let _ = self.emit();
        let _ = self.inner.flush();
    }
}

/// Whether `input` holds a CBOR sequence rather than JSON Lines (looks, consumes nothing).
pub fn is_cbor(input: &mut impl BufRead) -> std::io::Result<bool> {
    let buf = input.fill_buf()?;
    Ok(buf
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| (0xa0..=0xbf).contains(b)))
}

/// The items of a CBOR sequence, each as a JSON line (what `replay` parses).
pub fn lines(mut input: impl BufRead) -> impl Iterator<Item = std::io::Result<String>> {
    std::iter::from_fn(move || match input.fill_buf() {
        Ok([]) => None,
        Ok(_) => Some(
            ciborium::from_reader::<serde_json::Value, _>(&mut input)
                .map_err(|e| std::io::Error::other(format!("not a CBOR item: {e}")))
                .and_then(|v| serde_json::to_string(&v).map_err(std::io::Error::other)),
        ),
        Err(e) => Some(Err(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_become_a_cbor_sequence_and_read_back_line_for_line() {
        let lines_in = [
            r#"{"reason":"expired","record":{"device_id":"d-1","data":{"t":20.5,"ok":true}}}"#,
            r#"{"reason":"max_attempts","record":{"device_id":"d-2","data":{"n":[1,2,3]}}}"#,
        ];
        let mut out = Vec::new();
        {
            let mut w = CborSeqWriter::new(&mut out);
            // Split mid-line, as a stream arrives.
            let text = format!("{}\n{}\n", lines_in[0], lines_in[1]);
            let (a, b) = text.as_bytes().split_at(17);
            w.write_all(a).unwrap();
            w.write_all(b).unwrap();
        }
        let mut r = std::io::BufReader::new(&out[..]);
        assert!(is_cbor(&mut r).unwrap());
        let back: Vec<serde_json::Value> = lines(r)
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        let want: Vec<serde_json::Value> = lines_in
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, want);
        let mut j = std::io::BufReader::new(&b"\n{\"a\":1}\n"[..]);
        assert!(!is_cbor(&mut j).unwrap());
    }

    #[test]
    fn a_torn_cbor_item_is_an_error_not_a_silent_end() {
        let mut out = Vec::new();
        ciborium::into_writer(&serde_json::json!({"a": "long enough text"}), &mut out).unwrap();
        out.truncate(out.len() - 3);
        let got: Vec<_> = lines(std::io::BufReader::new(&out[..])).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }
}
