//! `Supervisor` actor: restarts failed children one at a time, within a budget.
//!
//! Mailbox:
//! - `RestartChild` <- itself (a restart that failed to spawn is retried after a pause)
//! - `Add`, `Remove`, `Restart` <- the control plane (`config.apply`, `actor.restart`):
//!   planned changes, not failures — they use no restart budget; a child that fails to start
//!   for them is put back as it was (`Add`: forgotten; `Restart` with a new spec: the old
//!   spec started again) and the caller told why
//! - `Fail`         <- admin API chaos hook
//! - supervision events <- its children (ractor): `ActorFailed` / `ActorTerminated`
//!
//! Strategy: one-for-one. A child that fails or stops unexpectedly is restarted alone; its
//! `Addr` is re-bound so senders reach the new instance. More than `budget.max_restarts`
//! restarts within `budget.window` escalate: the supervisor fails, its children are stopped
//! (in reverse start order) and its own supervisor decides. While stopping, a supervisor
//! stops its children in reverse start order and restarts nothing.

use edge_gateway_actors::addr::{ActorEntry, Addr, Failable};
use edge_gateway_actors::metrics::Metrics;
use futures::future::BoxFuture;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Starts (or restarts) a child linked to the given supervisor, binding its `Addr`.
pub type StartFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

#[derive(Clone)]
pub struct ChildSpec {
    pub entry: Arc<dyn ActorEntry>,
    pub start: StartFn,
}

/// At most `max_restarts` restarts within any `window`; one more escalates.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    pub max_restarts: usize,
    pub window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(max_restarts: usize, window: Duration) -> Self {
        RestartBudget {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false when it would exceed the budget.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

pub enum SupervisorMsg {
    /// By child name (children come and go: positions move).
    RestartChild(String),
    /// Start a new child and supervise it.
    Add {
        spec: ChildSpec,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Stop a child for good and forget it.
    Remove {
        name: String,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Stop a child and start it again (from `spec` when given, which then replaces its own).
    Restart {
        name: String,
        spec: Option<ChildSpec>,
        reply: RpcReplyPort<Result<(), String>>,
    },
    Fail(String),
}

impl Failable for SupervisorMsg {
    fn fail(reason: String) -> Self {
        SupervisorMsg::Fail(reason)
    }
}

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub budget: RestartBudget,
    pub addr: Addr<SupervisorMsg>,
    pub metrics: Arc<Metrics>,
}

pub struct SupervisorState {
    children: Vec<(ChildSpec, Option<ActorCell>)>,
    budget: RestartBudget,
    addr: Addr<SupervisorMsg>,
    metrics: Arc<Metrics>,
    stopping: bool,
}

pub struct Supervisor;

impl Supervisor {
    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        i: usize,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let name = state.children[i].0.entry.name().to_string();
        if !state.budget.allow(Instant::now()) {
            state.children[i].0.entry.record_failure(why.clone(), false);
            tracing::error!(supervisor = %state.addr.name(), child = %name, reason = %why, "restart budget exhausted; escalating");
            return Err(format!(
                "child {name} exceeded the restart budget ({} in {:?}): {why}",
                state.budget.max_restarts, state.budget.window
            )
            .into());
        }
        state.children[i].0.entry.record_failure(why.clone(), true);
        state
            .metrics
            .actor_restarts
            .with_label_values(&[&name])
            .inc();
        tracing::warn!(supervisor = %state.addr.name(), child = %name, reason = %why, "restarting child");
        match (state.children[i].0.start)(myself.get_cell()).await {
            Ok(cell) => state.children[i].1 = Some(cell),
            Err(e) => {
                tracing::warn!(child = %name, error = %e, "restart failed; retrying shortly");
                state.children[i].1 = None;
                state.addr.note_sent();
                myself.send_after(Duration::from_millis(200), move || {
                    SupervisorMsg::RestartChild(name)
                });
            }
        }
        Ok(())
    }

    fn position(state: &SupervisorState, name: &str) -> Option<usize> {
        state
            .children
            .iter()
            .position(|(s, _)| s.entry.name() == name)
    }

    /// Stops child `i` on purpose: its slot is emptied first, so its termination is not
    /// taken for a failure.
    async fn stop_child(state: &mut SupervisorState, i: usize, why: &str) {
        if let Some(c) = state.children[i].1.take() {
            if c.stop_and_wait(Some(why.to_string()), Some(Duration::from_secs(10)))
                .await
                .is_err()
            {
                tracing::warn!(child = %state.children[i].0.entry.name(), "child did not stop in time; killed");
                c.kill();
            }
        }
    }

    async fn add(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        spec: ChildSpec,
    ) -> Result<(), String> {
        let name = spec.entry.name().to_string();
        if Self::position(state, &name).is_some() {
            return Err(format!("{name} is supervised already"));
        }
        let cell = (spec.start)(myself.get_cell())
            .await
            .map_err(|e| format!("{name} did not start: {e}"))?;
        tracing::info!(supervisor = %state.addr.name(), child = %name, "child added");
        state.children.push((spec, Some(cell)));
        Ok(())
    }

    async fn remove(state: &mut SupervisorState, name: &str) -> Result<(), String> {
        let i = Self::position(state, name).ok_or_else(|| format!("no child named {name}"))?;
        Self::stop_child(state, i, "removed").await;
        state.children.remove(i);
        tracing::info!(supervisor = %state.addr.name(), child = %name, "child removed");
        Ok(())
    }

    async fn planned_restart(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: &str,
        spec: Option<ChildSpec>,
    ) -> Result<(), String> {
        let i = Self::position(state, name).ok_or_else(|| format!("no child named {name}"))?;
        Self::stop_child(state, i, "restarted on request").await;
        let old = spec.map(|s| std::mem::replace(&mut state.children[i].0, s));
        match (state.children[i].0.start)(myself.get_cell()).await {
            Ok(cell) => {
                state.children[i].1 = Some(cell);
                tracing::info!(supervisor = %state.addr.name(), child = %name, "child restarted on request");
                Ok(())
            }
            Err(e) => {
                let why = format!("{name} did not start: {e}");
                tracing::warn!(supervisor = %state.addr.name(), child = %name, error = %e, "planned restart failed");
                if let Some(old) = old {
                    state.children[i].0 = old;
                }
                state.addr.note_sent();
                let n = name.to_string();
                myself.send_after(Duration::from_millis(10), move || {
                    SupervisorMsg::RestartChild(n)
                });
                Err(why)
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = Vec::with_capacity(args.children.len());
        for spec in args.children {
            // Each child's restart counter exists from the start, at 0.
            let _ = args
                .metrics
                .actor_restarts
                .with_label_values(&[spec.entry.name()]);
            let cell = (spec.start)(myself.get_cell())
                .await
                .map_err(|e| format!("starting {}: {e}", spec.entry.name()))?;
            children.push((spec, Some(cell)));
        }
        Ok(SupervisorState {
            children,
            budget: args.budget,
            addr: args.addr,
            metrics: args.metrics,
            stopping: false,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        for (spec, cell) in state.children.iter_mut().rev() {
            if let Some(c) = cell.take() {
                if let Err(e) = c
                    .stop_and_wait(
                        Some("supervisor stopping".into()),
                        Some(Duration::from_secs(10)),
                    )
                    .await
                {
                    tracing::warn!(child = %spec.entry.name(), error = %e, "child did not stop in time");
                    c.kill();
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            SupervisorMsg::RestartChild(name) if !state.stopping => {
                match Self::position(state, &name) {
                    Some(i) if state.children[i].1.is_none() => {
                        Self::restart(&myself, state, i, "previous start failed".into()).await
                    }
                    _ => Ok(()), // removed, or running again
                }
            }
            SupervisorMsg::RestartChild(_) => Ok(()),
            SupervisorMsg::Add { spec, reply } => {
                let _ = reply.send(Self::add(&myself, state, spec).await);
                Ok(())
            }
            SupervisorMsg::Remove { name, reply } => {
                let _ = reply.send(Self::remove(state, &name).await);
                Ok(())
            }
            SupervisorMsg::Restart { name, spec, reply } => {
                let _ = reply.send(Self::planned_restart(&myself, state, &name, spec).await);
                Ok(())
            }
            SupervisorMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "stopped unexpectedly: {}",
                    reason.unwrap_or_else(|| "no reason".into())
                ),
            ),
            _ => return Ok(()),
        };
        let Some(i) = state
            .children
            .iter()
            .position(|(_, c)| c.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(()); // an instance we already replaced
        };
        state.children[i].1 = None;
        Self::restart(&myself, state, i, why).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_allows_n_per_window_then_refuses_until_the_window_slides() {
        let mut b = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.allow(t0));
        assert!(b.allow(t0 + Duration::from_secs(1)));
        assert!(!b.allow(t0 + Duration::from_secs(2)));
        assert!(b.allow(t0 + Duration::from_secs(10)));
    }
}
