//! Can the sandbox start a program? Checked before the first start, as the
//! uid the process will run as (nobody when the node is root): every
//! directory on the way searchable, the file executable, a `#!` script
//! readable and its interpreter reachable in turn (symlinks followed, `env`
//! looked up on `PATH`), a Python venv's `pyvenv.cfg` and packages
//! readable, the working directory enterable, and, under landlock, every
//! file inside the read allow-list. A server in a directory the sandbox
//! cannot enter (a checkout in a 0700 `mktemp -d` or in `/root`) then fails
//! at once with the path that blocks it and how to fix it, instead of
//! exiting with "Permission denied" until it is given up.
//!
//! Plain mode bits (owner, group, others); POSIX ACLs are not read.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Who a sandboxed process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Identity {
    /// `nobody`, as the sandbox drops to it (no supplementary groups).
    pub fn nobody() -> Identity {
        Identity {
            uid: crate::sandbox::NOBODY,
            gid: crate::sandbox::NOBODY,
            groups: vec![],
        }
    }

    /// Who the sandbox runs processes as here: nobody when the node is
    /// root, else the node's own user.
    pub fn sandboxed() -> Identity {
        // SAFETY: plain system calls without arguments.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid == 0 {
            return Identity::nobody();
        }
        Identity {
            uid,
            gid,
            groups: supplementary_groups(),
        }
    }

    /// The permission class (`u`, `g` or `o`) this identity falls in for a
    /// file, and whether that class has `bit` (4 read, 1 execute/search).
    fn class(&self, m: &std::fs::Metadata) -> char {
        if m.uid() == self.uid {
            'u'
        } else if m.gid() == self.gid || self.groups.contains(&m.gid()) {
            'g'
        } else {
            'o'
        }
    }

    fn may(&self, m: &std::fs::Metadata, access: Access) -> bool {
        if self.uid == 0 {
            return access != Access::Execute || m.permissions().mode() & 0o111 != 0;
        }
        let shift = match self.class(m) {
            'u' => 6,
            'g' => 3,
            _ => 0,
        };
        (m.permissions().mode() >> shift) & access.bit() != 0
    }
}

fn supplementary_groups() -> Vec<u32> {
    // SAFETY: a first call with size 0 returns the count; the buffer is
    // sized for it.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return vec![];
        }
        let mut v = vec![0 as libc::gid_t; n as usize];
        let n = libc::getgroups(n, v.as_mut_ptr());
        v.truncate(n.max(0) as usize);
        v
    }
}

/// What a path must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A directory on the way: search (x).
    Search,
    /// A script or a config file: read (r).
    Read,
    /// The program or interpreter: execute (x).
    Execute,
}

impl Access {
    fn bit(self) -> u32 {
        match self {
            Access::Read => 4,
            Access::Search | Access::Execute => 1,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Search => "search",
            Access::Read => "read",
            Access::Execute => "execute",
        })
    }
}

/// Why the sandbox cannot start a program. `what` says which file of the
/// chain it is about (the program, the interpreter of a script, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("{what} {path} does not exist")]
    Missing { what: String, path: PathBuf },
    #[error("{what} {name:?} is not on PATH ({path})")]
    NotOnPath {
        what: String,
        name: String,
        path: String,
    },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: String, path: PathBuf },
    #[error("{what} {path}: more than 40 symbolic links on the way")]
    Loop { what: String, path: PathBuf },
    #[error("{0}")]
    Denied(Box<Denial>),
    #[error("{what} {path}: {file} is outside the sandbox's landlock read paths; fix: add {dir} to [handler.sandbox] readPaths, or install it under a system directory (/usr, ...)")]
    OutsideLandlock {
        what: String,
        path: PathBuf,
        file: PathBuf,
        dir: PathBuf,
    },
}

/// A permission the sandbox's uid lacks on the way to a program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {path}: uid {uid} cannot {access} {blocked} ({mode} uid {owner} gid {group}); fix: {fix}")]
pub struct Denial {
    pub what: String,
    pub path: PathBuf,
    /// The path component (or file) that refuses.
    pub blocked: PathBuf,
    pub access: Access,
    pub uid: u32,
    pub mode: String,
    pub owner: u32,
    pub group: u32,
    pub fix: String,
}

/// What to check a program against.
pub struct Check {
    pub identity: Identity,
    /// `PATH` the process will get (bare names and `#!/usr/bin/env X`).
    pub path_env: String,
    /// Its working directory.
    pub workdir: PathBuf,
    /// Under landlock: the directories and files it may read (system paths
    /// included); `None` without a filesystem allow-list.
    pub landlock: Option<Vec<PathBuf>>,
}

/// Scripts may name an interpreter that is a script in turn; the kernel
/// stops at a few levels too.
const MAX_INTERPRETERS: u32 = 4;
const MAX_LINKS: u32 = 40;

impl Check {
    /// Whether `program` (as the process will be started: a path, or a
    /// bare name looked up on `PATH`) can be started in `workdir`.
    pub fn program(&self, program: &str) -> Result<(), Unreachable> {
        self.walk("working directory", &self.workdir, true)?;
        let path = self.locate("program", program)?;
        self.executable("program", &path, 0)
    }

    /// `program` as `execvp` finds it: a name with a `/` is a path
    /// (relative to the working directory), a bare name is looked up on
    /// `PATH`.
    fn locate(&self, what: &str, program: &str) -> Result<PathBuf, Unreachable> {
        if program.contains('/') {
            return Ok(self.workdir.join(program));
        }
        std::env::split_paths(&self.path_env)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| Unreachable::NotOnPath {
                what: what.to_string(),
                name: program.to_string(),
                path: self.path_env.to_string(),
            })
    }

    /// `path` must be an executable file; a `#!` script must also be
    /// readable, and its interpreter executable in turn.
    fn executable(&self, what: &str, path: &Path, depth: u32) -> Result<(), Unreachable> {
        let real = self.walk(what, path, false)?;
        let meta = std::fs::metadata(&real).map_err(|_| Unreachable::Missing {
            what: what.to_string(),
            path: path.to_path_buf(),
        })?;
        if !meta.is_file() {
            return Err(Unreachable::NotAFile {
                what: what.to_string(),
                path: path.to_path_buf(),
            });
        }
        self.need(what, path, &real, &meta, Access::Execute)?;
        self.inside_landlock(what, path, &real)?;
        let Some((interp, arg)) = shebang(&real) else {
            return Ok(());
        };
        // The interpreter opens the script to read it.
        self.need(what, path, &real, &meta, Access::Read)?;
        if depth >= MAX_INTERPRETERS {
            return Ok(());
        }
        let of = format!("interpreter of {}", path.display());
        let interp = PathBuf::from(interp);
        self.executable(&of, &interp, depth + 1)?;
        if interp.file_name().is_some_and(|n| n == "env") {
            // `#!/usr/bin/env [-S] python3 ...`: the first word that is not
            // an option, looked up on PATH.
            if let Some(name) = arg
                .as_deref()
                .and_then(|a| a.split_whitespace().find(|w| !w.starts_with('-')))
            {
                let via = format!("{of} (via env)");
                let found = self.locate(&via, name)?;
                self.executable(&via, &found, depth + 1)?;
            }
        }
        self.venv(&of, &interp)
    }

    /// An interpreter `X/bin/python*` with `X/pyvenv.cfg` is a venv's: the
    /// interpreter reads that file and imports from `X/lib/python*/`.
    fn venv(&self, what: &str, interp: &Path) -> Result<(), Unreachable> {
        let Some(root) = interp
            .parent()
            .filter(|b| b.file_name().is_some_and(|n| n == "bin"))
            .and_then(Path::parent)
        else {
            return Ok(());
        };
        let cfg = root.join("pyvenv.cfg");
        if !cfg.is_file() {
            return Ok(());
        }
        let what = format!("{what}: its venv");
        self.readable(&what, &cfg)?;
        let Ok(rd) = std::fs::read_dir(root.join("lib")) else {
            return Ok(());
        };
        let mut libs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python"))
            })
            .map(|p| p.join("site-packages"))
            .filter(|p| p.is_dir())
            .collect();
        libs.sort();
        for lib in libs {
            let real = self.walk(&what, &lib, true)?;
            let meta = std::fs::metadata(&real).map_err(|_| Unreachable::Missing {
                what: what.clone(),
                path: lib.clone(),
            })?;
            self.need(&what, &lib, &real, &meta, Access::Read)?;
            self.inside_landlock(&what, &lib, &real)?;
        }
        Ok(())
    }

    fn readable(&self, what: &str, path: &Path) -> Result<(), Unreachable> {
        let real = self.walk(what, path, false)?;
        let meta = std::fs::metadata(&real).map_err(|_| Unreachable::Missing {
            what: what.to_string(),
            path: path.to_path_buf(),
        })?;
        self.need(what, path, &real, &meta, Access::Read)?;
        self.inside_landlock(what, path, &real)
    }

    /// Resolve `path` component by component as the kernel does (symlinks
    /// followed wherever they point), requiring search permission on every
    /// directory looked into; with `search_last`, on the last one too.
    /// Returns the physical path.
    fn walk(&self, what: &str, path: &Path, search_last: bool) -> Result<PathBuf, Unreachable> {
        let start = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.workdir.join(path)
        };
        let mut todo: VecDeque<OsString> = parts(&start);
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            self.search(what, path, &cur)?;
            let next = cur.join(&c);
            let meta = std::fs::symlink_metadata(&next).map_err(|_| Unreachable::Missing {
                what: what.to_string(),
                path: next.clone(),
            })?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Unreachable::Loop {
                        what: what.to_string(),
                        path: path.to_path_buf(),
                    });
                }
                let target = std::fs::read_link(&next).map_err(|_| Unreachable::Missing {
                    what: what.to_string(),
                    path: next.clone(),
                })?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for p in parts(&target).into_iter().rev() {
                    todo.push_front(p);
                }
                continue;
            }
            cur = next;
        }
        if search_last {
            self.search(what, path, &cur)?;
        }
        Ok(cur)
    }

    fn search(&self, what: &str, path: &Path, dir: &Path) -> Result<(), Unreachable> {
        let meta = std::fs::metadata(dir).map_err(|_| Unreachable::Missing {
            what: what.to_string(),
            path: dir.to_path_buf(),
        })?;
        self.need(what, path, dir, &meta, Access::Search)
    }

    fn need(
        &self,
        what: &str,
        path: &Path,
        blocked: &Path,
        meta: &std::fs::Metadata,
        access: Access,
    ) -> Result<(), Unreachable> {
        if self.identity.may(meta, access) {
            return Ok(());
        }
        let class = self.identity.class(meta);
        let bit = if access == Access::Read { 'r' } else { 'x' };
        let chmod = format!("chmod {class}+{bit} {}", blocked.display());
        let fix = match access {
            Access::Search => format!(
                "let uid {} enter it ({chmod}), or put the program in a directory every user can reach (e.g. PLEXUS_MCP_VENV=/opt/plexus/venv-mcp scripts/setup-mcp.sh for the MCP servers)",
                self.identity.uid
            ),
            _ => chmod,
        };
        Err(Unreachable::Denied(Box::new(Denial {
            what: what.to_string(),
            path: path.to_path_buf(),
            blocked: blocked.to_path_buf(),
            access,
            uid: self.identity.uid,
            mode: mode_string(meta),
            owner: meta.uid(),
            group: meta.gid(),
            fix,
        })))
    }

    fn inside_landlock(&self, what: &str, path: &Path, real: &Path) -> Result<(), Unreachable> {
        let Some(roots) = &self.landlock else {
            return Ok(());
        };
        let inside = roots.iter().any(|r| {
            let r = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
            real.starts_with(&r)
        });
        if inside {
            return Ok(());
        }
        Err(Unreachable::OutsideLandlock {
            what: what.to_string(),
            path: path.to_path_buf(),
            file: real.to_path_buf(),
            dir: real.parent().unwrap_or(real).to_path_buf(),
        })
    }
}

/// The normal components of an absolute or relative path (`.` dropped,
/// `..` kept).
fn parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// `#!interpreter [argument]` of a script, as the kernel reads it.
fn shebang(path: &Path) -> Option<(String, Option<String>)> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (interp, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    (!interp.is_empty()).then(|| (interp.to_string(), arg))
}

/// `drwx------`.
fn mode_string(m: &std::fs::Metadata) -> String {
    let mode = m.permissions().mode();
    let mut s = String::with_capacity(10);
    s.push(if m.is_dir() { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn check(id: &Identity, workdir: &Path) -> Check {
        Check {
            identity: id.clone(),
            path_env: crate::DEFAULT_PATH.into(),
            workdir: workdir.to_path_buf(),
            landlock: None,
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, Permissions::from_mode(mode)).unwrap();
    }

    fn file(p: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        chmod(p, mode);
    }

    /// A tree `base/{open,closed}` where only `closed` (0700) keeps nobody
    /// out; `base` itself is opened up (tempdirs are 0700).
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        chmod(d.path(), 0o755);
        let base = std::fs::canonicalize(d.path()).unwrap();
        let open = base.join("open");
        let closed = base.join("closed");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::create_dir_all(&closed).unwrap();
        chmod(&open, 0o755);
        chmod(&closed, 0o700);
        (d, open, closed)
    }

    #[test]
    fn a_directory_on_the_way_that_nobody_cannot_search_is_named_with_the_fix() {
        let (_d, open, closed) = tree();
        let srv = closed.join("bin/server");
        file(&srv, "\x7fELF", 0o755);
        chmod(&closed.join("bin"), 0o755);
        let e = check(&Identity::nobody(), &open)
            .program(srv.to_str().unwrap())
            .unwrap_err();
        let Unreachable::Denied(d) = &e else {
            panic!("{e}")
        };
        assert_eq!(d.blocked, closed);
        assert_eq!(d.access, Access::Search);
        let msg = e.to_string();
        assert!(msg.contains("uid 65534 cannot search"), "{msg}");
        assert!(msg.contains("drwx------"), "{msg}");
        assert!(
            msg.contains(&format!("chmod o+x {}", closed.display())),
            "{msg}"
        );
        // Opened up: reachable.
        chmod(&closed, 0o711);
        check(&Identity::nobody(), &open)
            .program(srv.to_str().unwrap())
            .unwrap();
        // The owner itself is not held to the others' bits.
        chmod(&closed, 0o700);
        let me = Identity {
            uid: std::fs::metadata(&closed).unwrap().uid(),
            gid: 12345,
            groups: vec![],
        };
        check(&me, &open).program(srv.to_str().unwrap()).unwrap();
    }

    #[test]
    fn symlinks_are_followed_to_where_they_point() {
        let (_d, open, closed) = tree();
        let real = closed.join("server");
        file(&real, "\x7fELF", 0o755);
        let link = open.join("server");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = check(&Identity::nobody(), &open)
            .program(link.to_str().unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, Unreachable::Denied(d) if d.blocked == closed),
            "{e}"
        );
    }

    #[test]
    fn a_script_needs_read_and_its_interpreter_is_checked_too() {
        let (_d, open, closed) = tree();
        // A venv-like layout whose interpreter lies behind `closed`.
        let python = closed.join("py/bin/python3");
        file(&python, "\x7fELF", 0o755);
        chmod(&closed.join("py"), 0o755);
        chmod(&closed.join("py/bin"), 0o755);
        let venv = open.join("venv");
        file(&venv.join("pyvenv.cfg"), "home = x\n", 0o644);
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::os::unix::fs::symlink(&python, venv.join("bin/python")).unwrap();
        let script = venv.join("bin/mcp-server");
        file(
            &script,
            &format!("#!{}/bin/python\nimport x\n", venv.display()),
            0o755,
        );
        let c = check(&Identity::nobody(), &open);
        let e = c.program(script.to_str().unwrap()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("interpreter of {}", script.display())),
            "{msg}"
        );
        assert!(
            matches!(&e, Unreachable::Denied(d) if d.blocked == closed),
            "{e}"
        );
        chmod(&closed, 0o755);
        c.program(script.to_str().unwrap()).unwrap();
        // The venv's config must be readable by the interpreter.
        chmod(&venv.join("pyvenv.cfg"), 0o600);
        let e = c.program(script.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(&e, Unreachable::Denied(d) if d.access == Access::Read && d.blocked.ends_with("pyvenv.cfg")),
            "{e}"
        );
        chmod(&venv.join("pyvenv.cfg"), 0o644);
        // A script nobody cannot read cannot be interpreted.
        chmod(&script, 0o711);
        let e = c.program(script.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(&e, Unreachable::Denied(d) if d.access == Access::Read),
            "{e}"
        );
    }

    #[test]
    fn env_interpreters_are_looked_up_on_path_and_missing_things_are_named() {
        let (_d, open, _closed) = tree();
        let script = open.join("tool");
        file(
            &script,
            "#!/usr/bin/env -S no-such-interpreter-xyz -u\n",
            0o755,
        );
        let e = check(&Identity::nobody(), &open)
            .program(script.to_str().unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, Unreachable::NotOnPath { name, .. } if name == "no-such-interpreter-xyz"),
            "{e}"
        );
        let e = check(&Identity::nobody(), &open)
            .program("no-such-program-xyz")
            .unwrap_err();
        assert!(e.to_string().contains("not on PATH"), "{e}");
        let e = check(&Identity::nobody(), &open)
            .program(open.join("absent").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(e, Unreachable::Missing { .. }), "{e}");
        // A system program is reachable.
        check(&Identity::nobody(), &open).program("sh").unwrap();
    }

    #[test]
    fn an_unreachable_working_directory_is_named() {
        let (_d, _open, closed) = tree();
        let e = check(&Identity::nobody(), &closed.join("."))
            .program("sh")
            .unwrap_err();
        assert!(e.to_string().starts_with("working directory"), "{e}");
    }

    #[test]
    fn under_landlock_every_file_must_be_in_the_read_paths() {
        let (_d, open, _closed) = tree();
        let srv = open.join("server");
        file(&srv, "\x7fELF", 0o755);
        let mut c = check(&Identity::nobody(), Path::new("/"));
        c.landlock = Some(vec!["/usr".into(), "/bin".into()]);
        let e = c.program(srv.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(&e, Unreachable::OutsideLandlock { dir, .. } if dir == &open),
            "{e}"
        );
        c.landlock = Some(vec!["/usr".into(), open.clone()]);
        c.program(srv.to_str().unwrap()).unwrap();
    }
}
