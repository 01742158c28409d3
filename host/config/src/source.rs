//! Source text with byte spans mapped to `file:line:column`, for error messages.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration file's text, kept to turn byte spans into lines and columns.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file's path.
    pub path: PathBuf,
    /// The file's full text.
    pub text: String,
}

impl Source {
    /// Reads a file; an unreadable one is a whole-file error.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
            excerpt: None,
        })?;
        Ok(Source { path: path.to_path_buf(), text })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// An error at a span of this source.
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let Some(span) = span else {
            return ConfigError { file: self.path.clone(), line: 0, column: 0, message, excerpt: None };
        };
        let (line, column) = self.line_col(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or("");
        // Underline the span on its first line.
        let first_line_len = self.text[span.start..span.end.min(self.text.len())]
            .split('\n')
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let excerpt = excerpt_window(text, column, first_line_len);
        ConfigError {
            file: self.path.clone(),
            line,
            column,
            message: sitsflow_core::fsutil::cut_text(&message, sitsflow_core::fsutil::SHOWN_MESSAGE_BYTES).into_owned(),
            excerpt: Some(excerpt),
        }
    }
}

/// Characters of a line an excerpt shows before the span and in all.
const EXCERPT_BEFORE: usize = 40;
const EXCERPT_CHARS: usize = 160;

/// The part of a long line an excerpt shows (about [`EXCERPT_CHARS`] characters from a
/// little before the span, `…` where it is cut), with the span's column and width in it.
fn excerpt_window(text: &str, column: usize, width: usize) -> (String, usize, usize) {
    let chars = text.chars().count();
    if chars <= EXCERPT_CHARS {
        return (text.to_string(), column, width);
    }
    let start = column.saturating_sub(1 + EXCERPT_BEFORE);
    let end = (start + EXCERPT_CHARS).min(chars);
    let mut shown: String = text.chars().skip(start).take(end - start).collect();
    let lead = if start > 0 { "…" } else { "" };
    if end < chars {
        shown.push('…');
    }
    let column_in = column - start + lead.chars().count();
    let width_in = width.min(end - (column - 1).min(end)).max(1);
    (format!("{lead}{shown}"), column_in, width_in)
}

/// A configuration error with its place: `file:line:column: message`, then the
/// offending line with the span underlined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when the error concerns the whole file.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The line's text, the 1-based column and the underline width.
    pub excerpt: Option<(String, usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
        }
        if let Some((text, column, width)) = &self.excerpt {
            let gutter = self.line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
                "",
                self.line,
                text,
                "",
                " ".repeat(column - 1),
                "^".repeat(*width),
            )?;
        }
        Ok(())
    }
}

/// A value with the byte span it came from.
pub type Located<T> = toml::Spanned<T>;
