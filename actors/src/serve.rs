//! Serving a warp filter on a bound listener, with the limits warp's own server lacks.
//!
//! warp 0.4's `serve` has no header-read timeout, so a slowloris client could hold
//! connections open forever. This accept loop uses hyper-util directly with
//! `header_read_timeout`, and closes when `shutdown` fires.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warp::Filter;

/// Runs until `shutdown` becomes true. Connections already accepted finish on their own.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    loop {
        let (stream, _peer) = tokio::select! {
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
        tokio::spawn(async move {
            let mut b = Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
