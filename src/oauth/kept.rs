//! What the service keeps in memory of the vault: the records it last read or wrote (the relay
//! reads tokens from them without touching the disk), and an index of every tenant by the time
//! its next refresh falls due, with counts by state. The index is built from the vault once at
//! start and updated on every store and delete, so that finding due tenants and counting them
//! costs nothing per idle tenant.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::vault::{TenantState, TokenRecord};

/// Records as last written or read by this process. `writes` counts every write, so that a
/// read that raced a write does not put back what the write replaced.
#[derive(Debug, Default)]
struct Cache {
    records: HashMap<String, TokenRecord>,
    writes: u64,
}

/// Every tenant's state and due time, and the due tenants in due order.
#[derive(Debug, Default)]
struct Index {
    tenants: HashMap<String, (TenantState, Option<i64>)>,
    by_due: BTreeSet<(i64, String)>,
    counts: [u64; TenantState::ALL.len()],
}

fn slot(state: TenantState) -> usize {
    TenantState::ALL
        .iter()
        .position(|s| *s == state)
        .expect("listed")
}

impl Index {
    fn remove(&mut self, tenant: &str) {
        if let Some((state, due)) = self.tenants.remove(tenant) {
            self.counts[slot(state)] -= 1;
            if let Some(due) = due {
                self.by_due.remove(&(due, tenant.to_string()));
            }
        }
    }

    fn set(&mut self, tenant: &str, state: TenantState, due: Option<i64>) {
        self.remove(tenant);
        self.counts[slot(state)] += 1;
        if let Some(due) = due {
            self.by_due.insert((due, tenant.to_string()));
        }
        self.tenants.insert(tenant.to_string(), (state, due));
    }
}

/// Unix seconds from which the refresher should look at `record`; `None`: never (private
/// tokens, tenants that need a new install). An active token is due `refresh_before` ahead of
/// its expiry, or at its retry time after a failure, whichever is later.
pub(super) fn due_at(record: &TokenRecord, refresh_before: i64) -> Option<i64> {
    match record.state {
        TenantState::Active => record
            .expires_at
            .map(|e| e.saturating_sub(refresh_before).max(record.retry_at)),
        TenantState::Inactive => Some(record.retry_at),
        TenantState::NeedsReauth | TenantState::Private => None,
    }
}

#[derive(Debug, Default)]
pub(super) struct Kept {
    refresh_before: i64,
    cache: Mutex<Cache>,
    index: Mutex<Index>,
}

impl Kept {
    pub(super) fn new(refresh_before: i64) -> Kept {
        Kept {
            refresh_before,
            ..Kept::default()
        }
    }

    /// Replaces the index with what the vault holds; a record that cannot be decrypted counts
    /// as `needs_reauth`, as the views show it.
    pub(super) fn index_all(&self, records: Vec<Result<TokenRecord, String>>) {
        let mut index = Index::default();
        for record in records {
            match record {
                Ok(r) => index.set(&r.tenant, r.state, due_at(&r, self.refresh_before)),
                Err(tenant) => index.set(&tenant, TenantState::NeedsReauth, None),
            }
        }
        *self.index.lock().expect("index") = index;
    }

    pub(super) fn cached(&self, tenant: &str) -> Option<TokenRecord> {
        let cache = self.cache.lock().expect("cache");
        cache.records.get(tenant).cloned()
    }

    /// The write count a read starts at; pass it to [`Kept::read`].
    pub(super) fn writes(&self) -> u64 {
        self.cache.lock().expect("cache").writes
    }

    /// Keeps what a read that started at `seen` found, unless a write came in between.
    pub(super) fn read<'a>(&self, seen: u64, records: impl Iterator<Item = &'a TokenRecord>) {
        let mut cache = self.cache.lock().expect("cache");
        if cache.writes == seen {
            for record in records {
                cache.records.insert(record.tenant.clone(), record.clone());
            }
        }
    }

    /// After a write of `tenant`'s record: `Some` when it was stored, `None` when the write
    /// failed (the next read goes to the disk, and the index keeps the old due time, so that
    /// the tenant is looked at again).
    pub(super) fn stored(&self, tenant: &str, record: Option<&TokenRecord>) {
        let mut cache = self.cache.lock().expect("cache");
        cache.writes += 1;
        match record {
            Some(r) => {
                cache.records.insert(tenant.to_string(), r.clone());
                let due = due_at(r, self.refresh_before);
                self.index.lock().expect("index").set(tenant, r.state, due);
            }
            None => drop(cache.records.remove(tenant)),
        }
    }

    /// After a delete of `tenant`'s record.
    pub(super) fn deleted(&self, tenant: &str) {
        let mut cache = self.cache.lock().expect("cache");
        cache.writes += 1;
        cache.records.remove(tenant);
        self.index.lock().expect("index").remove(tenant);
    }

    /// The tenant due soonest at `now` for which `skip` is false.
    pub(super) fn next_due(&self, now: i64, skip: impl Fn(&str) -> bool) -> Option<String> {
        let index = self.index.lock().expect("index");
        index
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .find(|(_, tenant)| !skip(tenant))
            .map(|(_, tenant)| tenant.clone())
    }

    /// Tenants by state, in [`TenantState::ALL`] order.
    pub(super) fn state_counts(&self) -> Vec<(&'static str, u64)> {
        let index = self.index.lock().expect("index");
        TenantState::ALL
            .iter()
            .map(|s| (s.as_str(), index.counts[slot(*s)]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::vault::tests::record;
    use super::*;

    fn due(tenant: &str, expires_at: i64) -> TokenRecord {
        TokenRecord {
            expires_at: Some(expires_at),
            ..record(tenant)
        }
    }

    #[test]
    fn due_tenants_come_soonest_first_and_follow_every_write() {
        let kept = Kept::new(100);
        kept.index_all(vec![
            Ok(due("late", 1_000)),
            Ok(due("soon", 500)),
            Err("broken".into()),
        ]);
        // Due from expiry minus refresh_before: soon at 400, late at 900.
        assert_eq!(kept.next_due(399, |_| false), None);
        assert_eq!(kept.next_due(950, |_| false).as_deref(), Some("soon"));
        assert_eq!(kept.next_due(950, |t| t == "soon").as_deref(), Some("late"));
        // A refreshed pair moves the tenant out of the way; a failed write leaves it due.
        kept.stored("soon", Some(&due("soon", 5_000)));
        kept.stored("late", None);
        assert_eq!(kept.next_due(950, |_| false).as_deref(), Some("late"));
        // A failure's retry time postpones an active tenant.
        let retry = TokenRecord {
            retry_at: 2_000,
            ..due("late", 1_000)
        };
        kept.stored("late", Some(&retry));
        assert_eq!(kept.next_due(1_999, |_| false), None);
        let counts = kept.state_counts();
        assert_eq!(counts[0], ("active", 2));
        assert_eq!(counts[2], ("needs_reauth", 1));
        kept.deleted("late");
        let private = TokenRecord {
            state: TenantState::Private,
            expires_at: None,
            ..record("pit")
        };
        kept.stored("pit", Some(&private));
        let counts = kept.state_counts();
        assert_eq!((counts[0].1, counts[3].1), (1, 1));
        // Neither the private token nor the unreadable record is ever due.
        assert_eq!(kept.next_due(i64::MAX, |_| false).as_deref(), Some("soon"));
    }
}
