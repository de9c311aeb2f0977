//! The manifest error type: what is wrong, where (file, line, column) and how to fix it.

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column in the manifest text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// Converts a byte offset into a line and column (both 1-based).
    pub fn from_offset(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Position { line, column }
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {}: {source}\n  help: pass the manifest with `-f path/to/spin.toml`, or run moa in the directory that holds spin.toml", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {message}\n  help: {help}", path.display(), position.map(|p| format!(":{p}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        position: Option<Position>,
        message: String,
        help: String,
    },
}

impl ManifestError {
    /// The position of the error in the manifest, where known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ManifestError::Read { .. } => None,
            ManifestError::Invalid { position, .. } => *position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(
            Position::from_offset(text, 0),
            Position { line: 1, column: 1 }
        );
        assert_eq!(
            Position::from_offset(text, 6),
            Position { line: 2, column: 1 }
        );
        assert_eq!(
            Position::from_offset(text, 9),
            Position { line: 2, column: 4 }
        );
    }
}
