//! Latency histograms (HDR, nanosecond resolution, 3 significant digits)
//! and their summaries.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded (longer ones are clamped): one minute.
const MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Clone)]
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency({:?})", self.summary())
    }
}

/// Why a serialized histogram could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    #[error("histogram is not hex: {0}")]
    Hex(String),
    #[error("histogram does not decode: {0}")]
    Decode(String),
}

impl Latency {
    pub fn new() -> Latency {
        // 1 ns .. 1 min at 3 significant digits: under 200 KiB.
        Latency {
            h: Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid"),
        }
    }

    /// Record one latency.
    pub fn record(&mut self, ns: u64) {
        self.h.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Record one latency of a fixed-rate (open-loop) run whose sender
    /// meant to send every `interval_ns`: the samples a stall kept from
    /// being taken are filled in (coordinated omission correction).
    pub fn record_correct(&mut self, ns: u64, interval_ns: u64) {
        let ns = ns.clamp(1, MAX_NS);
        if self.h.record_correct(ns, interval_ns).is_err() {
            self.h.saturating_record(ns);
        }
    }

    /// Add another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.h.add(&other.h);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// Percentiles in microseconds.
    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            samples: self.h.len(),
            p50_us: us(self.h.value_at_quantile(0.50)),
            p99_us: us(self.h.value_at_quantile(0.99)),
            p999_us: us(self.h.value_at_quantile(0.999)),
            max_us: us(self.h.max()),
            mean_us: self.h.mean() / 1000.0,
        }
    }

    /// Hex of the V2 serialization (to pass a histogram between processes).
    pub fn to_hex(&self) -> String {
        let mut buf = Vec::new();
        if V2Serializer::new().serialize(&self.h, &mut buf).is_err() {
            return String::new();
        }
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The inverse of [`Latency::to_hex`].
    pub fn from_hex(s: &str) -> Result<Latency, HistError> {
        if !s.len().is_multiple_of(2) {
            return Err(HistError::Hex("odd length".into()));
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| HistError::Hex(e.to_string()))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| HistError::Decode(format!("{e:?}")))?;
        let mut out = Latency::new();
        out.h
            .add(&h)
            .map_err(|e| HistError::Decode(format!("{e:?}")))?;
        Ok(out)
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_and_round_trip() {
        let mut a = Latency::new();
        for i in 1..=1000u64 {
            a.record(i * 1000);
        }
        let s = a.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        let b = Latency::from_hex(&a.to_hex()).unwrap();
        assert_eq!(b.summary(), s);
        let mut c = a.clone();
        c.merge(&b);
        assert_eq!(c.count(), 2000);
        assert!(Latency::from_hex("zz").is_err());
    }

    #[test]
    fn a_stall_in_an_open_loop_run_is_not_hidden() {
        // Sender meant to send every 10 µs; one reply took 1 ms.
        let mut h = Latency::new();
        for _ in 0..1000 {
            h.record_correct(5_000, 10_000);
        }
        h.record_correct(1_000_000, 10_000);
        // The ~99 sends the stall held back are counted with their waits.
        assert!(h.count() > 1090, "{}", h.count());
        assert!(h.summary().p99_us > 100.0, "{:?}", h.summary());
    }
}
