//! `retain serve`: the PostgreSQL-wire SQL endpoint (`retain-serve`), and `retain serve user
//! add|list` for its users file. docs/sql.md ("retain serve") is the reference.

use std::io::{BufRead as _, IsTerminal as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use retain_serve::{DEFAULT_LISTEN, Password, Role, ServeOptions, Server, TlsFiles, Users};

use crate::hold_cmd::LakeArgs;
use crate::output::BadInput;

/// The users file unless told otherwise.
const DEFAULT_USERS: &str = "retain-users.toml";

/// `retain serve`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    command: Option<ServeCommand>,
    /// The lake root (folder, file:// or s3:// URL) with the records, holds, ... tables.
    #[arg(
        long,
        value_name = "ROOT",
        env = "RETAIN_LAKE_ROOT",
        default_value = "lake"
    )]
    lake: String,
    /// A configuration file for `[lake.storage]` options (RETAIN__LAKE__STORAGE__* also work).
    #[arg(long, value_name = "FILE", env = "RETAIN_CONFIG")]
    config: Option<PathBuf>,
    /// The address to listen on (port 0: any free port, printed at start). Overrides `[serve]
    /// listen`; default 127.0.0.1:5433.
    #[arg(long, value_name = "ADDR", env = "RETAIN_SERVE_LISTEN")]
    listen: Option<SocketAddr>,
    /// The users file (names, roles, SCRAM-SHA-256 verifiers and Argon2id password hashes).
    /// Overrides `[serve] users`; default retain-users.toml.
    #[arg(long, value_name = "FILE", env = "RETAIN_SERVE_USERS")]
    users: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (with --tls-key). Overrides `[serve]
    /// tls-cert`.
    #[arg(
        long,
        value_name = "FILE",
        env = "RETAIN_SERVE_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert. Overrides `[serve] tls-key`.
    #[arg(
        long,
        value_name = "FILE",
        env = "RETAIN_SERVE_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Development only: log in without a password (loopback addresses only; a known user
    /// gets its role, anyone else is an analyst). Deliberately no environment variable.
    #[arg(long)]
    dev_trust: bool,
}

#[derive(Subcommand, Debug)]
enum ServeCommand {
    /// Manage the users file.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user, or replace its role and password. The password is read from
    /// --password-file, else from the first line of standard input, and stored only as a
    /// SCRAM-SHA-256 verifier (for logins) and an Argon2id hash.
    Add(UserAddArgs),
    /// List the users and their roles.
    List(UsersFileArg),
}

#[derive(Args, Debug)]
struct UsersFileArg {
    /// The users file.
    #[arg(long, value_name = "FILE", env = "RETAIN_SERVE_USERS", default_value = DEFAULT_USERS)]
    users: PathBuf,
}

#[derive(Args, Debug)]
struct UserAddArgs {
    /// The login name (letters, digits, `_`, `.`, `-`, `@`; up to 63).
    name: String,
    /// analyst (PHI columns read as NULL) or records_manager (everything).
    #[arg(long, value_parser = parse_role)]
    role: Role,
    #[command(flatten)]
    file: UsersFileArg,
    /// Read the password from the first line of this file instead of standard input.
    #[arg(long, value_name = "FILE", env = "RETAIN_SERVE_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
}

fn parse_role(s: &str) -> std::result::Result<Role, String> {
    s.parse().map_err(|e: retain_serve::Error| e.to_string())
}

fn serve_error(e: retain_serve::Error) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// Runs `retain serve`.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    match args.command {
        Some(ServeCommand::User(UserCommand::Add(a))) => user_add(a),
        Some(ServeCommand::User(UserCommand::List(a))) => {
            let users = Users::load(&a.users).map_err(serve_error)?;
            for (name, role) in users.list() {
                outln!("{name}\t{role}");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(args))
        }
    }
}

/// The first line of `path`, or of standard input, without its line ending.
fn read_password(path: Option<&Path>) -> Result<Password> {
    let mut line = String::new();
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| BadInput(format!("cannot read {}: {e}", p.display())))?;
            line = text.lines().next().unwrap_or_default().to_owned();
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("password (shown as typed; use --password-file to avoid that): ");
            }
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
        }
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(BadInput(
            "the password is empty: give it on standard input or with --password-file".to_owned(),
        )
        .into());
    }
    Ok(Password::new(password))
}

fn user_add(a: UserAddArgs) -> Result<ExitCode> {
    let password = read_password(a.password_file.as_deref())?;
    let mut users = Users::load_or_empty(&a.file.users).map_err(serve_error)?;
    let replaced = users.get(&a.name).is_some();
    users.set(&a.name, a.role, &password).map_err(serve_error)?;
    users.save(&a.file.users).map_err(serve_error)?;
    eprintln!(
        "{} user {} ({}) in {}",
        if replaced { "updated" } else { "added" },
        a.name,
        a.role,
        a.file.users.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(a: ServeArgs) -> Result<ExitCode> {
    let lake = LakeArgs {
        lake: a.lake.clone(),
        config: a.config.clone(),
        json: false,
    };
    let storage_options = crate::hold_cmd::storage(&lake)?;
    // Refuses (exit 2) a lake root without records, so a mistyped --lake serves nothing.
    crate::hold_cmd::records(&lake, &storage_options).await?;
    let (file, origin) = crate::config::load(a.config.as_deref(), std::env::vars())?;
    let f = file.serve;
    let listen = match a.listen.or(f.listen) {
        Some(l) => l,
        None => DEFAULT_LISTEN
            .parse()
            .context("the default listen address")?,
    };
    let users_file = a
        .users
        .or(f.users)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_USERS));
    let users = if a.dev_trust {
        Users::load_or_empty(&users_file)
    } else {
        Users::load(&users_file)
    }
    .map_err(serve_error)?;
    // The flags come as a pair (clap checks); the file's keys must too.
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => match (f.tls_cert, f.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(BadInput(format!(
                    "{origin}: [serve] tls-cert and tls-key go together: set both or neither"
                ))
                .into());
            }
        },
    };
    let server = Server::bind(ServeOptions {
        lake_root: a.lake.clone(),
        storage_options,
        catalog: Default::default(),
        listen,
        users,
        dev_trust: a.dev_trust,
        tls,
    })
    .await
    .map_err(serve_error)?;
    let addr = server.local_addr();
    if a.dev_trust {
        eprintln!(
            "WARNING: --dev-trust: anyone who can reach {addr} logs in WITHOUT A PASSWORD. Development only; never with real data."
        );
    }
    if !server.tls() && !addr.ip().is_loopback() {
        eprintln!(
            "WARNING: no TLS on {addr}: results (and the passwords of users without a SCRAM-SHA-256 verifier) cross the network in clear. Give --tls-cert and --tls-key."
        );
    }
    eprintln!(
        "retain serve: listening on {addr} ({}), lake {}; stop with Ctrl-C",
        if server.tls() { "TLS" } else { "no TLS" },
        a.lake
    );
    server.run(shutdown()).await.map_err(serve_error)?;
    eprintln!("retain serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
