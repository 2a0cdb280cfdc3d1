//! `plexus token`: issue and revoke signed API tokens (an admin's job), and
//! hash a token for `[[api.tokens]]` (offline).

use std::io::Read;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use plexus_api::{RevokeRequest, Revoked, TokenIssued, TokenRequest};

use crate::client::Client;
use crate::{CliResult, Failure};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a token for a role, signed with the cluster's key (needs the
    /// admin token and `[api] signing_key_file` on the node). Prints the
    /// token once, on stdout; `--json` adds its id and expiry.
    Create(CreateArgs),
    /// Revoke an issued token by id, on every node (a majority write).
    Revoke(RevokeArgs),
    /// Print the SHA-256 of a token (read from stdin, so it stays out of
    /// the shell history), for `[[api.tokens]] sha256`.
    Hash,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7201")]
    pub connect: String,
    /// `admin`, `operator`, `reader` or `plugin:NAME`.
    #[arg(long)]
    pub role: String,
    /// Lifetime: `90m`, `24h`... (`s`, `m`, `h`, `d`; default 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// The caller's rate, `N/s` or `N/m` (default: the node's `[api] rate`).
    #[arg(long)]
    pub rate: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7201")]
    pub connect: String,
    /// The token's id (`plexus token create --json` shows it).
    pub id: String,
}

/// `30s`, `90m`, `24h`, `7d`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err(format!("{s:?}: a token's lifetime must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

pub fn run(c: TokenCmd) -> CliResult {
    match c {
        TokenCmd::Create(a) => {
            let body = TokenRequest {
                role: a.role,
                ttl_ms: a.ttl.map(|d| d.as_millis() as u64),
                rate: a.rate,
            };
            let client = Client::new(&a.connect, Duration::from_secs(10));
            match client.post::<_, TokenIssued>("/v1/tokens", &body)? {
                Ok(t) if a.json => println!("{}", serde_json::to_string_pretty(&t)?),
                Ok(t) => {
                    println!("{}", t.token);
                    eprintln!(
                        "token {} for {} (revoke with: plexus token revoke {})",
                        t.id, t.role, t.id
                    );
                }
                Err(p) => return Err(Failure::from(anyhow!("node at {}: {p}", a.connect))),
            }
        }
        TokenCmd::Revoke(a) => {
            let client = Client::new(&a.connect, Duration::from_secs(30));
            match client.post::<_, Revoked>("/v1/tokens/revoke", &RevokeRequest { id: a.id })? {
                Ok(r) => println!("revoked {} ({} revoked in all)", r.id, r.revoked),
                Err(p) => return Err(Failure::from(anyhow!("node at {}: {p}", a.connect))),
            }
        }
        TokenCmd::Hash => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(anyhow::Error::from)?;
            let t = t.trim_end_matches(['\n', '\r']);
            if t.is_empty() {
                return Err(Failure::usage(anyhow!(
                    "give the token on stdin: plexus token hash < token-file"
                )));
            }
            println!("{}", plexus_auth::hash_token(t));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "0h", "5y", "h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
