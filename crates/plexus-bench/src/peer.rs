//! The bench's peer processes. Each is one more Plexus node (and one NATS
//! client) in its own process: it answers echo requests and holds the
//! fan-out subscriptions, for both systems alike, so Plexus and NATS are
//! measured between the same two processes.
//!
//! Control is one JSON object per line on stdin, one answer per line on
//! stdout:
//! - started: `{"event":"ready","node":NAME}`
//! - `{"cmd":"fanout_start"}` → subscribe (one wildcard pattern per
//!   system), `{"ok":true}`
//! - `{"cmd":"fanout_wait","expect":{"plexus":N,"nats":M}}` → wait (≤ 10 s)
//!   until each system's subscription has received N / M messages in all,
//!   answer the counts and the latency histograms (hex) of what arrived
//!   since the previous wait, per system
//! - `{"cmd":"fanout_stop"}` → unsubscribe, `{"ok":true}`
//! - `{"cmd":"quit"}` or end of input → leave and exit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use plexus_bus::{Bus, Envelope};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::hist::Latency;

/// Plexus topic of the echo service.
pub const ECHO_TOPIC: &str = "bench/echo";
/// NATS subject of the echo service.
pub const NATS_ECHO: &str = "bench.echo";
/// Plexus fan-out topics are `bench/fan/{i}/tick`; each peer holds one
/// subscription to this pattern, so each message reaches each peer once.
pub const FAN_PATTERN: &str = "bench/fan/*/tick";
/// NATS fan-out subjects are `bench.fan.{i}.tick`; one subscription per
/// peer as well (two overlapping ones would make nats-server send each
/// message twice to a peer, while Plexus forwards one frame per node).
pub const NATS_FAN_PATTERN: &str = "bench.fan.*.tick";

/// Wall-clock nanoseconds: the processes share one clock, so a timestamp
/// taken in one can be subtracted in another.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The first 8 bytes of a payload as a timestamp.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

#[derive(Default)]
struct SubStats {
    count: AtomicU64,
    hist: Mutex<Latency>,
}

impl SubStats {
    fn record(&self, payload: &[u8]) {
        if let Some(s) = stamp_of(payload) {
            self.hist.lock().record(wall_ns().saturating_sub(s));
        }
        self.count.fetch_add(1, Ordering::Release);
    }
}

/// Run the peer role until told to quit. `seeds` are cluster addresses.
pub async fn run(
    name: &str,
    seeds: &[String],
    cookie: &str,
    data_dir: PathBuf,
    nats_url: Option<&str>,
) -> Result<(), String> {
    let node = crate::embedded::start(name, seeds, cookie, data_dir, vec![]).await?;
    let bus = node.ctx.bus.clone();
    let echo = bus
        .subscribe(ECHO_TOPIC, "bench-echo")
        .map_err(|e| e.to_string())?;
    let echo_bus = bus.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(req) = echo.recv().await {
            let resp = req.reply("bench-echo", req.payload.clone());
            let _ = echo_bus.respond(&req, resp);
        }
    });
    let nats = match nats_url {
        Some(url) => {
            let c = async_nats::connect(url)
                .await
                .map_err(|e| format!("{name}: cannot connect to NATS at {url}: {e}"))?;
            let mut sub = c
                .queue_subscribe(NATS_ECHO, "echo".into())
                .await
                .map_err(|e| format!("{name}: NATS subscribe: {e}"))?;
            let c2 = c.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(reply) = m.reply {
                        let _ = c2.publish(reply, m.payload).await;
                    }
                }
            });
            c.flush().await.map_err(|e| format!("NATS flush: {e}"))?;
            Some(c)
        }
        None => None,
    };
    say(&json!({"event": "ready", "node": name}));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut fan: Option<Fanout> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let cmd: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                say(&json!({"error": format!("not JSON: {e}")}));
                continue;
            }
        };
        match cmd["cmd"].as_str() {
            Some("fanout_start") => {
                fan = None;
                match Fanout::start(&bus, nats.as_ref()).await {
                    Ok(f) => {
                        fan = Some(f);
                        say(&json!({"ok": true}));
                    }
                    Err(e) => say(&json!({"error": e})),
                }
            }
            Some("fanout_wait") => {
                let expect = |side: &str| cmd["expect"][side].as_u64().unwrap_or(0);
                match &fan {
                    Some(f) => say(&f.wait(expect("plexus"), expect("nats")).await),
                    None => say(&json!({"error": "no fan-out running"})),
                }
            }
            Some("fanout_stop") => match fan.take() {
                Some(f) => {
                    f.stop();
                    say(&json!({"ok": true}));
                }
                None => say(&json!({"error": "no fan-out running"})),
            },
            Some("quit") => break,
            other => say(&json!({"error": format!("unknown command {other:?}")})),
        }
    }
    echo_task.abort();
    node.shutdown().await;
    Ok(())
}

fn say(v: &Value) {
    println!("{v}");
}

struct Fanout {
    plexus: Arc<SubStats>,
    nats: Option<Arc<SubStats>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fanout {
    async fn start(bus: &Bus, nats: Option<&async_nats::Client>) -> Result<Fanout, String> {
        let sub = bus
            .subscribe(FAN_PATTERN, "fan")
            .map_err(|e| e.to_string())?;
        let st = Arc::new(SubStats::default());
        let mut f = Fanout {
            plexus: st.clone(),
            nats: None,
            tasks: vec![tokio::spawn(async move {
                while let Some(env) = sub.recv().await {
                    st.record(&env.payload);
                }
            })],
        };
        if let Some(c) = nats {
            let mut sub = c
                .subscribe(NATS_FAN_PATTERN)
                .await
                .map_err(|e| format!("NATS subscribe {NATS_FAN_PATTERN}: {e}"))?;
            let st = Arc::new(SubStats::default());
            f.nats = Some(st.clone());
            f.tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    st.record(&m.payload);
                }
            }));
            c.flush().await.map_err(|e| format!("NATS flush: {e}"))?;
        }
        Ok(f)
    }

    /// Wait until each system's subscription has received its expected
    /// count in all (or 10 s passed), then report the counts and the
    /// latencies recorded since the previous wait.
    async fn wait(&self, plexus: u64, nats: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = |s: &SubStats| s.count.load(Ordering::Acquire);
        let short =
            || count(&self.plexus) < plexus || self.nats.as_ref().is_some_and(|n| count(n) < nats);
        while Instant::now() < deadline && short() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let side = |s: Option<&Arc<SubStats>>| match s {
            Some(s) => {
                let h = std::mem::take(&mut *s.hist.lock());
                json!({"count": count(s), "hist": h.to_hex()})
            }
            None => json!({"count": 0, "hist": Latency::new().to_hex()}),
        };
        json!({"ok": true, "plexus": side(Some(&self.plexus)), "nats": side(self.nats.as_ref())})
    }

    fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The driver's handle on one peer process.
pub struct PeerProc {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PeerProc {
    /// Start `exe bench --peer NAME ...` and wait for its ready line.
    pub async fn spawn(
        exe: &Path,
        name: &str,
        seeds: &[String],
        cookie: &str,
        dir: &Path,
        nats_url: Option<&str>,
        log: &Path,
    ) -> Result<PeerProc, String> {
        let logf = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "--peer", name, "--dir"])
            .arg(dir)
            .env("PLEXUS_COOKIE", cookie)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf))
            .kill_on_drop(true);
        for s in seeds {
            cmd.args(["--seed", s]);
        }
        if let Some(u) = nats_url {
            cmd.args(["--nats", u]);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start peer {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut p = PeerProc {
            name: name.to_string(),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let v = p
            .read(Duration::from_secs(60))
            .await
            .map_err(|e| format!("peer {name} did not start: {e}; see {}", log.display()))?;
        if v["event"] != "ready" {
            return Err(format!("peer {name} said {v} instead of ready"));
        }
        Ok(p)
    }

    async fn read(&mut self, limit: Duration) -> Result<Value, String> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .map_err(|_| format!("no answer within {} s", limit.as_secs()))?
            .map_err(|e| e.to_string())?
            .ok_or("it exited")?;
        serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line}"))
    }

    /// Send one command and wait for its answer.
    pub async fn cmd(&mut self, v: Value, limit: Duration) -> Result<Value, String> {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("peer {}: {e}", self.name))?;
        let r = self
            .read(limit)
            .await
            .map_err(|e| format!("peer {}: {e}", self.name))?;
        if let Some(e) = r["error"].as_str() {
            return Err(format!("peer {}: {e}", self.name));
        }
        Ok(r)
    }

    /// Ask it to leave, then make sure it is gone.
    pub async fn stop(mut self) {
        let _ = self.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Build an echo request on the Plexus bus.
pub fn echo_request(payload: Vec<u8>) -> Envelope {
    Envelope::new(
        plexus_bus::MessageKind::Request,
        ECHO_TOPIC,
        "bench",
        payload,
    )
}
