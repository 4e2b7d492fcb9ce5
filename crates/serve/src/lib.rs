//! `retain serve`: the lake's read-only SQL catalog (`retain-query`) over the PostgreSQL wire
//! protocol, so `psql`, psycopg, JDBC/ODBC drivers and BI tools connect.
//!
//! - **Logins** need a password, checked with SCRAM-SHA-256 (PostgreSQL's default: the password
//!   never crosses the wire) against the verifier in the [users file](Users). Users files
//!   written before SCRAM logins hold only an Argon2id hash; those users still log in, with a
//!   cleartext password (so run it under TLS off the local machine), and each such login logs a
//!   warning to re-run `retain serve user add`. A dev trust mode exists only on a loopback
//!   address.
//! - **Roles**: a [`Role::RecordsManager`] reads everything; a [`Role::Analyst`] reads a
//!   catalog where every PHI column (addresses, subject, folder, labels, attachments, patient
//!   references; a hold's matter, reason, scope and condition) reads as NULL, under the same
//!   names, through every table, view and function ([`mask`]).
//! - **Read-only**: statements are planned by [`retain_query::Catalog::plan`] (no DDL, DML or
//!   `SET`); transaction statements are accepted and do nothing.
//! - **Audited**: every statement that runs appends an `sql_query` entry (login, role, tables,
//!   query hash; never the text) to the lake's audit trail before its result is sent.
//! - **TLS** with a PEM certificate and key (rustls); SCRAM logins over it are bound to the
//!   certificate (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`) when its signature allows.
//!
//! Built on `datafusion-postgres` (its pgwire session service, Arrow-to-wire encoding and
//! `pg_catalog`), with Retain's own login handler and a query hook that sends every statement
//! through the catalog. `docs/sql.md` ("retain serve") is the reference.

mod error;
mod login;
pub mod mask;
mod queries;
mod scram;
mod server;
mod users;

pub use error::{Error, Result};
pub use server::{DEFAULT_LISTEN, ServeOptions, Server, TlsFiles, open_catalog};
pub use users::{Password, Role, User, Users, hash_password, valid_user_name};
