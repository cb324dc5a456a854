//! The live supervision tree as JSON, nested by parent.

use edge_gateway_actors::addr::{ActorEntry, Directory};
use serde_json::{json, Value};
use std::sync::Arc;

fn node(e: &Arc<dyn ActorEntry>, all: &[Arc<dyn ActorEntry>]) -> Value {
    let children: Vec<Value> = all
        .iter()
        .filter(|c| c.parent() == Some(e.name()))
        .map(|c| node(c, all))
        .collect();
    json!({
        "name": e.name(),
        "status": e.status().map(|s| format!("{s:?}")).unwrap_or_else(|| "NotStarted".into()),
        "restarts": e.restarts(),
        "last_failure": e.last_failure(),
        "mailbox_depth": e.depth(),
        "mailbox_depth_max": e.max_depth(),
        "children": children,
    })
}

pub fn render(dir: &Directory) -> Value {
    let all = dir.all();
    let roots: Vec<Value> = all
        .iter()
        .filter(|e| e.parent().is_none())
        .map(|e| node(e, &all))
        .collect();
    match roots.len() {
        1 => roots.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(roots),
    }
}
