//! Heap allocations per in-node publish→deliver, counted with a counting
//! global allocator: the same event as `plexus bench`'s `bus.inproc.*`
//! (8-byte payload, `Envelope::new` with ids and trace), one wildcard
//! subscriber among 50 that do not match.
//!
//! `cargo run --release -p plexus-bus --example alloc_count`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use plexus_bus::{Bus, BusConfig, Envelope, MessageKind};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn count<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (a, b) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let r = f();
    (
        r,
        ALLOCS.load(Ordering::Relaxed) - a,
        BYTES.load(Ordering::Relaxed) - b,
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new(BusConfig::new("bench"));
    let _noise = (0..50)
        .map(|i| bus.subscribe(&format!("other/{i}/**"), "noise"))
        .collect::<Result<Vec<_>, _>>()?;
    let sub = bus.subscribe("plugin/*/events", "bench-sub")?;
    const N: u64 = 100_000;
    // Warm up: the mailbox's queues grow to their size once.
    for i in 0..1000u64 {
        let e = Envelope::new(
            MessageKind::Event,
            "plugin/bench/events",
            "bench",
            i.to_le_bytes().to_vec(),
        );
        bus.publish(e)?;
        let _ = sub.try_recv();
    }
    let (mut build, mut publish, mut recv) = ((0, 0), (0, 0), (0, 0));
    for i in 0..N {
        let (e, a, b) = count(|| {
            Envelope::new(
                MessageKind::Event,
                "plugin/bench/events",
                "bench",
                i.to_le_bytes().to_vec(),
            )
        });
        build = (build.0 + a, build.1 + b);
        let (r, a, b) = count(|| bus.publish(e));
        r?;
        publish = (publish.0 + a, publish.1 + b);
        let (got, a, b) = count(|| sub.try_recv().map(drop).is_some());
        assert!(got, "every message is delivered");
        recv = (recv.0 + a, recv.1 + b);
    }
    let per = |(a, b): (u64, u64)| (a as f64 / N as f64, b as f64 / N as f64);
    let (ba, bb) = per(build);
    let (pa, pb) = per(publish);
    let (ra, rb) = per(recv);
    println!("per message: allocations (bytes)");
    println!("  Envelope::new    {ba:5.2} ({bb:6.1})");
    println!("  Bus::publish     {pa:5.2} ({pb:6.1})");
    println!("  recv + drop      {ra:5.2} ({rb:6.1})");
    println!(
        "  total            {:5.2} ({:6.1})",
        ba + pa + ra,
        bb + pb + rb
    );
    Ok(())
}
