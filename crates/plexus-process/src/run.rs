//! Run one process to completion: spawn it in its sandbox, feed its stdin,
//! collect stdout up to a cap, log stderr, enforce the timeout on the whole
//! process group, and turn how it ended into a typed result.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use plexus_catalog::ProcessLimits;
use plexus_handler::{HandlerError, Limit};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::sandbox::{kill_group, Plan};

/// Everything needed to start one process.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub plugin: String,
    pub command: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub limits: ProcessLimits,
}

/// How a process ended, as the classifier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
    pub ended: Ended,
    pub elapsed: Duration,
}

/// Build the (not yet spawned) command for an invocation.
pub fn command(inv: &Invocation, plan: Plan) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&inv.workdir)
        .kill_on_drop(true);
    plan.apply(&mut cmd);
    cmd
}

/// Run `inv` in the sandbox `plan` and wait for it (bounded by its timeout).
pub async fn run(inv: &Invocation, plan: Plan) -> Result<Finished, HandlerError> {
    let started = Instant::now();
    let mut cmd = command(inv, plan);
    cmd.stdin(if inv.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(inv, e))?;
    let pgid = child.id().unwrap_or(0);
    let _guard = GroupGuard(pgid);

    if let (Some(data), Some(mut w)) = (inv.stdin.clone(), child.stdin.take()) {
        // A process that never reads its stdin must not block us: write in
        // the background and ignore a closed pipe.
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
        });
    }
    let cap = (inv.limits.output_kb as usize).saturating_mul(1024);
    let (over_tx, over_rx) = tokio::sync::oneshot::channel::<()>();
    let stdout = child.stdout.take();
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let Some(mut s) = stdout else { return buf };
        let mut chunk = [0u8; 8192];
        let mut over = Some(over_tx);
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > cap {
                        if let Some(tx) = over.take() {
                            let _ = tx.send(());
                        }
                        break;
                    }
                }
            }
        }
        buf
    });
    let stderr = child.stderr.take();
    let err_task = tokio::spawn(log_stderr(
        stderr,
        inv.plugin.clone(),
        inv.command.clone(),
        cap,
    ));

    let status = tokio::select! {
        st = child.wait() => st,
        // A reader that ends normally drops the sender: that is no overflow.
        Ok(()) = over_rx => {
            kill_group(pgid);
            let _ = child.wait().await;
            return Err(HandlerError::LimitExceeded {
                limit: Limit::Output,
                detail: format!("{}/{} wrote more than {} KiB to stdout; its process group was killed", inv.plugin, inv.command, inv.limits.output_kb),
            });
        }
        _ = tokio::time::sleep(inv.timeout) => {
            kill_group(pgid);
            let _ = child.wait().await;
            tracing::warn!(plugin = %inv.plugin, command = %inv.command, timeout_ms = inv.timeout.as_millis() as u64, "process timed out; its process group was killed");
            return Err(HandlerError::Timeout(inv.timeout.as_millis() as u64));
        }
    };
    // Whatever the leader left behind in its group goes with it.
    kill_group(pgid);
    let status =
        status.map_err(|e| HandlerError::Failed(format!("waiting for the process failed: {e}")))?;
    // The group is dead, so the pipes close; a process that escaped the
    // group (a new session of its own) still cannot hold us.
    let stdout = bounded(out_task).await.unwrap_or_default();
    let stderr_tail = bounded(err_task).await.unwrap_or_default();
    if stdout.len() > cap {
        return Err(HandlerError::LimitExceeded {
            limit: Limit::Output,
            detail: format!(
                "{}/{} wrote more than {} KiB to stdout",
                inv.plugin, inv.command, inv.limits.output_kb
            ),
        });
    }
    use std::os::unix::process::ExitStatusExt;
    let ended = match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(s)) => Ended::Signalled(s),
        (None, None) => Ended::Exited(-1),
    };
    Ok(Finished {
        stdout,
        stderr_tail,
        ended,
        elapsed: started.elapsed(),
    })
}

async fn bounded<T>(h: tokio::task::JoinHandle<T>) -> Option<T> {
    match tokio::time::timeout(Duration::from_secs(2), h).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

/// Log stderr line by line (up to `cap` bytes in total) and keep its tail.
pub async fn log_stderr(
    stderr: Option<impl tokio::io::AsyncRead + Unpin>,
    plugin: String,
    command: String,
    cap: usize,
) -> String {
    let Some(s) = stderr else {
        return String::new();
    };
    let mut lines = BufReader::new(s);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut logged = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most `cap` bytes of one line so a line without newline
        // cannot grow without bound.
        match (&mut lines)
            .take(cap as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if logged < cap {
                    logged += line.len();
                    tracing::info!(target: "plexus_process::stderr", plugin = %plugin, command = %command, "{line}");
                }
                tail.push_back(line);
                if tail.len() > 20 {
                    tail.pop_front();
                }
            }
        }
    }
    let mut t: Vec<String> = tail.into_iter().collect();
    let mut s = t.join("\n");
    if s.len() > 2000 {
        let mut cut = s.len() - 2000;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].to_string();
    }
    t.clear();
    s
}

fn spawn_error(inv: &Invocation, e: std::io::Error) -> HandlerError {
    HandlerError::Failed(format!(
        "could not start {} for {}/{}: {e}",
        inv.program.display(),
        inv.plugin,
        inv.command
    ))
}

/// Exit code of a command-line usage error (sysexits.h).
pub const EX_USAGE: i32 = 64;
/// Exit code of "the input data was incorrect" (sysexits.h).
pub const EX_DATAERR: i32 = 65;

/// Turn how a process ended into success or a typed error.
///
/// Signals are exact (SIGXCPU: CPU; SIGXFSZ: file size). Memory and process
/// limits make system calls fail instead of sending a signal, so they are
/// recognised from what the process printed about the failure (ENOMEM,
/// EAGAIN on fork, EFBIG) together with the limit being set.
pub fn classify(
    ended: &Ended,
    stderr_tail: &str,
    limits: &ProcessLimits,
) -> Result<(), HandlerError> {
    let tail = last_lines(stderr_tail, 5);
    let with_tail = |s: String| {
        if tail.is_empty() {
            s
        } else {
            format!("{s}; stderr: {tail}")
        }
    };
    let lower = stderr_tail.to_ascii_lowercase();
    let memory_msg = [
        "memoryerror",
        "cannot allocate memory",
        "memory allocation of",
        "out of memory",
        "bad_alloc",
    ]
    .iter()
    .any(|m| lower.contains(m));
    let fork_msg = [
        "resource temporarily unavailable",
        "cannot fork",
        "fork: retry",
        "blockingioerror",
    ]
    .iter()
    .any(|m| lower.contains(m));
    let fsize_msg = lower.contains("file too large");
    match *ended {
        Ended::Exited(0) => Ok(()),
        // sysexits.h: the process refused its input. The caller's fault:
        // not retried, not counted by the breaker.
        Ended::Exited(c) if c == EX_USAGE || c == EX_DATAERR => {
            Err(HandlerError::BadInput(if tail.is_empty() {
                format!("the command refused its input (exit code {c})")
            } else {
                tail.clone()
            }))
        }
        Ended::Signalled(s) if s == libc::SIGXCPU => Err(HandlerError::LimitExceeded {
            limit: Limit::Cpu,
            detail: format!("used its {} s of CPU time (SIGXCPU)", limits.cpu_secs),
        }),
        // A shell reports a child killed by a signal as 128 + the signal.
        Ended::Exited(c) if c == 128 + libc::SIGXCPU => Err(HandlerError::LimitExceeded {
            limit: Limit::Cpu,
            detail: with_tail(format!(
                "a child process used the {} s of CPU time (SIGXCPU)",
                limits.cpu_secs
            )),
        }),
        Ended::Exited(c) if c == 128 + libc::SIGXFSZ => Err(HandlerError::LimitExceeded {
            limit: Limit::FileSize,
            detail: with_tail(format!(
                "a child process wrote past the file size limit of {} MiB (SIGXFSZ)",
                limits.file_size_mb
            )),
        }),
        Ended::Signalled(s) if s == libc::SIGXFSZ => Err(HandlerError::LimitExceeded {
            limit: Limit::FileSize,
            detail: format!(
                "wrote past the file size limit of {} MiB (SIGXFSZ)",
                limits.file_size_mb
            ),
        }),
        _ if fsize_msg && limits.file_size_mb > 0 => Err(HandlerError::LimitExceeded {
            limit: Limit::FileSize,
            detail: with_tail(format!(
                "a write failed with EFBIG (file size limit {} MiB)",
                limits.file_size_mb
            )),
        }),
        _ if memory_msg && limits.memory_mb > 0 => Err(HandlerError::LimitExceeded {
            limit: Limit::Memory,
            detail: with_tail(format!(
                "an allocation failed (address space limit {} MiB)",
                limits.memory_mb
            )),
        }),
        _ if fork_msg && limits.processes > 0 => Err(HandlerError::LimitExceeded {
            limit: Limit::Processes,
            detail: with_tail(format!(
                "fork failed with EAGAIN (process limit {})",
                limits.processes
            )),
        }),
        Ended::Signalled(s) if s == libc::SIGKILL && limits.cpu_secs > 0 => {
            Err(HandlerError::Failed(with_tail(
                "killed by SIGKILL (the CPU hard limit, or the kernel's OOM killer)".into(),
            )))
        }
        Ended::Signalled(s) => Err(HandlerError::Failed(with_tail(format!(
            "killed by signal {s} ({})",
            signal_name(s)
        )))),
        Ended::Exited(c) => Err(HandlerError::Failed(with_tail(format!(
            "exited with code {c}"
        )))),
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// Kills the process group when dropped (a cancelled run leaves nothing behind).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> ProcessLimits {
        ProcessLimits::default()
    }

    #[test]
    fn signals_and_messages_map_to_limits() {
        let l = lim();
        assert!(classify(&Ended::Exited(0), "", &l).is_ok());
        let lim_of = |r: Result<(), HandlerError>| match r {
            Err(HandlerError::LimitExceeded { limit, .. }) => Some(limit),
            _ => None,
        };
        assert_eq!(
            lim_of(classify(&Ended::Signalled(libc::SIGXCPU), "", &l)),
            Some(Limit::Cpu)
        );
        assert_eq!(
            lim_of(classify(&Ended::Signalled(libc::SIGXFSZ), "", &l)),
            Some(Limit::FileSize)
        );
        assert_eq!(
            lim_of(classify(&Ended::Exited(1), "Traceback\nMemoryError\n", &l)),
            Some(Limit::Memory)
        );
        assert_eq!(
            lim_of(classify(
                &Ended::Exited(1),
                "BlockingIOError: [Errno 11] Resource temporarily unavailable",
                &l
            )),
            Some(Limit::Processes)
        );
        assert_eq!(
            lim_of(classify(
                &Ended::Exited(1),
                "OSError: [Errno 27] File too large",
                &l
            )),
            Some(Limit::FileSize)
        );
        assert!(matches!(
            classify(&Ended::Exited(EX_DATAERR), "field x must be a number", &l),
            Err(HandlerError::BadInput(m)) if m.contains("field x")
        ));
        match classify(&Ended::Exited(3), "first\nboom\n", &l) {
            Err(HandlerError::Failed(m)) => {
                assert!(m.contains("code 3") && m.contains("boom"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // Without the limit set, the same message is an ordinary failure.
        let none = ProcessLimits {
            memory_mb: 0,
            ..lim()
        };
        assert!(matches!(
            classify(&Ended::Exited(1), "MemoryError", &none),
            Err(HandlerError::Failed(_))
        ));
    }
}
