//! `plexus status`.

use std::time::Duration;

use clap::Args;
use plexus_api::StatusBody;

use crate::client::Client;
use crate::CliResult;

#[derive(Args)]
pub struct StatusArgs {
    /// A node's API address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    /// Print the node's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until interrupted (with --json: one line per second).
    #[arg(long)]
    pub watch: bool,
}

pub fn run(a: StatusArgs) -> CliResult {
    let c = Client::new(&a.connect, Duration::from_secs(10));
    loop {
        let body: StatusBody = c.get("/v1/status")??;
        match (a.json, a.watch) {
            (true, false) => println!("{}", serde_json::to_string_pretty(&body)?),
            (true, true) => println!("{}", serde_json::to_string(&body)?),
            // Clear the screen and home the cursor, then redraw.
            (false, true) => print!("\x1b[2J\x1b[H{}", render(&body)),
            (false, false) => print!("{}", render(&body)),
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The human view of a status answer.
pub fn render(s: &StatusBody) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {} (generation {}), up {:.0}s, cluster {}, api {}",
        s.node, s.generation, s.uptime_secs, s.cluster_addr, s.api_addr
    );
    if !s.router_signals.is_empty() {
        let _ = writeln!(o, "router signals: {}", s.router_signals);
    }
    let _ = writeln!(o, "\nMEMBERS");
    let _ = writeln!(
        o,
        "  {:<16} {:<22} {:<22} {:<12} GEN",
        "NAME", "CLUSTER", "API", "STATUS"
    );
    for m in &s.members {
        let _ = writeln!(
            o,
            "  {:<16} {:<22} {:<22} {:<12} {}{}",
            m.name,
            m.cluster_addr,
            m.api_addr,
            m.status.to_string(),
            m.generation,
            if m.local { "  (this node)" } else { "" }
        );
    }
    let _ = writeln!(o, "\nPLUGINS");
    let _ = writeln!(
        o,
        "  {:<26} {:<9} {:<16} {:<12} {:<11} {:>6} {:>8} RESTARTS",
        "NAME", "VERSION", "NODE", "STATUS", "BREAKER", "AGENTS", "COMMANDS"
    );
    for p in &s.plugins {
        let _ = writeln!(
            o,
            "  {:<26} {:<9} {:<16} {:<12} {:<11} {:>6} {:>8} {:>8}",
            p.name, p.version, p.node, p.status, p.breaker, p.agents, p.commands, p.restarts
        );
    }
    if !s.placement.is_empty() {
        let _ = writeln!(o, "\nPLACEMENT ({} moves on this node)", s.placement_moves);
        let _ = writeln!(
            o,
            "  {:<26} {:>8} {:<28} {:<28} WHY SHORT",
            "PLUGIN", "REPLICAS", "ASSIGNED", "RUNNING"
        );
        for r in &s.placement {
            let dash = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            let _ = writeln!(
                o,
                "  {:<26} {:>8} {:<28} {:<28} {}",
                r.plugin,
                r.replicas,
                dash(&r.assigned),
                dash(&r.running),
                r.short.as_deref().unwrap_or("")
            );
        }
    }
    let servers: Vec<_> = s
        .plugins
        .iter()
        .flat_map(|p| p.servers.iter().map(move |v| (p, v)))
        .collect();
    if !servers.is_empty() {
        let _ = writeln!(o, "\nMCP SERVERS");
        let _ = writeln!(
            o,
            "  {:<20} {:<16} {:<16} {:<9} {:<11} {:>8} {:>8} {:>5}",
            "PLUGIN", "NODE", "SERVER", "TRANSPORT", "STATE", "PID", "RESTARTS", "TOOLS"
        );
        for (p, v) in servers {
            let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "  {:<20} {:<16} {:<16} {:<9} {:<11} {:>8} {:>8} {:>5}",
                p.name, p.node, v.name, v.transport, v.state, pid, v.restarts, v.tools
            );
            if let Some(sb) = v.sandbox.as_deref() {
                let _ = writeln!(o, "      sandbox: {sb}");
            }
            if let Some(e) = v.last_error.as_deref().filter(|_| v.state != "running") {
                let _ = writeln!(o, "      last error: {e}");
            }
        }
    }
    let _ = writeln!(
        o,
        "\nBUS  published {}  delivered {}  dead letters {}",
        s.bus.published, s.bus.delivered, s.bus.dead_lettered
    );
    o
}
