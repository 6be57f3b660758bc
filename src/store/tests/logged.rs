//! The store over its event log: the dedup keys of frames past the checkpoint recorded again at
//! start, a data dir written before the log read and drained, segments leaving with their
//! buckets, and a log that stopped after a failed fsync.

use std::path::Path;
use std::time::Duration;

use crate::store::bucket::tests::bucket_with_events;
use crate::store::layout::{dedup_db_key, APPLIED, MAIN_DB, WATERMARK};
use crate::store::tests::kit::*;
use crate::store::{AcceptOutcome, Store};

const RETENTION: Duration = Duration::from_secs(60);

async fn accept_keys(store: &Store, keys: std::ops::Range<usize>) {
    for i in keys {
        let k = format!("k{i}");
        let outcome = store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
        assert!(matches!(outcome, AcceptOutcome::Accepted { .. }), "{k}");
    }
}

/// Sets a `meta` value of the stopped store in `dir`.
fn set_meta(dir: &Path, key: &[u8], value: &[u8]) {
    let db = sled::open(dir.join(MAIN_DB)).unwrap();
    db.open_tree("meta").unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
    drop(db);
    std::thread::sleep(Duration::from_millis(200));
}

#[tokio::test]
async fn keys_written_after_the_checkpoint_are_recorded_again_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let early = {
        let store = Store::open(dir.path(), RETENTION).unwrap();
        accept_keys(&store, 0..5).await;
        store.flush().await.unwrap();
        let early = store.meta.get(APPLIED).unwrap().unwrap().to_vec();
        accept_keys(&store, 5..10).await;
        store.flush().await.unwrap();
        early
    };
    std::thread::sleep(Duration::from_millis(200));
    // As after a crash between two checkpoints: the last keys never reached sled's disk.
    {
        let db = sled::open(dir.path().join(format!("events/{:020}", 1))).unwrap();
        for i in 5..10 {
            db.remove(dedup_db_key(&format!("k{i}"))).unwrap();
        }
        db.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    set_meta(dir.path(), APPLIED, &early);
    let store = Store::open(dir.path(), RETENTION).unwrap();
    assert!(store.damage().is_empty());
    for k in ["k0", "k5", "k9"] {
        let again = store.accept(k.into(), vec![entry(k, "1")]).await.unwrap();
        assert_eq!(again, AcceptOutcome::Duplicate, "{k}");
    }
    let new = store.accept("new".into(), vec![entry("new", "1")]).await;
    assert_eq!(new.unwrap(), accepted(11, 1));
    assert_eq!(
        seqs(&store.pending_after(0, 100).unwrap()),
        (1..=11).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_data_dir_written_before_the_log_is_read_then_drained_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    // What the previous version left: a bucket at seq 10 holding seqs 10..=12 and keys "a" and
    // "b" in its database, the watermark below it.
    drop(Store::open(dir.path(), RETENTION).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_dir_all(dir.path().join("events")).unwrap();
    let bucket = bucket_with_events(&dir.path().join("events"));
    {
        // "a" accepted just now, so that it is still within the retention.
        let db = sled::open(&bucket).unwrap();
        let now = crate::entry::now_ms();
        db.insert(dedup_db_key("a"), &now.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    set_meta(dir.path(), WATERMARK, &9u64.to_be_bytes());

    let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
    assert!(store.damage().is_empty(), "{}", store.damage());
    assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [10, 11, 12]);
    let dup = store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    assert_eq!(dup, AcceptOutcome::Duplicate);
    // New events go to the log, after the old bucket's seqs.
    let new = store.accept("n".into(), vec![entry("n", "2")]).await;
    assert_eq!(new.unwrap(), accepted(13, 1));
    assert_eq!(
        seqs(&store.pending_after(0, 100).unwrap()),
        [10, 11, 12, 13]
    );
    assert_eq!(seqs(&store.pending_after(11, 100).unwrap()), [12, 13]);
    assert!(dir
        .path()
        .join(format!("events/{:020}/segment", 13))
        .exists());
    store.flush().await.unwrap();
    drop(store);
    std::thread::sleep(Duration::from_millis(200));

    // Again after a restart, and `store check` agrees.
    let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
    assert!(store.damage().is_empty(), "{}", store.damage());
    assert_eq!(
        seqs(&store.pending_after(0, 100).unwrap()),
        [10, 11, 12, 13]
    );
    assert!(store.mark_published(10, 13).unwrap());
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    let report = crate::store::check(dir.path(), RETENTION).unwrap();
    assert!(report.lost.is_empty(), "{report}");
    assert_eq!(report.seqs, Some((10, 13)));

    // Its events were accepted at 100..300 ms, long past: the sweep removes it once
    // confirmed, and the log's bucket stays.
    let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
    let swept = store.sweep().await.unwrap();
    assert_eq!(swept.buckets, 1);
    assert_eq!(swept.events, 3);
    assert!(!dir.path().join(format!("events/{:020}", 10)).exists());
    let new = store.accept("m".into(), vec![entry("m", "3")]).await;
    assert_eq!(new.unwrap(), accepted(14, 1));
    assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [14]);
}

#[tokio::test]
async fn expired_buckets_leave_with_their_segments_and_the_log_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let short = Duration::from_secs(2);
    {
        let store = Store::open(dir.path(), short).unwrap();
        accept_keys(&store, 0..3).await;
        assert!(store.mark_published(1, 3).unwrap());
        // A quarter of the retention later, the next commit starts a new bucket.
        tokio::time::sleep(Duration::from_millis(600)).await;
        accept_keys(&store, 3..6).await;
        assert_eq!(store.bucket_count(), 2);
        // The first is past the retention and confirmed: it goes, its segment with it.
        tokio::time::sleep(short).await;
        let swept = store.sweep().await.unwrap();
        assert_eq!((swept.buckets, swept.events), (1, 3));
        assert!(!dir.path().join(format!("events/{:020}", 1)).exists());
        assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [4, 5, 6]);
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let store = Store::open(dir.path(), short).unwrap();
    assert!(store.damage().is_empty(), "{}", store.damage());
    assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [4, 5, 6]);
}

#[tokio::test]
async fn a_bucket_database_removed_or_cut_short_lets_no_redelivery_through() {
    for damage in ["removed", "cut short"] {
        let dir = tempfile::tempdir().unwrap();
        stopped_with_events(dir.path(), 10).await;
        let bucket = dir.path().join(format!("events/{:020}", 1));
        for item in std::fs::read_dir(&bucket).unwrap() {
            let path = item.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            match (damage, name.as_str()) {
                (_, "segment" | "ready") => {}
                ("removed", _) if path.is_dir() => std::fs::remove_dir_all(&path).unwrap(),
                ("removed", _) => std::fs::remove_file(&path).unwrap(),
                (_, "db") => {
                    let len = std::fs::metadata(&path).unwrap().len();
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(len / 2).unwrap();
                }
                _ => {}
            }
        }
        let store = Store::open(dir.path(), RETENTION).unwrap();
        // The events are all in the segment.
        assert!(store.damage().is_empty(), "{damage}: {}", store.damage());
        assert_eq!(store.depth(), 10, "{damage}");
        for i in 0..10 {
            let k = format!("k{i}");
            let again = store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
            assert_eq!(again, AcceptOutcome::Duplicate, "{damage}: {k}");
        }
        let new = store.accept("new".into(), vec![entry("new", "1")]).await;
        assert_eq!(new.unwrap(), accepted(11, 1), "{damage}");
    }
}
