//! What the store's tests share: entries and array records to store, stores with events, and
//! ways to look inside a store or damage it behind its back.

use std::path::Path;
use std::time::Duration;

use crate::entry::{ArrayRecord, Entry};
use crate::schema::Outcome;
use crate::verify::Scheme;

use crate::store::layout::dedup_db_key;
use crate::store::log::tests::frames_in;
use crate::store::outbox::{Chunk, Window};
use crate::store::summary::Summary;
use crate::store::{AcceptOutcome, Store, StoreError};

impl Store {
    /// Number of archived entries (events within retention).
    pub(in crate::store) fn archived_count(&self) -> u64 {
        self.buckets.all().iter().map(|b| b.len()).sum()
    }

    pub(in crate::store) fn bucket_count(&self) -> usize {
        let (open, closed) = self.bucket_states();
        open + closed
    }

    /// The archived original events of `[since_ms, until_ms]` that `keep` keeps, read as a
    /// replay reads them, three entries at a time.
    pub(in crate::store) fn archived(
        &self,
        since_ms: u64,
        until_ms: u64,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let window = Window { since_ms, until_ms };
        let chunk = Chunk {
            entries: 3,
            bytes: usize::MAX,
        };
        let (mut out, mut from) = (Vec::new(), 0);
        loop {
            let read = self
                .outbox
                .archived(&window, u64::MAX, from, chunk, &mut keep)?;
            out.extend(read.entries);
            match read.next {
                Some(next) => from = next,
                None => return Ok(out),
            }
        }
    }

    pub(in crate::store) fn open_bucket_count(&self) -> usize {
        self.bucket_states().0
    }

    /// True when a dedup key is on record (whether or not it has expired). Opens every bucket.
    pub(in crate::store) fn has_dedup_key(&self, dedup_key: &str) -> Result<bool, StoreError> {
        let k = dedup_db_key(dedup_key);
        for bucket in self.buckets.all() {
            if bucket.with_db(|db| Ok(db.contains_key(&k)?))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The last seq the summary in `dir` claims, if it has a whole one.
pub(in crate::store) fn summary_last_seq(dir: &Path, first_seq: u64) -> Option<u64> {
    Summary::load(dir, first_seq).map(|s| s.last_seq)
}

/// What `accept` answers for a delivery stored at `first_seq` with `count` entries.
pub(in crate::store) fn accepted(first_seq: u64, count: usize) -> AcceptOutcome {
    AcceptOutcome::Accepted { first_seq, count }
}

pub(in crate::store) fn entry(key: &str, body: &str) -> Entry {
    Entry {
        seq: 0,
        accepted_ms: 0,
        replay: false,
        redrive: false,
        trace: None,
        scheme: Scheme::Ed25519,
        compact: false,
        schema: Outcome::Unknown,
        dedup_key: key.into(),
        index: None,
        event_type: "ContactCreate".into(),
        tenant: "loc".into(),
        location_id: Some("loc".into()),
        company_id: None,
        webhook_id: Some(key.into()),
        signature: "sig".into(),
        body: body.as_bytes().to_vec(),
    }
}

/// The body of the array record below: five elements, one a real event, spaced out.
pub(in crate::store) const ARRAY: &str =
    r#"[ 1, {"type":"ContactCreate", "locationId":"L", "webhookId":"w"}, [2,3], "x", {} ]"#;
/// Each element's compact JSON, in order.
pub(in crate::store) const ELEMENTS: [&str; 5] = [
    "1",
    r#"{"type":"ContactCreate","locationId":"L","webhookId":"w"}"#,
    "[2,3]",
    r#""x""#,
    "{}",
];

pub(in crate::store) fn array(key: &str) -> ArrayRecord {
    let outcomes = [Outcome::Unknown, Outcome::Valid, Outcome::Invalid];
    ArrayRecord {
        first_seq: 0,
        accepted_ms: 0,
        replay: false,
        scheme: Scheme::RsaSha256,
        compact: true,
        dedup_key: key.into(),
        signature: "sig".into(),
        schema: (0..5).map(|i| outcomes[i % 3]).collect(),
        body: ARRAY.as_bytes().to_vec(),
    }
}

/// Checks that `entries` are the elements of `array("arr")` at seqs `first..`, from `from`.
pub(in crate::store) fn assert_elements(entries: &[Entry], first: u64, from: u64) {
    let skip = (from - first) as usize;
    assert_eq!(entries.len(), 5 - skip);
    for (e, i) in entries.iter().zip(skip..) {
        assert_eq!(e.seq, first + i as u64);
        assert_eq!(e.index, Some(i as u32));
        assert_eq!(e.message_id(), format!("arr/{i}"));
        assert_eq!(e.body, ELEMENTS[i].as_bytes(), "element {i}");
        assert_eq!(e.schema, array("arr").schema[i]);
        assert_eq!(
            (e.scheme, e.compact, e.signature.as_str()),
            (Scheme::RsaSha256, true, "sig")
        );
    }
    if skip <= 1 {
        let e = &entries[1 - skip];
        assert_eq!(e.routing_key(), "ContactCreate.L");
        assert_eq!(e.webhook_id.as_deref(), Some("w"));
        assert_eq!(e.location_id.as_deref(), Some("L"));
    }
    for e in entries.iter().filter(|e| e.index != Some(1)) {
        assert_eq!(e.routing_key(), "unknown.none");
    }
}

/// One event, an array record of five (seqs 2..=6), one event.
pub(in crate::store) async fn with_a_record(store: &Store) {
    store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    let arr = store
        .accept_array("arr".into(), array("arr"))
        .await
        .unwrap();
    assert_eq!(arr, accepted(2, 5));
    // Nothing of it is in memory for the relay.
    assert!(store.outbox.recent.lock().unwrap().is_empty());
    store
        .accept("c".into(), vec![entry("c", "7")])
        .await
        .unwrap();
}

/// A store in `dir` with `n` events (seqs 1..=n, one bucket), stopped cleanly.
pub(in crate::store) async fn stopped_with_events(dir: &Path, n: usize) {
    let store = Store::open(dir, Duration::from_secs(60)).unwrap();
    for i in 0..n {
        let k = format!("k{i}");
        store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
    }
    store.flush().await.unwrap();
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
}

/// The first bucket's log segment.
fn first_segment(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("events/{:020}/segment", 1))
}

/// Flips a byte in the body of the frames of `seqs` in the first bucket's segment, behind the
/// store's back: their headers still check, so they are lost and the frames after them read.
pub(in crate::store) fn damage_events(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
    let path = first_segment(dir);
    let mut bytes = std::fs::read(&path).unwrap();
    for frame in frames_in(&path).iter().filter(|f| seqs.contains(&f.first)) {
        bytes[frame.end as usize - 1] ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Cuts the first bucket's segment where the frame of `seq` begins, behind the store's back.
pub(in crate::store) fn cut_events_from(dir: &Path, seq: u64) {
    let path = first_segment(dir);
    let frame = frames_in(&path)
        .into_iter()
        .find(|f| f.first == seq)
        .unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(frame.offset).unwrap();
}

pub(in crate::store) fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

pub(in crate::store) fn lost_seqs(store: &Store) -> Vec<(u64, u64)> {
    let damage = store.damage();
    damage.lost.iter().map(|l| (l.first, l.last)).collect()
}

pub(in crate::store) fn files_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

pub(in crate::store) fn bucket_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// What the relay reads past the watermark, in these tests.
pub(in crate::store) const RELAY_AHEAD: u64 = 4000;
