//! Errors of workflow files: each names where (file, line, column) and what
//! (the field path, e.g. `steps[2].plugin`).

use std::fmt;

/// A malformed workflow file or workflow text.
///
/// Displayed as `line 12, column 1: steps[2].plugin: missing field` for
/// [`crate::Workflow::parse`], and `flow.toml:12:1: steps[2].plugin: missing
/// field` for [`crate::Workflow::load`]. Step indices in field paths count
/// from 0, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowError {
    /// The file name, when loaded from a file.
    pub file: Option<String>,
    /// 1-based line, when the error has a place in the text.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the error has a place.
    pub column: Option<usize>,
    /// The field path, e.g. `steps[2].when`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl WorkflowError {
    /// An error at byte `offset` of `text`.
    pub(crate) fn at(
        text: &str,
        offset: Option<usize>,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> WorkflowError {
        let (line, column) = match offset {
            Some(o) => {
                let (l, c) = line_col(text, o);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        WorkflowError {
            file: None,
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error with no place in a text (e.g. the file cannot be read).
    pub(crate) fn plain(message: impl Into<String>) -> WorkflowError {
        WorkflowError {
            file: None,
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, attributed to `file`.
    pub fn in_file(mut self, file: impl Into<String>) -> WorkflowError {
        self.file = Some(file.into());
        self
    }
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{file}:{line}")?;
                if let Some(c) = self.column {
                    write!(f, ":{c}")?;
                }
                f.write_str(": ")?;
            }
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => {
                write!(f, "line {line}")?;
                if let Some(c) = self.column {
                    write!(f, ", column {c}")?;
                }
                f.write_str(": ")?;
            }
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for WorkflowError {}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "ab\ncdé\nx";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 100), (3, 2));
    }

    #[test]
    fn display_forms() {
        let e = WorkflowError::at("a\nb", Some(2), Some("steps[0].id".into()), "bad");
        assert_eq!(e.to_string(), "line 2, column 1: steps[0].id: bad");
        assert_eq!(
            e.in_file("f.toml").to_string(),
            "f.toml:2:1: steps[0].id: bad"
        );
        assert_eq!(WorkflowError::plain("x").in_file("f").to_string(), "f: x");
    }
}
