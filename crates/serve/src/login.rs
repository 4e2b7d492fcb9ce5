//! The startup handler: asks for the password (PostgreSQL's cleartext `password` message),
//! checks it against the users file's Argon2id hash, and opens the connection's catalog for
//! the user's role. In dev-trust mode (loopback only) no password is asked.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt as _};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator as _,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use retain_query::Catalog;
use tracing::{info, warn};

use crate::server::Shared;
use crate::users::{Password, Role, verify_nothing};

/// Who is logged in on a connection, and the catalog their queries run on (opened at login:
/// a connection sees the lake, and the holds, as they were then).
pub(crate) struct Session {
    /// The login name.
    pub user: String,
    /// Its role.
    pub role: Role,
    /// The client's IP address.
    pub client: String,
    /// The catalog (masked for analysts).
    pub catalog: Catalog,
}

pub(crate) struct Login {
    pub shared: Arc<Shared>,
    pub parameters: DefaultServerParameterProvider,
    pub pids: RandomPidSecretKeyGenerator,
}

impl Login {
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Login {
            shared,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
        }
    }

    /// Opens the user's catalog, records the session on the connection and finishes the
    /// startup.
    async fn accept<C>(&self, client: &mut C, user: String, role: Role) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let catalog = crate::server::open_catalog(&self.shared.lake, role)
            .await
            .map_err(|e| {
                warn!(user = %user, error = %e, "login refused: the lake cannot be opened");
                fatal("58000", format!("cannot open the lake: {e}"))
            })?;
        let client_ip = client.socket_addr().ip().to_string();
        info!(user = %user, role = %role, client = %client_ip, "login");
        client.session_extensions().insert(Session {
            user,
            role,
            client: client_ip,
            catalog,
        });
        let (pid, secret_key) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret_key);
        finish_authentication(client, &self.parameters).await
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .ok_or(PgWireError::UserNameRequired)?;
                if self.shared.dev_trust {
                    // Dev trust (loopback only): a known user gets its role, anyone else reads
                    // as an analyst.
                    let role = self
                        .shared
                        .users
                        .get(&user)
                        .map_or(Role::Analyst, |u| u.role);
                    return self.accept(client, user, role).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let password = Password::new(message.into_password()?.password);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let known = self.shared.users.get(&user).cloned();
                // Argon2 costs tens of milliseconds of CPU: off the async threads.
                let checked = tokio::task::spawn_blocking(move || match known {
                    Some(u) if u.verify(&password) => Some(u.role),
                    Some(_) => None,
                    None => {
                        verify_nothing(&password);
                        None
                    }
                })
                .await
                .map_err(|e| fatal("XX000", format!("checking the password: {e}")))?;
                match checked {
                    Some(role) => self.accept(client, user, role).await?,
                    None => {
                        warn!(user = %user, client = %client.socket_addr().ip(), "login refused: wrong password or unknown user");
                        return Err(PgWireError::InvalidPassword(user));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
