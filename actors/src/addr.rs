//! Stable addresses for supervised actors, and the directory the admin API reads.
//!
//! A restarted actor gets a new `ActorRef`; everyone else holds an [`Addr`], which the
//! supervisor re-binds on every (re)start. `Addr` also measures what ractor cannot: the
//! mailbox depth (messages sent through it and not yet taken by `handle`), restarts and the
//! last failure. ractor mailboxes are unbounded, so depth is what tells whether the flow
//! control upstream of an actor is working.

use ractor::{ActorRef, ActorStatus, Message, RpcReplyPort};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Messages that can be asked to fail their actor (the chaos hook).
pub trait Failable: Message {
    fn fail(reason: String) -> Self;
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("actor {0} is not running")]
    NotRunning(String),
    #[error("actor {0} stopped before replying")]
    NoReply(String),
    #[error("actor {0} did not reply in time")]
    Timeout(String),
}

struct Inner<M: Message> {
    name: String,
    parent: Option<String>,
    current: RwLock<Option<ActorRef<M>>>,
    depth: AtomicI64,
    max_depth: AtomicI64,
    restarts: AtomicU64,
    /// Instances bound so far: which instance a message was handed to (see `generation`).
    binds: AtomicU64,
    /// Restarts so far, watchable: tests wait on it instead of polling.
    restarts_seen: tokio::sync::watch::Sender<u64>,
    last_failure: Mutex<Option<String>>,
}

/// A stable, measured handle to a supervised actor.
pub struct Addr<M: Message> {
    inner: Arc<Inner<M>>,
}

impl<M: Message> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Addr {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Message> Addr<M> {
    pub fn new(name: impl Into<String>, parent: Option<&str>) -> Self {
        Addr {
            inner: Arc::new(Inner {
                name: name.into(),
                parent: parent.map(str::to_string),
                current: RwLock::new(None),
                depth: AtomicI64::new(0),
                max_depth: AtomicI64::new(0),
                restarts: AtomicU64::new(0),
                binds: AtomicU64::new(0),
                restarts_seen: tokio::sync::watch::Sender::new(0),
                last_failure: Mutex::new(None),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Points the address at a freshly started actor. Messages queued for a dead
    /// predecessor died with it, so the depth starts again from zero.
    pub fn bind(&self, r: ActorRef<M>) {
        *self.inner.current.write().expect("addr lock") = Some(r);
        self.inner.binds.fetch_add(1, Ordering::SeqCst);
        self.inner.depth.store(0, Ordering::Relaxed);
        self.inner
            .restarts_seen
            .send_replace(self.inner.restarts.load(Ordering::Relaxed));
    }

    /// Which instance is bound: changes whenever a new one is (a restart, or any new start).
    /// A caller that handed messages to one instance can tell that a later cast goes to
    /// another, whose predecessor may have died with those messages unanswered.
    pub fn generation(&self) -> u64 {
        self.inner.binds.load(Ordering::SeqCst)
    }

    /// A receiver of the restart count (it changes after the new instance is bound).
    pub fn watch_restarts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.restarts_seen.subscribe()
    }

    pub fn actor(&self) -> Option<ActorRef<M>> {
        self.inner.current.read().expect("addr lock").clone()
    }

    /// Counts a message sent to the bound actor by other means (its own timers and tasks).
    pub fn note_sent(&self) {
        let d = self.inner.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.max_depth.fetch_max(d, Ordering::Relaxed);
    }

    /// Called by the actor at the top of `handle` for every message that came through here.
    pub fn received(&self) {
        let _ = self
            .inner
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some((d - 1).max(0))
            });
    }

    pub fn cast(&self, msg: M) -> Result<(), SendError> {
        let r = self
            .actor()
            .ok_or_else(|| SendError::NotRunning(self.inner.name.clone()))?;
        self.note_sent();
        r.cast(msg).map_err(|_| {
            self.received();
            SendError::NotRunning(self.inner.name.clone())
        })
    }

    /// Request/reply. `timeout: None` waits as long as the actor lives.
    pub async fn call<R: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Option<Duration>,
    ) -> Result<R, SendError> {
        let r = self
            .actor()
            .ok_or_else(|| SendError::NotRunning(self.inner.name.clone()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.note_sent();
        if r.cast(build(tx.into())).is_err() {
            self.received();
            return Err(SendError::NotRunning(self.inner.name.clone()));
        }
        let name = &self.inner.name;
        match timeout {
            None => rx.await.map_err(|_| SendError::NoReply(name.clone())),
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r.map_err(|_| SendError::NoReply(name.clone())),
                Err(_) => Err(SendError::Timeout(name.clone())),
            },
        }
    }
}

/// What the directory knows about one actor, whatever its message type.
pub trait ActorEntry: Send + Sync {
    fn name(&self) -> &str;
    fn parent(&self) -> Option<&str>;
    fn status(&self) -> Option<ActorStatus>;
    fn depth(&self) -> i64;
    fn max_depth(&self) -> i64;
    fn restarts(&self) -> u64;
    fn last_failure(&self) -> Option<String>;
    fn record_failure(&self, reason: String, restarted: bool);
    /// Sends the actor its failure message; false if it is not running.
    fn inject_failure(&self, reason: String) -> bool;
}

impl<M: Failable> ActorEntry for Addr<M> {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn parent(&self) -> Option<&str> {
        self.inner.parent.as_deref()
    }
    fn status(&self) -> Option<ActorStatus> {
        self.actor().map(|r| r.get_status())
    }
    fn depth(&self) -> i64 {
        self.inner.depth.load(Ordering::Relaxed)
    }
    fn max_depth(&self) -> i64 {
        self.inner.max_depth.load(Ordering::Relaxed)
    }
    fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }
    fn last_failure(&self) -> Option<String> {
        self.inner.last_failure.lock().expect("addr lock").clone()
    }
    fn record_failure(&self, reason: String, restarted: bool) {
        *self.inner.last_failure.lock().expect("addr lock") = Some(reason);
        if restarted {
            self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn inject_failure(&self, reason: String) -> bool {
        self.cast(M::fail(reason)).is_ok()
    }
}

/// Every supervised actor, in start order. Shared by supervisors (which record restarts)
/// and the admin API (which reads it).
#[derive(Default, Clone)]
pub struct Directory {
    entries: Arc<RwLock<Vec<Arc<dyn ActorEntry>>>>,
}

impl Directory {
    pub fn register(&self, e: Arc<dyn ActorEntry>) {
        let mut v = self.entries.write().expect("directory lock");
        if !v.iter().any(|x| x.name() == e.name()) {
            v.push(e);
        }
    }

    /// Forgets an actor that is gone for good (a removed sink's publisher).
    pub fn unregister(&self, name: &str) {
        self.entries
            .write()
            .expect("directory lock")
            .retain(|e| e.name() != name);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn ActorEntry>> {
        self.entries
            .read()
            .expect("directory lock")
            .iter()
            .find(|e| e.name() == name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<dyn ActorEntry>> {
        self.entries.read().expect("directory lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    struct Echo;
    enum EchoMsg {
        Ping(RpcReplyPort<u32>),
        Fail(String),
    }
    impl Failable for EchoMsg {
        fn fail(r: String) -> Self {
            EchoMsg::Fail(r)
        }
    }
    impl Actor for Echo {
        type Msg = EchoMsg;
        type State = Addr<EchoMsg>;
        type Arguments = Addr<EchoMsg>;
        async fn pre_start(
            &self,
            _: ActorRef<EchoMsg>,
            a: Addr<EchoMsg>,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(a)
        }
        async fn handle(
            &self,
            _: ActorRef<EchoMsg>,
            m: EchoMsg,
            addr: &mut Addr<EchoMsg>,
        ) -> Result<(), ActorProcessingErr> {
            addr.received();
            match m {
                EchoMsg::Ping(r) => {
                    let _ = r.send(addr.depth() as u32);
                    Ok(())
                }
                EchoMsg::Fail(r) => Err(r.into()),
            }
        }
    }

    #[tokio::test]
    async fn depth_counts_sent_but_unhandled_and_unbound_addr_refuses() {
        let addr: Addr<EchoMsg> = Addr::new("echo", None);
        assert_eq!(
            addr.call(EchoMsg::Ping, None).await,
            Err(SendError::NotRunning("echo".into()))
        );
        let (r, h) = Actor::spawn(None, Echo, addr.clone()).await.unwrap();
        addr.bind(r.clone());
        assert_eq!(addr.call(EchoMsg::Ping, None).await, Ok(0));
        assert!(addr.inject_failure("boom".into()));
        h.await.unwrap();
        assert_eq!(addr.status(), Some(ActorStatus::Stopped));
        assert!(matches!(
            addr.call(EchoMsg::Ping, None).await,
            Err(SendError::NotRunning(_))
        ));
    }

    /// A sender that handed messages to one instance can tell a later cast goes to another
    /// (the MQTT session holds new messages then: `ingest::mqtt::pipeline::Ctx::wal_restarted`).
    #[tokio::test]
    async fn each_bound_instance_is_a_new_generation() {
        let addr: Addr<EchoMsg> = Addr::new("echo", None);
        let unbound = addr.generation();
        let (r, h) = Actor::spawn(None, Echo, addr.clone()).await.unwrap();
        addr.bind(r);
        let first = addr.generation();
        assert_ne!(first, unbound);
        assert_eq!(addr.call(EchoMsg::Ping, None).await, Ok(0));
        assert_eq!(addr.generation(), first, "messages do not move it");
        assert!(addr.inject_failure("boom".into()));
        h.await.unwrap();
        let (r, _h) = Actor::spawn(None, Echo, addr.clone()).await.unwrap();
        addr.bind(r);
        assert_ne!(
            addr.generation(),
            first,
            "a restarted instance is another generation"
        );
    }
}
