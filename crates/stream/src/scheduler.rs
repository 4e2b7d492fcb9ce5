//! The scheduler stage: `retain.classified` → schedule → the `records` Delta table, exactly once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use retain_codec::{ClassifiedRecord, SchemaRegistry, decode_classified_record};
use retain_events::{AppliedEvent, StoredEntry};
use retain_lake::{RecordBatchBuilder, RecordRow, RecordsTable, TxnMark};
use retain_model::Facts;
use retain_policy::Policy;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::audit::LandingAudit;
use crate::config::SchedulerConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::facts::{FactsSource, apply_facts};
use crate::kafka::{
    Backoff, CONTROL_TIMEOUT, consumer_config, dead_letter_headers, producer_config,
};
use crate::metrics::StageMetrics;

/// What a scheduler run did (read from its [`StageMetrics`] when it stops).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Classified records read (after positioning).
    pub consumed: u64,
    /// Rows landed in the table.
    pub rows_landed: u64,
    /// Records dropped because their lineage offset was already landed (classifier replays).
    pub duplicates: u64,
    /// Records skipped because the table already held their classified offset (re-deliveries
    /// read before the seek to the table's offsets took effect).
    pub redelivered: u64,
    /// Records dead-lettered (and acknowledged).
    pub dead_lettered: u64,
    /// Delta commits made.
    pub landings: u64,
}

impl SchedulerStats {
    fn read(m: &StageMetrics, redelivered: u64) -> Self {
        SchedulerStats {
            consumed: m.consumed.get(),
            rows_landed: m.landed_rows.get(),
            duplicates: m.duplicates.get() - redelivered,
            redelivered,
            dead_lettered: m.dead_lettered.get(),
            landings: m.landings.get(),
        }
    }
}

/// A partition assignment change, queued by the consumer context for the run loop.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked,
}

/// Queues rebalances; the run loop acts on them before the next record (reading the table is
/// async, the callback is not). Hands librdkafka's statistics to the metrics as lag.
struct Context {
    topic: String,
    events: Mutex<Vec<RebalanceEvent>>,
    metrics: Arc<StageMetrics>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.record_lag(&self.topic, &statistics);
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(tpl) => RebalanceEvent::Assigned(
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect(),
            ),
            Rebalance::Revoke(_) => RebalanceEvent::Revoked,
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }
}

type ClassifiedConsumer = StreamConsumer<Context>;

/// Where a partition's reading stands against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Just assigned: the next record must be at the table's next offset (`None`: nothing
    /// landed, take what the consumer gives). `sought` once a seek was issued.
    Unchecked {
        table_next: Option<i64>,
        sought: bool,
    },
    /// Reading in order from the table's offset.
    Running,
}

/// One assigned partition of the classified topic (and, by construction, the same-numbered
/// partition of the input topic its lineage names).
#[derive(Debug, Clone, Copy)]
struct Part {
    position: Position,
    /// Next classified offset after the last record handled.
    consumed: Option<i64>,
    /// Next classified offset committed in the table.
    landed: Option<i64>,
    /// Next lineage (input) offset committed in the table.
    landed_lineage: Option<i64>,
    /// Next lineage offset after the buffered rows.
    buffered_lineage: Option<i64>,
}

impl Part {
    fn assigned(landed: Option<i64>, landed_lineage: Option<i64>) -> Self {
        Part {
            position: Position::Unchecked {
                table_next: landed,
                sought: false,
            },
            consumed: None,
            landed,
            landed_lineage,
            buffered_lineage: None,
        }
    }

    /// Lineage offsets below this are landed or buffered already.
    fn lineage_mark(&self) -> Option<i64> {
        self.landed_lineage.max(self.buffered_lineage)
    }
}

/// Rows not yet landed and dead letters not yet acknowledged.
struct Buffer {
    builder: RecordBatchBuilder,
    rows: usize,
    bytes: usize,
    since: Option<Instant>,
    dead: Vec<(i32, i64, DeliveryFuture)>,
    /// Per buffered row: the facts and events it was scheduled with, stored among its
    /// obligations so it can be recomputed later (docs/events.md).
    provenance: Vec<Vec<StoredEntry>>,
}

impl Buffer {
    fn new() -> Self {
        Buffer {
            provenance: Vec::new(),
            builder: RecordBatchBuilder::new(),
            rows: 0,
            bytes: 0,
            since: None,
            dead: Vec::new(),
        }
    }
}

/// The run's mutable state.
struct State {
    parts: BTreeMap<i32, Part>,
    buffer: Buffer,
    /// Records skipped as fetched before a seek took effect (counted among the duplicates).
    redelivered: u64,
    /// Parquet bytes per row written by the last landing (the file-size estimate).
    bytes_per_row: Option<f64>,
    /// The audit trail, when configured.
    audit: Option<LandingAudit>,
}

/// The scheduler stage: consumes `ClassifiedRecord`s, schedules them, lands batches in the
/// `records` table with the offsets in the same commit, and seeks to the table's offsets on
/// every assignment.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    policy: Arc<Policy>,
    facts: Arc<dyn FactsSource>,
    registry: SchemaRegistry,
    metrics: Arc<StageMetrics>,
}

impl Scheduler {
    /// A scheduler with `config`, scheduling by `policy` with facts from `facts`.
    pub fn new(config: SchedulerConfig, policy: Arc<Policy>, facts: Arc<dyn FactsSource>) -> Self {
        Scheduler {
            config,
            policy,
            facts,
            registry: SchemaRegistry::new(),
            metrics: Arc::new(StageMetrics::new("scheduler")),
        }
    }

    /// The stage's counters, live while it runs (register them to serve `/metrics`).
    pub fn metrics(&self) -> Arc<StageMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` is cancelled (then lands what it buffered, once, and returns what
    /// it did) or a bug or misconfiguration stops it (then returns the error).
    pub async fn run(self, shutdown: CancellationToken) -> Result<SchedulerStats> {
        let c = &self.config;
        let kafka = |operation, source| Error::Kafka {
            operation,
            topic: c.input_topic.clone(),
            source,
        };
        let mut table = self.open_table(&shutdown).await?;
        let audit = self.open_audit(&table, &shutdown).await?;
        let context = Context {
            topic: c.input_topic.clone(),
            events: Mutex::new(Vec::new()),
            metrics: Arc::clone(&self.metrics),
        };
        let consumer: ClassifiedConsumer = consumer_config(&c.kafka, &c.group_id)
            .create_with_context(context)
            .map_err(|e| kafka("create consumer", e))?;
        let producer: FutureProducer = producer_config(&c.kafka)
            .create()
            .map_err(|e| kafka("create producer", e))?;
        consumer
            .subscribe(&[&c.input_topic])
            .map_err(|e| kafka("subscribe", e))?;
        info!(input = %c.input_topic, table = %table.url(), group = %c.group_id, "scheduler started");

        let mut state = State {
            parts: BTreeMap::new(),
            buffer: Buffer::new(),
            redelivered: 0,
            bytes_per_row: None,
            audit,
        };
        let mut backoff = Backoff::new();
        loop {
            let deadline = state.buffer.since.map(|t| t + c.flush.max_latency);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(deadline) => {
                    self.rebalanced(&consumer, &mut table, &mut state, &shutdown).await?;
                    self.flush(&consumer, &mut table, &mut state, &shutdown).await?;
                }
                received = consumer.recv() => match received {
                    Ok(msg) => {
                        backoff = Backoff::new();
                        self.rebalanced(&consumer, &mut table, &mut state, &shutdown).await?;
                        self.handle(&consumer, &producer, &mut table, &mut state, &msg).await?;
                        let b = &state.buffer;
                        if let Some(reason) = c.flush.due_by_size(b.rows, b.bytes, state.bytes_per_row) {
                            debug!(?reason, rows = b.rows, bytes = b.bytes, "landing by size");
                            self.flush(&consumer, &mut table, &mut state, &shutdown).await?;
                        }
                    }
                    Err(source) => {
                        let e = kafka("receive", source);
                        if e.kind() != ErrorKind::Unavailable {
                            return Err(e);
                        }
                        warn!(error = %e, "receive failed; backing off");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                },
            }
        }
        // Graceful stop: one landing attempt for what is buffered (retries end with `shutdown`).
        self.flush(&consumer, &mut table, &mut state, &shutdown)
            .await?;
        let stats = SchedulerStats::read(&self.metrics, state.redelivered);
        info!(?stats, "scheduler stopped");
        Ok(stats)
    }

    /// Opens (or creates) the table, retrying while storage is away.
    async fn open_table(&self, shutdown: &CancellationToken) -> Result<RecordsTable> {
        let c = &self.config;
        let mut backoff = Backoff::new();
        loop {
            match RecordsTable::open_or_create(&c.table_location, c.storage_options.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    warn!(error = %e, "cannot open the records table; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens the audit table (retrying while storage is away) and backfills entries for
    /// landings a crash left without one. A backfill that fails because storage is away is
    /// tried again on the next start; the stage runs on.
    async fn open_audit(
        &self,
        table: &RecordsTable,
        shutdown: &CancellationToken,
    ) -> Result<Option<LandingAudit>> {
        let Some(location) = &self.config.audit_location else {
            return Ok(None);
        };
        let mut backoff = Backoff::new();
        let mut audit = loop {
            match LandingAudit::open(&self.config, location).await {
                Ok(a) => break a,
                Err(e) if e.kind() == ErrorKind::Unavailable && !shutdown.is_cancelled() => {
                    warn!(error = %e, "cannot open the audit table; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };
        match audit.backfill(table).await {
            Ok(n) => {
                info!(audit = %audit.url(), backfilled = n, "audit trail open");
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                warn!(error = %e, "cannot backfill the audit trail now; the next start will");
            }
            Err(e) => return Err(e),
        }
        Ok(Some(audit))
    }

    /// Acts on queued rebalances: on revocation the buffer is dropped (the table, not this
    /// process, says where the next owner starts); on assignment each partition's landed offsets
    /// are read from the table and the next record read is checked against them.
    async fn rebalanced(
        &self,
        consumer: &ClassifiedConsumer,
        table: &mut RecordsTable,
        state: &mut State,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let events = std::mem::take(
            &mut *consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for event in events {
            match event {
                RebalanceEvent::Revoked => {
                    if state.buffer.rows > 0 || !state.buffer.dead.is_empty() {
                        info!(
                            rows = state.buffer.rows,
                            "partitions revoked; dropping unlanded rows (the next owner reads them from the table's offsets)"
                        );
                    }
                    state.buffer = Buffer::new();
                    self.metrics.buffered_rows.set(0);
                    self.metrics.buffered_bytes.set(0);
                    state.parts.clear();
                }
                RebalanceEvent::Assigned(partitions) => {
                    self.assign(table, state, &partitions, shutdown).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads the landed offsets of `partitions` from the table.
    #[instrument(skip_all, fields(topic = %self.config.input_topic, partitions = ?partitions))]
    async fn assign(
        &self,
        table: &mut RecordsTable,
        state: &mut State,
        partitions: &[i32],
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let c = &self.config;
        let mut backoff = Backoff::new();
        let (landed, lineage) = loop {
            let read = async {
                let landed = table
                    .committed_offsets(&c.app_id, partitions.iter().copied())
                    .await?;
                let lineage = table
                    .committed_offsets(&c.lineage_app_id, partitions.iter().copied())
                    .await?;
                Ok::<_, retain_lake::Error>((landed, lineage))
            };
            match read.await {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    warn!(error = %e, "cannot read the landed offsets; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        for &p in partitions {
            let part = Part::assigned(landed.get(&p).copied(), lineage.get(&p).copied());
            debug!(partition = p, landed = ?part.landed, lineage = ?part.landed_lineage, "assigned");
            state.parts.insert(p, part);
        }
        Ok(())
    }

    /// Positions, decodes, de-duplicates, schedules and buffers one classified record.
    #[instrument(skip_all, fields(topic = msg.topic(), partition = msg.partition(), offset = msg.offset()))]
    async fn handle(
        &self,
        consumer: &ClassifiedConsumer,
        producer: &FutureProducer,
        table: &mut RecordsTable,
        state: &mut State,
        msg: &BorrowedMessage<'_>,
    ) -> Result<()> {
        let (p, offset) = (msg.partition(), msg.offset());
        if !state.parts.contains_key(&p) {
            // A record from a partition whose assignment was not seen (should not happen).
            self.assign(table, state, &[p], &CancellationToken::new())
                .await?;
        }
        let Some(part) = state.parts.get_mut(&p) else {
            return Ok(());
        };
        if let Position::Unchecked { table_next, sought } = part.position {
            // The first record after an assignment must be the table's next offset (or, with
            // nothing landed, the partition's first): otherwise seek there once and skip it.
            let misplaced = match table_next {
                Some(next) => offset != next,
                None => offset > 0,
            };
            if misplaced && !sought {
                let to = table_next.map_or(Offset::Beginning, Offset::Offset);
                self.seek(consumer, p, to)?;
                part.position = Position::Unchecked {
                    table_next,
                    sought: true,
                };
                if table_next.is_some_and(|next| offset < next) {
                    state.redelivered += 1;
                    self.metrics.duplicates.inc();
                }
                return Ok(());
            }
            if table_next.is_some_and(|next| offset < next) {
                // Fetched before the seek took effect.
                state.redelivered += 1;
                self.metrics.duplicates.inc();
                return Ok(());
            }
            part.position = Position::Running;
        }
        let m = &self.metrics;
        m.consumed.inc();
        part.consumed = Some(offset + 1);
        let buffer = &mut state.buffer;
        buffer.since.get_or_insert_with(Instant::now);
        buffer.bytes += msg.payload_len();
        m.buffered_bytes.set(buffer.bytes as u64);

        let record = match self.decode(msg) {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::BadInput => {
                let d = self.dead_letter(producer, msg, &e)?;
                buffer.dead.push((p, offset, d));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if part
            .lineage_mark()
            .is_some_and(|mark| record.lineage.offset < mark)
        {
            debug!(
                lineage_offset = record.lineage.offset,
                "dropping a classifier replay: its lineage offset already landed"
            );
            m.duplicates.inc();
            return Ok(());
        }
        let known = self.facts.lookup(&record.message);
        let empty = Facts::default();
        let (facts, events) = match &known {
            Some(k) => (&k.facts, k.events.as_slice()),
            None => (&empty, &[][..]),
        };
        let mut record = record;
        apply_facts(&mut record.classification, facts);
        // Events from the events table (joined at landing) and the facts source's own events,
        // scheduled and recorded on the row by the same function a later recompute uses.
        let mut applied: Vec<AppliedEvent> =
            events.iter().map(AppliedEvent::from_fact_event).collect();
        applied.extend(
            self.facts
                .events_for(&record.message, &record.classification),
        );
        let (jurisdiction, holder) = self.policy.effective(facts);
        let scheduled = retain_events::schedule(
            &self.policy,
            &record.classification.category,
            record.message.created_date(),
            &Facts {
                jurisdiction: jurisdiction.clone(),
                record_holder: holder.clone(),
                ..facts.clone()
            },
            &applied,
        );
        let decision = scheduled.decision;
        match RecordRow::new(&record, &decision, jurisdiction, holder) {
            Ok(row) => {
                buffer.builder.push(&row);
                buffer.provenance.push(scheduled.provenance);
                buffer.rows += 1;
                m.buffered_rows.set(buffer.rows as u64);
                part.buffered_lineage = Some(record.lineage.offset + 1);
            }
            Err(e) if e.is_bad_input() => {
                let e = Error::from(e);
                let d = self.dead_letter(producer, msg, &e)?;
                buffer.dead.push((p, offset, d));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Decodes a classified record and checks its lineage names the source topic and this
    /// partition number (what the lineage de-duplication relies on).
    fn decode(&self, msg: &BorrowedMessage<'_>) -> Result<ClassifiedRecord> {
        let c = &self.config;
        let bad = |reason: String| Error::Record {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            reason,
        };
        let payload = msg
            .payload()
            .ok_or_else(|| bad("no payload (tombstone)".to_owned()))?;
        let record = decode_classified_record(payload, &self.registry).map_err(|e| {
            if e.is_bad_input() {
                bad(e.to_string())
            } else {
                Error::Codec {
                    topic: msg.topic().to_owned(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    source: e,
                }
            }
        })?;
        let l = &record.lineage;
        if l.topic != c.source_topic || l.partition != msg.partition() {
            return Err(bad(format!(
                "lineage names {}/{}; expected `{}` partition {}",
                l.topic,
                l.partition,
                c.source_topic,
                msg.partition()
            )));
        }
        Ok(record)
    }

    /// Queues a dead letter: the record as read, with the error and source headers.
    fn dead_letter(
        &self,
        producer: &FutureProducer,
        msg: &BorrowedMessage<'_>,
        error: &Error,
    ) -> Result<DeliveryFuture> {
        let c = &self.config;
        warn!(error = %error, dlq = %c.dead_letter_topic, "dead-lettering a record");
        let headers = dead_letter_headers(
            &error.to_string(),
            msg.topic(),
            msg.partition(),
            msg.offset(),
        );
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&c.dead_letter_topic)
            .payload(msg.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        producer
            .send_result(record)
            .map_err(|(source, _)| Error::Delivery {
                topic: c.dead_letter_topic.clone(),
                partition: -1,
                offset: msg.offset(),
                source,
            })
    }

    /// Moves partition `p` to the table's next offset (or its beginning).
    #[instrument(skip_all, fields(topic = %self.config.input_topic, partition = p, offset = ?to))]
    fn seek(&self, consumer: &ClassifiedConsumer, p: i32, to: Offset) -> Result<()> {
        debug!("seeking to the table's offset");
        consumer
            .seek(&self.config.input_topic, p, to, CONTROL_TIMEOUT)
            .map_err(|source| Error::Kafka {
                operation: "seek",
                topic: self.config.input_topic.clone(),
                source,
            })
    }

    /// Lands the buffer: rows filtered by lineage (`retain-lineage-{p}` = next input offset) and
    /// the classified topic's next offsets (`retain-scheduler-{p}`) in one Delta commit; then
    /// commits the group's offsets for lag metrics. Retries while storage is away.
    #[instrument(skip_all, fields(topic = %self.config.input_topic, rows = state.buffer.rows))]
    async fn flush(
        &self,
        consumer: &ClassifiedConsumer,
        table: &mut RecordsTable,
        state: &mut State,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let c = &self.config;
        let started = Instant::now();
        let moved: Vec<(i32, i64)> = state
            .parts
            .iter()
            .filter_map(|(&p, part)| match (part.consumed, part.landed) {
                (Some(next), landed) if landed.is_none_or(|l| next > l) => Some((p, next)),
                _ => None,
            })
            .collect();
        let buffer = std::mem::replace(&mut state.buffer, Buffer::new());
        let m = &self.metrics;
        m.buffered_rows.set(0);
        m.buffered_bytes.set(0);
        if moved.is_empty() && buffer.rows == 0 {
            return Ok(());
        }
        let mut dead_lettered = 0;
        for (p, offset, delivery) in buffer.dead {
            match delivery.await {
                Ok(Ok(_)) => dead_lettered += 1,
                Ok(Err((source, _))) => {
                    return Err(Error::Delivery {
                        topic: c.dead_letter_topic.clone(),
                        partition: p,
                        offset,
                        source,
                    });
                }
                Err(_) => {
                    return Err(Error::Delivery {
                        topic: c.dead_letter_topic.clone(),
                        partition: p,
                        offset,
                        source: KafkaError::Canceled,
                    });
                }
            }
        }
        let mut builder = buffer.builder;
        let batch = builder.finish(Utc::now())?;
        let batch = retain_events::rows::append_entries(&batch, &buffer.provenance)?;
        let lineage: Vec<(i32, i64)> = state
            .parts
            .iter()
            .filter_map(|(&p, part)| part.buffered_lineage.map(|n| (p, n)))
            .collect();
        let marks: Vec<TxnMark<'_>> = moved
            .iter()
            .map(|&(partition, next_offset)| TxnMark {
                app_id: &c.app_id,
                partition,
                next_offset,
            })
            .collect();
        let mut backoff = Backoff::new();
        let landed = loop {
            match table
                .land_with_marks(batch.clone(), &c.lineage_app_id, &lineage, &marks)
                .await
            {
                Ok(l) => break l,
                Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                    warn!(error = %e, "landing failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) if e.is_retryable() => {
                    info!(error = %e, "stopping without landing; the records will be read again");
                    for part in state.parts.values_mut() {
                        part.buffered_lineage = None;
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        };
        let lineage_before: BTreeMap<i32, i64> = state
            .parts
            .iter()
            .filter_map(|(&p, part)| part.landed_lineage.map(|n| (p, n)))
            .collect();
        for (&p, part) in &mut state.parts {
            if let Some(&(_, next)) = moved.iter().find(|(q, _)| *q == p) {
                part.landed = Some(next);
            }
            if let Some(&n) = landed.offsets.get(&p) {
                part.landed_lineage = part.landed_lineage.max(Some(n));
            }
            part.buffered_lineage = None;
        }
        m.landed_rows.add(landed.rows_landed as u64);
        m.landed_bytes.add(landed.bytes_written);
        m.duplicates.add(landed.rows_skipped as u64);
        m.dead_lettered.add(dead_lettered);
        m.landings.add(u64::from(landed.version.is_some()));
        m.flush_seconds.observe(started.elapsed());
        if landed.rows_landed > 0 && landed.bytes_written > 0 {
            state.bytes_per_row = Some(landed.bytes_written as f64 / landed.rows_landed as f64);
        }
        debug!(
            version = ?landed.version,
            rows = landed.rows_landed,
            skipped = landed.rows_skipped,
            dead_lettered,
            "landed"
        );
        if let (Some(version), Some(audit)) = (landed.version, state.audit.as_mut()) {
            audit.landed(table, version, lineage_before).await?;
        }
        self.commit_lag(consumer, &moved);
        Ok(())
    }

    /// Commits the group's offsets after a landing: for lag metrics only, never for positioning.
    fn commit_lag(&self, consumer: &ClassifiedConsumer, moved: &[(i32, i64)]) {
        let mut tpl = TopicPartitionList::with_capacity(moved.len());
        for &(p, next) in moved {
            let _ = tpl.add_partition_offset(&self.config.input_topic, p, Offset::Offset(next));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // Harmless: the table holds the offsets. Not-coordinator and similar are expected
            // during rebalances.
            if !matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset)) {
                debug!(error = %e, "group offset commit (lag only) failed");
            }
        }
    }
}

/// Sleeps until `deadline`, forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
