//! What the store finds lost, and what it does about it: the log's damage is found at start,
//! reported exactly, and the relay stops before it until an operator accepts it.

use std::time::Duration;

use crate::store::tests::kit::*;
use crate::store::{accept_loss, check, Store};

#[tokio::test]
async fn damaged_frames_are_reported_at_start_and_the_outbox_stops_before_them() {
    let dir = tempfile::tempdir().unwrap();
    stopped_with_events(dir.path(), 10).await;
    damage_events(dir.path(), 5..=6);
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    // A frame each.
    assert_eq!(lost_seqs(&store), [(5, 5), (6, 6)]);
    assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [1, 2, 3, 4]);
    assert!(store.mark_published(1, 4).unwrap());
    assert!(store.pending_after(0, 100).unwrap().is_empty());
    assert_eq!(store.depth(), 6);
    // Not confirmed, never passed.
    assert!(!store.mark_published(7, 10).unwrap());
    assert_eq!(store.published_through(), 4);
    // `store check` names exactly them.
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    let report = check(dir.path(), Duration::from_secs(60)).unwrap();
    let lost: Vec<(u64, u64)> = report.lost.iter().map(|l| (l.first, l.last)).collect();
    assert_eq!(lost, [(5, 6)]);
}

#[tokio::test]
async fn a_segment_cut_below_the_checkpoint_is_reported_even_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    stopped_with_events(dir.path(), 10).await;
    // This start writes the bucket's summary; the next one reads only that and the log.
    drop(Store::open(dir.path(), Duration::from_secs(60)).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    cut_events_from(dir.path(), 8);
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    assert_eq!(lost_seqs(&store), [(8, 10)]);
    assert_eq!(
        seqs(&store.pending_after(0, 100).unwrap()),
        [1, 2, 3, 4, 5, 6, 7]
    );
}

#[tokio::test]
async fn the_watermark_moves_over_an_accepted_hole_when_the_relay_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    stopped_with_events(dir.path(), 10).await;
    damage_events(dir.path(), 5..=6);
    let given_up = accept_loss(dir.path(), Duration::from_secs(60)).unwrap();
    assert_eq!(given_up.given_up.len(), 1);
    // It read the main database: sled lets go of its lock a moment after.
    std::thread::sleep(Duration::from_millis(200));
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    assert!(store.damage().is_empty());
    // Two windows, the second one past the hole, confirmed in order.
    assert_eq!(seqs(&store.pending_after(0, 4).unwrap()), [1, 2, 3, 4]);
    assert_eq!(seqs(&store.pending_after(4, 4).unwrap()), [7, 8, 9, 10]);
    assert!(store.mark_published(1, 4).unwrap());
    assert_eq!(store.published_through(), 6);
    assert!(store.mark_published(7, 10).unwrap());
    assert_eq!(store.depth(), 0);
    assert!(store.damage().is_empty());
}

#[tokio::test]
async fn a_newest_bucket_cut_short_after_a_clean_stop_is_reported_and_its_seqs_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    stopped_with_events(dir.path(), 10).await;
    cut_events_from(dir.path(), 8);
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    assert_eq!(lost_seqs(&store), [(8, 10)]);
    let new = store.accept("new".into(), vec![entry("new", "1")]).await;
    assert_eq!(new.unwrap(), accepted(11, 1));
    // `store check` names them too, so that they can be accepted.
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    let report = check(dir.path(), Duration::from_secs(60)).unwrap();
    let lost: Vec<(u64, u64)> = report.lost.iter().map(|l| (l.first, l.last)).collect();
    assert_eq!(lost, [(8, 10)]);
    let given_up = accept_loss(dir.path(), Duration::from_secs(60)).unwrap();
    assert_eq!(given_up.given_up.len(), 1);
    std::thread::sleep(Duration::from_millis(200));
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    assert!(store.damage().is_empty());
}
