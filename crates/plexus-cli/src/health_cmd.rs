//! `plexus health`: a probe for container health checks and scripts. It
//! needs no token (both probes are open) and no shell, so a `FROM scratch`
//! image can run it as its HEALTHCHECK.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use plexus_api::{HealthBody, ReadyBody};

use crate::client::Client;
use crate::{CliResult, Failure};

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node's API address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7201")]
    pub connect: String,
    /// Readiness (`/v1/ready`: joined, plugins running, not draining)
    /// instead of liveness (`/v1/health`: the API answers).
    #[arg(long)]
    pub ready: bool,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Print nothing; the exit code says it all.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: HealthArgs) -> CliResult {
    let c = Client::new(&a.connect, a.timeout);
    let line = if a.ready {
        match c.get::<ReadyBody>("/v1/ready")? {
            Ok(b) => format!("{}: ready", b.node),
            Err(p) => {
                // A 503 carries a ReadyBody (with the reason), not a problem.
                let why = serde_json::from_str::<ReadyBody>(&p.detail)
                    .map(|b| {
                        format!(
                            "{}: not ready: {}",
                            b.node,
                            b.reason.unwrap_or_else(|| "no reason given".into())
                        )
                    })
                    .unwrap_or_else(|_| format!("node at {}: not ready: {p}", a.connect));
                return Err(Failure::from(anyhow!(why)));
            }
        }
    } else {
        match c.get::<HealthBody>("/v1/health")? {
            Ok(b) if b.ok => format!("{}: live", b.node),
            Ok(b) => return Err(Failure::from(anyhow!("{}: not live", b.node))),
            Err(p) => return Err(Failure::from(anyhow!("node at {}: {p}", a.connect))),
        }
    };
    if !a.quiet {
        println!("{line}");
    }
    Ok(())
}
