//! Streamed answers of `/v1/exec` and `/v1/ask` (`Accept:
//! text/event-stream`): Server-Sent Events, in order:
//!
//! - `start`: `{plugin, command, node}` once a host runs it (an ask adds
//!   its `decision`);
//! - `text`: `{text}`, each piece of a model's text as it arrives;
//! - `tool_call`: `{id, name, input}` and `tool_result`: `{id, name,
//!   status, output}`;
//! - then one `done` (the `ExecReply`, or for an ask the `AskReply`, as the
//!   JSON answer would be: usage, model and cost included) or one `error`
//!   (a problem document).
//!
//! An error before anything ran is the usual problem response, not a stream.
//! A client that goes away drops the stream, which cancels the command on
//! its host (the bus sends the cancel across the cluster).

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use plexus_api::AskReply;
use plexus_exec::{ExecCall, Target};
use plexus_handler::Progress;

use crate::ctx::NodeCtx;
use crate::http::problem;
use crate::services::exec::{self, ExecStream, Step};

/// Whether the client asked for a stream (`Accept: text/event-stream`).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

/// Stream `call`: an ask passes its reply so far (the decision), which its
/// `start` and `done` events carry.
pub async fn respond(ctx: Arc<NodeCtx>, call: ExecCall, ask: Option<AskReply>) -> Response {
    let s = match exec::stream(&ctx, &call).await {
        Ok(s) => s,
        Err(e) => return problem::of_error(&e).into_response(),
    };
    Sse::new(events(ctx, s, ask))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An ask with nothing to run (the router abstained): its reply as the one
/// `done` event.
pub fn done_only(reply: AskReply) -> Response {
    let ev = json_event("done", &reply);
    Sse::new(futures::stream::iter([Ok::<_, Infallible>(ev)])).into_response()
}

struct State {
    ctx: Arc<NodeCtx>,
    s: ExecStream,
    ask: Option<AskReply>,
}

fn events(
    ctx: Arc<NodeCtx>,
    s: ExecStream,
    ask: Option<AskReply>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(State { ctx, s, ask }), |st| async move {
        let mut st = st?;
        let ev = match st.s.next(&st.ctx).await {
            Ok(None) => return None,
            Ok(Some(step)) => event(step, st.s.target(), &mut st.ask),
            Err(e) => {
                let ev = json_event("error", &problem::of_error(&e).0);
                return Some((Ok(ev), None));
            }
        };
        Some((Ok(ev), Some(st)))
    })
}

fn event(step: Step, t: &Target, ask: &mut Option<AskReply>) -> Event {
    match step {
        Step::Started { node } => {
            let mut v = serde_json::json!({"plugin": t.plugin, "command": t.command, "node": node});
            if let Some(a) = ask.as_ref() {
                v["decision"] = a.decision.clone();
            }
            json_event("start", &v)
        }
        Step::Progress(Progress::Text { text }) => {
            json_event("text", &serde_json::json!({ "text": text }))
        }
        Step::Progress(Progress::ToolCall { id, name, input }) => json_event(
            "tool_call",
            &serde_json::json!({"id": id, "name": name, "input": json_or_text(&input)}),
        ),
        Step::Progress(Progress::ToolResult {
            id,
            name,
            status,
            output,
        }) => json_event(
            "tool_result",
            &serde_json::json!({"id": id, "name": name, "status": status, "output": output}),
        ),
        Step::Done(served) => {
            let reply = exec::reply_of(*served);
            match ask.take() {
                Some(mut a) => {
                    a.served_by = reply.served_by.clone();
                    a.result = Some(reply);
                    json_event("done", &a)
                }
                None => json_event("done", &reply),
            }
        }
    }
}

/// A tool's input as JSON when it is, else as the text it is.
fn json_or_text(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

fn json_event<T: serde::Serialize>(name: &str, v: &T) -> Event {
    Event::default()
        .event(name)
        .json_data(v)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}
