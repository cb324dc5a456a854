//! rumqttc client options from the typed config: broker address, TLS (native-tls, the same
//! OpenSSL the rest of the gateway uses), credentials. Shared by the MQTT ingest session and
//! the mqtt sink.

use edge_gateway_config::BrokerAddr;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("bad broker address {url:?}: {why}")]
    Broker { url: String, why: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad TLS material in {path}: {why}")]
    Tls { path: PathBuf, why: String },
}

/// Everything needed to connect one client.
pub struct ClientSettings<'a> {
    pub broker: &'a str,
    pub client_id: String,
    pub keep_alive: Duration,
    /// false: the broker keeps the session (subscriptions, un-acked messages) across
    /// disconnects.
    pub clean_session: bool,
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
    pub username: Option<&'a str>,
    pub password_file: Option<&'a Path>,
    /// Outgoing QoS 1 publishes awaiting PUBACK, at most.
    pub inflight: u16,
    /// Largest packet read from the broker. A larger one drops the connection (and a
    /// broker would send it again): the broker must refuse it first, see
    /// [`ingest_packet_limit`].
    pub max_incoming_packet: usize,
}

/// Largest packet MQTT allows: what we may send.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// What the ingest session reads at most: a payload of `max_payload_bytes` (larger ones up to
/// this are read and dead-lettered as `payload_too_large`) plus the longest topic MQTT
/// allows and the fixed header. The shipped edge broker's `max_packet_size` (327,680) is
/// below it for the default 256 KiB, so nothing the broker accepts can drop the session;
/// without that cap a hostile device could make the gateway allocate up to 256 MiB per
/// message (issue 8).
pub fn ingest_packet_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes
        .saturating_add(65_535 + 2 + 5)
        .min(MQTT_MAX_PACKET)
}

/// What an mqtt sink reads at most: only acknowledgements come back.
pub const SINK_INCOMING_PACKET: usize = 64 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, MqttSetupError> {
    std::fs::read(path).map_err(|source| MqttSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> MqttSetupError {
    MqttSetupError::Tls {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// A native-tls connector: only `ca_file`'s CAs are trusted when it is set (a private edge
/// PKI should not also trust every public CA); the client identity is presented for mTLS.
pub fn tls_connector(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<native_tls::TlsConnector, MqttSetupError> {
    let mut b = native_tls::TlsConnector::builder();
    if let Some(ca) = ca_file {
        let pem = read(ca)?;
        let certs = openssl::x509::X509::stack_from_pem(&pem).map_err(|e| tls_err(ca, e))?;
        if certs.is_empty() {
            return Err(tls_err(ca, "no certificate found"));
        }
        for c in certs {
            let der = c.to_der().map_err(|e| tls_err(ca, e))?;
            b.add_root_certificate(
                native_tls::Certificate::from_der(&der).map_err(|e| tls_err(ca, e))?,
            );
        }
        b.disable_built_in_roots(true);
    }
    if let (Some(cert), Some(key)) = (cert_file, key_file) {
        let cert_pem = read(cert)?;
        let key = openssl::pkey::PKey::private_key_from_pem(&read(key)?)
            .map_err(|e| tls_err(key, e))?
            .private_key_to_pem_pkcs8()
            .map_err(|e| tls_err(key, e))?;
        let id = native_tls::Identity::from_pkcs8(&cert_pem, &key).map_err(|e| tls_err(cert, e))?;
        b.identity(id);
    }
    b.build()
        .map_err(|e| tls_err(ca_file.unwrap_or(Path::new("-")), e))
}

/// The parsed broker address, the transport and the credentials, whatever the protocol.
struct Common {
    addr: BrokerAddr,
    transport: Option<Transport>,
    credentials: Option<(String, String)>,
}

fn common(s: &ClientSettings<'_>) -> Result<Common, MqttSetupError> {
    let addr = BrokerAddr::parse(s.broker).map_err(|why| MqttSetupError::Broker {
        url: s.broker.to_string(),
        why,
    })?;
    let transport = if addr.tls {
        let c = tls_connector(s.ca_file, s.client_cert_file, s.client_key_file)?;
        Some(Transport::Tls(TlsConfiguration::NativeConnector(c)))
    } else {
        None
    };
    let credentials = match (s.username, s.password_file) {
        (Some(user), Some(pf)) => Some((
            user.to_string(),
            String::from_utf8_lossy(&read(pf)?).trim().to_string(),
        )),
        _ => None,
    };
    Ok(Common {
        addr,
        transport,
        credentials,
    })
}

/// Socket options of every MQTT connection: Nagle's algorithm off (rumqttc leaves it on), so a
/// small QoS 1 publish or PUBACK is never held back to be coalesced with a later one. (On
/// loopback it changed no figure of the upstream drain: docs/benchmarks.md.) MQTT 3.1.1
/// clients take these on their event loop ([`rumqttc::EventLoop::set_network_options`]),
/// MQTT 5 ones in their options.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// MQTT 3.1.1 options for `s`. Manual acks are set by the caller that needs them.
pub fn options(s: &ClientSettings<'_>) -> Result<MqttOptions, MqttSetupError> {
    let c = common(s)?;
    let mut o = MqttOptions::new(s.client_id.clone(), c.addr.host, c.addr.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(s.clean_session)
        .set_max_packet_size(s.max_incoming_packet, MQTT_MAX_PACKET)
        .set_inflight(s.inflight.max(1));
    if let Some(t) = c.transport {
        o.set_transport(t);
    }
    if let Some((u, p)) = c.credentials {
        o.set_credentials(u, p);
    }
    Ok(o)
}

/// MQTT 5 options for `s` (the mqtt sink with `protocol = "v5"`).
pub fn options_v5(s: &ClientSettings<'_>) -> Result<rumqttc::v5::MqttOptions, MqttSetupError> {
    let c = common(s)?;
    let mut o = rumqttc::v5::MqttOptions::new(s.client_id.clone(), c.addr.host, c.addr.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_start(s.clean_session)
        .set_max_packet_size(Some(s.max_incoming_packet.min(MQTT_MAX_PACKET) as u32))
        .set_outgoing_inflight_upper_limit(s.inflight.max(1))
        .set_network_options(network_options());
    if let Some(t) = c.transport {
        o.set_transport(t);
    }
    if let Some((u, p)) = c.credentials {
        o.set_credentials(u, p);
    }
    Ok(o)
}
