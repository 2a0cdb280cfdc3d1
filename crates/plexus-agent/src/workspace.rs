//! A run's workspace: a directory of its own, reachable by the sandbox's
//! uid (nobody, when the node runs as root), under a root every ancestor of
//! which that uid can traverse. Created per run, deleted after it unless
//! the manifest keeps it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use plexus_process::sandbox::NOBODY;

/// Where workspaces are made.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
    /// The owner of new workspaces (nobody when the node is root).
    uid: Option<u32>,
}

/// The uid sandboxed processes run as, when it differs from ours.
pub fn sandbox_uid() -> Option<u32> {
    // SAFETY: plain system call without arguments.
    (unsafe { libc::geteuid() } == 0).then_some(NOBODY)
}

impl Workspaces {
    /// The default root: `plexus-agent-workspaces` under the system temp dir.
    pub fn default_root() -> PathBuf {
        std::env::temp_dir().join("plexus-agent-workspaces")
    }

    /// Use (and make) `root`. Refused, naming the directory, when the
    /// sandbox's uid could not reach it (a 0700 ancestor such as /root).
    pub fn new(root: PathBuf) -> Result<Workspaces, String> {
        let uid = sandbox_uid();
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create the workspace root {}: {e}", root.display()))?;
        // Traversable by the sandbox's uid, not listable: a run cannot see
        // the names of the others.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("cannot set the mode of {}: {e}", root.display()))?;
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        if uid.is_some() {
            for dir in root.ancestors().skip(1) {
                let m = std::fs::metadata(dir)
                    .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
                let others_x = m.mode() & 0o001 != 0;
                if !others_x && m.uid() != NOBODY {
                    return Err(format!(
                        "the workspace root {} is out of reach of the sandbox's uid {NOBODY}: {} has mode {:o}; choose a root under a directory others may enter (such as /tmp)",
                        root.display(),
                        dir.display(),
                        m.mode() & 0o7777
                    ));
                }
            }
        }
        Ok(Workspaces { root, uid })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new, empty workspace owned by the sandbox's uid (mode 0700).
    pub fn create(&self, keep: bool) -> Result<Workspace, String> {
        let dir = self
            .root
            .join(format!("run-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the workspace {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
        if let Some(uid) = self.uid {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", dir.display()))?;
        }
        Ok(Workspace {
            dir,
            uid: self.uid,
            keep,
        })
    }
}

/// One run's directory.
#[derive(Debug)]
pub struct Workspace {
    dir: PathBuf,
    uid: Option<u32>,
    keep: bool,
}

impl Workspace {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it stays after the run.
    pub fn kept(&self) -> bool {
        self.keep
    }

    /// A tool's path: relative ones are inside the workspace; absolute ones
    /// are taken as they are (the sandbox decides what they reach).
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Write the input's files before the run. Paths must be relative and
    /// stay inside (no `..`); the total is capped at `max_bytes`. Files are
    /// given to the sandbox's uid, so its tools may edit them.
    pub fn seed(&self, files: &[(String, String)], max_bytes: u64) -> Result<(), String> {
        let total: u64 = files.iter().map(|(_, t)| t.len() as u64).sum();
        if total > max_bytes {
            return Err(format!(
                "files: {total} bytes, more than the workspace's {max_bytes}"
            ));
        }
        for (rel, text) in files {
            let p = Path::new(rel);
            if rel.is_empty()
                || p.is_absolute()
                || p.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(format!(
                    "files: {rel:?} must be a relative path inside the workspace (no '..')"
                ));
            }
            let path = self.dir.join(p);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("files: cannot create {}: {e}", parent.display()))?;
                self.give(parent)?;
            }
            std::fs::write(&path, text).map_err(|e| format!("files: cannot write {rel}: {e}"))?;
            self.give(&path)?;
        }
        Ok(())
    }

    /// Hand a path (and the directories up to the workspace) to the sandbox's uid.
    fn give(&self, path: &Path) -> Result<(), String> {
        let Some(uid) = self.uid else { return Ok(()) };
        let mut p = path.to_path_buf();
        while p.starts_with(&self.dir) && p != self.dir {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", p.display()))?;
            if !p.pop() {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if !self.keep {
            // Does not follow symlinks a tool may have left.
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a run's workspace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_private_seeded_and_removed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ws = Workspaces::new(d.path().join("ws")).unwrap();
        let w = ws.create(false).unwrap();
        let m = std::fs::metadata(w.dir()).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        if let Some(uid) = sandbox_uid() {
            assert_eq!(m.uid(), uid);
        }
        w.seed(&[("docs/a.md".into(), "hello".into())], 1024)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(w.dir().join("docs/a.md")).unwrap(),
            "hello"
        );
        assert!(w
            .seed(&[("../x".into(), "".into())], 1024)
            .unwrap_err()
            .contains("relative path"));
        assert!(w.seed(&[("/etc/x".into(), "".into())], 1024).is_err());
        assert!(w
            .seed(&[("big".into(), "x".repeat(2000))], 1024)
            .unwrap_err()
            .contains("2000 bytes"));
        assert_eq!(w.resolve("a/b"), w.dir().join("a/b"));
        assert_eq!(w.resolve("/etc/passwd"), PathBuf::from("/etc/passwd"));
        let dir = w.dir().to_path_buf();
        drop(w);
        assert!(!dir.exists());
        let kept = ws.create(true).unwrap();
        let dir = kept.dir().to_path_buf();
        drop(kept);
        assert!(dir.exists());
    }

    #[test]
    fn a_root_the_sandbox_cannot_reach_is_refused_naming_the_directory() {
        if sandbox_uid().is_none() {
            return; // Not root: tools run as this user, who reaches anything it made.
        }
        let d = tempfile::tempdir().unwrap();
        let closed = d.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = Workspaces::new(closed.join("ws")).unwrap_err();
        assert!(
            e.contains(&closed.display().to_string()) && e.contains("700"),
            "{e}"
        );
    }
}
