//! One RFC 822 message (bytes) into a [`MailMessage`].

use std::borrow::Cow;

use chrono::{DateTime, Duration, TimeZone, Utc};
use mail_parser::decoders::html::html_to_text;
use mail_parser::{HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders};
use retain_model::{Address, Attachment, Direction, MailMessage};
use sha2::{Digest, Sha256};

use crate::context::{MailboxRule, MessageContext, Warning};
use crate::error::{Error, ParseFailure, Result};

/// How far ahead of "now" a `Date` may be before it is refused as implausible.
const MAX_FUTURE: Duration = Duration::days(2);

/// Parses one message into its metadata and a bounded body excerpt.
///
/// Never panics, whatever the bytes. Fails only when no header can be parsed at all or the
/// message is larger than [`MessageContext::max_message_bytes`]; everything else that is wrong
/// (a bogus or missing `Date`, no `Message-ID`) is counted in [`MessageContext::warnings`] and
/// leaves the field empty (or synthesised, for the id). See the crate docs for each field.
pub fn parse_message(raw: &[u8], ctx: &MessageContext) -> Result<MailMessage> {
    parse_in_folder(raw, ctx, None)
}

/// [`parse_message`] with a folder found by the reader (maildir layout), used when the message
/// has no `X-Folder` header; `ctx.folder` is the last resort.
pub(crate) fn parse_in_folder(
    raw: &[u8],
    ctx: &MessageContext,
    folder_hint: Option<&str>,
) -> Result<MailMessage> {
    // An mbox envelope line (`From sender date`) is not part of the message.
    let raw = match raw.strip_prefix(b"From ") {
        Some(rest) => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&[][..], |nl| &rest[nl + 1..]),
        None => raw,
    };
    let size = raw.len() as u64;
    if size > ctx.max_message_bytes {
        return Err(Error::TooLarge {
            at: None,
            size,
            limit: ctx.max_message_bytes,
        });
    }
    let no_headers = Error::Parse {
        at: None,
        reason: ParseFailure::NoHeaders,
    };
    if !starts_with_header_line(raw.strip_prefix(UTF8_BOM).unwrap_or(raw)) {
        return Err(no_headers);
    }
    let parsed = MessageParser::new()
        .parse(raw)
        .filter(|m| !m.headers().is_empty())
        .ok_or(no_headers)?;

    let message_id = first_id(parsed.header(HeaderName::MessageId)).unwrap_or_else(|| {
        ctx.warnings.add(Warning::MissingMessageId);
        synthetic_id(raw)
    });
    let custodian = raw_header(&parsed, "X-Origin").map(|o| o.to_lowercase());
    let mailbox = match &ctx.mailbox {
        MailboxRule::Fixed(mailbox) => mailbox.clone(),
        MailboxRule::FromXOrigin { fallback } => {
            custodian.clone().unwrap_or_else(|| fallback.clone())
        }
    };

    let mut message = MailMessage::new(message_id, mailbox);
    message.tenant = ctx.tenant.clone();
    message.custodian = custodian;
    message.from = parsed
        .header_values(HeaderName::From)
        .filter_map(HeaderValue::as_address)
        .flat_map(|a| a.iter())
        .find_map(to_address);
    message.to = addresses(&parsed, HeaderName::To);
    message.cc = addresses(&parsed, HeaderName::Cc);
    message.bcc = addresses(&parsed, HeaderName::Bcc);
    message.subject = parsed
        .subject()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    message.sent_at = sent_at(&parsed, ctx);
    message.received_at = received_at(&parsed, ctx);
    message.size_bytes = size;
    message.folder = raw_header(&parsed, "X-Folder")
        .and_then(|f| normalise_folder(&f))
        .or_else(|| folder_hint.map(str::to_owned))
        .or_else(|| ctx.folder.clone());
    message.labels = labels(&parsed);
    message.in_reply_to = first_id(parsed.header(HeaderName::InReplyTo));
    message.references = parsed
        .header(HeaderName::References)
        .and_then(HeaderValue::as_text_list)
        .map(|ids| ids.iter().filter_map(|id| clean_id(id)).collect())
        .unwrap_or_default();
    message.thread_id = Some(
        message
            .references
            .first()
            .or(message.in_reply_to.as_ref())
            .unwrap_or(&message.message_id)
            .clone(),
    );
    message.attachments = parsed.attachments().map(attachment).collect();
    message.excerpt = excerpt(&parsed, ctx.excerpt_chars);
    message.direction = direction(&message, ctx);
    Ok(message)
}

/// The UTF-8 byte-order mark some tools write before the headers.
pub(crate) const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Whether the bytes start with an RFC 5322 header line: a field name of printable ASCII
/// without space or colon, then a colon.
pub(crate) fn starts_with_header_line(head: &[u8]) -> bool {
    let name_len = head
        .iter()
        .take_while(|&&b| b != b':' && (b'!'..=b'~').contains(&b))
        .count();
    name_len > 0 && head.get(name_len) == Some(&b':')
}

/// `sha256:` and the first 32 hex digits of the SHA-256 of the raw bytes.
fn synthetic_id(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    format!("sha256:{}", hex::encode(&digest[..16]))
}

/// A message id without angle brackets or surrounding white space; `None` when empty.
fn clean_id(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The first id of a `Message-ID`/`In-Reply-To`-style header.
fn first_id(value: Option<&HeaderValue<'_>>) -> Option<String> {
    value?.as_text_list()?.iter().find_map(|id| clean_id(id))
}

/// A header kept verbatim by mail-parser (`X-...`), white space collapsed; `None` when empty.
fn raw_header(message: &Message<'_>, name: &'static str) -> Option<String> {
    let text = message.header(name)?.as_text()?;
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

/// `\Root\Inbox\Sub` or `Root/Inbox/Sub` as `Root/Inbox/Sub`.
fn normalise_folder(folder: &str) -> Option<String> {
    let parts: Vec<&str> = folder
        .split(['\\', '/'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn to_address(addr: &mail_parser::Addr<'_>) -> Option<Address> {
    let address = addr.address()?.trim();
    if address.is_empty() {
        return None;
    }
    let name = addr
        .name()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    Some(Address {
        name,
        address: address.to_owned(),
    })
}

/// Every address of every `name` header, groups flattened.
fn addresses(message: &Message<'_>, name: HeaderName<'static>) -> Vec<Address> {
    message
        .header_values(name)
        .filter_map(HeaderValue::as_address)
        .flat_map(|a| a.iter())
        .filter_map(to_address)
        .collect()
}

/// A header date in UTC, and the year as written (before the zone is applied).
fn to_utc(date: &mail_parser::DateTime) -> Option<(DateTime<Utc>, u16)> {
    if !date.is_valid() {
        return None;
    }
    let utc = Utc.timestamp_opt(date.to_timestamp(), 0).single()?;
    Some((utc, date.year))
}

/// Whether a date can be a real send or receive time.
///
/// Refused: a date written before 1980 or at/before 1980-01-01T00:00:00Z (the zero date of
/// DOS/Exchange exports, which PST-era tools write as `Mon, 31 Dec 1979 16:00:00 -0800`), and
/// anything more than two days after `now`.
fn plausible(utc: DateTime<Utc>, written_year: u16, now: DateTime<Utc>) -> bool {
    let floor = Utc.with_ymd_and_hms(1980, 1, 1, 0, 0, 0).single();
    written_year >= 1980 && floor.is_some_and(|f| utc > f) && utc <= now + MAX_FUTURE
}

fn sent_at(message: &Message<'_>, ctx: &MessageContext) -> Option<DateTime<Utc>> {
    let Some(value) = message.header(HeaderName::Date) else {
        ctx.warnings.add(Warning::MissingDate);
        return None;
    };
    let Some((utc, year)) = value.as_datetime().and_then(to_utc) else {
        ctx.warnings.add(Warning::UnparseableDate);
        return None;
    };
    if plausible(utc, year, ctx.now) {
        Some(utc)
    } else {
        ctx.warnings.add(Warning::ImplausibleDate);
        None
    }
}

/// The latest plausible `Received:` date.
fn received_at(message: &Message<'_>, ctx: &MessageContext) -> Option<DateTime<Utc>> {
    let mut latest = None;
    for (utc, year) in message
        .received_all()
        .filter_map(|r| r.date.as_ref())
        .filter_map(to_utc)
    {
        if plausible(utc, year, ctx.now) {
            latest = latest.max(Some(utc));
        } else {
            ctx.warnings.add(Warning::ImplausibleReceived);
        }
    }
    latest
}

/// `X-Gmail-Labels` (comma-separated, optionally quoted) and `Keywords`, deduplicated in order.
fn labels(message: &Message<'_>) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    let mut push = |label: &str| {
        let label = label.trim().trim_matches('"').trim();
        if !label.is_empty() && !labels.iter().any(|l| l == label) {
            labels.push(label.to_owned());
        }
    };
    if let Some(gmail) = raw_header(message, "X-Gmail-Labels") {
        let mut quoted = false;
        let mut start = 0;
        for (i, ch) in gmail.char_indices() {
            match ch {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    push(&gmail[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        push(&gmail[start..]);
    }
    for keywords in message
        .header_values(HeaderName::Keywords)
        .filter_map(HeaderValue::as_text_list)
    {
        for keyword in keywords {
            push(keyword);
        }
    }
    labels
}

fn attachment(part: &MessagePart<'_>) -> Attachment {
    let media_type = part
        .content_type()
        .and_then(|ct| {
            let subtype = ct.c_subtype.as_deref()?.trim();
            let ctype = ct.c_type.trim();
            (!ctype.is_empty() && !subtype.is_empty())
                .then(|| format!("{ctype}/{subtype}").to_ascii_lowercase())
        })
        .unwrap_or_else(|| {
            match &part.body {
                mail_parser::PartType::Text(_) => "text/plain",
                mail_parser::PartType::Html(_) => "text/html",
                mail_parser::PartType::Message(_) => "message/rfc822",
                _ => "application/octet-stream",
            }
            .to_owned()
        });
    Attachment {
        name: part.attachment_name().unwrap_or_default().trim().to_owned(),
        media_type,
        size_bytes: part.len() as u64,
    }
}

/// The first `max_chars` characters of the text body (plain text preferred, else HTML without
/// tags), white space collapsed to single spaces; `None` when empty or `max_chars` is 0.
fn excerpt(message: &Message<'_>, max_chars: usize) -> Option<String> {
    if max_chars == 0 {
        return None;
    }
    let mut out = String::new();
    let mut chars = 0;
    'parts: for &id in &message.text_body {
        let text: Cow<'_, str> = match message.parts.get(id as usize).map(|p| &p.body) {
            Some(mail_parser::PartType::Text(text)) => Cow::Borrowed(text.as_ref()),
            Some(mail_parser::PartType::Html(html)) => Cow::Owned(html_to_text(html)),
            _ => continue,
        };
        let mut space = !out.is_empty();
        for ch in text.chars() {
            if ch.is_whitespace() {
                space = !out.is_empty();
                continue;
            }
            let needed = if space { 2 } else { 1 };
            if chars + needed > max_chars {
                break 'parts;
            }
            if space {
                out.push(' ');
                space = false;
            }
            out.push(ch);
            chars += needed;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Inbound, outbound or internal, from the sender's and recipients' domains.
fn direction(message: &MailMessage, ctx: &MessageContext) -> Direction {
    if ctx.internal_domains.is_empty() {
        return Direction::Unknown;
    }
    let internal = |a: &Address| a.domain().is_some_and(|d| ctx.is_internal_domain(d));
    match &message.from {
        Some(from) if internal(from) => {
            if message.recipients().all(internal) {
                Direction::Internal
            } else {
                Direction::Outbound
            }
        }
        _ if message.recipients().any(internal) => Direction::Inbound,
        _ => Direction::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::WarningCounts;

    fn ctx() -> MessageContext {
        MessageContext::new(
            "acme",
            MailboxRule::Fixed("jdoe".into()),
            "2024-06-01T12:00:00Z".parse().unwrap(),
        )
        .with_internal_domains(["clinic.example"])
    }

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    const MULTIPART: &str = "\
Message-ID: <abc123@clinic.example>
Date: Tue, 14 May 2024 09:30:00 -0500
From: \"Dr. Ann Lee\" <ann.lee@clinic.example>
To: Records <records@clinic.example>, Team: bob@Mail.Clinic.Example, Carol <carol@clinic.example>;
Cc: partner@vendor.example
Subject: =?utf-8?q?Discharge_summary?=
In-Reply-To: <parent@clinic.example>
References: <root@clinic.example> <parent@clinic.example>
Received: from mx.clinic.example by mail.clinic.example; Tue, 14 May 2024 14:31:05 +0000
Received: from out.clinic.example by mx.clinic.example; Tue, 14 May 2024 14:30:59 +0000
X-Gmail-Labels: Inbox,\"Patients, 2024\",Important
Keywords: urgent, Inbox
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=\"BOUND\"

--BOUND
Content-Type: multipart/alternative; boundary=\"ALT\"

--ALT
Content-Type: text/plain; charset=utf-8

Please   find the
summary attached.\u{a0}Thanks.
--ALT
Content-Type: text/html; charset=utf-8

<p>Please find the <b>summary</b> attached.</p>
--ALT--
--BOUND
Content-Type: application/pdf; name=\"summary.pdf\"
Content-Disposition: attachment; filename=\"summary.pdf\"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IK
--BOUND
Content-Type: text/csv
Content-Disposition: attachment; filename=\"labs.csv\"

a,b
1,2
--BOUND--
";

    #[test]
    fn multipart_with_attachments() {
        let ctx = ctx();
        let raw = crlf(MULTIPART);
        let m = parse_message(&raw, &ctx).unwrap();
        assert_eq!(m.message_id, "abc123@clinic.example");
        assert_eq!(m.tenant, "acme");
        assert_eq!(m.mailbox, "jdoe");
        assert_eq!(m.size_bytes, raw.len() as u64);
        let from = m.from.as_ref().unwrap();
        assert_eq!(from.name.as_deref(), Some("Dr. Ann Lee"));
        assert_eq!(from.address, "ann.lee@clinic.example");
        let to: Vec<_> = m.to.iter().map(|a| a.address.as_str()).collect();
        assert_eq!(
            to,
            [
                "records@clinic.example",
                "bob@Mail.Clinic.Example",
                "carol@clinic.example"
            ]
        );
        assert_eq!(m.cc, [Address::new("partner@vendor.example")]);
        assert_eq!(m.subject.as_deref(), Some("Discharge summary"));
        assert_eq!(
            m.sent_at,
            Some("2024-05-14T14:30:00Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(
            m.received_at,
            Some("2024-05-14T14:31:05Z".parse::<DateTime<Utc>>().unwrap())
        );
        assert_eq!(m.in_reply_to.as_deref(), Some("parent@clinic.example"));
        assert_eq!(
            m.references,
            ["root@clinic.example", "parent@clinic.example"]
        );
        assert_eq!(m.thread_id.as_deref(), Some("root@clinic.example"));
        assert_eq!(m.labels, ["Inbox", "Patients, 2024", "Important", "urgent"]);
        assert_eq!(
            m.attachments,
            [
                Attachment {
                    name: "summary.pdf".into(),
                    media_type: "application/pdf".into(),
                    size_bytes: 15,
                },
                Attachment {
                    name: "labs.csv".into(),
                    media_type: "text/csv".into(),
                    size_bytes: 8,
                },
            ]
        );
        assert_eq!(
            m.excerpt.as_deref(),
            Some("Please find the summary attached. Thanks.")
        );
        // Sender internal, one recipient outside: outbound.
        assert_eq!(m.direction, Direction::Outbound);
        assert_eq!(ctx.warnings.snapshot(), WarningCounts::default());
    }

    #[test]
    fn missing_message_id_gets_a_stable_synthetic_id() {
        let ctx = ctx();
        let raw = crlf("From: a@x.example\nDate: Mon, 3 Jun 2024 10:00:00 +0000\n\nHello\n");
        let a = parse_message(&raw, &ctx).unwrap();
        let b = parse_message(&raw, &ctx).unwrap();
        assert_eq!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with("sha256:"), "{}", a.message_id);
        assert_eq!(a.message_id.len(), "sha256:".len() + 32);
        assert_eq!(a.thread_id.as_deref(), Some(a.message_id.as_str()));
        let mut other = raw.clone();
        other.extend_from_slice(b"more\r\n");
        assert_ne!(
            parse_message(&other, &ctx).unwrap().message_id,
            a.message_id
        );
        assert_eq!(ctx.warnings.snapshot().missing_message_id, 3);
        // Sender and recipients unknown to us: no direction.
        assert_eq!(a.direction, Direction::Unknown);
    }

    #[test]
    fn bogus_and_future_dates_are_refused() {
        let ctx = ctx();
        let msg = |date: &str| {
            crlf(&format!(
                "Message-ID: <d@x>\nDate: {date}\nFrom: a@x.example\n\nbody\n"
            ))
        };
        // The Exchange/PST zero date, as the Enron corpus has it (= 1980-01-01T00:00:00Z).
        let m = parse_message(&msg("Mon, 31 Dec 1979 16:00:00 -0800 (PST)"), &ctx).unwrap();
        assert_eq!(m.sent_at, None);
        assert_eq!(m.created_date(), None);
        let m = parse_message(&msg("Tue, 1 Jan 1980 00:00:00 +0000"), &ctx).unwrap();
        assert_eq!(m.sent_at, None);
        let m = parse_message(&msg("Thu, 1 Jan 1970 00:00:00 +0000"), &ctx).unwrap();
        assert_eq!(m.sent_at, None);
        // More than two days after "now" (2024-06-01T12:00Z).
        let m = parse_message(&msg("Mon, 3 Jun 2024 12:00:01 +0000"), &ctx).unwrap();
        assert_eq!(m.sent_at, None);
        assert_eq!(ctx.warnings.snapshot().implausible_date, 4);
        // Within two days, and an ordinary old date: kept.
        let m = parse_message(&msg("Mon, 3 Jun 2024 12:00:00 +0000"), &ctx).unwrap();
        assert!(m.sent_at.is_some());
        let m = parse_message(&msg("Wed, 2 Jan 1980 00:00:00 +0000"), &ctx).unwrap();
        assert!(m.sent_at.is_some());
        // Not a date at all.
        let m = parse_message(&msg("4/20/01"), &ctx).unwrap();
        assert_eq!(m.sent_at, None);
        let w = ctx.warnings.snapshot();
        assert_eq!((w.implausible_date, w.unparseable_date), (4, 1));
    }

    #[test]
    fn enron_style_headers() {
        let ctx = MessageContext::new(
            "enron",
            MailboxRule::FromXOrigin {
                fallback: "unknown".into(),
            },
            "2024-01-01T00:00:00Z".parse().unwrap(),
        )
        .with_internal_domains(["enron.com"]);
        let raw = crlf(
            "Message-ID: <1.JavaMail.evans@thyme>\nDate: Wed, 20 Jun 2001 12:02:00 -0700 (PDT)\n\
             From: someone@outside.example\nTo: kean.steve@enron.com\nSubject: Contacts\n\
             X-Folder: \\JSKILLIN (Non-Privileged)\\Deleted Items\nX-Origin: Skilling-J\n\n\
             <b>not html</b> body\n",
        );
        let m = parse_message(&raw, &ctx).unwrap();
        assert_eq!(m.mailbox, "skilling-j");
        assert_eq!(m.custodian.as_deref(), Some("skilling-j"));
        assert_eq!(
            m.folder.as_deref(),
            Some("JSKILLIN (Non-Privileged)/Deleted Items")
        );
        assert_eq!(m.direction, Direction::Inbound);
        assert_eq!(m.excerpt.as_deref(), Some("<b>not html</b> body"));
    }

    #[test]
    fn html_only_body_is_stripped_and_excerpt_is_bounded() {
        let ctx = ctx().with_excerpt_chars(12);
        let raw = crlf(
            "Message-ID: <h@x>\nFrom: a@clinic.example\nTo: b@clinic.example\n\
             Content-Type: text/html; charset=utf-8\n\n<html><body><p>Ünïcödé   text</p>\
             <p>second paragraph</p></body></html>\n",
        );
        let m = parse_message(&raw, &ctx).unwrap();
        assert_eq!(m.excerpt.as_deref(), Some("Ünïcödé text"));
        assert!(m.attachments.is_empty());
        assert_eq!(m.direction, Direction::Internal);
        let m = parse_message(&raw, &ctx.clone().with_excerpt_chars(0)).unwrap();
        assert_eq!(m.excerpt, None);
    }

    #[test]
    fn folder_falls_back_to_hint_then_context() {
        let ctx = ctx().with_folder("Archive");
        let raw = crlf("Message-ID: <f@x>\nFrom: a@b.example\n\nx\n");
        assert_eq!(
            parse_in_folder(&raw, &ctx, Some("Sent"))
                .unwrap()
                .folder
                .as_deref(),
            Some("Sent")
        );
        assert_eq!(
            parse_message(&raw, &ctx).unwrap().folder.as_deref(),
            Some("Archive")
        );
    }

    #[test]
    fn garbage_is_refused_without_content_in_the_error() {
        let ctx = ctx();
        let err = parse_message(b"\x00\x01\x02\xff\xfe", &ctx).unwrap_err();
        assert!(err.is_bad_input());
        assert_eq!(err.to_string(), "cannot parse message: no header block");
        // An mbox envelope line is not part of the message.
        let raw = b"From a@b Mon May  6 10:00:00 2024\nMessage-ID: <e@x>\n\nhi\n";
        let m = parse_message(raw, &ctx).unwrap();
        assert_eq!((m.message_id.as_str(), m.size_bytes), ("e@x", 22));
        let err = parse_message(b"", &ctx).unwrap_err();
        assert!(err.is_bad_input());

        let small = ctx.clone().with_max_message_bytes(10);
        let err = parse_message(MULTIPART.as_bytes(), &small).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 10, .. }), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_message(&raw, &ctx());
        }

        #[test]
        fn random_bodies_and_mime_never_panic(
            content_type in "text/plain|text/html|multipart/mixed; boundary=b|multipart/alternative; boundary=b|message/rfc822",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let mut raw = format!("Subject: x\r\nContent-Type: {content_type}\r\n\r\n").into_bytes();
            raw.extend_from_slice(&body);
            let m = parse_message(&raw, &ctx().with_excerpt_chars(64)).unwrap();
            proptest::prop_assert!(m.excerpt.as_ref().is_none_or(|e| e.chars().count() <= 64));
        }

        #[test]
        fn header_like_noise_never_panics(
            lines in proptest::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,60}|[ -~]{0,40}|--[A-Za-z]{0,8}", 0..40)
        ) {
            let raw = lines.join("\r\n");
            if let Ok(m) = parse_message(raw.as_bytes(), &ctx()) {
                proptest::prop_assert_eq!(m.size_bytes, raw.len() as u64);
                proptest::prop_assert!(!m.message_id.is_empty());
            }
        }
    }
}
