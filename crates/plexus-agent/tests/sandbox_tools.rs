//! The built-in tools in the real sandbox: what the kernel lets them do.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use plexus_agent::tools::ToolSandbox;
use plexus_agent::workspace::{Workspace, Workspaces};
use plexus_agent::Builtin;
use plexus_catalog::{ProcessLimits, SandboxSpec};
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    /// A directory anyone may write (so only the sandbox stops a write).
    open: std::path::PathBuf,
    ws: Workspace,
    _root: Workspaces,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = Workspaces::new(dir.path().join("ws")).unwrap();
    let ws = root.create(false).unwrap();
    Fixture {
        _dir: dir,
        open,
        ws,
        _root: root,
    }
}

fn sandbox(network: bool) -> ToolSandbox {
    ToolSandbox {
        plugin: "p".into(),
        spec: SandboxSpec {
            network,
            ..SandboxSpec::default()
        },
        limits: ProcessLimits::default(),
        timeout: Duration::from_secs(20),
        read: vec![],
        write: vec![],
    }
}

#[tokio::test]
async fn file_tools_work_inside_the_workspace() {
    let f = fixture();
    let s = sandbox(false);
    let w = s
        .call(
            &f.ws,
            Builtin::Write,
            &json!({"file_path": "notes/a.md", "content": "alpha\nbeta\ngamma\n"}),
        )
        .await
        .unwrap();
    assert!(w.contains("Wrote 17 bytes"), "{w}");
    let r = s
        .call(
            &f.ws,
            Builtin::Read,
            &json!({"file_path": "notes/a.md", "offset": 2, "limit": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r, "     2\tbeta\n");
    let e = s
        .call(
            &f.ws,
            Builtin::Edit,
            &json!({"file_path": "notes/a.md", "old_string": "beta", "new_string": "BETA"}),
        )
        .await
        .unwrap();
    assert!(e.contains("Replaced 1 occurrence"), "{e}");
    let e = s
        .call(
            &f.ws,
            Builtin::Edit,
            &json!({"file_path": "notes/a.md", "old_string": "a\n", "new_string": "A\n"}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("occurs 2 times"), "{e}");
    let g = s
        .call(&f.ws, Builtin::Glob, &json!({"pattern": "**/*.md"}))
        .await
        .unwrap();
    assert!(g.trim().ends_with("notes/a.md"), "{g}");
    assert_eq!(
        s.call(&f.ws, Builtin::Glob, &json!({"pattern": "*.md"}))
            .await
            .unwrap(),
        "No files found"
    );
    let g = s
        .call(
            &f.ws,
            Builtin::Grep,
            &json!({"pattern": "BE.A", "output_mode": "content"}),
        )
        .await
        .unwrap();
    assert!(g.contains("a.md:2:BETA"), "{g}");
    let b = s
        .call(
            &f.ws,
            Builtin::Bash,
            &json!({"command": "wc -l < notes/a.md; id -u"}),
        )
        .await
        .unwrap();
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines[0].trim(), "3", "{b}");
    if let Some(uid) = plexus_agent::workspace::sandbox_uid() {
        assert_eq!(lines[1], uid.to_string(), "tools run as nobody: {b}");
    }
    let e = s
        .call(
            &f.ws,
            Builtin::Bash,
            &json!({"command": "echo oops >&2; exit 3"}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("oops") && e.contains("Exit code 3"), "{e}");
}

#[tokio::test]
async fn writes_outside_the_workspace_fail_even_where_anyone_may_write() {
    let f = fixture();
    let s = sandbox(false);
    let target = f.open.join("escaped.txt");
    let e = s
        .call(
            &f.ws,
            Builtin::Write,
            &json!({"file_path": target.display().to_string(), "content": "x"}),
        )
        .await
        .unwrap_err();
    assert!(
        e.contains("cannot write") && e.contains("ermission denied"),
        "{e}"
    );
    let e = s
        .call(
            &f.ws,
            Builtin::Bash,
            &json!({"command": format!("echo x > {}", target.display())}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("ermission denied"), "{e}");
    assert!(!target.exists());
    // Relative escapes are the same path to the kernel.
    let e = s
        .call(
            &f.ws,
            Builtin::Write,
            &json!({"file_path": "../../open/escaped.txt", "content": "x"}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("ermission denied"), "{e}");
    assert!(!target.exists());
}

#[tokio::test]
async fn reads_of_files_the_sandbox_may_not_read_fail() {
    let f = fixture();
    let s = sandbox(false);
    // Inside the workspace but mode 000: the sandbox's uid cannot read it
    // (as root we could: the read happens in the sandboxed process).
    let secret = f.ws.dir().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let e = s
        .call(&f.ws, Builtin::Read, &json!({"file_path": "secret.txt"}))
        .await
        .unwrap_err();
    assert!(e.contains("ermission denied"), "{e}");
    // Outside the workspace, in a directory anyone may read: landlock says no.
    let outside = f.open.join("readable.txt");
    std::fs::write(&outside, "public").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = s
        .call(
            &f.ws,
            Builtin::Read,
            &json!({"file_path": outside.display().to_string()}),
        )
        .await
        .unwrap_err();
    assert!(e.contains("ermission denied"), "{e}");
    let e = s
        .call(&f.ws, Builtin::Read, &json!({"file_path": "/etc/shadow"}))
        .await
        .unwrap_err();
    assert!(
        e.contains("ermission denied") || e.contains("No such file"),
        "{e}"
    );
    let e = s
        .call(
            &f.ws,
            Builtin::Grep,
            &json!({"pattern": "public", "path": f.open.display().to_string()}),
        )
        .await;
    assert!(
        e.is_err() || e.as_deref() == Ok("No matches found"),
        "{e:?}"
    );
}

/// Bash gets an empty network namespace: a connection to a listener on
/// the host's loopback fails, and the listener sees nothing. With the
/// manifest's network grant the same command connects (the control).
#[tokio::test]
async fn bash_has_no_network_unless_granted() {
    let f = fixture();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cmd = json!({"command": format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")});

    let e = sandbox(false)
        .call(&f.ws, Builtin::Bash, &cmd)
        .await
        .unwrap_err();
    assert!(!e.contains("connected"), "{e}");
    // The command has finished: a connection would be queued by now.
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    let ok = sandbox(true)
        .call(&f.ws, Builtin::Bash, &cmd)
        .await
        .unwrap();
    assert!(ok.contains("connected"), "{ok}");
    assert!(listener.accept().is_ok(), "the granted connection arrived");
}
