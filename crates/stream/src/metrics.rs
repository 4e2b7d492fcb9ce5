//! What the stages count, and the Prometheus text that `/metrics` serves.
//!
//! Every stage owns one [`StageMetrics`]: counters it bumps on its hot path (relaxed atomics),
//! the consumer lag librdkafka reports in its statistics, and, for the scheduler, what is
//! buffered and how long landings take. A [`MetricsRegistry`] renders the stages of a process
//! in the Prometheus text exposition format (version 0.0.4); [`serve_metrics`] serves it over
//! HTTP. Names and labels are documented in `docs/operations.md`; they never carry message
//! content, only topic names, partition numbers and stage names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::Statistics;

/// Upper bounds (seconds) of the landing-latency histogram's buckets.
pub const FLUSH_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A counter or gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets the value (gauges).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with the fixed [`FLUSH_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; FLUSH_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in FLUSH_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What one stage of this process has done since it started.
#[derive(Debug)]
pub struct StageMetrics {
    stage: &'static str,
    /// Records read from the stage's input topic (after positioning).
    pub consumed: Counter,
    /// Records produced to the next topic and acknowledged (classifier).
    pub produced: Counter,
    /// Records sent to the dead-letter topic and acknowledged.
    pub dead_lettered: Counter,
    /// Rows landed in the table (scheduler).
    pub landed_rows: Counter,
    /// Delta commits made (scheduler).
    pub landings: Counter,
    /// Parquet bytes written (scheduler).
    pub landed_bytes: Counter,
    /// Records dropped as already landed: classifier replays and re-deliveries (scheduler).
    pub duplicates: Counter,
    /// Input offset commits made (classifier).
    pub commits: Counter,
    /// Rows buffered and not yet landed (gauge, scheduler).
    pub buffered_rows: Counter,
    /// Encoded input bytes buffered and not yet landed (gauge, scheduler).
    pub buffered_bytes: Counter,
    /// How long each landing took, from the start of the flush to the Delta commit.
    pub flush_seconds: Histogram,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl StageMetrics {
    /// Zeroed metrics for `stage` (`classifier` or `scheduler`).
    pub fn new(stage: &'static str) -> Self {
        StageMetrics {
            stage,
            consumed: Counter::default(),
            produced: Counter::default(),
            dead_lettered: Counter::default(),
            landed_rows: Counter::default(),
            landings: Counter::default(),
            landed_bytes: Counter::default(),
            duplicates: Counter::default(),
            commits: Counter::default(),
            buffered_rows: Counter::default(),
            buffered_bytes: Counter::default(),
            flush_seconds: Histogram::default(),
            lag: Mutex::new(BTreeMap::new()),
        }
    }

    /// The stage's name, the `stage` label.
    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Takes the consumer lag of every assigned partition of `topic` from librdkafka's
    /// statistics (the high watermark minus the group's committed offset). Partitions librdkafka
    /// no longer reports (revoked) are dropped; unknown lag (-1) is not reported.
    pub fn record_lag(&self, topic: &str, statistics: &Statistics) {
        let mut lag = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        lag.retain(|(t, _), _| t != topic);
        if let Some(t) = statistics.topics.get(topic) {
            for (&p, part) in &t.partitions {
                if p >= 0 && part.consumer_lag >= 0 {
                    lag.insert((topic.to_owned(), p), part.consumer_lag);
                }
            }
        }
    }

    /// The last reported lag of each partition, by (topic, partition).
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The stages of one process, rendered together.
#[derive(Debug, Default, Clone)]
pub struct MetricsRegistry {
    stages: Vec<Arc<StageMetrics>>,
}

/// One metric family: name, type, help and how to read it from a stage.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    read: fn(&StageMetrics) -> u64,
}

const FAMILIES: [Family; 10] = [
    Family {
        name: "retain_consumed_total",
        help: "Records read from the stage's input topic.",
        kind: "counter",
        read: |m| m.consumed.get(),
    },
    Family {
        name: "retain_produced_total",
        help: "Records produced to the next topic and acknowledged.",
        kind: "counter",
        read: |m| m.produced.get(),
    },
    Family {
        name: "retain_dead_lettered_total",
        help: "Records sent to the dead-letter topic and acknowledged.",
        kind: "counter",
        read: |m| m.dead_lettered.get(),
    },
    Family {
        name: "retain_landed_rows_total",
        help: "Rows landed in the records table.",
        kind: "counter",
        read: |m| m.landed_rows.get(),
    },
    Family {
        name: "retain_landings_total",
        help: "Delta commits made by the scheduler.",
        kind: "counter",
        read: |m| m.landings.get(),
    },
    Family {
        name: "retain_landed_bytes_total",
        help: "Parquet bytes written to the records table.",
        kind: "counter",
        read: |m| m.landed_bytes.get(),
    },
    Family {
        name: "retain_duplicates_total",
        help: "Records dropped because they had already landed (replays, re-deliveries).",
        kind: "counter",
        read: |m| m.duplicates.get(),
    },
    Family {
        name: "retain_offset_commits_total",
        help: "Input offset commits made by the classifier.",
        kind: "counter",
        read: |m| m.commits.get(),
    },
    Family {
        name: "retain_buffered_rows",
        help: "Rows buffered by the scheduler and not yet landed.",
        kind: "gauge",
        read: |m| m.buffered_rows.get(),
    },
    Family {
        name: "retain_buffered_bytes",
        help: "Encoded input bytes buffered by the scheduler and not yet landed.",
        kind: "gauge",
        read: |m| m.buffered_bytes.get(),
    },
];

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        MetricsRegistry::default()
    }

    /// Adds a stage.
    pub fn register(&mut self, stage: Arc<StageMetrics>) {
        self.stages.push(stage);
    }

    /// The Prometheus text exposition of every stage.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP retain_build_info The running Retain version.\n# TYPE retain_build_info gauge\nretain_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for f in &FAMILIES {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}",
                f.name, f.help, f.name, f.kind
            );
            for s in &self.stages {
                let _ = writeln!(out, "{}{{stage=\"{}\"}} {}", f.name, s.stage, (f.read)(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP retain_consumer_lag Records behind the high watermark, per assigned partition (librdkafka statistics).\n# TYPE retain_consumer_lag gauge"
        );
        for s in &self.stages {
            for ((topic, partition), lag) in s.lag() {
                let _ = writeln!(
                    out,
                    "retain_consumer_lag{{stage=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}",
                    s.stage,
                    escape(&topic)
                );
            }
        }
        let name = "retain_flush_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} How long the scheduler's landings take.\n# TYPE {name} histogram"
        );
        for s in &self.stages {
            let h = &s.flush_seconds;
            let st = s.stage;
            for (bound, bucket) in FLUSH_BUCKETS.iter().zip(&h.buckets) {
                let n = bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{stage=\"{st}\",le=\"{bound}\"}} {n}");
            }
            let count = h.count();
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{stage=\"{st}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{stage=\"{st}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{stage=\"{st}\"}} {count}");
        }
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (and `GET /healthz`) on `listener` until `shutdown` is cancelled.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: MetricsRegistry,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Request, Response, StatusCode};

    let registry = Arc::new(registry);
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = Arc::clone(&registry);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let registry = Arc::clone(&registry);
            async move {
                let (status, content_type, body) = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => (
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        registry.render(),
                    ),
                    (&Method::GET, "/healthz") => {
                        (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
                    }
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found: try /metrics\n".into(),
                    ),
                };
                Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
            }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_for_every_stage() {
        let c = Arc::new(StageMetrics::new("classifier"));
        let s = Arc::new(StageMetrics::new("scheduler"));
        c.consumed.add(7);
        c.produced.add(6);
        c.dead_lettered.inc();
        s.landed_rows.add(5);
        s.flush_seconds.observe(Duration::from_millis(70));
        s.flush_seconds.observe(Duration::from_secs(3));
        let window = r#"{"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,
            "p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0}"#;
        let json = format!(
            r#"{{"name": "x", "client_id": "x", "type": "consumer", "ts": 0, "time": 0, "age": 0,
            "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0, "metadata_cache_cnt": 0,
            "brokers": {{}},
            "topics": {{ "retain.classified": {{ "topic": "retain.classified", "age": 0,
                "metadata_age": 0, "batchsize": {window}, "batchcnt": {window},
                "partitions": {{ "0": {}, "1": {}, "-1": {} }} }} }} }}"#,
            partition(0, 12),
            partition(1, -1),
            partition(-1, 5)
        );
        let stats: Statistics = serde_json::from_str(&json).unwrap();
        s.record_lag("retain.classified", &stats);
        let mut r = MetricsRegistry::new();
        r.register(c);
        r.register(s);
        let text = r.render();
        for line in [
            "retain_consumed_total{stage=\"classifier\"} 7",
            "retain_produced_total{stage=\"classifier\"} 6",
            "retain_dead_lettered_total{stage=\"classifier\"} 1",
            "retain_landed_rows_total{stage=\"scheduler\"} 5",
            "retain_consumer_lag{stage=\"scheduler\",topic=\"retain.classified\",partition=\"0\"} 12",
            "retain_flush_duration_seconds_bucket{stage=\"scheduler\",le=\"0.1\"} 1",
            "retain_flush_duration_seconds_bucket{stage=\"scheduler\",le=\"5\"} 2",
            "retain_flush_duration_seconds_bucket{stage=\"scheduler\",le=\"+Inf\"} 2",
            "retain_flush_duration_seconds_count{stage=\"scheduler\"} 2",
            "retain_flush_duration_seconds_sum{stage=\"scheduler\"} 3.07",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Unknown lag and librdkafka's internal partition are not reported.
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert!(!text.contains("partition=\"-1\""), "{text}");
        // Every sample line belongs to a declared family.
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(declared.contains(&family), "{name} has no # TYPE line");
        }
    }

    fn partition(p: i32, lag: i64) -> String {
        format!(
            r#"{{"partition": {p}, "broker": 0, "leader": 0, "desired": true, "unknown": false,
            "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0, "xmit_msgq_bytes": 0,
            "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "active", "query_offset": 0,
            "next_offset": 0, "app_offset": 0, "stored_offset": 0, "committed_offset": 0,
            "eof_offset": 0, "lo_offset": 0, "hi_offset": 0, "ls_offset": 0,
            "consumer_lag": {lag}, "consumer_lag_stored": {lag}, "txmsgs": 0, "txbytes": 0,
            "rxmsgs": 0, "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0, "msgs_inflight": 0,
            "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0}}"#
        )
    }
}
