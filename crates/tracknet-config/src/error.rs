//! Errors: I/O, syntax, and the list of every problem found in a config.

use std::fmt;
use std::path::PathBuf;

/// One problem with a config value, named by its dotted key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `model.lora.r` (list entries as `[i]`); `<root>` for the
    /// document itself; for a malformed override, the override text.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
    /// A full key path the user probably meant (unknown keys, BitsAndBytesConfig keys in
    /// `mode: manual`).
    pub suggestion: Option<String>,
}

impl ConfigIssue {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            suggestion: None,
        }
    }

    pub(crate) fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid YAML/TOML, or has an extension that is neither.
    #[error("cannot parse {file}: {message}")]
    Parse {
        /// The file (or `<string>` for in-memory text).
        file: String,
        /// The parser's message (with line and column when it has them).
        message: String,
    },
    /// The document parsed but has problems: every one found, one per line.
    #[error("{}", DisplayIssues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The problems, if this is [`ConfigError::Invalid`]; empty otherwise.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            Self::Invalid(v) => v,
            _ => &[],
        }
    }
}

struct DisplayIssues<'a>(&'a [ConfigIssue]);

impl fmt::Display for DisplayIssues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}
