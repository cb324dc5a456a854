//! Supervision: a failing child is restarted alone and re-bound; past its budget the
//! supervisor escalates (fails) and stops its remaining children.

use edge_gateway_actors::addr::{ActorEntry, Addr, Failable};
use edge_gateway_actors::metrics::Metrics;
use edge_gateway_supervisors::{
    ChildSpec, RestartBudget, Supervisor, SupervisorArgs, SupervisorMsg,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;

struct Worker;
enum WorkerMsg {
    Ping(RpcReplyPort<()>),
    Fail(String),
}
impl Failable for WorkerMsg {
    fn fail(r: String) -> Self {
        WorkerMsg::Fail(r)
    }
}
impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = Addr<WorkerMsg>;
    type Arguments = Addr<WorkerMsg>;
    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        a: Addr<WorkerMsg>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(a)
    }
    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        m: WorkerMsg,
        a: &mut Addr<WorkerMsg>,
    ) -> Result<(), ActorProcessingErr> {
        a.received();
        match m {
            WorkerMsg::Ping(r) => {
                let _ = r.send(());
                Ok(())
            }
            WorkerMsg::Fail(r) => Err(r.into()),
        }
    }
}

fn spec(addr: &Addr<WorkerMsg>) -> ChildSpec {
    let a = addr.clone();
    ChildSpec {
        entry: Arc::new(addr.clone()),
        start: Arc::new(move |sup| {
            let a = a.clone();
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(None, Worker, a.clone(), sup).await?;
                a.bind(r.clone());
                Ok(r.get_cell())
            })
        }),
    }
}

/// Waits until the n-th restart has been bound (the watch changes after `bind`).
async fn wait_restarts(e: &Addr<WorkerMsg>, n: u64) {
    let mut rx = e.watch_restarts();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= n))
        .await
        .expect("restart in time")
        .expect("addr alive");
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child_then_escalates_past_budget() {
    let a: Addr<WorkerMsg> = Addr::new("a", Some("sup"));
    let b: Addr<WorkerMsg> = Addr::new("b", Some("sup"));
    let sup_addr: Addr<SupervisorMsg> = Addr::new("sup", None);
    let args = SupervisorArgs {
        children: vec![spec(&a), spec(&b)],
        budget: RestartBudget::new(2, Duration::from_secs(60)),
        addr: sup_addr.clone(),
        metrics: Arc::new(Metrics::new()),
    };
    let (sup, join) = Actor::spawn(None, Supervisor, args).await.unwrap();
    sup_addr.bind(sup.clone());
    let b_before = b.actor().unwrap().get_id();

    assert!(a.inject_failure("one".into()));
    wait_restarts(&a, 1).await;
    a.call(WorkerMsg::Ping, Some(Duration::from_secs(1)))
        .await
        .expect("re-bound address reaches the new instance");
    assert_eq!(
        b.actor().unwrap().get_id(),
        b_before,
        "the sibling was not restarted"
    );
    assert_eq!(
        a.last_failure().as_deref().map(|s| s.contains("one")),
        Some(true)
    );

    assert!(a.inject_failure("two".into()));
    wait_restarts(&a, 2).await;
    // A third failure within the window exceeds the budget: the supervisor fails.
    assert!(a.inject_failure("three".into()));
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("supervisor escalates")
        .unwrap();
    assert_eq!(
        b.status(),
        Some(ActorStatus::Stopped),
        "children stopped with their supervisor"
    );
    assert_eq!(a.restarts(), 2);
}
