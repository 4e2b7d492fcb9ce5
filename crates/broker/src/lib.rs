//! An embedded Kafka-protocol broker for Retain's demos and tests.
//!
//! [`EmbeddedBroker::start`] runs a [tansu](https://crates.io/crates/tansu-broker) broker inside
//! this process, on a free port of 127.0.0.1, with its SQLite storage in a file under a directory
//! the caller owns. A restart on the same directory keeps topics, messages and committed offsets.
//! It is a single node for demos and tests: production talks to a real Kafka cluster instead (see
//! `docs/broker.md`). tansu does not support Kafka transactions.
//!
//! The broker runs on a Tokio runtime of its own (two workers), on a thread of its own: it works
//! the same under any caller runtime (a current-thread `#[tokio::test]` included), tansu's SQLite
//! calls never block the caller's executor, the caller's runtime ending does not take the broker
//! down mid-write, and [`Drop`] can stop it completely (runtime shut down, database closed)
//! without an executor to await on.

mod error;

pub use error::{Error, Result};

use std::{
    env,
    fs::{File, TryLockError},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Component, Path, PathBuf},
    thread::{self, JoinHandle},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
};
use tansu_broker::{broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use tokio::{
    runtime::Runtime,
    sync::oneshot,
    task::JoinHandle as TaskHandle,
    time::{Instant, sleep, timeout},
};
use tracing::{debug, info, instrument, warn};
use url::Url;
use uuid::Uuid;

/// The cluster id every embedded broker reports.
pub const CLUSTER_ID: &str = "retain-embedded";

/// The node id of the embedded broker (it is always a single node).
pub const NODE_ID: i32 = 1;

/// The SQLite database file the broker keeps under its directory (with `-wal` and `-shm` beside it).
pub const DATABASE_FILE: &str = "tansu.db";

/// The file an embedded broker holds an exclusive lock on while it uses its directory.
pub const LOCK_FILE: &str = "broker.lock";

/// How long [`EmbeddedBroker::start`] waits for the broker to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often start-up picks a new port when the one it found was taken before tansu bound it.
const BIND_ATTEMPTS: usize = 3;

/// How long the broker's runtime may take to finish its tasks when it stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The request and operation timeout of [`EmbeddedBroker::create_topic`].
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A tansu broker running in this process on 127.0.0.1, stopped by [`EmbeddedBroker::shutdown`]
/// or on drop.
#[derive(Debug)]
pub struct EmbeddedBroker {
    address: SocketAddr,
    database: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<()>>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a broker whose SQLite storage lives in `dir` (created if missing), and returns once
    /// it accepts connections.
    #[instrument(skip_all)]
    pub async fn start(dir: &Path) -> Result<EmbeddedBroker> {
        let data_dir = |source| Error::DataDir {
            path: dir.to_owned(),
            source,
        };
        let cwd = env::current_dir().map_err(|source| Error::CurrentDir { source })?;
        // Refuse a path tansu cannot take before creating anything; checked again once resolved.
        storage_url(&lexically_absolute(dir, &cwd).join(DATABASE_FILE), &cwd)?;
        std::fs::create_dir_all(dir).map_err(data_dir)?;
        let dir = dir.canonicalize().map_err(data_dir)?;
        let database = dir.join(DATABASE_FILE);
        let storage = storage_url(&database, &cwd)?;
        let lock = lock(&dir.join(LOCK_FILE))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("retain-broker-worker")
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime { source })?;

        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = {
            let database = database.clone();
            thread::Builder::new()
                .name("retain-broker".into())
                .spawn(move || {
                    run(runtime, storage, database, ready_tx, stop_rx, done_tx);
                    // Released only once the database is closed.
                    drop(lock);
                })
                .map_err(|source| Error::Runtime { source })?
        };

        let mut broker = EmbeddedBroker {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            database,
            stop: Some(stop_tx),
            done: Some(done_rx),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(address)) => {
                broker.address = address;
                info!(%address, "embedded broker accepting connections");
                Ok(broker)
            }
            Ok(Err(error)) => {
                broker.finish().await?;
                Err(error)
            }
            Err(_) => Err(broker.finish().await.err().unwrap_or(Error::Crashed {
                address: broker.address,
            })),
        }
    }

    /// The address the broker listens on, `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The `bootstrap.servers` value for Kafka clients.
    pub fn bootstrap_servers(&self) -> String {
        self.address.to_string()
    }

    /// The SQLite database file that holds the broker's topics, messages and offsets.
    pub fn database_path(&self) -> &Path {
        &self.database
    }

    /// Creates a topic with `partitions` partitions (replication factor 1) through the Kafka
    /// admin API.
    #[instrument(skip_all, fields(topic = name, partitions))]
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .map_err(|source| Error::Admin {
                address: self.address,
                source,
            })?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|source| Error::Admin {
                address: self.address,
                source,
            })?;
        for result in results {
            if let Err((topic, code)) = result {
                return Err(Error::CreateTopic {
                    topic,
                    partitions,
                    address: self.address,
                    code,
                });
            }
        }
        debug!("topic created");
        Ok(())
    }

    /// Stops the broker and waits until its tasks have ended and its database is closed.
    ///
    /// Errors if the broker had stopped by itself before (the error it stopped with).
    #[instrument(skip_all, fields(address = %self.address))]
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            _ = stop.send(());
        }
        self.finish().await
    }

    /// Waits for the broker thread to end, after it has been told to stop or failed to start.
    async fn finish(&mut self) -> Result<()> {
        let outcome = match self.done.take() {
            Some(done) => done.await.unwrap_or(Err(Error::Crashed {
                address: self.address,
            })),
            None => Ok(()),
        };
        // The thread sends `done` as its last act, so this join does not wait.
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(Error::Crashed {
                address: self.address,
            });
        }
        outcome
    }
}

impl Drop for EmbeddedBroker {
    /// Stops the broker and waits (briefly, on this thread) until its database is closed.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            _ = thread.join();
        }
    }
}

/// The broker thread: serves until told to stop, then shuts its runtime down (which ends the
/// storage task and closes the SQLite database) and reports how the broker ended.
fn run(
    runtime: Runtime,
    storage: Url,
    database: PathBuf,
    ready: oneshot::Sender<Result<SocketAddr>>,
    mut stop: oneshot::Receiver<()>,
    done: oneshot::Sender<Result<()>>,
) {
    let outcome = runtime.block_on(async move {
        let launched = tokio::select! {
            launched = launch(&storage, &database) => launched,
            // `start` was abandoned (its future dropped) before the broker was up.
            _ = &mut stop => return Ok(()),
        };
        let (address, mut serving) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                _ = ready.send(Err(error));
                return Ok(());
            }
        };
        _ = ready.send(Ok(address));
        tokio::select! {
            // A dropped sender means the handle is gone: stop as well.
            _ = stop => {
                serving.abort();
                _ = serving.await;
                debug!(%address, "embedded broker stopped");
                Ok(())
            }
            ended = &mut serving => {
                let error = ended_error(address, ended);
                warn!(%address, ?error, "embedded broker stopped by itself");
                Err(error)
            }
        }
    });
    runtime.shutdown_timeout(STOP_TIMEOUT);
    _ = done.send(outcome);
}

/// Builds the broker and starts serving on a free loopback port, retrying with another port when
/// the one found was taken in between.
async fn launch(
    storage: &Url,
    database: &Path,
) -> Result<(SocketAddr, TaskHandle<tansu_broker::Result<()>>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let address = free_loopback_address()?;
        let listener = Url::parse(&format!("tcp://{address}")).map_err(|source| Error::Url {
            url: format!("tcp://{address}"),
            source,
        })?;
        let mut broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
            .node_id(NODE_ID)
            .cluster_id(CLUSTER_ID)
            .incarnation_id(Uuid::now_v7())
            .advertised_listener(listener.clone())
            .storage(storage.clone())
            .listener(listener)
            .silent(true)
            .build()
            .await
            .map_err(|source| Error::Storage {
                path: database.to_owned(),
                source: Box::new(source),
            })?;
        // `serve` registers the broker and listens until its task is aborted. (`Broker::main`
        // would also install SIGINT/SIGTERM handlers, which a library must not do.)
        let mut serving = tokio::spawn(async move { broker.serve(Instant::now()).await });
        match accepting(address, &mut serving).await {
            Ok(()) => return Ok((address, serving)),
            Err(Error::Listen { source, .. })
                if attempt < BIND_ATTEMPTS && address_in_use(&source) =>
            {
                debug!(%address, attempt, "port taken before the broker bound it; trying another");
            }
            Err(error) => {
                serving.abort();
                return Err(error);
            }
        }
    }
}

/// Waits until `address` accepts TCP connections, or the broker task ends (it failed).
async fn accepting(
    address: SocketAddr,
    serving: &mut TaskHandle<tansu_broker::Result<()>>,
) -> Result<()> {
    let probe = async {
        while tokio::net::TcpStream::connect(address).await.is_err() {
            sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        // The task first: a bind failure is reported even if something else answers the probe.
        biased;
        ended = serving => Err(ended_error(address, ended)),
        probed = timeout(START_TIMEOUT, probe) => probed.map_err(|_| Error::StartTimeout {
            address,
            timeout: START_TIMEOUT,
        }),
    }
}

/// The error for a broker task that ended without being asked to.
fn ended_error(
    address: SocketAddr,
    ended: std::result::Result<tansu_broker::Result<()>, tokio::task::JoinError>,
) -> Error {
    match ended {
        Ok(Err(source)) => Error::Listen {
            address,
            source: Box::new(source),
        },
        Ok(Ok(())) | Err(_) => Error::Crashed { address },
    }
}

/// Takes the directory's lock, so that two brokers (in any process) never share one database.
fn lock(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| Error::DataDir {
            path: path.to_owned(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::InUse {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(Error::DataDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved by name (symbolic links are
/// resolved later, by `canonicalize`, once the directory exists).
fn lexically_absolute(path: &Path, cwd: &Path) -> PathBuf {
    let mut absolute = PathBuf::new();
    for component in cwd.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                absolute.pop();
            }
            other => absolute.push(other),
        }
    }
    absolute
}

fn address_in_use(error: &tansu_broker::Error) -> bool {
    matches!(error, tansu_broker::Error::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse)
}

/// A loopback address with a port that is free now (the OS picks it; tansu needs a fixed port
/// because it advertises the one it was given).
fn free_loopback_address() -> Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map_err(|source| Error::FreePort { source })
}

/// The `sqlite://` URL under which tansu 0.6 opens exactly `database` (an absolute path).
///
/// tansu 0.6 does not take the URL's path as a path: it starts from the working directory, pushes
/// the host and then the URL path less one leading `/` (`tansu-storage` `lite.rs`,
/// `Builder::build`). So `sqlite:///tmp/x.db` opens `<cwd>/tmp/x.db`, and `..` cannot climb out
/// because URL parsing folds it away. But pushing an absolute path replaces the whole path, so
/// `sqlite:////tmp/x.db` (no host, the path `//tmp/x.db`) opens `/tmp/x.db` from any
/// working directory — and still would if tansu took the path as it is. The URL is checked by
/// resolving it as tansu does; paths that a URL would change (spaces, `#`, `?`, `..`, non-UTF-8)
/// are refused.
fn storage_url(database: &Path, cwd: &Path) -> Result<Url> {
    let unsupported = |reason| Error::UnsupportedPath {
        path: database.to_owned(),
        reason,
    };
    if !database.is_absolute() {
        return Err(unsupported("the path is not absolute"));
    }
    let text = database
        .to_str()
        .ok_or_else(|| unsupported("the path is not UTF-8"))?;
    let url = format!("sqlite:///{text}");
    let parsed = Url::parse(&url).map_err(|source| Error::Url { url, source })?;
    if tansu_sqlite_path(&parsed, cwd) != database {
        return Err(unsupported(
            "the path has characters a URL would change (space, #, ?, ..)",
        ));
    }
    Ok(parsed)
}

/// The database file tansu 0.6 opens for a `sqlite://` URL when its working directory is `cwd`
/// (a copy of `tansu-storage` 0.6 `lite.rs` `Builder::build`).
fn tansu_sqlite_path(url: &Url, cwd: &Path) -> PathBuf {
    let mut path = cwd.to_owned();
    if let Some(domain) = url.domain() {
        path.push(domain);
    }
    match url.path().strip_prefix('/') {
        Some(relative) => path.push(relative),
        None => path.push(url.path()),
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_url_opens_the_absolute_path_whatever_the_working_directory() {
        let database = Path::new("/tmp/.tmpAbC12/tansu.db");
        for cwd in ["/", "/work/main/crates/broker", "/tmp/.tmpAbC12"] {
            let url = storage_url(database, Path::new(cwd)).unwrap();
            assert_eq!(url.as_str(), "sqlite:////tmp/.tmpAbC12/tansu.db");
            assert_eq!(
                tansu_sqlite_path(&url, Path::new(cwd)),
                database,
                "cwd {cwd}"
            );
        }
    }

    #[test]
    fn the_url_survives_the_broker_builder() {
        // tansu-broker's `Builder::storage` strips its own query pairs with `set_query(None)`.
        let database = Path::new("/tmp/x/tansu.db");
        let mut url = storage_url(database, Path::new("/work")).unwrap();
        url.set_query(None);
        assert_eq!(tansu_sqlite_path(&url, Path::new("/work")), database);
    }

    #[test]
    fn a_percent_sign_is_kept_as_it_is() {
        // `%20` stays `%20` in the URL and tansu opens the file by that literal name.
        let database = Path::new("/tmp/a%20b/tansu.db");
        let url = storage_url(database, Path::new("/")).unwrap();
        assert_eq!(tansu_sqlite_path(&url, Path::new("/")), database);
    }

    #[test]
    fn the_plain_url_would_land_under_the_working_directory() {
        // The quirk `storage_url` works around.
        let url = Url::parse("sqlite:///tmp/x/tansu.db").unwrap();
        assert_eq!(
            tansu_sqlite_path(&url, Path::new("/work")),
            Path::new("/work/tmp/x/tansu.db")
        );
        let url = Url::parse("sqlite://data/tansu.db").unwrap();
        assert_eq!(
            tansu_sqlite_path(&url, Path::new("/work")),
            Path::new("/work/data/tansu.db")
        );
    }

    #[test]
    fn relative_directories_are_resolved_by_name() {
        let cwd = Path::new("/work/main/crates/broker");
        assert_eq!(
            lexically_absolute(Path::new("../../target/./demo"), cwd),
            Path::new("/work/main/target/demo")
        );
        assert_eq!(
            lexically_absolute(Path::new("/tmp/x"), cwd),
            Path::new("/tmp/x")
        );
    }

    #[test]
    fn paths_a_url_would_change_are_refused() {
        for path in [
            "/tmp/a b/tansu.db",
            "/tmp/a#b/tansu.db",
            "/tmp/a?b/tansu.db",
            "/tmp/a/../b/tansu.db",
            "relative/tansu.db",
        ] {
            let error = storage_url(Path::new(path), Path::new("/")).unwrap_err();
            assert!(
                matches!(error, Error::UnsupportedPath { .. }),
                "{path}: {error}"
            );
        }
    }
}
