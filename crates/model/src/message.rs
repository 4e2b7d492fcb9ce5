//! The metadata of one e-mail message as it enters the pipeline.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Which way a message travelled relative to the organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from outside the organisation.
    Inbound,
    /// Sent to someone outside the organisation.
    Outbound,
    /// Between the organisation's own mailboxes.
    Internal,
    /// Not known (e.g. imported from an archive without routing information).
    #[default]
    Unknown,
}

impl Direction {
    /// The stable code used in schemas, policies and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Internal => "internal",
            Direction::Unknown => "unknown",
        }
    }

    /// Parses a stable code (`inbound`, `outbound`, `internal`, `unknown`).
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            "internal" => Direction::Internal,
            "unknown" => Direction::Unknown,
            _ => return None,
        })
    }
}

/// One mailbox address with its optional display name. PHI: never log it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Display name, as written in the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The address itself (`local@domain`).
    pub address: String,
}

impl Address {
    /// An address without a display name.
    pub fn new(address: impl Into<String>) -> Self {
        Address {
            name: None,
            address: address.into(),
        }
    }

    /// The part after the last `@`, if any (not lower-cased).
    pub fn domain(&self) -> Option<&str> {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty())
    }
}

/// Metadata of one attachment; the content never enters the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// File name as sent (may be empty).
    #[serde(default)]
    pub name: String,
    /// MIME media type, e.g. `application/pdf`.
    #[serde(default = "default_media_type")]
    pub media_type: String,
    /// Size in bytes of the decoded content.
    #[serde(default)]
    pub size_bytes: u64,
}

fn default_media_type() -> String {
    "application/octet-stream".to_owned()
}

/// The metadata of one e-mail message in one mailbox: what the importers produce and the
/// classifier consumes. The optional `excerpt` is the only text content; it stops at the
/// classifier and is never stored downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailMessage {
    /// RFC 5322 `Message-ID` without angle brackets (or a stable synthetic id when absent).
    pub message_id: String,
    /// The organisation (tenant) the mailbox belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The mailbox the copy was found in.
    pub mailbox: String,
    /// The person responsible for the mailbox (custodian), when it differs from the mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custodian: Option<String>,
    /// Which way the message travelled.
    #[serde(default)]
    pub direction: Direction,
    /// The `From` address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Address>,
    /// `To` recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Address>,
    /// `Cc` recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Address>,
    /// `Bcc` recipients (known only for the sender's copy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Address>,
    /// Subject line. PHI: never log it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it was sent (the `Date` header), if known and plausible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When the mailbox received it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// Size of the raw message in bytes.
    #[serde(default)]
    pub size_bytes: u64,
    /// Mailbox folder path, `/`-separated (e.g. `Inbox/Compliance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Labels or categories set on the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Conversation/thread id, when the mail system has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// `In-Reply-To` message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// `References` message ids, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// Attachment metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// A bounded plain-text excerpt of the body, for the classifier only. PHI: never log it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
}

fn default_tenant() -> String {
    "default".to_owned()
}

impl MailMessage {
    /// A message with only the identifying fields set; everything else empty.
    pub fn new(message_id: impl Into<String>, mailbox: impl Into<String>) -> Self {
        MailMessage {
            message_id: message_id.into(),
            tenant: default_tenant(),
            mailbox: mailbox.into(),
            custodian: None,
            direction: Direction::Unknown,
            from: None,
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: None,
            sent_at: None,
            received_at: None,
            size_bytes: 0,
            folder: None,
            labels: Vec::new(),
            thread_id: None,
            in_reply_to: None,
            references: Vec::new(),
            attachments: Vec::new(),
            excerpt: None,
        }
    }

    /// The identity of this copy of the message: one record per tenant, mailbox and message id.
    pub fn key(&self) -> RecordKey {
        RecordKey {
            tenant: self.tenant.clone(),
            mailbox: self.mailbox.clone(),
            message_id: self.message_id.clone(),
        }
    }

    /// The custodian: the named custodian, else the mailbox.
    pub fn custodian_or_mailbox(&self) -> &str {
        self.custodian.as_deref().unwrap_or(&self.mailbox)
    }

    /// The record's creation date: sent, else received (UTC calendar date).
    pub fn created_date(&self) -> Option<NaiveDate> {
        self.sent_at.or(self.received_at).map(|t| t.date_naive())
    }

    /// All recipients: to, cc, then bcc.
    pub fn recipients(&self) -> impl Iterator<Item = &Address> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }
}

/// The identity of one record (one copy of a message in one mailbox).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// The organisation.
    pub tenant: String,
    /// The mailbox holding the copy.
    pub mailbox: String,
    /// The message id.
    pub message_id: String,
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.mailbox, self.message_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_message_gets_defaults() {
        let m: MailMessage =
            serde_json::from_str(r#"{"message_id":"a@b","mailbox":"jdoe"}"#).unwrap();
        assert_eq!(m.tenant, "default");
        assert_eq!(m.direction, Direction::Unknown);
        assert!(m.created_date().is_none());
        assert_eq!(m.key().to_string(), "default/jdoe/a@b");
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = serde_json::from_str::<MailMessage>(
            r#"{"message_id":"a@b","mailbox":"jdoe","subjet":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("subjet"), "{err}");
    }

    #[test]
    fn created_date_prefers_sent() {
        let mut m = MailMessage::new("id", "mb");
        m.received_at = Some("2021-01-02T00:00:00Z".parse().unwrap());
        assert_eq!(m.created_date(), NaiveDate::from_ymd_opt(2021, 1, 2));
        m.sent_at = Some("2020-12-31T23:59:59Z".parse().unwrap());
        assert_eq!(m.created_date(), NaiveDate::from_ymd_opt(2020, 12, 31));
    }

    #[test]
    fn domain_of_address() {
        assert_eq!(Address::new("a@Example.org").domain(), Some("Example.org"));
        assert_eq!(Address::new("nobody").domain(), None);
        assert_eq!(Address::new("x@").domain(), None);
    }
}
