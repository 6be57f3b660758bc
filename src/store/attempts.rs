//! What delivery health keeps on disk, in the main database: the answers on the public webhook
//! counted per minute and outcome (`attempts`), and each tenant's last delivery
//! (`last_delivery`). The store knows nothing of what the outcomes mean: a minute is a list of
//! named counts, so that an outcome added later reads back from an older data dir.

use std::ops::Bound;

use super::error::StoreError;

const ATTEMPTS: &str = "attempts";
const LAST_DELIVERY: &str = "last_delivery";
/// In `attempts`, beside the minutes (whose keys are 8 bytes): the first minute ever counted.
const SINCE: &[u8] = b"since";
/// In `attempts`: the acceptance time of the last accepted event (unix ms).
const LAST_ACCEPTED: &[u8] = b"last_accepted";

/// One minute (unix minutes) and its counts by outcome name.
pub type MinuteCounts = (u64, Vec<(String, u64)>);

/// A tenant's last delivery: unix ms and the event type.
pub type LastDelivery = (u64, String);

/// What a start reads back.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The minutes from the one asked for on, in order; a record that does not decode is left
    /// out (a count lost, never a start refused).
    pub minutes: Vec<MinuteCounts>,
    /// The first minute ever counted in this data dir.
    pub since: Option<u64>,
    pub last_accepted_ms: Option<u64>,
    /// Every tenant's last delivery, in tenant order.
    pub tenants: Vec<(String, LastDelivery)>,
}

/// What one save writes.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    /// Minutes to write whole (replacing what a minute held).
    pub minutes: &'a [MinuteCounts],
    pub tenants: &'a [(String, LastDelivery)],
    pub last_accepted_ms: Option<u64>,
    /// Written only when none is recorded yet.
    pub since: u64,
    /// Minutes before this one are removed.
    pub keep_from: u64,
}

/// Handle on the two trees; cheap to clone.
#[derive(Clone)]
pub struct Attempts {
    db: sled::Db,
    minutes: sled::Tree,
    tenants: sled::Tree,
}

impl Attempts {
    pub(super) fn open(db: &sled::Db) -> Result<Attempts, StoreError> {
        Ok(Attempts {
            db: db.clone(),
            minutes: db.open_tree(ATTEMPTS)?,
            tenants: db.open_tree(LAST_DELIVERY)?,
        })
    }

    /// Everything recorded, the minutes from `from` on.
    pub fn read(&self, from: u64) -> Result<Recorded, StoreError> {
        let mut recorded = Recorded {
            since: self.minutes.get(SINCE)?.and_then(|v| u64_of(&v)),
            last_accepted_ms: self.minutes.get(LAST_ACCEPTED)?.and_then(|v| u64_of(&v)),
            ..Recorded::default()
        };
        let start = Bound::Included(from.to_be_bytes().to_vec());
        for item in self.minutes.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (key, value) = item?;
            let (Some(minute), Some(counts)) = (u64_of(&key), decode_counts(&value)) else {
                continue;
            };
            recorded.minutes.push((minute, counts));
        }
        for item in self.tenants.iter() {
            let (key, value) = item?;
            if let Some(last) = decode_delivery(&value) {
                recorded
                    .tenants
                    .push((String::from_utf8_lossy(&key).into_owned(), last));
            }
        }
        Ok(recorded)
    }

    /// Writes `changes` in one batch per tree and flushes: what was counted survives a crash
    /// from here on.
    pub fn save(&self, changes: &Changes<'_>) -> Result<(), StoreError> {
        let mut minutes = sled::Batch::default();
        for (minute, counts) in changes.minutes {
            minutes.insert(&minute.to_be_bytes(), encode_counts(counts));
        }
        if let Some(ms) = changes.last_accepted_ms {
            minutes.insert(LAST_ACCEPTED, &ms.to_be_bytes());
        }
        if self.minutes.get(SINCE)?.is_none() {
            minutes.insert(SINCE, &changes.since.to_be_bytes());
        }
        let end = Bound::Excluded(changes.keep_from.to_be_bytes().to_vec());
        for item in self.minutes.range::<Vec<u8>, _>((Bound::Unbounded, end)) {
            let (key, _) = item?;
            if key.len() == 8 {
                minutes.remove(key);
            }
        }
        self.minutes.apply_batch(minutes)?;
        let mut tenants = sled::Batch::default();
        for (tenant, (ms, event_type)) in changes.tenants {
            let mut value = ms.to_be_bytes().to_vec();
            value.extend_from_slice(event_type.as_bytes());
            tenants.insert(tenant.as_bytes(), value);
        }
        self.tenants.apply_batch(tenants)?;
        self.db.flush()?;
        Ok(())
    }
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Each count as its name's length (one byte), the name, and the count (u64 BE).
fn encode_counts(counts: &[(String, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(counts.len() * 24);
    for (name, n) in counts {
        let name = &name.as_bytes()[..name.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

fn decode_counts(mut bytes: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut counts = Vec::new();
    while let Some((&len, rest)) = bytes.split_first() {
        let len = usize::from(len);
        let name = std::str::from_utf8(rest.get(..len)?).ok()?;
        let n = u64_of(rest.get(len..len + 8)?)?;
        counts.push((name.to_string(), n));
        bytes = &rest[len + 8..];
    }
    Some(counts)
}

fn decode_delivery(bytes: &[u8]) -> Option<LastDelivery> {
    let ms = u64_of(bytes.get(..8)?)?;
    Some((ms, String::from_utf8_lossy(&bytes[8..]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn minutes_and_tenants_read_back_and_old_minutes_leave() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let attempts = Attempts::open(&db).unwrap();
        let minutes = [
            (100, counts(&[("accepted", 3), ("too_large", 1)])),
            (200, counts(&[("accepted", 7)])),
        ];
        let tenants = [("loc-1".to_string(), (5_000, "ContactCreate".to_string()))];
        attempts
            .save(&Changes {
                minutes: &minutes,
                tenants: &tenants,
                last_accepted_ms: Some(12_000),
                since: 100,
                keep_from: 0,
            })
            .unwrap();
        // A later save replaces a minute whole, keeps the first `since`, drops old minutes.
        let later = [(200, counts(&[("accepted", 9), ("overloaded", 2)]))];
        attempts
            .save(&Changes {
                minutes: &later,
                since: 150,
                keep_from: 150,
                ..Changes::default()
            })
            .unwrap();
        drop(attempts);
        drop(db);
        // sled lets go of its file lock a moment after the last handle is dropped.
        std::thread::sleep(std::time::Duration::from_millis(300));

        let db = sled::open(dir.path()).unwrap();
        let read = Attempts::open(&db).unwrap().read(0).unwrap();
        assert_eq!(read.minutes, later);
        assert_eq!(read.since, Some(100));
        assert_eq!(read.last_accepted_ms, Some(12_000));
        assert_eq!(read.tenants, tenants);
        let from_201 = Attempts::open(&db).unwrap().read(201).unwrap();
        assert!(from_201.minutes.is_empty());
    }

    #[test]
    fn a_record_cut_short_is_left_out() {
        let encoded = encode_counts(&counts(&[("accepted", 1), ("duplicate", 2)]));
        assert_eq!(
            decode_counts(&encoded),
            Some(counts(&[("accepted", 1), ("duplicate", 2)]))
        );
        assert_eq!(decode_counts(&encoded[..encoded.len() - 1]), None);
        assert_eq!(decode_counts(&[]), Some(Vec::new()));
    }
}
