//! The MQTT sink's own task: batches stream onto one connection back to back, the next one
//! going out while the last PUBACKs of the one before are still on their way, and each is
//! answered in turn once every PUBACK is in (`window.rs`).
//!
//! Why a task and not `publish(batch).await` in the publisher's handler: waiting for all the
//! PUBACKs of a batch before sending the next emptied the connection at every batch end, and
//! a broker with Nagle's algorithm on (mosquitto's default, `set_tcp_nodelay false`) then held
//! the last PUBACK until our delayed ACK, ~40 ms per batch: 30.6 ms of every 100-record batch
//! in the bench (`cargo bench --bench gateway -- upstream`), 3.0 ms with the broker's Nagle off.
//!
//! Commands, in the publisher's mailbox order: `Submit` (a batch) and `Resume`. Answers go
//! back through `on_done`, in submission order. After a batch is not delivered, every batch
//! after it is answered `NotSent` (or, if it was already on the wire, as an outage) until
//! `Resume`: nothing overtakes a batch that was not delivered (`sinks/mod.rs`).

use super::window::{Done, Window};
use super::{MqttSink, Note};
use crate::sinks::PublishResult;
use crate::wal::Leased;
use tokio::sync::mpsc;

pub enum Cmd {
    Submit { ticket: u64, batch: Vec<Leased> },
    Resume,
}

/// The running task; dropping it stops the task and closes its connection.
pub struct MqttPipe {
    tx: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttPipe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttPipe {
    pub fn start(sink: MqttSink, on_done: impl Fn(Done) + Send + 'static) -> MqttPipe {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(sink, rx, on_done));
        MqttPipe { tx, task }
    }

    /// False if the task is gone (it only ends when the pipe is dropped).
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).is_ok()
    }
}

async fn run(
    mut sink: MqttSink,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    on_done: impl Fn(Done) + Send + 'static,
) {
    let mut win = Window::default();
    // A fresh publisher holds until the dispatcher's first `Resume`.
    let mut holding = true;
    loop {
        let deadline = win.deadline();
        // Biased: the connection's events first, so a PUBACK or a `Sent` already read is
        // counted before a deadline or the next batch is looked at.
        tokio::select! {
            biased;
            note = next_note(&mut sink.conn) => {
                if !sink.on_note(&mut win, note) {
                    holding = true;
                }
            }
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Cmd::Resume) => holding = false,
                Some(Cmd::Submit { ticket, batch }) if holding => {
                    win.decided(ticket, PublishResult::NotSent, tokio::time::Instant::now());
                    drop(batch);
                }
                Some(Cmd::Submit { ticket, batch }) => {
                    if !sink.submit(&mut win, ticket, &batch).await {
                        holding = true;
                    }
                }
            },
            _ = sleep_until(deadline) => {
                let (missing, total) = win.missing().unwrap_or((0, 0));
                let why = format!(
                    "upstream broker: {missing} of {total} PUBACKs missing after {} ms",
                    sink.timeout.as_millis()
                );
                sink.fail(&mut win, &why, None);
                holding = true;
            }
        }
        for d in win.take_done() {
            on_done(d);
        }
    }
}

async fn next_note(conn: &mut Option<super::Conn>) -> Option<Note> {
    match conn {
        Some(c) => c.notes.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl MqttSink {
    /// Queues `batch`'s publishes on the connection (made if there is none); false if the
    /// batch (and so everything open) was decided as not delivered.
    async fn submit(&mut self, win: &mut Window, ticket: u64, batch: &[Leased]) -> bool {
        let now = tokio::time::Instant::now();
        let prepared = self.prepare(batch);
        // A connection that died while idle is replaced before anything is sent on it.
        if win.open() == 0 {
            if let Some(c) = &mut self.conn {
                while let Ok(n) = c.notes.try_recv() {
                    match n {
                        Note::Lost(_) => {
                            self.conn = None;
                            break;
                        }
                        Note::Limit(max) => self.announced_max = max.map(u64::from),
                        _ => {}
                    }
                }
            }
        }
        if let Err(why) = self.check_sizes(&prepared, batch) {
            win.decided(ticket, PublishResult::TooBig(why), now);
            return false;
        }
        if self.conn.is_none() {
            match self.connect() {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    win.decided(ticket, PublishResult::outage(e), now);
                    return false;
                }
            }
        }
        let deadline = now + self.timeout;
        win.sending(ticket, batch.len(), deadline);
        let conn = self.conn.as_mut().expect("set above");
        for ((topic, payload), l) in prepared.into_iter().zip(batch) {
            let queued =
                tokio::time::timeout_at(deadline, conn.client.publish(topic, payload, l)).await;
            let why = match queued {
                Ok(Ok(())) => {
                    win.queued();
                    continue;
                }
                Ok(Err(e)) => format!("upstream client: {e}"),
                Err(_) => "timed out queueing publishes".to_string(),
            };
            self.fail(win, &why, None);
            return false;
        }
        true
    }

    /// One event of the connection; false if it failed what was open.
    fn on_note(&mut self, win: &mut Window, note: Option<Note>) -> bool {
        match note {
            Some(Note::Sent(pkid)) => win.sent(pkid),
            Some(Note::Acked(pkid)) => win.acked(pkid),
            Some(Note::Limit(max)) => self.announced_max = max.map(u64::from),
            Some(Note::Refused {
                pkid,
                reason,
                permanent,
            }) => {
                let why = format!("upstream broker refused a publish (packet {pkid}): {reason}");
                let r = if permanent {
                    PublishResult::Permanent(why.clone())
                } else {
                    PublishResult::outage(why.clone())
                };
                self.fail(win, &why, Some((pkid, r)));
                return false;
            }
            Some(Note::Lost(e)) => {
                let open = win.open() > 0;
                self.fail(win, &format!("upstream broker: {e}"), None);
                return !open;
            }
            None => {
                let open = win.open() > 0;
                self.fail(win, "upstream connection task ended", None);
                return !open;
            }
        }
        true
    }

    /// The connection is done for: every open batch fails (see `Window::fail`), and the next
    /// batch starts on a fresh connection (clean session), so no acknowledgement from this
    /// one can be taken for a later publish.
    fn fail(&mut self, win: &mut Window, why: &str, refused: Option<(u16, PublishResult)>) {
        self.conn = None;
        win.fail(why, refused);
        // A broker whose ACL does not allow the presence topic refuses the whole connection
        // (the Last Will is checked at CONNECT): presence gives way to delivery, and the next
        // connection goes without it.
        if self.presence.is_some() && why.contains("NotAuthorized") {
            tracing::warn!(sink = %self.cfg.name, reason = %why, "the upstream broker refused the connection with the presence Last Will: presence turned off for this sink (allow gateways/<gateway_id>/status in its ACL, or set presence = false)");
            self.presence = None;
        }
    }
}
