//! Regenerates `cluster-config/plugins/*.toml`, Plexus's own manifests for the
//! six catalog plugins, so that `plexus up` works without `../shared`.
//!
//! The cluster-side fields (domains, routing, error handling, placement) are
//! written here by hand from the seed's architecture; the `[[commands]]` and
//! `[[agents]]` lists are copied from the Claude Code plugin files so the
//! embedded catalog names exactly what the real plugins offer.
//!
//! ```text
//! cargo run -p plexus-catalog --example gen_manifests -- ../shared/catalog/claude-plugins cluster-config/plugins
//! ```

use std::path::PathBuf;

use plexus_catalog::{Catalog, Sources};
use serde::Serialize;

struct Header {
    name: &'static str,
    domains: &'static [&'static str],
    contexts: &'static [&'static str],
    keywords: &'static [&'static str],
    priority: u8,
    fallback: &'static [&'static str],
    can_route_to: &'static [&'static str],
    latency_ms: u64,
}

const HEADERS: &[Header] = &[
    Header {
        name: "ahling-command-center",
        domains: &["infrastructure", "devops", "ai-ml", "smart-home"],
        contexts: &["docker", "vault", "ollama", "neo4j", "traefik", "homelab"],
        keywords: &[
            "infrastructure",
            "docker",
            "compose",
            "vault",
            "secrets",
            "ollama",
            "llm",
            "knowledge graph",
            "neo4j",
            "traefik",
            "monitoring",
            "mcp",
        ],
        priority: 6,
        fallback: &["lobbi-platform-manager"],
        can_route_to: &["home-assistant-architect", "lobbi-platform-manager"],
        latency_ms: 40,
    },
    Header {
        name: "exec-automator",
        domains: &["business", "automation", "nonprofit"],
        contexts: &["association", "board", "executive-director", "langgraph"],
        keywords: &[
            "executive director",
            "association",
            "nonprofit",
            "board",
            "membership",
            "grant",
            "automation potential",
            "workflow",
            "langgraph",
            "governance",
            "finance",
        ],
        priority: 6,
        fallback: &["jira-orchestrator"],
        can_route_to: &["jira-orchestrator"],
        latency_ms: 50,
    },
    Header {
        name: "frontend-powerhouse",
        domains: &["frontend", "ui", "design-system"],
        contexts: &[
            "react",
            "nextjs",
            "chakra-ui",
            "typescript",
            "accessibility",
        ],
        keywords: &[
            "react",
            "next.js",
            "nextjs",
            "chakra",
            "component",
            "frontend",
            "ui",
            "css",
            "accessibility",
            "a11y",
            "performance",
            "design system",
            "storybook",
        ],
        priority: 6,
        fallback: &["jira-orchestrator"],
        can_route_to: &["jira-orchestrator"],
        latency_ms: 30,
    },
    Header {
        name: "home-assistant-architect",
        domains: &["smart-home", "iot", "energy"],
        contexts: &[
            "home-assistant",
            "automations",
            "sensors",
            "cameras",
            "ubuntu",
        ],
        keywords: &[
            "home assistant",
            "smart home",
            "automation",
            "sensor",
            "camera",
            "light",
            "thermostat",
            "energy",
            "zigbee",
            "mqtt",
            "dashboard",
            "lovelace",
            "frigate",
        ],
        priority: 6,
        fallback: &["ahling-command-center"],
        can_route_to: &["ahling-command-center"],
        latency_ms: 30,
    },
    Header {
        name: "jira-orchestrator",
        domains: &[
            "project-management",
            "orchestration",
            "development",
            "devops",
        ],
        contexts: &["jira", "confluence", "github", "pull-request", "sprint"],
        keywords: &[
            "jira",
            "issue",
            "ticket",
            "epic",
            "sprint",
            "confluence",
            "pull request",
            "pr",
            "commit",
            "release",
            "orchestrate",
            "workflow",
            "sla",
            "portfolio",
            "code review",
        ],
        priority: 8,
        fallback: &[],
        can_route_to: &[
            "exec-automator",
            "frontend-powerhouse",
            "home-assistant-architect",
            "ahling-command-center",
            "lobbi-platform-manager",
        ],
        latency_ms: 60,
    },
    Header {
        name: "lobbi-platform-manager",
        domains: &["platform", "authentication", "testing", "devops"],
        contexts: &["keycloak", "multi-tenant", "mern", "microservices"],
        keywords: &[
            "keycloak",
            "realm",
            "oauth",
            "sso",
            "tenant",
            "multi-tenant",
            "login",
            "theme",
            "microservice",
            "service health",
            "test generation",
        ],
        priority: 6,
        fallback: &["ahling-command-center"],
        can_route_to: &["jira-orchestrator"],
        latency_ms: 40,
    },
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    name: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keywords: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent: Option<bool>,
}

#[derive(Serialize)]
struct Lists {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    commands: Vec<Entry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    agents: Vec<Entry>,
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn list(xs: &[&str]) -> String {
    let q: Vec<String> = xs.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", q.join(", "))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = PathBuf::from(
        args.next()
            .ok_or("usage: gen_manifests CATALOG_DIR OUT_DIR")?,
    );
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: gen_manifests CATALOG_DIR OUT_DIR")?,
    );
    let cat = Catalog::load(&Sources {
        embedded: vec![],
        dirs: vec![src],
    });
    std::fs::create_dir_all(&out)?;
    for h in HEADERS {
        let p = cat
            .plugin(h.name)
            .ok_or_else(|| format!("{} not in the catalog", h.name))?;
        let mut kw: Vec<String> = h.keywords.iter().map(|s| s.to_string()).collect();
        for k in &p.keywords {
            if !kw.contains(k) {
                kw.push(k.clone());
            }
        }
        let kw_ref: Vec<&str> = kw.iter().map(String::as_str).collect();
        let lists = Lists {
            commands: p
                .commands
                .iter()
                .map(|c| Entry {
                    name: c.name.clone(),
                    description: one_line(&c.description),
                    model: c.model.map(|m| m.as_str()),
                    keywords: c.triggers.iter().chain(&c.keywords).cloned().collect(),
                    idempotent: (!c.idempotent).then_some(false),
                })
                .collect(),
            agents: p
                .agents
                .iter()
                .map(|a| Entry {
                    name: a.name.clone(),
                    description: one_line(&a.description),
                    model: a.model.map(|m| m.as_str()),
                    keywords: a.triggers.iter().chain(&a.keywords).cloned().collect(),
                    idempotent: None,
                })
                .collect(),
        };
        let text = format!(
            r#"# Plexus manifest for {name} (cluster-side fields).
# The command and agent lists mirror the Claude Code plugin; regenerate with
#   cargo run -p plexus-catalog --example gen_manifests -- ../shared/catalog/claude-plugins cluster-config/plugins

[plugin]
name = "{name}"
version = "{version}"
description = {description:?}

[capabilities]
domains = {domains}
contexts = {contexts}

[routing]
priority = {priority}
keywords = {keywords}
canRouteTo = {can_route_to}
acceptsRoutingFrom = {accepts_routing_from}

[communication]
topics = ["plugin/{name}/events", "orchestration/**"]
subscriptions = ["system/broadcast"]

[errorHandling]
fallback = {fallback}

[errorHandling.circuitBreaker]
failureRateThreshold = 0.5
slowCallRateThreshold = 0.8
slowCallDurationMs = 2000
monitoringWindow = 20
minimumCalls = 5
timeoutMs = 10000
halfOpenRetries = 3

[errorHandling.retryPolicy]
maxRetries = 3
backoff = "exponential"
initialDelayMs = 100
maxDelayMs = 2000
jitter = 0.2

[handler]
kind = "sim"
latencyMs = {latency}
jitterMs = 10
failureRate = 0.0

[placement]
maxRestarts = 3
restartWindowSecs = 10
maxConcurrency = 64

{lists}"#,
            name = h.name,
            version = p.version,
            description = one_line(&p.description),
            domains = list(h.domains),
            contexts = list(h.contexts),
            priority = h.priority,
            keywords = list(&kw_ref),
            can_route_to = list(h.can_route_to),
            // Whoever may route here: every plugin whose canRouteTo names
            // this one (plexus-catalog's `Plugin::may_route_to` needs both).
            accepts_routing_from = list(&{
                let mut from: Vec<&str> = HEADERS
                    .iter()
                    .filter(|o| o.can_route_to.contains(&h.name))
                    .map(|o| o.name)
                    .collect();
                from.sort_unstable();
                from
            }),
            fallback = list(h.fallback),
            latency = h.latency_ms,
            lists = toml::to_string(&lists)?,
        );
        // Refuse to write what the loader would refuse to read.
        plexus_catalog::Manifest::parse(&text)
            .map_err(|e| format!("{}: line {:?}: {}", h.name, e.line, e.message))?;
        std::fs::write(out.join(format!("{}.toml", h.name)), text)?;
    }
    Ok(())
}
