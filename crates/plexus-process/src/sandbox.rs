//! The sandbox every plugin process starts in.
//!
//! Applied in the child between `fork` and `exec` (`pre_exec`), in order:
//! a new session and process group (`setsid`, so a timeout can kill the
//! whole group), resource limits (`setrlimit`), a new user and network
//! namespace (`unshare`, when the kernel allows it), and a landlock
//! filesystem (and, as a fallback for the network, TCP) allow-list.
//!
//! Only async-signal-safe calls run in the child: the landlock ruleset is
//! built in the parent and the child only calls `landlock_restrict_self`.
//! What this kernel supports is probed once per node process and logged.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, AccessNet, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
};
use plexus_catalog::{ProcessLimits, SandboxSpec};
use serde::Serialize;

/// The landlock ABI we ask for; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V5;

/// What this kernel lets the sandbox do (probed once).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Support {
    /// `unshare(CLONE_NEWUSER | CLONE_NEWNET)` works for a child.
    pub namespaces: bool,
    /// How landlock's filesystem rules are enforced: `full`, `partial`, `none`.
    pub landlock: &'static str,
    /// Landlock can also refuse TCP bind/connect (ABI 4+).
    pub landlock_net: bool,
}

/// Probe the kernel once; later calls return the cached answer.
pub fn support() -> &'static Support {
    static S: OnceLock<Support> = OnceLock::new();
    S.get_or_init(|| {
        let s = Support {
            namespaces: probe_namespaces(),
            landlock: probe_landlock_fs(),
            landlock_net: probe_landlock_net(),
        };
        if !s.namespaces {
            tracing::warn!("process sandbox: unshare(CLONE_NEWUSER|CLONE_NEWNET) is not permitted here; plugin processes keep the node's network unless landlock can refuse TCP");
        }
        if s.landlock != "full" {
            tracing::warn!(landlock = s.landlock, "process sandbox: landlock is not fully enforced on this kernel; the filesystem allow-list is weaker or absent");
        }
        tracing::info!(namespaces = s.namespaces, landlock = s.landlock, landlock_net = s.landlock_net, "process sandbox support probed");
        s
    })
}

fn probe_namespaces() -> bool {
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let drop_to = unprivileged_ids();
    // SAFETY: only async-signal-safe system calls run in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            drop_privileges(drop_to)?;
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    matches!(cmd.status(), Ok(s) if s.success())
}

/// Restrict a throwaway thread (landlock applies per thread, and the
/// thread's restrictions end with it) and read back the status.
fn probe_landlock_fs() -> &'static str {
    std::thread::spawn(|| {
        let r = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK_ABI))
            .and_then(|r| r.create())
            .and_then(|r| r.restrict_self());
        match r {
            Ok(st) => match st.ruleset {
                RulesetStatus::FullyEnforced => "full",
                RulesetStatus::PartiallyEnforced => "partial",
                RulesetStatus::NotEnforced => "none",
            },
            Err(_) => "none",
        }
    })
    .join()
    .unwrap_or("none")
}

fn probe_landlock_net() -> bool {
    std::thread::spawn(|| {
        let r = Ruleset::default()
            .set_compatibility(landlock::CompatLevel::HardRequirement)
            .handle_access(AccessNet::from_all(ABI::V4))
            .and_then(|r| r.create())
            .and_then(|r| r.restrict_self());
        matches!(r, Ok(st) if st.ruleset == RulesetStatus::FullyEnforced)
    })
    .join()
    .unwrap_or(false)
}

/// The uid/gid plugin processes run as when the node runs as root:
/// `nobody`. Root is exempt from RLIMIT_NPROC and may read any file the
/// allow-list lets through; nobody is neither.
pub const NOBODY: u32 = 65534;

/// The ids to switch to in the child, if the node is root.
fn unprivileged_ids() -> Option<u32> {
    // SAFETY: plain system call without arguments.
    (unsafe { libc::geteuid() } == 0).then_some(NOBODY)
}

/// Drop supplementary groups, gid and uid (async-signal-safe).
fn drop_privileges(to: Option<u32>) -> std::io::Result<()> {
    let Some(id) = to else { return Ok(()) };
    // SAFETY: plain system calls; order matters (groups and gid while still root).
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(id as libc::gid_t) != 0
            || libc::setuid(id as libc::uid_t) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// System paths every process may read and execute (when they exist).
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
];

/// Paths every process may write.
const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// How one process will be confined; built in the parent.
pub struct Plan {
    limits: ProcessLimits,
    drop_to: Option<u32>,
    unshare_flags: libc::c_int,
    ruleset: Option<RulesetCreated>,
    /// What will actually be enforced, for logs and reports.
    pub report: Report,
}

/// What a process's sandbox enforces.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// `netns` (an empty network namespace), `landlock-tcp` (TCP refused),
    /// `host` (declared or unavoidable).
    pub network: &'static str,
    /// `full`, `partial`, `none` or `off` (disabled by the manifest).
    pub landlock: &'static str,
    /// A user namespace holds the process (RLIMIT_NPROC counts only its own
    /// processes, and applies even when the node runs as root).
    pub user_namespace: bool,
    /// The uid processes run as when the node is root (`nobody`).
    pub uid: Option<u32>,
}

/// One line: `network=netns landlock=full user_namespace uid=65534`.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "network={} landlock={}", self.network, self.landlock)?;
        if self.user_namespace {
            f.write_str(" user_namespace")?;
        }
        if let Some(uid) = self.uid {
            write!(f, " uid={uid}")?;
        }
        Ok(())
    }
}

impl Plan {
    /// Plan the sandbox of a process that may read `read` (besides the
    /// system paths) and write `write`.
    pub fn new(
        limits: &ProcessLimits,
        sandbox: &SandboxSpec,
        read: &[PathBuf],
        write: &[PathBuf],
    ) -> Plan {
        let sup = support();
        let mut flags = 0;
        if sup.namespaces {
            flags |= libc::CLONE_NEWUSER;
            if !sandbox.network {
                flags |= libc::CLONE_NEWNET;
            }
        }
        let net_via_landlock = !sandbox.network && !sup.namespaces && sup.landlock_net;
        let (ruleset, landlock) = if sandbox.landlock || net_via_landlock {
            match build_ruleset(sandbox.landlock, net_via_landlock, read, write) {
                Ok(r) => (
                    Some(r),
                    if sandbox.landlock {
                        sup.landlock
                    } else {
                        "off"
                    },
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "landlock ruleset could not be built; running without it");
                    (None, "none")
                }
            }
        } else {
            (None, "off")
        };
        let network = if sandbox.network {
            "host"
        } else if sup.namespaces {
            "netns"
        } else if net_via_landlock && ruleset.is_some() {
            "landlock-tcp"
        } else {
            "host"
        };
        let drop_to = unprivileged_ids();
        Plan {
            limits: limits.clone(),
            drop_to,
            unshare_flags: flags,
            ruleset,
            report: Report {
                network,
                landlock,
                user_namespace: flags & libc::CLONE_NEWUSER != 0,
                uid: drop_to,
            },
        }
    }

    /// Install the plan on `cmd` (runs in the child before exec), starting
    /// with a new session and process group.
    pub fn apply(self, cmd: &mut tokio::process::Command) {
        self.install(cmd, true)
    }

    /// [`Plan::apply`] for a caller that makes the session itself, after
    /// this plan's steps (process-wrap's `ProcessSession`, which also kills
    /// the group): a second `setsid` would fail.
    pub fn apply_without_session(self, cmd: &mut tokio::process::Command) {
        self.install(cmd, false)
    }

    fn install(self, cmd: &mut tokio::process::Command, new_session: bool) {
        let Plan {
            limits,
            drop_to,
            unshare_flags,
            ruleset,
            ..
        } = self;
        let mut ruleset = ruleset;
        let rl = RawLimits::from(&limits);
        // SAFETY: the closure only makes async-signal-safe system calls
        // (setsid, setrlimit, unshare, prctl, landlock_restrict_self); the
        // ruleset was built in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if new_session && libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                rl.apply()?;
                drop_privileges(drop_to)?;
                if unshare_flags != 0 && libc::unshare(unshare_flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // After unshare: the new namespace's own count is limited,
                // not every process of the uid on the machine.
                rl.apply_nproc()?;
                if let Some(r) = ruleset.take() {
                    // No allocation in the child: report a plain errno.
                    r.restrict_self()
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
                }
                Ok(())
            });
        }
    }
}

fn build_ruleset(
    fs: bool,
    net: bool,
    read: &[PathBuf],
    write: &[PathBuf],
) -> Result<RulesetCreated, landlock::RulesetError> {
    let mut rs = Ruleset::default();
    if fs {
        rs = rs.handle_access(AccessFs::from_all(LANDLOCK_ABI))?;
    }
    if net {
        rs = rs.handle_access(AccessNet::from_all(ABI::V4))?;
    }
    let mut created = rs.create()?;
    if fs {
        let read_access = AccessFs::from_read(LANDLOCK_ABI);
        let write_access = AccessFs::from_all(LANDLOCK_ABI);
        let sys_read = SYSTEM_READ.iter().map(PathBuf::from);
        for p in sys_read.chain(read.iter().cloned()) {
            created = add_rule(created, &p, read_access)?;
        }
        let sys_write = SYSTEM_WRITE.iter().map(PathBuf::from);
        for p in sys_write.chain(write.iter().cloned()) {
            created = add_rule(created, &p, write_access)?;
        }
    }
    Ok(created)
}

/// Add a rule for `path` if it exists; a file gets only the rights a file can have.
fn add_rule(
    created: RulesetCreated,
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
) -> Result<RulesetCreated, landlock::RulesetError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(created);
    };
    let Ok(fd) = PathFd::new(path) else {
        return Ok(created);
    };
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(LANDLOCK_ABI)
    };
    created.add_rule(PathBeneath::new(fd, access))
}

/// rlimit values computed before fork.
#[derive(Clone, Copy)]
struct RawLimits {
    cpu: u64,
    mem: u64,
    fsize: u64,
    nproc: u64,
    nofile: u64,
}

impl From<&ProcessLimits> for RawLimits {
    fn from(l: &ProcessLimits) -> Self {
        RawLimits {
            cpu: l.cpu_secs,
            mem: l.memory_mb.saturating_mul(1024 * 1024),
            fsize: l.file_size_mb.saturating_mul(1024 * 1024),
            nproc: l.processes,
            nofile: l.open_files,
        }
    }
}

impl RawLimits {
    fn apply(&self) -> std::io::Result<()> {
        // The soft CPU limit sends SIGXCPU; the hard one a second later SIGKILL.
        set(libc::RLIMIT_CORE, 0, 0)?;
        if self.cpu > 0 {
            set(libc::RLIMIT_CPU, self.cpu, self.cpu + 1)?;
        }
        if self.mem > 0 {
            set(libc::RLIMIT_AS, self.mem, self.mem)?;
        }
        if self.fsize > 0 {
            set(libc::RLIMIT_FSIZE, self.fsize, self.fsize)?;
        }
        if self.nofile > 0 {
            set(libc::RLIMIT_NOFILE, self.nofile, self.nofile)?;
        }
        Ok(())
    }

    fn apply_nproc(&self) -> std::io::Result<()> {
        if self.nproc > 0 {
            set(libc::RLIMIT_NPROC, self.nproc, self.nproc)?;
        }
        Ok(())
    }
}

fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: plain system call on a stack value.
    if unsafe { libc::setrlimit(resource, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kill every process of the group led by `pgid` (ignores a gone group).
pub fn kill_group(pgid: u32) {
    if pgid == 0 {
        return;
    }
    // SAFETY: plain system call; a negative pid would be a different call,
    // so the id is checked above and passed as killpg's positive group id.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn a_report_reads_as_one_line() {
        let full = Report {
            network: "netns",
            landlock: "full",
            user_namespace: true,
            uid: Some(65534),
        };
        assert_eq!(
            full.to_string(),
            "network=netns landlock=full user_namespace uid=65534"
        );
        let bare = Report {
            network: "host",
            landlock: "off",
            user_namespace: false,
            uid: None,
        };
        assert_eq!(bare.to_string(), "network=host landlock=off");
    }
}
