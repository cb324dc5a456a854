//! The control plane's admin-API door: `POST /admin/control` (a command as JSON; answers its
//! record: 200 when done, 202 with a `status_url` while it is still `accepted`, or a device
//! command is `queued` or `sent`, 400 naming the field when the
//! request is invalid; a repeated `command_id` answers the first record with
//! `"duplicate": true`), `GET /admin/control/{command_id}`, `GET /admin/control?limit=N`.

use super::{json_status, unavailable, Ctx};
use edge_gateway_actors::control::{ControlError, ControlMsg, Door};
use serde_json::json;
use std::time::Duration;
use warp::http::StatusCode;

/// How long a command may take before the door gives up waiting (its record stays).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn post(ctx: &Ctx, body: &[u8]) -> warp::reply::Response {
    let request: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json_status(
                json!({"error": "invalid", "field": "(request)", "message": format!("not JSON: {e}")}),
                StatusCode::BAD_REQUEST,
            )
        }
    };
    let answer = ctx
        .handles
        .control
        .call(
            |reply| ControlMsg::Command {
                door: Door::Admin,
                request,
                reply,
            },
            Some(COMMAND_TIMEOUT),
        )
        .await;
    match answer {
        Err(e) => unavailable(e),
        Ok(Err(ControlError::Invalid(e))) => json_status(
            json!({"error": "invalid", "field": e.field, "message": e.message}),
            StatusCode::BAD_REQUEST,
        ),
        Ok(Err(e)) => store_failed(e),
        Ok(Ok(a)) => {
            let status = match a.record.state.as_str() {
                "accepted" | "queued" | "sent" => StatusCode::ACCEPTED,
                "failed" if a.record.result["error"] == "invalid" => StatusCode::BAD_REQUEST,
                "failed" if a.record.result["error"] == "queue_full" => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                // Valid, but the gateway could not carry it out (rolled back, not restarted).
                "failed" => StatusCode::CONFLICT,
                _ => StatusCode::OK,
            };
            let mut v = serde_json::to_value(&a.record).unwrap_or_default();
            v["duplicate"] = a.duplicate.into();
            if status == StatusCode::ACCEPTED {
                // It completes later: where to follow it.
                v["status_url"] = format!("/admin/control/{}", a.record.command_id).into();
            }
            json_status(v, status)
        }
    }
}

pub async fn get(ctx: &Ctx, command_id: &str) -> warp::reply::Response {
    let id = command_id.to_string();
    let r = ctx
        .handles
        .control
        .call(
            |reply| ControlMsg::Get {
                command_id: id,
                reply,
            },
            Some(Duration::from_secs(5)),
        )
        .await;
    match r {
        Err(e) => unavailable(e),
        Ok(Err(e)) => store_failed(e),
        Ok(Ok(None)) => json_status(
            json!({"error": "not_found", "command_id": command_id}),
            StatusCode::NOT_FOUND,
        ),
        Ok(Ok(Some(rec))) => json_status(
            serde_json::to_value(rec).unwrap_or_default(),
            StatusCode::OK,
        ),
    }
}

pub async fn list(ctx: &Ctx, limit: usize) -> warp::reply::Response {
    let r = ctx
        .handles
        .control
        .call(
            |reply| ControlMsg::List { limit, reply },
            Some(Duration::from_secs(5)),
        )
        .await;
    match r {
        Err(e) => unavailable(e),
        Ok(Err(e)) => store_failed(e),
        Ok(Ok(v)) => json_status(json!({"commands": v}), StatusCode::OK),
    }
}

/// The control store could not answer (its file unreadable, the disk refusing writes).
fn store_failed(e: ControlError) -> warp::reply::Response {
    json_status(
        json!({"error": "control_store", "message": e.to_string()}),
        StatusCode::SERVICE_UNAVAILABLE,
    )
}
