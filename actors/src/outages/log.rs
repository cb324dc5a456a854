//! `data/outages.jsonl`: the outage events, one JSON line each, appended and fsync'd as they
//! happen (a line torn by a crash is skipped when read). Past `MAX_BYTES` the file is rotated
//! to `outages.jsonl.1` (one older generation kept). Blocking: called from `spawn_blocking`,
//! or from the command line.

use super::{assemble, Event, Report};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "outages.jsonl";
const MAX_BYTES: u64 = 4 << 20;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Appends events durably.
pub fn append(data_dir: &Path, events: &[Event]) -> std::io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let p = path(data_dir);
    if std::fs::metadata(&p).is_ok_and(|m| m.len() > MAX_BYTES) {
        std::fs::rename(&p, p.with_extension("jsonl.1"))?;
    }
    let mut buf = Vec::new();
    for e in events {
        serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
    let mut f = o.open(&p)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// Every event recorded (the rotated generation first), oldest first.
pub fn read(data_dir: &Path) -> std::io::Result<Vec<Event>> {
    let p = path(data_dir);
    let mut out = Vec::new();
    for f in [p.with_extension("jsonl.1"), p] {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    Ok(out)
}

/// The outages that began at or after `since_ms`, oldest first.
pub fn reports(data_dir: &Path, since_ms: u64) -> std::io::Result<Vec<Report>> {
    let mut r = assemble(&read(data_dir)?);
    r.retain(|o| o.started_at_ms >= since_ms || o.ended_at_ms.is_none_or(|e| e >= since_ms));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = Event::Start {
            sink: "api".into(),
            at_ms: 5,
            kind: "outage".into(),
            reason: "HTTP 502".into(),
            backlog: 0,
            trace_id: None,
        };
        append(dir.path(), std::slice::from_ref(&e)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap()
            .write_all(b"{\"event\":\"end\",\"si")
            .unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![e]);
        assert_eq!(reports(dir.path(), 0).unwrap().len(), 1);
    }
}
