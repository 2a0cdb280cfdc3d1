//! `plexus simulate`: play a scenario file against real nodes running in
//! this process over a simulated network, once or many times, and judge the
//! invariants after every run (see docs/simulation.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use plexus_sim::{RunReport, Scenario};
use serde_json::json;

use crate::{CliResult, Failure};

#[derive(Args)]
pub struct SimulateArgs {
    /// Scenario file (simulations/*.toml).
    pub file: PathBuf,
    /// Seed of the first run (default: random). Run i uses seed + i.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many runs.
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print each run's event trace (faults, link changes, outcomes).
    #[arg(long)]
    pub trace: bool,
    /// Stop at the first failing run.
    #[arg(long)]
    pub fail_fast: bool,
}

pub fn run(a: SimulateArgs) -> CliResult {
    if a.runs == 0 {
        return Err(Failure::usage(anyhow!("--runs must be at least 1")));
    }
    if let Ok(f) = std::env::var("PLEXUS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let loaded = Scenario::load(&a.file).map_err(Failure::usage)?;
    // A random first seed is kept short so it is easy to retype.
    let first = a.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let file = a.file.display().to_string();
    // Configure while hidden, so the first frame is complete.
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(a.runs),
        indicatif::ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} runs, {elapsed} (failed: {msg})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(loaded.scenario.name.clone());
    bar.set_message("0");
    if !a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.tick();
    }
    let mut reports: Vec<RunReport> = vec![];
    let mut failed = 0u64;
    for i in 0..a.runs {
        let seed = first.wrapping_add(i);
        let r = plexus_sim::run(&loaded, seed, a.trace).map_err(|e| anyhow!("seed {seed}: {e}"))?;
        if !r.passed {
            failed += 1;
            bar.set_message(failed.to_string());
            bar.suspend(|| {
                if !a.json {
                    eprintln!(
                        "run with seed {seed} FAILED; replay: plexus simulate {file} --seed {seed}"
                    );
                }
            });
        }
        if a.trace && !a.json {
            bar.suspend(|| {
                println!("--- seed {seed} (trace {})", r.trace_hash);
                for e in &r.events {
                    println!("{e}");
                }
            });
        }
        bar.inc(1);
        let stop = a.fail_fast && !r.passed;
        reports.push(r);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    let sim_ms: u64 = reports.iter().map(|r| r.simulated_ms).sum();
    let wall_ms: u64 = reports.iter().map(|r| r.wall_ms).sum::<u64>().max(1);
    let ratio = sim_ms as f64 / wall_ms as f64;
    let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &reports {
        for v in &r.verdicts {
            let e = per.entry(v.invariant.clone()).or_default();
            if v.ok {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
    }
    let traces: BTreeSet<&str> = reports.iter().map(|r| r.trace_hash.as_str()).collect();
    let fails: Vec<&RunReport> = reports.iter().filter(|r| !r.passed).collect();
    if a.json {
        let doc = json!({
            "scenario": loaded.scenario.name,
            "file": file,
            "runs": reports.len(),
            "first_seed": first,
            "passed": reports.len() as u64 - failed,
            "failed": failed,
            "invariants": per.iter().map(|(k, (p, f))| (k.clone(), json!({"passed": p, "failed": f}))).collect::<serde_json::Map<_, _>>(),
            "simulated_ms": sim_ms,
            "wall_ms": wall_ms,
            "speedup": ratio,
            "distinct_traces": traces.len(),
            "failures": fails.iter().map(|r| json!({
                "seed": r.seed,
                "replay": format!("plexus simulate {file} --seed {}", r.seed),
                "verdicts": r.verdicts.iter().filter(|v| !v.ok).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "reports": reports,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{}: {} run(s), seeds {first}..={}",
            loaded.scenario.name,
            reports.len(),
            first.wrapping_add(reports.len() as u64 - 1)
        );
        if let [r] = reports.as_slice() {
            println!(
                "  requests {} ok / {} failed / {} unanswered; writes {} ok / {} failed; sagas {} completed / {} compensated / {} other",
                r.requests.ok, r.requests.failed, r.requests.unanswered,
                r.writes.ok, r.writes.failed,
                r.sagas.completed, r.sagas.compensated, r.sagas.other
            );
            println!(
                "  frames {} sent, {} lost, {} cut by partitions, {} reordered; {} crash/stop, {} restarts; breakers opened {} times, refused {}",
                r.net.sent, r.net.lost, r.net.partitioned, r.net.reordered,
                r.crashes, r.restarts, r.breakers.opened, r.breakers.refusals
            );
            println!("  trace {} (schedule {})", r.trace_hash, r.schedule_hash);
        }
        println!("  {:<22} {:>7} {:>7}", "invariant", "passed", "failed");
        for (k, (p, f)) in &per {
            println!("  {k:<22} {p:>7} {f:>7}");
        }
        if let [r] = reports.as_slice() {
            for v in &r.verdicts {
                println!(
                    "  {} {}: {}",
                    if v.ok { "ok  " } else { "FAIL" },
                    v.invariant,
                    v.detail
                );
            }
        }
        println!(
            "  simulated {:.1} s in {:.1} s of wall-clock time: {ratio:.1}x real time; {} distinct trace(s)",
            sim_ms as f64 / 1000.0,
            wall_ms as f64 / 1000.0,
            traces.len()
        );
        for r in &fails {
            println!("FAILED seed {}:", r.seed);
            for v in r.verdicts.iter().filter(|v| !v.ok) {
                println!("  {}: {}", v.invariant, v.detail);
            }
            println!("  replay: plexus simulate {file} --seed {}", r.seed);
        }
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow!("{failed} of {} run(s) failed", reports.len()),
        });
    }
    Ok(())
}
