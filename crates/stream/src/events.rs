//! The events stage: `retain.retention-events` → the `events` table → re-scheduled `records`,
//! exactly once; and the events-table facts source the scheduler joins at landing.
//!
//! One events stage owns the whole topic (manual assignment of every partition, no consumer
//! group rebalancing). Each batch is:
//! 1. stored in the `events` table (an event id already stored is not stored again);
//! 2. applied to every matching landed record in ONE `records` commit carrying
//!    `retain-events-{p}` = the next offset of each partition read (a MERGE of the changed
//!    rows, or the `txn`s alone when nothing changes);
//! 3. audited (`retention_event_applied`, one entry per event).
//!
//! An undecodable event goes to `<topic>.dlq` (with the error and its source in headers)
//! before its offset can be committed.
//!
//! On start each partition is read from the `records` table's `retain-events-{p}`: what was
//! applied is never read again, what was stored but not applied (a crash between 1 and 2) is
//! read again, stored once (by id) and applied. Applying an event a row already records (by
//! id) changes nothing, so replaying the topic changes nothing. `docs/events.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use retain_codec::{SchemaRegistry, decode_retention_event};
use retain_events::events_table::{EventsApplied, MatchRow, StoredEvent, apply_events};
use retain_events::{AppliedEvent, EventsTable, matches};
use retain_lake::deltalake::kernel::Transaction;
use retain_lake::{AuditAction, AuditEntry, AuditTable, RecordsTable, txn_app_id};
use retain_model::{Classification, MailMessage};
use retain_policy::Policy;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{KafkaConfig, dead_letter_topic};
use crate::error::{Error, Result};
use crate::facts::{FactsSource, Known};
use crate::kafka::{
    CONTROL_TIMEOUT, consumer_config, dead_letter_headers, partition_count, producer_config,
};

/// The retention-events topic.
pub const TOPIC_RETENTION_EVENTS: &str = "retain.retention-events";
/// The `txn` app id (per partition) of applied events in `records`.
pub const APP_EVENTS: &str = "retain-events";

/// Settings of the events stage.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Brokers and client settings.
    pub kafka: KafkaConfig,
    /// The topic (default [`TOPIC_RETENTION_EVENTS`]).
    pub topic: String,
    /// The `records` table.
    pub records_location: String,
    /// The `events` table.
    pub events_location: String,
    /// Where undecodable events go (`None`: `<topic>.dlq`).
    pub dead_letter_topic: Option<String>,
    /// The audit table (`None`: no trail).
    pub audit_location: Option<String>,
    /// Object-store options for the tables.
    pub storage_options: std::collections::HashMap<String, String>,
    /// At most this many events per batch.
    pub max_events: usize,
    /// A batch is applied at the latest this long after its first event.
    pub max_latency: Duration,
    /// How far back the landing-window re-check looks (events stored this recently are
    /// applied again to records landed since they were stored).
    pub recheck_window: Duration,
}

impl EventsConfig {
    /// Defaults for the tables at `records` and `events`.
    pub fn new(kafka: KafkaConfig, records: &str, events: &str) -> Self {
        EventsConfig {
            kafka,
            topic: TOPIC_RETENTION_EVENTS.to_owned(),
            records_location: records.to_owned(),
            events_location: events.to_owned(),
            dead_letter_topic: None,
            audit_location: None,
            storage_options: Default::default(),
            max_events: 1_000,
            max_latency: Duration::from_millis(500),
            recheck_window: Duration::from_secs(300),
        }
    }
}

/// What an events stage run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsStats {
    /// Events read.
    pub consumed: u64,
    /// Events newly stored in the `events` table.
    pub stored: u64,
    /// Events that could not be decoded (sent to the dead-letter topic).
    pub undecodable: u64,
    /// `records` rows rewritten.
    pub rows_changed: u64,
    /// Batches committed.
    pub batches: u64,
}

/// The events stage.
#[derive(Debug)]
pub struct EventsStage {
    config: EventsConfig,
    policy: Arc<Policy>,
}

impl EventsStage {
    /// A stage re-scheduling with `policy`.
    pub fn new(config: EventsConfig, policy: Arc<Policy>) -> Self {
        EventsStage { config, policy }
    }

    /// Runs until `shutdown` (applying what it read first).
    pub async fn run(self, shutdown: CancellationToken) -> Result<EventsStats> {
        let c = &self.config;
        let kafka = |operation, source| Error::Kafka {
            operation,
            topic: c.topic.clone(),
            source,
        };
        let mut records =
            RecordsTable::open_or_create(&c.records_location, c.storage_options.clone()).await?;
        let mut events =
            EventsTable::open_or_create(&c.events_location, c.storage_options.clone()).await?;
        let mut audit = match &c.audit_location {
            Some(l) => Some(
                AuditTable::open_or_create(l, c.storage_options.clone())
                    .await
                    .map_err(|source| Error::Audit { source })?,
            ),
            None => None,
        };
        let consumer: StreamConsumer = consumer_config(&c.kafka, "retain-events")
            .create()
            .map_err(|e| kafka("create consumer", e))?;
        let metadata = consumer
            .fetch_metadata(Some(&c.topic), CONTROL_TIMEOUT)
            .map_err(|e| kafka("metadata", e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == c.topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(Error::MissingTopic {
                topic: c.topic.clone(),
            });
        }
        let dlq = c
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| dead_letter_topic(&c.topic));
        partition_count(&consumer, &dlq)?;
        let producer: FutureProducer = producer_config(&c.kafka)
            .create()
            .map_err(|e| kafka("create producer", e))?;
        let landed = records
            .committed_offsets(APP_EVENTS, partitions.iter().copied())
            .await?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let at = landed
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(&c.topic, p, at)
                .map_err(|e| kafka("assign", e))?;
        }
        consumer.assign(&tpl).map_err(|e| kafka("assign", e))?;
        info!(topic = %c.topic, partitions = partitions.len(), "events stage started");

        let registry = SchemaRegistry::new();
        let mut stats = EventsStats::default();
        let mut batch: Vec<StoredEvent> = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut recheck = tokio::time::interval(
            c.recheck_window
                .min(Duration::from_secs(30))
                .max(Duration::from_millis(200)),
        );
        loop {
            let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                || batch.len() >= c.max_events;
            if due {
                self.apply(
                    &mut records,
                    &mut events,
                    audit.as_mut(),
                    &mut batch,
                    &mut next,
                    &mut stats,
                )
                .await?;
                deadline = None;
            }
            let sleep = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep => {}
                _ = recheck.tick(), if deadline.is_none() => {
                    self.recheck(&mut records, &mut events, &mut stats).await?;
                }
                received = consumer.recv() => match received {
                    Ok(msg) => {
                        stats.consumed += 1;
                        next.insert(msg.partition(), msg.offset() + 1);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + c.max_latency);
                        let error = match msg.payload().map(|p| decode_retention_event(p, &registry)) {
                            Some(Ok(message)) => {
                                batch.push(StoredEvent {
                                    message,
                                    stored_at: Utc::now(),
                                    partition: msg.partition(),
                                    offset: msg.offset(),
                                });
                                None
                            }
                            Some(Err(e)) => Some(e.to_string()),
                            None => Some("no payload".to_owned()),
                        };
                        if let Some(error) = error {
                            // Delivered before the offset can be committed: nothing is lost.
                            warn!(partition = msg.partition(), offset = msg.offset(), error = %error, topic = %dlq, "dead-lettering an undecodable retention event");
                            let headers = dead_letter_headers(&error, msg.topic(), msg.partition(), msg.offset());
                            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq)
                                .payload(msg.payload().unwrap_or_default())
                                .headers(headers);
                            if let Some(key) = msg.key() {
                                record = record.key(key);
                            }
                            producer
                                .send(record, Duration::from_secs(60))
                                .await
                                .map_err(|(source, _)| Error::Delivery {
                                    topic: dlq.clone(),
                                    partition: msg.partition(),
                                    offset: msg.offset(),
                                    source,
                                })?;
                            stats.undecodable += 1;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "receive failed; backing off");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        self.apply(
            &mut records,
            &mut events,
            audit.as_mut(),
            &mut batch,
            &mut next,
            &mut stats,
        )
        .await?;
        info!(?stats, "events stage stopped");
        Ok(stats)
    }

    /// Stores, applies and audits one batch; the `records` commit carries the next offsets.
    async fn apply(
        &self,
        records: &mut RecordsTable,
        events: &mut EventsTable,
        audit: Option<&mut AuditTable>,
        batch: &mut Vec<StoredEvent>,
        next: &mut BTreeMap<i32, i64>,
        stats: &mut EventsStats,
    ) -> Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let taken = std::mem::take(batch);
        let stored = events.append(taken.clone(), APP_EVENTS, Vec::new()).await?;
        stats.stored += stored.len() as u64;
        let txns: Vec<Transaction> = next
            .iter()
            .map(|(&p, &o)| Transaction::new(txn_app_id(APP_EVENTS, p), o))
            .collect();
        let mut attempts = 0;
        let applied: EventsApplied = loop {
            attempts += 1;
            match apply_events(records, &self.policy, &taken, txns.clone(), None).await {
                Ok(a) => break a,
                Err(e) if e.is_retryable() && attempts < 10 => {
                    warn!(error = %e, attempts, "applying events raced another writer; again");
                }
                Err(e) => return Err(e.into()),
            }
        };
        next.clear();
        stats.rows_changed += applied.rows_changed;
        stats.batches += 1;
        if let Some(audit) = audit {
            let now = Utc::now();
            let entries: Vec<AuditEntry> = applied
                .per_event
                .iter()
                .map(|(id, (matched, changed))| {
                    let mut e = AuditEntry::new(
                        AuditAction::RetentionEventApplied,
                        "retain-events",
                        now,
                        id.clone(),
                    )
                    .with_details(&serde_json::json!({
                        "records_matched": matched,
                        "records_changed": changed,
                    }));
                    if let Some(v) = applied.version {
                        e = e.with_table_version(v as i64);
                    }
                    e
                })
                .collect();
            if !entries.is_empty() {
                audit
                    .append(&entries)
                    .await
                    .map_err(|source| Error::Audit { source })?;
            }
        }
        Ok(())
    }

    /// The landing-window re-check: events stored within `recheck_window` are applied again to
    /// records landed since (a scheduler may have landed them before its events snapshot held
    /// the event). Idempotent; no offsets move.
    async fn recheck(
        &self,
        records: &mut RecordsTable,
        events: &mut EventsTable,
        stats: &mut EventsStats,
    ) -> Result<()> {
        let window = chrono::Duration::from_std(self.config.recheck_window).unwrap_or_default();
        let since = Utc::now() - window;
        let recent: Vec<StoredEvent> = events.stored_since(since).await?;
        let Some(oldest) = recent.iter().map(|e| e.stored_at).min() else {
            return Ok(());
        };
        // Landed at or after the oldest recent event was stored, less a minute of clock skew.
        let landed_since = oldest - chrono::Duration::seconds(60);
        match apply_events(
            records,
            &self.policy,
            &recent,
            Vec::new(),
            Some(landed_since),
        )
        .await
        {
            Ok(a) => {
                if a.rows_changed > 0 {
                    info!(
                        rows = a.rows_changed,
                        "re-check applied events to records landed meanwhile"
                    );
                }
                stats.rows_changed += a.rows_changed;
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "re-check raced another writer; the next one will do it");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A facts source that adds the matching events of the `events` table (refreshed every
/// `refresh` by [`EventsFacts::refresh_loop`]) to what `inner` knows.
#[derive(Debug)]
pub struct EventsFacts {
    inner: Arc<dyn FactsSource>,
    events: RwLock<Arc<Indexed>>,
}

/// The keys an event is indexed under (one per event: the most selective it carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Message,
    Thread,
    Patient,
    /// Case-insensitive, like the `document:` label it matches (or the message id).
    Document,
    /// Case-insensitive, like the `ba:` label.
    Ba,
    /// Case-insensitive: the custodian or the mailbox.
    Custodian,
}

/// Stored events indexed by one key each, so a landing record is matched against the few
/// events that can apply to it instead of all of them; [`matches`] decides.
#[derive(Debug, Default)]
struct Indexed {
    events: Vec<StoredEvent>,
    by_key: std::collections::HashMap<(Key, String), Vec<usize>>,
}

impl Indexed {
    fn new(events: Vec<StoredEvent>) -> Self {
        let mut by_key: std::collections::HashMap<(Key, String), Vec<usize>> = Default::default();
        for (i, e) in events.iter().enumerate() {
            let k = &e.message.keys;
            let key = if let Some(m) = &k.message_id {
                (Key::Message, m.clone())
            } else if let Some(t) = &k.thread_id {
                (Key::Thread, t.clone())
            } else if let Some(p) = &k.patient_mrn {
                (Key::Patient, p.clone())
            } else if let Some(d) = &k.document_id {
                (Key::Document, d.to_lowercase())
            } else if let Some(b) = &k.ba_id {
                (Key::Ba, b.to_lowercase())
            } else if let Some(c) = &k.custodian {
                (Key::Custodian, c.to_lowercase())
            } else {
                continue; // names only a tenant: matches nothing
            };
            by_key.entry(key).or_default().push(i);
        }
        Indexed { events, by_key }
    }

    /// The events matching `row`, in storing order.
    fn matching(&self, row: &MatchRow) -> Vec<&StoredEvent> {
        let mut probes = vec![
            (Key::Message, row.message_id.clone()),
            (Key::Document, row.message_id.to_lowercase()),
            (Key::Custodian, row.custodian.to_lowercase()),
            (Key::Custodian, row.mailbox.to_lowercase()),
        ];
        if let Some(t) = &row.thread_id {
            probes.push((Key::Thread, t.clone()));
        }
        probes.extend(row.patient_refs.iter().map(|p| (Key::Patient, p.clone())));
        for l in &row.labels {
            if let Some(d) = l.strip_prefix("document:") {
                probes.push((Key::Document, d.to_lowercase()));
            }
            if let Some(b) = l.strip_prefix("ba:") {
                probes.push((Key::Ba, b.to_lowercase()));
            }
        }
        let mut hits: Vec<usize> = probes
            .iter()
            .filter_map(|k| self.by_key.get(k))
            .flatten()
            .copied()
            .collect();
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter()
            .map(|i| &self.events[i])
            .filter(|e| matches(&e.message.keys, row))
            .collect()
    }
}

impl EventsFacts {
    /// Wraps `inner`; holds no events until the first refresh.
    pub fn new(inner: Arc<dyn FactsSource>) -> Self {
        EventsFacts {
            inner,
            events: RwLock::new(Arc::new(Indexed::default())),
        }
    }

    /// Replaces the events held (indexed by their keys).
    pub fn set(&self, events: Vec<StoredEvent>) {
        let indexed = Arc::new(Indexed::new(events));
        *self.events.write().unwrap_or_else(|p| p.into_inner()) = indexed;
    }

    /// Reads the `events` table now and every `every` until `shutdown`.
    pub async fn refresh_loop(
        self: Arc<Self>,
        mut table: EventsTable,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        // The table is append-only: re-read it only when a commit moved its version.
        let mut read: Option<u64> = None;
        loop {
            let fresh = match table.refresh().await {
                Ok(()) => Some(table.version()) != read,
                Err(e) => {
                    warn!(error = %e, "cannot refresh retention events; keeping the last read");
                    false
                }
            };
            if fresh {
                let version = table.version();
                match table.all().await {
                    Ok(all) => {
                        self.set(all);
                        read = Some(version);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read retention events; keeping the last read")
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

impl FactsSource for EventsFacts {
    fn lookup(&self, message: &MailMessage) -> Option<Arc<Known>> {
        self.inner.lookup(message)
    }

    fn events_for(&self, m: &MailMessage, c: &Classification) -> Vec<AppliedEvent> {
        let events = Arc::clone(&self.events.read().unwrap_or_else(|p| p.into_inner()));
        if events.by_key.is_empty() {
            return self.inner.events_for(m, c);
        }
        let row = MatchRow {
            tenant: m.tenant.clone(),
            mailbox: m.mailbox.clone(),
            message_id: m.message_id.clone(),
            custodian: m.custodian_or_mailbox().to_owned(),
            thread_id: m.thread_id.clone(),
            patient_refs: c.patient_refs.clone(),
            labels: m.labels.clone(),
            landed_at: None,
        };
        let mut out = self.inner.events_for(m, c);
        out.extend(
            events
                .matching(&row)
                .into_iter()
                .map(|e| AppliedEvent::from_message(&e.message)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use retain_codec::{EventKeys, EventType, RetentionEventMessage};
    use retain_model::EventKind;

    use super::*;

    fn stored(id: &str, keys: EventKeys) -> StoredEvent {
        StoredEvent {
            message: RetentionEventMessage {
                event_id: id.to_owned(),
                kind: EventType::Clock(EventKind::Superseded),
                date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
                action: None,
                keys,
                recorded_at: Utc::now(),
                source: "test".to_owned(),
            },
            stored_at: Utc::now(),
            partition: 0,
            offset: 0,
        }
    }

    #[test]
    fn the_index_finds_exactly_what_a_scan_finds() {
        let k = |f: &dyn Fn(&mut EventKeys)| {
            let mut keys = EventKeys {
                tenant: Some("t".into()),
                ..EventKeys::default()
            };
            f(&mut keys);
            keys
        };
        let events = vec![
            stored("msg", k(&|k| k.message_id = Some("m1".into()))),
            stored("thread", k(&|k| k.thread_id = Some("th".into()))),
            stored("mrn", k(&|k| k.patient_mrn = Some("MRN1".into()))),
            stored("mrn-other-tenant", {
                let mut keys = k(&|k| k.patient_mrn = Some("MRN1".into()));
                keys.tenant = Some("u".into());
                keys
            }),
            stored("doc-label", k(&|k| k.document_id = Some("POL-7".into()))),
            stored("doc-message", k(&|k| k.document_id = Some("m1".into()))),
            stored("ba", k(&|k| k.ba_id = Some("Acme".into()))),
            stored("custodian", k(&|k| k.custodian = Some("Dr.Who@X".into()))),
            stored("mailbox", k(&|k| k.custodian = Some("box@x".into()))),
            stored(
                "two-keys",
                k(&|k| {
                    k.patient_mrn = Some("MRN1".into());
                    k.thread_id = Some("other".into());
                }),
            ),
            stored("tenant-only", k(&|_| {})),
        ];
        let index = Indexed::new(events.clone());
        let row = MatchRow {
            tenant: "t".into(),
            mailbox: "BOX@x".into(),
            message_id: "m1".into(),
            custodian: "dr.who@x".into(),
            thread_id: Some("th".into()),
            patient_refs: vec!["MRN1".into()],
            labels: vec!["document:pol-7".into(), "ba:ACME".into()],
            landed_at: None,
        };
        let ids = |v: Vec<&StoredEvent>| -> Vec<String> {
            v.into_iter().map(|e| e.message.event_id.clone()).collect()
        };
        let scan: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| matches(&e.message.keys, &row))
            .collect();
        assert_eq!(
            ids(index.matching(&row)),
            [
                "msg",
                "thread",
                "mrn",
                "doc-label",
                "doc-message",
                "ba",
                "custodian",
                "mailbox"
            ]
        );
        assert_eq!(ids(index.matching(&row)), ids(scan));
        let other = MatchRow {
            patient_refs: vec!["MRN2".into()],
            message_id: "m2".into(),
            thread_id: None,
            labels: Vec::new(),
            ..row
        };
        assert_eq!(ids(index.matching(&other)), ["custodian", "mailbox"]);
    }
}
