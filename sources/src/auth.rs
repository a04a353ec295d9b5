//! Who is calling: bearer tokens derived from the fleet secret.
//!
//! A token is the lowercase hex HMAC-SHA256 of the principal's name under
//! the secret: the fridge id for a fridge, `backoffice/<id>` for a
//! back-office client. The prefix keeps the two kinds apart, so a fridge's
//! token can never publish prices. Tokens are compared in constant time.

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

    /// The id the principal's events carry as `source_id`.
    pub fn source_id(&self) -> &str {
        match self {
            Principal::Fridge(id) | Principal::BackOffice(id) => id,
        }
    }

    fn signed_name(&self) -> String {
        match self {
            Principal::Fridge(id) => id.clone(),
            Principal::BackOffice(id) => format!("backoffice/{id}"),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.signed_name())
    }
}

/// Issues and checks tokens under one secret.
#[derive(Clone)]
pub struct Tokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<secret>)")
    }
}

impl Tokens {
    /// Tokens under `secret`.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Tokens { secret: secret.as_ref().to_vec() }
    }

    fn mac(&self, principal: &Principal) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(principal.signed_name().as_bytes());
        mac
    }

    /// The token of `principal`.
    pub fn issue(&self, principal: &Principal) -> String {
        hex::encode(self.mac(principal).finalize().into_bytes())
    }

    /// Whether `token` belongs to `principal`.
    pub fn verify(&self, principal: &Principal, token: &str) -> bool {
        match hex::decode(token.trim()) {
            Ok(bytes) => self.mac(principal).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
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
    fn a_token_belongs_to_one_principal() {
        let tokens = Tokens::new("fleet-secret");
        let fridge = Principal::Fridge("FR-000001".into());
        let token = tokens.issue(&fridge);
        assert!(tokens.verify(&fridge, &token));
        assert!(!tokens.verify(&Principal::Fridge("FR-000002".into()), &token));
        assert!(!tokens.verify(&Principal::BackOffice("FR-000001".into()), &token));
        assert!(!Tokens::new("other").verify(&fridge, &token));
        assert!(!tokens.verify(&fridge, "not hex"));
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
