//! Agent tokens: handed out once by lookup, required on every heartbeat. Only a hash is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh token: 32 random bytes, URL-safe base64 without padding (Python's `secrets.token_urlsafe()`).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The hex SHA-256 stored in place of the token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` is the one whose hash was stored. The digests are compared in constant
/// time, so response times reveal nothing about how close a guess came.
pub fn matches(stored_hash: Option<&str>, token: &str) -> bool {
    stored_hash.is_some_and(|stored| !token.is_empty() && constant_time_eq(stored.as_bytes(), hash(token).as_bytes()))
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_ipa_sized() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn only_the_issued_token_matches() {
        let token = generate();
        let stored = hash(&token);
        assert!(matches(Some(&stored), &token));
        assert!(!matches(Some(&stored), "wrong"));
        assert!(!matches(None, &token));
        assert!(!matches(Some(&hash("")), ""));
        assert!(!matches(Some(&stored[..10]), &token));
    }
}
