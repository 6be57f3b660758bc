//! Lookups through the handle: the rows of a sealed segment written beside it, read back after
//! a restart, and built again from the segment when their file is missing or damaged; key
//! lookups through the dedup records; array elements each with their own row.

use std::time::Duration;

use crate::entry::Entry;
use crate::store::tests::kit::*;
use crate::store::{Query, Store};

fn event(key: &str, tenant: &str) -> Entry {
    let mut e = entry(key, "{}");
    e.tenant = tenant.into();
    e
}

fn tenant_keys(store: &Store, tenant: &str) -> Vec<String> {
    let query = Query {
        tenant: Some(tenant.into()),
        limit: 100,
        ..Query::default()
    };
    let page = store.lookup().page(&query).unwrap();
    page.events
        .into_iter()
        .map(|f| f.entry.unwrap().dedup_key)
        .collect()
}

#[tokio::test]
async fn a_sealed_segments_rows_are_read_back_or_built_again_from_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("events/00000000000000000001/index");
    // Buckets of 300 ms: a pause seals the first one.
    let retention = Duration::from_millis(1200);
    {
        let store = Store::open(dir.path(), retention).unwrap();
        for (k, t) in [("a", "t1"), ("b", "t2"), ("c", "t1")] {
            store.accept(k.into(), vec![event(k, t)]).await.unwrap();
        }
        store
            .accept_array("arr".into(), array("arr"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        store
            .accept("d".into(), vec![event("d", "t1")])
            .await
            .unwrap();
        assert!(index.exists(), "sealing wrote the rows");
        // The array's second element is an event of tenant L.
        assert_eq!(tenant_keys(&store, "L"), ["arr"]);
        assert_eq!(tenant_keys(&store, "t1"), ["d", "c", "a"]);
        store.flush().await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let written = std::fs::read(&index).unwrap();
    for damage in ["missing", "flipped"] {
        match damage {
            "missing" => std::fs::remove_file(&index).unwrap(),
            _ => {
                let mut bytes = written.clone();
                let last = bytes.len() - 10;
                bytes[last] ^= 1;
                std::fs::write(&index, bytes).unwrap();
            }
        }
        let store = Store::open(dir.path(), retention).unwrap();
        assert_eq!(tenant_keys(&store, "t1"), ["d", "c", "a"], "{damage}");
        assert_eq!(tenant_keys(&store, "t2"), ["b"], "{damage}");
        // Built again and written as it was.
        assert_eq!(std::fs::read(&index).unwrap(), written, "{damage}");
        drop(store);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_key_finds_every_seq_of_its_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    store
        .accept("x".into(), vec![event("x", "t")])
        .await
        .unwrap();
    store
        .accept_array("arr".into(), array("arr"))
        .await
        .unwrap();
    let query = Query {
        key: Some("arr".into()),
        limit: 100,
        ascending: true,
        ..Query::default()
    };
    let page = store.lookup().page(&query).unwrap();
    let seqs: Vec<u64> = page.events.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
    assert!(page.next.is_none());
    let one = store.lookup().one(4).unwrap().unwrap();
    assert_eq!(one.entry.unwrap().index, Some(2));
    assert!(store.lookup().one(99).unwrap().is_none());
}
