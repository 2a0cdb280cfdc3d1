//! Results: one row per (workload, system), Plexus/NATS ratios, goals, the
//! machine, and the text table.

use serde::{Deserialize, Serialize};

use crate::hist::Summary;

/// One measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Stable key, e.g. `reqresp.inflight16`; the same for both systems.
    pub workload: String,
    /// `plexus` or `nats`.
    pub system: String,
    /// What exactly was measured, in words.
    pub detail: String,
    /// Operations completed (messages delivered, requests answered, lookups).
    pub ops: u64,
    pub secs: f64,
    /// Operations per second.
    pub per_sec: f64,
    pub latency: Option<Summary>,
    /// Messaging rows: messages (requests) sent, the subscriptions each one
    /// should reach, deliveries (answers) counted at the receivers, and
    /// errors. A run that lost nothing delivered `sent × subscriptions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// The goal this row is held to, in words, and whether it was met.
    pub goal: Option<String>,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(workload: &str, system: &str, detail: impl Into<String>) -> Row {
        Row {
            workload: workload.into(),
            system: system.into(),
            detail: detail.into(),
            ops: 0,
            secs: 0.0,
            per_sec: 0.0,
            latency: None,
            sent: None,
            subscriptions: None,
            delivered: None,
            errors: None,
            goal: None,
            met: None,
        }
    }

    /// Set the delivery counts of a messaging row.
    pub fn delivery(mut self, sent: u64, subscriptions: u64, delivered: u64, errors: u64) -> Row {
        self.sent = Some(sent);
        self.subscriptions = Some(subscriptions);
        self.delivered = Some(delivered);
        self.errors = Some(errors);
        self
    }

    /// What a messaging row lost or got wrong: deliveries other than
    /// `sent × subscriptions`, or errors. `None` for a clean row and for
    /// rows without counts.
    pub fn delivery_problem(&self) -> Option<String> {
        let (sent, subs, got, errors) = (
            self.sent?,
            self.subscriptions?,
            self.delivered?,
            self.errors?,
        );
        let want = sent * subs;
        (got != want || errors != 0).then(|| {
            format!(
                "{} ({}): delivered {got} of {want} ({sent} sent × {subs} subscriptions), {errors} errors",
                self.workload, self.system
            )
        })
    }

    /// Set the counts (and the rate).
    pub fn ops(mut self, ops: u64, secs: f64) -> Row {
        self.ops = ops;
        self.secs = secs;
        self.per_sec = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        self
    }

    pub fn latency(mut self, s: Summary) -> Row {
        self.latency = Some(s);
        self
    }

    pub fn goal(mut self, goal: impl Into<String>, met: bool) -> Row {
        self.goal = Some(goal.into());
        self.met = Some(met);
        self
    }
}

/// Plexus against NATS on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub workload: String,
    pub plexus_per_sec: f64,
    pub nats_per_sec: f64,
    /// Plexus throughput / NATS throughput (above 1: Plexus does more).
    pub throughput_ratio: f64,
    pub plexus_p50_us: Option<f64>,
    pub nats_p50_us: Option<f64>,
    /// Plexus p50 / NATS p50 (above 1: Plexus is slower).
    pub p50_ratio: Option<f64>,
    pub plexus_p99_us: Option<f64>,
    pub nats_p99_us: Option<f64>,
    pub p99_ratio: Option<f64>,
}

/// The machine a report was taken on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// 1-minute load average before and after the run.
    pub load_before: f64,
    pub load_after: f64,
    /// `release` or `debug`.
    pub build: String,
}

impl Machine {
    /// Describe this machine now (load_after is filled in at the end).
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            load_before: load_average(),
            load_after: 0.0,
            build: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
        }
    }
}

/// The 1-minute load average (0 if unknown).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Everything one `plexus bench` run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub smoke: bool,
    pub rows: Vec<Row>,
    pub comparisons: Vec<Comparison>,
    /// Things the reader must know (skipped parts, scaled-down sizes).
    pub notes: Vec<String>,
}

impl Report {
    /// Pair every Plexus row with the NATS row of the same workload.
    pub fn compare(&mut self) {
        self.comparisons.clear();
        for p in self.rows.iter().filter(|r| r.system == "plexus") {
            let Some(n) = self
                .rows
                .iter()
                .find(|r| r.system == "nats" && r.workload == p.workload)
            else {
                continue;
            };
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            let pl = p.latency;
            let nl = n.latency;
            self.comparisons.push(Comparison {
                workload: p.workload.clone(),
                plexus_per_sec: p.per_sec,
                nats_per_sec: n.per_sec,
                throughput_ratio: ratio(p.per_sec, n.per_sec),
                plexus_p50_us: pl.map(|s| s.p50_us),
                nats_p50_us: nl.map(|s| s.p50_us),
                p50_ratio: pl.zip(nl).map(|(a, b)| ratio(a.p50_us, b.p50_us)),
                plexus_p99_us: pl.map(|s| s.p99_us),
                nats_p99_us: nl.map(|s| s.p99_us),
                p99_ratio: pl.zip(nl).map(|(a, b)| ratio(a.p99_us, b.p99_us)),
            });
        }
    }

    /// The table printed at the end of a run (also pasted into docs).
    pub fn table(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        o.push_str(&format!(
            "machine: {} x {}, kernel {}, {} build, load average {:.1} before / {:.1} after{}\n\n",
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.build,
            m.load_before,
            m.load_after,
            if self.smoke {
                " — SMOKE RUN (seconds; numbers not meaningful)"
            } else {
                ""
            },
        ));
        o.push_str(&format!(
            "| {:<28} | {:<6} | {:>12} | {:>9} | {:>9} | {:>9} | {:<32} |\n",
            "workload", "system", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "goal"
        ));
        o.push_str(&format!(
            "|{}|{}|{}|{}|{}|{}|{}|\n",
            "-".repeat(30),
            "-".repeat(8),
            "-".repeat(14),
            "-".repeat(11),
            "-".repeat(11),
            "-".repeat(11),
            "-".repeat(34)
        ));
        for r in &self.rows {
            let (p50, p99, p999) = match r.latency {
                Some(s) => (fmt_us(s.p50_us), fmt_us(s.p99_us), fmt_us(s.p999_us)),
                None => ("—".into(), "—".into(), "—".into()),
            };
            let goal = match (&r.goal, r.met) {
                (Some(g), Some(true)) => format!("met: {g}"),
                (Some(g), Some(false)) => format!("NOT met: {g}"),
                _ => String::new(),
            };
            o.push_str(&format!(
                "| {:<28} | {:<6} | {:>12} | {:>9} | {:>9} | {:>9} | {:<32} |\n",
                r.workload,
                r.system,
                fmt_rate(r.per_sec),
                p50,
                p99,
                p999,
                goal
            ));
        }
        if !self.comparisons.is_empty() {
            o.push_str("\nPlexus vs NATS (ratio = Plexus / NATS; throughput above 1 and latency below 1 favour Plexus)\n\n");
            o.push_str(&format!(
                "| {:<28} | {:>12} | {:>12} | {:>8} | {:>9} | {:>9} | {:>8} | {:>8} |\n",
                "workload",
                "Plexus ops/s",
                "NATS ops/s",
                "ratio",
                "Plexus p50",
                "NATS p50",
                "p50 ×",
                "p99 ×"
            ));
            o.push_str(&format!(
                "|{}|{}|{}|{}|{}|{}|{}|{}|\n",
                "-".repeat(30),
                "-".repeat(14),
                "-".repeat(14),
                "-".repeat(10),
                "-".repeat(11),
                "-".repeat(11),
                "-".repeat(10),
                "-".repeat(10)
            ));
            for c in &self.comparisons {
                let f = |v: Option<f64>| v.map(fmt_us).unwrap_or_else(|| "—".into());
                let x = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
                o.push_str(&format!(
                    "| {:<28} | {:>12} | {:>12} | {:>8.2} | {:>9} | {:>9} | {:>8} | {:>8} |\n",
                    c.workload,
                    fmt_rate(c.plexus_per_sec),
                    fmt_rate(c.nats_per_sec),
                    c.throughput_ratio,
                    f(c.plexus_p50_us),
                    f(c.nats_p50_us),
                    x(c.p50_ratio),
                    x(c.p99_ratio)
                ));
            }
        }
        for n in &self.notes {
            o.push_str(&format!("\nnote: {n}"));
        }
        if !self.notes.is_empty() {
            o.push('\n');
        }
        o
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        // Thousands separators for readability.
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p50: f64) -> Summary {
        Summary {
            samples: 10,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            max_us: p50 * 4.0,
            mean_us: p50,
        }
    }

    #[test]
    fn a_row_that_lost_or_failed_says_so() {
        let row = |sent, got, errors| {
            Row::new("fanout.wildcard", "nats", "x").delivery(sent, 2, got, errors)
        };
        assert_eq!(row(10, 20, 0).delivery_problem(), None);
        let p = row(10, 19, 0).delivery_problem().unwrap();
        assert!(p.contains("delivered 19 of 20"), "{p}");
        assert!(row(10, 20, 1).delivery_problem().is_some());
        assert_eq!(
            Row::new("discovery.small", "plexus", "x").delivery_problem(),
            None
        );
        let json = serde_json::to_value(row(10, 20, 0)).unwrap();
        assert_eq!(
            (
                &json["sent"],
                &json["subscriptions"],
                &json["delivered"],
                &json["errors"]
            ),
            (&10.into(), &2.into(), &20.into(), &0.into())
        );
    }

    #[test]
    fn rows_pair_into_ratios_and_render() {
        let mut r = Report::default();
        r.rows.push(
            Row::new("reqresp.inflight1", "plexus", "x")
                .ops(1000, 1.0)
                .latency(s(150.0)),
        );
        r.rows.push(
            Row::new("reqresp.inflight1", "nats", "x")
                .ops(2000, 1.0)
                .latency(s(100.0)),
        );
        r.rows
            .push(Row::new("discovery.10000", "plexus", "x").ops(5, 1.0));
        r.compare();
        assert_eq!(r.comparisons.len(), 1);
        let c = &r.comparisons[0];
        assert_eq!(c.throughput_ratio, 0.5);
        assert_eq!(c.p50_ratio, Some(1.5));
        let t = r.table();
        assert!(t.contains("reqresp.inflight1"), "{t}");
        assert!(t.contains("1,000"), "{t}");
        assert!(t.contains("1.50"), "{t}");
    }
}
