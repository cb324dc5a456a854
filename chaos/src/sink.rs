//! The recording HTTP analytics sink: a minimal HTTP/1.1 server (keep-alive, Content-Length
//! bodies — what the gateway's http sink sends) so faults can be exact: a status, a hang, or a
//! TCP reset. Every record of every answered-200 batch goes into the ledger. A batch holding a
//! poison reading (`"poison": true`) is refused with `400`, always: the API blames that record.

use crate::ledger::Ledger;
use crate::scenario::SinkFault;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct Sink {
    pub port: u16,
    fault: Arc<Mutex<Option<SinkFault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start(ledger: Arc<Mutex<Ledger>>, name: &'static str) -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let fault: Arc<Mutex<Option<SinkFault>>> = Arc::default();
        let f = fault.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, f.clone(), ledger.clone(), name));
            }
        });
        Ok(Sink { port, fault, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    pub fn set(&self, fault: Option<SinkFault>) {
        *self.fault.lock().expect("fault lock") = fault;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    sock: TcpStream,
    fault: Arc<Mutex<Option<SinkFault>>>,
    ledger: Arc<Mutex<Ledger>>,
    name: &'static str,
) {
    let mut r = BufReader::new(sock);
    loop {
        // Request line and headers.
        let mut len = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if first {
                first = false;
                continue;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let now = *fault.lock().expect("fault lock");
        match now {
            Some(SinkFault::Hang) => {
                // Hold the connection open, never answer; the gateway's timeout fires.
                let _ = tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                return;
            }
            Some(SinkFault::Reset) => {
                let sock = r.into_inner();
                // Linger 0: close sends RST at once (nothing to flush, so drop never blocks).
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(std::time::Duration::ZERO));
                drop(sock); // RST
                return;
            }
            Some(SinkFault::BodyLimit(max)) if len > max => {
                let resp = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
                if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(SinkFault::Status(code)) => {
                let resp =
                    format!("HTTP/1.1 {code} Fault\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n");
                if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            None | Some(SinkFault::BodyLimit(_)) if holds_poison(&body) => {
                let resp = "HTTP/1.1 400 Bad Request\r\ncontent-length: 13\r\n\r\npoison record";
                if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            None | Some(SinkFault::BodyLimit(_)) => {
                record(&ledger, name, &body);
                let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a batch holds a reading its device marked `"poison": true`.
fn holds_poison(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["records"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["data"]["poison"] == true))
    })
}

/// Parses a batch (`{"records": [...]}`) into the ledger. Called before the 200 is sent.
fn record(ledger: &Mutex<Ledger>, name: &str, body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let mut l = ledger.lock().expect("ledger lock");
    for rec in v["records"].as_array().into_iter().flatten() {
        deliver_record(&mut l, name, rec);
    }
}

/// One record as every sink receives it (see the gateway's `record_json`).
pub fn deliver_record(l: &mut Ledger, sink: &str, rec: &serde_json::Value) {
    let key = rec["idempotency_key"].as_str().unwrap_or("");
    let device = rec["device_id"].as_str().unwrap_or("");
    let seq = rec["seq"].as_u64().unwrap_or(u64::MAX);
    let value = rec["data"]["value"].as_f64();
    l.delivered(sink, key, device, seq, value);
}
