//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL does it, server side, without channel
//! binding: the stored verifier and the two steps of a login.
//!
//! The users file keeps a verifier in PostgreSQL's `pg_authid` format,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). It lets the server
//! check a client's proof and prove itself back, but it is not enough to log in as the user:
//! that needs the password.
//!
//! A login, after the client picks `SCRAM-SHA-256`:
//! 1. client-first `n,,n=,r=<client nonce>` → [`server_first`] answers
//!    `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`;
//! 2. client-final `c=biws,r=<both nonces>,p=<proof>` → [`server_final`] checks the proof
//!    against StoredKey and answers `v=<server signature>`.
//!
//! Everything here is a pure function of its inputs (the random parts are passed in), so the
//! RFC's worked example is a unit test.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, hmac, pbkdf2};

/// The mechanism name, as offered to the client.
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";

/// PostgreSQL's default and the least a verifier may use.
pub(crate) const MIN_ITERATIONS: u32 = 4096;

/// Bytes of random salt in a new verifier (PostgreSQL uses 16).
const SALT_LEN: usize = 16;

/// Random bytes the server adds to the client's nonce (base64 encoded).
const SERVER_NONCE_LEN: usize = 18;

/// A password's SCRAM-SHA-256 verifier: what the server keeps instead of the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    /// The verifier of `password` with a fresh random 16-byte salt and 4096 iterations.
    pub fn new(password: &str) -> Result<Self, String> {
        let mut salt = [0u8; SALT_LEN];
        random(&mut salt)?;
        Ok(Self::compute(password, &salt, MIN_ITERATIONS))
    }

    /// The verifier of `password` with this salt and iteration count.
    ///
    /// PostgreSQL first normalises the password with SASLprep; passwords of plain ASCII (and
    /// most others) are unchanged by it, and libpq sends the password as typed when
    /// normalising fails, so this uses the bytes as given.
    pub fn compute(password: &str, salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier for a user that does not exist: the same for the same name while the
    /// process runs (so retrying shows the same salt), unrelated to any password.
    pub(crate) fn fake(user: &str, secret: &[u8]) -> Self {
        let salt = hmac_sha256(secret, format!("salt\0{user}").as_bytes());
        Verifier {
            iterations: MIN_ITERATIONS,
            salt: salt[..SALT_LEN].to_vec(),
            stored_key: hmac_sha256(secret, format!("stored\0{user}").as_bytes()),
            server_key: hmac_sha256(secret, format!("server\0{user}").as_bytes()),
        }
    }

    /// Reads a verifier written as `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("it does not start with `SCRAM-SHA-256$`")?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or("it is not `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`")?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or("the iterations and salt are not `<iterations>:<salt>`")?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or("the keys are not `<StoredKey>:<ServerKey>`")?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| format!("the iteration count `{iterations}` is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(format!(
                "{iterations} iterations is fewer than {MIN_ITERATIONS}"
            ));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "the salt is not base64".to_owned())?;
        if salt.is_empty() {
            return Err("the salt is empty".to_owned());
        }
        let key = |name: &str, b64: &str| -> Result<[u8; 32], String> {
            let bytes = BASE64
                .decode(b64)
                .map_err(|_| format!("the {name} is not base64"))?;
            bytes
                .try_into()
                .map_err(|b: Vec<u8>| format!("the {name} is {} bytes, not 32", b.len()))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key("StoredKey", stored)?,
            server_key: key("ServerKey", server)?,
        })
    }
}

impl fmt::Display for Verifier {
    /// The `pg_authid` form, as written in the users file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// Why a login step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScramError {
    /// The client's message is not what SCRAM-SHA-256 without channel binding sends.
    Malformed(String),
    /// The proof does not match: a wrong password (or an unknown user).
    WrongProof,
}

fn malformed(reason: impl Into<String>) -> ScramError {
    ScramError::Malformed(reason.into())
}

/// What the server remembers between its first message and the client's last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The GS2 header the client sent (`n,,` or `y,,`), echoed base64 in `c=`.
    gs2_header: String,
    /// client-first-message-bare.
    client_first_bare: String,
    /// server-first-message.
    server_first: String,
    /// Client nonce followed by server nonce.
    nonce: String,
}

/// Fresh random bytes for the server's half of the nonce, base64 encoded.
pub(crate) fn server_nonce() -> Result<String, String> {
    let mut bytes = [0u8; SERVER_NONCE_LEN];
    random(&mut bytes)?;
    Ok(BASE64.encode(bytes))
}

/// Step 1: reads the client-first message and returns the server-first message to send.
/// `server_nonce` is the server's random half of the nonce ([`server_nonce`]).
pub(crate) fn server_first(
    verifier: &Verifier,
    client_first: &[u8],
    server_nonce: &str,
) -> Result<(Pending, String), ScramError> {
    let client_first = std::str::from_utf8(client_first)
        .map_err(|_| malformed("the client-first message is not UTF-8"))?;
    // gs2-header: a channel-binding flag, an optional authzid, then the bare message.
    let (flag, rest) = client_first
        .split_once(',')
        .ok_or_else(|| malformed("the client-first message has no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(malformed(
                "channel binding (SCRAM-SHA-256-PLUS) is not offered",
            ));
        }
        _ => {
            return Err(malformed("the GS2 header does not start with `n` or `y`"));
        }
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| malformed("the GS2 header is not `n,,`"))?;
    if !authzid.is_empty() {
        return Err(malformed("an authorization identity (a=) is not supported"));
    }
    let mut attributes = bare.split(',');
    // n=<name>: PostgreSQL (and this server) use the startup message's user; libpq sends it
    // empty.
    match attributes.next() {
        Some(a) if a.starts_with("m=") => {
            return Err(malformed("mandatory extensions (m=) are not supported"));
        }
        Some(a) if a.starts_with("n=") => {}
        _ => {
            return Err(malformed("the client-first message has no user name (n=)"));
        }
    }
    let client_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("the client-first message has no nonce (r=)"))?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("the client nonce is not printable characters"));
    }
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        Pending {
            gs2_header: format!("{flag},,"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        },
        server_first,
    ))
}

/// Step 2: checks the client-final message's proof and returns the server-final message
/// (`v=<server signature>`) to send.
pub(crate) fn server_final(
    verifier: &Verifier,
    pending: &Pending,
    client_final: &[u8],
) -> Result<String, ScramError> {
    let client_final = std::str::from_utf8(client_final)
        .map_err(|_| malformed("the client-final message is not UTF-8"))?;
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or_else(|| malformed("the client-final message has no proof (p=)"))?;
    let mut attributes = without_proof.split(',');
    let binding = attributes
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or_else(|| malformed("the client-final message has no channel binding (c=)"))?;
    if BASE64.decode(binding).ok().as_deref() != Some(pending.gs2_header.as_bytes()) {
        return Err(malformed(
            "the channel binding (c=) does not repeat the GS2 header",
        ));
    }
    let nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("the client-final message has no nonce (r=)"))?;
    if nonce != pending.nonce {
        return Err(malformed("the nonce (r=) is not the one the server sent"));
    }
    let proof: [u8; 32] = BASE64
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| malformed("the proof (p=) is not 32 bytes of base64"))?;

    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, without_proof
    );
    let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    for (k, (p, s)) in client_key
        .iter_mut()
        .zip(proof.iter().zip(client_signature.iter()))
    {
        *k = p ^ s;
    }
    if !same(&sha256(&client_key), &verifier.stored_key) {
        return Err(ScramError::WrongProof);
    }
    let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
    Ok(format!("v={}", BASE64.encode(server_signature)))
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guess was right.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Fills `out` from the operating system's random source.
pub(crate) fn random(out: &mut [u8]) -> Result<(), String> {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| "the system random source failed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_verifier() -> Verifier {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Verifier::compute("pencil", &salt, 4096)
    }

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_logs_in_and_the_server_signature_matches() {
        let v = rfc_verifier();
        let (pending, first) = server_first(&v, CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server_final(&v, &pending, CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(last, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");

        // The same through the users-file form.
        let written = v.to_string();
        assert!(
            written.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{written}"
        );
        assert_eq!(Verifier::parse(&written).unwrap(), v);
        assert_eq!(format!("{v:?}"), "Verifier(***)");

        // Another password's verifier refuses the proof.
        let other = Verifier::compute(
            "pencils",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let (pending, _) = server_first(&other, CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        assert_eq!(
            server_final(&other, &pending, CLIENT_FINAL.as_bytes()),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn new_verifiers_are_salted_and_fake_ones_are_stable_per_name() {
        let a = Verifier::new("pencil").unwrap();
        let b = Verifier::new("pencil").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.salt.len(), 16);
        assert_eq!(a.iterations, 4096);
        let secret = [7u8; 32];
        assert_eq!(
            Verifier::fake("ghost", &secret),
            Verifier::fake("ghost", &secret)
        );
        assert_ne!(
            Verifier::fake("ghost", &secret),
            Verifier::fake("ghosts", &secret)
        );
        assert_eq!(Verifier::fake("ghost", &secret).salt.len(), 16);
    }

    #[test]
    fn bad_verifiers_are_refused_with_the_reason() {
        let good = rfc_verifier().to_string();
        let (_, keys) = good.split_once("==$").unwrap();
        for (bad, why) in [
            ("md5abc".to_owned(), "SCRAM-SHA-256$"),
            (
                format!("SCRAM-SHA-256$1000:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
                "fewer than 4096",
            ),
            (
                format!("SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==${keys}"),
                "not a number",
            ),
            (
                format!("SCRAM-SHA-256$4096:not*base64${keys}"),
                "salt is not base64",
            ),
            (
                "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:AAAA".to_owned(),
                "not 32",
            ),
            (
                "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==".to_owned(),
                "not `SCRAM",
            ),
        ] {
            let e = Verifier::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn malformed_client_messages_are_refused_not_panicked_on() {
        let v = rfc_verifier();
        for first in [
            &b""[..],
            b"\xff\xfe",
            b"n",
            b"n,",
            b"x,,n=user,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=admin,n=user,r=abc",
            b"n,,r=abc",
            b"n,,m=ext,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,x=abc",
            b"n,,n=user,r=a b",
        ] {
            assert!(
                matches!(
                    server_first(&v, first, SERVER_NONCE),
                    Err(ScramError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
        let (pending, _) = server_first(&v, CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        for last in [
            String::new(),
            "c=biws".to_owned(),
            format!("c=biws,r={nonce}"),
            format!("r={nonce},p={proof}"),
            format!("c=eSws,r={nonce},p={proof}"),
            format!("c=!!,r={nonce},p={proof}"),
            format!("c=biws,r=other,p={proof}"),
            format!("c=biws,p={proof}"),
            format!("c=biws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce},p=not base64"),
            format!("c=biws,r={nonce},p="),
        ] {
            let e = server_final(&v, &pending, last.as_bytes()).unwrap_err();
            assert!(matches!(e, ScramError::Malformed(_)), "{last}: {e:?}");
        }
        assert!(matches!(
            server_final(&v, &pending, b"\xff,p=x"),
            Err(ScramError::Malformed(_))
        ));
        // `y,,` (the client could bind but the server does not offer it) echoes as `eSws`.
        let (pending, _) = server_first(&v, b"y,,n=,r=abc", SERVER_NONCE).unwrap();
        assert_eq!(
            server_final(
                &v,
                &pending,
                format!("c=eSws,r=abc{SERVER_NONCE},p={proof}").as_bytes()
            ),
            Err(ScramError::WrongProof)
        );
    }
}
