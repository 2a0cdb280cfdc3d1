//! `plexus state`: the replicated state, as a plugin sees it.

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use plexus_api::state::{ListReply, ReadDone, WriteBody, WriteDone};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Client, Problem};
use crate::{CliResult, Failure};

#[derive(Subcommand)]
pub enum StateCmd {
    /// Set a register to a JSON value (creates the key, owned by --as).
    Put(PutArgs),
    /// Read a key.
    Get(GetArgs),
    /// Count a counter up (or down with a negative --by).
    Incr(IncrArgs),
    /// Add members to a set.
    Add(MembersArgs),
    /// Remove members from a set.
    Remove(MembersArgs),
    /// Delete a key (owner only), or one field of a map.
    Delete(KeyWriteArgs),
    /// Keys the plugin may read.
    List(Common),
    /// The node's audit log (changes the plugin made or may read about).
    Audit(AuditArgs),
    /// Leases (distributed locks with fencing tokens).
    #[command(subcommand)]
    Lease(LeaseCmd),
}

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Acquire (or renew) a lease from a majority of the nodes.
    Acquire(LeaseAcquireArgs),
    /// Release a lease held under a token.
    Release(LeaseReleaseArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Any node's API address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: String,
    /// The plugin acting (checked against each key's access level). With a
    /// plugin's own token it is implied, and naming another is refused; an
    /// admin or operator must name one.
    #[arg(long = "as", value_name = "PLUGIN", default_value = "")]
    pub plugin: String,
    /// Print the node's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AccessArg {
    Public,
    Protected,
    Private,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Level {
    Local,
    Majority,
    All,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::Majority => "majority",
            Level::All => "all",
        }
    }
}

#[derive(Args, Clone)]
pub struct WriteOpts {
    /// Access level for a new key (or a change of it: owner only). public:
    /// anyone reads, owner writes; protected: the --readers read and write;
    /// private: owner only.
    #[arg(long, value_enum)]
    pub access: Option<AccessArg>,
    /// Plugins that may read and write a protected key.
    #[arg(long, value_delimiter = ',', value_name = "P1,P2")]
    pub readers: Vec<String>,
    /// Expire the key this long from now.
    #[arg(long, value_name = "N")]
    pub ttl_ms: Option<u64>,
    /// Value type for a new key: lww, gcounter, pncounter, orset, map
    /// (default: implied by the command).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Apply the command to this field of a map.
    #[arg(long)]
    pub field: Option<String>,
    /// How many replicas must durably hold the write before it is acknowledged.
    #[arg(long, value_enum, default_value = "local")]
    pub consistency: Level,
    /// How long to wait for a majority/all write.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub common: Common,
    pub key: String,
    /// A JSON value (`'{"a":1}'`, `42`, `'"text"'`); with --string, any text.
    pub value: String,
    /// Store VALUE as a JSON string instead of parsing it.
    #[arg(long)]
    pub string: bool,
    #[command(flatten)]
    pub opts: WriteOpts,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub common: Common,
    pub key: String,
    /// How many replicas to ask (and merge) before answering.
    #[arg(long, value_enum, default_value = "local")]
    pub consistency: Level,
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

#[derive(Args)]
pub struct IncrArgs {
    #[command(flatten)]
    pub common: Common,
    pub key: String,
    /// Amount (negative counts down).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub by: i64,
    #[command(flatten)]
    pub opts: WriteOpts,
}

#[derive(Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub common: Common,
    pub key: String,
    /// Members.
    #[arg(required = true)]
    pub members: Vec<String>,
    #[command(flatten)]
    pub opts: WriteOpts,
}

#[derive(Args)]
pub struct KeyWriteArgs {
    #[command(flatten)]
    pub common: Common,
    pub key: String,
    /// Remove only this field of a map.
    #[arg(long)]
    pub field: Option<String>,
    #[arg(long, value_enum, default_value = "local")]
    pub consistency: Level,
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only this key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only changes authored by this plugin.
    #[arg(long)]
    pub author: Option<String>,
    /// Only rejected changes.
    #[arg(long)]
    pub rejected: bool,
    /// At most this many records (newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Args)]
pub struct LeaseAcquireArgs {
    #[command(flatten)]
    pub common: Common,
    pub name: String,
    #[arg(long, value_name = "MS")]
    pub ttl_ms: u64,
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

#[derive(Args)]
pub struct LeaseReleaseArgs {
    #[command(flatten)]
    pub common: Common,
    pub name: String,
    /// The fencing token the lease was granted with.
    #[arg(long)]
    pub fencing_token: u64,
}

fn client(c: &Common, timeout_ms: Option<u64>) -> Client {
    let wait = timeout_ms.unwrap_or(3_000) + 10_000;
    Client::new(&c.connect, Duration::from_millis(wait))
}

/// Print a problem (as JSON with --json) and turn it into a failure.
fn failed(c: &Common, p: Problem) -> Failure {
    if c.json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "status": p.status, "type": p.kind, "detail": p.detail})
        );
    }
    p.into()
}

fn post<B: Serialize, T: DeserializeOwned>(
    c: &Common,
    timeout_ms: Option<u64>,
    path: &str,
    body: &B,
) -> Result<T, Failure> {
    client(c, timeout_ms)
        .post::<B, T>(path, body)?
        .map_err(|p| failed(c, p))
}

fn write_body(c: &Common, key: &str, o: &WriteOpts) -> WriteBody {
    WriteBody {
        plugin: c.plugin.clone(),
        key: key.to_string(),
        access: o.access.map(|a| {
            match a {
                AccessArg::Public => "public",
                AccessArg::Protected => "protected",
                AccessArg::Private => "private",
            }
            .to_string()
        }),
        readers: o.readers.clone(),
        ttl_ms: o.ttl_ms,
        kind: o.kind.clone(),
        field: o.field.clone(),
        consistency: Some(o.consistency.name().to_string()),
        timeout_ms: o.timeout_ms,
        ..Default::default()
    }
}

fn print_write(c: &Common, d: &WriteDone) -> CliResult {
    if c.json {
        println!("{}", serde_json::to_string_pretty(d)?);
    } else {
        println!(
            "{} `{}` on {} ({}); consistency {}: {}/{} acks from {}",
            d.ops.last().map(String::as_str).unwrap_or("write"),
            d.key,
            d.node,
            d.ops.join(", "),
            d.consistency,
            d.acks,
            d.required,
            d.acked_by.join(", ")
        );
    }
    Ok(())
}

fn do_write(c: &Common, path: &str, body: WriteBody) -> CliResult {
    let d: WriteDone = post(c, body.timeout_ms, path, &body)?;
    print_write(c, &d)
}

pub fn run(cmd: StateCmd) -> CliResult {
    match cmd {
        StateCmd::Put(a) => {
            let value = if a.string {
                serde_json::Value::String(a.value.clone())
            } else {
                serde_json::from_str(&a.value).map_err(|e| {
                    Failure::usage(anyhow!(
                        "VALUE is not valid JSON ({e}); quote text as '\"text\"' or pass --string"
                    ))
                })?
            };
            let mut b = write_body(&a.common, &a.key, &a.opts);
            b.value = Some(value);
            do_write(&a.common, "/v1/state/put", b)
        }
        StateCmd::Incr(a) => {
            let mut b = write_body(&a.common, &a.key, &a.opts);
            b.by = Some(a.by);
            do_write(&a.common, "/v1/state/incr", b)
        }
        StateCmd::Add(a) => {
            let mut b = write_body(&a.common, &a.key, &a.opts);
            b.members = a.members.clone();
            do_write(&a.common, "/v1/state/add", b)
        }
        StateCmd::Remove(a) => {
            let mut b = write_body(&a.common, &a.key, &a.opts);
            b.members = a.members.clone();
            do_write(&a.common, "/v1/state/remove", b)
        }
        StateCmd::Delete(a) => {
            let b = WriteBody {
                plugin: a.common.plugin.clone(),
                key: a.key.clone(),
                field: a.field.clone(),
                consistency: Some(a.consistency.name().to_string()),
                timeout_ms: a.timeout_ms,
                ..Default::default()
            };
            do_write(&a.common, "/v1/state/delete", b)
        }
        StateCmd::Get(a) => {
            let mut params = vec![
                ("as", a.common.plugin.clone()),
                ("key", a.key.clone()),
                ("consistency", a.consistency.name().to_string()),
            ];
            if let Some(t) = a.timeout_ms {
                params.push(("timeout_ms", t.to_string()));
            }
            let d: ReadDone = client(&a.common, a.timeout_ms)
                .get_query("/v1/state/get", &params)?
                .map_err(|p| failed(&a.common, p))?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&d.value)?);
                let readers = if d.access.readers.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", d.access.readers.join(", "))
                };
                eprintln!(
                    "{} `{}` owned by {} ({}{}) read on {} at {} ({}/{} replicas)",
                    d.kind,
                    d.key,
                    d.owner,
                    d.access.level,
                    readers,
                    d.node,
                    d.consistency,
                    d.acks,
                    d.required
                );
            }
            Ok(())
        }
        StateCmd::List(c) => {
            let r: ListReply = client(&c, None)
                .get_query("/v1/state/list", &[("as", c.plugin.clone())])?
                .map_err(|p| failed(&c, p))?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for k in &r.keys {
                    println!("{k}");
                }
            }
            Ok(())
        }
        StateCmd::Audit(a) => {
            let mut params = vec![
                ("as", a.common.plugin.clone()),
                ("limit", a.limit.to_string()),
            ];
            if let Some(k) = &a.key {
                params.push(("key", k.clone()));
            }
            if let Some(p) = &a.author {
                params.push(("author", p.clone()));
            }
            if a.rejected {
                params.push(("accepted", "false".into()));
            }
            let r: serde_json::Value = client(&a.common, None)
                .get_query("/v1/state/audit", &params)?
                .map_err(|p| failed(&a.common, p))?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            for rec in r["records"].as_array().into_iter().flatten() {
                let outcome = match &rec["outcome"] {
                    serde_json::Value::String(s) => s.to_lowercase(),
                    v => match v.get("Rejected").and_then(|x| x.as_str()) {
                        Some(why) => format!("rejected: {why}"),
                        None => v.to_string(),
                    },
                };
                println!(
                    "#{} {} {:<8} {} {} `{}` from {} ({})",
                    rec["seq"],
                    rec["at_ms"],
                    rec["source"].as_str().unwrap_or("?").to_lowercase(),
                    if rec["author"].as_str().unwrap_or("").is_empty() {
                        "-"
                    } else {
                        rec["author"].as_str().unwrap_or("-")
                    },
                    rec["op"].as_str().unwrap_or("?"),
                    rec["key"].as_str().unwrap_or("?"),
                    rec["node"].as_str().unwrap_or("?"),
                    outcome
                );
                if let Some(by) = rec["by"].as_str().filter(|b| !b.is_empty()) {
                    println!("    by {by}");
                }
            }
            Ok(())
        }
        StateCmd::Lease(LeaseCmd::Acquire(a)) => {
            let body = serde_json::json!({
                "as": a.common.plugin,
                "name": a.name,
                "ttl_ms": a.ttl_ms,
                "timeout_ms": a.timeout_ms,
            });
            let l: serde_json::Value =
                post(&a.common, a.timeout_ms, "/v1/state/lease/acquire", &body)?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                println!(
                    "lease `{}` held by {} with fencing token {} until {} (ms since epoch)",
                    l["name"].as_str().unwrap_or("?"),
                    l["holder"].as_str().unwrap_or("?"),
                    l["token"],
                    l["expires_at_ms"]
                );
            }
            Ok(())
        }
        StateCmd::Lease(LeaseCmd::Release(a)) => {
            let body = serde_json::json!({
                "as": a.common.plugin,
                "name": a.name,
                "token": a.fencing_token,
            });
            let r: serde_json::Value = post(&a.common, None, "/v1/state/lease/release", &body)?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r["released"] == true {
                println!("lease `{}` released", a.name);
            } else {
                println!(
                    "lease `{}` was not held by {} under token {} here (already expired or released)",
                    a.name, a.common.plugin, a.fencing_token
                );
            }
            Ok(())
        }
    }
}
