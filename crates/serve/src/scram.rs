//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL does it, server side: the stored
//! verifier and the two steps of a login, with channel binding (`SCRAM-SHA-256-PLUS`,
//! `tls-server-end-point`, RFC 5929) over TLS.
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
//! Over TLS the server also offers `SCRAM-SHA-256-PLUS` ([`Offer::Plus`]). A client that picks
//! it starts with `p=tls-server-end-point,,` and its `c=` carries that header followed by the
//! hash of the certificate it was shown ([`end_point_hash`]). The proof covers `c=`, so a
//! man in the middle that terminates TLS with its own certificate cannot relay the login. A
//! client that could bind but saw no `-PLUS` offer says `y,,`; over TLS that means the offer was
//! stripped on the way, and the login is refused (RFC 5802, section 6).
//!
//! Everything here is a pure function of its inputs (the random parts are passed in), so the
//! RFC's worked example is a unit test.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, hmac, pbkdf2};

/// The mechanism name, as offered to the client.
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";

/// The mechanism with channel binding, offered over TLS.
pub(crate) const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The one channel-binding type PostgreSQL and libpq use.
const END_POINT: &str = "tls-server-end-point";

/// What the server offers a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer<'a> {
    /// `SCRAM-SHA-256` only: a connection without TLS, or a certificate whose signature
    /// algorithm gives no `tls-server-end-point` hash.
    Plain,
    /// `SCRAM-SHA-256-PLUS` first, then `SCRAM-SHA-256`; the hash of the server's certificate
    /// that a binding client must send ([`end_point_hash`]).
    Plus(&'a [u8]),
}

impl Offer<'_> {
    /// The mechanism names to send, preferred first (as PostgreSQL lists them).
    pub(crate) fn mechanisms(self) -> Vec<String> {
        match self {
            Offer::Plain => vec![MECHANISM.to_owned()],
            Offer::Plus(_) => vec![MECHANISM_PLUS.to_owned(), MECHANISM.to_owned()],
        }
    }
}

/// The `tls-server-end-point` channel-binding data of a certificate (RFC 5929, section 4.1):
/// the hash of its DER bytes with its signature's hash function, SHA-256 where that is MD5 or
/// SHA-1. `None` for a signature with no single hash function (Ed25519, RSA-PSS), where
/// PostgreSQL offers no channel binding either.
pub(crate) fn end_point_hash(certificate_der: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use x509_certificate::{SignatureAlgorithm as S, X509Certificate};
    let certificate = X509Certificate::from_der(certificate_der)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let algorithm = match certificate.signature_algorithm() {
        Some(S::RsaSha1 | S::RsaSha256 | S::EcdsaSha256) => &digest::SHA256,
        Some(S::RsaSha384 | S::EcdsaSha384) => &digest::SHA384,
        Some(S::RsaSha512) => &digest::SHA512,
        _ if certificate.signature_algorithm_oid().as_ref() == ECDSA_SHA512 => &digest::SHA512,
        _ => return Ok(None),
    };
    Ok(Some(
        digest::digest(algorithm, certificate_der).as_ref().to_vec(),
    ))
}

/// ecdsa-with-SHA512, 1.2.840.10045.4.3.4 (DER contents), which x509-certificate does not name.
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

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
    /// The password is first normalised with SASLprep (RFC 4013), as PostgreSQL does when it
    /// stores a verifier and libpq does before it computes a proof ([`prepared`]).
    pub fn compute(password: &str, salt: &[u8], iterations: u32) -> Self {
        let password = prepared(password);
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

/// The password as SCRAM hashes it: SASLprep'd (RFC 4013: non-ASCII spaces become a space,
/// soft hyphens and the like are dropped, NFKC), or as given when SASLprep refuses it
/// (prohibited or unassigned characters), as PostgreSQL's `pg_saslprep` and libpq do. ASCII
/// passwords are used as given (PostgreSQL's shortcut; SASLprep would refuse control
/// characters, with the same result).
fn prepared(password: &str) -> std::borrow::Cow<'_, str> {
    if password.is_ascii() {
        return password.into();
    }
    stringprep::saslprep(password).unwrap_or(password.into())
}

/// Why a login step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScramError {
    /// The client's message is not what SCRAM-SHA-256 sends, or its channel binding does not
    /// match the connection.
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
    /// What `c=` must decode to: the GS2 header the client sent (`n,,`, `y,,` or
    /// `p=tls-server-end-point,,`), followed by the certificate's hash when it binds.
    binding: Vec<u8>,
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

/// Step 1: reads the mechanism the client chose and its client-first message, and returns
/// the server-first message to send. `offer` is what the server offered this connection;
/// `server_nonce` is the server's random half of the nonce ([`server_nonce`]).
pub(crate) fn server_first(
    verifier: &Verifier,
    offer: Offer<'_>,
    mechanism: &str,
    client_first: &[u8],
    server_nonce: &str,
) -> Result<(Pending, String), ScramError> {
    let bound = match (mechanism, offer) {
        (MECHANISM, _) => None,
        (MECHANISM_PLUS, Offer::Plus(hash)) => Some(hash),
        (other, offer) => {
            return Err(malformed(format!(
                "the client chose `{other}`; this server offers {}",
                offer.mechanisms().join(" and ")
            )));
        }
    };
    let client_first = std::str::from_utf8(client_first)
        .map_err(|_| malformed("the client-first message is not UTF-8"))?;
    // gs2-header: a channel-binding flag, an optional authzid, then the bare message.
    let (flag, rest) = client_first
        .split_once(',')
        .ok_or_else(|| malformed("the client-first message has no GS2 header"))?;
    match (flag, bound) {
        ("n" | "y", Some(_)) => {
            return Err(malformed(format!(
                "{MECHANISM_PLUS} needs channel binding (`p={END_POINT}`) in the GS2 header"
            )));
        }
        ("y", None) if offer != Offer::Plain => {
            return Err(malformed(format!(
                "the client can bind the channel but saw no {MECHANISM_PLUS} offer, which this \
                 server made: something between them may have removed it"
            )));
        }
        ("n" | "y", None) => {}
        (f, None) if f.starts_with("p=") => {
            return Err(malformed(format!(
                "channel binding (p=) needs {MECHANISM_PLUS}, not {MECHANISM}"
            )));
        }
        (f, Some(_)) if f.strip_prefix("p=").is_some_and(|t| t != END_POINT) => {
            return Err(malformed(format!(
                "channel binding type `{}` is not supported (only {END_POINT})",
                &f[2..]
            )));
        }
        (f, Some(_)) if f.starts_with("p=") => {}
        _ => {
            return Err(malformed(
                "the GS2 header does not start with `n`, `y` or `p=`",
            ));
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
    let mut binding = format!("{flag},,").into_bytes();
    binding.extend_from_slice(bound.unwrap_or_default());
    Ok((
        Pending {
            binding,
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
    if BASE64.decode(binding).ok().as_deref() != Some(pending.binding.as_slice()) {
        return Err(malformed(if pending.binding.starts_with(b"p=") {
            "the channel binding (c=) does not match this connection's certificate: \
                 the client may be talking to this server through someone else's TLS"
        } else {
            "the channel binding (c=) does not repeat the GS2 header"
        }));
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

    /// The server's answer to the RFC's client-first message, without channel binding.
    fn rfc_first(v: &Verifier) -> (Pending, String) {
        server_first(
            v,
            Offer::Plain,
            MECHANISM,
            CLIENT_FIRST.as_bytes(),
            SERVER_NONCE,
        )
        .unwrap()
    }

    fn rfc_verifier() -> Verifier {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Verifier::compute("pencil", &salt, 4096)
    }

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_logs_in_and_the_server_signature_matches() {
        let v = rfc_verifier();
        let (pending, first) = rfc_first(&v);
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
        let (pending, _) = rfc_first(&other);
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

    /// The client's last message for `password`, computed as RFC 5802 says: the test's own
    /// client, with `binding` as what `c=` carries.
    fn client_final(
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        binding: &[u8],
    ) -> String {
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .unwrap()
                .to_owned()
        };
        let (nonce, salt) = (field("r="), BASE64.decode(field("s=")).unwrap());
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &salt,
            prepared(password).as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let without_proof = format!("c={},r={nonce}", BASE64.encode(binding));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&sha256(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn channel_binding_is_checked_against_the_certificate_and_a_stripped_offer_refused() {
        let v = rfc_verifier();
        let hash = [7u8; 32];
        let plus = Offer::Plus(&hash);
        assert_eq!(plus.mechanisms(), [MECHANISM_PLUS, MECHANISM]);
        assert_eq!(Offer::Plain.mechanisms(), [MECHANISM]);
        let gs2 = b"p=tls-server-end-point,,";
        let bound = [&gs2[..], &hash].concat();
        let first = format!("{}n=,r=abc", std::str::from_utf8(gs2).unwrap());
        let login = |binding: &[u8], password: &str| {
            let (pending, reply) =
                server_first(&v, plus, MECHANISM_PLUS, first.as_bytes(), SERVER_NONCE).unwrap();
            let last = client_final(password, "n=,r=abc", &reply, binding);
            server_final(&v, &pending, last.as_bytes())
        };
        // The certificate's hash after the header: in, and the server proves itself.
        assert!(login(&bound, "pencil").unwrap().starts_with("v="));
        assert_eq!(login(&bound, "pencil!"), Err(ScramError::WrongProof));
        // Someone else's certificate (a relay with its own TLS), or no hash at all.
        let relayed = [&gs2[..], &[8u8; 32]].concat();
        for binding in [&relayed[..], gs2, b"n,,"] {
            match login(binding, "pencil") {
                Err(ScramError::Malformed(m)) => assert!(m.contains("certificate"), "{m}"),
                other => panic!("{binding:?}: {other:?}"),
            }
        }
        // Over TLS a client may still choose not to bind (`n`), but `y` says it saw no -PLUS
        // offer, which this server made.
        let (pending, reply) =
            server_first(&v, plus, MECHANISM, b"n,,n=,r=abc", SERVER_NONCE).unwrap();
        let last = client_final("pencil", "n=,r=abc", &reply, b"n,,");
        assert!(server_final(&v, &pending, last.as_bytes()).is_ok());
        for (offer, mechanism, first, why) in [
            (plus, MECHANISM, "y,,n=,r=abc", "removed"),
            (plus, MECHANISM_PLUS, "n,,n=,r=abc", "needs channel binding"),
            (plus, MECHANISM_PLUS, "y,,n=,r=abc", "needs channel binding"),
            (
                plus,
                MECHANISM_PLUS,
                "p=tls-unique,,n=,r=abc",
                "`tls-unique` is not supported",
            ),
            (
                plus,
                MECHANISM,
                "p=tls-server-end-point,,n=,r=abc",
                "needs SCRAM-SHA-256-PLUS",
            ),
            (
                plus,
                "SCRAM-SHA-1",
                "n,,n=,r=abc",
                "offers SCRAM-SHA-256-PLUS and SCRAM-SHA-256",
            ),
            (
                Offer::Plain,
                MECHANISM_PLUS,
                "p=tls-server-end-point,,n=,r=abc",
                "offers SCRAM-SHA-256",
            ),
            (
                Offer::Plain,
                MECHANISM,
                "p=tls-server-end-point,,n=,r=abc",
                "needs SCRAM-SHA-256-PLUS",
            ),
        ] {
            match server_first(&v, offer, mechanism, first.as_bytes(), SERVER_NONCE) {
                Err(ScramError::Malformed(m)) => {
                    assert!(m.contains(why), "{mechanism} {first}: {m}")
                }
                other => panic!("{mechanism} {first}: {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_are_saslprepped_as_libpq_does() {
        // RFC 4013 section 3's examples, and what PostgreSQL keeps as given.
        for (typed, hashed) in [
            ("I\u{AD}X", "IX"),
            ("user", "user"),
            ("USER", "USER"),
            ("\u{AA}", "a"),
            ("\u{2168}", "IX"),
            ("a\u{A0}b", "a b"),
            ("Gr\u{FC}n", "Gr\u{FC}n"),
            // Refused by SASLprep, so used as typed: a control character, an RTL string
            // ending in a digit, an unassigned code point.
            ("\u{7}", "\u{7}"),
            ("\u{627}1", "\u{627}1"),
            ("x\u{E0080}", "x\u{E0080}"),
        ] {
            assert_eq!(prepared(typed), hashed, "{typed:?}");
            let salt = b"0123456789abcdef";
            assert_eq!(
                Verifier::compute(typed, salt, 4096),
                Verifier::compute(hashed, salt, 4096),
                "{typed:?}"
            );
        }
        let salt = b"0123456789abcdef";
        assert_ne!(
            Verifier::compute("a\u{A0}b", salt, 4096),
            Verifier::compute("ab", salt, 4096)
        );
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
                    server_first(&v, Offer::Plain, MECHANISM, first, SERVER_NONCE),
                    Err(ScramError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
        let (pending, _) = rfc_first(&v);
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
        let (pending, _) =
            server_first(&v, Offer::Plain, MECHANISM, b"y,,n=,r=abc", SERVER_NONCE).unwrap();
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
