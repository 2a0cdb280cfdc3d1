//! The HTTP path against a scripted server on loopback: status codes,
//! headers and bodies as providers send them, broken and stalled streams,
//! and cancellation seen from the server's side.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use plexus_llm::{
    collect, until_cancelled, CancellationToken, ChatRequest, HttpProvider, LlmConfig, Message,
    Provider, ProviderKind,
};
use tokio::sync::Notify;

/// What the scripted server answers.
#[derive(Clone)]
enum Script {
    Status(u16, Vec<(&'static str, &'static str)>, &'static str),
    /// 200 with these SSE bytes, then the connection closes.
    Sse(&'static str),
    /// 200 with these bytes, then nothing more (the stream stays open).
    Stall(&'static str),
}

struct Served {
    base: String,
    /// Notified when the server's response body is dropped (the client went away).
    body_dropped: Arc<Notify>,
    /// The request headers the server saw.
    headers: Arc<std::sync::Mutex<Option<HeaderMap>>>,
}

struct DropSignal(Arc<Notify>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

async fn serve(script: Script) -> Served {
    let body_dropped = Arc::new(Notify::new());
    let headers = Arc::new(std::sync::Mutex::new(None));
    let (d, h) = (body_dropped.clone(), headers.clone());
    let handler = move |hm: HeaderMap| {
        let (script, d, h) = (script.clone(), d.clone(), h.clone());
        async move {
            *h.lock().unwrap() = Some(hm);
            match script {
                Script::Status(code, hs, body) => {
                    let mut r = Response::builder().status(StatusCode::from_u16(code).unwrap());
                    for (k, v) in hs {
                        r = r.header(k, v);
                    }
                    r.body(Body::from(body)).unwrap()
                }
                Script::Sse(bytes) => Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(bytes))
                    .unwrap(),
                Script::Stall(bytes) => {
                    let guard = DropSignal(d);
                    let s = futures::stream::once(async move {
                        Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))
                    })
                    .chain(futures::stream::pending().map(
                        move |x: Result<bytes::Bytes, std::io::Error>| {
                            let _ = &guard;
                            x
                        },
                    ));
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(s))
                        .unwrap()
                }
            }
        }
    };
    let app = Router::new()
        .route("/v1/messages", post(handler.clone()))
        .route("/v1/chat/completions", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served {
        base,
        body_dropped,
        headers,
    }
}

fn provider(kind: ProviderKind, base: &str, key_env: &str, idle_ms: u64) -> HttpProvider {
    let mut c = LlmConfig::new(kind);
    c.base_url = Some(base.to_string());
    c.api_key_env = Some(key_env.to_string());
    c.idle_timeout_ms = Some(idle_ms);
    HttpProvider::new(c.resolve(None).unwrap()).unwrap()
}

fn req() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![Message::user("hi")],
        max_tokens: 5,
        ..Default::default()
    }
}

#[tokio::test]
async fn status_codes_headers_and_bodies_map_to_typed_errors() {
    let s = serve(Script::Status(429, vec![("retry-after", "7"), ("content-type", "application/json")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit"}}"#)).await;
    let e =
        collect(provider(ProviderKind::Anthropic, &s.base, "PLEXUS_T_NONE", 5000).stream(req()))
            .await
            .unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        ("rate_limited", Some(Duration::from_secs(7))),
        "{e}"
    );

    let s = serve(Script::Status(
        529,
        vec![],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ))
    .await;
    let e =
        collect(provider(ProviderKind::Anthropic, &s.base, "PLEXUS_T_NONE", 5000).stream(req()))
            .await
            .unwrap_err();
    assert_eq!(e.kind(), "overloaded");

    let s = serve(Script::Status(503, vec![], "upstream connect error")).await;
    let e = collect(provider(ProviderKind::Openai, &s.base, "PLEXUS_T_NONE", 5000).stream(req()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "server_error");
    assert!(
        e.to_string().contains("503") && e.to_string().contains("upstream connect error"),
        "{e}"
    );

    // A 200 that is not a stream.
    let s = serve(Script::Status(
        200,
        vec![("content-type", "application/json")],
        r#"{"choices":[]}"#,
    ))
    .await;
    let e = collect(provider(ProviderKind::Openai, &s.base, "PLEXUS_T_NONE", 5000).stream(req()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "bad_response");
    assert!(e.to_string().contains("application/json"), "{e}");
}

#[tokio::test]
async fn a_refused_key_is_sent_as_the_provider_wants_and_never_echoed() {
    // SAFETY: a variable only this test uses.
    unsafe { std::env::set_var("PLEXUS_T_KEY_ECHO", "sk-ant-very-secret-9") };
    let s = serve(Script::Status(401, vec![], r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-very-secret-9"}}"#)).await;
    let e = collect(
        provider(ProviderKind::Anthropic, &s.base, "PLEXUS_T_KEY_ECHO", 5000).stream(req()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "auth");
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains("very-secret"), "{msg}");
    assert!(
        msg.contains("PLEXUS_T_KEY_ECHO") && msg.contains("anthropic at http://127.0.0.1"),
        "{msg}"
    );
    let h = s.headers.lock().unwrap().clone().unwrap();
    assert_eq!(h.get("x-api-key").unwrap(), "sk-ant-very-secret-9");
    assert_eq!(h.get("anthropic-version").unwrap(), "2023-06-01");

    let s = serve(Script::Status(401, vec![], r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#)).await;
    let e =
        collect(provider(ProviderKind::Openai, &s.base, "PLEXUS_T_KEY_ECHO", 5000).stream(req()))
            .await
            .unwrap_err();
    assert_eq!(e.kind(), "auth");
    let h = s.headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        h.get("authorization").unwrap(),
        "Bearer sk-ant-very-secret-9"
    );
}

#[tokio::test]
async fn a_cut_stream_and_garbage_are_bad_responses() {
    let cut =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"model\":\"m\"}\n\n";
    let s = serve(Script::Sse(cut)).await;
    let mut st = provider(ProviderKind::Openai, &s.base, "PLEXUS_T_NONE", 5000).stream(req());
    let mut got = vec![];
    while let Some(ev) = st.next().await {
        got.push(ev);
    }
    assert!(got[..got.len() - 1].iter().all(|e| e.is_ok()), "{got:?}");
    let e = got.last().unwrap().clone().unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    let s = serve(Script::Sse(
        "event: message_start\ndata: <html>502 Bad Gateway</html>\n\n",
    ))
    .await;
    let e =
        collect(provider(ProviderKind::Anthropic, &s.base, "PLEXUS_T_NONE", 5000).stream(req()))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_a_cancel_closes_the_request() {
    let start =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"model\":\"m\"}\n\n";
    let s = serve(Script::Stall(start)).await;
    let e = collect(provider(ProviderKind::Openai, &s.base, "PLEXUS_T_NONE", 300).stream(req()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(e.to_string().contains("between chunks"), "{e}");

    // A cancel token ends the stream and the server sees its body dropped.
    let s = serve(Script::Stall(start)).await;
    let dropped = s.body_dropped.clone();
    let waiting = dropped.notified();
    let cancel = CancellationToken::new();
    let mut st = until_cancelled(
        provider(ProviderKind::Openai, &s.base, "PLEXUS_T_NONE", 60_000).stream(req()),
        cancel.clone(),
    );
    assert!(st.next().await.unwrap().is_ok()); // Start
    assert!(st.next().await.unwrap().is_ok()); // "Hel"
    cancel.cancel();
    assert!(st.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the server saw the request go away");
}
