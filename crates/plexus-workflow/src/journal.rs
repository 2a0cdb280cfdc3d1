//! The durable saga journal: a write-ahead log in a file, one JSON line per
//! record.
//!
//! ```text
//! {"t":"header","version":1,"sagaId":"order-42","workflow":"order","source":"[workflow]…","input":{…},"createdMs":…}
//! {"t":"entry","atMs":…,"entry":{"stepStarted":{"step":0}}}
//! {"t":"entry","atMs":…,"entry":{"stepCompleted":{"step":0,"result":{…}}}}
//! {"t":"stuck","atMs":…,"step":0,"attempts":10,"error":"…"}
//! ```
//!
//! [`FileJournal::append`] writes the lines and calls `File::sync_data`
//! before returning: the saga driver only performs an effect after the
//! intent that announces it is durable. A crash can leave at most the last
//! line torn (written in part); [`FileJournal::open`] drops it and truncates
//! the file to the last whole line, which is safe because nothing acted on
//! a record that was not yet synced. A corrupt line anywhere else is an
//! error naming the line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use plexus_resilience::saga::SagaEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runner::now_ms;

/// The journal format version this crate writes and reads.
pub const JOURNAL_VERSION: u32 = 1;

/// Journal files are `<saga id>.saga.jsonl`.
pub const JOURNAL_SUFFIX: &str = ".saga.jsonl";

/// The first line: everything a resume needs besides the entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalHeader {
    /// [`JOURNAL_VERSION`] when written by this crate.
    pub version: u32,
    /// The saga id (also the file name's stem).
    pub saga_id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's TOML text, parsed again on resume.
    pub source: String,
    /// The saga's input.
    pub input: Value,
    /// When the saga was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A record after the header. `line` is its 1-based line in the file,
/// `at_ms` when it was written (ms since the Unix epoch).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum JournalRecord {
    /// A saga journal entry.
    Entry {
        /// 1-based line in the file.
        line: usize,
        at_ms: u64,
        entry: SagaEntry<Value>,
    },
    /// A compensation ran out of attempts; the saga stopped (a resume tries
    /// again).
    Stuck {
        line: usize,
        at_ms: u64,
        step: u32,
        attempts: u32,
        error: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase")]
enum Line {
    Header(JournalHeader),
    #[serde(rename_all = "camelCase")]
    Entry {
        at_ms: u64,
        entry: SagaEntry<Value>,
    },
    #[serde(rename_all = "camelCase")]
    Stuck {
        at_ms: u64,
        step: u32,
        attempts: u32,
        error: String,
    },
}

/// A journal file that cannot be used. `path` is the file's path.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum JournalFileError {
    /// Reading, writing or syncing failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A line other than the last does not parse.
    #[error("{path}:{line}: corrupt journal line: {message}")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
    /// The file is empty or its header line is torn: the saga never started
    /// an effect.
    #[error("{path}: no journal header (empty file, or torn first line)")]
    NoHeader { path: String },
    #[error(
        "{path}: journal version {version} is not supported (this build reads {JOURNAL_VERSION})"
    )]
    /// Written by another version of this crate.
    Version { path: String, version: u32 },
    /// [`FileJournal::create`] on an existing file.
    #[error("{path}: a journal already exists there")]
    Exists { path: String },
    /// An append to a journal opened with [`FileJournal::read`].
    #[error("{path}: opened read-only")]
    ReadOnly { path: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalFileError + '_ {
    move |source| JournalFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A saga's journal file. See the [module docs](self).
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    /// `None` when opened read-only.
    file: Option<File>,
    header: JournalHeader,
    records: Vec<JournalRecord>,
    /// Lines in the file (header included).
    lines: usize,
    torn_tail: bool,
}

impl FileJournal {
    /// Creates a new journal with its header, durably (the file and its
    /// directory entry are synced). Fails if the file exists.
    pub fn create(
        path: impl AsRef<Path>,
        header: JournalHeader,
    ) -> Result<FileJournal, JournalFileError> {
        let path = path.as_ref();
        let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(JournalFileError::Exists {
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut line = serde_json::to_vec(&Line::Header(header.clone()))
            .map_err(|e| io_err(path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        line.push(b'\n');
        file.write_all(&line).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        sync_dir(path);
        Ok(FileJournal {
            path: path.to_path_buf(),
            file: Some(file),
            header,
            records: Vec::new(),
            lines: 1,
            torn_tail: false,
        })
    }

    /// Opens a journal to continue it: reads every record, drops a torn last
    /// line (truncating the file to the last whole line) and positions for
    /// appending.
    pub fn open(path: impl AsRef<Path>) -> Result<FileJournal, JournalFileError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io_err(path))?;
        let (mut j, good_len) = Self::parse(path, &bytes)?;
        if good_len < bytes.len() {
            tracing::warn!(path = %path.display(), dropped = bytes.len() - good_len, "dropping torn last journal line");
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            f.set_len(good_len as u64).map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
        }
        j.file = Some(
            OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io_err(path))?,
        );
        Ok(j)
    }

    /// Reads a journal without changing it (for listings).
    pub fn read(path: impl AsRef<Path>) -> Result<FileJournal, JournalFileError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io_err(path))?;
        Ok(Self::parse(path, &bytes)?.0)
    }

    /// Parses the file's bytes; returns the journal and the length of its
    /// whole, valid lines.
    fn parse(path: &Path, bytes: &[u8]) -> Result<(FileJournal, usize), JournalFileError> {
        let shown = || path.display().to_string();
        // Whole lines (ending in '\n'), and what follows the last one.
        let mut lines: Vec<(usize, &[u8])> = Vec::new();
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                lines.push((start, &bytes[start..i]));
                start = i + 1;
            }
        }
        let mut torn_tail = start < bytes.len();
        let mut good_len = start;
        let mut header = None;
        let mut records = Vec::new();
        let count = lines.len();
        for (n, (offset, raw)) in lines.into_iter().enumerate() {
            let line_no = n + 1;
            let parsed: Result<Line, String> = std::str::from_utf8(raw)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()));
            let line = match parsed {
                Ok(l) => l,
                // The last line, with nothing after it: a torn write.
                Err(_) if n + 1 == count && !torn_tail => {
                    torn_tail = true;
                    good_len = offset;
                    break;
                }
                Err(message) => {
                    return Err(JournalFileError::Corrupt {
                        path: shown(),
                        line: line_no,
                        message,
                    })
                }
            };
            match (line_no, line) {
                (1, Line::Header(h)) => {
                    if h.version != JOURNAL_VERSION {
                        return Err(JournalFileError::Version {
                            path: shown(),
                            version: h.version,
                        });
                    }
                    header = Some(h);
                }
                (1, _) => {
                    return Err(JournalFileError::Corrupt {
                        path: shown(),
                        line: 1,
                        message: "the first line is not a journal header".into(),
                    })
                }
                (_, Line::Header(_)) => {
                    return Err(JournalFileError::Corrupt {
                        path: shown(),
                        line: line_no,
                        message: "a second header".into(),
                    })
                }
                (_, Line::Entry { at_ms, entry }) => records.push(JournalRecord::Entry {
                    line: line_no,
                    at_ms,
                    entry,
                }),
                (
                    _,
                    Line::Stuck {
                        at_ms,
                        step,
                        attempts,
                        error,
                    },
                ) => records.push(JournalRecord::Stuck {
                    line: line_no,
                    at_ms,
                    step,
                    attempts,
                    error,
                }),
            }
        }
        let Some(header) = header else {
            return Err(JournalFileError::NoHeader { path: shown() });
        };
        let lines = 1 + records.len();
        Ok((
            FileJournal {
                path: path.to_path_buf(),
                file: None,
                header,
                records,
                lines,
                torn_tail,
            },
            good_len,
        ))
    }

    /// Appends saga entries, one line each, and syncs them to disk before
    /// returning.
    pub fn append(&mut self, entries: &[SagaEntry<Value>]) -> Result<(), JournalFileError> {
        let at_ms = now_ms();
        let mut buf = Vec::new();
        for entry in entries {
            let line = Line::Entry {
                at_ms,
                entry: entry.clone(),
            };
            self.encode(&line, &mut buf)?;
        }
        self.write(&buf)?;
        for entry in entries {
            self.lines += 1;
            self.records.push(JournalRecord::Entry {
                line: self.lines,
                at_ms,
                entry: entry.clone(),
            });
        }
        Ok(())
    }

    /// Records, durably, that a compensation ran out of attempts.
    pub fn append_stuck(
        &mut self,
        step: u32,
        attempts: u32,
        error: &str,
    ) -> Result<(), JournalFileError> {
        let at_ms = now_ms();
        let line = Line::Stuck {
            at_ms,
            step,
            attempts,
            error: error.to_string(),
        };
        let mut buf = Vec::new();
        self.encode(&line, &mut buf)?;
        self.write(&buf)?;
        self.lines += 1;
        self.records.push(JournalRecord::Stuck {
            line: self.lines,
            at_ms,
            step,
            attempts,
            error: error.to_string(),
        });
        Ok(())
    }

    fn encode(&self, line: &Line, buf: &mut Vec<u8>) -> Result<(), JournalFileError> {
        serde_json::to_writer(&mut *buf, line)
            .map_err(|e| io_err(&self.path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        buf.push(b'\n');
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), JournalFileError> {
        let Some(file) = self.file.as_mut() else {
            return Err(JournalFileError::ReadOnly {
                path: self.path.display().to_string(),
            });
        };
        file.write_all(buf).map_err(io_err(&self.path))?;
        file.sync_data().map_err(io_err(&self.path))?;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header line.
    pub fn header(&self) -> &JournalHeader {
        &self.header
    }

    /// Every record after the header, in order.
    pub fn records(&self) -> &[JournalRecord] {
        &self.records
    }

    /// The saga entries, in order, with their line numbers.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &SagaEntry<Value>)> {
        self.records.iter().filter_map(|r| match r {
            JournalRecord::Entry { line, entry, .. } => Some((*line, entry)),
            JournalRecord::Stuck { .. } => None,
        })
    }

    /// Whether a torn last line was found (and, for [`FileJournal::open`],
    /// dropped).
    pub fn had_torn_tail(&self) -> bool {
        self.torn_tail
    }
}

/// Makes a new file's directory entry durable (best effort: not every
/// platform can sync a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header() -> JournalHeader {
        JournalHeader {
            version: JOURNAL_VERSION,
            saga_id: "s1".into(),
            workflow: "wf".into(),
            source: "[workflow]".into(),
            input: json!({"a": 1}),
            created_ms: 5,
        }
    }

    fn entries() -> Vec<SagaEntry<Value>> {
        vec![
            SagaEntry::StepStarted { step: 0 },
            SagaEntry::StepCompleted {
                step: 0,
                result: json!({"id": "x"}),
            },
        ]
    }

    #[test]
    fn create_append_open_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s1.saga.jsonl");
        let mut j = FileJournal::create(&p, header()).unwrap();
        j.append(&entries()).unwrap();
        j.append_stuck(0, 3, "nope").unwrap();
        drop(j);
        let j = FileJournal::open(&p).unwrap();
        assert_eq!(j.header(), &header());
        let got: Vec<_> = j.entries().map(|(l, e)| (l, e.clone())).collect();
        assert_eq!(
            got,
            vec![(2, entries()[0].clone()), (3, entries()[1].clone())]
        );
        assert!(matches!(
            j.records()[2],
            JournalRecord::Stuck {
                line: 4,
                attempts: 3,
                ..
            }
        ));
        assert!(!j.had_torn_tail());
        assert!(matches!(
            FileJournal::create(&p, header()),
            Err(JournalFileError::Exists { .. })
        ));
        let text = fs::read_to_string(&p).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(r#""entry":{"stepStarted":{"step":0}}"#),
            "{text}"
        );
    }

    #[test]
    fn torn_last_line_is_dropped_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s1.saga.jsonl");
        let mut j = FileJournal::create(&p, header()).unwrap();
        j.append(&entries()[..1]).unwrap();
        drop(j);
        let whole = fs::read(&p).unwrap();
        // A crash in the middle of writing the next line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        let torn = br#"{"t":"entry","atMs":9,"entry":{"stepCompl"#;
        f.write_all(torn).unwrap();
        drop(f);
        let read = FileJournal::read(&p).unwrap();
        assert!(read.had_torn_tail());
        assert_eq!(read.entries().count(), 1);
        assert_eq!(
            fs::read(&p).unwrap().len(),
            whole.len() + torn.len(),
            "read leaves the file alone"
        );
        let mut j = FileJournal::open(&p).unwrap();
        assert!(j.had_torn_tail());
        assert_eq!(
            fs::read(&p).unwrap(),
            whole,
            "open truncates to the last whole line"
        );
        j.append(&entries()[1..]).unwrap();
        drop(j);
        let j = FileJournal::open(&p).unwrap();
        assert!(!j.had_torn_tail());
        assert_eq!(j.entries().count(), 2);
    }

    #[test]
    fn garbage_last_line_with_newline_is_torn_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s1.saga.jsonl");
        let mut j = FileJournal::create(&p, header()).unwrap();
        j.append(&entries()[..1]).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"\0\0\0\0\n").unwrap();
        drop(f);
        let j = FileJournal::open(&p).unwrap();
        assert!(j.had_torn_tail());
        assert_eq!(j.entries().count(), 1);
    }

    #[test]
    fn corrupt_middle_line_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s1.saga.jsonl");
        let mut j = FileJournal::create(&p, header()).unwrap();
        j.append(&entries()).unwrap();
        drop(j);
        let text = fs::read_to_string(&p).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "{not json";
        fs::write(&p, lines.join("\n") + "\n").unwrap();
        let err = FileJournal::open(&p).unwrap_err();
        assert!(
            matches!(err, JournalFileError::Corrupt { line: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("s1.saga.jsonl:2: corrupt journal line"),
            "{err}"
        );
    }

    #[test]
    fn empty_or_headerless_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.saga.jsonl");
        fs::write(&p, "").unwrap();
        assert!(matches!(
            FileJournal::open(&p),
            Err(JournalFileError::NoHeader { .. })
        ));
        fs::write(&p, r#"{"t":"header","vers"#).unwrap();
        assert!(matches!(
            FileJournal::open(&p),
            Err(JournalFileError::NoHeader { .. })
        ));
        fs::write(
            &p,
            "{\"t\":\"entry\",\"atMs\":1,\"entry\":\"sagaCompleted\"}\n",
        )
        .unwrap();
        assert!(matches!(
            FileJournal::open(&p),
            Err(JournalFileError::Corrupt { line: 1, .. })
        ));
        let mut h = header();
        h.version = 99;
        fs::write(&p, serde_json::to_string(&Line::Header(h)).unwrap() + "\n").unwrap();
        assert!(matches!(
            FileJournal::open(&p),
            Err(JournalFileError::Version { version: 99, .. })
        ));
    }
}
