//! The startup handler: checks the password and opens the connection's catalog for the
//! user's role.
//!
//! - A user with a SCRAM-SHA-256 verifier in the users file (everyone written by
//!   `retain serve user add`) logs in with SCRAM-SHA-256, as PostgreSQL does by default: the
//!   password never crosses the wire, and the client checks the server's signature in turn.
//!   Over TLS `SCRAM-SHA-256-PLUS` is offered first, binding the login to the server's
//!   certificate (libpq uses it by itself; `channel_binding=require` insists on it).
//! - A user with only an Argon2id hash (files written before SCRAM logins) is asked for the
//!   password in cleartext (PostgreSQL's `password` message) and it is checked against the
//!   hash; each such login logs a warning to re-run `retain serve user add`.
//! - An unknown user gets a SCRAM exchange with a made-up verifier (the same salt every time
//!   for the same name), then the same refusal as a wrong password.
//!
//! In dev-trust mode (loopback only) no password is asked.

use std::fmt::{self, Debug};
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
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use retain_query::Catalog;
use tracing::{info, warn};

use crate::scram::{self, Offer, Pending, ScramError, Verifier};
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
    /// Random for each run of the server: made-up verifiers for unknown users come from it.
    fake_secret: [u8; 32],
}

/// Where a connection's login stands between the client's messages (kept on the connection).
#[derive(Debug, Clone)]
enum Step {
    /// Asked for a cleartext password (the user has only an Argon2id hash).
    Cleartext,
    /// Offered SCRAM-SHA-256 (and `-PLUS` when `plus`); waiting for the client-first
    /// message. `role` is `None` for an unknown user (whose verifier is made up).
    ScramOffered {
        verifier: Verifier,
        role: Option<Role>,
        plus: bool,
    },
    /// Sent the server-first message; waiting for the client-final message.
    ScramFirstSent {
        verifier: Verifier,
        role: Option<Role>,
        pending: Pending,
    },
    /// Done (refused); any further password message is a protocol error.
    Finished,
}

impl Login {
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let mut fake_secret = [0u8; 32];
        if let Err(e) = scram::random(&mut fake_secret) {
            // Still safe to serve: an all-zero secret only makes the made-up salts
            // predictable, which tells nothing about real users.
            warn!(error = %e, "no random secret for unknown-user logins");
        }
        Login {
            shared,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
            fake_secret,
        }
    }

    /// What this connection is offered: channel binding when it came in over TLS and the
    /// certificate has a `tls-server-end-point` hash.
    fn offer(&self, plus: bool) -> Offer<'_> {
        match &self.shared.end_point {
            Some(hash) if plus => Offer::Plus(hash),
            _ => Offer::Plain,
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

/// Refuses a login the client got wrong at the protocol level (SQLSTATE 08P01).
fn protocol(message: impl fmt::Display) -> PgWireError {
    fatal("08P01", format!("SCRAM-SHA-256 login: {message}"))
}

/// Reads a SASLInitialResponse body: the mechanism name (a C string), then the length of the
/// first message (-1 for none) and the message. pgwire's own decoder panics on a short
/// body, so this one is used instead.
fn sasl_initial(message: PasswordMessageFamily) -> Result<(String, Vec<u8>), String> {
    let body: Vec<u8> = match message {
        PasswordMessageFamily::Raw(body) => body.to_vec(),
        PasswordMessageFamily::SASLInitialResponse(r) => {
            return Ok((
                r.auth_method,
                r.data.map(|d| d.to_vec()).unwrap_or_default(),
            ));
        }
        _ => return Err("expected a SASLInitialResponse message".to_owned()),
    };
    parse_sasl_initial(&body)
}

fn parse_sasl_initial(body: &[u8]) -> Result<(String, Vec<u8>), String> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or("the SASLInitialResponse has no mechanism name")?;
    let mechanism = String::from_utf8_lossy(&body[..end]).into_owned();
    let rest = &body[end + 1..];
    let (len, data) = rest
        .split_first_chunk::<4>()
        .ok_or("the SASLInitialResponse has no data length")?;
    let len = i32::from_be_bytes(*len);
    if len < 0 {
        return Err("the SASLInitialResponse has no client-first message".to_owned());
    }
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err("the SASLInitialResponse data length does not match".to_owned());
    }
    Ok((mechanism, data.to_vec()))
}

/// Reads a SASLResponse body (all of it is the message).
fn sasl_response(message: PasswordMessageFamily) -> Result<Vec<u8>, String> {
    match message {
        PasswordMessageFamily::Raw(body) => Ok(body.to_vec()),
        PasswordMessageFamily::SASLResponse(r) => Ok(r.data.to_vec()),
        _ => Err("expected a SASLResponse message".to_owned()),
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
                let plus = client.is_secure() && self.shared.end_point.is_some();
                let step = match self.shared.users.get(&user) {
                    Some(u) => match u.verifier() {
                        Some(verifier) => Step::ScramOffered {
                            verifier,
                            role: Some(u.role),
                            plus,
                        },
                        None => {
                            warn!(user = %user, "this user has no SCRAM-SHA-256 verifier, so its password is sent in cleartext: run `retain serve user add` for it again");
                            Step::Cleartext
                        }
                    },
                    None => Step::ScramOffered {
                        verifier: Verifier::fake(&user, &self.fake_secret),
                        role: None,
                        plus,
                    },
                };
                let ask = match step {
                    Step::Cleartext => Authentication::CleartextPassword,
                    _ => Authentication::SASL(self.offer(plus).mechanisms()),
                };
                client.session_extensions().insert(step);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(ask))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let step = client
                    .session_extensions()
                    .get::<Step>()
                    .map(|s| (*s).clone());
                match step {
                    Some(Step::Cleartext) => self.cleartext(client, message).await?,
                    Some(Step::ScramOffered {
                        verifier,
                        role,
                        plus,
                    }) => {
                        self.scram_first(client, message, verifier, role, plus)
                            .await?;
                    }
                    Some(Step::ScramFirstSent {
                        verifier,
                        role,
                        pending,
                    }) => {
                        self.scram_final(client, message, verifier, role, pending)
                            .await?
                    }
                    Some(Step::Finished) | None => {
                        return Err(fatal("08P01", "unexpected password message".to_owned()));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Login {
    /// Logs a refused SCRAM login and returns the error to send: a wrong proof reads exactly
    /// like a wrong cleartext password (28P01), a malformed message says what was wrong
    /// (08P01).
    fn refuse<C: ClientInfo>(&self, client: &C, e: ScramError) -> PgWireError {
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let ip = client.socket_addr().ip();
        match e {
            ScramError::WrongProof => {
                warn!(user = %user, client = %ip, "login refused: wrong password or unknown user");
                PgWireError::InvalidPassword(user)
            }
            ScramError::Malformed(reason) => {
                warn!(user = %user, client = %ip, reason = %reason, "login refused: malformed SCRAM-SHA-256 message");
                protocol(reason)
            }
        }
    }

    /// SCRAM step 1: reads the client-first message, sends the server-first message.
    async fn scram_first<C>(
        &self,
        client: &mut C,
        message: PasswordMessageFamily,
        verifier: Verifier,
        role: Option<Role>,
        plus: bool,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.session_extensions().insert(Step::Finished);
        let (mechanism, first) =
            sasl_initial(message).map_err(|e| self.refuse(client, ScramError::Malformed(e)))?;
        let nonce = scram::server_nonce()
            .map_err(|e| fatal("XX000", format!("SCRAM-SHA-256 login: {e}")))?;
        let (pending, reply) =
            scram::server_first(&verifier, self.offer(plus), &mechanism, &first, &nonce)
                .map_err(|e| self.refuse(client, e))?;
        client.session_extensions().insert(Step::ScramFirstSent {
            verifier,
            role,
            pending,
        });
        client
            .send(PgWireBackendMessage::Authentication(
                Authentication::SASLContinue(reply.into()),
            ))
            .await?;
        Ok(())
    }

    /// SCRAM step 2: checks the client-final message's proof, sends the server-final message
    /// and lets the user in.
    async fn scram_final<C>(
        &self,
        client: &mut C,
        message: PasswordMessageFamily,
        verifier: Verifier,
        role: Option<Role>,
        pending: Pending,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.session_extensions().insert(Step::Finished);
        let last =
            sasl_response(message).map_err(|e| self.refuse(client, ScramError::Malformed(e)))?;
        let reply =
            scram::server_final(&verifier, &pending, &last).map_err(|e| self.refuse(client, e))?;
        // An unknown user's made-up verifier matches no password, but make sure.
        let Some(role) = role else {
            return Err(self.refuse(client, ScramError::WrongProof));
        };
        client
            .send(PgWireBackendMessage::Authentication(
                Authentication::SASLFinal(reply.into()),
            ))
            .await?;
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        self.accept(client, user, role).await
    }

    /// The cleartext flow, for users with only an Argon2id hash.
    async fn cleartext<C>(&self, client: &mut C, message: PasswordMessageFamily) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.session_extensions().insert(Step::Finished);
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
            Some(role) => self.accept(client, user, role).await,
            None => {
                warn!(user = %user, client = %client.socket_addr().ip(), "login refused: wrong password or unknown user");
                Err(PgWireError::InvalidPassword(user))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_responses_are_read_and_short_ones_refused_without_panicking() {
        let mut good = b"SCRAM-SHA-256\0".to_vec();
        good.extend_from_slice(&8i32.to_be_bytes());
        good.extend_from_slice(b"n,,n=,r=");
        assert_eq!(
            parse_sasl_initial(&good).unwrap(),
            ("SCRAM-SHA-256".to_owned(), b"n,,n=,r=".to_vec())
        );
        let mut none = b"SCRAM-SHA-256\0".to_vec();
        none.extend_from_slice(&(-1i32).to_be_bytes());
        let mut long = b"SCRAM-SHA-256\0".to_vec();
        long.extend_from_slice(&1000i32.to_be_bytes());
        long.extend_from_slice(b"n,,");
        let mut negative = b"SCRAM-SHA-256\0".to_vec();
        negative.extend_from_slice(&(-7i32).to_be_bytes());
        for bad in [
            &b""[..],
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\0",
            b"SCRAM-SHA-256\0\0\0",
            &none,
            &long,
            &negative,
        ] {
            assert!(parse_sasl_initial(bad).is_err(), "{bad:?}");
        }
        assert!(sasl_initial(PasswordMessageFamily::Raw(b"x".as_slice().into())).is_err());
        assert_eq!(
            sasl_response(PasswordMessageFamily::Raw(b"c=biws".as_slice().into())).unwrap(),
            b"c=biws"
        );
    }
}
