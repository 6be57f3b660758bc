//! One bucket on its own: summaries read instead of databases, damage found at its ends, the
//! reopen that waits for sled's lock.

use super::*;
use crate::store::layout::{dedup_db_key, key, Encoded};
use crate::store::outbox::entries_from;

/// A bucket at seq 10 whose database holds three events accepted at 100, 200, 300 ms and the
/// dedup keys "a" and "b".
pub(in crate::store) fn bucket_with_events(events_dir: &Path) -> PathBuf {
    let bucket = Bucket::create(events_dir, 10, 1, &Arc::default()).unwrap();
    bucket
        .with_db(|db| {
            for (seq, ms) in [(10, 100), (11, 200), (12, 300)] {
                let mut e = crate::store::tests::kit::entry("a", "{}");
                e.seq = seq;
                e.accepted_ms = ms;
                db.insert(key(EVENT, seq), e.encode())?;
            }
            for k in ["a", "b"] {
                db.insert(dedup_db_key(k), &5u64.to_be_bytes())?;
            }
            Ok(db.flush()?)
        })
        .unwrap();
    let dir = bucket.dir.clone();
    drop(bucket);
    // Written before the event log: its events are in its database.
    std::fs::write(dir.join(READY), b"").unwrap();
    // sled lets go of its file lock a moment after the last handle is dropped.
    std::thread::sleep(Duration::from_millis(200));
    dir
}

/// A summary of the bucket at seq 10 that is not what its database holds.
pub(in crate::store) fn not_the_database() -> Summary {
    Summary {
        last_seq: 51,
        opened_ms: 7,
        newest_ms: 8,
        hashes: vec![1, 2, 3],
    }
}

#[test]
fn a_start_takes_a_bucket_from_its_summary_without_opening_its_database() {
    let events = tempfile::tempdir().unwrap();
    let dir = bucket_with_events(events.path());
    // A summary that differs from the database shows which of the two a start read.
    let summary = not_the_database();
    summary.write(&dir, 10).unwrap();
    let opened = Bucket::open_all(events.path(), 999, &Arc::default())
        .unwrap()
        .0;
    let (bucket, hashes) = &opened[0];
    assert_eq!(
        (bucket.last_seq(), bucket.opened_ms(), bucket.newest_ms()),
        (51, 7, 8)
    );
    assert_eq!(hashes, &vec![1, 2, 3]);
    assert!(!bucket.is_open());
    // Its database opens when it is read.
    let read = bucket
        .with_db(|db| Ok(entries_from(db, 0).count()))
        .unwrap();
    assert_eq!(read, 3);
}

fn lost_seqs(ledger: &Ledger) -> Vec<(u64, u64)> {
    ledger
        .damage(0)
        .lost
        .iter()
        .map(|l| (l.first, l.last))
        .collect()
}

#[test]
fn a_database_holding_less_than_its_summary_is_reported_when_it_opens() {
    let events = tempfile::tempdir().unwrap();
    let dir = bucket_with_events(events.path());
    // The summary claims seqs 10..51; the database holds 10..12.
    not_the_database().write(&dir, 10).unwrap();
    let ledger = Arc::new(Ledger::default());
    let opened = Bucket::open_all(events.path(), 999, &ledger).unwrap().0;
    let bucket = &opened[0].0;
    assert_eq!(lost_seqs(&ledger), []);
    bucket.with_db(|_| Ok(())).unwrap();
    assert_eq!(lost_seqs(&ledger), [(13, 51)]);
    // The next start reads the database instead, and no seal writes the summary again.
    assert!(!dir.join(SUMMARY).exists());
    bucket.close();
    bucket.seal(999).unwrap();
    assert!(!dir.join(SUMMARY).exists());
    bucket.with_db(|_| Ok(())).unwrap();
    assert_eq!(lost_seqs(&ledger), [(13, 51)]);
}

#[test]
fn a_database_without_its_first_seqs_is_reported_at_start_and_gets_no_summary() {
    let events = tempfile::tempdir().unwrap();
    let dir = bucket_with_events(events.path());
    {
        let db = config(&dir).open().unwrap();
        db.remove(key(EVENT, 10)).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let ledger = Arc::new(Ledger::default());
    let opened = Bucket::open_all(events.path(), 999, &ledger).unwrap().0;
    assert_eq!(opened[0].0.last_seq(), 12);
    assert_eq!(lost_seqs(&ledger), [(10, 10)]);
    assert!(!dir.join(SUMMARY).exists());
}

#[test]
fn an_empty_bucket_gets_no_summary() {
    let events = tempfile::tempdir().unwrap();
    let bucket = Bucket::create(events.path(), 10, 1, &Arc::default()).unwrap();
    bucket.seal(5).unwrap();
    assert!(!bucket.dir.join(SUMMARY).exists());
    drop(bucket);
    let opened = Bucket::open_all(events.path(), 5, &Arc::default())
        .unwrap()
        .0;
    assert!(opened[0].0.is_empty());
    assert!(!opened[0].0.dir.join(SUMMARY).exists());
}

#[test]
fn a_reopen_waits_for_a_lock_still_held_by_a_closing_database() {
    let dir = tempfile::tempdir().unwrap();
    let closing = config(dir.path()).open().unwrap();
    closing.insert(b"k", b"v").unwrap();
    closing.flush().unwrap();
    let release = std::thread::spawn(move || {
        // Well inside the second a reopen waits, however slow the machine.
        std::thread::sleep(Duration::from_millis(20));
        drop(closing);
    });
    let db = reopen(dir.path()).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    release.join().unwrap();
}

#[test]
fn a_reopen_gives_up_on_a_lock_that_stays_held() {
    let dir = tempfile::tempdir().unwrap();
    let _held = config(dir.path()).open().unwrap();
    let e = reopen(dir.path()).unwrap_err();
    assert!(e.to_string().contains("could not acquire lock"), "{e}");
}

#[test]
fn an_open_that_does_not_finish_in_time_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    // No open finishes within no time at all: the caller gets an error, not a wait.
    let e = open_within(dir.path(), Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("did not finish in time"), "{e}");
    // The late open lets go of the database: the next one takes it.
    std::thread::sleep(Duration::from_millis(500));
    open_within(dir.path(), OPEN_DEADLINE).unwrap();
}
