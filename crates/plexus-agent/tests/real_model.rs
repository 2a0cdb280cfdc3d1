//! The runtime against the real bundled model (llama.cpp's server with
//! SmolLM2-135M; `scripts/setup-llm.sh`). Fails, not skips, without it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_agent::{
    FinishReason, LlmHandler, NoHost, RunEvent, RunInput, RunRequest, Target, ToolStatus,
    Workspaces,
};
use plexus_catalog::{Agent, Catalog, Command, ModelTier, Plugin, ProviderKind, Sources};
use plexus_llm::local::{LocalOptions, LocalServer, MODEL};
use plexus_llm::{LlmConfig, Message, Part, PriceTable, Role, ToolCall, ToolChoice};
use serde_json::json;

async fn server() -> LocalServer {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    LocalServer::start(&LocalOptions::for_checkout(root))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn plugin() -> Arc<Plugin> {
    let c = Catalog::load(&Sources {
        embedded: vec![(
            "p.toml".into(),
            "[plugin]\nname = \"notes\"\ndescription = \"Keeps notes\"\n".into(),
        )],
        dirs: vec![],
    });
    let mut p = c.plugins[0].clone();
    p.commands.push(Command {
        name: "story".into(),
        description: "Tell a story".into(),
        body: "Write a long story about $ARGUMENTS.".into(),
        ..Default::default()
    });
    p.agents.push(Agent {
        name: "reader".into(),
        description: "Reads files".into(),
        tools: vec!["Read".into()],
        body: "You only ever answer with one <tool_call>.".into(),
        ..Default::default()
    });
    Arc::new(p)
}

struct Setup {
    _dir: tempfile::TempDir,
    handler: LlmHandler,
}

fn setup(kind: ProviderKind, s: &LocalServer) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = LlmConfig::new(kind);
    cfg.base_url = Some(s.base_url());
    cfg.models = [
        (ModelTier::Haiku, MODEL.to_string()),
        (ModelTier::Sonnet, MODEL.to_string()),
        (ModelTier::Opus, MODEL.to_string()),
    ]
    .into();
    let handler = LlmHandler::new(
        plugin(),
        &cfg,
        Arc::new(PriceTable::default()),
        Arc::new(NoHost),
        Workspaces::new(dir.path().join("ws")).unwrap(),
    )
    .unwrap();
    Setup { _dir: dir, handler }
}

/// A command streams its text in pieces and its reply carries the
/// server's own token counts and the table's price (0, known, for the
/// bundled model).
async fn a_command_streams_with_real_usage(kind: ProviderKind) {
    let s = server().await;
    let t = setup(kind, &s);
    let prompt0 = s.metric("prompt_tokens_total").await.unwrap();
    let predicted0 = s.metric("tokens_predicted_total").await.unwrap();
    let mut input = RunInput::parse(
        &json!({"arguments": "a lighthouse keeper", "$max_tokens": 64}).to_string(),
    )
    .unwrap();
    input.max_turns = Some(1);
    let mut r = RunRequest::new(Target::Command("story".into()), input);
    r.temperature = Some(0.0);
    let mut stream = t.handler.stream(r);
    let mut texts = 0;
    let mut reply = None;
    while let Some(ev) = stream.next().await {
        match ev {
            RunEvent::Text(_) => texts += 1,
            RunEvent::Done(rep) => reply = Some(rep),
            RunEvent::Failed(e) => panic!("{kind}: {e}"),
            _ => {}
        }
    }
    let reply = reply.unwrap();
    assert!(texts >= 5, "{kind}: {texts} text events");
    assert_eq!(reply.model, MODEL);
    assert_eq!(reply.finish, FinishReason::MaxTokens, "{kind}: {reply:?}");
    let prompt = s.metric("prompt_tokens_total").await.unwrap() - prompt0;
    let predicted = s.metric("tokens_predicted_total").await.unwrap() - predicted0;
    assert_eq!(reply.usage.output_tokens as f64, predicted, "{kind}");
    assert_eq!(
        (reply.usage.input_tokens - reply.usage.cached_input_tokens) as f64,
        prompt,
        "{kind}"
    );
    assert_eq!((reply.cost_usd, reply.priced), (0.0, true));
}

#[tokio::test]
async fn openai_a_command_streams_with_real_usage() {
    a_command_streams_with_real_usage(ProviderKind::Openai).await
}

#[tokio::test]
async fn anthropic_a_command_streams_with_real_usage() {
    a_command_streams_with_real_usage(ProviderKind::Anthropic).await
}

/// Dropping a run's stream mid-generation frees the server's slot.
#[tokio::test]
async fn a_client_that_goes_away_stops_the_generation() {
    let s = server().await;
    let t = setup(ProviderKind::Openai, &s);
    let input = RunInput::parse(
        &json!({"arguments": "a lighthouse keeper", "$max_tokens": 1500}).to_string(),
    )
    .unwrap();
    let mut r = RunRequest::new(Target::Command("story".into()), input);
    r.temperature = Some(0.0);
    let mut stream = t.handler.stream(r);
    let mut texts = 0;
    while let Some(ev) = stream.next().await {
        if let RunEvent::Text(_) = ev {
            texts += 1;
            if texts == 3 {
                break;
            }
        }
    }
    assert_eq!(s.busy_slots().await.unwrap(), 1);
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.busy_slots().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still generating after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.metric("tokens_predicted_total").await.unwrap() < 500.0);
}

fn example_call(id: &str, file: &str) -> Message {
    Message {
        role: Role::Assistant,
        parts: vec![Part::ToolCall(ToolCall {
            id: id.into(),
            name: "Read".into(),
            arguments: json!({"file_path": file}).to_string(),
        })],
    }
}

/// A real tool call: the model (shown two example calls, temperature 0,
/// tool choice "required") calls Read; the server parses the call; the
/// runtime reads the seeded file in the sandbox and sends the result back;
/// the model answers. llama.cpp takes `tool_choice` but does not enforce
/// it for this model (no grammar), hence the examples.
async fn a_real_tool_call_runs_in_the_sandbox(kind: ProviderKind) {
    let s = server().await;
    let t = setup(kind, &s);
    let input = RunInput::parse(&json!({"$request": "Read the file notes.txt", "$max_turns": 2, "$max_tokens": 48, "files": {"notes.txt": "The launch code is 4711."}}).to_string()).unwrap();
    let mut r = RunRequest::new(Target::Agent("reader".into()), input);
    r.temperature = Some(0.0);
    r.tool_choice = ToolChoice::Required;
    r.history = vec![
        Message::user("Read the file a.txt"),
        example_call("ex1", "a.txt"),
        Message::user("Read the file b.md"),
        example_call("ex2", "b.md"),
    ];
    let reply = t
        .handler
        .run(r)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let read = reply
        .tool_calls
        .first()
        .unwrap_or_else(|| panic!("{kind}: no tool call: {reply:?}"));
    assert_eq!(read.name, "Read", "{kind}: {reply:?}");
    assert_eq!(read.status, ToolStatus::Ok, "{kind}: {read:?}");
    assert!(
        read.detail.contains("The launch code is 4711."),
        "{kind}: {read:?}"
    );
    assert!(reply.turns == 2, "{kind}: {reply:?}");
}

#[tokio::test]
async fn openai_a_real_tool_call_runs_in_the_sandbox() {
    a_real_tool_call_runs_in_the_sandbox(ProviderKind::Openai).await
}

#[tokio::test]
async fn anthropic_a_real_tool_call_runs_in_the_sandbox() {
    a_real_tool_call_runs_in_the_sandbox(ProviderKind::Anthropic).await
}
