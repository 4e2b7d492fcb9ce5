//! The streaming pipeline benchmark: end-to-end messages/s against the raw consume rate of the
//! same broker measured in the same run, pipeline-only throughput without the broker, and the
//! stages' resident memory while they drain a backlog.
//!
//! ```sh
//! cargo build --release -p retain-cli      # the stages run as `retain run all`, a separate process
//! cargo run --release -p retain-benches --example pipeline -- --count 1000000
//! ```
//!
//! One run, in order:
//! 1. generate N synthetic messages (Avro, single-object framing) and produce them to
//!    `retain.mail` on an embedded broker (P partitions, keyed by message id);
//! 2. raw consume: a bare rdkafka `BaseConsumer` (fresh group) reads all N back, touching every
//!    payload byte;
//! 3. end to end: `retain run all` (classifier + scheduler, a separate process, so the broker's
//!    memory is not counted) drains the backlog into a fresh `records` table; the harness counts
//!    landed rows from the Delta log and samples the process's `VmRSS` every 200 ms;
//! 4. raw consume of `retain.classified` (the second hop), the same way as 2;
//! 5. pipeline only, no broker: M classified records as bytes in memory → decode → schedule →
//!    `RecordRow` → Arrow batch → Delta, 10,000 rows per landing (and, before it, the classifier's
//!    CPU path: mail bytes → decode → classify → encode).
//!
//! Results: a table on standard output and a JSON file under `--out`. Progress goes to standard
//! error. No message content is printed: only counts, sizes and rates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use retain_broker::EmbeddedBroker;
use retain_codec::{
    ClassifiedRecord, Framing, Lineage, SchemaRegistry, decode_classified_record,
    decode_mail_message, encode_classified_record, encode_mail_message,
};
use retain_generate::Generator;
use retain_lake::deltalake::arrow::array::AsArray;
use retain_lake::deltalake::arrow::datatypes::Int64Type;
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_lake::{RecordBatchBuilder, RecordRow, RecordsTable, TxnMark};
use retain_model::Facts;
use retain_policy::{Policy, Record};
use retain_stream::{
    APP_LINEAGE, APP_SCHEDULER, CancellationToken, Classifier, ClassifierConfig, KafkaConfig,
    NoFacts, Scheduler, SchedulerConfig, TOPIC_CLASSIFIED, TOPIC_MAIL, TOPIC_RETENTION_EVENTS,
    apply_facts, dead_letter_topic,
};
use serde::Serialize;

/// Rows per landing in the pipeline-only run (the scheduler's default `max-rows`).
const FLUSH_ROWS: usize = 10_000;
/// How often the stages' memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Produced messages awaiting acknowledgement before the producer waits for the oldest.
const PRODUCE_WINDOW: usize = 50_000;

/// Streaming pipeline benchmark (see the module docs).
#[derive(Parser, Debug)]
struct Args {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Partitions of `retain.mail` and `retain.classified`.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Classified records in the pipeline-only run (at most `--count`).
    #[arg(long, default_value_t = 200_000)]
    pipeline_count: usize,
    /// Where the JSON result goes (`pipeline-<count>.json`); default: the system temp dir.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the broker's SQLite file and the tables go (a temp dir inside it, removed after).
    #[arg(long)]
    work: Option<PathBuf>,
    /// How the stages run: as `retain run all` in a separate process (memory measured), or as
    /// tasks in this process (no memory figure).
    #[arg(long, value_enum, default_value_t = Stages::Process)]
    stages: Stages,
    /// The `retain` binary (default: `$CARGO_TARGET_DIR/release/retain`, else
    /// `target/release/retain`).
    #[arg(long)]
    retain: Option<PathBuf>,
    /// Give up on any one step after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    timeout_secs: u64,
    /// Skip the broker steps; run the pipeline-only measurement alone.
    #[arg(long)]
    pipeline_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Stages {
    Process,
    InProcess,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    machine: Machine,
    count: usize,
    partitions: i32,
    seed: u64,
    stages: Stages,
    generate: Option<Generate>,
    produce: Option<Rate>,
    raw_consume_mail: Option<Raw>,
    end_to_end: Option<EndToEnd>,
    raw_consume_classified: Option<Raw>,
    pipeline_only: Pipeline,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    /// `/proc/loadavg` when the run started (other work on the machine skews the figures).
    load_at_start: String,
    /// `/proc/loadavg` when it ended.
    load_at_end: String,
}

#[derive(Debug, Serialize)]
struct Generate {
    messages: usize,
    payload_bytes: u64,
    mean_payload_bytes: f64,
    seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Rate {
    messages: usize,
    bytes: u64,
    seconds: f64,
    messages_per_s: f64,
    mb_per_s: f64,
}

impl Rate {
    fn new(messages: usize, bytes: u64, seconds: f64) -> Self {
        Rate {
            messages,
            bytes,
            seconds,
            messages_per_s: messages as f64 / seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds,
        }
    }
}

/// A bare consumer's read of one topic.
#[derive(Debug, Serialize)]
struct Raw {
    topic: String,
    /// From `subscribe` (group join included) to the last message.
    wall: Rate,
    /// From the first message to the last.
    from_first_message: Rate,
    /// Between 10 % and 90 % of the messages read.
    steady_10_90_messages_per_s: f64,
    checksum: u64,
}

#[derive(Debug, Serialize)]
struct EndToEnd {
    /// From starting the stages to the last row landed (the Delta log says so).
    wall: Rate,
    /// From the first row landed to the last.
    from_first_landing: Rate,
    /// Between 10 % and 90 % of the rows landed.
    steady_10_90_messages_per_s: f64,
    /// Parquet bytes written to the table (from the Delta log).
    parquet_bytes: u64,
    /// Rows counted by SQL afterwards, and distinct record keys (exactly once: both = count).
    rows: i64,
    distinct_record_keys: i64,
    table_version: u64,
    /// `retain run all`'s own counters line(s), when run as a process.
    stage_output: Vec<String>,
    memory: Option<Memory>,
}

#[derive(Debug, Serialize)]
struct Memory {
    /// `VmHWM` just before the stop signal.
    peak_rss_mib: f64,
    /// Highest `VmRSS` sampled.
    max_sampled_rss_mib: f64,
    /// `VmRSS` at the first sample at or after each share of the rows had landed.
    rss_at_progress: Vec<(String, f64)>,
    /// Every sample: seconds since start, `VmRSS` MiB, rows landed.
    samples: Vec<(f64, f64, u64)>,
}

#[derive(Debug, Serialize)]
struct Pipeline {
    records: usize,
    /// Mail bytes → decode → classify → `ClassifiedRecord` → encode (the classifier's CPU path).
    classify: Rate,
    /// Classified bytes → decode → schedule → `RecordRow` → batch → Delta, the whole of it.
    schedule_and_land: Rate,
    /// Of which: decode + schedule + push into the Arrow builders.
    decode_schedule_push_seconds: f64,
    /// Of which: finishing the Arrow batches.
    finish_seconds: f64,
    /// Of which: writing Parquet and committing to Delta.
    land_seconds: f64,
    landings: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.count > 0, "--count must be at least 1");
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let machine = machine();
    let work_parent = args.work.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work_parent)
        .with_context(|| format!("creating {}", work_parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix("retain-pipeline-bench-")
        .tempdir_in(&work_parent)
        .context("creating the work directory")?;
    eprintln!("work directory: {}", work.path().display());
    let retain = match args.stages {
        Stages::Process if !args.pipeline_only => Some(retain_binary(args.retain.as_deref())?),
        _ => None,
    };
    let policy = Arc::new(Policy::builtin().context("loading the built-in policy")?);
    let timeout = Duration::from_secs(args.timeout_secs);

    // 1. Generate, every payload in memory before the clock starts for producing.
    let t = Instant::now();
    let payloads: Vec<(String, Vec<u8>)> = Generator::new(args.seed)
        .take(args.count)
        .map(|g| {
            let bytes = encode_mail_message(&g.message, Framing::SingleObject)?;
            Ok((g.message.message_id, bytes))
        })
        .collect::<Result<_>>()?;
    let payload_bytes: u64 = payloads.iter().map(|(_, p)| p.len() as u64).sum();
    let generate = Generate {
        messages: payloads.len(),
        payload_bytes,
        mean_payload_bytes: payload_bytes as f64 / payloads.len() as f64,
        seconds: t.elapsed().as_secs_f64(),
    };
    eprintln!(
        "generated {} messages, {:.0} bytes each on average, in {:.1} s",
        generate.messages, generate.mean_payload_bytes, generate.seconds
    );

    let mut report = Report {
        date: Utc::now().to_rfc3339(),
        machine,
        count: args.count,
        partitions: args.partitions,
        seed: args.seed,
        stages: args.stages,
        generate: None,
        produce: None,
        raw_consume_mail: None,
        end_to_end: None,
        raw_consume_classified: None,
        pipeline_only: pipeline_only(
            &policy,
            &payloads[..args.pipeline_count.min(payloads.len())],
            args.partitions,
            &work.path().join("pipeline-records"),
        )
        .await?,
    };
    report.generate = Some(generate);

    if !args.pipeline_only {
        let broker = EmbeddedBroker::start(&work.path().join("broker"))
            .await
            .context("starting the embedded broker")?;
        let bootstrap = broker.bootstrap_servers();
        eprintln!("embedded broker on {bootstrap}");
        for (topic, partitions) in [
            (TOPIC_MAIL.to_owned(), args.partitions),
            (TOPIC_CLASSIFIED.to_owned(), args.partitions),
            (dead_letter_topic(TOPIC_MAIL), 1),
            (dead_letter_topic(TOPIC_CLASSIFIED), 1),
            // `retain run all` runs the events stage too (idle here: no events).
            (TOPIC_RETENTION_EVENTS.to_owned(), 1),
            (dead_letter_topic(TOPIC_RETENTION_EVENTS), 1),
        ] {
            broker.create_topic(&topic, partitions).await?;
        }

        // 2. Produce the backlog.
        let produce = produce(&bootstrap, &payloads, timeout).await?;
        eprintln!(
            "produced {} messages in {:.1} s ({:.0} messages/s)",
            produce.messages, produce.seconds, produce.messages_per_s
        );
        report.produce = Some(produce);
        drop(payloads);

        // 3. Raw consume of the backlog.
        let raw = raw_consume_blocking(&bootstrap, TOPIC_MAIL, args.count, timeout).await?;
        eprintln!(
            "raw consume of {TOPIC_MAIL}: {:.0} messages/s (wall), {:.0} from the first message",
            raw.wall.messages_per_s, raw.from_first_message.messages_per_s
        );
        report.raw_consume_mail = Some(raw);

        // 4. End to end.
        let table = work.path().join("records");
        let e2e = end_to_end(
            &args,
            retain.as_deref(),
            &bootstrap,
            &policy,
            &table,
            payload_bytes,
            timeout,
        )
        .await?;
        eprintln!(
            "end to end: {:.0} messages/s (wall), {:.0} steady",
            e2e.wall.messages_per_s, e2e.steady_10_90_messages_per_s
        );
        report.end_to_end = Some(e2e);

        // 5. Raw consume of the second hop.
        let raw = raw_consume_blocking(&bootstrap, TOPIC_CLASSIFIED, args.count, timeout).await?;
        eprintln!(
            "raw consume of {TOPIC_CLASSIFIED}: {:.0} messages/s (wall)",
            raw.wall.messages_per_s
        );
        report.raw_consume_classified = Some(raw);
        broker
            .shutdown()
            .await
            .context("stopping the embedded broker")?;
    }

    report.machine.load_at_end = load_average();
    print_report(&report);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("retain-pipeline-bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let file = out.join(format!("pipeline-{}.json", args.count));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!("results: {}", file.display());
    work.close().context("removing the work directory")?;
    Ok(())
}

/// The machine the run was on (from /proc).
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = status_field(&meminfo, "MemTotal:").unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_kib as f64 / (1 << 20) as f64,
        load_at_start: load_average(),
        load_at_end: String::new(),
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `retain` binary to run the stages with; it must exist.
fn retain_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("release/retain"),
    };
    ensure!(
        path.is_file(),
        "no `retain` binary at {} (build it with `cargo build --release -p retain-cli`, or pass --retain)",
        path.display()
    );
    Ok(path)
}

/// Produces every payload to `retain.mail`, keyed by message id, acks=all and idempotent (as the
/// demo and `retain import` do); returns once all are acknowledged.
async fn produce(
    bootstrap: &str,
    payloads: &[(String, Vec<u8>)],
    timeout: Duration,
) -> Result<Rate> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .create()
        .context("creating the producer")?;
    let started = Instant::now();
    let mut window: VecDeque<DeliveryFuture> = VecDeque::with_capacity(PRODUCE_WINDOW);
    let mut bytes = 0u64;
    for (i, (key, payload)) in payloads.iter().enumerate() {
        loop {
            let record = FutureRecord::to(TOPIC_MAIL).key(key).payload(payload);
            match producer.send_result(record) {
                Ok(d) => {
                    window.push_back(d);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match window.pop_front() {
                        Some(d) => acknowledged(d).await?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => return Err(e).context("queueing a message"),
            }
        }
        bytes += payload.len() as u64;
        while window.len() >= PRODUCE_WINDOW {
            if let Some(d) = window.pop_front() {
                acknowledged(d).await?;
            }
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!("  produced {}", i + 1);
        }
        if started.elapsed() > timeout {
            bail!(
                "producing timed out after {} s ({i} messages queued)",
                timeout.as_secs()
            );
        }
    }
    for d in window {
        acknowledged(d).await?;
    }
    Ok(Rate::new(
        payloads.len(),
        bytes,
        started.elapsed().as_secs_f64(),
    ))
}

async fn acknowledged(d: DeliveryFuture) -> Result<()> {
    d.await
        .context("the producer was dropped")?
        .map_err(|(e, _)| e)
        .context("producing to retain.mail")?;
    Ok(())
}

async fn raw_consume_blocking(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Raw> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || raw_consume(&bootstrap, &topic, expected, timeout))
        .await
        .context("the raw consumer panicked")?
}

/// A bare rdkafka consumer in a fresh group reads `expected` messages from `topic`, adding up
/// every payload byte (so each is touched once); nothing else.
fn raw_consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Result<Raw> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("retain-bench-raw-{topic}-{nanos}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the raw consumer")?;
    let started = Instant::now();
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    let (mut n, mut bytes, mut checksum) = (0usize, 0u64, 0u64);
    let mut first = None;
    let (mut at10, mut at90) = (None, None);
    while n < expected {
        if started.elapsed() > timeout {
            bail!(
                "raw consume of {topic}: only {n} of {expected} messages after {} s",
                timeout.as_secs()
            );
        }
        let Some(received) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = received.with_context(|| format!("consuming {topic}"))?;
        first.get_or_insert_with(Instant::now);
        if let Some(p) = m.payload() {
            bytes += p.len() as u64;
            checksum = p
                .iter()
                .fold(checksum, |a, &b| a.wrapping_add(u64::from(b)));
        }
        n += 1;
        if n * 10 >= expected && at10.is_none() {
            at10 = Some((Instant::now(), n as u64));
        }
        if n * 10 >= expected * 9 && at90.is_none() {
            at90 = Some((Instant::now(), n as u64));
        }
        if n % 250_000 == 0 {
            eprintln!("  read {n} from {topic}");
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(started);
    Ok(Raw {
        topic: topic.to_owned(),
        wall: Rate::new(n, bytes, (end - started).as_secs_f64()),
        from_first_message: Rate::new(n, bytes, (end - first).as_secs_f64()),
        steady_10_90_messages_per_s: steady(at10, at90),
        checksum,
    })
}

/// Messages/s between the first points at which 10 % and 90 % were done (instant, messages).
fn steady(at10: Option<(Instant, u64)>, at90: Option<(Instant, u64)>) -> f64 {
    match (at10, at90) {
        (Some((a, n)), Some((b, m))) if b > a => (m - n) as f64 / (b - a).as_secs_f64(),
        _ => f64::NAN,
    }
}

/// The stages while they run.
enum Running {
    Process {
        child: Child,
        stdout: PathBuf,
        stderr: PathBuf,
    },
    InProcess {
        stop: CancellationToken,
        classifier: tokio::task::JoinHandle<retain_stream::Result<retain_stream::ClassifierStats>>,
        scheduler: tokio::task::JoinHandle<retain_stream::Result<retain_stream::SchedulerStats>>,
    },
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Process { child, .. } => Some(child.id()),
            Running::InProcess { .. } => None,
        }
    }

    /// `Some(why)` once the stages stopped on their own.
    fn stopped(&mut self) -> Option<String> {
        match self {
            Running::Process { child, stderr, .. } => match child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "`retain run all` exited ({status}); its standard error ends:\n{}",
                    tail(stderr, 20)
                )),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for `retain run all`: {e}")),
            },
            Running::InProcess {
                classifier,
                scheduler,
                ..
            } => (classifier.is_finished() || scheduler.is_finished())
                .then(|| "a stage stopped before everything landed".to_owned()),
        }
    }

    /// Stops the stages gracefully (SIGTERM for the process); returns their counters.
    async fn stop(self) -> Result<Vec<String>> {
        match self {
            Running::Process {
                mut child, stdout, ..
            } => {
                let pid = child.id().to_string();
                let signalled = Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .context("running kill -TERM")?;
                ensure!(signalled.success(), "kill -TERM {pid} failed");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Some(status) = child.try_wait()? {
                        ensure!(
                            status.success(),
                            "`retain run all` exited with {status} after SIGTERM"
                        );
                        break;
                    }
                    if Instant::now() > deadline {
                        child.kill().ok();
                        child.wait().ok();
                        bail!("`retain run all` did not stop within 60 s of SIGTERM; killed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let out = std::fs::read_to_string(&stdout).unwrap_or_default();
                Ok(out.lines().map(str::to_owned).collect())
            }
            Running::InProcess {
                stop,
                classifier,
                scheduler,
            } => {
                stop.cancel();
                let c = classifier.await.context("the classifier panicked")??;
                let s = scheduler.await.context("the scheduler panicked")??;
                Ok(vec![format!("{c:?}"), format!("{s:?}")])
            }
        }
    }
}

/// The last `n` lines of a file (the stages log ids and counts, never message content).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs the classifier and the scheduler from the backlog until all `count` rows have landed in
/// a fresh table at `table`, sampling the stages' memory when they run as a process. Rates in
/// MB/s are over `input_bytes`, the Avro payloads of the backlog.
async fn end_to_end(
    args: &Args,
    retain: Option<&Path>,
    bootstrap: &str,
    policy: &Arc<Policy>,
    table: &Path,
    input_bytes: u64,
    timeout: Duration,
) -> Result<EndToEnd> {
    let location = table.to_str().context("the work path is not UTF-8")?;
    let started = Instant::now();
    let mut running = match retain {
        Some(bin) => {
            let dir = table.parent().unwrap_or(table);
            let (stdout, stderr) = (dir.join("retain.stdout"), dir.join("retain.stderr"));
            let child = Command::new(bin)
                .args(["run", "all", "--brokers", bootstrap, "--lake", location])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout)?)
                .stderr(std::fs::File::create(&stderr)?)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            eprintln!("started `retain run all` (pid {})", child.id());
            Running::Process {
                child,
                stdout,
                stderr,
            }
        }
        None => {
            let kafka = KafkaConfig::new(bootstrap);
            let stop = CancellationToken::new();
            let classifier = tokio::spawn(
                Classifier::new(ClassifierConfig::new(kafka.clone()), Arc::clone(policy))
                    .run(stop.clone()),
            );
            let scheduler = tokio::spawn(
                Scheduler::new(
                    SchedulerConfig::new(kafka, location),
                    Arc::clone(policy),
                    Arc::new(NoFacts),
                )
                .run(stop.clone()),
            );
            Running::InProcess {
                stop,
                classifier,
                scheduler,
            }
        }
    };

    let count = args.count as u64;
    let mut log = DeltaLogRows::new(table);
    let mut samples: Vec<(f64, f64, u64)> = Vec::new();
    let mut hwm_kib = 0;
    let (mut first_landing, mut at10, mut at90) = (None, None, None);
    let mut last_report = 0;
    let result: Result<Instant> = async {
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let rows = log.rows()?;
            let now = Instant::now();
            if rows > 0 {
                first_landing.get_or_insert(now);
            }
            if rows * 10 >= count && at10.is_none() {
                at10 = Some((now, rows));
            }
            if rows * 10 >= count * 9 && at90.is_none() {
                at90 = Some((now, rows));
            }
            if let Some(pid) = running.pid() {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(rss) = status_field(&status, "VmRSS:") {
                    samples.push(((now - started).as_secs_f64(), rss as f64 / 1024.0, rows));
                }
                if let Some(h) = status_field(&status, "VmHWM:") {
                    hwm_kib = hwm_kib.max(h);
                }
            }
            if rows >= last_report + count / 10 {
                last_report = rows;
                eprintln!("  landed {rows} of {count}");
            }
            if rows >= count {
                return Ok(now);
            }
            if let Some(why) = running.stopped() {
                bail!("{why}");
            }
            if now - started > timeout {
                bail!(
                    "end to end: only {rows} of {count} rows landed after {} s",
                    timeout.as_secs()
                );
            }
        }
    }
    .await;
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            if let Err(stop) = running.stop().await {
                eprintln!("stopping the stages after a failure: {stop:#}");
            }
            return Err(e);
        }
    };
    let stage_output = running.stop().await?;

    // Exactly once, by SQL: rows and distinct record keys.
    let t = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let ctx = SessionContext::new();
    t.delta_table().update_datafusion_session(&ctx.state())?;
    ctx.register_table("records", t.delta_table().table_provider().await?)?;
    let batches = ctx
        .sql("SELECT count(*), count(DISTINCT record_key) FROM records")
        .await?
        .collect()
        .await?;
    let rows = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let distinct = batches[0].column(1).as_primitive::<Int64Type>().value(0);
    ensure!(
        rows == args.count as i64 && distinct == rows,
        "the table holds {rows} rows ({distinct} distinct record keys); expected {}",
        args.count
    );

    let first = first_landing.unwrap_or(started);
    let memory = (!samples.is_empty()).then(|| {
        let at = |pct: u64| {
            samples
                .iter()
                .find(|s| s.2 * 100 >= count * pct)
                .map_or(f64::NAN, |s| s.1)
        };
        let mut rss_at_progress = vec![(
            "start (nothing landed)".to_owned(),
            samples
                .iter()
                .take_while(|s| s.2 == 0)
                .last()
                .map_or(f64::NAN, |s| s.1),
        )];
        for pct in [10, 25, 50, 75, 100] {
            rss_at_progress.push((format!("{pct} %"), at(pct)));
        }
        Memory {
            peak_rss_mib: hwm_kib as f64 / 1024.0,
            max_sampled_rss_mib: samples.iter().map(|s| s.1).fold(0.0, f64::max),
            rss_at_progress,
            samples: samples.clone(),
        }
    });
    Ok(EndToEnd {
        wall: Rate::new(args.count, input_bytes, (done - started).as_secs_f64()),
        from_first_landing: Rate::new(args.count, input_bytes, (done - first).as_secs_f64()),
        parquet_bytes: log.bytes,
        steady_10_90_messages_per_s: steady(at10, at90),
        rows,
        distinct_record_keys: distinct,
        table_version: t.version(),
        stage_output,
        memory,
    })
}

/// Counts landed rows from the Delta log's commit files (`numRecords` of every `add`), reading
/// each commit once: cheap enough to poll while the stages run, and independent of them.
struct DeltaLogRows {
    log: PathBuf,
    next_version: u64,
    rows: u64,
    /// Parquet bytes added.
    bytes: u64,
}

impl DeltaLogRows {
    fn new(table: &Path) -> Self {
        DeltaLogRows {
            log: table.join("_delta_log"),
            next_version: 0,
            rows: 0,
            bytes: 0,
        }
    }

    fn rows(&mut self) -> Result<u64> {
        loop {
            let file = self.log.join(format!("{:020}.json", self.next_version));
            let Ok(text) = std::fs::read_to_string(&file) else {
                return Ok(self.rows);
            };
            for line in text.lines() {
                let action: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("parsing {}", file.display()))?;
                let Some(add) = action.get("add") else {
                    continue;
                };
                let stats: serde_json::Value = add
                    .get("stats")
                    .and_then(|s| s.as_str())
                    .map(serde_json::from_str)
                    .transpose()?
                    .with_context(|| format!("an add without stats in {}", file.display()))?;
                self.rows += stats
                    .get("numRecords")
                    .and_then(serde_json::Value::as_u64)
                    .with_context(|| format!("an add without numRecords in {}", file.display()))?;
                self.bytes += add
                    .get("size")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or_default();
            }
            self.next_version += 1;
        }
    }
}

/// A `Key:   123 kB` field of /proc/*/status or /proc/meminfo, in KiB.
fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Without a broker: the classifier's CPU path over mail bytes, then the scheduler's path from
/// classified bytes to Delta, `FLUSH_ROWS` per landing, in a fresh table at `table`.
async fn pipeline_only(
    policy: &Policy,
    mail: &[(String, Vec<u8>)],
    partitions: i32,
    table: &Path,
) -> Result<Pipeline> {
    let registry = SchemaRegistry::new();
    let p = partitions as usize;
    eprintln!("pipeline only: {} records", mail.len());

    let t = Instant::now();
    let mut classified = Vec::with_capacity(mail.len());
    let mut mail_bytes = 0u64;
    for (i, (_, bytes)) in mail.iter().enumerate() {
        mail_bytes += bytes.len() as u64;
        let message = decode_mail_message(bytes, &registry)?;
        let classification = policy.classify(&message);
        let record = ClassifiedRecord::new(
            message,
            classification,
            "retain-benches",
            Lineage {
                topic: TOPIC_MAIL.to_owned(),
                partition: (i % p) as i32,
                offset: (i / p) as i64,
            },
        );
        classified.push(encode_classified_record(&record, Framing::SingleObject)?);
    }
    let classify = Rate::new(mail.len(), mail_bytes, t.elapsed().as_secs_f64());

    let location = table.to_str().context("the work path is not UTF-8")?;
    let mut t = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let facts = Facts::default();
    let (mut cpu, mut finish, mut land) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut landings = 0;
    let mut classified_bytes = 0u64;
    let started = Instant::now();
    for chunk in classified.chunks(FLUSH_ROWS) {
        let t0 = Instant::now();
        let mut builder = RecordBatchBuilder::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for bytes in chunk {
            classified_bytes += bytes.len() as u64;
            let mut record = decode_classified_record(bytes, &registry)?;
            apply_facts(&mut record.classification, &facts);
            let decision = policy.schedule(
                Record {
                    category: &record.classification.category,
                    created: record.message.created_date(),
                },
                &facts,
                &[],
            );
            let (jurisdiction, holder) = policy.effective(&facts);
            let row = RecordRow::new(&record, &decision, jurisdiction, holder)?;
            builder.push(&row);
            let n = next.entry(record.lineage.partition).or_default();
            *n = (*n).max(record.lineage.offset + 1);
        }
        let t1 = Instant::now();
        let batch = builder.finish(Utc::now())?;
        let t2 = Instant::now();
        let offsets: Vec<(i32, i64)> = next.into_iter().collect();
        // The scheduler also marks the classified topic's offsets; here they are the same.
        let marks: Vec<TxnMark<'_>> = offsets
            .iter()
            .map(|&(partition, next_offset)| TxnMark {
                app_id: APP_SCHEDULER,
                partition,
                next_offset,
            })
            .collect();
        let landed = t
            .land_with_marks(batch, APP_LINEAGE, &offsets, &marks)
            .await?;
        ensure!(
            landed.rows_landed == chunk.len(),
            "landed {} of {} rows",
            landed.rows_landed,
            chunk.len()
        );
        let t3 = Instant::now();
        cpu += t1 - t0;
        finish += t2 - t1;
        land += t3 - t2;
        landings += 1;
    }
    let schedule_and_land = Rate::new(
        classified.len(),
        classified_bytes,
        started.elapsed().as_secs_f64(),
    );
    eprintln!(
        "pipeline only: classify {:.0} messages/s, schedule and land {:.0} messages/s",
        classify.messages_per_s, schedule_and_land.messages_per_s
    );
    Ok(Pipeline {
        records: classified.len(),
        classify,
        schedule_and_land,
        decode_schedule_push_seconds: cpu.as_secs_f64(),
        finish_seconds: finish.as_secs_f64(),
        land_seconds: land.as_secs_f64(),
        landings,
    })
}

fn print_report(r: &Report) {
    println!(
        "\nStreaming pipeline benchmark, {} messages, {} partitions, seed {}",
        r.count, r.partitions, r.seed
    );
    println!(
        "machine: {} ({} cores, {:.0} GiB); load average {} at start, {} at end",
        r.machine.cpu,
        r.machine.cores,
        r.machine.memory_gib,
        r.machine.load_at_start,
        r.machine.load_at_end
    );
    if let Some(g) = &r.generate {
        println!(
            "payloads: {:.0} bytes mean Avro MailMessage, {:.1} MB in all",
            g.mean_payload_bytes,
            g.payload_bytes as f64 / 1e6
        );
    }
    let raw = r
        .raw_consume_mail
        .as_ref()
        .map(|x| x.wall.messages_per_s)
        .unwrap_or(f64::NAN);
    let raw_steady = r
        .raw_consume_mail
        .as_ref()
        .map(|x| x.steady_10_90_messages_per_s)
        .unwrap_or(f64::NAN);
    println!(
        "\n| measurement | messages | seconds | messages/s | MB/s | × raw consume |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let row = |name: &str, x: &Rate| {
        // Without the broker steps (`--pipeline-only`) there is no raw rate to compare with.
        let ratio = match raw.is_nan() {
            true => "—".to_owned(),
            false => format!("{:.2}", x.messages_per_s / raw),
        };
        println!(
            "| {name} | {} | {:.1} | {:.0} | {:.1} | {ratio} |",
            x.messages, x.seconds, x.messages_per_s, x.mb_per_s,
        );
    };
    if let Some(x) = &r.produce {
        row("produce to retain.mail (acks=all)", x);
    }
    if let Some(x) = &r.raw_consume_mail {
        row("raw consume retain.mail (wall, incl. group join)", &x.wall);
        row(
            "raw consume retain.mail (from first message)",
            &x.from_first_message,
        );
    }
    if let Some(x) = &r.end_to_end {
        row("end to end, mail → records table (wall)", &x.wall);
        row("end to end (from first landing)", &x.from_first_landing);
    }
    if let Some(x) = &r.raw_consume_classified {
        row("raw consume retain.classified (wall)", &x.wall);
    }
    let p = &r.pipeline_only;
    row(
        "pipeline only: classify (decode, classify, encode)",
        &p.classify,
    );
    row(
        "pipeline only: schedule and land (decode → Delta)",
        &p.schedule_and_land,
    );
    if let Some(e) = &r.end_to_end {
        println!(
            "\nsteady state (10 → 90 %): raw consume retain.mail {:.0} messages/s; end to end {:.0} messages/s ({:.2} ×)",
            raw_steady,
            e.steady_10_90_messages_per_s,
            e.steady_10_90_messages_per_s / raw_steady,
        );
    }
    println!(
        "schedule and land split: decode + schedule + push {:.2} s, finish batches {:.2} s, Parquet + Delta commit {:.2} s ({} landings)",
        p.decode_schedule_push_seconds, p.finish_seconds, p.land_seconds, p.landings
    );
    if let Some(m) = r.end_to_end.as_ref().and_then(|e| e.memory.as_ref()) {
        println!(
            "\n`retain run all` memory: peak RSS (VmHWM) {:.0} MiB, highest sample {:.0} MiB",
            m.peak_rss_mib, m.max_sampled_rss_mib
        );
        for (at, mib) in &m.rss_at_progress {
            println!("  RSS at {at}: {mib:.0} MiB");
        }
    }
    if let Some(e) = &r.end_to_end {
        println!(
            "\nexactly once: {} rows, {} distinct record keys, table version {}",
            e.rows, e.distinct_record_keys, e.table_version
        );
        for line in &e.stage_output {
            println!("  {line}");
        }
    }
}
