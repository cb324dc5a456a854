//! A throw-away PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1 /
//! localhost, client certificates by common name, and an unrelated CA.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub dir: PathBuf,
}

/// Runs the openssl CLI in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

fn self_signed(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subj = format!("/CN={name}");
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-keyout", &key];
    args.extend(EC);
    args.extend(["-out", &pem, "-subj", &subj]);
    openssl(dir, &args);
}

impl Pki {
    /// `ca.pem`/`ca.key`, `server.pem`/`server.key`, and `other-ca.pem`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        self_signed(dir, "ca");
        self_signed(dir, "other-ca");
        let p = Pki {
            dir: dir.to_path_buf(),
        };
        p.issue("server", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        p
    }

    /// `<cn>.pem` / `<cn>.key` signed by the CA.
    pub fn client(&self, cn: &str) {
        self.issue(cn, "extendedKeyUsage=clientAuth");
    }

    fn issue(&self, cn: &str, ext: &str) {
        let d = &self.dir;
        let (key, csr, pem, extf) = (
            format!("{cn}.key"),
            format!("{cn}.csr"),
            format!("{cn}.pem"),
            format!("{cn}.ext"),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec![
            "req", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ];
        args.extend(EC);
        openssl(d, &args);
        std::fs::write(d.join(&extf), format!("{ext}\n")).unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extf,
            ],
        );
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
