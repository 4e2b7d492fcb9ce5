//! What the reader needs to know besides the bytes: tenant, mailbox, clock, internal domains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

/// How the mailbox of each message is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxRule {
    /// Every message belongs to this mailbox.
    Fixed(String),
    /// The `X-Origin` header, lower-cased (Enron-style exports); `fallback` when absent.
    FromXOrigin {
        /// The mailbox of messages without an `X-Origin` header.
        fallback: String,
    },
}

/// The context a message is read in. Cloning shares the [`Warnings`] counters.
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// The tenant (organisation) the mail belongs to.
    pub tenant: String,
    /// How the mailbox is named.
    pub mailbox: MailboxRule,
    /// The folder when neither an `X-Folder` header nor the maildir layout gives one.
    pub folder: Option<String>,
    /// The organisation's own mail domains (a subdomain counts too), for [`Direction`].
    ///
    /// [`Direction`]: retain_model::Direction
    pub internal_domains: Vec<String>,
    /// Maximum length of the body excerpt in characters (0: no excerpt).
    pub excerpt_chars: usize,
    /// Messages larger than this many bytes are refused with [`Error::TooLarge`].
    ///
    /// [`Error::TooLarge`]: crate::Error::TooLarge
    pub max_message_bytes: u64,
    /// "Now", for refusing dates in the future (injected, never read from the system here).
    pub now: DateTime<Utc>,
    /// Counters of what was wrong but not fatal (bogus dates, missing ids, ...).
    pub warnings: Arc<Warnings>,
}

impl MessageContext {
    /// The default excerpt length in characters.
    pub const DEFAULT_EXCERPT_CHARS: usize = 2000;
    /// The default size limit: 256 MiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 256 * 1024 * 1024;

    /// A context for `tenant`'s mail, with the mailbox rule and the current time; no internal
    /// domains, no default folder, default excerpt length and size limit.
    pub fn new(tenant: impl Into<String>, mailbox: MailboxRule, now: DateTime<Utc>) -> Self {
        MessageContext {
            tenant: tenant.into(),
            mailbox,
            folder: None,
            internal_domains: Vec::new(),
            excerpt_chars: Self::DEFAULT_EXCERPT_CHARS,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            now,
            warnings: Arc::default(),
        }
    }

    /// Sets the internal domains (case-insensitive; a leading `@` or `.` is ignored).
    pub fn with_internal_domains<I, S>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.internal_domains = domains
            .into_iter()
            .map(|d| {
                d.as_ref()
                    .trim()
                    .trim_start_matches(['@', '.'])
                    .to_ascii_lowercase()
            })
            .filter(|d| !d.is_empty())
            .collect();
        self
    }

    /// Sets the fallback folder.
    pub fn with_folder(mut self, folder: impl Into<String>) -> Self {
        self.folder = Some(folder.into());
        self
    }

    /// Sets the excerpt length in characters (0: no excerpt).
    pub fn with_excerpt_chars(mut self, chars: usize) -> Self {
        self.excerpt_chars = chars;
        self
    }

    /// Sets the message size limit in bytes.
    pub fn with_max_message_bytes(mut self, bytes: u64) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Whether `domain` is one of the internal domains or a subdomain of one.
    pub(crate) fn is_internal_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.internal_domains.iter().any(|d| {
            domain == *d
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// Counters of non-fatal problems, shared by every clone of a [`MessageContext`].
#[derive(Debug, Default)]
pub struct Warnings {
    implausible_date: AtomicU64,
    unparseable_date: AtomicU64,
    missing_date: AtomicU64,
    missing_message_id: AtomicU64,
    implausible_received: AtomicU64,
}

/// A snapshot of [`Warnings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WarningCounts {
    /// `Date` headers before 1980 or more than two days ahead of "now" (sent_at left empty).
    pub implausible_date: u64,
    /// `Date` headers that are present but not a date.
    pub unparseable_date: u64,
    /// Messages without a `Date` header.
    pub missing_date: u64,
    /// Messages without a `Message-ID` (given a synthetic `sha256:` id).
    pub missing_message_id: u64,
    /// `Received` header dates ignored as implausible.
    pub implausible_received: u64,
}

impl WarningCounts {
    /// The sum of all counters.
    pub fn total(&self) -> u64 {
        self.implausible_date
            + self.unparseable_date
            + self.missing_date
            + self.missing_message_id
            + self.implausible_received
    }
}

/// One kind of warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warning {
    ImplausibleDate,
    UnparseableDate,
    MissingDate,
    MissingMessageId,
    ImplausibleReceived,
}

impl Warnings {
    /// The current counts.
    pub fn snapshot(&self) -> WarningCounts {
        WarningCounts {
            implausible_date: self.implausible_date.load(Ordering::Relaxed),
            unparseable_date: self.unparseable_date.load(Ordering::Relaxed),
            missing_date: self.missing_date.load(Ordering::Relaxed),
            missing_message_id: self.missing_message_id.load(Ordering::Relaxed),
            implausible_received: self.implausible_received.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(&self, warning: Warning) {
        let counter = match warning {
            Warning::ImplausibleDate => &self.implausible_date,
            Warning::UnparseableDate => &self.unparseable_date,
            Warning::MissingDate => &self.missing_date,
            Warning::MissingMessageId => &self.missing_message_id,
            Warning::ImplausibleReceived => &self.implausible_received,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_domains_match_subdomains_only() {
        let ctx = MessageContext::new("t", MailboxRule::Fixed("m".into()), Utc::now())
            .with_internal_domains(["@Example.org", "clinic.test"]);
        assert!(ctx.is_internal_domain("example.org"));
        assert!(ctx.is_internal_domain("MAIL.Example.ORG"));
        assert!(!ctx.is_internal_domain("badexample.org"));
        assert!(!ctx.is_internal_domain("example.org.evil.test"));
        assert!(ctx.is_internal_domain("clinic.test"));
    }

    #[test]
    fn clones_share_counters() {
        let ctx = MessageContext::new("t", MailboxRule::Fixed("m".into()), Utc::now());
        let other = ctx.clone();
        other.warnings.add(Warning::ImplausibleDate);
        assert_eq!(ctx.warnings.snapshot().implausible_date, 1);
        assert_eq!(ctx.warnings.snapshot().total(), 1);
    }
}
