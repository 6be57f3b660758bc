//! A full disk and failed fsyncs, through the fault-injecting file system: a write that
//! fails is cut back and the log goes on once there is room; a failed fsync stops it until it
//! is reopened.

use std::sync::atomic::Ordering;

use super::*;

fn file_len(dir: &Path, first_seq: u64) -> u64 {
    std::fs::metadata(segment_file(dir, first_seq))
        .unwrap()
        .len()
}

/// Three frames of one batch, from `first` on.
fn batch(first: u64) -> Vec<Owned> {
    vec![
        Owned::new(first, 1),
        Owned::new(first + 1, 2),
        Owned::new(first + 3, 1),
    ]
}

fn append_batch(log: &EventLog, batch: &[Owned]) -> Result<Applied, LogError> {
    let frames: Vec<Frame<'_>> = batch.iter().map(Owned::frame).collect();
    log.append(&frames)
}

#[test]
fn a_full_disk_or_a_short_write_cuts_the_batch_back_and_the_log_goes_on_when_there_is_room() {
    for short in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (log, faults) = open_faulty(dir.path(), options());
        append(&log, &[1, 1]);
        let before = file_len(dir.path(), 1);
        if short {
            faults.short_write();
        } else {
            faults.space_left(Some(100));
        }
        let err = append_batch(&log, &batch(3)).unwrap_err();
        assert!(matches!(err, LogError::NoRoom { .. }), "{err}");
        // Nothing of the batch is kept, on disk or in the log.
        assert_eq!(file_len(dir.path(), 1), before);
        assert_eq!(log.next_seq(), 3);
        assert_eq!(served(&log), (vec![(1, 1), (2, 2)], vec![]));
        // Still no room: the same answer, the same length.
        if !short {
            assert!(matches!(
                append_batch(&log, &batch(3)),
                Err(LogError::NoRoom { .. })
            ));
            assert_eq!(file_len(dir.path(), 1), before);
        }
        faults.space_left(None);
        let applied = append_batch(&log, &batch(3)).unwrap();
        assert_eq!(applied.seq, 6);
        let all = vec![(1, 1), (2, 2), (3, 3), (4, 5), (6, 6)];
        assert_eq!(served(&log), (all.clone(), vec![]));
        drop(log);
        let known = Known {
            floor: 1,
            applied: Some(applied),
        };
        let (log, rec) = open(dir.path(), options(), known);
        assert_eq!((rec.lost, rec.cut_bytes), (vec![], 0), "short {short}");
        assert_eq!(served(&log), (all, vec![]));
    }
}

#[test]
fn a_full_disk_while_starting_a_segment_leaves_none_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (log, faults) = open_faulty(dir.path(), options());
    faults.space_left(Some(10));
    assert!(matches!(
        append_batch(&log, &batch(1)),
        Err(LogError::NoRoom { .. })
    ));
    assert!(!segment_file(dir.path(), 1).exists());
    assert_eq!(log.segments(), []);
    faults.space_left(None);
    append_batch(&log, &batch(1)).unwrap();
    assert_eq!(served(&log).0, [(1, 1), (2, 3), (4, 4)]);
}

#[test]
fn a_full_disk_while_sealing_keeps_the_active_segment_and_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (log, faults) = open_faulty(dir.path(), small(600));
    append(&log, &[1, 1, 1]);
    assert_eq!(log.segments().len(), 1);
    let before = file_len(dir.path(), 1);
    // The next batch does not fit: the seal goes first, and finds no room.
    faults.space_left(Some(20));
    let big = batch(4);
    assert!(matches!(
        append_batch(&log, &big),
        Err(LogError::NoRoom { .. })
    ));
    assert_eq!(file_len(dir.path(), 1), before);
    assert_eq!(log.segments().len(), 1);
    faults.space_left(None);
    let applied = append_batch(&log, &big).unwrap();
    let segments = log.segments();
    assert_eq!(segments.len(), 2);
    assert!(segments[0].sealed && segments[1].first_seq == 4);
    drop(log);
    let known = Known {
        floor: 1,
        applied: Some(applied),
    };
    let (log, rec) = open(dir.path(), small(600), known);
    assert_eq!(rec.lost, []);
    assert_eq!(
        served(&log).0,
        [(1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (7, 7)]
    );
}

#[test]
fn a_failed_fsync_stops_the_log_for_good_and_a_reopen_recovers_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (log, faults) = open_faulty(dir.path(), options());
    let applied = append(&log, &[1, 2]);
    faults.fail_sync(true);
    let err = append_batch(&log, &batch(4)).unwrap_err();
    assert!(matches!(err, LogError::Broken { .. }), "{err}");
    // Never retried, even once fsync would work again.
    faults.fail_sync(false);
    let syncs = faults.syncs.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert!(matches!(
            append_batch(&log, &batch(4)),
            Err(LogError::Stopped)
        ));
        assert!(matches!(log.seal(0), Err(LogError::Stopped)));
    }
    assert_eq!(faults.syncs.load(Ordering::SeqCst), syncs);
    drop(log);
    // The batch whose fsync failed was written: a start finds it past the checkpoint and
    // hands it back, since its fate was never known to the caller.
    let known = Known {
        floor: 1,
        applied: Some(applied[1]),
    };
    let (log, rec) = open(dir.path(), options(), known);
    assert_eq!(rec.lost, []);
    let back: Vec<u64> = rec.unapplied.iter().map(|w| w.first_seq).collect();
    assert_eq!(back, [4, 5, 7]);
    assert_eq!(log.next_seq(), 8);
    append(&log, &[1]);
}

#[test]
fn a_failed_fsync_while_starting_a_segment_stops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, faults) = open_faulty(dir.path(), options());
    faults.fail_sync(true);
    let err = append_batch(&log, &batch(1)).unwrap_err();
    assert!(matches!(err, LogError::Broken { .. }), "{err}");
    faults.fail_sync(false);
    assert!(matches!(
        append_batch(&log, &batch(1)),
        Err(LogError::Stopped)
    ));
}

#[test]
fn a_batch_must_continue_the_seqs_and_hold_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    assert!(matches!(log.append(&[]), Err(LogError::Invalid(_))));
    let err = append_batch(&log, &batch(2)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: 1,
            got: 2
        }
    ));
    let mut gap = batch(1);
    gap[2].first = 9;
    assert!(matches!(
        append_batch(&log, &gap),
        Err(LogError::OutOfOrder {
            expected: 4,
            got: 9
        })
    ));
    let none = Owned::new(1, 0);
    assert!(matches!(
        log.append(&[none.frame()]),
        Err(LogError::Invalid(_))
    ));
    assert_eq!(log.next_seq(), 1);
    assert!(!segment_file(dir.path(), 1).exists());
}
