//! An S3-compatible store on loopback: `s3s-fs` (crates.io, `cargo install s3s-fs --features
//! binary`), which keeps each bucket as a directory and each object as a file under it. The
//! store keeps its port and directory across stop/start, like [`crate::broker::Broker`]; the
//! oracle reads back what arrived from the files it wrote ([`Store::objects`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub const ACCESS_KEY: &str = "edge-gateway-test";
pub const SECRET_KEY: &str = "edge-gateway-test-secret";

pub struct Store {
    pub port: u16,
    pub root: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// `s3s-fs`: `$EDGE_GATEWAY_S3S_FS`, else where `.ci/test` installs it, else on `PATH`.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_GATEWAY_S3S_FS") {
        return PathBuf::from(p);
    }
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/edge-gateway/tools/bin/s3s-fs"));
    cached
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("s3s-fs"))
}

/// One object as stored: its key and its records (JSON Lines, decompressed by extension).
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub records: Vec<serde_json::Value>,
}

impl Store {
    /// A store on a free port with `bucket` created.
    pub fn start(dir: &Path, bucket: &str) -> std::io::Result<Store> {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(bucket))?;
        let mut s = Store {
            port: crate::free_port(),
            root,
            log: dir.join("s3s-fs.log"),
            child: None,
        };
        s.run()?;
        Ok(s)
    }

    /// A handle that only reads the objects under `root` (no process).
    pub fn reader(root: &Path) -> Store {
        Store {
            port: 0,
            root: root.to_path_buf(),
            log: PathBuf::new(),
            child: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) and waits until it accepts connections.
    pub fn run(&mut self) -> std::io::Result<()> {
        let bin = s3s_fs_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root);
        let what = format!(
            "{} (cargo install s3s-fs@0.14.1 --locked --features binary)",
            bin.display()
        );
        let child = crate::process::spawn_listening(cmd, self.port, &self.log, &what)?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process (SIGKILL): the store is unreachable until [`Store::run`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every object of `bucket` (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`), by key. An object
    /// that does not read whole (still being written) is left out until it does.
    pub fn objects(&self, bucket: &str) -> std::io::Result<Vec<StoredObject>> {
        let base = self.root.join(bucket);
        let mut files = Vec::new();
        walk(&base, &mut files)?;
        let mut out = Vec::new();
        for f in files {
            let key = f
                .strip_prefix(&base)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .into_owned();
            if let Some(Ok(records)) = read_object(&f, &key) {
                out.push(StoredObject { key, records });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The records of one object file; `None` for the store's own files.
fn read_object(f: &Path, key: &str) -> Option<std::io::Result<Vec<serde_json::Value>>> {
    let decoded = || -> std::io::Result<Option<String>> {
        let raw = std::fs::read(f)?;
        Ok(Some(if key.ends_with(".jsonl.gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut s)?;
            s
        } else if key.ends_with(".jsonl.zst") {
            String::from_utf8(zstd::decode_all(&raw[..])?).map_err(std::io::Error::other)?
        } else if key.ends_with(".jsonl") {
            String::from_utf8(raw).map_err(std::io::Error::other)?
        } else {
            return Ok(None);
        }))
    };
    match decoded() {
        Ok(None) => None,
        Err(e) => Some(Err(e)),
        Ok(Some(text)) => Some(
            text.lines()
                .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
                .collect(),
        ),
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}
