//! Values that must never be printed: [`Secret`] for tokens, client secrets and passwords, and
//! [`TokenKey`] for the key that seals tokens at rest. Both print `[redacted]`.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A value that must never be printed: its `Debug` and `Display` say `[redacted]`.
///
/// Serde reads and writes the value itself: a record holding one is only ever serialised into
/// the vault (sealed) or into the admin token answer, never into a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// 32 bytes of key material for AES-256-GCM; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey(pub [u8; 32]);

impl TokenKey {
    /// The key from its base64 text (`HLGATE_TOKEN_KEY` or the generated key file).
    pub fn from_base64(text: &str) -> Result<TokenKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is not valid base64".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("must decode to 32 bytes, got {}", b.len()))?;
        Ok(TokenKey(key))
    }

    /// The text [`TokenKey::from_base64`] reads back.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_redacted_and_serialise_as_themselves() {
        let s = Secret::new("s3cret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"s3cret\"");
        let key = TokenKey([7; 32]);
        assert_eq!(format!("{key:?}"), "[redacted]");
    }

    #[test]
    fn token_keys_round_trip_and_say_what_is_wrong() {
        let key = TokenKey([7; 32]);
        assert_eq!(TokenKey::from_base64(&key.to_base64()), Ok(key));
        assert_eq!(
            TokenKey::from_base64("c2hvcnQ="),
            Err("must decode to 32 bytes, got 5".into())
        );
        assert!(TokenKey::from_base64("***").is_err());
    }
}
