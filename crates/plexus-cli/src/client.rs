//! A small blocking client for a node's HTTP API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Failure;

/// An API client bound to one node's address.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` header value, when a token was given.
    auth: Option<String>,
}

/// The API token every client of this process sends (`--api-token` /
/// `PLEXUS_API_TOKEN`), set once by `main`.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The token given to this process, if any.
pub fn token() -> Option<&'static str> {
    TOKEN.get().map(String::as_str)
}

/// Send `token` as `Authorization: Bearer` on every API call.
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// A non-2xx answer: the node's problem document.
#[derive(Debug, serde::Deserialize)]
pub struct Problem {
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub reply: Option<serde_json::Value>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.detail, self.status)
    }
}

impl std::error::Error for Problem {}

impl Client {
    /// `connect` is the node's API address, `HOST:PORT` (or a full `http://` URL).
    pub fn new(connect: &str, timeout: Duration) -> Client {
        let base = if connect.starts_with("http://") || connect.starts_with("https://") {
            connect.trim_end_matches('/').to_string()
        } else {
            format!("http://{connect}")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Client {
            base,
            agent,
            auth: TOKEN.get().map(|t| format!("Bearer {t}")),
        }
    }

    fn with_auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Result<T, Problem>, Failure> {
        let mut resp = r.map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        if (200..300).contains(&status) {
            let v = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}{path} answered something that is not the expected JSON",
                    self.base
                )
            })?;
            Ok(Ok(v))
        } else {
            let p = serde_json::from_str::<Problem>(&text).unwrap_or(Problem {
                status,
                detail: text.chars().take(500).collect(),
                kind: String::new(),
                reply: None,
            });
            Ok(Err(p))
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Result<T, Problem>, Failure> {
        let r = self
            .with_auth(self.agent.get(format!("{}{path}", self.base)))
            .call();
        self.read(path, r)
    }

    /// GET with query parameters (percent-encoded).
    pub fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Result<T, Problem>, Failure> {
        let r = self
            .with_auth(self.agent.get(format!("{}{path}", self.base)))
            .query_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .call();
        self.read(path, r)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Result<T, Problem>, Failure> {
        let bytes = serde_json::to_vec(body).map_err(anyhow::Error::from)?;
        let r = self
            .with_auth(self.agent.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .send(&bytes[..]);
        // A node refuses an oversized body by answering 413 and closing the
        // connection, which can reach us as a broken pipe mid-upload.
        if let Err(ureq::Error::Io(e)) = &r {
            if bytes.len() > 64 * 1024
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
            {
                return Ok(Err(Problem {
                    status: 413,
                    detail: format!(
                        "request body too large: the node at {} closed the connection while receiving {} bytes (its limit is limits.max_payload_bytes)",
                        self.base,
                        bytes.len()
                    ),
                    kind: "payload-too-large".into(),
                    reply: None,
                }));
            }
        }
        self.read(path, r)
    }

    /// POST asking for Server-Sent Events; `on_event(name, data)` is called
    /// for each event as it arrives. A non-2xx answer is the node's problem.
    pub fn post_stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut on_event: impl FnMut(&str, &str) -> Result<(), Failure>,
    ) -> Result<Result<(), Problem>, Failure> {
        use std::io::BufRead;
        let bytes = serde_json::to_vec(body).map_err(anyhow::Error::from)?;
        let r = self
            .with_auth(self.agent.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .send(&bytes[..]);
        let resp = r.map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            return self
                .read::<serde_json::Value>(path, Ok(resp))
                .map(|r| r.map(|_| ()));
        }
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut sse = SseParser::default();
        for line in reader.lines() {
            let line =
                line.with_context(|| format!("reading the event stream of {}{path}", self.base))?;
            if let Some((name, data)) = sse.line(&line) {
                on_event(&name, &data)?;
            }
        }
        Ok(Ok(()))
    }
}

/// Server-Sent Events, line by line: an event is dispatched at the blank
/// line that ends it (comments, such as keep-alives, are skipped).
#[derive(Default)]
pub struct SseParser {
    event: String,
    data: String,
}

impl SseParser {
    /// Feed one line (without its newline); a finished event comes out.
    pub fn line(&mut self, line: &str) -> Option<(String, String)> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_empty() {
                return None;
            }
            let name = match std::mem::take(&mut self.event) {
                e if e.is_empty() => "message".to_string(),
                e => e,
            };
            return Some((name, std::mem::take(&mut self.data)));
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn events_are_cut_at_blank_lines_and_keep_alives_skipped() {
        let mut p = SseParser::default();
        let mut got = vec![];
        for l in [
            ":keep-alive",
            "",
            "event: text",
            "data: {\"text\":\"Hel\"}",
            "",
            "event: done",
            "data: a",
            "data: b",
            "",
            "data: plain",
            "",
        ] {
            got.extend(p.line(l));
        }
        assert_eq!(
            got,
            vec![
                ("text".to_string(), "{\"text\":\"Hel\"}".to_string()),
                ("done".to_string(), "a\nb".to_string()),
                ("message".to_string(), "plain".to_string()),
            ]
        );
    }
}
