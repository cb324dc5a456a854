//! Tasks an actor spawns, aborted when its state is dropped.
//!
//! ractor skips `post_stop` when `handle` returns an error, so cleanup there does not run on
//! the failures supervision is for. An actor's helper tasks (timers, waiters, event loops)
//! live in a `Tasks` inside its state instead: the state is dropped however the actor ends,
//! and no task of a failed instance outlives it to act on its successor's behalf.

use crate::addr::Addr;
use ractor::{ActorRef, Message};
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn push(&mut self, h: JoinHandle<()>) {
        self.0.retain(|t| !t.is_finished());
        self.0.push(h);
    }

    /// A timer: casts `msg()` to `to` every `period` (a late tick is delayed, never bunched
    /// up), counted in `addr`'s mailbox depth, until the actor is gone.
    pub fn every<M: Message>(
        &mut self,
        period: Duration,
        to: ActorRef<M>,
        addr: Addr<M>,
        msg: impl Fn() -> M + Send + 'static,
    ) {
        self.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                addr.note_sent();
                if to.cast(msg()).is_err() {
                    break;
                }
            }
        }));
    }

    pub fn abort_all(&mut self) {
        for t in self.0.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}
