//! The codec as the pipeline uses it: round trips in both framings, hostile input, schema
//! evolution through the registry, and the shipped `.avsc` files themselves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;
use retain_codec::{
    ClassifiedRecord, Error, EventKeys, Framing, Lineage, RecordSchema, RetentionEventMessage,
    SchemaRegistry, Value, decode_classified_record, decode_mail_message, decode_retention_event,
    decode_value, encode_classified_record, encode_mail_message, encode_retention_event,
    encode_value, fingerprint, schemas,
};
use retain_model::{
    Address, Attachment, Category, Classification, ContractAction, Direction, EventKind,
    MailMessage, PhiIndicators,
};

const CONFLUENT_ID: u32 = 41;

fn registry() -> SchemaRegistry {
    let mut r = SchemaRegistry::new();
    r.register_id(CONFLUENT_ID, schemas::mail_message().clone())
        .unwrap();
    r.register_id(CONFLUENT_ID + 1, schemas::classified_record().clone())
        .unwrap();
    r.register_id(CONFLUENT_ID + 2, schemas::retention_event().clone())
        .unwrap();
    r
}

const FRAMINGS: [Framing; 2] = [
    Framing::SingleObject,
    Framing::Confluent {
        schema_id: CONFLUENT_ID,
    },
];

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn full_message() -> MailMessage {
    MailMessage {
        message_id: "CAF=1234@mail.example.org".into(),
        tenant: "st-mary".into(),
        mailbox: "jdoe@st-mary.example".into(),
        custodian: Some("Jane Doe".into()),
        direction: Direction::Inbound,
        from: Some(Address {
            name: Some("Dr. Müller – Kardiologie".into()),
            address: "mueller@clinic.example".into(),
        }),
        to: vec![
            Address::new("jdoe@st-mary.example"),
            Address {
                name: Some("患者サービス".into()),
                address: "service@st-mary.example".into(),
            },
        ],
        cc: vec![Address::new("records@st-mary.example")],
        bcc: vec![Address::new("audit@st-mary.example")],
        subject: Some("Re: discharge summary 🏥".into()),
        sent_at: Some(ts("2024-02-29T23:59:59.999999Z")),
        received_at: Some(ts("2024-03-01T00:00:01Z")),
        size_bytes: 1_234_567,
        folder: Some("Inbox/Compliance".into()),
        labels: vec!["important".into(), "clinical".into()],
        thread_id: Some("thread-9".into()),
        in_reply_to: Some("prev@mail.example.org".into()),
        references: vec![
            "first@mail.example.org".into(),
            "prev@mail.example.org".into(),
        ],
        attachments: vec![
            Attachment {
                name: "summary.pdf".into(),
                media_type: "application/pdf".into(),
                size_bytes: 99_000,
            },
            Attachment {
                name: String::new(),
                media_type: "application/octet-stream".into(),
                size_bytes: 0,
            },
        ],
        excerpt: Some("Patient discharged on 2024-02-28, follow-up in 2 weeks.".into()),
    }
}

#[test]
fn full_and_minimal_messages_round_trip_in_both_framings() {
    let registry = registry();
    for message in [full_message(), MailMessage::new("m@x", "mb")] {
        for framing in FRAMINGS {
            let bytes = encode_mail_message(&message, framing).unwrap();
            match framing {
                Framing::SingleObject => {
                    assert_eq!(bytes[..2], [0xC3, 0x01]);
                    assert_eq!(
                        bytes[2..10],
                        RecordSchema::MailMessage.fingerprint().to_le_bytes()
                    );
                }
                Framing::Confluent { schema_id } => {
                    assert_eq!(bytes[0], 0);
                    assert_eq!(bytes[1..5], schema_id.to_be_bytes());
                }
            }
            let back = decode_mail_message(&bytes, &registry).unwrap();
            assert_eq!(back, message, "{framing:?}");
        }
    }
}

#[test]
fn sub_microsecond_precision_is_truncated_not_rounded() {
    let mut m = MailMessage::new("m@x", "mb");
    m.sent_at = Some(ts("1969-12-31T23:59:59.999999999Z"));
    let bytes = encode_mail_message(&m, Framing::SingleObject).unwrap();
    let back = decode_mail_message(&bytes, &registry()).unwrap();
    assert_eq!(back.sent_at, Some(ts("1969-12-31T23:59:59.999999Z")));
}

fn classified(message: MailMessage) -> ClassifiedRecord {
    ClassifiedRecord::new(
        message,
        Classification {
            category: Category::new(Category::CLINICAL).unwrap(),
            rule: Some(Arc::from("clinical.discharge")),
            confidence: 0.9,
            forced: false,
            phi: PhiIndicators {
                mrn: true,
                icd10: true,
                dob: false,
                patient_terms: true,
            },
            patient_refs: vec!["MRN-000123".into()],
            also_matched: vec![Arc::from("admin.scheduling")],
            policy_version: Arc::from("sha256:0f1e"),
        },
        "retain-classifier 0.1.0",
        Lineage {
            topic: "retain.mail.v1".into(),
            partition: 7,
            offset: 1 << 40,
        },
    )
}

#[test]
fn classified_records_round_trip_without_the_excerpt() {
    let registry = registry();
    let record = classified(full_message());
    assert_eq!(record.message.excerpt, None);
    for framing in [
        Framing::SingleObject,
        Framing::Confluent {
            schema_id: CONFLUENT_ID + 1,
        },
    ] {
        let bytes = encode_classified_record(&record, framing).unwrap();
        assert_eq!(decode_classified_record(&bytes, &registry).unwrap(), record);
    }
    let mut unclassified = classified(MailMessage::new("m@x", "mb"));
    unclassified.classification = Classification {
        category: Category::unclassified(),
        rule: None,
        confidence: 0.0,
        forced: false,
        phi: PhiIndicators::default(),
        patient_refs: vec![],
        also_matched: vec![],
        policy_version: Arc::from("sha256:0f1e"),
    };
    let bytes = encode_classified_record(&unclassified, Framing::SingleObject).unwrap();
    assert_eq!(
        decode_classified_record(&bytes, &registry).unwrap(),
        unclassified
    );
}

#[test]
fn retention_events_round_trip_in_both_framings() {
    let registry = registry();
    let event = RetentionEventMessage {
        event_id: "contracts:ba-7:termination".into(),
        kind: EventKind::ContractTerminated.into(),
        date: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(),
        action: Some(ContractAction::Return),
        keys: EventKeys {
            tenant: Some("st-mary".into()),
            ba_id: Some("ba-7".into()),
            ..EventKeys::default()
        },
        recorded_at: ts("2025-07-01T08:00:00.000001Z"),
        source: "contracts".into(),
    };
    for framing in [
        Framing::SingleObject,
        Framing::Confluent {
            schema_id: CONFLUENT_ID + 2,
        },
    ] {
        let bytes = encode_retention_event(&event, framing).unwrap();
        assert_eq!(decode_retention_event(&bytes, &registry).unwrap(), event);
    }
}

#[test]
fn a_message_cannot_be_read_as_another_record() {
    let bytes = encode_mail_message(&full_message(), Framing::SingleObject).unwrap();
    let err = decode_retention_event(&bytes, &registry()).unwrap_err();
    assert!(matches!(err, Error::WrongWriterSchema { .. }), "{err}");
    assert!(err.is_bad_input());
}

// ---- hostile input ---------------------------------------------------------------------------

#[test]
fn every_truncation_is_an_error_naming_the_problem() {
    let registry = registry();
    for framing in FRAMINGS {
        let bytes = encode_mail_message(&full_message(), framing).unwrap();
        for len in 0..bytes.len() {
            let err = decode_mail_message(&bytes[..len], &registry)
                .expect_err("a truncated message must not decode");
            assert!(err.is_bad_input(), "{err}");
            let text = err.to_string();
            assert!(text.starts_with("MailMessage: "), "{text}");
            match len {
                0 => assert!(matches!(err, Error::Empty { .. }), "{text}"),
                l if l < framing.header(0).len() => {
                    assert!(matches!(err, Error::TruncatedHeader { .. }), "{text}")
                }
                _ => assert!(
                    matches!(err, Error::Malformed { .. }) && text.contains("truncated"),
                    "{len}: {text}"
                ),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_mail_message(&full_message(), Framing::SingleObject).unwrap();
    bytes.push(0);
    let err = decode_mail_message(&bytes, &registry()).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 bytes left over after the datum"),
        "{err}"
    );
}

/// Avro's zig-zag variable-length encoding of a long.
fn varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

#[test]
fn a_huge_declared_count_is_refused_without_allocating_it() {
    // A valid header, an empty message_id/tenant/mailbox, custodian null, direction 0, from null,
    // then `to` claiming 500 million addresses: below apache-avro's own 512 Mi limit, so without
    // the structural check it would reserve 28 GB for them and abort the process.
    let mut bytes = Framing::SingleObject.header(RecordSchema::MailMessage.fingerprint());
    bytes.extend([0, 0, 0, 0, 0, 0]);
    bytes.extend(varint(500_000_000));
    let err = decode_mail_message(&bytes, &registry()).unwrap_err();
    match &err {
        Error::Malformed {
            offset,
            field,
            problem,
            ..
        } => {
            assert_eq!((*offset, field.as_str()), (16, "to"));
            assert!(problem.contains("block count"), "{problem}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn plain_json_and_unknown_magic_name_the_bytes_seen() {
    let err = decode_mail_message(br#"{"message_id":"x"}"#, &registry()).unwrap_err();
    assert!(
        err.to_string().contains("input starts with [7b, 22]"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let registry = registry();
        if let Err(e) = decode_mail_message(&bytes, &registry) {
            prop_assert!(e.is_bad_input(), "{}", e);
        }
        let _ = decode_classified_record(&bytes, &registry);
        let _ = decode_retention_event(&bytes, &registry);
    }

    #[test]
    fn random_datums_behind_a_valid_header_never_panic(
        datum in proptest::collection::vec(any::<u8>(), 0..256),
        kind in proptest::sample::select(RecordSchema::ALL.to_vec()),
    ) {
        let registry = registry();
        let mut bytes = Framing::SingleObject.header(kind.fingerprint());
        bytes.extend(&datum);
        if let Err(e) = decode_value(&bytes, kind, &registry) {
            prop_assert!(e.is_bad_input(), "{}", e);
        }
        let _ = decode_mail_message(&bytes, &registry);
        let _ = decode_classified_record(&bytes, &registry);
        let _ = decode_retention_event(&bytes, &registry);
    }

    #[test]
    fn corrupted_messages_never_panic(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encode_mail_message(&full_message(), Framing::SingleObject).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Err(e) = decode_mail_message(&bytes, &registry()) {
            prop_assert!(e.is_bad_input(), "{}", e);
        }
    }
}

// ---- property round trips --------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9@._-]{1,24}",
        any::<String>(),
        "\\PC{0,40}",
    ]
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // Year 1 to 9999, whole microseconds (what the wire carries).
    (-62_135_596_800_000_000_i64..253_402_300_800_000_000)
        .prop_map(|m| DateTime::from_timestamp_micros(m).unwrap())
}

fn address() -> impl Strategy<Value = Address> {
    (proptest::option::of(text()), text()).prop_map(|(name, address)| Address { name, address })
}

fn addresses() -> impl Strategy<Value = Vec<Address>> {
    proptest::collection::vec(address(), 0..4)
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(text(), 0..4)
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(i64::MAX as u64), 0..=i64::MAX as u64]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::Inbound),
        Just(Direction::Outbound),
        Just(Direction::Internal),
        Just(Direction::Unknown),
    ]
}

prop_compose! {
    fn message()(
        ids in (text(), text(), text(), proptest::option::of(text())),
        direction in direction(),
        from in proptest::option::of(address()),
        recipients in (addresses(), addresses(), addresses()),
        subject in proptest::option::of(text()),
        times in (proptest::option::of(timestamp()), proptest::option::of(timestamp())),
        size_bytes in size(),
        folder in proptest::option::of(text()),
        labels in texts(),
        thread in (proptest::option::of(text()), proptest::option::of(text()), texts()),
        attachments in proptest::collection::vec(
            (text(), text(), size()).prop_map(|(name, media_type, size_bytes)| Attachment {
                name,
                media_type,
                size_bytes,
            }),
            0..3,
        ),
        excerpt in proptest::option::of(text()),
    ) -> MailMessage {
        MailMessage {
            message_id: ids.0,
            tenant: ids.1,
            mailbox: ids.2,
            custodian: ids.3,
            direction,
            from,
            to: recipients.0,
            cc: recipients.1,
            bcc: recipients.2,
            subject,
            sent_at: times.0,
            received_at: times.1,
            size_bytes,
            folder,
            labels,
            thread_id: thread.0,
            in_reply_to: thread.1,
            references: thread.2,
            attachments,
            excerpt,
        }
    }
}

prop_compose! {
    fn classification()(
        category in "[a-z][a-z0-9_]{0,20}",
        rule in proptest::option::of(text()),
        confidence in 0.0_f32..=1.0,
        forced in any::<bool>(),
        phi in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        patient_refs in texts(),
        also_matched in texts(),
        policy_version in text(),
    ) -> Classification {
        Classification {
            category: Category::new(&category).unwrap(),
            rule: rule.map(Arc::from),
            confidence,
            forced,
            phi: PhiIndicators { mrn: phi.0, icd10: phi.1, dob: phi.2, patient_terms: phi.3 },
            patient_refs,
            also_matched: also_matched.into_iter().map(Arc::from).collect(),
            policy_version: Arc::from(policy_version),
        }
    }
}

proptest! {
    #[test]
    fn random_messages_round_trip(m in message(), confluent in any::<bool>()) {
        let framing = if confluent { FRAMINGS[1] } else { FRAMINGS[0] };
        let bytes = encode_mail_message(&m, framing).unwrap();
        prop_assert_eq!(decode_mail_message(&bytes, &registry()).unwrap(), m);
    }

    #[test]
    fn random_classified_records_round_trip(
        m in message(),
        c in classification(),
        version in text(),
        lineage in (text(), any::<i32>(), any::<i64>()),
    ) {
        let r = ClassifiedRecord::new(m, c, version, Lineage {
            topic: lineage.0,
            partition: lineage.1,
            offset: lineage.2,
        });
        let bytes = encode_classified_record(&r, Framing::SingleObject).unwrap();
        prop_assert_eq!(decode_classified_record(&bytes, &registry()).unwrap(), r);
    }

    #[test]
    fn random_retention_events_round_trip(
        id in text(),
        kind in proptest::sample::select(retain_codec::EventType::ALL.to_vec()),
        days in -719_162_i32..2_932_896, // 0001-01-01 ..= 9999-12-31
        action in proptest::option::of(proptest::sample::select(vec![
            ContractAction::Return, ContractAction::Destroy, ContractAction::Transfer,
        ])),
        keys in (
            proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()),
            proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text()),
            proptest::option::of(text()),
        ),
        recorded_at in timestamp(),
        source in text(),
    ) {
        let e = RetentionEventMessage {
            event_id: id,
            kind,
            date: NaiveDate::from_epoch_days(days).unwrap(),
            action,
            keys: EventKeys {
                tenant: keys.0,
                document_id: keys.1,
                ba_id: keys.2,
                patient_mrn: keys.3,
                thread_id: keys.4,
                custodian: keys.5,
                message_id: keys.6,
            },
            recorded_at,
            source,
        };
        let bytes = encode_retention_event(&e, Framing::SingleObject).unwrap();
        prop_assert_eq!(decode_retention_event(&bytes, &registry()).unwrap(), e);
    }
}

// ---- schema evolution ------------------------------------------------------------------------

/// Retention events written with the released v1 schema (seven types) still decode after v2
/// appended `birth_date_learned`, `access_request_opened` and `access_request_fulfilled`.
#[test]
fn retention_events_written_with_v1_decode_with_the_v2_reader() {
    let v1 = retain_codec::Schema::parse_str(retain_codec::RETENTION_EVENT_V1).unwrap();
    let v1_fp = fingerprint(&v1);
    assert_ne!(v1_fp, RecordSchema::RetentionEvent.fingerprint());
    let value = rec(vec![
        ("event_id", s("ehr:adt:1")),
        ("type", Value::Enum(3, "discharged".into())),
        ("date", Value::Date(19_800)),
        ("action", none()),
        ("tenant", none()),
        ("document_id", none()),
        ("ba_id", none()),
        ("patient_mrn", some(s("12345678"))),
        ("thread_id", none()),
        ("custodian", none()),
        ("message_id", none()),
        ("recorded_at", Value::TimestampMicros(1_700_000_000_000_000)),
        ("source", s("ehr-adt")),
    ]);
    let mut bytes = Framing::SingleObject.header(v1_fp);
    bytes.extend(retain_codec::apache_avro::to_avro_datum(&v1, value).unwrap());
    let e = decode_retention_event(&bytes, &SchemaRegistry::new()).unwrap();
    assert_eq!(e.kind, EventKind::Discharged.into());
    assert_eq!(e.keys.patient_mrn.as_deref(), Some("12345678"));
    assert_eq!(
        e.clock_event().unwrap().date,
        NaiveDate::from_epoch_days(19_800).unwrap()
    );
    // And a v2-only type round-trips with the current schema.
    let learned = RetentionEventMessage {
        kind: retain_codec::EventType::BirthDateLearned,
        action: None,
        ..e
    };
    let bytes = encode_retention_event(&learned, Framing::SingleObject).unwrap();
    assert_eq!(
        decode_retention_event(&bytes, &SchemaRegistry::new()).unwrap(),
        learned
    );
}

const MAIL_MESSAGE_V0: &str = include_str!("fixtures/mail_message_v0.avsc");

/// A message as a v0 producer writes it (no custodian, labels, thread_id, attachments).
fn v0_value() -> Value {
    let s = |v: &str| Value::String(v.into());
    let none = || Value::Union(0, Box::new(Value::Null));
    let some = |v: Value| Value::Union(1, Box::new(v));
    let addr = |a: &str| Value::Record(vec![("name".into(), none()), ("address".into(), s(a))]);
    Value::Record(vec![
        ("message_id".into(), s("old@mail")),
        ("tenant".into(), s("st-mary")),
        ("mailbox".into(), s("jdoe")),
        ("direction".into(), Value::Enum(1, "outbound".into())),
        ("from".into(), some(addr("jdoe@st-mary.example"))),
        ("to".into(), Value::Array(vec![addr("a@b.example")])),
        ("cc".into(), Value::Array(vec![])),
        ("bcc".into(), Value::Array(vec![])),
        ("subject".into(), some(s("quarterly report"))),
        (
            "sent_at".into(),
            some(Value::TimestampMicros(1_700_000_000_000_000)),
        ),
        ("received_at".into(), none()),
        ("size_bytes".into(), Value::Long(2048)),
        ("folder".into(), some(s("Sent"))),
        ("in_reply_to".into(), none()),
        ("references".into(), Value::Array(vec![s("r1@mail")])),
        ("excerpt".into(), none()),
    ])
}

fn v0_datum(v0: &retain_codec::Schema) -> Vec<u8> {
    retain_codec::apache_avro::to_avro_datum(v0, v0_value()).unwrap()
}

#[test]
fn data_written_with_the_v0_schema_reads_with_the_new_fields_defaulted() {
    let v0 = retain_codec::Schema::parse_str(MAIL_MESSAGE_V0).unwrap();
    let v0_fp = fingerprint(&v0);
    assert_ne!(v0_fp, RecordSchema::MailMessage.fingerprint());

    let mut single = Framing::SingleObject.header(v0_fp);
    single.extend(v0_datum(&v0));
    let mut confluent = Framing::Confluent { schema_id: 3 }.header(0);
    confluent.extend(v0_datum(&v0));

    // A registry that only knows the current schemas cannot tell what wrote it.
    let err = decode_mail_message(&single, &SchemaRegistry::new()).unwrap_err();
    assert!(
        matches!(err, Error::UnknownFingerprint { fingerprint, .. } if fingerprint == v0_fp),
        "{err}"
    );

    let mut registry = SchemaRegistry::new();
    assert_eq!(registry.register_json(MAIL_MESSAGE_V0).unwrap(), v0_fp);
    registry.register_id(3, v0.clone()).unwrap();

    for bytes in [&single, &confluent] {
        let m = decode_mail_message(bytes, &registry).unwrap();
        // New fields: their defaults.
        assert_eq!(m.custodian, None);
        assert!(m.labels.is_empty());
        assert_eq!(m.thread_id, None);
        assert!(m.attachments.is_empty());
        // Old fields: as written.
        assert_eq!(m.message_id, "old@mail");
        assert_eq!(m.tenant, "st-mary");
        assert_eq!(m.direction, Direction::Outbound);
        assert_eq!(m.from, Some(Address::new("jdoe@st-mary.example")));
        assert_eq!(m.to, vec![Address::new("a@b.example")]);
        assert_eq!(m.subject.as_deref(), Some("quarterly report"));
        assert_eq!(
            m.sent_at,
            DateTime::from_timestamp_micros(1_700_000_000_000_000)
        );
        assert_eq!(m.size_bytes, 2048);
        assert_eq!(m.folder.as_deref(), Some("Sent"));
        assert_eq!(m.references, ["r1@mail"]);
    }
}

#[test]
fn a_reader_schema_without_defaults_for_new_fields_is_a_resolve_error() {
    // The writer lacks `mailbox`, which the current reader requires without a default.
    let json: serde_json::Value = serde_json::from_str(MAIL_MESSAGE_V0).unwrap();
    let mut json = json;
    let fields = json["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "mailbox");
    let writer = retain_codec::Schema::parse_str(&json.to_string()).unwrap();
    let mut registry = SchemaRegistry::new();
    let fp = registry.register(writer.clone());
    let mut value = v0_value();
    if let Value::Record(fields) = &mut value {
        fields.retain(|(name, _)| name != "mailbox");
    }
    let mut bytes = Framing::SingleObject.header(fp);
    bytes.extend(retain_codec::apache_avro::to_avro_datum(&writer, value).unwrap());
    let err = decode_mail_message(&bytes, &registry).unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("mailbox"), "{err}");
    assert!(!err.to_string().contains("quarterly"), "PHI in {err}");
}

// ---- the .avsc files -------------------------------------------------------------------------

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn avsc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    files
}

/// Every record field (at any depth) without a non-empty `doc`, as `Record.field`.
fn undocumented(json: &serde_json::Value, out: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(fields)) = map.get("fields") {
                let record = map["name"].as_str().unwrap_or("?");
                for f in fields {
                    let documented = f["doc"].as_str().is_some_and(|d| !d.trim().is_empty());
                    if !documented {
                        out.push(format!("{record}.{}", f["name"]));
                    }
                }
            }
            if map.contains_key("name")
                && map.contains_key("type")
                && matches!(map["type"].as_str(), Some("record" | "enum" | "fixed"))
                && !map.contains_key("doc")
            {
                out.push(format!("type {}", map["name"]));
            }
            map.values().for_each(|v| undocumented(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| undocumented(v, out)),
        _ => {}
    }
}

/// Nullable fields default to null and arrays/maps to empty, so fields can be added.
fn missing_defaults(json: &serde_json::Value, out: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(fields)) = map.get("fields") {
                for f in fields {
                    let t = &f["type"];
                    let nullable = t.as_array().is_some_and(|u| u[0] == "null");
                    let collection = matches!(t["type"].as_str(), Some("array" | "map"));
                    let ok = match f.get("default") {
                        None => !(nullable || collection),
                        Some(d) if nullable => d.is_null(),
                        Some(d) if collection => {
                            d.as_array().is_some_and(Vec::is_empty)
                                || d.as_object().is_some_and(|o| o.is_empty())
                        }
                        Some(_) => true,
                    };
                    if !ok {
                        out.push(format!("{}.{}", map["name"], f["name"]));
                    }
                }
            }
            map.values().for_each(|v| missing_defaults(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| missing_defaults(v, out)),
        _ => {}
    }
}

#[test]
fn every_avsc_parses_documents_every_field_and_is_embedded() {
    let files = avsc_files();
    assert_eq!(files.len(), RecordSchema::ALL.len(), "{files:?}");
    let embedded: HashMap<&str, RecordSchema> = RecordSchema::ALL
        .iter()
        .map(|k| (k.file_name(), *k))
        .collect();
    for path in files
        .iter()
        .chain([&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mail_message_v0.avsc")])
    {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        retain_codec::Schema::parse_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["namespace"], "org.retain.v1", "{name}");
        let mut out = Vec::new();
        undocumented(&json, &mut out);
        assert!(out.is_empty(), "{name}: no doc on {out:?}");
        missing_defaults(&json, &mut out);
        assert!(
            out.is_empty(),
            "{name}: nullable/array fields without an empty default: {out:?}"
        );
        if path.parent().unwrap().ends_with("fixtures") {
            continue;
        }
        let kind = embedded[name];
        assert_eq!(kind.source(), text, "{name} embedded copy is stale");
        assert_eq!(
            json["name"].as_str().map(|n| format!("org.retain.v1.{n}")),
            Some(kind.full_name().to_owned())
        );
    }
}

#[test]
fn classified_record_carries_every_message_field_but_the_excerpt() {
    let fields = |kind: RecordSchema| -> Vec<serde_json::Value> {
        let json: serde_json::Value = serde_json::from_str(kind.source()).unwrap();
        json["fields"].as_array().unwrap().clone()
    };
    let message: Vec<_> = fields(RecordSchema::MailMessage)
        .into_iter()
        .filter(|f| f["name"] != "excerpt")
        .collect();
    let classified = fields(RecordSchema::ClassifiedRecord);
    assert_eq!(classified[..message.len()], message[..]);
    assert!(classified.iter().all(|f| f["name"] != "excerpt"));
}

#[test]
fn single_object_fingerprints_follow_the_specification() {
    // Logical types are reduced to their primitive, as in Java and Python, so a schema with a
    // timestamp-micros field fingerprints like the same schema with a plain long.
    let plain = schemas::retention_event()
        .canonical_form()
        .replace("{\"type\":\"long\"}", "\"long\"")
        .replace("{\"type\":\"int\"}", "\"int\"");
    assert_eq!(schemas::canonical_form(schemas::retention_event()), plain);
    let reparsed = retain_codec::Schema::parse_str(&plain).unwrap();
    assert_eq!(
        fingerprint(&reparsed),
        RecordSchema::RetentionEvent.fingerprint()
    );
}

// ---- hold, disposal and audit: generic values ------------------------------------------------

fn s(v: &str) -> Value {
    Value::String(v.into())
}
fn none() -> Value {
    Value::Union(0, Box::new(Value::Null))
}
fn some(v: Value) -> Value {
    Value::Union(1, Box::new(v))
}
fn rec(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn generic_values() -> Vec<(RecordSchema, Value)> {
    vec![
        (
            RecordSchema::HoldEvent,
            rec(vec![
                ("hold_id", s("hold-2025-001")),
                ("matter", s("Doe v. St Mary")),
                ("action", Value::Enum(0, "created".into())),
                (
                    "scope",
                    rec(vec![
                        ("custodians", Value::Array(vec![s("jdoe"), s("asmith")])),
                        ("date_from", some(Value::Date(19_000))),
                        ("date_to", none()),
                        ("keywords", Value::Array(vec![s("incident")])),
                        ("categories", Value::Array(vec![s("security_incident")])),
                        ("patient_refs", Value::Array(vec![])),
                        ("sql_predicate", some(s("size_bytes > 0"))),
                    ]),
                ),
                ("actor", s("legal:kim")),
                ("reason", s("litigation notice received")),
                ("approved_by", none()),
                ("at", Value::TimestampMicros(1_750_000_000_000_000)),
            ]),
        ),
        (
            RecordSchema::DisposalCommand,
            rec(vec![
                ("command_id", s("cmd-1")),
                ("manifest_id", s("manifest-2025-06")),
                ("tenant", s("st-mary")),
                ("mailbox", s("jdoe")),
                ("message_id", s("m@x")),
                ("key_hash", s(&"ab".repeat(32))),
                ("category", s("transient")),
                ("rule", some(s("transient.newsletter"))),
                ("policy_version", s("sha256:0f1e")),
                ("retain_until", Value::Date(20_000)),
                ("issued_at", Value::TimestampMicros(1_750_000_000_000_001)),
            ]),
        ),
        (
            RecordSchema::AuditEvent,
            rec(vec![
                ("seq", Value::Long(7)),
                ("at", Value::TimestampMicros(1_750_000_000_000_002)),
                ("actor", s("retain-disposer")),
                ("action", s("disposal_executed")),
                ("target", s("cmd-1")),
                (
                    "details",
                    Value::Map(HashMap::from([
                        ("manifest_id".to_owned(), s("manifest-2025-06")),
                        ("dry_run".to_owned(), s("false")),
                    ])),
                ),
                ("prev_hash", s(&"0".repeat(64))),
                ("hash", s(&"f".repeat(64))),
            ]),
        ),
    ]
}

#[test]
fn hold_disposal_and_audit_values_round_trip() {
    let mut registry = SchemaRegistry::new();
    for (i, (kind, value)) in generic_values().into_iter().enumerate() {
        let id = 100 + i as u32;
        registry.register_id(id, kind.schema().clone()).unwrap();
        for framing in [Framing::SingleObject, Framing::Confluent { schema_id: id }] {
            let bytes = encode_value(kind, value.clone(), framing).unwrap();
            assert_eq!(
                decode_value(&bytes, kind, &registry).unwrap(),
                value,
                "{kind}"
            );
            // Truncated: always an error.
            let err = decode_value(&bytes[..bytes.len() - 1], kind, &registry).unwrap_err();
            assert!(err.is_bad_input(), "{err}");
        }
    }
}

#[test]
fn a_value_that_does_not_match_the_schema_is_an_encode_error_without_content() {
    let err = encode_value(
        RecordSchema::AuditEvent,
        rec(vec![("seq", s("secret subject"))]),
        Framing::SingleObject,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err}");
    assert!(!err.is_bad_input());
    assert!(!err.to_string().contains("secret"), "{err}");
}
