//! Standard Webhooks signatures: `webhook-signature: v1,<base64 of
//! HMAC-SHA256(id.timestamp.body)>` under the endpoint's `whsec_` secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// An endpoint's signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret or a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The secret is not `whsec_` followed by base64.
    #[error("a webhook secret is \"whsec_\" followed by base64 (at least 16 bytes), e.g. {example}")]
    BadSecret {
        /// A valid secret to copy the shape of.
        example: &'static str,
    },
    /// A header is missing.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp is not a number of seconds.
    #[error("webhook-timestamp {0:?} is not a number of seconds")]
    BadTimestamp(String),
    /// The timestamp is too far from now.
    #[error("webhook-timestamp is {0} s away from now (more than 5 minutes)")]
    Stale(i64),
    /// No signature in the header matches.
    #[error("no signature matches")]
    Mismatch,
}

/// A secret to copy the shape of (the one the demo and tests use).
pub const EXAMPLE_SECRET: &str = "whsec_Y29sZHN0cmVhbS1kZW1vLXNlY3JldC0wMQ==";

impl Secret {
    /// Parses a `whsec_` secret.
    pub fn parse(text: &str) -> Result<Secret, SignatureError> {
        let bad = || SignatureError::BadSecret { example: EXAMPLE_SECRET };
        let encoded = text.trim().strip_prefix("whsec_").ok_or_else(bad)?;
        let key = STANDARD.decode(encoded).map_err(|_| bad())?;
        if key.len() < 16 {
            return Err(bad());
        }
        Ok(Secret(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }

    /// Checks a delivery's headers against its body, as a receiver does:
    /// the timestamp within 5 minutes of `now` (seconds), and one of the
    /// space-separated `v1,` signatures matching.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let id = id.ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let timestamp = timestamp.ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let signatures = signatures.ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        let seconds: i64 = timestamp.parse().map_err(|_| SignatureError::BadTimestamp(timestamp.to_owned()))?;
        if (now - seconds).abs() > 300 {
            return Err(SignatureError::Stale(now - seconds));
        }
        for signature in signatures.split_whitespace() {
            if let Some(encoded) = signature.strip_prefix("v1,")
                && let Ok(bytes) = STANDARD.decode(encoded)
                && self.mac(id, seconds, body).verify_slice(&bytes).is_ok()
            {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_id_does_not() {
        let secret = Secret::parse(EXAMPLE_SECRET).unwrap();
        let body = br#"{"type":"restock.opened"}"#;
        let signature = secret.sign("msg_1", 1_700_000_000, body);
        assert!(signature.starts_with("v1,"));
        let check = |id, body: &[u8], now| secret.verify(Some(id), Some("1700000000"), Some(&signature), body, now);
        assert_eq!(check("msg_1", body, 1_700_000_100), Ok(()));
        assert_eq!(check("msg_2", body, 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(check("msg_1", b"{}", 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(check("msg_1", body, 1_700_001_000), Err(SignatureError::Stale(1000)));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(Secret::parse("hunter2").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        assert!(Secret::parse(EXAMPLE_SECRET).is_ok());
    }
}
