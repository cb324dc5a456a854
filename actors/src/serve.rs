//! Serving a warp filter on a bound listener, with the limits warp's own server lacks.
//!
//! Hostile clients are the design case (issue 8, docs/security.md):
//! - HTTP/1.1 only. hyper-util's auto builder sniffs the first bytes for the HTTP/2 preface
//!   *before* hyper's header-read timeout starts, so a socket that sends nothing was held
//!   forever; and HTTP/2 has no header timeout at all. No device client needs HTTP/2 here.
//!   hyper (re)starts the header timer whenever it waits for a request head, so
//!   `header_read_timeout` bounds a silent new connection, a slow head (slowloris) and an
//!   idle keep-alive connection alike. With TLS, the handshake has the same budget.
//! - Connection caps: at most `max_connections` open, `max_per_peer` from one address; past
//!   either a new connection is closed at once, counted
//!   (`edge_gateway_connections_refused_total{listener,reason}`) and logged (at most once
//!   per 10 s per listener). Each listener has its own caps, so a flooded ingest listener
//!   never takes the admin API's sockets (probes keep answering).
//! - The request head is bounded by hyper's buffer (`MAX_HEAD_BYTES`).
//!
//! The accept loop closes when `shutdown` fires; connections already accepted finish on
//! their own, each holding its slots until it ends.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use warp::Filter;

/// A listener's server-side TLS configuration: built at start, built again from its files by
/// a reload (a bad file refused, the old configuration kept); each new connection takes the
/// one in force.
#[derive(Clone)]
pub struct TlsAcceptor {
    cfg: edge_gateway_config::TlsConfig,
    current: Arc<std::sync::RwLock<Arc<SslAcceptor>>>,
}

impl crate::reload::Reload for TlsAcceptor {
    fn files(&self) -> Vec<std::path::PathBuf> {
        let c = &self.cfg;
        [
            Some(&c.cert_file),
            Some(&c.key_file),
            c.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    fn reload(&self) -> Result<(), String> {
        let fresh = Self::build(&self.cfg)?;
        *self.current.write().expect("tls acceptor") = Arc::new(fresh);
        Ok(())
    }
}

impl TlsAcceptor {
    pub fn new(cfg: &edge_gateway_config::TlsConfig) -> Result<TlsAcceptor, String> {
        Ok(TlsAcceptor {
            cfg: cfg.clone(),
            current: Arc::new(std::sync::RwLock::new(Arc::new(Self::build(cfg)?))),
        })
    }

    fn current(&self) -> Arc<SslAcceptor> {
        self.current.read().expect("tls acceptor").clone()
    }

    /// Server certificate chain and key (PEM); with `client_ca_file`, mutual TLS is required.
    fn build(cfg: &edge_gateway_config::TlsConfig) -> Result<SslAcceptor, String> {
        let ctx = |what: &str, e: openssl::error::ErrorStack| format!("{what}: {e}");
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| ctx("TLS setup", e))?;
        b.set_certificate_chain_file(&cfg.cert_file)
            .map_err(|e| ctx(&format!("cert_file {}", cfg.cert_file.display()), e))?;
        b.set_private_key_file(&cfg.key_file, SslFiletype::PEM)
            .map_err(|e| ctx(&format!("key_file {}", cfg.key_file.display()), e))?;
        b.check_private_key()
            .map_err(|e| ctx("key does not match certificate", e))?;
        if let Some(ca) = &cfg.client_ca_file {
            b.set_ca_file(ca)
                .map_err(|e| ctx(&format!("client_ca_file {}", ca.display()), e))?;
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        Ok(b.build())
    }
}

/// Largest request head (line + headers) a client may send: hyper answers 431 past it.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One listener's limits against hoarding (see the module doc).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `ingest` or `admin`: the metric label and the log's name for the listener.
    pub listener: &'static str,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_per_peer: usize,
}

/// Connection accounting of one listener: a slot is held for as long as the connection.
struct Slots {
    limits: Limits,
    total: Arc<Semaphore>,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    last_log: Mutex<Option<tokio::time::Instant>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxPerPeer,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPerPeer => "max_connections_per_peer",
        }
    }
}

/// Held by a connection's task; frees its slots when dropped.
struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.per_peer.lock().expect("per-peer lock");
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
        if let Some(metrics) = &self.slots.metrics {
            metrics
                .connections_open
                .with_label_values(&[self.slots.limits.listener])
                .dec();
        }
    }
}

impl Slots {
    fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::MaxConnections)?;
        {
            let mut m = self.per_peer.lock().expect("per-peer lock");
            let n = m.entry(peer).or_insert(0);
            if *n >= self.limits.max_per_peer {
                return Err(Refusal::MaxPerPeer);
            }
            *n += 1;
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .connections_open
                .with_label_values(&[self.limits.listener])
                .inc();
        }
        Ok(Slot {
            slots: self.clone(),
            peer,
            _total: total,
        })
    }

    fn refused(&self, peer: IpAddr, why: Refusal) {
        if let Some(metrics) = &self.metrics {
            metrics
                .connections_refused
                .with_label_values(&[self.limits.listener, why.label()])
                .inc();
        }
        let now = tokio::time::Instant::now();
        let mut last = self.last_log.lock().expect("log lock");
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(
                listener = self.limits.listener,
                peer = %peer,
                reason = why.label(),
                max_connections = self.limits.max_connections,
                max_connections_per_peer = self.limits.max_per_peer,
                "connection refused: limit reached (counted in \
                 edge_gateway_connections_refused_total; logged at most every 10 s)"
            );
        }
    }
}

/// Runs until `shutdown` changes. Connections already accepted finish on their own.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let header_read_timeout = limits.header_read_timeout;
    let slots = Arc::new(Slots {
        total: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        per_peer: Mutex::default(),
        metrics,
        last_log: Mutex::default(),
    });
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let slot = match slots.take(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                slots.refused(peer.ip(), why);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut b = Builder::new(TokioExecutor::new()).http1_only();
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let served = match tls {
                None => b.serve_connection(TokioIo::new(stream), svc).await,
                Some(t) => {
                    let acceptor = t.current();
                    let handshake = async {
                        let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
                        let mut s = tokio_openssl::SslStream::new(ssl, stream)
                            .map_err(|e| e.to_string())?;
                        Pin::new(&mut s).accept().await.map_err(|e| e.to_string())?;
                        Ok::<_, String>(s)
                    };
                    match tokio::time::timeout(header_read_timeout, handshake).await {
                        Ok(Ok(s)) => b.serve_connection(TokioIo::new(s), svc).await,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
