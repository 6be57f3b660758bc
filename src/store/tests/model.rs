//! The store against a simple model, over random runs of accepts, confirms, clean restarts and
//! crashes (the checkpoint frozen, so that sled keeps only what it had flushed, while the log
//! has every acknowledged frame): every answer and every read agrees with the model.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;

use crate::store::tests::kit::*;
use crate::store::{AcceptOutcome, Store};

#[derive(Debug, Clone)]
enum Op {
    Accept(u8),
    /// Confirms the oldest `n` pending events.
    Confirm(u8),
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..24).prop_map(Op::Accept),
        2 => (1u8..6).prop_map(Op::Confirm),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

#[derive(Default)]
struct Model {
    /// Key → its seq.
    keys: HashMap<String, u64>,
    last_seq: u64,
    published: u64,
}

fn open(dir: &Path) -> Store {
    Store::open(dir, Duration::from_secs(3600)).unwrap()
}

fn stop(store: Store, crash: bool) {
    if crash {
        store.checkpoint.frozen.store(true, Ordering::Relaxed);
    }
    drop(store);
    // sled lets go of its file locks a moment after the last handle is dropped.
    std::thread::sleep(Duration::from_millis(150));
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Accept(k) => {
                let key = format!("k{k}");
                let got = store.accept(key.clone(), vec![entry(&key, &key)]).await;
                let want = match model.keys.get(&key) {
                    Some(_) => AcceptOutcome::Duplicate,
                    None => {
                        model.last_seq += 1;
                        model.keys.insert(key.clone(), model.last_seq);
                        accepted(model.last_seq, 1)
                    }
                };
                assert_eq!(got.unwrap(), want, "{key}");
            }
            Op::Confirm(n) => {
                let through = (model.published + u64::from(n)).min(model.last_seq);
                if through > model.published {
                    store.mark_published(model.published + 1, through).unwrap();
                    model.published = through;
                }
            }
            Op::Restart | Op::Crash => {
                stop(store, matches!(op, Op::Crash));
                store = open(dir.path());
                assert!(store.damage().is_empty(), "{}", store.damage());
            }
        }
        let pending = store.pending_after(0, 1000).unwrap();
        let want: Vec<u64> = (model.published + 1..=model.last_seq).collect();
        assert_eq!(seqs(&pending), want);
        for e in &pending {
            assert_eq!(model.keys[&e.dedup_key], e.seq);
            assert_eq!(e.body, e.dedup_key.as_bytes());
        }
        assert_eq!(store.depth(), model.last_seq - model.published);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_store_agrees_with_a_model_through_restarts_and_crashes(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
