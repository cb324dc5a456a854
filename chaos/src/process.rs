//! Starting the servers the harness and the tests run (brokers, stores), none of which has a
//! readiness signal: ready when it accepts a TCP connection.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Spawns `cmd` (stdout discarded, stderr appended to `log`) and waits, 10 s at most, until
/// something accepts connections on loopback `port`. `what` names it in errors.
pub fn spawn_listening(
    mut cmd: Command,
    port: u16,
    log: &Path,
    what: &str,
) -> std::io::Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| std::io::Error::other(format!("{what}: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            return Err(std::io::Error::other(format!(
                "{what} not listening on {port}; log: {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}
