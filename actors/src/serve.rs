//! Serving a warp filter on a bound listener, with the limits warp's own server lacks.
//!
//! warp 0.4's `serve` has no header-read timeout, so a slowloris client could hold
//! connections open forever. This accept loop uses hyper-util directly with
//! `header_read_timeout`, and closes when `shutdown` fires. With a [`TlsAcceptor`] each
//! connection first completes a TLS handshake (OpenSSL, the same library native-tls uses, so
//! the gateway keeps one TLS stack), within the same timeout.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warp::Filter;

/// A server-side TLS configuration, built once per listener.
#[derive(Clone)]
pub struct TlsAcceptor(Arc<SslAcceptor>);

impl TlsAcceptor {
    /// Server certificate chain and key (PEM); with `client_ca_file`, mutual TLS is required.
    pub fn new(cfg: &edge_gateway_config::TlsConfig) -> Result<TlsAcceptor, String> {
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
        Ok(TlsAcceptor(Arc::new(b.build())))
    }
}

/// Runs until `shutdown` changes. Connections already accepted finish on their own.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
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
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut b = Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let served = match tls {
                None => b.serve_connection(TokioIo::new(stream), svc).await,
                Some(TlsAcceptor(acceptor)) => {
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
