//! Retain's mail reader: maildir folders, mbox files and single RFC 822 / `.eml` files into
//! [`MailMessage`] values, for `retain policy classify` and `retain import`.
//!
//! [`parse_message`] turns the bytes of one message into metadata plus a bounded body excerpt;
//! [`MailSource`] finds every message under a path and yields it with a [`SourceRef`] naming
//! the file (and mbox position), or an [`Error`] naming what could not be read and why.
//!
//! How the fields are filled (MIME, RFC 2047 words, charsets and dates by `mail-parser`):
//!
//! | field | from |
//! | --- | --- |
//! | `message_id` | `Message-ID` without `<>`; when absent `sha256:` + the first 32 hex digits of the SHA-256 of the raw bytes, so a re-import gives the same id |
//! | `tenant` | [`MessageContext::tenant`] |
//! | `mailbox` | [`MailboxRule`]: fixed, or the lower-cased `X-Origin` |
//! | `custodian` | `X-Origin`, lower-cased (exports spell one custodian `KEAN-S` and `Kean-S`) |
//! | `from`, `to`, `cc`, `bcc` | the address headers, groups flattened, entries without an address dropped |
//! | `subject` | `Subject`, decoded |
//! | `sent_at` | `Date`, unless written before 1980, at or before 1980-01-01T00:00Z (the PST zero date, `Mon, 31 Dec 1979 16:00:00 -0800`) or more than two days after [`MessageContext::now`] |
//! | `received_at` | the latest plausible `Received:` date |
//! | `size_bytes` | the raw message's length (for mbox: after `>From ` unescaping) |
//! | `folder` | `X-Folder` (`\` separators become `/`), else the maildir folder or mbox file name, else [`MessageContext::folder`] |
//! | `labels` | `X-Gmail-Labels` and `Keywords`, deduplicated |
//! | `in_reply_to`, `references` | those headers, ids without `<>` |
//! | `thread_id` | the first `References` id, else `In-Reply-To`, else the message's own id: the same for every client in a thread (Outlook's `Thread-Index` is not shared by other clients' replies, so it is not used) |
//! | `attachments` | every MIME part that is not the message text: file name, media type, decoded size |
//! | `excerpt` | the first [`MessageContext::excerpt_chars`] characters of the text body (text/plain preferred, else HTML without tags), white space collapsed |
//! | `direction` | from [`MessageContext::internal_domains`]: internal sender and all recipients internal → internal; internal sender → outbound; any internal recipient → inbound; else unknown |
//!
//! Problems that do not stop a message (bogus or missing dates, missing ids) leave the field
//! empty and are counted in [`MessageContext::warnings`]. Errors and counts name paths, mbox
//! positions and sizes only, never content, addresses or subjects (PHI).

mod context;
mod error;
mod parse;
mod source;

pub use context::{MailboxRule, MessageContext, WarningCounts, Warnings};
pub use error::{Error, MboxPosition, ParseFailure, Result, SkipReason, SourceRef};
pub use parse::parse_message;
pub use retain_model::MailMessage;
pub use source::MailSource;
