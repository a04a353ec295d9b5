//! Who is calling: bearer tokens signed with the fleet keys.
//!
//! A token names its key, its principal (a fridge, a back-office client or
//! an analyst: namespaces that never meet) and its expiry, and carries an
//! HMAC-SHA256 of those under the key; see [`Tokens`]. Macs are compared
//! in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The id rule of fridges and back-office clients, as a pattern.
pub const ID_RULE: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}";

/// Whether `id` follows [`ID_RULE`]: no `/`, no spaces, so a fridge id can
/// never be read as a back-office name.
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The authenticated identity of a connection, and the namespace its seqs,
/// its deduplication and its token live in: a back-office client named like
/// a fridge shares nothing with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    /// A fridge, by fridge id.
    Fridge(String),
    /// A back-office client, by its id.
    BackOffice(String),
    /// An analyst, by name: queries the Flight SQL endpoint, sends no events.
    Analyst(String),
}

impl Principal {
    /// A fridge, if `id` follows the id rule.
    pub fn fridge(id: &str) -> Option<Principal> {
        valid_id(id).then(|| Principal::Fridge(id.to_owned()))
    }

    /// A back-office client, if `id` follows the id rule.
    pub fn back_office(id: &str) -> Option<Principal> {
        valid_id(id).then(|| Principal::BackOffice(id.to_owned()))
    }

    /// An analyst, if `name` follows the id rule.
    pub fn analyst(name: &str) -> Option<Principal> {
        valid_id(name).then(|| Principal::Analyst(name.to_owned()))
    }

    /// The id the principal's events carry as `source_id`.
    pub fn source_id(&self) -> &str {
        match self {
            Principal::Fridge(id) | Principal::BackOffice(id) | Principal::Analyst(id) => id,
        }
    }

    fn signed_name(&self) -> String {
        match self {
            Principal::Fridge(id) => id.clone(),
            Principal::BackOffice(id) => format!("backoffice/{id}"),
            Principal::Analyst(id) => format!("analyst/{id}"),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.signed_name())
    }
}

/// A fleet key: the secret tokens are signed with, and the id every token
/// it signs names.
#[derive(Clone)]
pub struct Key {
    /// Named in the tokens (follows the id rule).
    pub id: String,
    secret: Vec<u8>,
}

impl Key {
    /// A key named `id` with `secret`.
    pub fn new(id: impl Into<String>, secret: impl AsRef<[u8]>) -> Key {
        Key { id: id.into(), secret: secret.as_ref().to_vec() }
    }

    fn mac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        mac
    }
}

/// The id of the fleet key when the config names none.
pub const DEFAULT_KEY_ID: &str = "k1";

/// The first field of every token of the current form.
const TOKEN_FORM: &str = "cs1";

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a token of either form.
    #[error("the token is not a coldstream token")]
    Malformed,
    /// Signed by no key this gateway holds, or altered.
    #[error("the token's signature does not match (key {0:?})")]
    BadSignature(String),
    /// Past its expiry.
    #[error("the token expired at {0} (Unix seconds); issue a new one with `coldstream token`")]
    Expired(u64),
    /// The principal is on the revocation list.
    #[error("{0} is revoked")]
    Revoked(String),
    /// An old-form token while `auth.legacy_tokens` is off.
    #[error(
        "tokens of the old form are not accepted (auth.legacy_tokens is off); issue a new one with `coldstream token`"
    )]
    Legacy,
    /// A valid token of another principal.
    #[error("the token is not valid for {0}")]
    WrongPrincipal(String),
}

/// What a call's credentials prove before the request body is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// A token of the current form: it names its principal.
    Principal(Principal),
    /// An old-form token, checked once the body names the principal.
    Legacy(String),
    /// A client certificate (DER) that the TLS handshake verified against
    /// `tls.client_ca`: it proves the fridges it names (as DNS names).
    Certificate(Vec<u8>),
}

/// Issues and checks tokens.
///
/// A token of the current form reads
/// `cs1:<key id>:<fridge|backoffice|analyst>:<id>:<expires, Unix seconds>:<mac>`,
/// the mac being the lowercase hex HMAC-SHA256 of everything before it
/// under the named key. Since it names its principal, it is checked from
/// the request's metadata alone, before any of the body is decoded.
/// Several keys may be active at once (rotation: issue with the new one,
/// keep accepting the old one until every fridge has a new token); a
/// revoked principal is refused whatever its token. The old form (the bare
/// HMAC of the principal's name) is accepted only while `legacy` is set.
#[derive(Clone)]
pub struct Tokens {
    /// The first key issues; every key verifies.
    keys: Vec<Key>,
    revoked: std::collections::HashSet<Principal>,
    legacy: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "Tokens(keys {ids:?}, {} revoked, legacy {})", self.revoked.len(), self.legacy)
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Tokens {
    /// Tokens under one key, `secret` named [`DEFAULT_KEY_ID`], without the old form.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Tokens::with_keys(vec![Key::new(DEFAULT_KEY_ID, secret)])
    }

    /// Tokens under `keys`, the first of which issues. At least one key.
    pub fn with_keys(keys: Vec<Key>) -> Self {
        assert!(!keys.is_empty(), "tokens need a key");
        Tokens { keys, revoked: Default::default(), legacy: false }
    }

    /// Refuses every token of `principals`.
    pub fn revoke(mut self, principals: impl IntoIterator<Item = Principal>) -> Self {
        self.revoked.extend(principals);
        self
    }

    /// Accepts (or not) tokens of the old form.
    pub fn legacy(mut self, accept: bool) -> Self {
        self.legacy = accept;
        self
    }

    /// A token of `principal` valid until `expires_s` (Unix seconds),
    /// signed by the issuing key.
    pub fn issue_until(&self, principal: &Principal, expires_s: u64) -> String {
        let key = &self.keys[0];
        let (kind, id) = match principal {
            Principal::Fridge(id) => ("fridge", id),
            Principal::BackOffice(id) => ("backoffice", id),
            Principal::Analyst(id) => ("analyst", id),
        };
        let signed = format!("{TOKEN_FORM}:{}:{kind}:{id}:{expires_s}", key.id);
        let mac = hex::encode(key.mac(&signed).finalize().into_bytes());
        format!("{signed}:{mac}")
    }

    /// A token of `principal` valid for a year.
    pub fn issue(&self, principal: &Principal) -> String {
        self.issue_until(principal, now_s() + 365 * 24 * 3600)
    }

    /// A token of the old form (the bare HMAC of the principal's name
    /// under the issuing key), for fleets that still hand them out.
    pub fn issue_legacy(&self, principal: &Principal) -> String {
        hex::encode(self.keys[0].mac(&principal.signed_name()).finalize().into_bytes())
    }

    /// Checks what a token proves at `now_s` without the request body.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Verified, Refusal> {
        let token = token.trim();
        let Some(rest) = token.strip_prefix(TOKEN_FORM).and_then(|rest| rest.strip_prefix(':')) else {
            let hex_digits = token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit());
            return match (hex_digits, self.legacy) {
                (false, _) => Err(Refusal::Malformed),
                (true, false) => Err(Refusal::Legacy),
                (true, true) => Ok(Verified::Legacy(token.to_owned())),
            };
        };
        let fields: Vec<&str> = rest.split(':').collect();
        let [key_id, kind, id, expires, mac] = fields[..] else { return Err(Refusal::Malformed) };
        let principal = match kind {
            "fridge" => Principal::fridge(id),
            "backoffice" => Principal::back_office(id),
            "analyst" => Principal::analyst(id),
            _ => None,
        }
        .ok_or(Refusal::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| Refusal::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| Refusal::Malformed)?;
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| Refusal::BadSignature(key_id.to_owned()))?;
        let signed = &token[..token.len() - fields[4].len() - 1];
        key.mac(signed).verify_slice(&mac).map_err(|_| Refusal::BadSignature(key_id.to_owned()))?;
        if expires <= now_s {
            return Err(Refusal::Expired(expires));
        }
        self.admit(principal)
    }

    /// Checks that what a token proved is `principal`, once the body names it.
    pub fn confirm(&self, verified: &Verified, principal: &Principal) -> Result<(), Refusal> {
        match verified {
            Verified::Principal(proven) if proven == principal => Ok(()),
            Verified::Principal(_) => Err(Refusal::WrongPrincipal(principal.to_string())),
            Verified::Certificate(der) => {
                let Principal::Fridge(id) = principal else {
                    return Err(Refusal::WrongPrincipal(principal.to_string()));
                };
                let der = rustls::pki_types::CertificateDer::from(der.as_slice());
                let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| Refusal::Malformed)?;
                let name = rustls::pki_types::ServerName::try_from(id.as_str())
                    .map_err(|_| Refusal::WrongPrincipal(principal.to_string()))?;
                cert.verify_is_valid_for_subject_name(&name)
                    .map_err(|_| Refusal::WrongPrincipal(principal.to_string()))?;
                self.admit(principal.clone()).map(|_| ())
            }
            Verified::Legacy(token) => {
                let bytes = hex::decode(token).map_err(|_| Refusal::Malformed)?;
                let signed_by_any =
                    self.keys.iter().any(|k| k.mac(&principal.signed_name()).verify_slice(&bytes).is_ok());
                if !signed_by_any {
                    return Err(Refusal::WrongPrincipal(principal.to_string()));
                }
                self.admit(principal.clone()).map(|_| ())
            }
        }
    }

    fn admit(&self, principal: Principal) -> Result<Verified, Refusal> {
        if self.revoked.contains(&principal) {
            return Err(Refusal::Revoked(principal.to_string()));
        }
        Ok(Verified::Principal(principal))
    }
}

impl std::str::FromStr for Principal {
    type Err = String;

    /// `FR-000123` is a fridge, `backoffice/<id>` a back-office client: the
    /// names tokens are signed for, as the revocation list writes them.
    fn from_str(name: &str) -> Result<Principal, String> {
        let parsed = match (name.strip_prefix("backoffice/"), name.strip_prefix("analyst/")) {
            (Some(id), _) => Principal::back_office(id),
            (_, Some(name)) => Principal::analyst(name),
            _ => Principal::fridge(name),
        };
        parsed.ok_or_else(|| format!("{name:?} is not a fridge id, `backoffice/<id>` or `analyst/<name>` ({ID_RULE})"))
    }
}

/// The token in an `authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_one_principal_and_is_checked_without_the_body() {
        let tokens = Tokens::new("fleet-secret-0123456789");
        let fridge = Principal::Fridge("FR-000001".into());
        let token = tokens.issue(&fridge);
        assert_eq!(tokens.verify(&token, now_s()), Ok(Verified::Principal(fridge.clone())));
        assert_eq!(tokens.confirm(&Verified::Principal(fridge.clone()), &fridge), Ok(()));
        let other = Principal::Fridge("FR-000002".into());
        assert!(matches!(
            tokens.confirm(&Verified::Principal(fridge.clone()), &other),
            Err(Refusal::WrongPrincipal(_))
        ));
        let forged = token.replace("FR-000001", "FR-000002");
        assert!(matches!(tokens.verify(&forged, now_s()), Err(Refusal::BadSignature(_))));
        assert!(matches!(Tokens::new("other-secret-0123456").verify(&token, now_s()), Err(Refusal::BadSignature(_))));
        assert_eq!(tokens.verify("not a token", now_s()), Err(Refusal::Malformed));
        let expired = tokens.issue_until(&fridge, 1_000);
        assert_eq!(tokens.verify(&expired, 1_000), Err(Refusal::Expired(1_000)));
        // The back office's token of the same name is another principal.
        let back_office = tokens.issue(&Principal::BackOffice("FR-000001".into()));
        assert_eq!(
            tokens.verify(&back_office, now_s()),
            Ok(Verified::Principal(Principal::BackOffice("FR-000001".into())))
        );
    }

    #[test]
    fn an_analyst_is_a_namespace_of_its_own() {
        let tokens = Tokens::new("fleet-secret-0123456789");
        let analyst = Principal::Analyst("FR-000001".into());
        let token = tokens.issue(&analyst);
        assert!(token.starts_with("cs1:k1:analyst:FR-000001:"), "{token}");
        assert_eq!(tokens.verify(&token, now_s()), Ok(Verified::Principal(analyst.clone())));
        let fridge = Principal::Fridge("FR-000001".into());
        assert_eq!(
            tokens.confirm(&Verified::Principal(analyst.clone()), &fridge),
            Err(Refusal::WrongPrincipal("FR-000001".into()))
        );
        assert_eq!("analyst/FR-000001".parse::<Principal>(), Ok(analyst.clone()));
        assert_eq!(analyst.to_string(), "analyst/FR-000001");
        let revoked = tokens.revoke([analyst.clone()]);
        assert_eq!(revoked.verify(&token, now_s()), Err(Refusal::Revoked("analyst/FR-000001".into())));
    }

    #[test]
    fn keys_rotate_and_a_revoked_fridge_is_refused() {
        let old = Tokens::new("old-secret-0123456789");
        let fridge = Principal::Fridge("FR-000001".into());
        let issued_before = old.issue(&fridge);
        let rotated =
            Tokens::with_keys(vec![Key::new("k2", "new-secret-0123456789"), Key::new("k1", "old-secret-0123456789")]);
        let issued_after = rotated.issue(&fridge);
        assert!(issued_after.starts_with("cs1:k2:"));
        assert!(rotated.verify(&issued_before, now_s()).is_ok(), "the old key still verifies");
        assert!(rotated.verify(&issued_after, now_s()).is_ok());
        let retired = Tokens::with_keys(vec![Key::new("k2", "new-secret-0123456789")]);
        assert_eq!(retired.verify(&issued_before, now_s()), Err(Refusal::BadSignature("k1".into())));
        let revoked = rotated.clone().revoke(["FR-000001".parse().unwrap()]);
        assert_eq!(revoked.verify(&issued_after, now_s()), Err(Refusal::Revoked("FR-000001".into())));
        assert!(revoked.verify(&revoked.issue(&Principal::Fridge("FR-000002".into())), now_s()).is_ok());
    }

    #[test]
    fn the_old_token_form_is_accepted_only_while_allowed() {
        let tokens = Tokens::new("fleet-secret-0123456789");
        let fridge = Principal::Fridge("FR-000001".into());
        let legacy = tokens.issue_legacy(&fridge);
        assert_eq!(tokens.verify(&legacy, now_s()), Err(Refusal::Legacy));
        let allowing = tokens.legacy(true);
        let verified = allowing.verify(&legacy, now_s()).unwrap();
        assert_eq!(allowing.confirm(&verified, &fridge), Ok(()));
        let other = Principal::BackOffice("FR-000001".into());
        assert!(matches!(allowing.confirm(&verified, &other), Err(Refusal::WrongPrincipal(_))));
    }

    #[test]
    fn ids_follow_the_id_rule() {
        for good in ["FR-000123", "a", "bo.prices_1", &"x".repeat(64)] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "-FR", ".x", "backoffice/FR-1", "FR 1", "FR\n", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(Principal::fridge("backoffice/prices"), None);
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }
}
