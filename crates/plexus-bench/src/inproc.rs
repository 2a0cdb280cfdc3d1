//! In-node publish→deliver: one node's [`Bus`], a publisher task and a
//! subscriber task (on the runtime's worker threads, as a plugin host and a
//! publisher would be), a wildcard subscription among 50 that do not match.
//!
//! Two runs:
//! - **max throughput** (closed loop): the publisher keeps at most `window`
//!   messages in flight (a mailbox holds 10,000; more would be dead-lettered),
//!   so the rate is what the bus sustains; latencies here include queueing.
//! - **open loop at a fixed rate**: message *i* is due at `start + i/rate`;
//!   its latency is measured from that intended time, so a stalled publisher
//!   or subscriber shows up in the percentiles (no coordinated omission).
//!
//! Each message is built with [`Envelope::new`] (ids, trace and span) on the
//! publish side: that is part of publishing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_bus::{Bus, BusConfig, Envelope, MessageKind};

use crate::hist::Latency;

/// Result of one in-node run.
#[derive(Debug)]
pub struct InprocResult {
    /// Messages published.
    pub sent: u64,
    pub delivered: u64,
    pub secs: f64,
    pub latency: Latency,
    pub dead_letters: u64,
    /// Open loop only: how late the publisher itself sent each message
    /// (from its intended time to the `publish` call). Latency percentiles
    /// at or below these are the driver's and the scheduler's, not the bus's.
    pub send_lag: Option<Latency>,
}

struct Fixture {
    bus: Bus,
    base: Instant,
    received: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
    sub_task: tokio::sync::Mutex<tokio::task::JoinHandle<Latency>>,
    _noise: Vec<plexus_bus::Subscription>,
}

fn fixture(expect: u64) -> Result<Fixture, plexus_bus::BusError> {
    let bus = Bus::new(BusConfig::new("bench"));
    let noise = (0..50)
        .map(|i| bus.subscribe(&format!("other/{i}/**"), "noise"))
        .collect::<Result<Vec<_>, _>>()?;
    let sub = bus.subscribe("plugin/*/events", "bench-sub")?;
    let base = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let got = received.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let sub_task = tokio::spawn(async move {
        let mut h = Latency::new();
        while got.load(Ordering::Relaxed) < expect {
            // A message the bus dead-lettered (mailbox full) never comes:
            // the driver says when to stop waiting.
            let env = tokio::select! {
                biased;
                e = sub.recv() => e,
                _ = stopped.notified() => None,
            };
            let Some(env) = env else { break };
            let now = base.elapsed().as_nanos() as u64;
            let sent = env
                .payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(now);
            h.record(now.saturating_sub(sent));
            got.fetch_add(1, Ordering::Release);
        }
        h
    });
    Ok(Fixture {
        bus,
        base,
        received,
        stop,
        sub_task: tokio::sync::Mutex::new(sub_task),
        _noise: noise,
    })
}

fn event(stamp_ns: u64) -> Envelope {
    Envelope::new(
        MessageKind::Event,
        "plugin/bench/events",
        "bench",
        stamp_ns.to_le_bytes().to_vec(),
    )
}

/// Publish `count` small events as fast as the bus takes them, with at most
/// `window` in flight.
pub async fn max_throughput(count: u64, window: u64) -> Result<InprocResult, String> {
    on_worker(max_throughput_here(count, window)).await
}

/// Run a publisher as a task of the runtime, as a plugin's would be (not
/// on the thread that called `block_on`, which is no worker).
async fn on_worker(
    run: impl std::future::Future<Output = Result<InprocResult, String>> + Send + 'static,
) -> Result<InprocResult, String> {
    tokio::spawn(run)
        .await
        .map_err(|e| format!("the publisher task failed: {e}"))?
}

async fn max_throughput_here(count: u64, window: u64) -> Result<InprocResult, String> {
    let f = fixture(count).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        if sent - f.received.load(Ordering::Acquire) >= window {
            tokio::task::yield_now().await;
            continue;
        }
        let now = f.base.elapsed().as_nanos() as u64;
        f.bus.publish(event(now)).map_err(|e| e.to_string())?;
        sent += 1;
    }
    let latency = wait_done(&f, count, Duration::from_secs(30)).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(InprocResult {
        sent,
        delivered: latency.count(),
        secs,
        latency,
        dead_letters: f.bus.stats().dead_lettered,
        send_lag: None,
    })
}

/// Publish at `rate` messages per second for `duration`, measuring each
/// message's latency from its intended send time.
pub async fn open_loop(rate: u64, duration: Duration) -> Result<InprocResult, String> {
    on_worker(open_loop_here(rate, duration)).await
}

async fn open_loop_here(rate: u64, duration: Duration) -> Result<InprocResult, String> {
    let count = (rate as f64 * duration.as_secs_f64()).max(1.0) as u64;
    let f = fixture(count).map_err(|e| e.to_string())?;
    let interval_ns = 1_000_000_000 / rate.max(1);
    let start_ns = f.base.elapsed().as_nanos() as u64;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut lag = Latency::new();
    while sent < count {
        let now = f.base.elapsed().as_nanos() as u64;
        let due = start_ns + sent * interval_ns;
        if due > now {
            if due - now > 2_000_000 {
                tokio::time::sleep(Duration::from_nanos(due - now - 1_000_000)).await;
            } else {
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Behind schedule: send every message that is due, each stamped with
        // its own intended time.
        lag.record(now - due);
        f.bus.publish(event(due)).map_err(|e| e.to_string())?;
        sent += 1;
    }
    let latency = wait_done(&f, count, Duration::from_secs(30)).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(InprocResult {
        sent,
        delivered: latency.count(),
        secs,
        latency,
        dead_letters: f.bus.stats().dead_lettered,
        send_lag: Some(lag),
    })
}

/// [`open_loop`] with the publisher and the subscriber on one thread: a
/// current-thread runtime on a thread of its own, the way a latency-bound
/// service pins its work to one core. The subscriber then parks at once
/// instead of spinning (no sender could run meanwhile), so the run keeps one
/// core busy instead of two and the other stays free for the rest of the
/// machine. Blocks the calling thread until done.
pub fn open_loop_one_thread(rate: u64, duration: Duration) -> Result<InprocResult, String> {
    std::thread::Builder::new()
        .name("bench-inproc-1t".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a current-thread runtime: {e}"))?
                .block_on(open_loop(rate, duration))
        })
        .map_err(|e| format!("cannot start the bench thread: {e}"))?
        .join()
        .map_err(|_| "the one-thread run panicked".to_string())?
}

/// Wait until every message was delivered or dead-lettered, then collect
/// the subscriber's histogram.
async fn wait_done(f: &Fixture, count: u64, limit: Duration) -> Result<Latency, String> {
    let deadline = Instant::now() + limit;
    while f.received.load(Ordering::Acquire) + f.bus.stats().dead_lettered < count
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f.stop.notify_one();
    match tokio::time::timeout(Duration::from_secs(5), &mut *f.sub_task.lock().await).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(format!("subscriber task failed: {e}")),
        Err(_) => Err(format!(
            "the subscriber did not receive every message within {} s (dead-lettered?)",
            limit.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_arrives_in_both_modes() {
        let r = max_throughput(20_000, 1_000).await.unwrap();
        assert_eq!(r.delivered, 20_000);
        assert_eq!(r.dead_letters, 0);
        let r = open_loop(20_000, Duration::from_millis(200)).await.unwrap();
        assert_eq!(r.delivered, 4_000);
        assert!(r.latency.summary().p50_us > 0.0);
        assert_eq!(r.send_lag.map(|l| l.count()), Some(4_000));
    }

    #[test]
    fn every_message_arrives_on_one_thread() {
        let r = open_loop_one_thread(20_000, Duration::from_millis(200)).unwrap();
        assert_eq!(r.delivered, 4_000);
        assert_eq!(r.dead_letters, 0);
        assert_eq!(r.send_lag.map(|l| l.count()), Some(4_000));
    }
}
