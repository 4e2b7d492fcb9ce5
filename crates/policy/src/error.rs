//! Errors of the policy crate.

/// Result with the policy crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong loading a policy or a case. Every variant is bad input: the policy or case
/// must be fixed; the engine itself never fails on a loaded policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file is not valid TOML or has an unknown or ill-typed field.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The policy file name (or `builtin:<name>` for the built-in pack).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A field is well-formed TOML but its value is not acceptable.
    #[error("{file}:{line}: {item}: field `{field}`: {message}")]
    Invalid {
        /// The policy file name.
        file: String,
        /// 1-based line of the item (rule, obligation, ...) or field.
        line: usize,
        /// Which item, e.g. ``rule `hipaa-policy` ``.
        item: String,
        /// The field within the item, e.g. `when.subject-regex[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A policy file could not be read.
    #[error("cannot read policy file {path}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// 1-based line and column of a byte offset in a source text.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = upto.bytes().filter(|b| *b == b'\n').count() + 1;
    let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
