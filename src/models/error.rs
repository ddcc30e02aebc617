//! Errors of the model runner. Every error that comes from a project file names the file
//! (relative to the project) and, where known, the line, because the person reading it has
//! to open that file and fix it: "models/orders.sql:12: ..." is the whole point.

use std::fmt;

/// A place in a project file, shown as `path:line` (or just `path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, relative to the project root (`models/orders.sql`).
    pub path: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
}

impl Location {
    /// A whole file.
    pub fn file(path: impl Into<String>) -> Location {
        Location {
            path: path.into(),
            line: None,
        }
    }

    /// A line of a file.
    pub fn line(path: impl Into<String>, line: Option<usize>) -> Location {
        Location {
            path: path.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.path),
            None => write!(f, "{}", self.path),
        }
    }
}

/// What can go wrong loading, compiling or running a project.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A YAML file (dbt_project.yml, schema files, `--vars`) that does not parse or has the
    /// wrong shape.
    #[error("{at}: {message}")]
    Yaml {
        /// Where.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// A template that does not parse or fails while rendering (unknown function, missing
    /// var, bad syntax).
    #[error("{at}: {message}")]
    Jinja {
        /// Where.
        at: Location,
        /// minijinja's description.
        message: String,
    },
    /// `ref()` or `source()` naming something the project does not define.
    #[error("{at}: {message}")]
    MissingRef {
        /// The file and line of the reference.
        at: Location,
        /// Which name is missing and who asked for it.
        message: String,
    },
    /// Models that depend on each other in a circle.
    #[error("dependency cycle: {chain} ({files})")]
    Cycle {
        /// `a -> b -> a`.
        chain: String,
        /// The files of the models in the cycle.
        files: String,
    },
    /// A project definition that makes no sense (two models with one name, unknown
    /// materialisation, a selector that matches nothing known).
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// A selector (`--select`) that cannot be parsed.
    #[error("bad selector '{selector}': {message}")]
    Selector {
        /// The selector as given.
        selector: String,
        /// What is wrong.
        message: String,
    },
    /// A SQL statement that the warehouse refused.
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// Connecting to the warehouse failed.
    #[error("cannot connect: {0}")]
    Connect(String),
}

/// A statement the warehouse refused, with PostgreSQL's SQLSTATE and the 1-based character
/// position in the statement when the engine reports one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (SQLSTATE {sqlstate})")]
pub struct SqlError {
    /// The engine's message.
    pub message: String,
    /// The five-character SQLSTATE (`XX000` when unknown).
    pub sqlstate: String,
    /// 1-based character offset into the statement text.
    pub position: Option<usize>,
}

impl SqlError {
    /// The 1-based line of `sql` that `position` points into.
    pub fn line_in(&self, sql: &str) -> Option<usize> {
        let pos = self.position?;
        let before: String = sql.chars().take(pos.saturating_sub(1)).collect();
        Some(before.matches('\n').count() + 1)
    }
}

/// Result alias of the model runner.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Reads a file, naming it on failure.
pub fn read_to_string(path: &std::path::Path, shown: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: shown.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_become_lines() {
        let e = SqlError {
            message: "x".into(),
            sqlstate: "42601".into(),
            position: Some(12),
        };
        assert_eq!(e.line_in("select 1\nfrom nope"), Some(2));
        assert_eq!(
            Location::line("models/a.sql", Some(3)).to_string(),
            "models/a.sql:3"
        );
    }
}
