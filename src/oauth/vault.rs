//! Tenants' token pairs at rest: AES-256-GCM (`ring::aead`) under the token key (`key` says
//! which key, and whether it is the one the vault was sealed with). The tenant id is the
//! associated data, so a record cannot be moved to another tenant.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::highlevel::{TenantKind, TokenResponse};
use crate::secret::{Secret, TokenKey};
use crate::store::{KeyedTree, StoreError};

/// Now, in the unix seconds records keep their times in.
pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A record's unix time as RFC 3339, for the views.
pub fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Where a tenant's tokens stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Tokens are fresh or refreshable.
    Active,
    /// HighLevel says the location is not active; the refresh token is kept and retried.
    Inactive,
    /// Neither refresh nor reconnect worked: someone must install the app again.
    NeedsReauth,
    /// A Private Integration Token: served as is, never refreshed.
    Private,
}

impl TenantState {
    pub const ALL: [TenantState; 4] = [
        TenantState::Active,
        TenantState::Inactive,
        TenantState::NeedsReauth,
        TenantState::Private,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Inactive => "inactive",
            TenantState::NeedsReauth => "needs_reauth",
            TenantState::Private => "private",
        }
    }
}

/// One tenant's tokens and their bookkeeping. `Debug` never shows a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// The location id or company id.
    pub tenant: String,
    /// Stored as `Location` or `Company`.
    pub user_type: TenantKind,
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// Access token expiry, unix seconds; `None` for private tokens.
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub state: TenantState,
    /// The last failure, in words without secrets.
    pub last_error: Option<String>,
    /// Failed attempts since the last success (for backoff).
    pub attempts: u32,
    /// Unix seconds before which no retry is made (inactive, network errors).
    pub retry_at: i64,
    pub updated_at: i64,
}

impl TokenRecord {
    /// The record HighLevel's answer makes for `tenant`, active, without failures; the kind
    /// it states, else `fallback_kind`.
    pub fn from_response(
        tenant: &str,
        response: TokenResponse,
        fallback_kind: TenantKind,
        now: i64,
    ) -> TokenRecord {
        let kind = response
            .user_type
            .as_deref()
            .map(TenantKind::from_user_type)
            .unwrap_or(fallback_kind);
        TokenRecord {
            tenant: tenant.to_string(),
            user_type: kind,
            access_token: response.access_token,
            refresh_token: response.refresh_token,
            expires_at: Some(now + response.expires_in.unwrap_or(86_399)),
            scope: response.scope,
            location_id: response.location_id,
            company_id: response.company_id,
            state: TenantState::Active,
            last_error: None,
            attempts: 0,
            retry_at: 0,
            updated_at: now,
        }
    }

    /// The record a new pair makes of this one, keeping the ids HighLevel did not repeat.
    pub fn renewed(self, response: TokenResponse, now: i64) -> TokenRecord {
        let mut fresh = TokenRecord::from_response(&self.tenant, response, self.user_type, now);
        fresh.location_id = fresh.location_id.or(self.location_id);
        fresh.company_id = fresh.company_id.or(self.company_id);
        fresh
    }

    /// A fresh pair for `tenant`, active, without failures.
    pub fn active(
        tenant: &str,
        user_type: TenantKind,
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: i64,
    ) -> TokenRecord {
        TokenRecord {
            tenant: tenant.to_string(),
            user_type,
            access_token,
            refresh_token,
            expires_at: Some(expires_at),
            scope: None,
            location_id: None,
            company_id: None,
            state: TenantState::Active,
            last_error: None,
            attempts: 0,
            retry_at: 0,
            updated_at: now_secs(),
        }
    }

    /// Seconds the access token is still valid for; private tokens never expire.
    pub fn remaining_secs(&self) -> i64 {
        self.expires_at.map_or(i64::MAX, |e| e - now_secs())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("a token record cannot be decrypted (wrong HLGATE_TOKEN_KEY?)")]
    Decrypt,
    #[error("the token key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    /// Records are stored but no key is: a new one would open none of them.
    #[error(
        "tokens are stored but their key is missing: restore {path} from the backup of this data \
         dir (or set HLGATE_TOKEN_KEY to that key); hlgate does not make a new key, which would \
         leave every tenant needs_reauth"
    )]
    KeyMissing { path: String },
    /// The key opens none of the stored records: they were sealed with another.
    #[error(
        "the token key from {from} is not the key the stored tokens were sealed with: restore \
         the token.key of this data dir from its backup (or set HLGATE_TOKEN_KEY to that key)"
    )]
    WrongKey { from: String },
    /// The blocking task doing the vault's I/O did not finish (a panic, or the runtime
    /// shutting down).
    #[error("the vault task stopped: {0}")]
    Task(String),
}

/// Encrypted token records by tenant.
#[derive(Clone)]
pub struct Vault {
    tree: KeyedTree,
    key: std::sync::Arc<LessSafeKey>,
}

impl Vault {
    pub fn new(tree: KeyedTree, key: &TokenKey) -> Vault {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0).expect("32-byte key");
        Vault {
            tree,
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    fn seal(&self, record: &TokenRecord) -> Vec<u8> {
        let data = serde_json::to_vec(record).expect("record serialises");
        self.seal_bytes(record.tenant.as_bytes(), data)
    }

    fn open(&self, tenant: &str, bytes: Vec<u8>) -> Result<TokenRecord, VaultError> {
        let plain = self
            .open_bytes(tenant.as_bytes(), bytes)
            .ok_or(VaultError::Decrypt)?;
        serde_json::from_slice(&plain).map_err(|_| VaultError::Decrypt)
    }

    /// A random nonce, then `data` sealed with `aad` as associated data.
    pub(super) fn seal_bytes(&self, aad: &[u8], mut data: Vec<u8>) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("randomness");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .expect("seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// What [`Vault::seal_bytes`] sealed with this key and `aad`; `None` for anything else.
    pub(super) fn open_bytes(&self, aad: &[u8], mut bytes: Vec<u8>) -> Option<Vec<u8>> {
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }

    pub fn get(&self, tenant: &str) -> Result<Option<TokenRecord>, VaultError> {
        match self.tree.get(tenant)? {
            Some(bytes) => Ok(Some(self.open(tenant, bytes)?)),
            None => Ok(None),
        }
    }

    /// Encrypts, stores and flushes.
    pub fn put(&self, record: &TokenRecord) -> Result<(), VaultError> {
        self.tree.put(&record.tenant, &self.seal(record))?;
        Ok(())
    }

    pub fn delete(&self, tenant: &str) -> Result<bool, VaultError> {
        Ok(self.tree.delete(tenant)?)
    }

    /// Every record that decrypts; the others are reported by tenant.
    pub fn list(&self) -> Result<Vec<Result<TokenRecord, String>>, VaultError> {
        Ok(self
            .tree
            .list()?
            .into_iter()
            .map(|(tenant, bytes)| self.open(&tenant, bytes).map_err(|_| tenant))
            .collect())
    }

    /// The records after tenant `after` (all without one) in tenant order, decrypted only as
    /// they are consumed; one that does not decrypt is reported by tenant.
    pub fn after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<Result<TokenRecord, String>, VaultError>> + 'a {
        self.tree.after(after).map(|item| {
            let (tenant, bytes) = item?;
            Ok(self.open(&tenant, bytes).map_err(|_| tenant))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;

    /// An active record with recognisable tokens (`access-plain`, `refresh-plain`).
    pub(crate) fn record(tenant: &str) -> TokenRecord {
        let (access, refresh) = (Secret::new("access-plain"), Secret::new("refresh-plain"));
        TokenRecord {
            updated_at: 0,
            ..TokenRecord::active(tenant, TenantKind::Location, access, Some(refresh), 1)
        }
    }

    #[tokio::test]
    async fn records_are_sealed_bound_to_their_tenant_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), std::time::Duration::from_secs(60)).unwrap();
        let tree = store.keyed_tree("tokens").unwrap();
        let vault = Vault::new(tree.clone(), &TokenKey([3; 32]));
        vault.put(&record("locA")).unwrap();
        let raw = tree.get("locA").unwrap().unwrap();
        assert!(!raw.windows(12).any(|w| w == b"access-plain"));
        assert_eq!(vault.get("locA").unwrap(), Some(record("locA")));

        // Moved under another tenant's name, it does not open.
        tree.put("locB", &raw).unwrap();
        assert!(matches!(vault.get("locB"), Err(VaultError::Decrypt)));
        // Under another key, nothing opens.
        let other = Vault::new(tree, &TokenKey([7; 32]));
        assert!(matches!(other.get("locA"), Err(VaultError::Decrypt)));
    }

    #[test]
    fn records_keep_their_stored_json_format() {
        let text = r#"{"tenant":"c1","user_type":"Company","access_token":"a","refresh_token":"r","expires_at":5,"scope":null,"location_id":null,"company_id":"c1","state":"active","last_error":null,"attempts":0,"retry_at":0,"updated_at":1}"#;
        let record: TokenRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.user_type, TenantKind::Company);
        assert_eq!(record.access_token.expose(), "a");
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
        assert!(!format!("{record:?}").contains("\"a\""));
    }
}
