//! Ingest authentication: bearer tokens, stored as SHA-256 hashes, compared in constant time.
//!
//! There are no default credentials. Either per-device tokens are configured
//! (`auth.devices`), or a fleet token file is (`auth.ingest_token_file`), or, on first start
//! with neither, a random fleet token is generated into `<data_dir>/ingest.token` (0600).

use super::parse::Rejection;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:<hex>` as written in config.
pub fn parse_hash(s: &str) -> Option<TokenHash> {
    let h = hex::decode(s.strip_prefix("sha256:")?).ok()?;
    h.try_into().ok()
}

/// Equal in time independent of where the inputs differ.
pub fn ct_eq(a: &TokenHash, b: &TokenHash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a token file (trimmed), or creates it with a fresh random token, mode 0600.
/// Returns the token and whether it was created.
///
/// Creation is atomic and never follows a link: the token is written to a fresh temporary
/// file (`O_CREAT | O_EXCL`, which refuses any existing path, a symlink included), synced,
/// then hard-linked to `path` — which fails if anything appeared there meanwhile, so a
/// concurrent creator or a planted symlink is never overwritten or written through.
pub fn load_or_create_token(path: &Path) -> std::io::Result<(String, bool)> {
    match read_secret(path) {
        Ok(s) => return Ok((s, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(&bytes[..4])));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok((token, true))
        }
        // Someone else created it first: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((read_secret(path)?, false)),
        Err(e) => Err(e),
    }
}

/// Reads a secret from a file, trimmed; empty is an error, and so (on Unix) is a file that
/// its group or others may read: a token anyone on the box can read is no credential. The
/// error names the fix (`chmod 600`).
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} may be read by its group or others (mode {:o}): refused; run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
    }
    let s = std::fs::read_to_string(path)?;
    let s = s.trim();
    if s.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(s.to_string())
}

/// The credentials in force, swapped whole when their files are reloaded.
#[derive(Clone, Default)]
pub struct AuthCell(Arc<RwLock<Arc<Auth>>>);

impl AuthCell {
    pub fn new(a: Auth) -> AuthCell {
        AuthCell(Arc::new(RwLock::new(Arc::new(a))))
    }

    pub fn get(&self) -> Arc<Auth> {
        self.0.read().expect("auth").clone()
    }

    pub fn set(&self, a: Auth) {
        *self.0.write().expect("auth") = Arc::new(a);
    }
}

/// Who may ingest for which device.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Accepted for any device.
    pub fleet: Option<TokenHash>,
    pub devices: HashMap<String, TokenHash>,
}

impl Auth {
    /// Checks an `Authorization` header for a device: 401 without a usable bearer token,
    /// 403 with a token that is not valid for this device.
    pub fn check(&self, device_id: &str, authorization: Option<&str>) -> Result<(), Rejection> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    401,
                    "unauthorized",
                    Some("authorization".into()),
                    "a bearer token is required: Authorization: Bearer <token>",
                )
            })?;
        let h = hash_token(token);
        let fleet_ok = self.fleet.as_ref().is_some_and(|f| ct_eq(f, &h));
        let device_ok = self.devices.get(device_id).is_some_and(|d| ct_eq(d, &h));
        if fleet_ok || device_ok {
            Ok(())
        } else {
            Err(Rejection::new(
                403,
                "forbidden",
                Some("authorization".into()),
                format!("token is not valid for device {device_id:?}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tokens_only_open_their_own_device() {
        let mut a = Auth::default();
        a.devices.insert("d1".into(), hash_token("t1"));
        assert!(a.check("d1", Some("Bearer t1")).is_ok());
        assert_eq!(a.check("d2", Some("Bearer t1")).unwrap_err().status, 403);
        assert_eq!(a.check("d1", Some("Bearer nope")).unwrap_err().status, 403);
        assert_eq!(a.check("d1", None).unwrap_err().status, 401);
        assert_eq!(a.check("d1", Some("Basic xyz")).unwrap_err().status, 401);
        a.fleet = Some(hash_token("fleet"));
        assert!(a.check("anything", Some("Bearer fleet")).is_ok());
    }

    #[test]
    fn generated_token_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ingest.token");
        let (t1, created) = load_or_create_token(&p).unwrap();
        assert!(created && t1.len() == 64);
        let (t2, created) = load_or_create_token(&p).unwrap();
        assert!(!created && t1 == t2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            parse_hash(&format!("sha256:{}", hex::encode(hash_token("x")))),
            Some(hash_token("x"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn readable_secrets_and_planted_links_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap(), "secret");
        // A dangling symlink where the token should be created: never written through.
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("ingest.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(load_or_create_token(&link).is_err());
        assert!(!target.exists(), "the link was not followed");
    }
}
