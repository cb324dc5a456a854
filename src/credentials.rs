//! Credentials at start-up. No defaults: tokens come from configured files, or are generated
//! at random on first start into the data directory (mode 0600) and their paths logged.

use edge_gateway_actors::ingest::auth::{
    hash_token, load_or_create_token, parse_hash, read_secret, Auth, TokenHash,
};
use edge_gateway_config::Config;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("token file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.devices.{0}: not a sha256:<hex> hash")]
    BadHash(String),
}

pub struct Credentials {
    pub ingest: Auth,
    pub admin_hash: TokenHash,
}

pub fn resolve_credentials(cfg: &Config) -> Result<Credentials, CredentialsError> {
    let file_err = |p: &std::path::Path| {
        let path = p.display().to_string();
        move |source| CredentialsError::File { path, source }
    };
    let mut ingest = Auth::default();
    for (device, h) in &cfg.auth.devices {
        ingest.devices.insert(
            device.clone(),
            parse_hash(h).ok_or_else(|| CredentialsError::BadHash(device.clone()))?,
        );
    }
    if let Some(p) = &cfg.auth.ingest_token_file {
        ingest.fleet = Some(hash_token(&read_secret(p).map_err(file_err(p))?));
    } else if ingest.devices.is_empty() {
        let p = cfg.data_dir.join("ingest.token");
        let (token, created) = load_or_create_token(&p).map_err(file_err(&p))?;
        if created {
            tracing::warn!(path = %p.display(), "no ingest credentials configured: generated a random ingest token (accepted for any device until auth.devices is set)");
        } else {
            tracing::info!(path = %p.display(), "using the generated ingest token");
        }
        ingest.fleet = Some(hash_token(&token));
    }
    let admin_token = match &cfg.admin.token_file {
        Some(p) => read_secret(p).map_err(file_err(p))?,
        None => {
            let p = cfg.data_dir.join("admin.token");
            let (token, created) = load_or_create_token(&p).map_err(file_err(&p))?;
            if created {
                tracing::warn!(path = %p.display(), "generated a random admin token");
            }
            token
        }
    };
    Ok(Credentials {
        ingest,
        admin_hash: hash_token(&admin_token),
    })
}

/// The admin token's hash in force, swapped when its file is reloaded.
pub type AdminHash = std::sync::Arc<std::sync::RwLock<TokenHash>>;

/// Token files read again (`tls.reload`, SIGHUP, a change on disk): the ingest and admin
/// credentials are replaced whole, or (a file unreadable or empty) kept as they are.
pub struct TokenFiles {
    pub config: Config,
    pub ingest: edge_gateway_actors::ingest::auth::AuthCell,
    pub admin: AdminHash,
}

impl edge_gateway_actors::reload::Reload for TokenFiles {
    fn files(&self) -> Vec<std::path::PathBuf> {
        let c = &self.config;
        [c.auth.ingest_token_file.clone(), c.admin.token_file.clone()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn reload(&self) -> Result<(), String> {
        let fresh = resolve_credentials(&self.config).map_err(|e| e.to_string())?;
        self.ingest.set(fresh.ingest);
        *self.admin.write().expect("admin hash") = fresh.admin_hash;
        Ok(())
    }
}
