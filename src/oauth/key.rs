//! The token key: `HLGATE_TOKEN_KEY`, else `token.key` in the data dir, generated there (mode
//! 0600) only while the vault holds no record; and the check that it is the key the vault was
//! sealed with. A lost or swapped key refuses the start: a new key would open none of the
//! records, every tenant would turn `needs_reauth`, and new installs sealed with it would break
//! when the old key came back.
//!
//! The check: a known value sealed with the key, kept beside the vault (tree [`KEY_CHECK_TREE`]),
//! so a start tells a wrong key at the cost of one decryption, whatever the number of tenants. A
//! vault from before the check value, or one whose check value does not open, is judged by its
//! first records instead; once a key opens one, the check value is written with it.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use tracing::warn;

use super::vault::{Vault, VaultError};
use crate::secret::TokenKey;
use crate::store::KeyedTree;

/// The tree holding the check value, in the vault's database.
pub const KEY_CHECK_TREE: &str = "token_key";
const KEY_FILE: &str = "token.key";
const CHECK_ENTRY: &str = "check";
/// Sealed with the key, associated data and plain text alike: only that key opens it.
const CHECK_VALUE: &[u8] = b"hlgate token key check";
/// Records tried when the check value is missing or does not open. One that opens proves the
/// key (AES-GCM opens nothing sealed with another key); a wrong key opens none, and more tries
/// would only cost time on a large vault.
const RECORDS_TRIED: usize = 16;

/// Where the key came from, named in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str("HLGATE_TOKEN_KEY"),
            KeySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What a key makes of the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// No record is stored: any key will do (a start without one generates it).
    Empty,
    /// This key, from there, opens the stored records.
    Opens(TokenKey, KeySource),
}

/// The configured key, else the one in `data_dir`; `None` when neither exists. A key file that
/// group or others can read is warned about: whoever reads it can decrypt every stored token.
pub fn load_key(
    configured: Option<&TokenKey>,
    data_dir: &Path,
) -> Result<Option<(TokenKey, KeySource)>, VaultError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(key) = configured {
        return Ok(Some((key.clone(), KeySource::Env)));
    }
    let path = data_dir.join(KEY_FILE);
    let err = |reason: String| key_file_error(&path, reason);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mode = std::fs::metadata(&path)
        .map_err(|e| err(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
            "the token key file is readable by group or others; make it 0600 (chmod 600)");
    }
    let key = TokenKey::from_base64(&text).map_err(err)?;
    Ok(Some((key, KeySource::File(path))))
}

fn key_file_error(path: &Path, reason: String) -> VaultError {
    VaultError::KeyFile {
        path: path.display().to_string(),
        reason,
    }
}

/// What the key (as [`load_key`] finds it) makes of the vault in `tokens`, writing nothing:
/// for `hlgate store check` and a stopped gateway's `hlgate tenants`. The errors are those a
/// start would refuse with.
pub fn key_state(
    tokens: KeyedTree,
    checks: &KeyedTree,
    configured: Option<&TokenKey>,
    data_dir: &Path,
) -> Result<KeyState, VaultError> {
    let Some((key, source)) = load_key(configured, data_dir)? else {
        return match holds_records(&tokens)? {
            false => Ok(KeyState::Empty),
            true => Err(missing(data_dir)),
        };
    };
    let vault = Vault::new(tokens.clone(), &key);
    match judge(&vault, &tokens, checks)? {
        Judged { opens: false, .. } => Err(VaultError::WrongKey {
            from: source.to_string(),
        }),
        Judged { empty: true, .. } => Ok(KeyState::Empty),
        Judged { .. } => Ok(KeyState::Opens(key, source)),
    }
}

/// The vault at start, under the key [`load_key`] finds, or under a new one written into
/// `data_dir` when there is none and no record is stored. Refuses a missing key over stored
/// records, and a key that does not open them. Writes the check value when it was missing or
/// sealed with another key (over an empty vault).
pub fn open_vault(
    tokens: KeyedTree,
    checks: &KeyedTree,
    configured: Option<&TokenKey>,
    data_dir: &Path,
) -> Result<Vault, VaultError> {
    let (key, source) = match load_key(configured, data_dir)? {
        Some(found) => found,
        None if holds_records(&tokens)? => return Err(missing(data_dir)),
        None => generate_key(data_dir)?,
    };
    let vault = Vault::new(tokens.clone(), &key);
    let judged = judge(&vault, &tokens, checks)?;
    if !judged.opens {
        return Err(VaultError::WrongKey {
            from: source.to_string(),
        });
    }
    if !judged.checked {
        let value = vault.seal_bytes(CHECK_VALUE, CHECK_VALUE.to_vec());
        checks.put(CHECK_ENTRY, &value)?;
    }
    Ok(vault)
}

fn holds_records(tokens: &KeyedTree) -> Result<bool, VaultError> {
    Ok(tokens.after(None).next().transpose()?.is_some())
}

fn missing(data_dir: &Path) -> VaultError {
    VaultError::KeyMissing {
        path: data_dir.join(KEY_FILE).display().to_string(),
    }
}

/// A new key, written (and synced) into `data_dir` before anything is sealed with it.
fn generate_key(data_dir: &Path) -> Result<(TokenKey, KeySource), VaultError> {
    let path = data_dir.join(KEY_FILE);
    let mut key = TokenKey([0u8; 32]);
    SystemRandom::new()
        .fill(&mut key.0)
        .map_err(|_| key_file_error(&path, "no randomness".into()))?;
    crate::files::write_private(&path, key.to_base64().as_bytes())
        .map_err(|e| key_file_error(&path, e))?;
    Ok((key, KeySource::File(path)))
}

/// What the vault's key check found.
struct Judged {
    /// No record is stored.
    empty: bool,
    /// The check value opens with the key.
    checked: bool,
    /// The key opens the vault: by its check value, or one of its first records, or there is
    /// nothing to open.
    opens: bool,
}

/// `vault` is `tokens` under the key to judge.
fn judge(vault: &Vault, tokens: &KeyedTree, checks: &KeyedTree) -> Result<Judged, VaultError> {
    let checked = checks
        .get(CHECK_ENTRY)?
        .and_then(|value| vault.open_bytes(CHECK_VALUE, value))
        .is_some_and(|plain| plain == CHECK_VALUE);
    let empty = !holds_records(tokens)?;
    let mut opens = checked || empty;
    if !opens {
        for record in vault.after(None).take(RECORDS_TRIED) {
            if record?.is_ok() {
                opens = true;
                break;
            }
        }
    }
    Ok(Judged {
        empty,
        checked,
        opens,
    })
}

#[cfg(test)]
mod tests {
    use super::super::vault::tests::record;
    use super::*;
    use crate::store::Store;

    fn trees(store: &Store) -> (KeyedTree, KeyedTree) {
        let tree = |name| store.keyed_tree(name).unwrap();
        (tree("tokens"), tree(KEY_CHECK_TREE))
    }

    #[tokio::test]
    async fn a_key_is_made_for_an_empty_vault_only_and_must_open_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), std::time::Duration::from_secs(60)).unwrap();
        let (tokens, checks) = trees(&store);
        let state = |key: Option<&TokenKey>| key_state(tokens.clone(), &checks, key, dir.path());
        assert_eq!(state(None).unwrap(), KeyState::Empty);

        // An empty vault gets a new key, kept for the next start.
        let vault = open_vault(tokens.clone(), &checks, None, dir.path()).unwrap();
        let file = KeySource::File(dir.path().join(KEY_FILE));
        let (key, source) = load_key(None, dir.path()).unwrap().unwrap();
        assert_eq!(source, file);
        vault.put(&record("locA")).unwrap();
        assert_eq!(state(None).unwrap(), KeyState::Opens(key.clone(), file));
        let env = KeyState::Opens(key.clone(), KeySource::Env);
        assert_eq!(state(Some(&key)).unwrap(), env);
        open_vault(tokens.clone(), &checks, None, dir.path()).unwrap();

        // Another key, from the environment or the file, is refused, naming where it came from.
        let other = TokenKey([9; 32]);
        for e in [
            open_vault(tokens.clone(), &checks, Some(&other), dir.path())
                .err()
                .unwrap(),
            state(Some(&other)).unwrap_err(),
        ] {
            assert!(matches!(&e, VaultError::WrongKey { from } if from == "HLGATE_TOKEN_KEY"));
        }
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, other.to_base64()).unwrap();
        let e = open_vault(tokens.clone(), &checks, None, dir.path())
            .err()
            .unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(!e.to_string().contains(&other.to_base64()), "{e}");

        // A lost key file: refused, and no new key is written over the stored records.
        std::fs::remove_file(&path).unwrap();
        let e = open_vault(tokens.clone(), &checks, None, dir.path())
            .err()
            .unwrap();
        assert!(
            matches!(&e, VaultError::KeyMissing { path: p } if *p == path.display().to_string())
        );
        assert!(matches!(state(None), Err(VaultError::KeyMissing { .. })));
        assert!(!path.exists());

        // Once the vault is empty again, any key will do, and the check value follows it.
        tokens.delete("locA").unwrap();
        let vault = open_vault(tokens.clone(), &checks, Some(&other), dir.path()).unwrap();
        vault.put(&record("locB")).unwrap();
        assert!(matches!(
            state(Some(&key)),
            Err(VaultError::WrongKey { .. })
        ));
        let env = KeyState::Opens(other.clone(), KeySource::Env);
        assert_eq!(state(Some(&other)).unwrap(), env);
    }

    #[tokio::test]
    async fn without_a_check_value_the_first_records_decide() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), std::time::Duration::from_secs(60)).unwrap();
        let (tokens, checks) = trees(&store);
        let key = TokenKey([4; 32]);
        // A vault written before the check value: damaged records first, then good ones.
        for i in 0..RECORDS_TRIED - 1 {
            tokens.put(&format!("a{i:02}"), b"damaged").unwrap();
        }
        Vault::new(tokens.clone(), &key)
            .put(&record("locA"))
            .unwrap();

        let wrong = open_vault(
            tokens.clone(),
            &checks,
            Some(&TokenKey([5; 32])),
            dir.path(),
        );
        assert!(matches!(wrong, Err(VaultError::WrongKey { .. })));
        assert!(
            checks.get(CHECK_ENTRY).unwrap().is_none(),
            "nothing written"
        );
        open_vault(tokens.clone(), &checks, Some(&key), dir.path()).unwrap();
        assert!(checks.get(CHECK_ENTRY).unwrap().is_some());

        // A damaged check value: the records decide again, and the value is written anew.
        checks.put(CHECK_ENTRY, b"flipped").unwrap();
        open_vault(tokens.clone(), &checks, Some(&key), dir.path()).unwrap();
        let value = checks.get(CHECK_ENTRY).unwrap().unwrap();
        let vault = Vault::new(tokens, &key);
        assert_eq!(vault.open_bytes(CHECK_VALUE, value).unwrap(), CHECK_VALUE);
    }
}
