//! The run's event trace and its hash.
//!
//! Two hashes are kept. The **schedule hash** covers what the harness
//! decides from the seed: each fault with its simulated time, and each
//! workload operation with its entry node and target. The **trace hash**
//! covers that plus what the cluster did in response, as the harness saw it
//! in order: the fate of every frame (sent / lost / cut, with its link and
//! simulated millisecond), link changes, and each request's outcome.
//! Same seed ⇒ same schedule hash always; same trace hash as long as the
//! node code itself behaves deterministically on the paused single-threaded
//! runtime (see docs/simulation.md for what can break that).

use parking_lot::Mutex;
use tokio::time::Instant;

/// FNV-1a, 64 bit: stable across runs and platforms (unlike `DefaultHasher`).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
}

struct Inner {
    schedule: Fnv,
    full: Fnv,
    events: Vec<(u64, String)>,
    frames: u64,
}

/// The ordered log of one run.
pub struct Trace {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        Trace {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                schedule: Fnv::new(),
                full: Fnv::new(),
                events: Vec::new(),
                frames: 0,
            }),
        }
    }

    /// Simulated ms since the run started.
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A decision of the harness (fault, workload operation): both hashes,
    /// and the event list the report shows.
    pub fn schedule(&self, what: impl Into<String>) {
        let t = self.elapsed_ms();
        let line = format!("{t} {}", what.into());
        let mut i = self.inner.lock();
        i.schedule.write(line.as_bytes());
        i.full.write(line.as_bytes());
        i.events.push((t, line));
    }

    /// Something the cluster did: the full hash and the event list.
    pub fn event(&self, what: impl Into<String>) {
        let t = self.elapsed_ms();
        let line = format!("{t} {}", what.into());
        let mut i = self.inner.lock();
        i.full.write(line.as_bytes());
        i.events.push((t, line));
    }

    /// One frame's fate: the full hash only (there are many).
    pub fn net(&self, t: u64, from: &str, to: &str, fate: &str) {
        let mut i = self.inner.lock();
        i.frames += 1;
        i.full.write(t.to_le_bytes().as_slice());
        i.full.write(from.as_bytes());
        i.full.write(to.as_bytes());
        i.full.write(fate.as_bytes());
    }

    pub fn schedule_hash(&self) -> String {
        format!("{:016x}", self.inner.lock().schedule.0)
    }

    pub fn trace_hash(&self) -> String {
        format!("{:016x}", self.inner.lock().full.0)
    }

    pub fn events(&self) -> Vec<(u64, String)> {
        self.inner.lock().events.clone()
    }

    pub fn frames(&self) -> u64 {
        self.inner.lock().frames
    }
}
