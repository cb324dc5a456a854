//! Certificate expiry as a metric (issue 13): every certificate file the configuration names
//! — listeners, the MQTT session's and the sinks' client certificates, CA files — with the
//! time its first certificate stops being valid, so an alert can warn weeks before a field
//! gateway stops talking. Re-read with the reload watch (`supervisors/src/tls_reload.rs`).

use crate::metrics::reg;
use prometheus::{GaugeVec, Opts, Registry};
use std::path::Path;

pub struct CertMetrics {
    pub expiry: GaugeVec,
}

impl CertMetrics {
    pub fn new(r: &Registry) -> CertMetrics {
        CertMetrics {
            expiry: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "tls_certificate_expiry_timestamp_seconds",
                        "When the first certificate in a configured PEM file expires (Unix time)",
                    ),
                    &["owner", "file"],
                )
                .unwrap(),
            ),
        }
    }

    /// Sets the expiry of each `(owner, file)` that holds a readable certificate.
    pub fn observe<'a>(&self, files: impl IntoIterator<Item = (String, &'a Path)>) {
        self.expiry.reset();
        for (owner, file) in files {
            if let Some(t) = not_after(file) {
                self.expiry
                    .with_label_values(&[&owner, &file.display().to_string()])
                    .set(t as f64);
            }
        }
    }
}

/// The `notAfter` of the first certificate in a PEM file, as Unix seconds.
pub fn not_after(file: &Path) -> Option<i64> {
    let pem = std::fs::read(file).ok()?;
    let cert = openssl::x509::X509::from_pem(&pem).ok()?;
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_not_after_of_a_pem_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_pubkey(&key).unwrap();
        let start = openssl::asn1::Asn1Time::from_unix(1_800_000_000).unwrap();
        let end = openssl::asn1::Asn1Time::from_unix(1_900_000_000).unwrap();
        b.set_not_before(&start).unwrap();
        b.set_not_after(&end).unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let f = dir.path().join("c.pem");
        std::fs::write(&f, b.build().to_pem().unwrap()).unwrap();
        assert_eq!(super::not_after(&f), Some(1_900_000_000));
        std::fs::write(&f, "junk").unwrap();
        assert_eq!(super::not_after(&f), None);
    }
}
