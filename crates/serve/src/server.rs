//! The listener: binds, accepts connections (TLS when configured) and hands each to pgwire
//! with Retain's login handler and query hook.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::PgCatalogContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::{TlsAcceptor, process_socket};
use retain_lake::AuditTable;
use retain_query::datafusion::prelude::SessionContext;
use retain_query::{Catalog, CatalogOptions, table_location};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::login::Login;
use crate::queries::Queries;
use crate::scram;
use crate::users::{Role, Users};

/// Where `retain serve` listens unless told otherwise: the loopback address, port 5433 (so it
/// does not clash with a local PostgreSQL on 5432).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5433";

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The lake root (folder, `file://` or `s3://` URL).
    pub lake_root: String,
    /// Object-store options for the lake's tables.
    pub storage_options: HashMap<String, String>,
    /// How each connection's catalog is opened (the memory limit is per connection).
    pub catalog: CatalogOptions,
    /// The address to listen on (port 0: any free port, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Who may log in.
    pub users: Users,
    /// Log in without a password (allowed on a loopback address only).
    pub dev_trust: bool,
    /// Serve TLS with this certificate.
    pub tls: Option<TlsFiles>,
}

/// What a connection's catalog is opened from.
#[derive(Debug)]
pub(crate) struct Lake {
    pub root: String,
    pub storage_options: HashMap<String, String>,
    pub catalog: CatalogOptions,
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub lake: Lake,
    pub users: Users,
    pub dev_trust: bool,
    pub audit: Mutex<AuditTable>,
    /// The `tls-server-end-point` hash of the TLS certificate, when it has one: SCRAM logins
    /// over TLS are then offered channel binding.
    pub end_point: Option<Vec<u8>>,
}

/// Opens the lake's catalog as `role` sees it: everything for a records manager, PHI masked
/// for an analyst ([`crate::mask`]); with `pg_catalog` for clients that read it.
pub async fn open_catalog(lake: &(impl LakeSource + ?Sized), role: Role) -> Result<Catalog> {
    let catalog =
        Catalog::open(lake.root(), lake.storage_options().clone(), lake.options()).await?;
    if role == Role::Analyst {
        crate::mask::mask_for_analyst(&catalog).await?;
    }
    let ctx = catalog.session();
    let name = ctx
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    setup_pg_catalog(ctx, &name, NoRoles).map_err(|e| Error::Mask(*e))?;
    Ok(catalog)
}

/// Where a catalog is opened from (the server's lake, or a test's).
pub trait LakeSource {
    /// The lake root.
    fn root(&self) -> &str;
    /// Object-store options.
    fn storage_options(&self) -> &HashMap<String, String>;
    /// Catalog options.
    fn options(&self) -> CatalogOptions;
}

impl LakeSource for Lake {
    fn root(&self) -> &str {
        &self.root
    }
    fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }
    fn options(&self) -> CatalogOptions {
        self.catalog.clone()
    }
}

impl LakeSource for str {
    fn root(&self) -> &str {
        self
    }
    fn storage_options(&self) -> &HashMap<String, String> {
        static NONE: std::sync::LazyLock<HashMap<String, String>> =
            std::sync::LazyLock::new(HashMap::new);
        &NONE
    }
    fn options(&self) -> CatalogOptions {
        CatalogOptions::default()
    }
}

/// `pg_catalog` without database roles (logins are Retain's, not PostgreSQL's).
#[derive(Debug, Clone)]
struct NoRoles;

impl PgCatalogContextProvider for NoRoles {}

struct Handlers {
    service: Arc<DfSessionService>,
    login: Arc<Login>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.service)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.service)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.login)
    }
}

/// A bound, not yet running, SQL endpoint.
pub struct Server {
    listener: TcpListener,
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The TLS acceptor for the certificate and key, and the certificate's `tls-server-end-point`
/// hash for channel binding (`None` when its signature algorithm gives none).
fn tls_acceptor(files: &TlsFiles) -> Result<(TlsAcceptor, Option<Vec<u8>>)> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bad = |path: &PathBuf, reason: String| Error::Tls {
        path: path.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no certificate in the file".to_owned()));
    }
    let end_point = scram::end_point_hash(&certs[0]).map_err(|e| bad(&files.cert, e))?;
    if end_point.is_none() {
        warn!(
            cert = %files.cert.display(),
            "the certificate's signature algorithm has no tls-server-end-point hash (Ed25519, RSA-PSS): logins over TLS get no channel binding (SCRAM-SHA-256-PLUS); use an RSA or ECDSA certificate signed with SHA-256 or better for it"
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                &files.key,
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    Ok((TlsAcceptor::from(Arc::new(config)), end_point))
}

impl Server {
    /// Checks the options, opens the audit trail and binds the address. Refuses dev trust on
    /// anything but a loopback address, and a lake root whose catalog cannot be opened.
    pub async fn bind(options: ServeOptions) -> Result<Server> {
        if options.dev_trust && !options.listen.ip().is_loopback() {
            return Err(Error::Argument {
                reason: format!(
                    "--dev-trust logs anyone in without a password: it only listens on a loopback address (127.0.0.1), not {}",
                    options.listen
                ),
            });
        }
        if !options.dev_trust && options.users.is_empty() {
            return Err(Error::Argument {
                reason: "no users: add one with `retain serve user add NAME --role analyst|records_manager`".to_owned(),
            });
        }
        let (tls, end_point) = match options.tls.as_ref().map(tls_acceptor).transpose()? {
            Some((acceptor, end_point)) => (Some(acceptor), end_point),
            None => (None, None),
        };
        let lake = Lake {
            root: options.lake_root.clone(),
            storage_options: options.storage_options.clone(),
            catalog: options.catalog.clone(),
        };
        // Fail now, not at the first login, when the lake cannot be read.
        open_catalog(&lake, Role::Analyst).await?;
        let audit = AuditTable::open_or_create(
            &table_location(&options.lake_root, "audit"),
            options.storage_options.clone(),
        )
        .await?;
        let shared = Arc::new(Shared {
            lake,
            users: options.users,
            dev_trust: options.dev_trust,
            audit: Mutex::new(audit),
            end_point,
        });
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(TransactionStatementHook),
            Arc::new(Queries {
                shared: Arc::clone(&shared),
            }),
        ];
        // The service's own context is empty: every statement is answered by the hooks.
        let service = Arc::new(DfSessionService::new_with_hooks(
            Arc::new(SessionContext::new()),
            hooks,
        ));
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind {
                address: options.listen.to_string(),
                source,
            })?;
        Ok(Server {
            listener,
            handlers: Arc::new(Handlers {
                service,
                login: Arc::new(Login::new(shared)),
            }),
            tls,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Whether connections are served with TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        info!(listen = %self.local_addr(), tls = self.tls.is_some(), "serving");
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, addr)) => {
                        let handlers = Arc::clone(&self.handlers);
                        let tls = self.tls.clone();
                        tokio::spawn(async move {
                            if let Err(e) = process_socket(socket, tls, handlers).await {
                                warn!(client = %addr.ip(), error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Err(e) => warn!(error = %e, "accepting a connection"),
                },
            }
        }
    }
}
