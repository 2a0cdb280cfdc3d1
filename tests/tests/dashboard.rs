//! The web dashboard in a real headless Chromium (Debian's `chromium`),
//! against a real two-node cluster: the page shows members and plugins from
//! the live event stream, then a breaker turning Open when a plugin fails.
//!
//! Skips (with a message) when no chromium binary is found; `.ci/run`
//! installs it. Set `PLEXUS_UPDATE_SCREENSHOT=1` to refresh
//! `docs/dashboard.png`; otherwise the screenshot goes to the target dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use plexus_tests::{plexus, wait_for, Cluster, NodeSpec};
use serde_json::Value;

/// The chromium binary: `$CHROME`, else the usual Debian paths.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROME") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

const BRITTLE: &str = r#"
[plugin]
name = "brittle"
description = "A plugin that fails on demand"

[handler]
kind = "sim"
latencyMs = 1
allowFaultInjection = true

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
monitoringWindow = 4
minimumCalls = 3
timeoutMs = 60000

[errorHandling.retryPolicy]
maxRetries = 0

[[commands]]
name = "poke"
"#;

const SAGA: &str = r#"
[workflow]
name = "release-train"
kind = "saga"

[[steps]]
id = "plan"
plugin = "brittle"
command = "poke"
compensate = { command = "poke" }

[[steps]]
id = "ship"
plugin = "brittle"
command = "poke"
input = { "$sim" = { fail = true } }
max_attempts = 1
compensate = { command = "poke" }
"#;

/// Evaluate `js` in the page and return its value.
fn eval(tab: &Tab, js: &str) -> Value {
    tab.evaluate(js, false)
        .ok()
        .and_then(|r| r.value)
        .unwrap_or(Value::Null)
}

fn breaker_shown(tab: &Tab, plugin: &str, node: &str) -> Value {
    eval(
        tab,
        &format!(
            r#"(() => {{ const c = document.querySelector('#plugins tr[data-plugin="{plugin}"][data-node="{node}"] .breaker'); return c ? c.textContent : null; }})()"#
        ),
    )
}

#[test]
fn the_dashboard_shows_the_cluster_live_and_a_breaker_opening() {
    let Some(chrome) = chromium() else {
        println!(
            "SKIPPED the_dashboard_shows_the_cluster_live_and_a_breaker_opening: no chromium binary (apt-get install chromium, or set CHROME)"
        );
        eprintln!("SKIPPED: no chromium binary found (apt-get install chromium, or set CHROME)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(cat.join("brittle.toml"), BRITTLE).unwrap();
    let spec = |name: &str, plugins: &[&str]| NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![cat.clone()],
        extra: vec![],
    };
    let c = Cluster::start(vec![
        spec("node1", &["jira-orchestrator", "frontend-powerhouse"]),
        spec("node2", &["brittle", "frontend-powerhouse"]),
    ]);
    let api = c.nodes[0].api.clone();
    // Some traffic to show: a routing decision and a saga that compensates.
    let o = plexus(&[
        "ask",
        "--connect",
        &api,
        "build a react component for the login form",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let wf = tmp.path().join("release.toml");
    std::fs::write(&wf, SAGA).unwrap();
    let o = plexus(&["run", "--connect", &api, wf.to_str().unwrap(), "--json"]);
    assert_eq!(o.code, 1, "the saga's second step fails: {o:?}");

    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chrome))
            .headless(true)
            // Root in a container: chromium's sandbox needs user namespaces.
            .sandbox(false)
            .window_size(Some((1400, 1100)))
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .expect("launch options"),
    )
    .expect("start chromium");
    let tab = browser.new_tab().expect("tab");
    tab.navigate_to(&format!("http://{api}/"))
        .expect("navigate")
        .wait_until_navigated()
        .expect("page load");

    // Live data: the stream says so, and both members show as up.
    wait_for(Duration::from_secs(20), "the page to go live", || {
        (eval(&tab, "document.getElementById('conn').dataset.state") == "live").then_some(())
    });
    wait_for(
        Duration::from_secs(20),
        "two members up on the page",
        || {
            let v = eval(
                &tab,
                r#"Array.from(document.querySelectorAll('#members tr[data-member]')).map(r => r.dataset.member + '=' + r.querySelector('.badge').textContent).sort().join(',')"#,
            );
            (v == "node1=up,node2=up").then_some(())
        },
    );
    // Plugins per node, each with its breaker.
    let rows = eval(
        &tab,
        r#"Array.from(document.querySelectorAll('#plugins tr[data-plugin]')).map(r => r.dataset.plugin + '@' + r.dataset.node).sort().join(',')"#,
    );
    assert_eq!(
        rows,
        "brittle@node2,frontend-powerhouse@node1,frontend-powerhouse@node2,jira-orchestrator@node1",
        "plugins shown"
    );
    assert_eq!(breaker_shown(&tab, "brittle", "node2"), "closed");
    assert!(
        eval(&tab, "document.getElementById('node-name').textContent")
            .as_str()
            .unwrap_or_default()
            .starts_with("node1"),
        "the page names its node"
    );
    // The routing decision with its reasons, and the saga with step states.
    wait_for(Duration::from_secs(10), "the decision and the saga", || {
        let d = eval(
            &tab,
            "document.querySelectorAll('#decisions tr[data-decision=\"frontend-powerhouse\"]').length",
        );
        let s = eval(
            &tab,
            r#"Array.from(document.querySelectorAll('#workflows tr[data-run] [data-step]')).map(b => b.dataset.step + ':' + b.dataset.state).join(',')"#,
        );
        (d.as_u64().unwrap_or(0) >= 1 && s == "plan:compensated,ship:failed").then_some(())
    });

    // The plugin fails; the page shows its breaker open.
    for _ in 0..3 {
        let o = c.nodes[0].exec("brittle", "poke", Some(r#"{"$sim":{"fail":true}}"#));
        assert_eq!(o.code, 1, "{o:?}");
    }
    wait_for(Duration::from_secs(15), "the breaker to show open", || {
        (breaker_shown(&tab, "brittle", "node2") == "open").then_some(())
    });
    // The node agrees (the page is not inventing it).
    let s = c.nodes[0].status().expect("status");
    let b = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "brittle")
        .unwrap()["breaker"]
        .clone();
    assert_eq!(b, "open");

    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let out = if std::env::var_os("PLEXUS_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };
    std::fs::write(&out, png).expect("write screenshot");
    println!("screenshot: {}", out.display());
}
