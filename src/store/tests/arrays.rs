//! Array records: one record per delivery, read back as one entry per seq.

use std::time::Duration;

use crate::entry::Entry;

use crate::store::outbox::RECENT;
use crate::store::tests::kit::*;
use crate::store::{check, AcceptOutcome, Store};

#[tokio::test]
async fn an_array_record_reads_as_one_entry_per_seq_from_anywhere_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    with_a_record(&store).await;
    assert_eq!(store.depth(), 7);
    let all = store.pending_after(0, 100).unwrap();
    assert_eq!(seqs(&all), (1..=7).collect::<Vec<_>>());
    assert_elements(&all[1..6], 2, 2);
    assert_eq!(all[6].body, b"7");
    // From its middle, and windows that end and begin inside it.
    for from in 2..=6 {
        assert_elements(
            &store
                .pending_after(from - 1, 5 - (from - 2) as usize)
                .unwrap(),
            2,
            from,
        );
    }
    let mut windows = Vec::new();
    let mut after = 0;
    loop {
        let window = store.pending_after(after, 2).unwrap();
        let Some(last) = window.last() else { break };
        after = last.seq;
        windows.push(seqs(&window));
    }
    assert_eq!(windows, [vec![1, 2], vec![3, 4], vec![5, 6], vec![7]]);
    assert!(store.mark_published(1, 3).unwrap());
    assert_eq!(store.oldest_pending().unwrap().map(|p| p.0), Some(4));
    assert_elements(&store.pending_after(0, 3).unwrap(), 2, 4);
    assert!(store.mark_published(4, 6).unwrap());
    assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [7]);
    // A duplicate of the array is answered as one.
    let dup = store
        .accept_array("arr".into(), array("arr"))
        .await
        .unwrap();
    assert_eq!(dup, AcceptOutcome::Duplicate);
}

#[tokio::test]
async fn an_array_record_survives_reopening_and_bounds_its_bucket() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        // The bucket ends in the record.
        store
            .accept_array("arr".into(), array("arr"))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    for start in ["reads the database", "reads the summary"] {
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(store.damage().is_empty(), "{start}");
        assert_eq!(store.depth(), 6, "{start}");
        let all = store.pending_after(0, 100).unwrap();
        assert_eq!(seqs(&all), (1..=6).collect::<Vec<_>>(), "{start}");
        assert_elements(&all[1..], 2, 2);
        assert_elements(&store.pending_after(3, 100).unwrap(), 2, 4);
        drop(store);
        std::thread::sleep(Duration::from_millis(200));
        let summary = dir.path().join(format!("events/{:020}", 1));
        assert_eq!(summary_last_seq(&summary, 1), Some(6), "{start}");
    }
    let report = check(dir.path(), Duration::from_secs(60)).unwrap();
    assert!(report.lost.is_empty());
    // New seqs follow the record's last.
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    let next = store
        .accept("n".into(), vec![entry("n", "8")])
        .await
        .unwrap();
    assert_eq!(next, accepted(7, 1));
}

#[tokio::test]
async fn an_array_record_is_archived_and_replayed_element_by_element() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    with_a_record(&store).await;
    let archived = store
        .archived(0, u64::MAX, |e| e.dedup_key == "arr")
        .unwrap();
    assert_elements(&archived, 2, 2);
    let some: Vec<Entry> = archived
        .into_iter()
        .filter(|e| e.index >= Some(3))
        .collect();
    assert_eq!(store.append(some).await.unwrap(), 2);
    let replayed = store.pending_after(7, 10).unwrap();
    assert_eq!(seqs(&replayed), [8, 9]);
    for (e, i) in replayed.iter().zip(3..) {
        assert!(e.replay);
        assert_eq!(e.message_id(), format!("arr/{i}"));
        assert_eq!(e.body, ELEMENTS[i].as_bytes());
    }
    // Replays are not archived originals.
    assert_eq!(store.archived(0, u64::MAX, |_| true).unwrap().len(), 7);
}

#[tokio::test]
async fn a_large_delivery_keeps_only_its_newest_entries_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    store
        .accept("a".into(), vec![entry("a", "1")])
        .await
        .unwrap();
    let count = 4 * RECENT + 500;
    let many: Vec<Entry> = (0..count).map(|_| entry("big", "2")).collect();
    store.accept("big".into(), many).await.unwrap();
    let capacity = store.outbox.recent.lock().unwrap().capacity();
    assert!(
        capacity <= 2 * RECENT,
        "room for {capacity} entries kept in memory"
    );
    // Reads are whole and in order, from memory or from disk.
    let all = store.pending_after(0, 100_000).unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=count as u64 + 1).collect::<Vec<_>>());
    let tail = store.pending_after(count as u64 - 10, 100_000).unwrap();
    assert_eq!(tail.first().map(|e| e.seq), Some(count as u64 - 9));
    assert_eq!(tail.len(), 11);
}
