//! The [`Provider`] trait and its HTTP implementation for both wire APIs.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use plexus_catalog::ProviderKind;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ProviderConfig};
use crate::decode::{bad, Decoder};
use crate::error::{self, Endpoint, ProviderError};
use crate::secret::{redact, ApiKey};
use crate::types::{ChatRequest, StopReason, StreamEvent, ToolCall, Usage};
use crate::{anthropic, openai};

/// The events of one model turn, as they arrive. Dropping it aborts the
/// HTTP request (the connection is closed, so the server stops generating).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// A language model behind some API.
pub trait Provider: Send + Sync + 'static {
    /// Where calls go (for errors, logs and metrics).
    fn endpoint(&self) -> &Endpoint;
    /// Start one streamed model turn. Every failure, including one before
    /// the first byte, arrives as the stream's one `Err` item, after which
    /// it ends.
    fn stream(&self, req: ChatRequest) -> EventStream;
}

/// End `stream` when `cancel` fires: the inner stream is dropped at once
/// if the consumer is waiting on it, else at its next poll, which aborts
/// the request. (`StreamExt::take_until` would keep it, and the connection,
/// until the whole stream is dropped.)
pub fn until_cancelled(stream: EventStream, cancel: CancellationToken) -> EventStream {
    Box::pin(futures::stream::unfold(
        Some((stream, cancel)),
        |st| async move {
            let (mut s, c) = st?;
            tokio::select! {
                biased;
                _ = c.cancelled() => None,
                ev = s.next() => ev.map(|e| (e, Some((s, c)))),
            }
        },
    ))
}

/// A whole model turn, collected.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub model: String,
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub stop: Option<StopReason>,
}

/// Collect a stream into a [`Completion`] (tests, non-streaming callers).
pub async fn collect(mut s: EventStream) -> Result<Completion, ProviderError> {
    let mut c = Completion::default();
    while let Some(ev) = s.next().await {
        match ev? {
            StreamEvent::Start { model } => c.model = model,
            StreamEvent::TextDelta(t) => c.text.push_str(&t),
            StreamEvent::ToolCallDone { call, .. } => c.tool_calls.push(call),
            StreamEvent::Usage(u) => c.usage = u,
            StreamEvent::Stop(r) => c.stop = Some(r),
            StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallDelta { .. } => {}
        }
    }
    Ok(c)
}

/// Both wire APIs over HTTPS (or HTTP for local servers), with SSE.
pub struct HttpProvider {
    cfg: Arc<ProviderConfig>,
    client: reqwest::Client,
}

impl HttpProvider {
    pub fn new(cfg: ProviderConfig) -> Result<HttpProvider, ConfigError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("plexus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError {
                field: "llm".into(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(HttpProvider {
            cfg: Arc::new(cfg),
            client,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// The URL of the API's one endpoint. A base URL that already ends in
    /// `/v1` (as Ollama's and LiteLLM's are often written) is not doubled.
    pub fn url(&self) -> String {
        let base = &self.cfg.endpoint.base_url;
        let path = match self.cfg.endpoint.kind {
            ProviderKind::Anthropic => "/messages",
            ProviderKind::Openai => "/chat/completions",
        };
        if base.ends_with("/v1") {
            format!("{base}{path}")
        } else {
            format!("{base}/v1{path}")
        }
    }
}

impl Provider for HttpProvider {
    fn endpoint(&self) -> &Endpoint {
        &self.cfg.endpoint
    }

    fn stream(&self, req: ChatRequest) -> EventStream {
        let open = Open {
            cfg: self.cfg.clone(),
            client: self.client.clone(),
            url: self.url(),
            req,
        };
        Box::pin(futures::stream::unfold(State::Open(open), step))
    }
}

struct Open {
    cfg: Arc<ProviderConfig>,
    client: reqwest::Client,
    url: String,
    req: ChatRequest,
}

type SseItems = Pin<Box<dyn Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

struct Reading {
    endpoint: Endpoint,
    idle: Duration,
    sse: SseItems,
    dec: Box<dyn Decoder>,
    pending: VecDeque<StreamEvent>,
    ended: bool,
}

enum State {
    Open(Open),
    Reading(Box<Reading>),
    Done,
}

type Step = Option<(Result<StreamEvent, ProviderError>, State)>;

async fn step(st: State) -> Step {
    let mut r = match st {
        State::Done => return None,
        State::Open(o) => match open(o).await {
            Ok(r) => r,
            Err(e) => return Some((Err(e), State::Done)),
        },
        State::Reading(r) => r,
    };
    loop {
        if let Some(ev) = r.pending.pop_front() {
            return Some((Ok(ev), State::Reading(r)));
        }
        // The turn is complete: stop reading (dropping `r` closes the connection).
        if r.ended || r.dec.done() {
            return None;
        }
        match tokio::time::timeout(r.idle, r.sse.next()).await {
            Err(_) => {
                let e = ProviderError::Timeout {
                    endpoint: r.endpoint.clone(),
                    phase: "between chunks",
                    after: r.idle,
                };
                return Some((Err(e), State::Done));
            }
            Ok(None) => {
                r.ended = true;
                match r.dec.finish() {
                    Ok(evs) => r.pending.extend(evs),
                    Err(e) => return Some((Err(e), State::Done)),
                }
            }
            Ok(Some(Err(e))) => {
                // The connection broke mid-stream, or the bytes are not SSE.
                let e = bad(&r.endpoint, format!("reading the stream failed: {e}"));
                return Some((Err(e), State::Done));
            }
            Ok(Some(Ok(sse))) => {
                let Some(data) = sse.data else { continue };
                match r.dec.feed(sse.event.as_deref(), &data) {
                    Ok(evs) => r.pending.extend(evs),
                    Err(e) => return Some((Err(e), State::Done)),
                }
            }
        }
    }
}

/// Largest error body read.
const MAX_ERROR_BODY: usize = 16 * 1024;

async fn open(o: Open) -> Result<Box<Reading>, ProviderError> {
    let endpoint = o.cfg.endpoint.clone();
    let key = o.cfg.api_key()?;
    let (body, dec): (serde_json::Value, Box<dyn Decoder>) = match endpoint.kind {
        ProviderKind::Anthropic => (
            anthropic::body(&o.req),
            Box::new(anthropic::AnthropicDecoder::new(endpoint.clone())),
        ),
        ProviderKind::Openai => (
            openai::body(&o.req),
            Box::new(openai::OpenAiDecoder::new(endpoint.clone())),
        ),
    };
    let mut rb = o
        .client
        .post(&o.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .body(body.to_string());
    rb = match (endpoint.kind, &key) {
        (ProviderKind::Anthropic, k) => {
            let rb = rb.header("anthropic-version", anthropic::VERSION);
            match k {
                Some(k) => rb.header("x-api-key", k.expose()),
                None => rb,
            }
        }
        (ProviderKind::Openai, Some(k)) => rb.bearer_auth(k.expose()),
        (ProviderKind::Openai, None) => rb,
    };
    tracing::debug!(endpoint = %endpoint, model = %o.req.model, messages = o.req.messages.len(), "model call");
    let idle = o.cfg.idle_timeout;
    let resp = match tokio::time::timeout(idle, rb.send()).await {
        Err(_) => {
            return Err(ProviderError::Timeout {
                endpoint,
                phase: "waiting for the response headers",
                after: idle,
            })
        }
        Ok(Err(e)) => return Err(send_error(&endpoint, &o.cfg, e, key.as_ref())),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, idle).await;
        let body = redact(&body, key.as_ref());
        return Err(error::from_status(
            &endpoint,
            status.as_u16(),
            retry_after.as_deref(),
            &body,
            &o.cfg.key_env_names(),
        ));
    }
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !ct.starts_with("text/event-stream") {
        let body = redact(&read_capped(resp, idle).await, key.as_ref());
        return Err(bad(
            &endpoint,
            format!(
                "expected an event stream, got content-type {ct:?}: {}",
                error::cut(body.trim(), 200)
            ),
        ));
    }
    let sse: SseItems = Box::pin(sse_stream::SseStream::from_bytes_stream(
        resp.bytes_stream(),
    ));
    Ok(Box::new(Reading {
        endpoint,
        idle,
        sse,
        dec,
        pending: VecDeque::new(),
        ended: false,
    }))
}

fn send_error(
    endpoint: &Endpoint,
    cfg: &ProviderConfig,
    e: reqwest::Error,
    key: Option<&ApiKey>,
) -> ProviderError {
    // reqwest's message names the URL, never the headers; redact anyway.
    let msg = redact(&error_chain(&e), key);
    if e.is_timeout() {
        ProviderError::Timeout {
            endpoint: endpoint.clone(),
            phase: "connecting",
            after: cfg.connect_timeout,
        }
    } else {
        ProviderError::Unreachable {
            endpoint: endpoint.clone(),
            message: msg,
        }
    }
}

/// An error with its causes (`error sending request: ... : Connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

async fn read_capped(resp: reqwest::Response, idle: Duration) -> String {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Ok(Some(Ok(b))) = tokio::time::timeout(idle, s.next()).await {
        out.extend_from_slice(&b);
        if out.len() >= MAX_ERROR_BODY {
            out.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
