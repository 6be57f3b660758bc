//! The whole store over a file system that fails on demand: a full disk refuses the commit and
//! the store goes on once there is room; a failed fsync stops it until it is opened again,
//! which loses nothing it acknowledged.

use std::sync::Arc;
use std::time::Duration;

use crate::store::log::faults::{Faults, FaultyFs};
use crate::store::log::LogFs;
use crate::store::tests::kit::*;
use crate::store::{AcceptOutcome, Store, StoreError};

const RETENTION: Duration = Duration::from_secs(3600);

fn open_faulty(dir: &std::path::Path) -> (Store, Arc<Faults>) {
    let (fs, faults) = FaultyFs::new();
    let fs: Arc<dyn LogFs> = fs;
    (Store::open_on(dir, RETENTION, fs).unwrap(), faults)
}

async fn accept(store: &Store, key: &str) -> Result<AcceptOutcome, StoreError> {
    store.accept(key.into(), vec![entry(key, key)]).await
}

fn reopen(store: Store, dir: &std::path::Path) -> Store {
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    Store::open(dir, RETENTION).unwrap()
}

#[tokio::test]
async fn a_full_disk_refuses_the_commit_and_the_store_goes_on_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open_faulty(dir.path());
    assert_eq!(accept(&store, "a").await.unwrap(), accepted(1, 1));
    faults.space_left(Some(100));
    let refused = accept(&store, "b").await.unwrap_err();
    assert!(refused.to_string().contains("no room"), "{refused}");
    assert!(!store.writable());
    assert!(!store.stopped());
    assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [1]);
    // Room again: the refused delivery is taken, under the seq it did not keep.
    faults.space_left(None);
    assert_eq!(accept(&store, "b").await.unwrap(), accepted(2, 1));
    assert!(store.writable());
    store.flush().await.unwrap();
    let store = reopen(store, dir.path());
    assert!(store.damage().is_empty(), "{}", store.damage());
    assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [1, 2]);
    assert_eq!(accept(&store, "c").await.unwrap(), accepted(3, 1));
}

#[tokio::test]
async fn a_failed_fsync_stops_the_store_until_it_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults) = open_faulty(dir.path());
    assert_eq!(accept(&store, "a").await.unwrap(), accepted(1, 1));
    faults.fail_sync(true);
    assert!(accept(&store, "b").await.is_err());
    assert!(store.stopped());
    assert!(!store.writable());
    // An fsync is never tried again: the disk working again changes nothing until a start.
    faults.fail_sync(false);
    assert!(accept(&store, "c").await.is_err());
    assert!(store.stopped());

    let store = reopen(store, dir.path());
    assert!(store.damage().is_empty(), "{}", store.damage());
    assert!(!store.stopped());
    // What was acknowledged is there; "b" was written before its fsync failed and may be too
    // (its sender got an error and delivers it again: then it is a duplicate).
    let pending = store.pending_after(0, 10).unwrap();
    let keys: Vec<&str> = pending.iter().map(|e| e.dedup_key.as_str()).collect();
    assert!(keys == ["a"] || keys == ["a", "b"], "{keys:?}");
    let again = accept(&store, "b").await.unwrap();
    let c = accept(&store, "c").await.unwrap();
    match again {
        AcceptOutcome::Duplicate => assert_eq!(c, accepted(3, 1)),
        other => {
            assert_eq!(other, accepted(2, 1));
            assert_eq!(c, accepted(3, 1));
        }
    }
    assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [1, 2, 3]);
}
