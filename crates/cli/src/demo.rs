//! `retain demo`: the whole pipeline on embedded defaults, in one process.
//!
//! Starts the embedded broker, creates the topics, generates synthetic healthcare mail and
//! produces it (Avro) to `retain.mail`, runs the classifier and the scheduler, waits until every
//! produced message has landed in the `records` Delta table under `./lake` (counting rows
//! against what was produced, never trusting watermarks), and prints what landed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use retain_broker::EmbeddedBroker;
use retain_codec::{Framing, encode_mail_message};
use retain_generate::Generator;
use retain_lake::RecordsTable;
use retain_lake::deltalake::arrow::array::{Array, AsArray, RecordBatch};
use retain_lake::deltalake::arrow::compute::cast;
use retain_lake::deltalake::arrow::datatypes::{DataType, Int64Type};
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_stream::{
    CancellationToken, Classifier, ClassifierConfig, InMemoryFacts, KafkaConfig, Known, Scheduler,
    SchedulerConfig, TOPIC_CLASSIFIED, TOPIC_MAIL, dead_letter_topic,
};
use serde::Serialize;

use crate::output::BadInput;
use crate::policy_cmd::load_policy;

/// A file that marks a lake as made by the demo, so a re-run may replace it.
const DEMO_MARKER: &str = ".retain-demo";
const PARTITIONS: i32 = 3;

/// Arguments of `retain demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many messages to generate.
    #[arg(long, short = 'n', default_value_t = 5_000, env = "RETAIN_DEMO_COUNT")]
    count: usize,
    /// Seed for the generator.
    #[arg(long, default_value_t = 42, env = "RETAIN_DEMO_SEED")]
    seed: u64,
    /// Where the lake goes (the `records` table is `<lake>/records`). A previous demo lake
    /// there is replaced; anything else there is refused.
    #[arg(long, default_value = "lake", env = "RETAIN_DEMO_LAKE")]
    lake: PathBuf,
    /// A policy file layered over the built-in pack.
    #[arg(long, env = "RETAIN_POLICY")]
    policy: Option<PathBuf>,
    /// Give up if not everything has landed after this many seconds.
    #[arg(long, default_value_t = 300, env = "RETAIN_DEMO_TIMEOUT")]
    timeout_secs: u64,
    /// Print the summary as JSON.
    #[arg(long, env = "RETAIN_DEMO_JSON")]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Sample {
    category: String,
    retain_until: Option<String>,
    status: String,
    governing: Option<String>,
    citation: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    produced: usize,
    landed: i64,
    distinct_records: i64,
    seconds: f64,
    lake: String,
    table: String,
    table_version: u64,
    policy_version: String,
    by_category: Vec<(String, i64)>,
    by_status: Vec<(String, i64)>,
    samples: Vec<Sample>,
    classifier: Stats,
    scheduler: Stats,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    consumed: u64,
    produced_or_landed: u64,
    dead_lettered: u64,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(a))
}

async fn demo(a: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let policy = Arc::new(load_policy(a.policy.as_deref())?);
    prepare_lake(&a.lake)?;
    let lake = std::fs::canonicalize(&a.lake)
        .with_context(|| format!("resolving {}", a.lake.display()))?;
    let table = lake.join("records");
    let table_location = table
        .to_str()
        .context("the lake path is not UTF-8")?
        .to_owned();
    say(a.json, &format!("lake: {}", lake.display()));

    // The broker keeps its SQLite storage beside the table, outside it.
    let broker = EmbeddedBroker::start(&lake.join("_broker")).await?;
    say(
        a.json,
        &format!("embedded broker on {}", broker.bootstrap_servers()),
    );
    for (topic, partitions) in [
        (TOPIC_MAIL.to_owned(), PARTITIONS),
        (TOPIC_CLASSIFIED.to_owned(), PARTITIONS),
        (dead_letter_topic(TOPIC_MAIL), 1),
        (dead_letter_topic(TOPIC_CLASSIFIED), 1),
    ] {
        broker.create_topic(&topic, partitions).await?;
    }

    // Generate and produce; the facts an EHR would know go to the scheduler's facts source.
    let generated: Vec<_> = Generator::new(a.seed).take(a.count).collect();
    let mut facts = InMemoryFacts::new();
    for g in &generated {
        let known = Known {
            facts: g.facts.clone(),
            events: g.events.clone(),
        };
        facts.insert_record(
            &g.message.tenant,
            &g.message.mailbox,
            &g.message.message_id,
            known,
        );
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .context("creating the producer")?;
    let mut deliveries = Vec::with_capacity(generated.len());
    for g in &generated {
        let bytes = encode_mail_message(&g.message, Framing::SingleObject)?;
        let record = FutureRecord::to(TOPIC_MAIL)
            .key(g.message.message_id.as_bytes())
            .payload(&bytes);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("queueing a message")?,
        );
    }
    for d in deliveries {
        d.await
            .context("the producer was dropped")?
            .map_err(|(e, _)| e)
            .context("producing to retain.mail")?;
    }
    drop(producer);
    say(
        a.json,
        &format!("produced {} messages to {TOPIC_MAIL}", generated.len()),
    );

    // Run both stages until every produced message has landed.
    let kafka = KafkaConfig::new(broker.bootstrap_servers());
    let stop = CancellationToken::new();
    let classifier = tokio::spawn(
        Classifier::new(ClassifierConfig::new(kafka.clone()), Arc::clone(&policy))
            .run(stop.clone()),
    );
    let audit_location = lake
        .join("audit")
        .to_str()
        .context("the lake path is not UTF-8")?
        .to_owned();
    crate::audit_cmd::policy_loaded(&audit_location, &Default::default(), &policy, "retain-demo")
        .await?;
    let mut scheduler_config = SchedulerConfig::new(kafka, table_location.clone());
    scheduler_config.flush.max_latency = Duration::from_millis(500);
    scheduler_config.audit_location = Some(audit_location);
    let scheduler = tokio::spawn(
        Scheduler::new(scheduler_config, Arc::clone(&policy), Arc::new(facts)).run(stop.clone()),
    );

    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let landed = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if classifier.is_finished() || scheduler.is_finished() {
            break None;
        }
        // Until the first landing there is no table: count 0.
        let n = count_rows(&table_location).await.unwrap_or_default();
        if n >= generated.len() as i64 {
            break Some(n);
        }
        if Instant::now() > deadline {
            stop.cancel();
            bail!(
                "only {n} of {} messages landed after {} s",
                generated.len(),
                a.timeout_secs
            );
        }
    };
    stop.cancel();
    let classifier = classifier.await.context("the classifier task panicked")??;
    let scheduler = scheduler.await.context("the scheduler task panicked")??;
    let Some(landed) = landed else {
        bail!("a stage stopped before everything landed");
    };
    broker.shutdown().await?;

    let summary = summarise(
        &policy,
        &lake,
        &table_location,
        generated.len(),
        landed,
        Stats {
            consumed: classifier.consumed,
            produced_or_landed: classifier.classified,
            dead_lettered: classifier.dead_lettered,
        },
        Stats {
            consumed: scheduler.consumed,
            produced_or_landed: scheduler.rows_landed,
            dead_lettered: scheduler.dead_lettered,
        },
        started,
    )
    .await?;
    print_summary(&summary, a.json)?;
    Ok(
        if summary.landed == summary.produced as i64 && summary.distinct_records == summary.landed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// Progress lines go to standard error, so `--json` output stays clean.
fn say(json: bool, line: &str) {
    if !json {
        eprintln!("{line}");
    }
}

/// Creates the lake folder, or replaces a previous demo lake; refuses anything else.
fn prepare_lake(lake: &Path) -> Result<()> {
    if lake.exists() {
        let is_demo = lake.join(DEMO_MARKER).exists();
        let empty = std::fs::read_dir(lake)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !is_demo && !empty {
            return Err(BadInput(format!(
                "{} exists and is not a demo lake (no {DEMO_MARKER}); choose another --lake",
                lake.display()
            ))
            .into());
        }
        std::fs::remove_dir_all(lake)
            .with_context(|| format!("removing the previous demo lake {}", lake.display()))?;
    }
    std::fs::create_dir_all(lake).with_context(|| format!("creating {}", lake.display()))?;
    std::fs::write(
        lake.join(DEMO_MARKER),
        "made by `retain demo`; a new demo run replaces this folder\n",
    )
    .with_context(|| format!("writing {}", lake.join(DEMO_MARKER).display()))?;
    Ok(())
}

async fn sql(location: &str, query: &str) -> Result<Vec<RecordBatch>> {
    let table = RecordsTable::open_or_create(location, Default::default()).await?;
    let ctx = SessionContext::new();
    table
        .delta_table()
        .update_datafusion_session(&ctx.state())?;
    ctx.register_table("records", table.delta_table().table_provider().await?)?;
    Ok(ctx.sql(query).await?.collect().await?)
}

async fn count_rows(location: &str) -> Result<i64> {
    let batches = sql(location, "SELECT count(*) FROM records").await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

/// Rows of (text, count) from a two-column query.
async fn counts(location: &str, query: &str) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for b in sql(location, query).await? {
        let names = cast(b.column(0), &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((names.value(i).to_owned(), n.value(i)));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn summarise(
    policy: &retain_policy::Policy,
    lake: &Path,
    location: &str,
    produced: usize,
    landed: i64,
    classifier: Stats,
    scheduler: Stats,
    started: Instant,
) -> Result<Summary> {
    let distinct = sql(location, "SELECT count(DISTINCT record_key) FROM records").await?;
    let distinct_records = distinct[0].column(0).as_primitive::<Int64Type>().value(0);
    let by_category = counts(
        location,
        "SELECT category, count(*) AS n FROM records GROUP BY category ORDER BY n DESC, category",
    )
    .await?;
    let by_status = counts(location, "SELECT retention_status, count(*) AS n FROM records GROUP BY retention_status ORDER BY n DESC").await?;
    // One example per category: the earliest-created record, with its governing citation.
    let rows = sql(
        location,
        "SELECT category, CAST(retain_until AS VARCHAR), retention_status, governing \
         FROM (SELECT *, row_number() OVER (PARTITION BY category ORDER BY created_date, record_key) AS k \
               FROM records) \
         WHERE k = 1 ORDER BY category",
    )
    .await?;
    let mut samples = samples_from(&rows)?;
    for s in &mut samples {
        s.citation = s
            .governing
            .as_ref()
            .and_then(|g| policy.obligations().iter().find(|o| &o.id == g))
            .map(|o| o.citation.clone());
    }
    let table = RecordsTable::open_or_create(location, Default::default()).await?;
    Ok(Summary {
        produced,
        landed,
        distinct_records,
        seconds: started.elapsed().as_secs_f64(),
        lake: lake.display().to_string(),
        table: location.to_owned(),
        table_version: table.version(),
        policy_version: policy.version().to_owned(),
        by_category,
        by_status,
        samples,
        classifier,
        scheduler,
    })
}

fn samples_from(batches: &[RecordBatch]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for b in batches {
        let col = |i: usize| -> Result<_> { Ok(cast(b.column(i), &DataType::Utf8)?) };
        let (cat, until, status, gov) = (col(0)?, col(1)?, col(2)?, col(3)?);
        let text = |a: &std::sync::Arc<dyn Array>, i: usize| {
            let s = a.as_string::<i32>();
            (!s.is_null(i)).then(|| s.value(i).to_owned())
        };
        for i in 0..b.num_rows() {
            out.push(Sample {
                category: text(&cat, i).unwrap_or_default(),
                retain_until: text(&until, i),
                status: text(&status, i).unwrap_or_default(),
                governing: text(&gov, i),
                citation: None,
            });
        }
    }
    Ok(out)
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    outln!(
        "\nLanded {} of {} messages ({} distinct records) in {:.1} s, exactly once.",
        s.landed,
        s.produced,
        s.distinct_records,
        s.seconds
    );
    outln!(
        "records table: {} (Delta, version {})",
        s.table,
        s.table_version
    );
    outln!("policy: {}\n", s.policy_version);
    let rows: Vec<Vec<String>> = s
        .by_category
        .iter()
        .map(|(c, n)| vec![c.clone(), n.to_string()])
        .collect();
    out!("{}", crate::output::table(&["category", "records"], &rows));
    let status: Vec<String> = s
        .by_status
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    outln!("\nretention: {}", status.join(", "));
    outln!("\nOne record per category (earliest created):");
    for x in &s.samples {
        let until = x.retain_until.clone().unwrap_or_else(|| x.status.clone());
        outln!(
            "  {:<24} {:<12} {}",
            x.category,
            until,
            x.governing.as_deref().unwrap_or("")
        );
        if let Some(c) = &x.citation {
            outln!("  {:<24} {:<12} {}", "", "", c);
        }
    }
    outln!(
        "\nclassifier: {} read, {} classified, {} dead-lettered; scheduler: {} read, {} landed",
        s.classifier.consumed,
        s.classifier.produced_or_landed,
        s.classifier.dead_lettered,
        s.scheduler.consumed,
        s.scheduler.produced_or_landed
    );
    outln!("\nNext:");
    outln!("  retain audit verify --lake {}", s.lake);
    outln!(
        "  retain policy explain --input docs/examples/cases/co-minor-clinical.json --format text"
    );
    outln!(
        "  python3 -c \"import deltalake; print(deltalake.DeltaTable('{}').to_pyarrow_table().num_rows)\"",
        s.table
    );
    Ok(())
}
