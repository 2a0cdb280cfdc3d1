//! The MCP handler against real MCP servers from PyPI (`mcp-server-time`,
//! `mcp-server-git`), installed by `scripts/setup-mcp.sh` into `.venv-mcp/`.
//! Without that venv each test says so and passes without checking anything;
//! `.ci/run` installs it, so CI runs them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plexus_handler::{CommandHandler, ExecRequest, HandlerError, HandlerReport, ServerStatus};
use plexus_mcp::{McpHandler, McpOptions, ServerConfig, Transport};
use serde_json::Value;

fn venv() -> Option<PathBuf> {
    let dir = std::env::var("PLEXUS_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp"));
    if dir.join("bin/mcp-server-time").is_file() && dir.join("bin/mcp-server-git").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: no MCP servers in {} (run scripts/setup-mcp.sh)",
            dir.display()
        );
        None
    }
}

fn stdio(name: &str, program: PathBuf, args: &[&str]) -> ServerConfig {
    ServerConfig {
        name: name.into(),
        transport: Transport::Stdio {
            program: program.display().to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: None,
        },
        declared_in: "test".into(),
        sandbox: None,
    }
}

fn options(max_restarts: u32) -> McpOptions {
    McpOptions {
        start_timeout: Duration::from_secs(30),
        max_restarts,
        restart_window: Duration::from_secs(60),
        restart_delay: Duration::from_millis(50),
        failed_retry: None,
    }
}

fn req(command: &str, input: Value) -> ExecRequest {
    ExecRequest {
        caller: None,
        plugin: "p".into(),
        command: command.into(),
        input: input.to_string(),
        idempotency_key: None,
        trace_id: None,
        model: None,
    }
}

/// Run `command` and read its output as JSON (the call must succeed).
async fn call_json(h: &McpHandler, command: &str, input: Value) -> Value {
    let out = h.execute(req(command, input)).await.unwrap();
    serde_json::from_str(&out.output).unwrap()
}

/// Wait until the report satisfies `f` (servers start in the background).
async fn wait_report(
    h: &McpHandler,
    what: &str,
    f: impl Fn(&HandlerReport) -> bool,
) -> HandlerReport {
    let mut rx = h.report().expect("an MCP handler reports");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = rx.borrow_and_update().clone();
        if f(&r) {
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last report: {r:#?}");
        }
    }
}

fn server<'a>(r: &'a HandlerReport, name: &str) -> &'a ServerStatus {
    r.servers
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no server {name} in {r:#?}"))
}

/// Seconds since the epoch of an ISO 8601 date-time with an offset
/// (`2026-11-25T18:59:01+00:00`).
fn epoch_of(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (hh, mm, ss) = (n(11, 13), n(14, 16), n(17, 19));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let off = &s[s.len() - 6..];
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let off_secs =
        sign * (off[1..3].parse::<i64>().unwrap() * 3600 + off[4..6].parse::<i64>().unwrap() * 60);
    days * 86400 + hh * 3600 + mm * 60 + ss - off_secs
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn time_server_tools_become_commands_and_answer_the_current_time() {
    let Some(v) = venv() else { return };
    let h = McpHandler::with_servers(
        "time",
        vec![stdio(
            "time",
            v.join("bin/mcp-server-time"),
            &["--local-timezone", "UTC"],
        )],
        options(3),
    );
    let r = wait_report(&h, "the time server to list its tools", |r| {
        r.servers.iter().all(|s| s.state == "running")
    })
    .await;
    let mut names: Vec<&str> = r.commands.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["convert_time", "get_current_time"]);
    let get = r
        .commands
        .iter()
        .find(|c| c.name == "get_current_time")
        .unwrap();
    assert!(
        get.description.to_lowercase().contains("current time"),
        "{get:?}"
    );
    let schema: Value = serde_json::from_str(&get.input_schema).unwrap();
    assert_eq!(schema["properties"]["timezone"]["type"], "string");
    assert!(get.idempotent, "the time tools say they are read-only");
    assert!(server(&r, "time").pid.is_some());

    let v = call_json(
        &h,
        "get_current_time",
        serde_json::json!({"timezone": "UTC"}),
    )
    .await;
    assert_eq!(v["timezone"], "UTC", "{v}");
    let at = epoch_of(v["datetime"].as_str().unwrap());
    assert!((at - now_epoch()).abs() < 300, "{v} is not now");

    let v = call_json(
        &h,
        "convert_time",
        serde_json::json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
    )
    .await;
    assert!(
        v["target"]["datetime"]
            .as_str()
            .unwrap()
            .contains("T21:00:00"),
        "{v}"
    );

    // The tool's own error (isError) is a failure carrying its message.
    let e = h
        .execute(req(
            "get_current_time",
            serde_json::json!({"timezone": "Mars/Olympus"}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, HandlerError::Failed(m) if m.contains("Mars/Olympus")),
        "{e:?}"
    );
    // Inputs that are not argument objects, and unknown tools.
    assert!(matches!(
        h.execute(req("get_current_time", serde_json::json!([1]))).await,
        Err(HandlerError::BadInput(m)) if m.contains("JSON object")
    ));
    assert!(matches!(
        h.execute(req("get_weather", serde_json::json!({}))).await,
        Err(HandlerError::UnknownCommand { .. })
    ));
}

#[tokio::test]
async fn a_killed_server_is_restarted_with_its_tools() {
    let Some(v) = venv() else { return };
    let h = McpHandler::with_servers(
        "time",
        vec![stdio("time", v.join("bin/mcp-server-time"), &[])],
        options(3),
    );
    let r = wait_report(&h, "the server to run", |r| {
        server(r, "time").state == "running"
    })
    .await;
    let pid = server(&r, "time").pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = wait_report(&h, "a restart with a new process", |r| {
        let s = server(r, "time");
        s.state == "running" && s.pid.is_some_and(|p| p != pid)
    })
    .await;
    let s = server(&r, "time");
    assert_eq!(s.restarts, 1, "{s:?}");
    // The tools stayed listed through the restart.
    assert_eq!(r.commands.len(), 2);
    let out = h
        .execute(req(
            "get_current_time",
            serde_json::json!({"timezone": "Europe/Paris"}),
        ))
        .await
        .unwrap();
    assert!(out.output.contains("Europe/Paris"));
}

#[tokio::test]
async fn a_server_that_cannot_start_fails_fast_then_is_marked_failed() {
    let h = McpHandler::with_servers(
        "ghost",
        vec![stdio(
            "ghost",
            PathBuf::from("/nonexistent/mcp-server-ghost"),
            &[],
        )],
        options(2),
    );
    let r = wait_report(&h, "the server to be given up", |r| {
        server(r, "ghost").state == "failed"
    })
    .await;
    let s = server(&r, "ghost");
    assert_eq!(s.restarts, 2);
    let why = s.last_error.clone().unwrap();
    assert!(why.contains("/nonexistent/mcp-server-ghost"), "{why}");
    assert!(why.contains("No such file"), "{why}");
    assert!(why.contains("restarted 2 times"), "{why}");
    // No tool was ever listed: a call cannot be matched, and says why.
    let started = Instant::now();
    let e = h
        .execute(req("anything", serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(&e, HandlerError::Failed(m) if m.contains("is failed") && m.contains("ghost")),
        "{e:?}"
    );
    assert!(e.retryable(), "a failure counts against the breaker");
}

/// A `failed` server is tried again later: once its cause is gone (here the
/// program appears where the config says), it comes back with its tools.
#[tokio::test]
async fn a_failed_server_is_tried_again_and_comes_back_once_its_cause_is_fixed() {
    let Some(venv) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("mcp-server-time");
    let mut opts = options(1);
    opts.failed_retry = Some(Duration::from_millis(300));
    let h = McpHandler::with_servers(
        "late",
        vec![stdio("late", program.clone(), &["--local-timezone", "UTC"])],
        opts,
    );
    let r = wait_report(&h, "the missing server to be given up", |r| {
        server(r, "late").state == "failed"
    })
    .await;
    let why = server(&r, "late").last_error.clone().unwrap();
    assert!(why.contains("next try in 1 s"), "{why}");
    std::os::unix::fs::symlink(venv.join("bin/mcp-server-time"), &program).unwrap();
    let r = wait_report(&h, "the server to come back on a later try", |r| {
        server(r, "late").state == "running"
    })
    .await;
    assert_eq!(server(&r, "late").tools, 2, "{r:#?}");
    let v = call_json(
        &h,
        "get_current_time",
        serde_json::json!({"timezone": "UTC"}),
    )
    .await;
    assert_eq!(v["timezone"], "UTC", "{v}");
}

#[tokio::test]
async fn git_server_reports_the_status_of_a_real_repository() {
    let Some(v) = venv() else { return };
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(ok.status.success(), "git {args:?}: {ok:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.path().join("notes.txt"), "hello\n").unwrap();
    let h = McpHandler::with_servers(
        "git",
        vec![stdio("git", v.join("bin/mcp-server-git"), &[])],
        options(3),
    );
    let r = wait_report(&h, "the git server", |r| {
        server(r, "git").state == "running"
    })
    .await;
    let names: Vec<&str> = r.commands.iter().map(|c| c.name.as_str()).collect();
    for t in ["git_status", "git_log", "git_commit", "git_add"] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    let commit = r.commands.iter().find(|c| c.name == "git_commit").unwrap();
    assert!(!commit.idempotent, "a commit must not be retried blindly");

    let path = repo.path().display().to_string();
    let out = h
        .execute(req("git_status", serde_json::json!({"repo_path": path})))
        .await
        .unwrap();
    assert!(out.output.contains("notes.txt"), "{}", out.output);
    h.execute(req(
        "git_add",
        serde_json::json!({"repo_path": path, "files": ["notes.txt"]}),
    ))
    .await
    .unwrap();
    let out = h
        .execute(req("git_status", serde_json::json!({"repo_path": path})))
        .await
        .unwrap();
    assert!(out.output.contains("new file"), "{}", out.output);
}

#[tokio::test]
async fn streamable_http_server_is_reached_and_its_loss_is_a_failure() {
    let Some(v) = venv() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mcp-time-http.py");
    let mut child = tokio::process::Command::new(v.join("bin/python"))
        .arg(&script)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for the listener (an event, polled with a deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the HTTP server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = McpHandler::with_servers(
        "time",
        vec![ServerConfig {
            name: "time".into(),
            transport: Transport::Http {
                url: format!("http://127.0.0.1:{port}/mcp"),
            },
            declared_in: "test".into(),
            sandbox: None,
        }],
        options(1),
    );
    let r = wait_report(&h, "the HTTP server", |r| {
        server(r, "time").state == "running"
    })
    .await;
    assert_eq!(server(&r, "time").transport, "http");
    assert_eq!(r.commands.len(), 2);
    let out = h
        .execute(req(
            "get_current_time",
            serde_json::json!({"timezone": "UTC"}),
        ))
        .await
        .unwrap();
    assert!(out.output.contains("\"UTC\""), "{}", out.output);

    child.kill().await.unwrap();
    let e = h
        .execute(req(
            "get_current_time",
            serde_json::json!({"timezone": "UTC"}),
        ))
        .await
        .unwrap_err();
    assert!(matches!(&e, HandlerError::Failed(_)), "{e:?}");
    // Reconnecting fails too (nothing listens), so within one restart it is given up.
    let r = wait_report(&h, "the lost server to be given up", |r| {
        server(r, "time").state == "failed"
    })
    .await;
    assert!(server(&r, "time").last_error.is_some());
}
