//! The effect log: what makes a re-sent request with the same idempotency key
//! have one effect.
//!
//! Each plugin host keeps, in `data_dir/effects/{plugin}.jsonl`, one line per
//! successful request that carried an idempotency key, written and fsynced
//! before the reply goes out. A request whose key is already there gets the
//! recorded answer without running again; one whose key is in flight waits
//! for it. The log survives restarts of the host and of the node.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use plexus_handler::ExecOutput;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    key: String,
    command: String,
    output: ExecOutput,
}

/// One plugin's effect log.
pub struct EffectLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    done: Mutex<HashMap<String, ExecOutput>>,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl EffectLog {
    /// Open (or create) the log of `plugin` under `dir`. A torn last line
    /// (crash mid-write) is ignored; it was never acknowledged.
    pub fn open(dir: &Path, plugin: &str) -> std::io::Result<EffectLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{plugin}.jsonl"));
        let mut done = HashMap::new();
        if let Ok(f) = std::fs::File::open(&path) {
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line?;
                match serde_json::from_str::<Line>(&line) {
                    Ok(l) => {
                        done.insert(l.key, l.output);
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping an unreadable effect-log line")
                    }
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(EffectLog {
            path,
            file: Mutex::new(file),
            done: Mutex::new(done),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Hold the key while its request runs, so a duplicate waits for it.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .in_flight
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// The recorded answer for `key`, if it already ran.
    pub fn get(&self, key: &str) -> Option<ExecOutput> {
        self.done.lock().get(key).cloned()
    }

    /// Durably record a successful run of `key`.
    pub fn record(&self, key: &str, command: &str, output: &ExecOutput) -> std::io::Result<()> {
        let line = serde_json::to_string(&Line {
            key: key.to_string(),
            command: command.to_string(),
            output: output.clone(),
        })
        .map_err(std::io::Error::other)?;
        {
            let mut f = self.file.lock();
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_data()?;
        }
        self.done.lock().insert(key.to_string(), output.clone());
        self.in_flight.lock().remove(key);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> ExecOutput {
        ExecOutput {
            output: s.into(),
            model: None,
            work_minutes: 1.0,
            cost_usd: 0.0,
            llm: None,
        }
    }

    #[test]
    fn recorded_keys_survive_reopen_and_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = EffectLog::open(d.path(), "p").unwrap();
        assert!(log.get("k1").is_none());
        log.record("k1", "c", &out("one")).unwrap();
        drop(log);
        // A crash mid-append leaves half a line.
        let path = d.path().join("p.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"key\":\"k2\",\"comm").unwrap();
        drop(f);
        let log = EffectLog::open(d.path(), "p").unwrap();
        assert_eq!(log.get("k1").unwrap().output, "one");
        assert!(log.get("k2").is_none());
    }
}
