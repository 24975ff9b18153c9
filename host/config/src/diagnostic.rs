use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column in the config file (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// One problem in a config file: where it is, which key, and what is wrong.
///
/// Displays as `FILE:LINE:COL: KEY: MESSAGE`, the form editors and CI logs link to. A problem with
/// no place in the file (the file cannot be read; a default value cannot be used) displays as
/// `FILE: KEY: MESSAGE`, and one about the file as a whole as `FILE: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file.
    pub file: PathBuf,
    /// Where in it: the key's (or entry's) position, or `None` for a setting that is not written
    /// in the file (a default).
    pub location: Option<Location>,
    /// The dotted key path, e.g. `routes[1].upstream` or `upstreams.users.timeout`.
    pub key: String,
    /// What is wrong, in lowercase, carrying the offending value.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems; every one found is listed, in file order.
    #[error("{}", DisplayAll(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every problem, in file order (one for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            Self::Read { path, source } => vec![Diagnostic {
                file: path.clone(),
                location: None,
                key: String::new(),
                message: format!("cannot read config file: {source}"),
            }],
            Self::Invalid(all) => all.clone(),
        }
    }
}

struct DisplayAll<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets in a source text to [`Location`]s.
#[derive(Debug)]
pub(crate) struct LineIndex {
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { line_starts }
    }

    pub(crate) fn locate(&self, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location { line, column }
    }
}

/// A diagnostic sink bound to one file.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
    index: LineIndex,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Where each key read so far is written, by dotted path.
    pub(crate) keys: std::collections::HashMap<String, Location>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            index: LineIndex::new(text),
            diagnostics: Vec::new(),
            keys: std::collections::HashMap::new(),
        }
    }

    pub(crate) fn locate(&self, span: &std::ops::Range<usize>) -> Location {
        self.index.locate(self.text, span.start)
    }

    pub(crate) fn error(
        &mut self,
        span: &std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) {
        let location = self.locate(span);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            location: Some(location),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn finish(mut self) -> Result<(), ConfigError> {
        if self.diagnostics.is_empty() {
            Ok(())
        } else {
            self.diagnostics.sort_by_key(|d| d.location);
            Err(ConfigError::Invalid(self.diagnostics))
        }
    }
}

/// The closest of `candidates` to `given`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(
    given: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|&(d, c)| d <= (c.len().max(given.len()) / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_as_one_based_line_and_character_column() {
        let text = "a = 1\nbé = 2\n";
        let index = LineIndex::new(text);
        assert_eq!(index.locate(text, 0), Location { line: 1, column: 1 });
        assert_eq!(index.locate(text, 6), Location { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(index.locate(text, 9), Location { line: 2, column: 3 });
    }

    #[test]
    fn displays_with_or_without_a_position() {
        let mut d = Diagnostic {
            file: "gw.toml".into(),
            location: Some(Location { line: 3, column: 7 }),
            key: "gateway.admin".into(),
            message: "invalid".into(),
        };
        assert_eq!(d.to_string(), "gw.toml:3:7: gateway.admin: invalid");
        d.location = None;
        assert_eq!(d.to_string(), "gw.toml: gateway.admin: invalid");
        d.key.clear();
        assert_eq!(d.to_string(), "gw.toml: invalid");
    }

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["upstream", "paths", "hosts"];
        assert_eq!(did_you_mean("upstrem", keys), Some("upstream"));
        assert_eq!(did_you_mean("path", keys), Some("paths"));
        assert_eq!(did_you_mean("banana", keys), None);
    }
}
