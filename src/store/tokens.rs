//! Raw storage for the token vault: opaque (already encrypted) values keyed by tenant, plus the
//! INSTALL events still waiting for a company token. Encryption lives in `oauth::vault`.

use std::ops::Bound;

use super::error::StoreError;

/// A sled tree of `key → bytes`, flushed on every change (tokens rotate: losing a new refresh
/// token to a crash would lose the install).
#[derive(Clone)]
pub struct KeyedTree {
    db: sled::Db,
    tree: sled::Tree,
}

impl KeyedTree {
    pub(super) fn open(db: &sled::Db, name: &str) -> Result<KeyedTree, StoreError> {
        Ok(KeyedTree {
            db: db.clone(),
            tree: db.open_tree(name)?,
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Stores and flushes before returning.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes and flushes; true when something was there.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.tree.remove(key.as_bytes())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// Removes without flushing: for an entry whose removal may be lost to a crash without
    /// harm (the next flush, of this tree or another of the database, persists it).
    pub fn forget(&self, key: &str) -> Result<(), StoreError> {
        self.tree.remove(key.as_bytes())?;
        Ok(())
    }

    /// Every entry, in key order.
    pub fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.after(None).collect()
    }

    /// The entries whose key follows `after` (all of them without one), in key order, read
    /// from disk only as the iterator is consumed: a page costs what it takes.
    pub fn after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>), StoreError>> {
        let start = match after {
            Some(key) => Bound::Excluded(key.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.tree
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
    }
}

/// The trees of a stopped gateway's main database, for the offline checks (`hlgate store
/// check`), which open that database once for everything they read.
pub struct OfflineTrees<'a>(pub(super) &'a sled::Db);

impl OfflineTrees<'_> {
    pub fn keyed_tree(&self, name: &str) -> Result<KeyedTree, StoreError> {
        KeyedTree::open(self.0, name)
    }
}
