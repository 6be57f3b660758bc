//! Expiry, rotation and closing idle buckets.

use std::time::Duration;

use crate::store::tests::kit::*;
use crate::store::writer::BUCKET_BYTES;
use crate::store::{AcceptOutcome, Store, SweepReport};

#[tokio::test]
async fn sweep_removes_expired_confirmed_buckets_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    // Buckets of 300 ms; the margins below are at least 150 ms.
    let store = Store::open(dir.path(), Duration::from_millis(1200)).unwrap();
    let body = "x".repeat(40_000);
    // All at once, so that they share a commit or a few, well within one bucket's span.
    let accepts = (0..50).map(|i| {
        let k = format!("a{i}");
        store.accept(k.clone(), vec![entry(&k, &body)])
    });
    for outcome in futures_util::future::join_all(accepts).await {
        assert!(matches!(outcome.unwrap(), AcceptOutcome::Accepted { .. }));
    }
    let full = files_under(&dir.path().join("events"));
    assert_eq!(store.bucket_count(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    store
        .accept("b".into(), vec![entry("b", "2")])
        .await
        .unwrap();
    assert_eq!(store.bucket_count(), 2);
    assert!(store.mark_published(1, 50).unwrap());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The first bucket is past the retention and confirmed; "b"'s is neither.
    let report = store.sweep().await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            buckets: 1,
            events: 50
        }
    );
    assert!(!store.has_dedup_key("a0").unwrap());
    assert!(store.has_dedup_key("b").unwrap());
    assert_eq!(store.archived_count(), 1);
    // Its directory is gone from the disk.
    assert_eq!(bucket_dirs(dir.path()), vec![format!("{:020}", 51)]);
    assert!(files_under(&dir.path().join("events")) < full);
    tokio::time::sleep(Duration::from_millis(450)).await;
    // "b" is past the retention too, but unpublished: it stays, however old.
    assert_eq!(store.sweep().await.unwrap(), SweepReport::default());
    assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 51);
    // Once confirmed, its bucket goes although it still takes events; a new one takes over.
    assert!(store.mark_published(51, 51).unwrap());
    assert_eq!(store.sweep().await.unwrap().events, 1);
    assert_eq!(store.archived_count(), 0);
    // An expired key is accepted again, with the next seq.
    let again = store
        .accept("a0".into(), vec![entry("a0", "1")])
        .await
        .unwrap();
    assert_eq!(again, accepted(52, 1));
}

#[tokio::test]
async fn a_key_past_the_retention_is_new_again_before_its_bucket_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_millis(300)).unwrap();
    store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Unpublished, so still on disk, but its dedup key has expired.
    assert!(store.has_dedup_key("a").unwrap());
    let again = store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    assert!(matches!(
        again,
        AcceptOutcome::Accepted { first_seq: 2, .. }
    ));
    // The newest record of the key decides.
    let dup = store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    assert_eq!(dup, AcceptOutcome::Duplicate);
}

#[tokio::test]
async fn full_buckets_rotate_and_done_ones_close_yet_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let megabyte = "m".repeat(1024 * 1024);
    // Each entry is a little over a megabyte: this many fill a bucket.
    let per_bucket = (BUCKET_BYTES / (1024 * 1024)) as usize;
    {
        let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
        for i in 0..per_bucket {
            let k = format!("k{i}");
            store
                .accept(k.clone(), vec![entry(&k, &megabyte)])
                .await
                .unwrap();
        }
        assert_eq!(store.bucket_count(), 1);
        // Full: the next commit starts a new bucket, long before the span is over.
        store
            .accept("x".into(), vec![entry("x", "1")])
            .await
            .unwrap();
        assert_eq!(store.bucket_count(), 2);
        assert_eq!(store.open_bucket_count(), 2);
        // Not confirmed yet: it stays open for the relay.
        assert_eq!(store.close_idle(RELAY_AHEAD), 0);
        let last = per_bucket as u64;
        let summary = dir.path().join(format!("events/{:020}/keys", 1));
        assert!(!summary.exists());
        assert!(store.mark_published(1, last).unwrap());
        assert_eq!(store.close_idle(RELAY_AHEAD), 1);
        assert_eq!(store.open_bucket_count(), 1);
        // Closed for good, it has a summary for the next start.
        assert!(summary.exists());
        assert_eq!(store.close_idle(RELAY_AHEAD), 0);
        // Closed, it still knows its keys: dedup opens it to read the key's time.
        let dup = store.accept("k5".into(), vec![entry("k5", "1")]).await;
        assert_eq!(dup.unwrap(), AcceptOutcome::Duplicate);
        assert_eq!(store.open_bucket_count(), 2);
        assert_eq!(store.close_idle(RELAY_AHEAD), 1);
        // And the archive reads it from its log segment, leaving its database closed.
        let archived = store.archived(0, u64::MAX, |_| true).unwrap();
        assert_eq!(archived.len(), per_bucket + 1);
        assert_eq!(archived[3].body, megabyte.as_bytes());
        assert_eq!(store.open_bucket_count(), 1);
        // The current bucket is never closed, confirmed or not.
        assert!(store.mark_published(last + 1, last + 1).unwrap());
        assert_eq!(store.close_idle(RELAY_AHEAD), 0);
        assert_eq!(store.open_bucket_count(), 1);
        // One more event, not published before the stop.
        store
            .accept("y".into(), vec![entry("y", "2")])
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
    // Every bucket from disk starts closed; new events go to a new bucket.
    assert_eq!(store.bucket_count(), 3);
    assert_eq!(store.open_bucket_count(), 1);
    let last = per_bucket as u64 + 2;
    // The relay reads the log: no bucket's database opens for it.
    let pending = store.pending_after(0, 10).unwrap();
    assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [last]);
    assert_eq!(store.open_bucket_count(), 1);
    assert!(store.mark_published(last, last).unwrap());
    assert_eq!(store.close_idle(RELAY_AHEAD), 0);
    for k in ["k0", "k7", "x", "y"] {
        let dup = store.accept(k.into(), vec![entry(k, "1")]).await.unwrap();
        assert_eq!(dup, AcceptOutcome::Duplicate, "{k}");
    }
    let new = store.accept("new".into(), vec![entry("new", "1")]).await;
    assert_eq!(new.unwrap(), accepted(last + 1, 1));
}

#[tokio::test]
async fn buckets_far_ahead_of_the_relay_are_closed_too() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = RELAY_AHEAD as usize + 100;
    // Every start begins a new bucket: one event, then `ahead` events, then one more.
    for (round, count) in [1, ahead, 1].into_iter().enumerate() {
        let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
        let accepts = (0..count).map(|i| {
            let k = format!("r{round}-{i}");
            store.accept(k.clone(), vec![entry(&k, "1")])
        });
        for outcome in futures_util::future::join_all(accepts).await {
            assert!(matches!(outcome.unwrap(), AcceptOutcome::Accepted { .. }));
        }
        store.flush().await.unwrap();
        drop(store);
        std::thread::sleep(Duration::from_millis(200));
    }
    let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
    assert_eq!(store.bucket_count(), 4);
    // Reading the archive opens no database: the events are in the log.
    assert_eq!(
        store.archived(0, u64::MAX, |_| true).unwrap().len(),
        ahead + 2
    );
    assert_eq!(store.open_bucket_count(), 1);
    // Dedup opens the databases that may hold a key; the third, past what the relay reads
    // ahead, is closed again although unpublished.
    for k in ["r0-0", "r1-0", "r2-0"] {
        let dup = store.accept(k.into(), vec![entry(k, "1")]).await.unwrap();
        assert_eq!(dup, AcceptOutcome::Duplicate, "{k}");
    }
    assert_eq!(store.open_bucket_count(), 4);
    assert_eq!(store.close_idle(RELAY_AHEAD), 1);
    assert_eq!(store.open_bucket_count(), 3);
    // Its events are still there for the relay.
    let all = store.pending_after(0, usize::MAX).unwrap();
    assert_eq!(all.len(), ahead + 2);
    // Once the relay has moved on, the buckets behind it close.
    let last = (ahead + 1) as u64;
    assert!(store.mark_published(1, last).unwrap());
    assert_eq!(store.close_idle(RELAY_AHEAD), 2);
    assert_eq!(store.open_bucket_count(), 1);
}
