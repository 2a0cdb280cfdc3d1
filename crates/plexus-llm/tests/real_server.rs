//! Both providers against the real bundled model (llama.cpp's server with
//! SmolLM2-135M, `scripts/setup-llm.sh`). These tests fail, not skip, when
//! the model is not installed.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use plexus_llm::local::{LocalOptions, LocalServer, MODEL};
use plexus_llm::{
    collect, ChatRequest, HttpProvider, LlmConfig, Message, Provider, ProviderConfig, ProviderKind,
    StreamEvent,
};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

async fn server(api_key: Option<&str>) -> LocalServer {
    let mut o = LocalOptions::for_checkout(root());
    o.api_key = api_key.map(str::to_string);
    match LocalServer::start(&o).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn config(kind: ProviderKind, base_url: &str, key_env: &str) -> ProviderConfig {
    let mut c = LlmConfig::new(kind);
    c.base_url = Some(base_url.to_string());
    c.api_key_env = Some(key_env.to_string());
    c.resolve(None).unwrap()
}

fn provider(kind: ProviderKind, s: &LocalServer) -> HttpProvider {
    HttpProvider::new(config(kind, &s.base_url(), "PLEXUS_TEST_UNSET_KEY")).unwrap()
}

fn request(text: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: MODEL.into(),
        system: "You are a helpful assistant.".into(),
        messages: vec![Message::user(text)],
        max_tokens,
        temperature: Some(0.0),
        ..Default::default()
    }
}

/// Text streams in several deltas, and the first arrives while the server
/// is still generating (one of its slots is busy then); usage equals the
/// server's own counters.
async fn streams_incrementally_with_the_servers_usage(kind: ProviderKind) {
    let s = server(None).await;
    let p = provider(kind, &s);
    let prompt_before = s.metric("prompt_tokens_total").await.unwrap();
    let predicted_before = s.metric("tokens_predicted_total").await.unwrap();
    let mut stream = p.stream(request("Write a long story about a lighthouse keeper.", 96));
    let mut deltas = 0;
    let mut busy_at_first = None;
    let mut usage = None;
    let mut text = String::new();
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            StreamEvent::TextDelta(t) => {
                deltas += 1;
                text.push_str(&t);
                if busy_at_first.is_none() {
                    busy_at_first = Some(s.busy_slots().await.unwrap());
                }
            }
            StreamEvent::Usage(u) => usage = Some(u),
            _ => {}
        }
    }
    assert!(deltas >= 5, "{kind}: only {deltas} deltas: {text:?}");
    assert_eq!(
        busy_at_first,
        Some(1),
        "{kind}: the first delta arrived only after generation ended"
    );
    let u = usage.expect("usage");
    let prompt = s.metric("prompt_tokens_total").await.unwrap() - prompt_before;
    let predicted = s.metric("tokens_predicted_total").await.unwrap() - predicted_before;
    assert_eq!(u.output_tokens as f64, predicted, "{kind}: {u:?}");
    assert_eq!(
        (u.input_tokens - u.cached_input_tokens) as f64,
        prompt,
        "{kind}: {u:?}"
    );
    assert!(u.output_tokens > 0 && u.output_tokens <= 96, "{u:?}");
}

#[tokio::test]
async fn openai_streams_incrementally_with_the_servers_usage() {
    streams_incrementally_with_the_servers_usage(ProviderKind::Openai).await
}

#[tokio::test]
async fn anthropic_streams_incrementally_with_the_servers_usage() {
    streams_incrementally_with_the_servers_usage(ProviderKind::Anthropic).await
}

/// Dropping the stream closes the connection and the server stops
/// generating: its slot goes idle and its predicted-token counter stops far
/// short of max_tokens. (At temperature 0 this prompt runs the tiny model
/// to any max_tokens: left alone it would predict all 1500.)
async fn dropping_the_stream_stops_generation(kind: ProviderKind) {
    let s = server(None).await;
    let p = provider(kind, &s);
    let mut stream = p.stream(request(
        "Write a long story about a lighthouse keeper.",
        1500,
    ));
    let mut deltas = 0;
    while let Some(ev) = stream.next().await {
        if let StreamEvent::TextDelta(_) = ev.unwrap() {
            deltas += 1;
            if deltas == 3 {
                break;
            }
        }
    }
    assert_eq!(
        s.busy_slots().await.unwrap(),
        1,
        "{kind}: generating while we read"
    );
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.busy_slots().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind}: the server kept generating after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let predicted = s.metric("tokens_predicted_total").await.unwrap();
    assert!(
        predicted < 500.0,
        "{kind}: {predicted} tokens predicted of 1500"
    );
}

#[tokio::test]
async fn openai_dropping_the_stream_stops_generation() {
    dropping_the_stream_stops_generation(ProviderKind::Openai).await
}

#[tokio::test]
async fn anthropic_dropping_the_stream_stops_generation() {
    dropping_the_stream_stops_generation(ProviderKind::Anthropic).await
}

/// A bad key, a missing required key, an unreachable endpoint and an
/// oversized prompt each give their own typed error.
async fn failures_are_typed(kind: ProviderKind) {
    let s = server(Some("right-key-123")).await;
    let env = format!("PLEXUS_TEST_KEY_{}", kind.as_str().to_uppercase());
    // SAFETY: each test sets only its own variable.
    unsafe { std::env::set_var(&env, "wrong-key-456") };
    let p = HttpProvider::new(config(kind, &s.base_url(), &env)).unwrap();
    let e = collect(p.stream(request("hi", 4))).await.unwrap_err();
    assert_eq!(e.kind(), "auth", "{kind}: {e}");
    assert!(!e.retryable());
    let msg = e.to_string();
    assert!(msg.contains(&env) && msg.contains(kind.as_str()), "{msg}");
    assert!(!msg.contains("wrong-key-456"), "the key leaked: {msg}");

    unsafe { std::env::set_var(&env, "right-key-123") };
    let c = collect(p.stream(request("hi", 4))).await.unwrap();
    assert!(!c.text.is_empty(), "{kind}: {c:?}");

    // Oversized: about 3000 tokens into a 2048-token window.
    let e = collect(p.stream(request(&"word ".repeat(3000), 4)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "context_too_long", "{kind}: {e}");
    assert!(!e.retryable() && !e.is_provider_fault());

    // A required key that is not set: refused before any request.
    let mut c = config(kind, &s.base_url(), "PLEXUS_TEST_NEVER_SET");
    c.key_required = true;
    let e = collect(HttpProvider::new(c).unwrap().stream(request("hi", 4)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "auth");
    assert!(e.to_string().contains("PLEXUS_TEST_NEVER_SET"), "{e}");

    // Nothing listens there.
    let port = plexus_llm::local::free_port();
    let p = HttpProvider::new(config(kind, &format!("http://127.0.0.1:{port}"), &env)).unwrap();
    let e = collect(p.stream(request("hi", 4))).await.unwrap_err();
    assert_eq!(e.kind(), "unreachable", "{kind}: {e}");
    assert!(e.retryable() && e.is_provider_fault());
    assert!(e.to_string().contains(&port.to_string()), "{e}");
}

#[tokio::test]
async fn openai_failures_are_typed() {
    failures_are_typed(ProviderKind::Openai).await
}

#[tokio::test]
async fn anthropic_failures_are_typed() {
    failures_are_typed(ProviderKind::Anthropic).await
}
