//! Accepting, deduplicating and reading the outbox, from memory and from disk, across restarts.

use std::time::Duration;

use crate::store::outbox::RECENT;
use crate::store::tests::kit::*;
use crate::store::{AcceptOutcome, Store};

#[tokio::test]
async fn accept_dedup_publish_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        let a = store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert_eq!(a, accepted(1, 1));
        let dup = store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert_eq!(dup, AcceptOutcome::Duplicate);
        store
            .accept("b".into(), vec![entry("b", "2"), entry("b", "3")])
            .await
            .unwrap();
        assert_eq!(store.depth(), 3);
        let pending = store.pending_after(0, 10).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(store.mark_published(1, 1).unwrap());
        // Confirmed behind an unconfirmed seq: the watermark stays, the entry is no longer
        // pending.
        assert!(!store.mark_published(3, 3).unwrap());
        assert_eq!(store.depth(), 1);
        assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [2]);
    }
    // Give the old writer thread a moment to drop the database lock.
    std::thread::sleep(Duration::from_millis(200));
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    assert_eq!(store.depth(), 1);
    assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [2]);
    // Once 2 is confirmed, the watermark takes 3 along.
    assert!(store.mark_published(2, 2).unwrap());
    assert_eq!(store.published_through(), 3);
    assert_eq!(store.depth(), 0);
    let c = store
        .accept("c".into(), vec![entry("c", "4")])
        .await
        .unwrap();
    assert_eq!(c, accepted(4, 1));
}

#[tokio::test]
async fn the_outbox_reads_across_buckets_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Duration::from_millis(40)).unwrap();
        for i in 0..3 {
            let k = format!("k{i}");
            store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        assert_eq!(store.bucket_count(), 3);
        let seqs: Vec<u64> = store
            .pending_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(store.pending_after(1, 1).unwrap()[0].seq, 2);
        assert!(store.mark_published(1, 1).unwrap());
        assert_eq!(store.oldest_pending().unwrap().map(|p| p.0), Some(2));
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // A crash while a bucket was made or removed leaves a directory that is not one.
    let half_made = dir.path().join(format!("events/{:020}", 9));
    let half_gone = dir.path().join(format!("events/{:020}.gone", 1));
    std::fs::create_dir_all(half_made.join("blobs")).unwrap();
    std::fs::create_dir_all(&half_gone).unwrap();
    let store = Store::open(dir.path(), Duration::from_millis(40)).unwrap();
    assert!(!half_made.exists() && !half_gone.exists());
    assert_eq!(store.depth(), 2);
    let seqs: Vec<u64> = store
        .pending_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(store.archived(0, u64::MAX, |_| true).unwrap().len(), 3);
    assert!(store.has_dedup_key("k0").unwrap());
}

#[tokio::test]
async fn the_outbox_reads_the_same_from_memory_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    let total = RECENT as u64 + 100;
    for i in 0..total {
        let k = format!("k{i}");
        store.accept(k.clone(), vec![entry(&k, &k)]).await.unwrap();
    }
    let seqs = |from: u64, limit: usize| -> Vec<u64> {
        let entries = store.pending_after(from, limit).unwrap();
        for e in &entries {
            // The entry is the one committed with that seq, whichever way it was read.
            assert_eq!(e.body, format!("k{}", e.seq - 1).into_bytes());
        }
        entries.iter().map(|e| e.seq).collect()
    };
    // The oldest entries are no longer in memory: read from disk, across into memory.
    assert_eq!(seqs(0, usize::MAX), (1..=total).collect::<Vec<_>>());
    // Recent ones come from memory.
    assert_eq!(
        seqs(total - 10, 5),
        (total - 9..=total - 5).collect::<Vec<_>>()
    );
    assert!(seqs(total, 5).is_empty());
    // Confirmed entries are not handed out again, wherever they are.
    assert!(store.mark_published(1, total - 3).unwrap());
    assert_eq!(seqs(0, 10), vec![total - 2, total - 1, total]);
}

#[tokio::test]
async fn seqs_never_go_back_below_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert!(store.mark_published(1, 1).unwrap());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(store.sweep().await.unwrap().events, 1);
        assert_eq!(store.archived_count(), 0);
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // The archive is empty, but seq 1 was published: a new event must not reuse it.
    let store = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
    assert_eq!(store.depth(), 0);
    let b = store
        .accept("b".into(), vec![entry("b", "2")])
        .await
        .unwrap();
    assert_eq!(b, accepted(2, 1));
    assert_eq!(store.depth(), 1);
    assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 2);
}
