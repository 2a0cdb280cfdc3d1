//! Agents on a real language model across a real cluster: node processes
//! pointed at the bundled tiny model (llama.cpp's server with SmolLM2-135M,
//! `scripts/setup-llm.sh`), through both providers' APIs. These tests fail,
//! not skip, when the model is not installed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use plexus_tests::llm::{free_port, LlmServer, MODEL};
use plexus_tests::{bin, plexus, tail, wait_for, Cluster, NodeSpec};
use serde_json::Value;

const JIRA: &str = "jira-orchestrator";
const EXEC: &str = "exec-automator";
/// Built-in plugins other than the two above.
const OTHERS: [&str; 4] = [
    "ahling-command-center",
    "frontend-powerhouse",
    "home-assistant-architect",
    "lobbi-platform-manager",
];

/// Prices (per million tokens) the tests give the bundled model, so that a
/// cost is something to check; the built-in table prices it at 0.
const PRICE_IN: f64 = 1000.0;
const PRICE_OUT: f64 = 3000.0;

/// A node config file with an `[llm]` table of `provider` (the flags name
/// the endpoint), a price file, and `extra` lines.
fn llm_config(dir: &Path, name: &str, provider: &str, extra: &str) -> String {
    std::fs::write(
        dir.join("prices.toml"),
        format!("[models.\"{MODEL}\"]\ninput = {PRICE_IN}\noutput = {PRICE_OUT}\n"),
    )
    .unwrap();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!("[llm]\nprovider = \"{provider}\"\nprices_file = \"prices.toml\"\n{extra}"),
    )
    .unwrap();
    p.display().to_string()
}

fn spec(name: &str, plugins: &[&str], extra: Vec<String>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        plugins: plugins.iter().map(|s| s.to_string()).collect(),
        catalogs: vec![],
        extra,
    }
}

/// The first line of a Prometheus page with this prefix, its value.
fn metric(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn get_text(api: &str, path: &str) -> String {
    ureq::get(&format!("http://{api}{path}"))
        .call()
        .expect("GET")
        .into_body()
        .read_to_string()
        .expect("text")
}

/// An `ask` on node1 is routed to the jira agent hosted only on node3; the
/// model runs there and the answer comes back with text, the model id, the
/// server's own token counts and their cost, and node3's /metrics counts
/// them.
fn ask_runs_on_the_hosting_node(provider: &str) {
    let server = LlmServer::start(None, 4096);
    let cfg_dir = tempfile::tempdir().unwrap();
    let node = |name: &str, plugins: &[&str]| {
        let mut extra = server.node_flags(provider);
        extra.extend([
            "--config".into(),
            llm_config(cfg_dir.path(), name, provider, ""),
        ]);
        spec(name, plugins, extra)
    };
    let c = Cluster::start(vec![
        node("node1", &OTHERS[..2]),
        node("node2", &[OTHERS[2], OTHERS[3], EXEC]),
        node("node3", &[JIRA]),
    ]);
    let prompt_before = server.metric("prompt_tokens_total");
    let predicted_before = server.metric("tokens_predicted_total");
    let o = plexus(&[
        "ask",
        "--connect",
        &c.nodes[0].api,
        "create a jira epic for the SSO migration and break it into stories",
        "--input",
        r#"{"$max_tokens": 24}"#,
        "--timeout-ms",
        "120000",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    let r = o.json();
    assert_eq!(r["decision"]["primary_plugin"], JIRA, "{r:#}");
    let res = &r["result"];
    assert_eq!(res["ok"], true, "{r:#}");
    assert_eq!(res["node"], "node3", "{r:#}");
    assert_eq!(res["model"], MODEL, "{r:#}");
    let out = &res["output"];
    assert_eq!(out["plugin"], JIRA);
    assert!(
        !out["text"].as_str().unwrap_or("").trim().is_empty(),
        "{r:#}"
    );
    assert_eq!(out["turns"], 1, "{r:#}");

    // The server's own counters moved by exactly the reply's usage.
    let u = &res["usage"];
    let (input, output, cached) = (
        u["input_tokens"].as_u64().expect("input_tokens"),
        u["output_tokens"].as_u64().expect("output_tokens"),
        u["cached_input_tokens"].as_u64().unwrap_or(0),
    );
    assert!(output > 0 && output <= 24, "{u}");
    let prompt = server.metric("prompt_tokens_total") - prompt_before;
    let predicted = server.metric("tokens_predicted_total") - predicted_before;
    assert_eq!(output as f64, predicted, "{provider}: {u}");
    assert_eq!((input - cached) as f64, prompt, "{provider}: {u}");
    let cost = res["cost_usd"].as_f64().expect("cost_usd");
    let want = (input as f64 * PRICE_IN + output as f64 * PRICE_OUT) / 1e6;
    assert!((cost - want).abs() < 1e-9, "cost {cost}, want {want}");

    // The hosting node counted the run; node1 did not run it.
    let page = get_text(&c.nodes[2].api, "/metrics");
    // The exposition sorts labels by name.
    let labels = format!("model=\"{MODEL}\",plugin=\"{JIRA}\"");
    assert_eq!(
        metric(
            &page,
            &format!("plexus_llm_tokens_total{{direction=\"output\",{labels}}} ")
        ),
        Some(output as f64),
        "{}",
        tail(&page, 60)
    );
    let counted = metric(&page, &format!("plexus_llm_cost_usd_total{{{labels}}} ")).unwrap();
    assert!((counted - want).abs() < 1e-9, "{counted} vs {want}");
    let page1 = get_text(&c.nodes[0].api, "/metrics");
    assert!(
        !page1.contains("plexus_llm_runs_total{"),
        "node1 ran nothing"
    );

    // Status says the sim plugins run on the model now.
    let s = c.nodes[0].status().unwrap();
    let row = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == JIRA)
        .unwrap();
    assert_eq!(row["handler"], "llm", "{row}");
}

#[test]
fn openai_ask_runs_an_agent_on_the_node_that_hosts_it() {
    ask_runs_on_the_hosting_node("openai");
}

#[test]
fn anthropic_ask_runs_an_agent_on_the_node_that_hosts_it() {
    ask_runs_on_the_hosting_node("anthropic");
}

/// The variable the bad-key test's nodes read their key from.
const KEY_ENV: &str = "PLEXUS_TEST_AGENTS_KEY";
const WRONG_KEY: &str = "wrong-key-7f3a9c";

/// A refused key, and a provider that is not there, each give their typed
/// error through the exec path of another node; the key is in no reply,
/// status or log. The refused key is the caller's problem and leaves the
/// breaker closed; the unreachable provider keeps failing and opens it.
#[test]
fn a_bad_key_and_an_unreachable_provider_give_typed_errors_and_the_breaker_opens() {
    let server = LlmServer::start(Some("right-key-1b2c"), 2048);
    // Every node process inherits it; only these nodes read it.
    std::env::set_var(KEY_ENV, WRONG_KEY);
    let cfg_dir = tempfile::tempdir().unwrap();
    let key_line = format!("api_key_env = \"{KEY_ENV}\"\n");
    let mut keyed = server.node_flags("anthropic");
    keyed.extend([
        "--config".into(),
        llm_config(cfg_dir.path(), "node2", "anthropic", &key_line),
    ]);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = vec![
        "--llm-provider".into(),
        "openai".into(),
        "--llm-base-url".into(),
        nowhere.clone(),
    ];
    let c = Cluster::start(vec![
        spec("node1", &[], vec![]),
        spec("node2", &[JIRA], keyed),
        spec("node3", &[EXEC], unreachable),
    ]);
    let api = &c.nodes[0].api;
    let exec = |plugin: &str, agent: &str| {
        plexus(&[
            "exec",
            "--connect",
            api,
            "--plugin",
            plugin,
            "--command",
            agent,
            "--input",
            r#"{"$request": "hello", "$max_tokens": 4}"#,
            "--timeout-ms",
            "30000",
            "--json",
        ])
    };

    for _ in 0..6 {
        let o = exec(JIRA, "agent:agent-router");
        assert_ne!(o.code, 0, "{o:?}");
        let text = format!("{}{}", o.stdout, o.stderr);
        assert!(text.contains("\"auth\""), "{text}");
        assert!(
            text.contains(KEY_ENV) && text.contains("anthropic"),
            "the error names the provider and the variable: {text}"
        );
        assert!(!text.contains(WRONG_KEY), "the key leaked: {text}");
    }
    let status = plexus(&["status", "--connect", api, "--json"]).stdout;
    assert!(!status.contains(WRONG_KEY));
    let row = |s: &Value, p: &str| {
        s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == p)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row(&serde_json::from_str(&status).unwrap(), JIRA)["breaker"],
        "closed",
        "a refused key is not the plugin's fault"
    );

    let o = exec(EXEC, "agent:admin-coordinator");
    assert_ne!(o.code, 0, "{o:?}");
    let text = format!("{}{}", o.stdout, o.stderr);
    assert!(text.contains("provider_unreachable"), "{text}");
    assert!(text.contains(&nowhere[7..]), "names the address: {text}");
    // It keeps failing: the breaker opens, and then refuses at once.
    wait_for(Duration::from_secs(120), "the breaker to open", || {
        let s = c.nodes[0].status()?;
        if row(&s, EXEC)["breaker"] == "open" {
            return Some(());
        }
        let _ = exec(EXEC, "agent:admin-coordinator");
        None
    });
    let o = exec(EXEC, "agent:admin-coordinator");
    let text = format!("{}{}", o.stdout, o.stderr);
    assert!(text.contains("breaker-open"), "{text}");

    for n in &c.nodes {
        assert!(
            !n.log_text().contains(WRONG_KEY),
            "{} logged the key",
            n.spec.name
        );
    }
}

/// Run `plexus up` with `args` until its "Ctrl-C" line; the lines up to it.
fn up_lines(dir: &Path, args: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(bin())
        .arg("up")
        .args(["--nodes", "1", "--base-port", "0", "--quiet", "--dir"])
        .arg(dir)
        .args(args)
        .env("PLEXUS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("plexus up");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = vec![];
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(120)) {
        let done = l.starts_with("Ctrl-C");
        lines.push(l);
        if done {
            break;
        }
    }
    (child, lines)
}

fn stop(mut child: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Without a model, `plexus up` says first that agents are simulated and
/// how to turn a model on; with `--llm local` it starts the bundled model
/// and every node's agents run on it.
#[test]
fn plexus_up_says_agents_are_simulated_or_runs_them_on_the_bundled_model() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = up_lines(&dir.path().join("sim"), &[]);
    stop(child);
    assert!(
        lines[0].starts_with("agents are simulated"),
        "first line: {lines:?}"
    );
    let head = lines[..3].join("\n");
    assert!(
        head.contains("--llm local") && head.contains("ANTHROPIC_API_KEY"),
        "{head}"
    );

    let (child, lines) = up_lines(&dir.path().join("local"), &["--llm", "local"]);
    let guard = scopeguard(child);
    assert!(
        lines[0].starts_with("agents run on the bundled model"),
        "{lines:?}"
    );
    let api = lines
        .iter()
        .find(|l| l.starts_with("node1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no node1 row in {lines:?}"))
        .to_string();
    // `plexus up` prints its table once every plugin served somewhere; a
    // host may still be (re)starting a moment later, so an `unavailable`
    // answer is asked again, within a deadline. Anything else is final.
    let o = wait_for(
        Duration::from_secs(60),
        "jira served on the bundled model",
        || {
            let o = plexus(&[
                "exec",
                "--connect",
                &api,
                "--plugin",
                JIRA,
                "--command",
                "agent:agent-router",
                "--input",
                r#"{"$request": "route PROJ-1", "$max_tokens": 8}"#,
                "--timeout-ms",
                "60000",
                "--json",
            ]);
            (!o.stdout.contains("plugin-unavailable")).then_some(o)
        },
    );
    assert_eq!(o.code, 0, "{o:?}");
    let r = o.json();
    assert_eq!(r["model"], MODEL, "{r:#}");
    assert!(r["usage"]["output_tokens"].as_u64().unwrap() > 0, "{r:#}");
    drop(guard);
}

/// Stops `plexus up` even when an assertion fails.
struct Up(Option<std::process::Child>);
fn scopeguard(c: std::process::Child) -> Up {
    Up(Some(c))
}
impl Drop for Up {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}
