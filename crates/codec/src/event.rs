//! `RetentionEventMessage` ⇄ `org.retain.v1.RetentionEvent`.

use chrono::{DateTime, NaiveDate, Utc};
use retain_model::{ContractAction, EventKind, RetentionEvent};

use crate::error::Result;
use crate::framing::Framing;
use crate::registry::{SchemaRegistry, decode_value, encode_value};
use crate::schemas::RecordSchema;
use crate::value::{Fields, date, nullable, opt_string, record, string, symbol, timestamp};

/// The released v1 `RetentionEvent` schema (seven event types), kept so data written with it
/// stays readable: [`SchemaRegistry::new`] registers it.
pub const RETENTION_EVENT_V1: &str =
    include_str!("../../../schemas/history/retention_event.v1.avsc");

/// The keys a retention event is matched to records by; every one is optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EventKeys {
    /// The organisation.
    pub tenant: Option<String>,
    /// The policy or document that was superseded.
    pub document_id: Option<String>,
    /// The business associate whose contract the event concerns.
    pub ba_id: Option<String>,
    /// The patient's medical record number. PHI.
    pub patient_mrn: Option<String>,
    /// A conversation or thread id.
    pub thread_id: Option<String>,
    /// A custodian (or mailbox).
    pub custodian: Option<String>,
    /// One message id.
    pub message_id: Option<String>,
}

/// The kinds of event on the retention-events topic (the `EventType` enum symbols): the clock
/// events the policy engine knows ([`EventKind`]) and three that Retain handles around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A clock event the policy engine schedules with.
    Clock(EventKind),
    /// The patient's date of birth became known (the event's `date` is the birth date).
    BirthDateLearned,
    /// A patient's access request (45 CFR 164.524) was opened: their records are preserved.
    AccessRequestOpened,
    /// A patient's access request was fulfilled.
    AccessRequestFulfilled,
}

impl EventType {
    /// Every type, in schema symbol order.
    pub const ALL: [EventType; 10] = [
        EventType::Clock(EventKind::Superseded),
        EventType::Clock(EventKind::AuthorizationRevoked),
        EventType::Clock(EventKind::ContractTerminated),
        EventType::Clock(EventKind::Discharged),
        EventType::Clock(EventKind::Encounter),
        EventType::Clock(EventKind::AmendmentRequested),
        EventType::Clock(EventKind::AmendmentResolved),
        EventType::BirthDateLearned,
        EventType::AccessRequestOpened,
        EventType::AccessRequestFulfilled,
    ];

    /// The stable code (the enum symbol).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Clock(k) => k.as_str(),
            EventType::BirthDateLearned => "birth_date_learned",
            EventType::AccessRequestOpened => "access_request_opened",
            EventType::AccessRequestFulfilled => "access_request_fulfilled",
        }
    }

    /// Parses a stable code.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == code)
    }
}

impl From<EventKind> for EventType {
    fn from(k: EventKind) -> Self {
        EventType::Clock(k)
    }
}

/// A retention event as it travels on its topic: the event, its matching keys and provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionEventMessage {
    /// Unique id assigned by the source system.
    pub event_id: String,
    /// What happened.
    pub kind: EventType,
    /// When it happened (for `birth_date_learned`: the date of birth).
    pub date: NaiveDate,
    /// For `contract_terminated`: what the contract requires.
    pub action: Option<ContractAction>,
    /// Which records it applies to.
    pub keys: EventKeys,
    /// When Retain recorded it (whole microseconds on the wire).
    pub recorded_at: DateTime<Utc>,
    /// Where it came from (e.g. `ehr-adt`, `contracts`, `manual:jdoe`).
    pub source: String,
}

impl RetentionEventMessage {
    /// The clock event the policy engine schedules with, for the clock types.
    pub fn clock_event(&self) -> Option<RetentionEvent> {
        match self.kind {
            EventType::Clock(kind) => Some(RetentionEvent {
                kind,
                date: self.date,
                action: self.action,
            }),
            _ => None,
        }
    }
}

/// The stable code of a contract action (the enum symbol).
pub fn action_code(a: ContractAction) -> &'static str {
    match a {
        ContractAction::Return => "return",
        ContractAction::Destroy => "destroy",
        ContractAction::Transfer => "transfer",
    }
}

/// Parses a contract action's code.
pub fn parse_action(code: &str) -> Option<ContractAction> {
    [
        ContractAction::Return,
        ContractAction::Destroy,
        ContractAction::Transfer,
    ]
    .into_iter()
    .find(|a| action_code(*a) == code)
}

/// Encodes a retention event with the current `RetentionEvent` schema.
pub fn encode_retention_event(e: &RetentionEventMessage, framing: Framing) -> Result<Vec<u8>> {
    let k = &e.keys;
    let value = record(vec![
        ("event_id", string(&e.event_id)),
        ("type", symbol(e.kind.as_str())),
        ("date", date(e.date)),
        ("action", nullable(e.action.map(|a| symbol(action_code(a))))),
        ("tenant", opt_string(k.tenant.as_deref())),
        ("document_id", opt_string(k.document_id.as_deref())),
        ("ba_id", opt_string(k.ba_id.as_deref())),
        ("patient_mrn", opt_string(k.patient_mrn.as_deref())),
        ("thread_id", opt_string(k.thread_id.as_deref())),
        ("custodian", opt_string(k.custodian.as_deref())),
        ("message_id", opt_string(k.message_id.as_deref())),
        ("recorded_at", timestamp(e.recorded_at)),
        ("source", string(&e.source)),
    ]);
    encode_value(RecordSchema::RetentionEvent, value, framing)
}

/// Decodes a framed `RetentionEvent` written with any schema version `registry` knows.
pub fn decode_retention_event(
    input: &[u8],
    registry: &SchemaRegistry,
) -> Result<RetentionEventMessage> {
    let kind = RecordSchema::RetentionEvent;
    let value = decode_value(input, kind, registry)?;
    let mut f = Fields::top(kind.name(), value)?;
    let code = f.symbol("type")?;
    let event_kind = EventType::parse(&code)
        .ok_or_else(|| f.error("type", format!("unknown event type {code:?}")))?;
    let action = match f.opt_symbol("action")? {
        None => None,
        Some(code) => Some(
            parse_action(&code)
                .ok_or_else(|| f.error("action", format!("unknown contract action {code:?}")))?,
        ),
    };
    Ok(RetentionEventMessage {
        event_id: f.string("event_id")?,
        kind: event_kind,
        date: f.date("date")?,
        action,
        keys: EventKeys {
            tenant: f.opt_string("tenant")?,
            document_id: f.opt_string("document_id")?,
            ba_id: f.opt_string("ba_id")?,
            patient_mrn: f.opt_string("patient_mrn")?,
            thread_id: f.opt_string("thread_id")?,
            custodian: f.opt_string("custodian")?,
            message_id: f.opt_string("message_id")?,
        },
        recorded_at: f.timestamp("recorded_at")?,
        source: f.string("source")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    fn enum_symbols(schema: &Schema, field: &str) -> Vec<String> {
        let Schema::Record(r) = schema else {
            panic!("a record")
        };
        let f = r.fields.iter().find(|f| f.name == field).unwrap();
        match &f.schema {
            Schema::Enum(e) => e.symbols.clone(),
            Schema::Union(u) => match &u.variants()[1] {
                Schema::Enum(e) => e.symbols.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn enum_symbols_are_the_model_codes_in_order() {
        let schema = RecordSchema::RetentionEvent.schema();
        let kinds: Vec<&str> = EventType::ALL.map(EventType::as_str).to_vec();
        assert_eq!(enum_symbols(schema, "type"), kinds);
        // The engine's kinds come first, in the engine's order.
        let clock: Vec<&str> = EventKind::ALL.map(EventKind::as_str).to_vec();
        assert_eq!(kinds[..clock.len()], clock[..]);
        assert_eq!(
            enum_symbols(schema, "action"),
            ["return", "destroy", "transfer"]
        );
        for code in ["return", "destroy", "transfer"] {
            assert_eq!(parse_action(code).map(action_code), Some(code));
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let registry = SchemaRegistry::new();
        for kind in EventType::ALL {
            let e = RetentionEventMessage {
                event_id: format!("ev-{}", kind.as_str()),
                kind,
                date: "2024-02-29".parse().unwrap(),
                action: (kind == EventKind::ContractTerminated.into())
                    .then_some(ContractAction::Destroy),
                keys: EventKeys {
                    ba_id: Some("ba-7".into()),
                    ..EventKeys::default()
                },
                recorded_at: "2024-03-01T12:00:00.123456Z".parse().unwrap(),
                source: "contracts".into(),
            };
            let bytes = encode_retention_event(&e, Framing::SingleObject).unwrap();
            let back = decode_retention_event(&bytes, &registry).unwrap();
            assert_eq!(
                back.clock_event().is_some(),
                matches!(kind, EventType::Clock(_))
            );
            assert_eq!(back, e);
        }
    }
}
