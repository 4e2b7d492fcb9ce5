//! The users file: who may log in, with which role, and two one-way forms of the password
//! (never the password itself):
//!
//! - `scram`: the SCRAM-SHA-256 verifier that logins are checked with, in PostgreSQL's own
//!   format (salt, StoredKey and ServerKey; see `scram.rs`);
//! - `password-hash`: an Argon2id hash (PHC string). Files written before SCRAM logins have
//!   only this; such users log in with a cleartext password until `retain serve user add` is
//!   run for them again.
//!
//! ```toml
//! [users.ana]
//! role = "analyst"
//! password-hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! scram = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scram::Verifier;

/// What a login may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only, PHI columns read as NULL.
    Analyst,
    /// Read-only, everything as stored.
    RecordsManager,
}

impl Role {
    /// The role's name as written in the users file and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::RecordsManager => "records_manager",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "analyst" => Ok(Role::Analyst),
            "records_manager" | "records-manager" => Ok(Role::RecordsManager),
            other => Err(Error::Argument {
                reason: format!("unknown role `{other}` (analyst or records_manager)"),
            }),
        }
    }
}

/// A password in memory: its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<String>) -> Self {
        Password(p.into())
    }

    /// The password itself (to hash or check it; never print it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// One login in the users file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    /// Its role.
    pub role: Role,
    /// Argon2id PHC string of the password (checks cleartext logins when there is no
    /// `scram`).
    pub password_hash: String,
    /// SCRAM-SHA-256 verifier of the password, `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`
    /// (base64, as PostgreSQL stores it). Absent in files written before SCRAM logins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<String>,
}

impl User {
    /// Whether `password` is this user's password (by the Argon2id hash).
    pub fn verify(&self, password: &Password) -> bool {
        verify(&self.password_hash, password)
    }

    /// The SCRAM-SHA-256 verifier, when the file has one (checked when the file was loaded).
    pub(crate) fn verifier(&self) -> Option<Verifier> {
        self.scram.as_deref().and_then(|s| Verifier::parse(s).ok())
    }
}

fn verify(phc: &str, password: &Password) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &h)
            .is_ok()
    })
}

/// Spends the same work as checking a real hash, so an unknown user name takes as long to
/// refuse as a wrong password.
pub(crate) fn verify_nothing(password: &Password) {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        hash_password(&Password::new("retain-serve-no-such-user")).unwrap_or_default()
    });
    let _ = verify(&DUMMY, password);
}

/// An Argon2id hash (PHC string, fresh random salt, the crate's default cost) of `password`.
pub fn hash_password(password: &Password) -> Result<String> {
    if password.expose().is_empty() {
        return Err(Error::Argument {
            reason: "the password is empty".to_owned(),
        });
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Argument {
            reason: format!("cannot hash the password: {e}"),
        })
}

/// Whether `name` can be a login: 1 to 63 characters of letters, digits, `_`, `.`, `-`, `@`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersToml {
    #[serde(default)]
    users: BTreeMap<String, User>,
}

/// The users file, loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: BTreeMap<String, User>,
}

impl Users {
    /// Reads and checks a users file (every name valid, every hash an Argon2 PHC string,
    /// every `scram` a SCRAM-SHA-256 verifier).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::UsersIo {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Reads a users file, or an empty set when there is none yet.
    pub fn load_or_empty(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Users::default())
        }
    }

    fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::UsersFile {
            path: PathBuf::from(path),
            reason,
        };
        let parsed: UsersToml = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (name, user) in &parsed.users {
            if !valid_user_name(name) {
                return Err(bad(format!(
                    "user `{name}`: a name is 1 to 63 letters, digits, `_`, `.`, `-` or `@`"
                )));
            }
            if PasswordHash::new(&user.password_hash).is_err()
                || !user.password_hash.starts_with("$argon2")
            {
                return Err(bad(format!(
                    "user `{name}`: password-hash is not an Argon2 PHC string (write it with `retain serve user add`)"
                )));
            }
            if let Some(scram) = &user.scram {
                Verifier::parse(scram).map_err(|reason| {
                    bad(format!(
                        "user `{name}`: scram is not a SCRAM-SHA-256 verifier: {reason} (write it with `retain serve user add`)"
                    ))
                })?;
            }
        }
        Ok(Users {
            users: parsed.users,
        })
    }

    /// Writes the file (mode 0600 on Unix), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::UsersIo {
            path: path.to_owned(),
            source,
        };
        let text = toml::to_string(&UsersToml {
            users: self.users.clone(),
        })
        .map_err(|e| Error::UsersFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# retain serve users: role, Argon2id password hash and SCRAM-SHA-256 verifier (docs/sql.md#retain-serve).\n# Write with `retain serve user add NAME --role analyst|records_manager`.\n{text}"
        );
        let tmp = path.with_extension("toml.tmp");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds or replaces a user with a fresh Argon2id hash and SCRAM-SHA-256 verifier of
    /// `password` (each with its own random salt).
    pub fn set(&mut self, name: &str, role: Role, password: &Password) -> Result<()> {
        if !valid_user_name(name) {
            return Err(Error::Argument {
                reason: format!(
                    "`{name}` is not a user name: 1 to 63 letters, digits, `_`, `.`, `-` or `@`"
                ),
            });
        }
        let password_hash = hash_password(password)?;
        let scram = Verifier::new(password.expose())
            .map_err(|reason| Error::Argument { reason })?
            .to_string();
        self.users.insert(
            name.to_owned(),
            User {
                role,
                password_hash,
                scram: Some(scram),
            },
        );
        Ok(())
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The user names and roles, by name.
    pub fn list(&self) -> impl Iterator<Item = (&str, Role)> {
        self.users.iter().map(|(n, u)| (n.as_str(), u.role))
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_holds_a_hash_that_verifies_and_never_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut users = Users::default();
        users
            .set("ana", Role::Analyst, &Password::new("s3cret-pass"))
            .unwrap();
        users.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret-pass"), "{text}");
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(text.contains("scram = \"SCRAM-SHA-256$4096:"), "{text}");
        let back = Users::load(&path).unwrap();
        let ana = back.get("ana").unwrap();
        assert_eq!(ana.role, Role::Analyst);
        assert!(ana.verifier().is_some());
        assert!(ana.verify(&Password::new("s3cret-pass")));
        assert!(!ana.verify(&Password::new("s3cret-pasS")));
        assert!(!ana.verify(&Password::new("")));
        assert_eq!(
            format!("{:?}", Password::new("s3cret-pass")),
            "Password(***)"
        );
    }

    #[test]
    fn bad_files_and_names_are_refused_naming_the_user() {
        let p = Path::new("users.toml");
        let e = Users::parse(
            "[users.bob]\nrole = \"analyst\"\npassword-hash = \"plaintext\"\n",
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("user `bob`"), "{e}");
        let e =
            Users::parse("[users.bob]\nrole = \"admin\"\npassword-hash = \"x\"\n", p).unwrap_err();
        assert!(e.to_string().contains("admin"), "{e}");
        assert!(
            Users::default()
                .set("bad name", Role::Analyst, &Password::new("x"))
                .is_err()
        );
        assert!(
            Users::default()
                .set("ok", Role::Analyst, &Password::new(""))
                .is_err()
        );
        assert_eq!(
            "records_manager".parse::<Role>().unwrap(),
            Role::RecordsManager
        );
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_file_with_only_argon2_hashes_loads_and_a_bad_scram_value_names_the_user() {
        let p = Path::new("users.toml");
        let hash = hash_password(&Password::new("pw")).unwrap();
        let old = Users::parse(
            &format!("[users.old]\nrole = \"analyst\"\npassword-hash = \"{hash}\"\n"),
            p,
        )
        .unwrap();
        let u = old.get("old").unwrap();
        assert!(u.scram.is_none() && u.verifier().is_none());
        assert!(u.verify(&Password::new("pw")));
        for scram in [
            "md5deadbeef",
            "SCRAM-SHA-256$1024:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA",
        ] {
            let e = Users::parse(
                &format!(
                    "[users.bob]\nrole = \"analyst\"\npassword-hash = \"{hash}\"\nscram = \"{scram}\"\n"
                ),
                p,
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("user `bob`: scram is not"),
                "{scram}: {e}"
            );
        }
    }
}
