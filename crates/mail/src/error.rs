//! Errors of the mail reader. Messages name paths, mbox positions, sizes and reasons only:
//! never message content, addresses or subjects (PHI).

use std::fmt;
use std::path::PathBuf;

/// Result with the mail crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a message (or a failure) was found: a file, and for an mbox the message's position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    /// The file (or directory, for walk errors).
    pub path: PathBuf,
    /// The message's position within an mbox file; `None` for a single-message file.
    pub mbox: Option<MboxPosition>,
}

/// The position of one message within an mbox file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MboxPosition {
    /// 0-based index of the message in the file.
    pub index: usize,
    /// Byte offset of the message's `From ` separator line.
    pub offset: u64,
}

impl SourceRef {
    /// A whole file (or directory).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SourceRef {
            path: path.into(),
            mbox: None,
        }
    }

    /// Message `index` of an mbox file, whose `From ` line starts at byte `offset`.
    pub fn mbox(path: impl Into<PathBuf>, index: usize, offset: u64) -> Self {
        SourceRef {
            path: path.into(),
            mbox: Some(MboxPosition { index, offset }),
        }
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(MboxPosition { index, offset }) = self.mbox {
            write!(f, " (mbox message {index} at byte {offset})")?;
        }
        Ok(())
    }
}

/// Why a file was not read as e-mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The file is empty.
    Empty,
    /// The file holds NUL bytes near its start: binary, not a message.
    Binary,
    /// The file does not start with a `Name: value` header line (nor an mbox `From ` line).
    NoHeaderBlock,
    /// Not a regular file (a socket, FIFO or device).
    NotAFile,
}

impl SkipReason {
    /// A stable code for counting (`empty`, `binary`, `no_header_block`, `not_a_file`).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Empty => "empty",
            SkipReason::Binary => "binary",
            SkipReason::NoHeaderBlock => "no_header_block",
            SkipReason::NotAFile => "not_a_file",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Empty => "empty file",
            SkipReason::Binary => "binary content",
            SkipReason::NoHeaderBlock => "no header block",
            SkipReason::NotAFile => "not a regular file",
        })
    }
}

/// What the MIME parser could not make sense of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseFailure {
    /// The bytes do not start with a `Name: value` header line, or no header could be parsed.
    NoHeaders,
}

impl fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseFailure::NoHeaders => "no header block",
        })
    }
}

/// What went wrong reading mail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {at}: {source}")]
    Io {
        /// The file (and mbox position, when it failed mid-file).
        at: SourceRef,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory walk failed (permission denied, symbolic-link loop, ...).
    #[error("cannot walk {}: {source}", path.display())]
    Walk {
        /// The entry that failed, or the root when unknown.
        path: PathBuf,
        /// What walkdir reported.
        source: walkdir::Error,
    },
    /// The file is not an e-mail message and was skipped (reported, so it can be counted).
    #[error("{at}: skipped: not an e-mail message: {reason}")]
    NotAMessage {
        /// The file.
        at: SourceRef,
        /// Why.
        reason: SkipReason,
    },
    /// The bytes looked like a message but could not be parsed.
    #[error("{}cannot parse message: {reason}", prefix(at.as_ref()))]
    Parse {
        /// Where the message came from, when read through [`crate::MailSource`].
        at: Option<SourceRef>,
        /// What was wrong.
        reason: ParseFailure,
    },
    /// The message is larger than the configured limit; its content was not read.
    #[error("{}message of {size} bytes exceeds the {limit}-byte limit", prefix(at.as_ref()))]
    TooLarge {
        /// Where the message came from, when read through [`crate::MailSource`].
        at: Option<SourceRef>,
        /// Its size in bytes (at least this much, for an mbox message cut short).
        size: u64,
        /// The limit ([`crate::MessageContext::max_message_bytes`]).
        limit: u64,
    },
}

fn prefix(at: Option<&SourceRef>) -> String {
    at.map(|a| format!("{a}: ")).unwrap_or_default()
}

impl Error {
    /// Whether the input is at fault (skip or dead-letter it and go on), rather than the
    /// environment (unreadable file system: retry or stop).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::NotAMessage { .. } | Error::Parse { .. } | Error::TooLarge { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ),
            Error::Walk { source, .. } => source.loop_ancestor().is_some(),
        }
    }

    /// Whether this reports a file that is not e-mail at all (skipped) rather than a failure.
    pub fn is_skip(&self) -> bool {
        matches!(self, Error::NotAMessage { .. })
    }

    /// Where it happened, when known.
    pub fn source_ref(&self) -> Option<&SourceRef> {
        match self {
            Error::Io { at, .. } | Error::NotAMessage { at, .. } => Some(at),
            Error::Parse { at, .. } | Error::TooLarge { at, .. } => at.as_ref(),
            Error::Walk { .. } => None,
        }
    }

    /// Attaches the source to an error from [`crate::parse_message`].
    pub(crate) fn at(mut self, source: SourceRef) -> Self {
        match &mut self {
            Error::Parse { at, .. } | Error::TooLarge { at, .. } => *at = Some(source),
            Error::Io { .. } | Error::Walk { .. } | Error::NotAMessage { .. } => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_position() {
        let e = Error::NotAMessage {
            at: SourceRef::file("/data/1/1.cats"),
            reason: SkipReason::NoHeaderBlock,
        };
        assert_eq!(
            e.to_string(),
            "/data/1/1.cats: skipped: not an e-mail message: no header block"
        );
        assert!(e.is_bad_input() && e.is_skip());

        let e = Error::Parse {
            at: None,
            reason: ParseFailure::NoHeaders,
        }
        .at(SourceRef::mbox("/m/box", 2, 4096));
        assert_eq!(
            e.to_string(),
            "/m/box (mbox message 2 at byte 4096): cannot parse message: no header block"
        );
        assert!(e.is_bad_input() && !e.is_skip());

        let e = Error::Io {
            at: SourceRef::file("/x"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!e.is_bad_input());
    }
}
