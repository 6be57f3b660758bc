//! Replays: the archive read a chunk at a time, queued at the relay's pace, one at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::entry::Entry;
use crate::store::outbox::{Chunk, Window};
use crate::store::tests::kit::*;
use crate::store::{ReplayError, Store};

const ALL: Window = Window {
    since_ms: 0,
    until_ms: u64::MAX,
};

fn chunk(entries: usize, bytes: usize) -> Chunk {
    Chunk { entries, bytes }
}

/// Reads the whole archive as a replay does; returns each chunk's seqs and where it went on.
fn chunks(store: &Store, chunk: Chunk, keep: impl Fn(&Entry) -> bool) -> Vec<(Vec<u64>, u64)> {
    let (mut out, mut from) = (Vec::new(), 0);
    loop {
        let read = store
            .outbox
            .archived(&ALL, u64::MAX, from, chunk, &keep)
            .unwrap();
        let next = read.next.unwrap_or(0);
        out.push((seqs(&read.entries), next));
        match read.next {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[tokio::test]
async fn the_archive_is_read_a_chunk_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
    // Seq 1, an array record of five at 2..=6, seq 7.
    with_a_record(&store).await;

    // Two entries a read: the record is cut between reads, and every seq comes once.
    let read = chunks(&store, chunk(2, usize::MAX), |_| true);
    assert_eq!(
        read,
        [
            (vec![1, 2], 3),
            (vec![3, 4], 5),
            (vec![5, 6], 7),
            (vec![7], 0)
        ]
    );
    let all = store.archived(0, u64::MAX, |_| true).unwrap();
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    assert_elements(&all[1..6], 2, 2);

    // The bound counts what is read, kept or not: a sparse filter gives short reads.
    let read = chunks(&store, chunk(2, usize::MAX), |e| e.index == Some(4));
    assert_eq!(read, [(vec![], 3), (vec![], 5), (vec![6], 7), (vec![], 0)]);

    // The bytes kept bound a read too, one entry at least.
    let read = chunks(&store, chunk(100, 1), |_| true);
    assert_eq!(read.len(), 7);
    assert!(read.iter().all(|(seqs, _)| seqs.len() == 1));

    // Replayed copies are not archived originals, and a read stops at `through`.
    let originals: Vec<Entry> = all.into_iter().filter(|e| e.index >= Some(3)).collect();
    assert_eq!(store.append(originals).await.unwrap(), 2);
    assert_eq!(store.archived(0, u64::MAX, |_| true).unwrap().len(), 7);
    let read = store
        .outbox
        .archived(&ALL, 4, 0, chunk(100, usize::MAX), |_| true)
        .unwrap();
    assert_eq!((seqs(&read.entries), read.next), (vec![1, 2, 3, 4], None));
}

/// A store of `n` events, all confirmed, whose outbox takes `limit` events.
async fn confirmed_events(dir: &std::path::Path, n: usize, limit: u64) -> Store {
    let store = Store::open(dir, Duration::from_secs(60)).unwrap();
    for i in 0..n {
        let k = format!("k{i}");
        let body = format!("{{\"n\":{i}}}");
        store
            .accept(k.clone(), vec![entry(&k, &body)])
            .await
            .unwrap();
    }
    assert!(store.mark_published(1, n as u64).unwrap());
    store.limit_outbox(limit);
    store
}

/// Waits until the outbox holds `depth` events: a replay queues no more while it waits for room.
async fn until_depth(store: &Store, depth: u64) {
    let reached = async {
        while store.depth() != depth {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reached)
        .await
        .unwrap_or_else(|_| panic!("the outbox holds {}, not {depth}", store.depth()));
}

fn spawn_replay(
    store: &Store,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<usize, ReplayError>> {
    let (store, stop) = (store.clone(), stop.clone());
    tokio::spawn(async move {
        store
            .replay_in(ALL, Arc::new(|_: &Entry| true), &stop, chunk(3, usize::MAX))
            .await
    })
}

#[tokio::test]
async fn a_replay_queues_at_the_relays_pace_and_one_runs_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    // Half the outbox, 4 events, is what a replay may fill.
    let store = confirmed_events(dir.path(), 10, 8).await;
    let stop = CancellationToken::new();
    let running = spawn_replay(&store, &stop);
    until_depth(&store, 4).await;

    // A second replay meanwhile is refused, and queues nothing.
    let second = store.replay_in(ALL, Arc::new(|_: &Entry| true), &stop, chunk(3, usize::MAX));
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("a second replay answers at once");
    assert!(matches!(second, Err(ReplayError::Running)), "{second:?}");
    assert_eq!(store.depth(), 4);

    // The relay publishes and confirms; the replay goes on, and ends with the window it began
    // with: the ten originals, in order, marked.
    let mut published = Vec::new();
    while !running.is_finished() || store.depth() > 0 {
        let pending = store.pending_after(0, 100).unwrap();
        if let (Some(first), Some(last)) = (pending.first(), pending.last()) {
            store.mark_published(first.seq, last.seq).unwrap();
        }
        published.extend(pending);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(running.await.unwrap().unwrap(), 10);
    assert_eq!(seqs(&published), (11..=20).collect::<Vec<_>>());
    let originals = store.archived(0, u64::MAX, |_| true).unwrap();
    for (copy, original) in published.iter().zip(&originals) {
        assert!(copy.replay);
        assert_eq!(copy.body, original.body);
        assert_eq!(copy.message_id(), original.message_id());
    }

    // Once it answered, the next one runs.
    let stop_next = CancellationToken::new();
    let next = spawn_replay(&store, &stop_next);
    until_depth(&store, 4).await;
    // A shutdown ends a replay that waits for room, saying how far it got.
    stop_next.cancel();
    let stopped = next.await.unwrap();
    assert!(
        matches!(stopped, Err(ReplayError::Stopped { queued: 4 })),
        "{stopped:?}"
    );
}
