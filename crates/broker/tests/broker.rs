//! The embedded broker against real Kafka clients (rdkafka, librdkafka 2.12): produce and consume
//! through a consumer group, a restart on the same storage, and two consumers sharing a group.
//!
//! Completion is decided by counting what was produced, never from high watermarks. Every wait
//! has a timeout so that a hang fails the test instead of blocking CI.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    message::BorrowedMessage,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};
use retain_broker::{EmbeddedBroker, Error};
use tokio::{
    sync::mpsc,
    time::{Instant, timeout, timeout_at},
};
use uuid::Uuid;

/// The longest any one step may take.
const WAIT: Duration = Duration::from_secs(60);

/// How long to keep listening after everything arrived, to catch duplicates.
const QUIET: Duration = Duration::from_secs(2);

const PARTITIONS: i32 = 3;

/// A topic or group name no other test (or earlier run) uses.
fn unique(what: &str) -> String {
    format!("retain-broker-{what}-{}", Uuid::now_v7().simple())
}

/// One consumed record, owned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Received {
    key: String,
    payload: String,
    partition: i32,
    offset: i64,
}

impl Received {
    fn from_message(message: &BorrowedMessage<'_>) -> Result<Self> {
        let text = |bytes: Option<&[u8]>, what: &str| {
            bytes
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .with_context(|| format!("message at offset {} has no {what}", message.offset()))
        };
        Ok(Self {
            key: text(message.key(), "key")?,
            payload: text(message.payload(), "payload")?,
            partition: message.partition(),
            offset: message.offset(),
        })
    }
}

fn new_producer(broker: &EmbeddedBroker) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()
        .context("creating the producer")
}

fn new_consumer(broker: &EmbeddedBroker, group: &str) -> Result<StreamConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the consumer")
}

/// Produces `count` keyed messages (`<prefix>-key-<i>` / `<prefix>-payload-<i>-<uuid>`), waits
/// for every acknowledgement, and returns key -> payload and the partitions they landed on.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    prefix: &str,
    count: usize,
) -> Result<(BTreeMap<String, String>, BTreeSet<i32>)> {
    let run = Uuid::now_v7().simple();
    let mut sent = BTreeMap::new();
    let mut deliveries = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}-key-{i:04}");
        let payload = format!("{prefix}-payload-{i}-{run}");
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| error)
            .with_context(|| format!("queueing message {i} for {topic}"))?;
        deliveries.push(delivery);
        sent.insert(key, payload);
    }
    let mut partitions = BTreeSet::new();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let delivered = timeout(WAIT, delivery)
            .await
            .with_context(|| format!("no acknowledgement for message {i} within {WAIT:?}"))?
            .context("producer dropped")?
            .map_err(|(error, _)| error)
            .with_context(|| format!("producing message {i} to {topic}"))?;
        partitions.insert(delivered.partition);
    }
    Ok((sent, partitions))
}

/// Receives until `count` distinct keys arrived; fails on a timeout or a duplicate key.
async fn receive(consumer: &StreamConsumer, count: usize) -> Result<Vec<Received>> {
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::with_capacity(count);
    let mut keys = BTreeSet::new();
    while keys.len() < count {
        let message = timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("only {} of {count} messages within {WAIT:?}", keys.len()))?
            .context("consuming")?;
        let record = Received::from_message(&message)?;
        ensure!(keys.insert(record.key.clone()), "duplicate: {record:?}");
        received.push(record);
    }
    Ok(received)
}

/// Fails if anything arrives within [`QUIET`].
async fn nothing_more(consumer: &StreamConsumer) -> Result<()> {
    if let Ok(message) = timeout(QUIET, consumer.recv()).await {
        let message = message.context("consuming")?;
        bail!(
            "unexpected extra message: {:?}",
            Received::from_message(&message)?
        );
    }
    Ok(())
}

fn as_map(received: &[Received]) -> BTreeMap<String, String> {
    received
        .iter()
        .map(|record| (record.key.clone(), record.payload.clone()))
        .collect()
}

#[tokio::test]
async fn a_consumer_group_receives_exactly_what_was_produced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = EmbeddedBroker::start(dir.path()).await?;
    let topic = unique("produce-consume");
    broker.create_topic(&topic, PARTITIONS).await?;

    let producer = new_producer(&broker)?;
    let (sent, partitions) = produce(&producer, &topic, "a", 1_000).await?;
    assert_eq!(sent.len(), 1_000);
    assert_eq!(
        partitions,
        (0..PARTITIONS).collect(),
        "keys spread over all partitions"
    );

    let consumer = new_consumer(&broker, &unique("group"))?;
    consumer.subscribe(&[&topic])?;
    let received = receive(&consumer, sent.len()).await?;
    assert_eq!(as_map(&received), sent);
    nothing_more(&consumer).await?;

    drop(consumer);
    drop(producer);
    broker.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn topics_messages_and_committed_offsets_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = unique("restart");
    let group = unique("group");

    // Before: produce, consume everything in `group`, commit, stop.
    let broker = EmbeddedBroker::start(dir.path()).await?;
    assert!(
        broker
            .database_path()
            .starts_with(dir.path().canonicalize()?),
        "the database is under the given directory, not the working directory: {}",
        broker.database_path().display()
    );
    match EmbeddedBroker::start(dir.path()).await {
        Err(Error::InUse { .. }) => {}
        other => bail!("a second broker on the same directory should be refused: {other:?}"),
    }
    broker.create_topic(&topic, PARTITIONS).await?;
    let producer = new_producer(&broker)?;
    let (old, _) = produce(&producer, &topic, "old", 300).await?;
    let consumer = new_consumer(&broker, &group)?;
    consumer.subscribe(&[&topic])?;
    assert_eq!(as_map(&receive(&consumer, old.len()).await?), old);
    consumer.commit_consumer_state(CommitMode::Sync)?;
    drop(consumer);
    drop(producer);
    broker.shutdown().await?;
    assert!(dir.path().join(retain_broker::DATABASE_FILE).is_file());

    // After: the same directory, a new broker (and port).
    let broker = EmbeddedBroker::start(dir.path()).await?;
    match broker.create_topic(&topic, PARTITIONS).await {
        Err(
            ref error @ Error::CreateTopic {
                code: RDKafkaErrorCode::TopicAlreadyExists,
                ..
            },
        ) => assert!(error.is_bad_input()),
        other => bail!("the topic should have survived the restart: {other:?}"),
    }
    let producer = new_producer(&broker)?;
    let (new, _) = produce(&producer, &topic, "new", 100).await?;

    // The same group resumes from its committed offsets: only the new messages.
    let resumed = new_consumer(&broker, &group)?;
    resumed.subscribe(&[&topic])?;
    let received = receive(&resumed, new.len()).await?;
    assert_eq!(as_map(&received), new, "nothing old, everything new");
    nothing_more(&resumed).await?;

    // A new group reads the old messages too: they were kept.
    let fresh = new_consumer(&broker, &unique("fresh-group"))?;
    fresh.subscribe(&[&topic])?;
    let mut everything = old.clone();
    everything.extend(new.clone());
    assert_eq!(
        as_map(&receive(&fresh, everything.len()).await?),
        everything
    );

    drop(fresh);
    drop(resumed);
    drop(producer);
    broker.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn two_consumers_in_a_group_split_the_partitions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = EmbeddedBroker::start(dir.path()).await?;
    let topic = unique("split");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS).await?;

    // Both consumers poll from the start, so that the group rebalances to both of them.
    let consumers = [
        Arc::new(new_consumer(&broker, &group)?),
        Arc::new(new_consumer(&broker, &group)?),
    ];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut pollers = Vec::new();
    for (index, consumer) in consumers.iter().enumerate() {
        consumer.subscribe(&[&topic])?;
        let consumer = Arc::clone(consumer);
        let tx = tx.clone();
        pollers.push(tokio::spawn(async move {
            loop {
                let record = consumer
                    .recv()
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|message| Received::from_message(&message));
                if tx.send((index, record)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let assignments = timeout(WAIT, async {
        loop {
            let assigned = consumers
                .iter()
                .map(|consumer| {
                    consumer.assignment().map(|list| {
                        list.elements()
                            .iter()
                            .map(|element| element.partition())
                            .collect::<BTreeSet<_>>()
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let all: BTreeSet<_> = assigned.iter().flatten().copied().collect();
            if assigned.iter().all(|one| !one.is_empty())
                && all.len() == assigned.iter().map(BTreeSet::len).sum::<usize>()
                && all == (0..PARTITIONS).collect()
            {
                return anyhow::Ok(assigned);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("the two consumers did not split the partitions within {WAIT:?}"))??;

    let producer = new_producer(&broker)?;
    let (sent, _) = produce(&producer, &topic, "split", 300).await?;

    let deadline = Instant::now() + WAIT;
    let mut by_consumer: [Vec<Received>; 2] = Default::default();
    let mut keys = BTreeSet::new();
    while keys.len() < sent.len() {
        let (index, record) = timeout_at(deadline, rx.recv())
            .await
            .with_context(|| {
                format!(
                    "only {} of {} messages within {WAIT:?}",
                    keys.len(),
                    sent.len()
                )
            })?
            .context("pollers ended")?;
        let record = record?;
        ensure!(keys.insert(record.key.clone()), "duplicate: {record:?}");
        by_consumer[index].push(record);
    }
    if let Ok(Some((index, record))) = timeout(QUIET, rx.recv()).await {
        bail!("unexpected extra message for consumer {index}: {record:?}");
    }

    for (index, received) in by_consumer.iter().enumerate() {
        assert!(!received.is_empty(), "consumer {index} received nothing");
        let partitions: BTreeSet<_> = received.iter().map(|record| record.partition).collect();
        assert!(
            partitions.is_subset(&assignments[index]),
            "consumer {index} read {partitions:?} but was assigned {:?}",
            assignments[index]
        );
    }
    let all: Vec<_> = by_consumer.concat();
    assert_eq!(as_map(&all), sent);

    for poller in &pollers {
        poller.abort();
    }
    for poller in pollers {
        _ = poller.await;
    }
    drop(consumers);
    drop(producer);
    broker.shutdown().await?;
    Ok(())
}
