//! Segments missing or cut short, a checkpoint that no longer matches, a segment of another
//! store, a creation cut short, and retention.

use super::flips::segmented;
use super::*;

fn known(applied: Applied) -> Known {
    Known {
        floor: 1,
        applied: Some(applied),
    }
}

/// The seqs served, as one list.
fn seqs(log: &EventLog) -> Vec<u64> {
    served(log).0.iter().flat_map(|&(a, b)| a..=b).collect()
}

#[test]
fn a_missing_segment_first_middle_or_last_loses_exactly_its_seqs() {
    let (dir, last, segments) = segmented();
    let all: Vec<u64> = (1..=last.seq).collect();
    let n = segments.len();
    for i in [0, n / 2, n - 1] {
        let s = &segments[i];
        let copy = copy(dir.path());
        std::fs::remove_file(segment_file(copy.path(), s.first_seq)).unwrap();
        let (log, rec) = open(copy.path(), small(900), known(last));
        let expected = if i + 1 == n {
            // The newest: the checkpoint says how far it went.
            loss(last.segment, s.first_seq, last.seq, Cause::Truncated)
        } else {
            let owner = if i == 0 {
                segments[1].first_seq
            } else {
                segments[i - 1].first_seq
            };
            loss(owner, s.first_seq, s.last_seq, Cause::Missing)
        };
        assert_eq!(rec.lost, [expected], "segment {i}");
        if i > 0 && i + 1 < n {
            assert_eq!(log.verify().unwrap(), [expected], "segment {i}");
        }
        let left: Vec<u64> = all
            .iter()
            .copied()
            .filter(|q| !(s.first_seq..=s.last_seq).contains(q))
            .collect();
        assert_eq!(seqs(&log), left, "segment {i}");
        // No seq of the lost ones is handed out again.
        assert_eq!(log.next_seq(), last.seq + 1);
        if i > 0 && i + 1 < n {
            // Reads stop short of nothing, and say what they passed over.
            let read = log.read_from(s.first_seq - 1, usize::MAX).unwrap();
            assert_eq!(read.lost, [expected]);
        }
    }
}

#[test]
fn a_missing_bucket_directory_counts_like_a_missing_segment() {
    let (dir, last, segments) = segmented();
    let s = &segments[1];
    let copy = copy(dir.path());
    std::fs::remove_dir_all(segment_file(copy.path(), s.first_seq).parent().unwrap()).unwrap();
    let (_, rec) = open(copy.path(), small(900), known(last));
    let lost = loss(
        segments[0].first_seq,
        s.first_seq,
        s.last_seq,
        Cause::Missing,
    );
    assert_eq!(rec.lost, [lost]);
}

#[test]
fn a_sealed_segment_cut_short_loses_exactly_what_was_cut() {
    let (dir, last, segments) = segmented();
    let s = &segments[1];
    let frames = frames_in(&segment_file(dir.path(), s.first_seq));
    for cut_in in [1, 2] {
        let cut = frames[cut_in].offset + 3;
        let copy = copy(dir.path());
        let path = segment_file(copy.path(), s.first_seq);
        let whole = bytes(&path);
        write(&path, &whole[..cut as usize]);
        let (log, rec) = open(copy.path(), small(900), known(last));
        let first_lost = frames[cut_in].first;
        assert_eq!(
            rec.lost,
            [loss(s.first_seq, first_lost, s.last_seq, Cause::Missing)]
        );
        // A segment that is not the newest is never cut: what is left of it stays.
        assert_eq!(bytes(&path).len() as u64, cut);
        let held: Vec<u64> = seqs(&log);
        assert!(held.contains(&(first_lost - 1)) && !held.contains(&first_lost));
        assert!(held.contains(&(s.last_seq + 1)));
    }
}

#[test]
fn below_the_oldest_segment_only_what_the_caller_still_needs_is_lost() {
    let (dir, last, segments) = segmented();
    let second = segments[1].first_seq;
    let copy = copy(dir.path());
    std::fs::remove_file(segment_file(copy.path(), 1)).unwrap();
    // Retention may have dropped what lies below the floor.
    let (_, rec) = open(
        copy.path(),
        small(900),
        Known {
            floor: second,
            applied: Some(last),
        },
    );
    assert_eq!(rec.lost, []);
    let (_, rec) = open(
        copy.path(),
        small(900),
        Known {
            floor: 3,
            applied: Some(last),
        },
    );
    assert_eq!(rec.lost, [loss(second, 3, second - 1, Cause::Missing)]);
}

#[test]
fn a_checkpoint_whose_frame_was_replaced_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    let applied = append(&log, &[1, 1, 1, 1]);
    drop(log);
    // The last frame goes, and another one is written in its place.
    let path = segment_file(dir.path(), 1);
    let frames = frames_in(&path);
    let whole = bytes(&path);
    write(&path, &whole[..frames[3].offset as usize]);
    let (log, rec) = open(dir.path(), options(), known(applied[2]));
    assert_eq!(rec.lost, []);
    let mut other = Owned::new(4, 1);
    other.key = b"another-4".to_vec();
    let replaced = log.append(&[other.frame()]).unwrap();
    assert_eq!(replaced.end_offset, applied[3].end_offset);
    assert_ne!(replaced.header_crc, applied[3].header_crc);
    drop(log);
    let (_, rec) = open(dir.path(), options(), known(applied[3]));
    assert_eq!(rec.lost, [loss(1, 4, 4, Cause::Replaced)]);
    let (_, rec) = open(dir.path(), options(), known(replaced));
    assert_eq!(rec.lost, []);
}

#[test]
fn a_segment_of_another_store_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    append(&log, &[1]);
    drop(log);
    let other = Options::new(*b"another-store-id");
    let err = EventLog::open(Arc::new(RealFs), dir.path(), other, Known::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LogError::Foreign { segment: 1 }), "{err}");
}

#[test]
fn a_creation_cut_short_is_removed_quietly_unless_the_checkpoint_is_in_it() {
    let (dir, last, _) = segmented();
    // The next segment's directory and a few bytes of its header, never synced.
    let next = last.seq + 1;
    let path = segment_file(dir.path(), next);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write(&path, &[0x48, 0x4c, 0x47]);
    let copy = copy(dir.path());
    let (log, rec) = open(copy.path(), small(900), known(last));
    assert_eq!((rec.lost, rec.bad_headers), (vec![], vec![]));
    assert!(!segment_file(copy.path(), next).exists());
    assert_eq!(log.next_seq(), next);
    append(&log, &[1]);
    assert_eq!(log.next_seq(), next + 1);
    // A checkpoint in it says events were acknowledged there.
    let at = Applied {
        seq: next + 2,
        segment: next,
        end_offset: 500,
        header_crc: 1,
    };
    let (log, rec) = open(dir.path(), small(900), known(at));
    assert_eq!(rec.lost, [loss(next, next, next + 2, Cause::Truncated)]);
    assert_eq!(log.next_seq(), next + 3);
}

#[test]
fn retention_drops_whole_segments_oldest_first_never_the_active_one() {
    let (dir, last, segments) = segmented();
    let (log, _) = open(dir.path(), small(900), known(last));
    for s in &segments[..segments.len() - 1] {
        let dropped = log.drop_oldest().unwrap().expect("dropped");
        assert_eq!(
            (dropped.first_seq, dropped.last_seq),
            (s.first_seq, s.last_seq)
        );
        assert!(!segment_file(dir.path(), s.first_seq)
            .parent()
            .unwrap()
            .exists());
    }
    assert_eq!(log.drop_oldest().unwrap(), None);
    let newest = segments.last().unwrap();
    assert_eq!(
        log.bounds(),
        Bounds {
            first_seq: newest.first_seq,
            last_seq: last.seq,
        }
    );
    let read = log.read_from(1, usize::MAX).unwrap();
    assert_eq!(read.lost, []);
    assert_eq!(read.frames.first().unwrap().first_seq, newest.first_seq);
    drop(log);
    let (_, rec) = open(
        dir.path(),
        small(900),
        Known {
            floor: newest.first_seq,
            applied: Some(last),
        },
    );
    assert_eq!(rec.lost, []);
}

#[test]
fn reads_find_seqs_through_the_index_and_frames_by_time() {
    let (dir, last, _) = segmented();
    let (log, _) = open(dir.path(), small(900), known(last));
    for seq in 1..=last.seq {
        let read = log.read_from(seq, 2).unwrap();
        let first = &read.frames[0];
        assert!(
            first.first_seq <= seq && seq <= first.last_seq(),
            "seq {seq}"
        );
        assert_eq!(
            read.frames.len(),
            if first.last_seq() == last.seq { 1 } else { 2 }
        );
    }
    assert_eq!(log.read_from(last.seq + 1, 10).unwrap(), Read::default());
    // Accepted at 1000 ms times their first seq.
    let read = log.read_window(5_000, 12_000, 0, usize::MAX).unwrap();
    let firsts: Vec<u64> = read.frames.iter().map(|f| f.first_seq).collect();
    let all = seqs_of_frames(&log);
    let want: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| (5..12).contains(s))
        .collect();
    assert_eq!(firsts, want);
    // Paging: after the last seq of the page before, at most so many.
    let after = read.frames[0].last_seq();
    let page = log.read_window(0, u64::MAX, after, 2).unwrap();
    let firsts: Vec<u64> = page.frames.iter().map(|f| f.first_seq).collect();
    let want: Vec<u64> = all.iter().copied().filter(|&s| s > after).take(2).collect();
    assert_eq!(firsts, want);
}

fn seqs_of_frames(log: &EventLog) -> Vec<u64> {
    served(log).0.iter().map(|&(a, _)| a).collect()
}
