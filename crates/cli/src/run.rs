//! `retain run classifier|scheduler|events|all`: the long-lived streaming stages as a process.
//!
//! Settings are layered (crate::config): built-in defaults < the `--config` file (TOML,
//! `deploy/retain.toml` documents every key) < `RETAIN__SECTION__KEY` variables < flags. The chosen stage(s) run until SIGINT
//! or SIGTERM; a graceful stop cancels them, waits for the current landing and prints what each
//! stage did. A second signal exits at once (exit 1): nothing is lost, the next run reads again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use retain_stream::{
    CancellationToken, Classifier, ClassifierConfig, ClassifierStats, DeadLetterSink,
    DeadLettersConfig, DeadLettersStats, EventsConfig, EventsFacts, EventsStage, EventsStats,
    KafkaConfig, MetricsRegistry, NoFacts, Scheduler, SchedulerConfig, SchedulerStats,
    TOPIC_CLASSIFIED, TOPIC_MAIL, TOPIC_RETENTION_EVENTS, dead_letter_topic, serve_metrics,
};
use tokio::task::JoinSet;

use crate::config;

use crate::output::BadInput;
use crate::policy_cmd::load_policy;

/// Which stage(s) to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// `retain.mail` → classify → `retain.classified`.
    Classifier,
    /// `retain.classified` → schedule → the `records` Delta table.
    Scheduler,
    /// `retain.retention-events` → the `events` table → re-dated `records` (one process owns
    /// the whole topic; docs/events.md).
    Events,
    /// The dead-letter topics → the `dead_letters` table (one process per lake).
    DeadLetters,
    /// Every stage in one process: classifier, scheduler, events stage and dead-letter sink
    /// (`--replica`: the classifier and the scheduler only, for further machines).
    All,
}

/// How often the scheduler re-reads the `events` table by default.
const EVENTS_REFRESH: Duration = Duration::from_secs(10);

/// Arguments of `retain run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The stage to run: classifier, scheduler, events, dead-letters or all.
    #[arg(value_enum)]
    stage: Stage,
    /// With `all`: the classifier and the scheduler only, for further machines (the events
    /// stage and the dead-letter sink run once per lake; more only race each other).
    #[arg(long)]
    replica: bool,
    /// A TOML configuration file (see deploy/retain.toml); flags and environment override it.
    #[arg(long, value_name = "FILE", env = "RETAIN_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (`host:port,...`). Overrides `[kafka] bootstrap-servers`.
    #[arg(long, env = "RETAIN_BROKERS")]
    brokers: Option<String>,
    /// The `records` table location for the scheduler and the events stage: a path, `file://`
    /// or `s3://` URL. Overrides `[lake] location`.
    #[arg(long, env = "RETAIN_LAKE")]
    lake: Option<String>,
    /// A policy file layered over the built-in pack. Overrides `policy`.
    #[arg(long, value_name = "FILE", env = "RETAIN_POLICY")]
    policy: Option<PathBuf>,
    /// The mail topic. Overrides `[topics] input`.
    #[arg(long, env = "RETAIN_INPUT_TOPIC")]
    input_topic: Option<String>,
    /// The classified topic. Overrides `[topics] classified`.
    #[arg(long, env = "RETAIN_CLASSIFIED_TOPIC")]
    classified_topic: Option<String>,
    /// The retention-events topic. Overrides `[topics] retention-events`.
    #[arg(long, env = "RETAIN_EVENTS_TOPIC")]
    events_topic: Option<String>,
    /// The consumer group of the stage (not with `all`: set `[classifier] group` and
    /// `[scheduler] group`). Overrides the file.
    #[arg(long, env = "RETAIN_GROUP")]
    group: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9464). Overrides
    /// `[metrics] listen`.
    #[arg(long, value_name = "ADDR", env = "RETAIN_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// Everything a run needs, resolved and validated.
#[derive(Debug)]
struct Resolved {
    policy: Option<PathBuf>,
    /// Where `/metrics` is served, if anywhere.
    metrics: Option<SocketAddr>,
    classifier: Option<ClassifierConfig>,
    scheduler: Option<SchedulerConfig>,
    /// The scheduler's `events` table join: where, and how often it is re-read.
    events_facts: Option<(String, Duration)>,
    events: Option<EventsConfig>,
    dead_letters: Option<DeadLettersConfig>,
}

/// The table locations of the stages that write to the lake: `records` and its siblings.
#[derive(Debug, Clone)]
struct Tables {
    records: String,
    audit: String,
    events: String,
    dead_letters: String,
    storage: HashMap<String, String>,
}

/// Runs `retain run`.
pub fn run(a: RunArgs) -> Result<ExitCode> {
    let resolved = resolve(&a)?;
    let policy = Arc::new(load_policy(resolved.policy.as_deref())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(resolved, policy))
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// The Kafka settings: brokers from `brokers` (a flag or its variable) or the file's `[kafka]
/// bootstrap-servers`, with `[kafka.settings]`; `None` when neither names any broker.
pub(crate) fn kafka_config(
    brokers: Option<&str>,
    file: &config::FileConfig,
    origin: &str,
) -> Result<Option<KafkaConfig>> {
    let Some(brokers) = brokers
        .map(str::to_owned)
        .or(file.kafka.bootstrap_servers.clone())
        .filter(|b| !b.trim().is_empty())
    else {
        return Ok(None);
    };
    let mut kafka = KafkaConfig::new(brokers);
    kafka.settings = flatten(&file.kafka.settings, origin, "kafka.settings")?;
    Ok(Some(kafka))
}

/// Reads the file (if any) and layers the flags over it.
fn resolve(a: &RunArgs) -> Result<Resolved> {
    if a.replica && a.stage != Stage::All {
        return Err(bad("--replica goes with `retain run all` only"));
    }
    if a.stage == Stage::Events && a.group.is_some() {
        return Err(bad(
            "--group (RETAIN_GROUP) does not apply to the events stage: it owns every partition of its topic and keeps its position in the records table",
        ));
    }
    if a.stage == Stage::DeadLetters && a.group.is_some() {
        return Err(bad(
            "--group (RETAIN_GROUP) does not apply to the dead-letter sink: it reads every partition of the .dlq topics and keeps its position in the dead_letters table",
        ));
    }
    let (file, origin) = config::load(a.config.as_deref(), std::env::vars())?;
    let kafka = kafka_config(a.brokers.as_deref(), &file, &origin)?.ok_or_else(|| {
        bad(format!(
            "no Kafka brokers: set --brokers, RETAIN_BROKERS or [kafka] bootstrap-servers in {origin}"
        ))
    })?;
    let input = a
        .input_topic
        .clone()
        .or(file.topics.input.clone())
        .unwrap_or_else(|| TOPIC_MAIL.to_owned());
    let classified = a
        .classified_topic
        .clone()
        .or(file.topics.classified.clone())
        .unwrap_or_else(|| TOPIC_CLASSIFIED.to_owned());
    if a.group.is_some() && a.stage == Stage::All {
        return Err(bad(
            "--group (RETAIN_GROUP) names one stage's group; with `all` set [classifier] group and [scheduler] group in the configuration file",
        ));
    }

    let classifier = matches!(a.stage, Stage::Classifier | Stage::All).then(|| {
        let mut c = ClassifierConfig::new(kafka.clone()).with_topics(&input, &classified);
        if let Some(g) = a.group.clone().or(file.classifier.group.clone()) {
            c.group_id = g;
        }
        if let Some(n) = file.classifier.max_in_flight {
            c.max_in_flight = n;
        }
        c
    });
    if classifier.as_ref().is_some_and(|c| c.max_in_flight == 0) {
        return Err(bad(format!(
            "{origin}: classifier.max-in-flight must be at least 1"
        )));
    }

    // The tables of the scheduler, the events stage and the dead-letter sink: `records`, and
    // its siblings `audit`, `events` and `dead_letters` unless set.
    let tables = if matches!(a.stage, Stage::Classifier) {
        None
    } else {
        let location = a
            .lake
            .clone()
            .or(file.lake.location.clone())
            .filter(|l| !l.trim().is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "the {} needs a table location: set --lake, RETAIN_LAKE or [lake] location in {origin}",
                    match a.stage {
                        Stage::Events => "events stage",
                        Stage::DeadLetters => "dead-letter sink",
                        _ => "scheduler",
                    }
                ))
            })?;
        let sibling = |set: &Option<String>, name: &str, var: &str| -> Result<String> {
            match set.clone().filter(|l| !l.trim().is_empty()) {
                Some(l) => Ok(l),
                None => sibling_table(&location, name).ok_or_else(|| {
                    bad(format!(
                        "the records table location `{location}` does not end in `records`, so the {name} table cannot default to its sibling `{name}`: set [lake] {name} ({var}) in {origin}"
                    ))
                }),
            }
        };
        let audit = sibling(&file.lake.audit, "audit", "RETAIN__LAKE__AUDIT")?;
        let events = sibling(&file.lake.events, "events", "RETAIN__LAKE__EVENTS")?;
        let dead = sibling(
            &file.lake.dead_letters,
            "dead_letters",
            "RETAIN__LAKE__DEAD_LETTERS",
        )?;
        let storage = flatten(&file.lake.storage, &origin, "lake.storage")?
            .into_iter()
            .collect::<HashMap<_, _>>();
        Some(Tables {
            records: location,
            audit,
            events,
            dead_letters: dead,
            storage,
        })
    };
    let events_topic = a
        .events_topic
        .clone()
        .or(file.topics.retention_events.clone())
        .unwrap_or_else(|| TOPIC_RETENTION_EVENTS.to_owned());

    let mut events_facts = None;
    let scheduler = if matches!(a.stage, Stage::Scheduler | Stage::All) {
        let t = tables.clone().expect("resolved above");
        let mut s = SchedulerConfig::new(kafka.clone(), t.records).with_topics(&classified, &input);
        s.audit_location = Some(t.audit);
        s.storage_options = t.storage;
        if let Some(g) = a.group.clone().or(file.scheduler.group.clone()) {
            s.group_id = g;
        }
        let f = &file.scheduler;
        for (key, zero) in [
            ("max-rows", f.max_rows == Some(0)),
            ("max-latency", f.max_latency.is_some_and(|d| d.0.is_zero())),
            ("max-bytes", f.max_bytes.is_some_and(|b| b.0 == 0)),
            (
                "target-file-size",
                f.target_file_size.is_some_and(|b| b.0 == 0),
            ),
            (
                "events-refresh",
                f.events_refresh.is_some_and(|d| d.0.is_zero()),
            ),
        ] {
            if zero {
                return Err(bad(format!(
                    "{origin}: scheduler.{key} must be more than 0"
                )));
            }
        }
        if let Some(n) = f.max_rows {
            s.flush.max_rows = n;
        }
        if let Some(d) = f.max_latency {
            s.flush.max_latency = d.0;
        }
        if let Some(b) = f.max_bytes {
            s.flush.max_bytes = usize::try_from(b.0).unwrap_or(usize::MAX);
        }
        if let Some(b) = f.target_file_size {
            s.flush.target_file_size = b.0;
        }
        events_facts = Some((t.events, f.events_refresh.map_or(EVENTS_REFRESH, |d| d.0)));
        Some(s)
    } else {
        None
    };

    let once = a.stage == Stage::All && !a.replica;
    let dead_letters = if a.stage == Stage::DeadLetters || once {
        let t = tables.clone().expect("resolved above");
        let mut d = DeadLettersConfig::new(kafka.clone(), &t.dead_letters);
        d.topics = [&input, &classified, &events_topic]
            .iter()
            .map(|t| dead_letter_topic(t))
            .collect();
        d.storage_options = t.storage;
        Some(d)
    } else {
        None
    };
    let events = if a.stage == Stage::Events || once {
        let t = tables.expect("resolved above");
        let f = &file.events;
        for (key, zero) in [
            ("max-events", f.max_events == Some(0)),
            ("max-latency", f.max_latency.is_some_and(|d| d.0.is_zero())),
            (
                "recheck-window",
                f.recheck_window.is_some_and(|d| d.0.is_zero()),
            ),
        ] {
            if zero {
                return Err(bad(format!("{origin}: events.{key} must be more than 0")));
            }
        }
        let mut e = EventsConfig::new(kafka.clone(), &t.records, &t.events);
        e.topic = events_topic;
        e.audit_location = Some(t.audit);
        e.storage_options = t.storage;
        if let Some(n) = f.max_events {
            e.max_events = n;
        }
        if let Some(d) = f.max_latency {
            e.max_latency = d.0;
        }
        if let Some(d) = f.recheck_window {
            e.recheck_window = d.0;
        }
        Some(e)
    } else {
        None
    };
    Ok(Resolved {
        policy: a.policy.clone().or(file.policy),
        metrics: a.metrics_addr.or(file.metrics.listen),
        classifier,
        scheduler,
        events_facts,
        events,
        dead_letters,
    })
}

/// `location` with its last segment `records` made `name` (`lake/records` → `lake/events`).
fn sibling_table(records: &str, name: &str) -> Option<String> {
    let trimmed = records.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, "records")) => Some(format!("{parent}/{name}")),
        None if trimmed == "records" => Some(name.to_owned()),
        _ => None,
    }
}

/// A table of settings as `dotted.key = "text"` pairs: nested tables are joined with dots, numbers
/// and booleans written as text. Values are never put into errors (they may be secrets).
pub(crate) fn flatten(
    table: &toml::Table,
    origin: &str,
    section: &str,
) -> Result<BTreeMap<String, String>> {
    fn walk(
        prefix: &str,
        table: &toml::Table,
        out: &mut BTreeMap<String, String>,
    ) -> std::result::Result<(), String> {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Table(t) => {
                    walk(&key, t, out)?;
                    continue;
                }
                toml::Value::Datetime(_) | toml::Value::Array(_) => return Err(key),
            };
            out.insert(key, text);
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out).map_err(|key| {
        bad(format!(
            "{origin}: {section}.{key} must be a string, number or boolean"
        ))
    })?;
    Ok(out)
}

/// What one stage task ended with.
enum Outcome {
    Classifier(retain_stream::Result<ClassifierStats>),
    Scheduler(retain_stream::Result<SchedulerStats>),
    Events(retain_stream::Result<EventsStats>),
    DeadLetters(retain_stream::Result<DeadLettersStats>),
}

async fn serve(r: Resolved, policy: Arc<retain_policy::Policy>) -> Result<ExitCode> {
    let stop = CancellationToken::new();
    let mut stages = JoinSet::new();
    let mut registry = MetricsRegistry::new();
    if let Some(c) = r.classifier {
        eprintln!(
            "classifier: {} -> {} (group {}) on {}",
            c.input_topic, c.output_topic, c.group_id, c.kafka.bootstrap_servers
        );
        let classifier = Classifier::new(c, Arc::clone(&policy));
        registry.register(classifier.metrics());
        let run = classifier.run(stop.clone());
        stages.spawn(async move { Outcome::Classifier(run.await) });
    }
    if let Some(s) = r.scheduler {
        if let Some(audit) = &s.audit_location {
            crate::audit_cmd::policy_loaded(audit, &s.storage_options, &policy, "retain-run")
                .await?;
        }
        // No facts source is wired yet: records are scheduled on what the mail itself says, plus
        // the retention events of the `events` table that match them (re-read every refresh).
        let (events_location, every) = r.events_facts.clone().expect("resolved with the scheduler");
        let mut table =
            retain_events::EventsTable::open_or_create(&events_location, s.storage_options.clone())
                .await
                .context("opening the events table")?;
        let facts = Arc::new(EventsFacts::new(Arc::new(NoFacts)));
        facts.set(table.all().await.context("reading the events table")?);
        tokio::spawn(Arc::clone(&facts).refresh_loop(table, every, stop.clone()));
        eprintln!(
            "scheduler: {} -> records table (group {}) on {}; facts: none; events: the events table every {}",
            s.input_topic,
            s.group_id,
            s.kafka.bootstrap_servers,
            humantime::format_duration(every)
        );
        let scheduler = Scheduler::new(s, Arc::clone(&policy), facts);
        registry.register(scheduler.metrics());
        let run = scheduler.run(stop.clone());
        stages.spawn(async move { Outcome::Scheduler(run.await) });
    }
    if let Some(e) = r.events {
        if let Some(audit) = &e.audit_location {
            crate::audit_cmd::policy_loaded(audit, &e.storage_options, &policy, "retain-run")
                .await?;
        }
        eprintln!(
            "events: {} -> events table -> records table on {}",
            e.topic, e.kafka.bootstrap_servers
        );
        let run = EventsStage::new(e, Arc::clone(&policy)).run(stop.clone());
        stages.spawn(async move { Outcome::Events(run.await) });
    }
    if let Some(d) = r.dead_letters {
        eprintln!(
            "dead letters: {} -> dead_letters table on {}",
            d.topics.join(", "),
            d.kafka.bootstrap_servers
        );
        let run = DeadLetterSink::new(d).run(stop.clone());
        stages.spawn(async move { Outcome::DeadLetters(run.await) });
    }
    if let Some(addr) = r.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bad(format!("cannot serve metrics on {addr}: {e}")))?;
        let local = listener.local_addr().unwrap_or(addr);
        eprintln!("metrics: http://{local}/metrics");
        tokio::spawn(serve_metrics(listener, registry, stop.clone()));
    }

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut first = None;
    tokio::select! {
        name = &mut signal => {
            eprintln!("{}; stopping after the current landing (again to exit at once)", name?);
        }
        done = stages.join_next() => first = done,
    }
    stop.cancel();
    // A second signal ends the process at once; whatever was not landed is read again later.
    tokio::spawn(async {
        if shutdown_signal().await.is_ok() {
            eprintln!("stopped without waiting");
            std::process::exit(1);
        }
    });

    let mut failure = None;
    let mut outcomes = Vec::new();
    if let Some(done) = first {
        outcomes.push(done);
    }
    while let Some(done) = stages.join_next().await {
        outcomes.push(done);
    }
    for done in outcomes {
        match done.context("a stage panicked")? {
            Outcome::Classifier(Ok(s)) => outln!(
                "classifier: {} read, {} classified, {} dead-lettered, {} commits",
                s.consumed,
                s.classified,
                s.dead_lettered,
                s.commits
            ),
            Outcome::Scheduler(Ok(s)) => outln!(
                "scheduler: {} read, {} rows landed in {} landings, {} duplicates dropped, {} re-deliveries skipped, {} dead-lettered",
                s.consumed,
                s.rows_landed,
                s.landings,
                s.duplicates,
                s.redelivered,
                s.dead_lettered
            ),
            Outcome::Events(Ok(s)) => outln!(
                "events: {} read, {} stored, {} dead-lettered, {} rows re-dated in {} batches",
                s.consumed,
                s.stored,
                s.undecodable,
                s.rows_changed,
                s.batches
            ),
            Outcome::DeadLetters(Ok(s)) => outln!(
                "dead letters: {} read, {} stored in {} commits",
                s.consumed,
                s.stored,
                s.batches
            ),
            Outcome::DeadLetters(Err(e)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("the dead-letter sink failed"));
            }
            Outcome::Events(Err(e)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("the events stage failed"));
            }
            Outcome::Classifier(Err(e)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("the classifier failed"));
            }
            Outcome::Scheduler(Err(e)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("the scheduler failed"));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Waits for SIGINT or SIGTERM and names it.
#[cfg(unix)]
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn shutdown_signal() -> Result<&'static str> {
    tokio::signal::ctrl_c()
        .await
        .context("listening for Ctrl-C")?;
    Ok("Ctrl-C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_flatten_to_dotted_keys() {
        let c: config::FileConfig = toml::from_str(
            "[kafka.settings]\nsession.timeout.ms = 6000\n\"security.protocol\" = \"SSL\"\n",
        )
        .unwrap();
        let s = flatten(&c.kafka.settings, "f", "kafka.settings").unwrap();
        assert_eq!(s["session.timeout.ms"], "6000");
        assert_eq!(s["security.protocol"], "SSL");
        let c: config::FileConfig = toml::from_str("[kafka.settings]\nx = [1]\n").unwrap();
        let e = flatten(&c.kafka.settings, "f", "kafka.settings").unwrap_err();
        assert!(e.to_string().contains("kafka.settings.x"), "{e}");
    }

    fn args(line: &[&str]) -> RunArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        <Cli as clap::Parser>::try_parse_from(std::iter::once("run").chain(line.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn the_events_stage_resolves_its_tables_topic_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("retain.toml");
        std::fs::write(
            &file,
            "[topics]\nretention-events = \"ev\"\n[events]\nmax-events = 7\nrecheck-window = \"1m\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let r = resolve(&args(&[
            "events",
            "--brokers",
            "b:9092",
            "--lake",
            "l/records",
            "--config",
            f,
        ]))
        .unwrap();
        let e = r.events.unwrap();
        assert_eq!(
            (e.topic.as_str(), e.events_location.as_str()),
            ("ev", "l/events")
        );
        assert_eq!(e.audit_location.as_deref(), Some("l/audit"));
        assert_eq!(
            (e.max_events, e.recheck_window),
            (7, Duration::from_secs(60))
        );
        assert!(r.scheduler.is_none() && r.classifier.is_none());

        let r = resolve(&args(&[
            "all",
            "--brokers",
            "b:9092",
            "--lake",
            "l/records",
        ]))
        .unwrap();
        assert_eq!(
            r.events_facts,
            Some(("l/events".to_owned(), EVENTS_REFRESH))
        );
        let e = r.events.expect("`all` starts the events stage");
        assert_eq!(e.events_location, "l/events");
        let d = r.dead_letters.expect("`all` starts the dead-letter sink");
        assert_eq!(d.location, "l/dead_letters");
        assert_eq!(
            d.topics,
            [
                "retain.mail.dlq",
                "retain.classified.dlq",
                "retain.retention-events.dlq"
            ]
        );
        let r = resolve(&args(&[
            "all",
            "--replica",
            "--brokers",
            "b:9092",
            "--lake",
            "l/records",
        ]))
        .unwrap();
        assert!(r.events.is_none() && r.dead_letters.is_none());
        assert!(r.scheduler.is_some() && r.classifier.is_some());
        let e = resolve(&args(&["scheduler", "--replica", "--brokers", "b"])).unwrap_err();
        assert!(e.to_string().contains("--replica"), "{e}");

        let e = resolve(&args(&["events", "--brokers", "b", "--lake", "l/x"])).unwrap_err();
        assert!(e.to_string().contains("does not end in `records`"), "{e}");
        let e = resolve(&args(&[
            "events",
            "--brokers",
            "b",
            "--lake",
            "l/records",
            "--group",
            "g",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--group"), "{e}");
        std::fs::write(&file, "[events]\nmax-events = 0\n").unwrap();
        let e = resolve(&args(&[
            "events",
            "--brokers",
            "b",
            "--lake",
            "l/records",
            "--config",
            f,
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("events.max-events"), "{e}");
    }
}
