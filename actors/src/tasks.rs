//! Tasks an actor spawns, aborted when its state is dropped.
//!
//! ractor skips `post_stop` when `handle` returns an error, so cleanup there does not run on
//! the failures supervision is for. An actor's helper tasks (timers, waiters, event loops)
//! live in a `Tasks` inside its state instead: the state is dropped however the actor ends,
//! and no task of a failed instance outlives it to act on its successor's behalf.

use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn push(&mut self, h: JoinHandle<()>) {
        self.0.retain(|t| !t.is_finished());
        self.0.push(h);
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
