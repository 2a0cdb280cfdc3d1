//! Who is calling (issue 22), on a real node process: roles from tokens,
//! `as` taken from a plugin's credential, issued and revoked tokens,
//! per-caller rates, and no open API beyond loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use plexus_tests::{plexus, Node, NodeSpec, Output};

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
const JIRA: &str = "jira-plugin-token-0123456789";
const SLOW: &str = "slow-reader-token-0123456789";

fn sha(t: &str) -> String {
    plexus_auth::hash_token(t)
}

fn node(dir: &Path) -> Node {
    let key = dir.join("signing.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789\n").unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[api]
token = "{ADMIN}"
signing_key_file = "{}"
[[api.tokens]]
name = "dashboards"
role = "reader"
sha256 = "{}"
[[api.tokens]]
name = "jira-process"
role = "plugin:jira-orchestrator"
sha256 = "{}"
[[api.tokens]]
name = "slow"
role = "reader"
sha256 = "{}"
rate = "1/m"
"#,
            key.display(),
            sha(READER),
            sha(JIRA),
            sha(SLOW)
        ),
    )
    .unwrap();
    let spec = NodeSpec {
        name: "solo".into(),
        plugins: vec!["jira-orchestrator".into()],
        catalogs: vec![],
        extra: vec!["--config".into(), cfg.display().to_string()],
    };
    Node::start(spec, dir, "127.0.0.1:0", "127.0.0.1:0", &[])
}

fn with(token: &str, args: &[&str]) -> Output {
    let mut all = vec!["--api-token", token];
    all.extend_from_slice(args);
    plexus(&all)
}

/// Status line and headers of a raw GET.
fn raw_get(api: &str, path: &str, token: &str) -> String {
    let mut s = TcpStream::connect(api).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

#[test]
fn roles_plugin_identity_issued_tokens_and_rates() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path());
    let api = n.api.as_str();

    // No token, or a wrong one, never gets past 401.
    let o = plexus(&["status", "--connect", api]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("needs an API token"), "{o:?}");
    let o = with("wrong-token-0123456789", &["status", "--connect", api]);
    assert!(o.stderr.contains("wrong API token"), "{o:?}");

    // A reader reads status but cannot exec.
    assert_eq!(with(READER, &["status", "--connect", api]).code, 0);
    let o = with(
        READER,
        &[
            "exec",
            "--connect",
            api,
            "--plugin",
            "jira-orchestrator",
            "--command",
            "approve",
        ],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("reader may not exec"), "{o:?}");

    // A plugin's token acts as that plugin: `as` is implied ...
    let o = with(
        JIRA,
        &[
            "state",
            "put",
            "--connect",
            api,
            "--json",
            "epics/sso",
            r#"{"stories":3}"#,
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let o = with(
        JIRA,
        &["state", "get", "--connect", api, "--json", "epics/sso"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["owner"], "jira-orchestrator", "{o:?}");
    // ... and naming another plugin is refused and audited.
    let o = with(
        JIRA,
        &[
            "state",
            "put",
            "--connect",
            api,
            "--as",
            "frontend-powerhouse",
            "ui/theme",
            "1",
        ],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("acts only as jira-orchestrator"), "{o:?}");
    let o = with(
        JIRA,
        &[
            "state",
            "get",
            "--connect",
            api,
            "--as",
            "frontend-powerhouse",
            "epics/sso",
        ],
    );
    assert!(o.stderr.contains("acts only as jira-orchestrator"), "{o:?}");
    let log = n.log_text();
    assert!(
        log.contains("state call refused")
            && log.contains("plugin:jira-orchestrator (jira-process)"),
        "the refusal is audited with who it was: {log}"
    );
    // An admin acts as a plugin only when it says so.
    let o = with(ADMIN, &["state", "get", "--connect", api, "epics/sso"]);
    assert!(o.stderr.contains("`as`"), "{o:?}");
    let o = with(
        ADMIN,
        &[
            "state",
            "get",
            "--connect",
            api,
            "--as",
            "jira-orchestrator",
            "epics/sso",
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");

    // Issued tokens: only an admin issues; they work until revoked.
    let o = with(
        READER,
        &["token", "create", "--connect", api, "--role", "reader"],
    );
    assert!(o.stderr.contains("reader may not administer"), "{o:?}");
    let o = with(
        ADMIN,
        &[
            "token",
            "create",
            "--connect",
            api,
            "--role",
            "operator",
            "--ttl",
            "1h",
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let issued = o.json();
    let token = issued["token"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert_eq!(with(&token, &["status", "--connect", api]).code, 0);
    let o = with(
        &token,
        &["token", "create", "--connect", api, "--role", "admin"],
    );
    assert!(o.stderr.contains("operator may not administer"), "{o:?}");
    let o = with(ADMIN, &["token", "revoke", "--connect", api, &id]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = with(&token, &["status", "--connect", api]);
    assert!(o.stderr.contains("revoked"), "{o:?}");

    // Past its rate (1 a minute) a caller gets 429 with Retry-After.
    let first = raw_get(api, "/v1/status", SLOW);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = raw_get(api, "/v1/status", SLOW);
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("retry-after: "),
        "{second}"
    );
    // Another caller is not slowed by it.
    assert!(raw_get(api, "/v1/status", READER).starts_with("HTTP/1.1 200"));
    let metrics = raw_get(api, "/metrics", READER);
    for reason in ["unauthorized", "forbidden", "rate-limited"] {
        assert!(
            metrics.contains(&format!("plexus_api_refused_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
}

#[test]
fn an_open_api_beyond_loopback_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = plexus(&[
        "node",
        "--name",
        "open",
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "127.0.0.1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--check",
    ]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains("beyond loopback") && o.stderr.contains("--insecure-open-api"),
        "{o:?}"
    );
    let o = plexus(&[
        "node",
        "--name",
        "open",
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "127.0.0.1",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--insecure-open-api",
        "--check",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
}

/// A process plugin's own credential (`PLEXUS_API`, a Unix socket it
/// reaches from a sandbox without network, and `PLEXUS_TOKEN`) reads and
/// writes state as that plugin, and not as another.
#[test]
fn a_plugin_process_uses_the_cluster_as_itself_only() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog");
    std::fs::create_dir_all(cat.join("bin")).unwrap();
    std::fs::write(
        cat.join("notes.toml"),
        r#"[plugin]
name = "notes"
[handler]
kind = "process"
timeoutMs = 15000
[handler.commands.probe]
program = "bin/probe.py"
[[commands]]
name = "probe"
"#,
    )
    .unwrap();
    std::fs::write(
        cat.join("echoer.toml"),
        r#"[plugin]
name = "echoer"
[handler]
kind = "process"
timeoutMs = 15000
[handler.commands.whoami]
program = "bin/whoami.py"
[[commands]]
name = "whoami"
"#,
    )
    .unwrap();
    // The same command, in a plugin that takes calls from jira-orchestrator only.
    std::fs::write(
        cat.join("vault.toml"),
        r#"[plugin]
name = "vault"
[routing]
acceptsRoutingFrom = ["jira-orchestrator"]
[handler]
kind = "process"
timeoutMs = 15000
[handler.commands.whoami]
program = "bin/whoami.py"
[[commands]]
name = "whoami"
"#,
    )
    .unwrap();
    std::fs::write(
        cat.join("bin/whoami.py"),
        "#!/usr/bin/env python3\nimport json, os\nprint(json.dumps({\"caller\": os.environ.get(\"PLEXUS_CALLER\")}))\n",
    )
    .unwrap();
    std::fs::write(
        cat.join("bin/probe.py"),
        r#"#!/usr/bin/env python3
import http.client, json, os, socket
api, tok = os.environ["PLEXUS_API"], os.environ["PLEXUS_TOKEN"]
assert api.startswith("unix:"), api
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(api[len("unix:"):])
def call(method, path, body=None):
    c = Unix("plexus")
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text
put, _ = call("POST", "/v1/state/put", {"key": "notes/last", "value": {"n": 1}})
got, body = call("GET", "/v1/state/get?key=notes/last")
other, why = call("GET", "/v1/state/get?key=notes/last&as=jira-orchestrator")
called, echoed = call("POST", "/v1/exec", {"plugin": "echoer", "command": "whoami"})
locked, refusal = call("POST", "/v1/exec", {"plugin": "vault", "command": "whoami"})
net = "reachable"
try:
    socket.create_connection(("127.0.0.1", 9), timeout=2)
except OSError as e:
    net = "unreachable: %s" % e
print(json.dumps({"put": put, "get": got, "owner": body.get("owner"), "as_other": other,
                  "why": why.get("detail") if isinstance(why, dict) else why, "network": net,
                  "my_caller": os.environ.get("PLEXUS_CALLER"), "called": called,
                  "callee_saw": echoed.get("output") if isinstance(echoed, dict) else echoed,
                  "locked": locked, "refusal": refusal}))
"#,
    )
    .unwrap();
    let exe = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(cat.join("bin/probe.py"), exe.clone()).unwrap();
    std::fs::set_permissions(cat.join("bin/whoami.py"), exe.clone()).unwrap();
    for d in [dir.path(), &cat, &cat.join("bin")] {
        std::fs::set_permissions(d, exe.clone()).unwrap();
    }
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, format!("[api]\ntoken = \"{ADMIN}\"\n")).unwrap();
    let spec = NodeSpec {
        name: "solo".into(),
        plugins: vec!["notes".into(), "echoer".into(), "vault".into()],
        catalogs: vec![cat.clone()],
        extra: vec!["--config".into(), cfg.display().to_string()],
    };
    let n = Node::start(spec, dir.path(), "127.0.0.1:0", "127.0.0.1:0", &[]);
    let o = with(
        ADMIN,
        &[
            "exec",
            "--connect",
            &n.api,
            "--plugin",
            "notes",
            "--command",
            "probe",
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");
    let out = &o.json()["output"];
    assert_eq!(out["put"], 200, "{out}");
    assert_eq!(out["get"], 200, "{out}");
    assert_eq!(out["owner"], "notes", "{out}");
    assert_eq!(out["as_other"], 403, "{out}");
    assert!(
        out["why"].as_str().unwrap().contains("acts only as notes"),
        "{out}"
    );
    // Each call names its caller to the plugin it reaches: the admin who
    // ran the probe, then the probe's own plugin calling another.
    assert_eq!(out["my_caller"], "admin", "{out}");
    assert_eq!(out["called"], 200, "{out}");
    assert_eq!(out["callee_saw"]["caller"], "plugin:notes", "{out}");
    // A plugin that does not take calls from notes refuses, and says why.
    assert_eq!(out["locked"], 403, "{out}");
    assert!(
        out["refusal"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not in vault's acceptsRoutingFrom"),
        "{out}"
    );
    // The audit says who made the change, with the credential used.
    let a = with(
        ADMIN,
        &[
            "state",
            "audit",
            "--connect",
            &n.api,
            "--as",
            "notes",
            "--key",
            "notes/last",
            "--json",
        ],
    );
    assert_eq!(a.code, 0, "{a:?}");
    let records = a.json()["records"].as_array().cloned().unwrap_or_default();
    assert!(
        records
            .iter()
            .any(|r| r["by"] == "plugin:notes (hosted:notes)" && r["author"] == "notes"),
        "{records:?}"
    );
}
