//! Cross-node messaging, the same workloads on the Plexus bus and on NATS.
//!
//! - **request/response**, closed loop: `inflight` tasks each send a request
//!   and wait for its answer, again and again, for the run's duration.
//! - **fan-out pub/sub**, open loop: one publisher sends at a fixed rate on
//!   eight topics; every peer process holds one wildcard subscription that
//!   matches them (per system), so both systems carry each message once to
//!   each peer. Each message carries its intended send time and latency is
//!   measured from it, so a stall cannot hide (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use plexus_bus::{Bus, Envelope, MessageKind};

use crate::hist::Latency;
use crate::peer::{echo_request, wall_ns, NATS_ECHO};

/// Result of a closed-loop run.
#[derive(Debug)]
pub struct Closed {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub latency: Latency,
}

/// Run `one` from `inflight` concurrent loops for `dur`.
pub async fn closed_loop<F, Fut>(inflight: usize, dur: Duration, one: F) -> Closed
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let one = Arc::new(one);
    let started = Instant::now();
    let deadline = started + dur;
    let tasks = (0..inflight.max(1)).map(|_| {
        let one = one.clone();
        tokio::spawn(async move {
            let mut h = Latency::new();
            let (mut errors, mut first) = (0u64, None);
            while Instant::now() < deadline {
                let t = Instant::now();
                match one().await {
                    Ok(()) => h.record(t.elapsed().as_nanos() as u64),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            (h, errors, first)
        })
    });
    let mut out = Closed {
        ok: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        latency: Latency::new(),
    };
    for r in join_all(tasks).await {
        match r {
            Ok((h, e, f)) => {
                out.latency.merge(&h);
                out.errors += e;
                if out.first_error.is_none() {
                    out.first_error = f;
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("task failed: {e}"));
            }
        }
    }
    out.secs = started.elapsed().as_secs_f64();
    out.ok = out.latency.count();
    out
}

/// Request/response on the Plexus bus to the peers' echo subscribers.
pub async fn reqresp_plexus(bus: Bus, inflight: usize, dur: Duration) -> Closed {
    closed_loop(inflight, dur, move || {
        let bus = bus.clone();
        async move {
            let r = bus
                .request(echo_request(vec![7u8; 16]), Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            if r.payload.len() != 16 {
                return Err(format!("echo answered {} bytes", r.payload.len()));
            }
            Ok(())
        }
    })
    .await
}

/// Request/response through nats-server to the peers' echo subscribers.
pub async fn reqresp_nats(client: async_nats::Client, inflight: usize, dur: Duration) -> Closed {
    closed_loop(inflight, dur, move || {
        let c = client.clone();
        async move {
            let r = c
                .request(NATS_ECHO, bytes::Bytes::from_static(&[7u8; 16]))
                .await
                .map_err(|e| e.to_string())?;
            if r.payload.len() != 16 {
                return Err(format!("echo answered {} bytes", r.payload.len()));
            }
            Ok(())
        }
    })
    .await
}

/// Publish at `rate` per second for `dur`, calling `send(i, stamp)` for
/// message `i` with its intended send time (wall-clock ns). Returns how many
/// were sent and how long it took.
pub async fn open_loop_publish<F, Fut>(
    rate: u64,
    dur: Duration,
    send: F,
) -> Result<(u64, f64), String>
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let count = (rate as f64 * dur.as_secs_f64()).max(1.0) as u64;
    let interval = 1_000_000_000 / rate.max(1);
    let start_wall = wall_ns();
    let start = Instant::now();
    let mut i = 0u64;
    while i < count {
        let due = i * interval;
        let now = start.elapsed().as_nanos() as u64;
        if due > now {
            if due - now > 2_000_000 {
                tokio::time::sleep(Duration::from_nanos(due - now - 1_000_000)).await;
            } else {
                tokio::task::yield_now().await;
            }
            continue;
        }
        send(i, start_wall + due).await?;
        i += 1;
    }
    Ok((count, start.elapsed().as_secs_f64()))
}

/// Fan-out publisher on the Plexus bus.
pub async fn fanout_plexus(bus: &Bus, rate: u64, dur: Duration) -> Result<(u64, f64), String> {
    open_loop_publish(rate, dur, |i, stamp| {
        let env = Envelope::new(
            MessageKind::Event,
            format!("bench/fan/{}/tick", i % 8),
            "bench",
            stamp.to_le_bytes().to_vec(),
        );
        let r = bus.publish(env).map(|_| ()).map_err(|e| e.to_string());
        async move { r }
    })
    .await
}

/// Fan-out publisher on NATS.
pub async fn fanout_nats(
    client: &async_nats::Client,
    rate: u64,
    dur: Duration,
) -> Result<(u64, f64), String> {
    let r = open_loop_publish(rate, dur, |i, stamp| async move {
        client
            .publish(
                format!("bench.fan.{}.tick", i % 8),
                bytes::Bytes::copy_from_slice(&stamp.to_le_bytes()),
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(r)
}
