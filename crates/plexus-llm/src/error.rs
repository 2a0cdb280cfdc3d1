//! Why a model call failed, in the taxonomy the resilience layer needs.

use std::time::Duration;

use plexus_catalog::ProviderKind;

/// Which provider endpoint an error came from (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: ProviderKind,
    pub base_url: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.kind, self.base_url)
    }
}

/// A failed model call. Each kind says whether trying again may help
/// ([`ProviderError::retryable`]) and whether the provider is to blame
/// ([`ProviderError::is_provider_fault`], what a circuit breaker counts).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 429: too many requests or tokens; wait `retry_after` when given.
    #[error("{endpoint}: rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {} ms)", d.as_millis())).unwrap_or_default())]
    RateLimited {
        endpoint: Endpoint,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 529, or a body saying `overloaded`: the provider sheds load. A
    /// smaller model tier may still be served.
    #[error("{endpoint}: overloaded: {message}")]
    Overloaded { endpoint: Endpoint, message: String },
    /// Any other 5xx.
    #[error("{endpoint}: server error {status}: {message}")]
    Server {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// No answer (or no next chunk) in time.
    #[error("{endpoint}: timed out after {} ms {phase}", after.as_millis())]
    Timeout {
        endpoint: Endpoint,
        /// `connecting`, `waiting for the first byte`, `between chunks`.
        phase: &'static str,
        after: Duration,
    },
    /// The connection could not be made (refused, DNS, TLS).
    #[error("{endpoint}: unreachable: {message}")]
    Unreachable { endpoint: Endpoint, message: String },
    /// The prompt (plus `max_tokens`) does not fit the model's context window.
    #[error("{endpoint}: context too long: {message}")]
    ContextTooLong { endpoint: Endpoint, message: String },
    /// The key is missing or refused (401/403). Never retried.
    #[error("{endpoint}: authentication failed ({message}); the key is read from {env}")]
    Auth {
        endpoint: Endpoint,
        /// The environment variable(s) the key is (or would be) read from.
        env: String,
        message: String,
    },
    /// Any other 4xx: the request itself is wrong (unknown model, bad
    /// parameter). Not retried; not the provider's fault.
    #[error("{endpoint}: request refused ({status}): {message}")]
    BadRequest {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// The provider answered something that is not the protocol: garbage,
    /// an unknown event shape, or a stream cut before its end.
    #[error("{endpoint}: bad response: {message}")]
    BadResponse { endpoint: Endpoint, message: String },
}

impl ProviderError {
    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Overloaded { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout { .. }
                | ProviderError::Unreachable { .. }
                | ProviderError::BadResponse { .. }
        )
    }

    /// Whether the failure is the provider's (feeds a breaker). A rate
    /// limit is the caller's pace, a context overflow or a refused request
    /// the caller's content, a bad key the operator's configuration.
    pub fn is_provider_fault(&self) -> bool {
        matches!(
            self,
            ProviderError::Overloaded { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout { .. }
                | ProviderError::Unreachable { .. }
                | ProviderError::BadResponse { .. }
        )
    }

    /// How long the provider asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable name for the kind (metrics, problem documents).
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Overloaded { .. } => "overloaded",
            ProviderError::Server { .. } => "server_error",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Unreachable { .. } => "unreachable",
            ProviderError::ContextTooLong { .. } => "context_too_long",
            ProviderError::Auth { .. } => "auth",
            ProviderError::BadRequest { .. } => "bad_request",
            ProviderError::BadResponse { .. } => "bad_response",
        }
    }

    /// The endpoint it came from.
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            ProviderError::RateLimited { endpoint, .. }
            | ProviderError::Overloaded { endpoint, .. }
            | ProviderError::Server { endpoint, .. }
            | ProviderError::Timeout { endpoint, .. }
            | ProviderError::Unreachable { endpoint, .. }
            | ProviderError::ContextTooLong { endpoint, .. }
            | ProviderError::Auth { endpoint, .. }
            | ProviderError::BadRequest { endpoint, .. }
            | ProviderError::BadResponse { endpoint, .. } => endpoint,
        }
    }
}

/// Longest provider message kept in an error.
const MAX_MESSAGE: usize = 500;

/// The human part of an error body: `error.message` (both APIs), else the
/// body's text, cut to a sane length.
pub fn body_message(body: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
        })
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let msg = if msg.is_empty() {
        "(empty body)".to_string()
    } else {
        msg
    };
    cut(&msg, MAX_MESSAGE)
}

/// `s` cut to at most `n` bytes on a character boundary, with an ellipsis.
pub fn cut(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Map an HTTP error status with its headers and body to a typed error.
/// `key_env` names where the key comes from (for auth errors).
pub fn from_status(
    endpoint: &Endpoint,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    key_env: &str,
) -> ProviderError {
    let message = body_message(body);
    let lower = body.to_ascii_lowercase();
    let endpoint = endpoint.clone();
    let context = [
        "context_length_exceeded",
        "exceed_context_size",
        "prompt is too long",
        "maximum context length",
        "context window",
        "too many tokens",
        "exceeds the available context size",
    ]
    .iter()
    .any(|m| lower.contains(m));
    match status {
        401 | 403 => ProviderError::Auth {
            endpoint,
            env: key_env.to_string(),
            message,
        },
        429 => ProviderError::RateLimited {
            endpoint,
            retry_after: retry_after.and_then(parse_retry_after),
            message,
        },
        529 => ProviderError::Overloaded { endpoint, message },
        413 => ProviderError::ContextTooLong { endpoint, message },
        400..=499 if context => ProviderError::ContextTooLong { endpoint, message },
        500..=599 if lower.contains("overloaded") => {
            ProviderError::Overloaded { endpoint, message }
        }
        500..=599 => ProviderError::Server {
            endpoint,
            status,
            message,
        },
        _ => ProviderError::BadRequest {
            endpoint,
            status,
            message,
        },
    }
}

/// `Retry-After` as seconds (`"20"`, `"1.5"`); an HTTP date is ignored
/// (the APIs send seconds).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            kind: ProviderKind::Anthropic,
            base_url: "https://api.anthropic.com".into(),
        }
    }

    #[test]
    fn real_status_codes_and_bodies_map_to_kinds() {
        // Bodies as the providers send them.
        let anthropic_overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = from_status(&ep(), 529, None, anthropic_overloaded, "ANTHROPIC_API_KEY");
        assert_eq!(e.kind(), "overloaded");
        assert!(e.retryable() && e.is_provider_fault());

        let rate = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let e = from_status(&ep(), 429, Some("17"), rate, "ANTHROPIC_API_KEY");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));
        assert!(e.retryable() && !e.is_provider_fault());
        assert!(e.to_string().contains("retry after 17000 ms"), "{e}");

        let auth = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        let e = from_status(&ep(), 401, None, auth, "ANTHROPIC_API_KEY");
        assert_eq!(e.kind(), "auth");
        assert!(!e.retryable() && !e.is_provider_fault());
        let s = e.to_string();
        assert!(
            s.contains("anthropic at https://api.anthropic.com") && s.contains("ANTHROPIC_API_KEY"),
            "{s}"
        );

        let long = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            from_status(&ep(), 400, None, long, "K").kind(),
            "context_too_long"
        );
        let openai_long = r#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(
            from_status(&ep(), 400, None, openai_long, "K").kind(),
            "context_too_long"
        );
        let llama_long = r#"{"error":{"code":400,"message":"request (3000 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3000,"n_ctx":2048}}"#;
        assert_eq!(
            from_status(&ep(), 400, None, llama_long, "K").kind(),
            "context_too_long"
        );

        let openai_overloaded =
            r#"{"error":{"message":"The server is overloaded","type":"server_error"}}"#;
        assert_eq!(
            from_status(&ep(), 503, None, openai_overloaded, "K").kind(),
            "overloaded"
        );
        let e = from_status(&ep(), 502, None, "<html>Bad Gateway</html>", "K");
        assert_eq!(e.kind(), "server_error");
        assert!(e.to_string().contains("502"), "{e}");

        let model =
            r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}"#;
        let e = from_status(&ep(), 404, None, model, "K");
        assert_eq!(e.kind(), "bad_request");
        assert!(!e.retryable() && !e.is_provider_fault());
        assert!(e.to_string().contains("claude-nope"), "{e}");
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(5000);
        assert!(body_message(&body).len() < 600);
        assert_eq!(body_message(""), "(empty body)");
    }
}
