//! Real processes in the real sandbox: each limit is hit by a real script.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use plexus_catalog::{Catalog, HandlerSpec, Sources};
use plexus_handler::Limit;

use super::*;

/// A plugin from manifest text, loaded from a file in `dir` (so relative
/// paths resolve there).
fn handler(dir: &Path, manifest: &str) -> ProcessHandler {
    handler_with_sink(dir, manifest, None)
}

fn handler_with_sink(dir: &Path, manifest: &str, sink: Option<PublishSink>) -> ProcessHandler {
    // Processes run as nobody when the tests run as root.
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
    let f = dir.join("p.toml");
    std::fs::write(&f, manifest).unwrap();
    let c = Catalog::load(&Sources {
        embedded: vec![],
        dirs: vec![dir.to_path_buf()],
    });
    assert!(c.errors().next().is_none(), "{:?}", c.diagnostics);
    let p = c.plugin("p").expect("plugin p").clone();
    let HandlerSpec::Process(spec) = p.manifest.handler.clone() else {
        panic!("not a process plugin")
    };
    ProcessHandler::new(Arc::new(p), *spec, sink)
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory plugin processes may write: when the tests run as root the
/// processes run as `nobody`.
fn writable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn req(cmd: &str, input: &str) -> ExecRequest {
    ExecRequest {
        caller: None,
        plugin: "p".into(),
        command: cmd.into(),
        input: input.into(),
        idempotency_key: None,
        trace_id: None,
        model: None,
    }
}

const PY: &str = "#!/usr/bin/env python3\n";

fn manifest(extra: &str, commands: &[(&str, &str, &str)]) -> String {
    let mut m = format!(
        "[plugin]\nname = \"p\"\n[handler]\nkind = \"process\"\ntimeoutMs = 20000\n{extra}\n"
    );
    for (name, program, args) in commands {
        m.push_str(&format!(
            "[handler.commands.{name}]\nprogram = \"{program}\"\nargs = {args}\n"
        ));
    }
    m
}

fn limit_of(r: Result<ExecOutput, HandlerError>) -> (Option<Limit>, String) {
    match r {
        Err(HandlerError::LimitExceeded { limit, detail }) => (Some(limit), detail),
        other => (None, format!("{other:?}")),
    }
}

#[tokio::test]
async fn arguments_come_from_the_input_and_stdout_json_is_the_result() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "echo.py",
        &format!("{PY}import sys, json\ndata = json.load(sys.stdin)\nprint(json.dumps({{'argv': sys.argv[1:], 'stdin': data}}))\n"),
    );
    let h = handler(
        d.path(),
        &manifest("", &[("echo", "./echo.py", r#"["--name={who}", "{n}"]"#)]),
    );
    let out = h
        .execute(req("echo", r#"{"who": "a; rm -rf / $(x)", "n": 2}"#))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(
        v["argv"],
        serde_json::json!(["--name=a; rm -rf / $(x)", "2"])
    );
    assert_eq!(v["stdin"]["n"], 2);

    let e = h.execute(req("echo", r#"{"n": 2}"#)).await.unwrap_err();
    assert!(
        matches!(&e, HandlerError::BadInput(m) if m.contains("\"who\"")),
        "{e}"
    );
    let e = h.execute(req("echo", "{nope")).await.unwrap_err();
    assert!(matches!(e, HandlerError::BadInput(_)), "{e}");
    let e = h.execute(req("nope", "{}")).await.unwrap_err();
    assert!(matches!(e, HandlerError::UnknownCommand { .. }), "{e}");
}

#[tokio::test]
async fn the_environment_holds_only_declared_variables() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "env.py",
        &format!("{PY}import os, json\nprint(json.dumps(dict(os.environ)))\n"),
    );
    // The test process has HOME and CARGO_* variables; none may leak.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    let h = handler(
        d.path(),
        &manifest(
            "inheritEnv = [\"CARGO_PKG_NAME\"]\n[handler.env]\nGREETING = \"hi\"\n",
            &[("env", "./env.py", "[]")],
        ),
    );
    let out = h.execute(req("env", "{}")).await.unwrap();
    let v: Value = serde_json::from_str(&out.output).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    // Python itself may add LC_CTYPE when coercing the C locale.
    keys.retain(|k| *k != "LC_CTYPE");
    assert_eq!(keys, vec!["CARGO_PKG_NAME", "GREETING", "PATH"], "{v}");
    assert_eq!(v["PATH"], DEFAULT_PATH);
}

#[tokio::test]
async fn cpu_limit_stops_a_busy_loop() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "spin.py", &format!("{PY}while True:\n    pass\n"));
    let h = handler(
        d.path(),
        &manifest(
            "[handler.limits]\ncpuSecs = 1\n",
            &[("spin", "./spin.py", "[]")],
        ),
    );
    let (l, detail) = limit_of(h.execute(req("spin", "{}")).await);
    assert_eq!(l, Some(Limit::Cpu), "{detail}");
}

#[tokio::test]
async fn memory_limit_fails_a_large_allocation() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "eat.py",
        &format!("{PY}x = bytearray(512 * 1024 * 1024)\nprint('{{}}')\n"),
    );
    let h = handler(
        d.path(),
        &manifest(
            "[handler.limits]\nmemoryMb = 128\n",
            &[("eat", "./eat.py", "[]")],
        ),
    );
    let (l, detail) = limit_of(h.execute(req("eat", "{}")).await);
    assert_eq!(l, Some(Limit::Memory), "{detail}");
    assert!(detail.contains("MemoryError"), "{detail}");
}

#[tokio::test]
async fn output_cap_kills_a_flood() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "flood.py",
        &format!("{PY}import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"),
    );
    let h = handler(
        d.path(),
        &manifest(
            "[handler.limits]\noutputKb = 64\n",
            &[("flood", "./flood.py", "[]")],
        ),
    );
    let (l, detail) = limit_of(h.execute(req("flood", "{}")).await);
    assert_eq!(l, Some(Limit::Output), "{detail}");
}

#[tokio::test]
async fn file_size_limit_stops_a_large_write() {
    let d = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    writable(out.path());
    // A shell child killed by SIGXFSZ, and python's EFBIG (it ignores SIGXFSZ).
    script(
        d.path(),
        "big.sh",
        "#!/bin/sh\nset -e\nhead -c 4194304 /dev/zero > \"$1/big.bin\"\necho '{}'\n",
    );
    script(
        d.path(),
        "big.py",
        &format!("{PY}import sys\nopen(sys.argv[1] + '/big2.bin', 'wb').write(b'0' * 4194304)\nprint('{{}}')\n"),
    );
    let h = handler(
        d.path(),
        &manifest(
            &format!(
                "[handler.limits]\nfileSizeMb = 1\n[handler.sandbox]\nwritePaths = [\"{}\"]\n",
                out.path().display()
            ),
            &[
                ("sh", "./big.sh", r#"["{dir}"]"#),
                ("py", "./big.py", r#"["{dir}"]"#),
            ],
        ),
    );
    let input = format!("{{\"dir\": \"{}\"}}", out.path().display());
    for c in ["sh", "py"] {
        let (l, detail) = limit_of(h.execute(req(c, &input)).await);
        assert_eq!(l, Some(Limit::FileSize), "{c}: {detail}");
    }
    let len = std::fs::metadata(out.path().join("big.bin")).unwrap().len();
    assert!(len <= 1024 * 1024, "{len}");
}

#[tokio::test]
async fn process_limit_stops_a_fork_bomb() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "forks.py",
        &format!("{PY}import os, time\nfor i in range(40):\n    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\nprint('{{}}')\n"),
    );
    let h = handler(
        d.path(),
        &manifest(
            "[handler.limits]\nprocesses = 5\n",
            &[("forks", "./forks.py", "[]")],
        ),
    );
    assert!(
        h.sandbox_report().user_namespace,
        "RLIMIT_NPROC is not enforced for root outside a user namespace"
    );
    let (l, detail) = limit_of(h.execute(req("forks", "{}")).await);
    assert_eq!(l, Some(Limit::Processes), "{detail}");
}

/// The script starts a grandchild and records its pid (atomically, by
/// rename); the timeout must kill it with the group. The timeout races the
/// sandbox's start, so a try whose timeout fired before the pidfile was
/// written proves nothing: it is tried again with a longer timeout, and
/// the test fails only if even the last one never saw the script start.
#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("child.pid");
    writable(d.path());
    script(
        d.path(),
        "hang.sh",
        "#!/bin/sh\nsleep 1000 &\necho $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\nwait\n",
    );
    for timeout_ms in [500, 2_000, 8_000, 30_000] {
        let h = handler(
            d.path(),
            &format!(
                "{}timeoutMs = {timeout_ms}\n[handler.sandbox]\nwritePaths = [\"{}\"]\n",
                manifest("", &[("hang", "./hang.sh", r#"["{pidfile}"]"#)]),
                d.path().display()
            ),
        );
        let input = format!("{{\"pidfile\": \"{}\"}}", pidfile.display());
        let e = h.execute(req("hang", &input)).await.unwrap_err();
        assert!(
            matches!(e, HandlerError::Timeout(t) if t == timeout_ms),
            "{e}"
        );
        let Ok(pid) = std::fs::read_to_string(&pidfile) else {
            eprintln!("the {timeout_ms} ms timeout fired before the script started; trying longer");
            continue;
        };
        let pid: i32 = pid.trim().parse().unwrap();
        // The background child was in the group: it is gone (or a zombie
        // being reaped), within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let gone = loop {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false);
            if !alive || std::time::Instant::now() > deadline {
                break !alive;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(gone, "the grandchild {pid} survived the timeout");
        return;
    }
    panic!("hang.sh never wrote its pidfile, even within a 30 s timeout");
}

#[tokio::test]
async fn non_zero_exit_is_a_failure_with_code_and_stderr() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "fail.sh",
        "#!/bin/sh\necho 'disk on fire' >&2\nexit 7\n",
    );
    let h = handler(d.path(), &manifest("", &[("fail", "./fail.sh", "[]")]));
    let e = h.execute(req("fail", "{}")).await.unwrap_err();
    assert!(e.retryable() && e.is_plugin_fault());
    let m = e.to_string();
    assert!(m.contains("code 7") && m.contains("disk on fire"), "{m}");
}

#[tokio::test]
async fn no_network_and_only_allowed_files() {
    let d = tempfile::tempdir().unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cr3t").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    script(
        d.path(),
        "probe.py",
        &format!(
            "{PY}import json, socket, sys\nr = {{}}\ntry:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close()\n    r['net'] = 'connected'\nexcept OSError as e:\n    r['net'] = str(e)\ntry:\n    r['file'] = open(sys.argv[2]).read()\nexcept OSError as e:\n    r['file'] = 'denied: ' + str(e)\nprint(json.dumps(r))\n"
        ),
    );
    let h = handler(
        d.path(),
        &manifest("", &[("probe", "./probe.py", r#"["{port}", "{path}"]"#)]),
    );
    let rep = h.sandbox_report();
    let out = h
        .execute(req(
            "probe",
            &format!("{{\"port\": {port}, \"path\": \"{}\"}}", secret.display()),
        ))
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&out.output).unwrap();
    if rep.network == "host" {
        eprintln!("no network isolation on this kernel: {v}");
    } else {
        assert_ne!(v["net"], "connected", "{v}");
    }
    if rep.landlock == "full" {
        assert!(v["file"].as_str().unwrap().starts_with("denied"), "{v}");
    } else {
        eprintln!("landlock not enforced here ({}): {v}", rep.landlock);
    }
    // This machine supports both; the test says so, so a regression shows.
    assert_eq!((rep.network, rep.landlock), ("netns", "full"), "{rep:?}");
}

#[tokio::test]
async fn a_server_answers_publishes_and_is_reported_stopped_when_it_exits() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "srv.py",
        &format!(
            "{PY}import json, os, sys\nfor line in sys.stdin:\n    req = json.loads(line)\n    if req['command'] == 'die':\n        sys.exit(3)\n    if req['command'] == 'pid':\n        print(json.dumps({{'publish': {{'topic': 'plugin/p/events', 'payload': {{'hello': 1}}}}}}), flush=True)\n        print(json.dumps({{'id': req['id'], 'output': {{'pid': os.getpid()}}}}), flush=True)\n    else:\n        print(json.dumps({{'id': req['id'], 'error': 'no such thing'}}), flush=True)\n"
        ),
    );
    let seen: Arc<parking_lot::Mutex<Vec<(String, PluginPublish)>>> = Default::default();
    let sink: PublishSink = {
        let seen = seen.clone();
        Arc::new(move |plugin: &str, p: PluginPublish| seen.lock().push((plugin.to_string(), p)))
    };
    let h = handler_with_sink(
        d.path(),
        "[plugin]\nname = \"p\"\n[handler]\nkind = \"process\"\ntimeoutMs = 5000\n[handler.server]\nprogram = \"./srv.py\"\n",
        Some(sink),
    );
    h.start().await.unwrap();
    let out = h.execute(req("pid", "{}")).await.unwrap();
    let pid1 = serde_json::from_str::<Value>(&out.output).unwrap()["pid"].clone();
    assert!(pid1.is_u64());
    assert_eq!(seen.lock()[0].0, "p");
    assert_eq!(seen.lock()[0].1.topic, "plugin/p/events");
    let e = h.execute(req("other", "{}")).await.unwrap_err();
    assert!(e.to_string().contains("no such thing"), "{e}");

    let stopped = h.stopped();
    let e = h.execute(req("die", "{}")).await.unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    let why = tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .unwrap();
    assert!(why.contains("code 3"), "{why}");
    // A call to the dead server fails at once.
    let e = h.execute(req("pid", "{}")).await.unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    // What the supervisor does: start again.
    h.start().await.unwrap();
    let out = h.execute(req("pid", "{}")).await.unwrap();
    let pid2 = serde_json::from_str::<Value>(&out.output).unwrap()["pid"].clone();
    assert_ne!(pid1, pid2);
}
