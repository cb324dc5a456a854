//! The running gateway, from the command line: its admin API, found in `data/admin.addr`
//! (written at start), with the admin token (`--admin-token-file`, `EDGE_GATEWAY_ADMIN_TOKEN`,
//! or the generated `data/admin.token`). The WAL tools use it when the WAL is held open.

use edge_gateway_actors::wal::WalError;
use edge_gateway_config::Config;

/// How the command line reaches a running gateway's admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// A file holding the admin token; else `EDGE_GATEWAY_ADMIN_TOKEN`; else the generated
    /// `data/admin.token`.
    pub token_file: Option<std::path::PathBuf>,
    /// The CA that signed the admin listener's certificate (`admin.tls`).
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "the gateway is running and cannot be reached through its admin API ({0}); pass \
         --admin-token-file (or set EDGE_GATEWAY_ADMIN_TOKEN), and --admin-ca-file if the admin \
         listener has TLS, or stop the gateway and run this again"
    )]
    Unreachable(String),
    #[error("the gateway answered: {0}")]
    Refused(String),
}

/// One request to the running gateway's admin API, found in `data/admin.addr`, with the admin
/// token: `(status, body)`.
pub fn admin_request(
    cfg: &Config,
    access: &AdminAccess,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
) -> Result<(u16, String), OnlineError> {
    send(cfg, access, method, path, query, None)
}

/// A POST with a body (JSON Lines) to the running gateway: `(status, answer)`.
pub fn admin_post(
    cfg: &Config,
    access: &AdminAccess,
    path: &str,
    query: &[(&str, String)],
    body: String,
) -> Result<(u16, String), OnlineError> {
    send(cfg, access, reqwest::Method::POST, path, query, Some(body))
}

fn send(
    cfg: &Config,
    access: &AdminAccess,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<String>,
) -> Result<(u16, String), OnlineError> {
    let (client, url, token) = prepare(cfg, access, path, query)?;
    runtime()?
        .block_on(async {
            let mut req = client.request(method, url).bearer_auth(token.trim());
            if let Some(b) = body {
                req = req.header("content-type", "application/x-ndjson").body(b);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok::<(u16, String), reqwest::Error>((status, resp.text().await?))
        })
        .map_err(|e| OnlineError::Unreachable(e.to_string()))
}

/// A runtime for one request of the command line.
fn runtime() -> Result<tokio::runtime::Runtime, OnlineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OnlineError::Unreachable(e.to_string()))
}

/// The client, URL and token for a request to the running gateway.
fn prepare(
    cfg: &Config,
    access: &AdminAccess,
    path: &str,
    query: &[(&str, String)],
) -> Result<(reqwest::Client, reqwest::Url, String), OnlineError> {
    let unreachable = |e: &dyn std::fmt::Display| OnlineError::Unreachable(e.to_string());
    let base = std::fs::read_to_string(cfg.data_dir.join("admin.addr"))
        .map_err(|e| unreachable(&format!("data/admin.addr: {e}")))?;
    let token = match (
        &access.token_file,
        std::env::var("EDGE_GATEWAY_ADMIN_TOKEN"),
    ) {
        (Some(f), _) => edge_gateway_actors::ingest::auth::read_secret(f),
        (None, Ok(t)) => Ok(t),
        (None, Err(_)) => {
            edge_gateway_actors::ingest::auth::read_secret(&cfg.data_dir.join("admin.token"))
        }
    }
    .map_err(|e| unreachable(&format!("the admin token: {e}")))?;
    let client = edge_gateway_actors::sinks::http::with_tls(
        reqwest::Client::builder(),
        access.ca_file.as_deref(),
        None,
    )
    .and_then(|b| b.build().map_err(|e| e.to_string()))
    .map_err(|e| unreachable(&e))?;
    let url = reqwest::Url::parse_with_params(&format!("{}{path}", base.trim()), query)
        .map_err(|e| unreachable(&e))?;
    Ok((client, url, token))
}

/// `id` as one URL path segment (keys hold `/`).
pub fn url_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET whose answer is streamed into `out` (an export); the lines written. `progress` is
/// called every 10,000 lines.
pub fn admin_stream(
    cfg: &Config,
    access: &AdminAccess,
    path: &str,
    query: &[(&str, String)],
    out: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, OnlineError> {
    let (client, url, token) = prepare(cfg, access, path, query)?;
    let unreachable = |e: &dyn std::fmt::Display| OnlineError::Unreachable(e.to_string());
    runtime()?.block_on(async {
        let mut resp = client
            .get(url)
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(OnlineError::Refused(format!("HTTP {status}: {body}")));
        }
        let mut lines = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            let before = lines / 10_000;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            out.write_all(&chunk)
                .map_err(|e| OnlineError::Refused(format!("writing the export: {e}")))?;
            if lines / 10_000 > before {
                progress(lines);
            }
        }
        out.flush()
            .map_err(|e| OnlineError::Refused(format!("writing the export: {e}")))?;
        Ok(lines)
    })
}
