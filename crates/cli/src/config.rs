//! The configuration of `retain run`: a TOML file layered with `RETAIN__SECTION__KEY`
//! environment variables (`deploy/retain.toml` documents every key; `docs/configuration.md`
//! the rules).
//!
//! Precedence, lowest first: built-in defaults < the file < `RETAIN__…` variables < flags (and
//! the flags' own variables such as `RETAIN_BROKERS`). Durations are written like `"5s"`,
//! `"250ms"`, `"2m"`; sizes like `"64MiB"`, `"16MB"` or a number of bytes. Unknown keys are
//! refused, naming the file and line or the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::output::BadInput;

/// The prefix of configuration variables; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "RETAIN__";

/// The configuration file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// A policy file, relative to the working directory.
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub lake: LakeSection,
    #[serde(default)]
    pub topics: TopicsSection,
    #[serde(default)]
    pub classifier: ClassifierSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub serve: ServeSection,
}

/// `[kafka]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSection {
    pub bootstrap_servers: Option<String>,
    /// librdkafka settings, passed through (dotted keys may be written bare or quoted).
    #[serde(default)]
    pub settings: toml::Table,
}

/// `[lake]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LakeSection {
    pub location: Option<String>,
    /// The `audit` table; default: `location` with its last segment `records` made `audit`.
    pub audit: Option<String>,
    /// The `events` table; default: `location` with its last segment `records` made `events`.
    pub events: Option<String>,
    /// The `dead_letters` table; default: the sibling `dead_letters` of `location`.
    pub dead_letters: Option<String>,
    /// Object-store options (may hold keys; never printed).
    #[serde(default)]
    pub storage: toml::Table,
}

/// `[topics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopicsSection {
    pub input: Option<String>,
    pub classified: Option<String>,
    pub disposal_commands: Option<String>,
    pub retention_events: Option<String>,
}

/// `[classifier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassifierSection {
    pub group: Option<String>,
    pub max_in_flight: Option<usize>,
}

/// `[scheduler]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchedulerSection {
    pub group: Option<String>,
    pub max_rows: Option<usize>,
    pub max_latency: Option<HumanDuration>,
    pub max_bytes: Option<ByteSize>,
    pub target_file_size: Option<ByteSize>,
    /// How often the scheduler re-reads the `events` table it joins at landing.
    pub events_refresh: Option<HumanDuration>,
}

/// `[events]`: the events stage (`retain run events`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EventsSection {
    pub max_events: Option<usize>,
    pub max_latency: Option<HumanDuration>,
    pub recheck_window: Option<HumanDuration>,
}

/// `[serve]`: `retain serve` (its flags and variables override these).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeSection {
    /// The address to listen on.
    pub listen: Option<SocketAddr>,
    /// The users file, relative to the working directory.
    pub users: Option<PathBuf>,
    /// A PEM certificate chain: TLS is served when it is set (with `tls-key`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls-cert`.
    pub tls_key: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSection {
    /// Where `/metrics` is served (`host:port`); off when unset.
    pub listen: Option<SocketAddr>,
}

/// A duration written for people: `"5s"`, `"250ms"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| format!("`{text}` is not a duration like \"5s\" or \"250ms\": {e}"))
    }
}

/// A size in bytes: a number, or a number with a unit (`B`, `KB`/`MB`/`GB` = powers of 1000,
/// `KiB`/`MiB`/`GiB` = powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct ByteSize(pub u64);

/// What a size may be written as.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;
    fn try_from(raw: SizeText) -> std::result::Result<Self, String> {
        match raw {
            SizeText::Number(n) => Ok(ByteSize(n)),
            SizeText::Text(t) => parse_size(&t).map(ByteSize),
        }
    }
}

/// Parses `"64MiB"`, `"16 MB"`, `"1048576"`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("`{text}` is not a size like \"64MiB\", \"16MB\" or a number of bytes");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// The file at `path` (if any) with the `RETAIN__…` variables of `env` over it; `origin` names
/// where the settings came from, for messages.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(FileConfig, String)> {
    let (mut table, mut origin) = match path {
        Some(p) => (read_table(p)?, p.display().to_string()),
        None => (toml::Table::new(), "a --config file".to_owned()),
    };
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, value) in &vars {
        let (path, value) = env_entry(name, value)?;
        // Each variable alone must be a valid setting, so an error names the variable.
        let alone = nest(&path, value.clone());
        FileConfig::deserialize(alone)
            .map_err(|e| bad(format!("{name}: {}", e.message().trim())))?;
        insert(&mut table, &path, value);
    }
    if !vars.is_empty() {
        origin = format!("{origin} (with {} RETAIN__ variables)", vars.len());
    }
    let config = FileConfig::deserialize(table)
        .map_err(|e| bad(format!("{origin}: {}", e.message().trim())))?;
    Ok((config, origin))
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// Parses the configuration file; errors name the file, the line and the field.
fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "cannot read the configuration file {}: {e}",
            path.display()
        ))
    })?;
    let located = |e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| format!(":{}", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        bad(format!("{}{line}: {}", path.display(), e.message().trim()))
    };
    // Typed first, so a wrong key or value is reported with its line.
    toml::from_str::<FileConfig>(&text).map_err(located)?;
    toml::from_str(&text).map_err(located)
}

/// The key path and value of one `RETAIN__…` variable.
///
/// Sections and keys are upper-cased with `_` for `-`: `RETAIN__SCHEDULER__MAX_ROWS` is
/// `scheduler.max-rows`. Under `KAFKA__SETTINGS__` the rest is a librdkafka key with `_` for
/// `.` (`…__SASL_PASSWORD` is `sasl.password`); under `LAKE__STORAGE__` the rest is an
/// object-store key, kept as written (`…__AWS_REGION`). Values that read as TOML integers,
/// floats or booleans are those; anything else is a string.
fn env_entry(name: &str, value: &str) -> Result<(Vec<String>, toml::Value)> {
    let rest = &name[ENV_PREFIX.len()..];
    let parts: Vec<&str> = rest.split("__").collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!(
            "{name}: expected RETAIN__SECTION__KEY (sections and keys separated by two underscores)"
        )));
    }
    let kebab = |p: &str| p.to_ascii_lowercase().replace('_', "-");
    let path: Vec<String> = match parts.as_slice() {
        ["KAFKA", "SETTINGS", key] => vec![
            "kafka".into(),
            "settings".into(),
            key.to_ascii_lowercase().replace('_', "."),
        ],
        ["LAKE", "STORAGE", key] => vec!["lake".into(), "storage".into(), (*key).to_owned()],
        other => other.iter().map(|p| kebab(p)).collect(),
    };
    let passthrough = matches!(
        parts.as_slice(),
        ["KAFKA", "SETTINGS", _] | ["LAKE", "STORAGE", _]
    );
    let value = if passthrough {
        toml::Value::String(value.to_owned())
    } else {
        scalar(value)
    };
    Ok((path, value))
}

/// A variable's text as a TOML scalar when it reads as one, else as a string.
fn scalar(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = text.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if text.contains('.')
        && let Ok(f) = text.parse::<f64>()
        && f.is_finite()
        && text.parse::<std::net::SocketAddr>().is_err()
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(text.to_owned())
}

fn nest(path: &[String], value: toml::Value) -> toml::Table {
    let mut table = toml::Table::new();
    insert(&mut table, path, value);
    table
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, sections) = path
        .split_last()
        .expect("a variable names at least one key");
    let mut t = table;
    for s in sections {
        let entry = t
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/retain.toml");
        let (c, _) = load(Some(&path), []).expect("deploy/retain.toml parses");
        assert!(c.kafka.bootstrap_servers.is_some());
    }

    #[test]
    fn variables_override_the_file_and_name_themselves_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retain.toml");
        std::fs::write(
            &path,
            "[scheduler]\nmax-rows = 5\nmax-latency = \"2s\"\n[kafka.settings]\nsession.timeout.ms = 6000\n",
        )
        .unwrap();
        let (c, origin) = load(
            Some(&path),
            env(&[
                ("RETAIN__SCHEDULER__MAX_ROWS", "700"),
                ("RETAIN__SCHEDULER__TARGET_FILE_SIZE", "8MiB"),
                ("RETAIN__KAFKA__SETTINGS__SASL_PASSWORD", "12345"),
                ("RETAIN__LAKE__STORAGE__AWS_REGION", "us-east-1"),
                ("RETAIN__METRICS__LISTEN", "127.0.0.1:9464"),
                ("RETAIN_BROKERS", "not ours: a flag's variable"),
            ]),
        )
        .unwrap();
        assert!(origin.ends_with("(with 5 RETAIN__ variables)"), "{origin}");
        assert_eq!(c.scheduler.max_rows, Some(700));
        assert_eq!(
            c.scheduler.max_latency,
            Some(HumanDuration(Duration::from_secs(2)))
        );
        assert_eq!(c.scheduler.target_file_size, Some(ByteSize(8 << 20)));
        assert_eq!(
            c.kafka.settings["session"]["timeout"]["ms"].as_integer(),
            Some(6000)
        );
        // Passed-through settings stay strings, even when they look like numbers.
        assert_eq!(c.kafka.settings["sasl.password"].as_str(), Some("12345"));
        assert_eq!(c.lake.storage["AWS_REGION"].as_str(), Some("us-east-1"));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));

        let e = load(Some(&path), env(&[("RETAIN__SCHEDULER__MAX_ROWZ", "1")])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("RETAIN__SCHEDULER__MAX_ROWZ") && msg.contains("max-rowz"),
            "{msg}"
        );
        let e = load(None, env(&[("RETAIN__SCHEDULER__MAX_LATENCY", "soon")])).unwrap_err();
        assert!(
            e.to_string().contains("RETAIN__SCHEDULER__MAX_LATENCY"),
            "{e}"
        );
        let e = load(None, env(&[("RETAIN__SCHEDULER", "1")])).unwrap_err();
        assert!(e.to_string().contains("RETAIN__SCHEDULER"), "{e}");
        let e = load(None, env(&[("RETAIN____X", "1")])).unwrap_err();
        assert!(e.to_string().contains("two underscores"), "{e}");
    }

    #[test]
    fn file_errors_name_the_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retain.toml");
        std::fs::write(
            &path,
            "[kafka]\nbootstrap-servers = \"b:9092\"\n\n[scheduler]\nmax-row = 5\n",
        )
        .unwrap();
        let msg = load(Some(&path), []).unwrap_err().to_string();
        assert!(
            msg.contains("retain.toml:5") && msg.contains("max-row"),
            "{msg}"
        );
        std::fs::write(&path, "[scheduler]\nmax-bytes = \"lots\"\n").unwrap();
        let msg = load(Some(&path), []).unwrap_err().to_string();
        assert!(
            msg.contains("retain.toml:2") && msg.contains("lots"),
            "{msg}"
        );
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("16 MB"), Ok(16_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
        let d: HumanDuration = "1m 30s".to_owned().try_into().unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        assert!(HumanDuration::try_from("later".to_owned()).is_err());
    }
}
