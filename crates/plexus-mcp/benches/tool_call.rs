//! One MCP tool call through `McpHandler` against the real `mcp-server-time`
//! over stdio (JSON-RPC over pipes to a Python process): what an `exec` of an
//! MCP plugin costs on the hosting node, before the cluster hop. Needs
//! `scripts/setup-mcp.sh`; says so and measures nothing without it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use plexus_handler::{CommandHandler, ExecRequest};
use plexus_mcp::{McpHandler, McpOptions, ServerConfig, Transport};

fn tool_call(c: &mut Criterion) {
    let venv = std::env::var("PLEXUS_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp"));
    let program = venv.join("bin/mcp-server-time");
    if !program.is_file() {
        eprintln!(
            "SKIPPED: {} missing (run scripts/setup-mcp.sh)",
            program.display()
        );
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let h = rt.block_on(async {
        let h = McpHandler::with_servers(
            "time",
            vec![ServerConfig {
                name: "time".into(),
                transport: Transport::Stdio {
                    program: program.display().to_string(),
                    args: vec![],
                    env: BTreeMap::new(),
                    cwd: None,
                },
                declared_in: "bench".into(),
                sandbox: None,
            }],
            McpOptions {
                start_timeout: Duration::from_secs(60),
                max_restarts: 0,
                restart_window: Duration::from_secs(60),
                restart_delay: Duration::from_millis(100),
                failed_retry: None,
            },
        );
        let mut rx = h.report().expect("reports");
        while !rx
            .borrow_and_update()
            .servers
            .iter()
            .all(|s| s.state == "running")
        {
            rx.changed().await.expect("server state");
        }
        h
    });
    let req = ExecRequest {
        caller: None,
        plugin: "time".into(),
        command: "get_current_time".into(),
        input: r#"{"timezone":"Europe/Paris"}"#.into(),
        idempotency_key: None,
        trace_id: None,
        model: None,
    };
    c.bench_function("mcp/stdio_get_current_time", |b| {
        b.iter(|| rt.block_on(h.execute(req.clone())).expect("tool call"))
    });
}

criterion_group!(benches, tool_call);
criterion_main!(benches);
