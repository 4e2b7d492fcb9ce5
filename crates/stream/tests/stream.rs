//! The classifier and scheduler stages end to end on the embedded broker and a local `records`
//! table: every produced message lands exactly once, poison goes to the dead letters, and a
//! scheduler restart or a classifier replay adds no row. Completion is decided by counting rows
//! in the table against what was produced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use retain_broker::EmbeddedBroker;
use retain_codec::{Framing, encode_mail_message};
use retain_generate::{Generated, Generator};
use retain_lake::RecordsTable;
use retain_lake::deltalake::arrow::array::{AsArray, RecordBatch};
use retain_lake::deltalake::arrow::compute::cast;
use retain_lake::deltalake::arrow::datatypes::{DataType, Int64Type};
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_policy::Policy;
use retain_stream::{
    CancellationToken, Classifier, ClassifierConfig, ClassifierStats, FlushPolicy, HEADER_ERROR,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, InMemoryFacts, KafkaConfig,
    Known, Scheduler, SchedulerConfig, SchedulerStats,
};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    Arc::clone(POLICY.get_or_init(|| Arc::new(Policy::builtin().expect("built-in policy"))))
}

/// One test's broker, topics and table.
struct Pipeline {
    _dir: tempfile::TempDir,
    broker: EmbeddedBroker,
    input: String,
    classified: String,
    table: String,
    /// The `audit` table beside `table` (used by schedulers started with an audit trail).
    audit: String,
}

impl Pipeline {
    async fn start(name: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let broker = EmbeddedBroker::start(&dir.path().join("broker")).await?;
        let input = format!("retain.mail.{name}");
        let classified = format!("retain.classified.{name}");
        broker.create_topic(&input, PARTITIONS).await?;
        broker.create_topic(&classified, PARTITIONS).await?;
        broker.create_topic(&format!("{input}.dlq"), 1).await?;
        broker.create_topic(&format!("{classified}.dlq"), 1).await?;
        let table = location(dir.path());
        let audit = dir.path().join("audit").to_str().expect("UTF-8").to_owned();
        Ok(Pipeline {
            _dir: dir,
            broker,
            input,
            classified,
            table,
            audit,
        })
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(self.broker.bootstrap_servers())
    }

    fn classifier(
        &self,
        stop: &CancellationToken,
    ) -> JoinHandle<retain_stream::Result<ClassifierStats>> {
        let config = ClassifierConfig::new(self.kafka()).with_topics(&self.input, &self.classified);
        tokio::spawn(Classifier::new(config, policy()).run(stop.clone()))
    }

    fn scheduler(
        &self,
        facts: &Arc<InMemoryFacts>,
        stop: &CancellationToken,
    ) -> JoinHandle<retain_stream::Result<SchedulerStats>> {
        self.scheduler_with(facts, stop, None)
    }

    /// A scheduler that keeps the audit trail in `self.audit`.
    fn audited_scheduler(
        &self,
        facts: &Arc<InMemoryFacts>,
        stop: &CancellationToken,
    ) -> JoinHandle<retain_stream::Result<SchedulerStats>> {
        self.scheduler_with(facts, stop, Some(self.audit.clone()))
    }

    fn scheduler_with(
        &self,
        facts: &Arc<InMemoryFacts>,
        stop: &CancellationToken,
        audit: Option<String>,
    ) -> JoinHandle<retain_stream::Result<SchedulerStats>> {
        let mut config = SchedulerConfig::new(self.kafka(), self.table.clone())
            .with_topics(&self.classified, &self.input);
        config.flush = FlushPolicy {
            max_rows: 400,
            max_bytes: 1 << 20,
            // Small enough that landings are also cut by the estimated file size.
            target_file_size: 24 << 10,
            max_latency: Duration::from_millis(300),
        };
        config.audit_location = audit;
        let facts: Arc<dyn retain_stream::FactsSource> = facts.clone();
        tokio::spawn(Scheduler::new(config, policy(), facts).run(stop.clone()))
    }

    fn producer(&self) -> Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            .create()?)
    }

    /// Produces generated messages keyed by message id (the partitioner picks the partition).
    async fn produce(&self, generated: &[Generated]) -> Result<()> {
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(generated.len());
        for g in generated {
            let bytes = encode_mail_message(&g.message, Framing::SingleObject)?;
            let record = FutureRecord::to(&self.input)
                .key(g.message.message_id.as_bytes())
                .payload(&bytes);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .context("queue a message")?,
            );
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    /// Produces raw payloads to one partition.
    async fn produce_raw(&self, partition: i32, payloads: &[Vec<u8>]) -> Result<()> {
        let producer = self.producer()?;
        for (i, p) in payloads.iter().enumerate() {
            let key = format!("raw-{partition}-{i}");
            producer
                .send(
                    FutureRecord::to(&self.input)
                        .key(key.as_bytes())
                        .payload(p)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

fn location(dir: &Path) -> String {
    dir.join("records")
        .to_str()
        .expect("UTF-8 temp dir")
        .to_owned()
}

fn generate(seed: u64, n: usize) -> (Vec<Generated>, Arc<InMemoryFacts>) {
    let generated: Vec<Generated> = Generator::new(seed).take(n).collect();
    let mut facts = InMemoryFacts::new();
    for g in &generated {
        facts.insert_record(
            &g.message.tenant,
            &g.message.mailbox,
            &g.message.message_id,
            Known {
                facts: g.facts.clone(),
                events: g.events.clone(),
            },
        );
    }
    (generated, Arc::new(facts))
}

async fn sql(location: &str, query: &str) -> Result<Vec<RecordBatch>> {
    let table = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let ctx = SessionContext::new();
    table
        .delta_table()
        .update_datafusion_session(&ctx.state())?;
    ctx.register_table("records", table.delta_table().table_provider().await?)?;
    Ok(ctx.sql(query).await?.collect().await?)
}

async fn scalar(location: &str, query: &str) -> Result<i64> {
    let batches = sql(location, query).await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

async fn rows(location: &str) -> Result<i64> {
    scalar(location, "SELECT count(*) FROM records").await
}

/// Waits until the table holds at least `n` rows; returns the count.
async fn wait_rows(location: &str, n: i64) -> Result<i64> {
    let started = Instant::now();
    loop {
        let have = rows(location).await?;
        if have >= n {
            return Ok(have);
        }
        if started.elapsed() > WAIT {
            bail!("{have} rows after {WAIT:?}, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops a stage and returns its stats (failing the test with its error).
async fn stop<T: std::fmt::Debug>(
    token: &CancellationToken,
    stage: JoinHandle<retain_stream::Result<T>>,
) -> Result<T> {
    token.cancel();
    Ok(tokio::time::timeout(WAIT, stage).await???)
}

/// Exactly `n` rows and `n` distinct record keys.
async fn assert_exactly(location: &str, n: i64) -> Result<()> {
    assert_eq!(rows(location).await?, n, "rows");
    assert_eq!(
        scalar(location, "SELECT count(DISTINCT record_key) FROM records").await?,
        n,
        "distinct record keys"
    );
    Ok(())
}

/// Text of column `i` of every row.
fn texts(batches: &[RecordBatch], i: usize) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let c = cast(b.column(i), &DataType::Utf8).expect("castable to text");
            c.as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_lands_exactly_once_as_the_policy_decides() -> Result<()> {
    const N: usize = 2_000;
    let started = Instant::now();
    let p = Pipeline::start("once").await?;
    let (generated, facts) = generate(7, N);
    let keys: BTreeSet<String> = generated
        .iter()
        .map(|g| {
            retain_lake::record_key(&g.message.tenant, &g.message.mailbox, &g.message.message_id)
        })
        .collect();
    ensure!(keys.len() == N, "the generator repeated a record key");
    p.produce(&generated).await?;
    let produced = started.elapsed();

    let stop_c = CancellationToken::new();
    let stop_s = CancellationToken::new();
    let classifier = p.classifier(&stop_c);
    let scheduler = p.scheduler(&facts, &stop_s);
    wait_rows(&p.table, N as i64).await?;
    let landed = started.elapsed();
    let c = stop(&stop_c, classifier).await?;
    let s = stop(&stop_s, scheduler).await?;
    eprintln!("N={N}: produced in {produced:?}, all landed after {landed:?}; {c:?}; {s:?}");
    assert_eq!(c.classified, N as u64);
    assert_eq!(c.dead_lettered, 0);
    assert_exactly(&p.table, N as i64).await?;
    let landed_keys: BTreeSet<String> =
        texts(&sql(&p.table, "SELECT record_key FROM records").await?, 0)
            .into_iter()
            .flatten()
            .collect();
    assert_eq!(landed_keys, keys);

    // A sample of rows is what `Policy::decide` says for the produced message and its facts.
    let decided: BTreeMap<String, (String, Option<String>)> = generated
        .iter()
        .step_by(37)
        .map(|g| {
            let (c, d) = policy().decide(&g.message, &g.facts, &g.events);
            let key = retain_lake::record_key(
                &g.message.tenant,
                &g.message.mailbox,
                &g.message.message_id,
            );
            (
                key,
                (
                    c.category.as_str().to_owned(),
                    d.retain_until.map(|u| u.format("%Y-%m-%d").to_string()),
                ),
            )
        })
        .collect();
    let batches = sql(
        &p.table,
        "SELECT record_key, category, retain_until FROM records",
    )
    .await?;
    let (k, cat, until) = (texts(&batches, 0), texts(&batches, 1), texts(&batches, 2));
    let mut checked = 0;
    for i in 0..k.len() {
        let key = k[i].clone().expect("record_key");
        if let Some((category, retain_until)) = decided.get(&key) {
            assert_eq!(cat[i].as_ref(), Some(category), "category of {key}");
            assert_eq!(&until[i], retain_until, "retain_until of {key}");
            checked += 1;
        }
    }
    assert_eq!(checked, decided.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letters_and_the_rest_lands() -> Result<()> {
    const N: usize = 300;
    let p = Pipeline::start("poison").await?;
    let (generated, facts) = generate(11, N);
    let garbage: Vec<Vec<u8>> = vec![
        b"{\"json\": \"not avro\"}".to_vec(),
        vec![0xC3, 0x01, 1, 2],
        vec![0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 42],
        Vec::new(),
    ];
    p.produce(&generated[..N / 2]).await?;
    p.produce_raw(1, &garbage).await?;
    p.produce(&generated[N / 2..]).await?;

    let stop_c = CancellationToken::new();
    let stop_s = CancellationToken::new();
    let classifier = p.classifier(&stop_c);
    let scheduler = p.scheduler(&facts, &stop_s);
    wait_rows(&p.table, N as i64).await?;

    // The dead letters, with their headers.
    let dlq = format!("{}.dlq", p.input);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap_servers())
        .set("group.id", "test-dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&dlq])?;
    let mut letters = Vec::new();
    while letters.len() < garbage.len() {
        let m = tokio::time::timeout(WAIT, consumer.recv()).await??;
        let headers = m.headers().context("dead letter without headers")?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        letters.push((
            header(HEADER_SOURCE_OFFSET)
                .context("offset header")?
                .parse::<i64>()?,
            header(HEADER_SOURCE_TOPIC),
            header(HEADER_SOURCE_PARTITION),
            header(HEADER_ERROR).is_some_and(|e| !e.is_empty()),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    letters.sort();
    for (letter, payload) in letters.iter().zip(&garbage) {
        assert_eq!(letter.1.as_deref(), Some(p.input.as_str()));
        assert_eq!(letter.2.as_deref(), Some("1"));
        assert!(letter.3, "an error header");
        assert_eq!(&letter.4, payload, "the payload as read");
    }

    let c = stop(&stop_c, classifier).await?;
    let s = stop(&stop_s, scheduler).await?;
    assert_eq!(
        (c.classified, c.dead_lettered),
        (N as u64, garbage.len() as u64)
    );
    assert_eq!(s.dead_lettered, 0);
    assert_exactly(&p.table, N as i64).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_restart_and_a_classifier_replay_add_no_rows() -> Result<()> {
    const N: usize = 2_000;
    let started = Instant::now();
    let p = Pipeline::start("restart").await?;
    let (generated, facts) = generate(23, N + PARTITIONS as usize);
    let (main, sentinels) = generated.split_at(N);
    p.produce(main).await?;

    let stop_c = CancellationToken::new();
    let classifier = p.classifier(&stop_c);
    // Stop the first scheduler mid-way (cancelled: it lands what it buffered), then crash a
    // second one (aborted: its buffer is lost) ...
    let stop_s1 = CancellationToken::new();
    let first = p.scheduler(&facts, &stop_s1);
    let midway = wait_rows(&p.table, N as i64 / 4).await?;
    let s1 = stop(&stop_s1, first).await?;
    let after_first = rows(&p.table).await?;
    let crashed = p.scheduler(&facts, &CancellationToken::new());
    let before_crash = wait_rows(&p.table, after_first + 1).await?;
    crashed.abort();
    let _ = crashed.await;
    // ... and make the group's offsets useless: they are for lag only, the table says where to
    // start. A third scheduler must seek to the table's offsets.
    reset_group(&p, "retain-scheduler", &p.classified).await?;
    // The schedulers so far kept no audit trail, as if each had crashed between its landings
    // and their audit appends: this one backfills their entries on start.
    let stop_s2 = CancellationToken::new();
    let second = p.audited_scheduler(&facts, &stop_s2);
    wait_rows(&p.table, N as i64).await?;
    eprintln!(
        "restart: first scheduler stopped at {midway} rows ({s1:?}), second crashed at {before_crash}; N={N} landed after {:?}",
        started.elapsed()
    );
    assert_exactly(&p.table, N as i64).await?;

    // Replay: reset the classifier group to the beginning; it re-produces everything.
    let c1 = stop(&stop_c, classifier).await?;
    reset_group(&p, "retain-classifier", &p.input).await?;
    let stop_c2 = CancellationToken::new();
    let replaying = p.classifier(&stop_c2);
    // One new message per partition after the replayed ones: when these land, every replayed
    // record before them in their partition has been read.
    let payloads: Vec<Vec<u8>> = sentinels
        .iter()
        .map(|g| encode_mail_message(&g.message, Framing::SingleObject))
        .collect::<Result<_, _>>()?;
    for (partition, payload) in payloads.iter().enumerate() {
        p.produce_raw(partition as i32, std::slice::from_ref(payload))
            .await?;
    }
    let total = (N + sentinels.len()) as i64;
    wait_rows(&p.table, total).await?;
    let c2 = stop(&stop_c2, replaying).await?;
    let s2 = stop(&stop_s2, second).await?;
    eprintln!(
        "replay: {c1:?} then {c2:?}; second scheduler {s2:?}; done after {:?}",
        started.elapsed()
    );
    assert!(
        c2.classified >= N as u64,
        "the classifier replayed everything"
    );
    assert!(
        s2.redelivered >= 1,
        "positioned by the table, not the group"
    );
    assert!(s2.duplicates >= N as u64, "replays dropped by lineage");
    assert_exactly(&p.table, total).await?;
    assert_every_landing_audited_once(&p, total).await?;
    Ok(())
}

/// The audit trail has exactly one `records_landed` entry per scheduler landing in the
/// `records` log (some backfilled), their rows add up to `total`, and the chain verifies.
async fn assert_every_landing_audited_once(p: &Pipeline, total: i64) -> Result<()> {
    let mut landings = BTreeSet::new();
    for f in std::fs::read_dir(Path::new(&p.table).join("_delta_log"))? {
        let path = f?.path();
        let Some(version) = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".json")?.parse::<i64>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        if text.contains(r#""appId":"retain-lineage""#) {
            landings.insert(version);
        }
    }
    let mut audit = retain_lake::AuditTable::open_or_create(&p.audit, HashMap::new()).await?;
    let report = audit.verify().await?;
    ensure!(report.is_intact(), "{report:?}");
    let landed: Vec<_> = audit
        .entries()
        .await?
        .into_iter()
        .filter(|e| e.action == "records_landed")
        .collect();
    let versions: Vec<i64> = landed.iter().filter_map(|e| e.table_version).collect();
    let unique: BTreeSet<i64> = versions.iter().copied().collect();
    ensure!(
        versions.len() == unique.len(),
        "no version twice: {versions:?}"
    );
    ensure!(
        unique == landings,
        "audited {unique:?}, landed {landings:?}"
    );
    let mut rows = 0;
    let mut backfilled = 0;
    for e in &landed {
        let d: serde_json::Value = serde_json::from_str(&e.details)?;
        rows += d["rows"].as_i64().context("rows")?;
        backfilled += usize::from(d["backfilled"] == true);
        ensure!(e.target == "records" && e.actor.starts_with("retain-scheduler"));
    }
    ensure!(rows == total, "audited rows {rows}, landed {total}");
    ensure!(
        backfilled >= 1 && backfilled < landed.len(),
        "backfilled {backfilled} of {}",
        landed.len()
    );
    eprintln!(
        "audit: {} landings, {backfilled} backfilled, {rows} rows",
        landed.len()
    );
    Ok(())
}

/// Commits offset 0 for every partition of `topic` in `group` (no member may be active).
async fn reset_group(p: &Pipeline, group: &str, topic: &str) -> Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(topic, partition, Offset::Offset(0))?;
    }
    let started = Instant::now();
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() < WAIT => {
                eprintln!("reset of {group} not yet accepted: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
