//! The message envelope every bus message travels in (the seed's shape).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::text::TraceId;

/// What kind of message an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Request,
    Response,
    Event,
    Command,
}

/// Tracing and identity headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Headers {
    /// Inline up to 32 bytes (a generated or W3C trace id needs no allocation).
    #[schema(value_type = Option<String>)]
    pub trace_id: Option<TraceId>,
    /// 16 hex digits for spans the bus makes (inline).
    #[schema(value_type = Option<String>)]
    pub span_id: Option<CompactString>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// Anything else, kept in order.
    pub extra: Vec<(String, String)>,
}

/// Delivery metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metadata {
    pub retry_count: u32,
    /// How long the sender waits for a response.
    pub timeout_ms: Option<u64>,
    /// Wall-clock ms after which the message is dead-lettered instead of delivered.
    pub expires_at_ms: Option<u64>,
    /// Set on a request answered by a stream: the parts the responder may
    /// send ahead of the requester (`Bus::request_stream`).
    #[serde(default)]
    pub stream_window: Option<u32>,
}

/// Lowest and highest priority.
pub const MIN_PRIORITY: u8 = 1;
pub const MAX_PRIORITY: u8 = 10;
/// Priority of messages that do not say.
pub const DEFAULT_PRIORITY: u8 = 5;

/// One bus message.
///
/// The names are [`CompactString`]s (inline up to 24 bytes): a typical
/// envelope is built, moved and dropped without heap allocations besides
/// its payload. They serialize as plain strings, as `String` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    pub message_id: Uuid,
    /// For a response: the request's `message_id`.
    pub correlation_id: Option<Uuid>,
    /// Wall-clock ms when published.
    pub timestamp_ms: u64,
    /// Who published it (a plugin, a node service, or a client name).
    #[schema(value_type = String)]
    pub source: CompactString,
    /// The node it was published on (responses go back there).
    #[schema(value_type = String)]
    pub source_node: CompactString,
    /// A subscriber name, or `*` for every subscriber.
    #[schema(value_type = String)]
    pub destination: CompactString,
    #[schema(value_type = String)]
    pub topic: CompactString,
    pub kind: MessageKind,
    /// 1 (lowest) to 10 (highest); higher is delivered first from a backlog.
    pub priority: u8,
    pub headers: Headers,
    /// Opaque payload (JSON text by convention).
    pub payload: Vec<u8>,
    pub metadata: Metadata,
}

impl Envelope {
    /// A new envelope with a fresh id, timestamp and trace id.
    pub fn new(
        kind: MessageKind,
        topic: impl Into<CompactString>,
        source: impl Into<CompactString>,
        payload: Vec<u8>,
    ) -> Self {
        let id = Uuid::now_v7();
        Envelope {
            message_id: id,
            correlation_id: None,
            // The v7 id already holds the wall clock in ms: no second read.
            timestamp_ms: id_ms(&id),
            source: source.into(),
            source_node: CompactString::const_new(""),
            destination: CompactString::const_new("*"),
            topic: topic.into(),
            kind,
            priority: DEFAULT_PRIORITY,
            headers: Headers {
                trace_id: Some(TraceId::from_uuid(id)),
                span_id: Some(short_span()),
                ..Default::default()
            },
            payload,
            metadata: Metadata::default(),
        }
    }

    /// Address it to one subscriber name.
    pub fn to(mut self, destination: impl Into<CompactString>) -> Self {
        self.destination = destination.into();
        self
    }

    /// Set the priority (1..=10, checked on publish).
    pub fn with_priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }

    /// How long the sender waits for a response.
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.metadata.timeout_ms = Some(ms);
        self
    }

    /// Join an existing trace (`None` keeps the envelope's own).
    pub fn with_trace<T: Into<TraceId>>(mut self, trace_id: Option<T>) -> Self {
        if let Some(t) = trace_id {
            self.headers.trace_id = Some(t.into());
        }
        self
    }

    /// A response to this request carrying `payload`, on `{topic}` with the
    /// request's trace and a new span.
    pub fn reply(&self, source: impl Into<CompactString>, payload: Vec<u8>) -> Envelope {
        let mut r = Envelope::new(MessageKind::Response, self.topic.clone(), source, payload);
        r.correlation_id = Some(self.message_id);
        r.destination = self.source.clone();
        r.priority = self.priority;
        r.headers.trace_id = self.headers.trace_id.clone();
        r.headers.user_id = self.headers.user_id.clone();
        r.headers.session_id = self.headers.session_id.clone();
        r
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.metadata.expires_at_ms.is_some_and(|e| e <= now_ms)
    }

    /// Whether it has expired now (reads the clock only if it has an expiry).
    pub fn is_expired(&self) -> bool {
        self.metadata.expires_at_ms.is_some_and(|e| e <= now_ms())
    }
}

/// The Unix ms a v7 id was made at: its first 48 bits.
fn id_ms(id: &Uuid) -> u64 {
    (id.as_u128() >> 80) as u64
}

fn short_span() -> CompactString {
    // 64 random bits as 16 hex digits, inline (no allocation).
    let bits = Uuid::new_v4().as_u64_pair().0;
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = (bits >> (60 - 4 * i)) & 0xf;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    // Hex digits are ASCII, so this cannot fail.
    CompactString::from_utf8(&buf[..]).unwrap_or_default()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
