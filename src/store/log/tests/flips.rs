//! A flipped bit in each header field, in a body, in a CRC, in a seal, in a segment header:
//! exactly the frame it hit is reported, everything after it is still served.

use super::*;

/// Seqs 1; 2..4; 5..6; 7; 8.
const COUNTS: [u32; 5] = [1, 3, 2, 1, 1];

fn flip(path: &Path, bit: u64) {
    let mut b = bytes(path);
    b[(bit / 8) as usize] ^= 1 << (bit % 8);
    write(path, &b);
}

/// Every bit of the frame's header, and one bit of each byte of its body.
fn bits_of(frame: &Placed) -> impl Iterator<Item = (u64, bool)> + '_ {
    let header = (0..HEADER * 8).map(move |b| (frame.offset * 8 + b, true));
    let body = (frame.offset + HEADER..frame.end).map(|at| (at * 8 + at % 8, false));
    header.chain(body)
}

fn all_but(frames: &[Placed], hit: &Placed) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter(|f| f.kind == Kind::Events && f.first != hit.first)
        .map(|f| (f.first, f.last))
        .collect()
}

#[test]
fn a_flipped_bit_in_a_frame_of_the_active_segment_loses_exactly_that_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    let applied = append(&log, &COUNTS);
    drop(log);
    let frames = frames_in(&segment_file(dir.path(), 1));
    let known = Known {
        floor: 1,
        applied: applied.last().copied(),
    };
    let hit = frames[2];
    for (bit, in_header) in bits_of(&hit) {
        let copy = copy(dir.path());
        flip(&segment_file(copy.path(), 1), bit);
        let (log, rec) = open(copy.path(), options(), known);
        let cause = if in_header {
            Cause::Unreadable
        } else {
            Cause::BadBody
        };
        let lost = vec![loss(1, 5, 6, cause)];
        assert_eq!(rec.lost, lost, "bit {bit}");
        assert_eq!(served(&log), (all_but(&frames, &hit), lost), "bit {bit}");
        assert_eq!(log.next_seq(), 9);
    }
}

#[test]
fn a_flipped_bit_in_the_last_frame_is_lost_if_acknowledged_and_a_torn_tail_if_not() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    let applied = append(&log, &COUNTS);
    drop(log);
    let frames = frames_in(&segment_file(dir.path(), 1));
    let hit = frames[4];
    for (bit, in_header) in bits_of(&hit).step_by(7) {
        for checkpoint in [applied[3], applied[4]] {
            let copy = copy(dir.path());
            flip(&segment_file(copy.path(), 1), bit);
            let known = Known {
                floor: 1,
                applied: Some(checkpoint),
            };
            let (log, rec) = open(copy.path(), options(), known);
            let lost = match (in_header, checkpoint.seq) {
                // Nothing whole after it: a torn write, cut, lost only if acknowledged.
                (true, 8) => vec![loss(1, 8, 8, Cause::Truncated)],
                (true, _) => vec![],
                // A whole frame under a header that checks: its body was damaged.
                (false, _) => vec![loss(1, 8, 8, Cause::BadBody)],
            };
            assert_eq!(rec.lost, lost, "bit {bit}");
            assert_eq!(rec.cut_bytes > 0, in_header, "bit {bit}");
            assert_eq!(served(&log).0, all_but(&frames, &hit), "bit {bit}");
            // A torn frame's seq was never handed to anyone: it is taken again.
            let torn = in_header && checkpoint.seq == 7;
            assert_eq!(log.next_seq(), if torn { 8 } else { 9 });
        }
    }
}

/// Four segments or more, each of several frames; the checkpoint at the last frame.
pub fn segmented() -> (tempfile::TempDir, Applied, Vec<SegmentInfo>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small(900), Known::default());
    let applied = append(
        &log,
        &[1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1],
    );
    let segments = log.segments();
    assert!(segments.len() >= 4, "{segments:?}");
    assert!(segments.iter().all(|s| s.last_seq > s.first_seq));
    (dir, *applied.last().unwrap(), segments)
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_reported_by_reads_and_by_a_full_scan() {
    let (dir, last, segments) = segmented();
    let first = segments[0].first_seq;
    let frames = frames_in(&segment_file(dir.path(), first));
    let events: Vec<(u64, u64)> = frames_in_all(dir.path(), &segments);
    let hit = frames[1];
    assert_eq!(hit.kind, Kind::Events);
    for (bit, in_header) in bits_of(&hit).step_by(3) {
        let copy = copy(dir.path());
        flip(&segment_file(copy.path(), first), bit);
        let cause = if in_header {
            Cause::Unreadable
        } else {
            Cause::BadBody
        };
        let lost = vec![loss(first, hit.first, hit.last, cause)];
        // A start reads a sealed segment before the checkpoint at its ends only.
        let known = Known {
            floor: 1,
            applied: Some(last),
        };
        let (log, rec) = open(copy.path(), small(900), known);
        assert_eq!(rec.lost, [], "bit {bit}");
        let rest: Vec<(u64, u64)> = events
            .iter()
            .copied()
            .filter(|s| s.0 != hit.first)
            .collect();
        assert_eq!(served(&log), (rest, lost.clone()), "bit {bit}");
        assert_eq!(log.verify().unwrap(), lost, "bit {bit}");
        drop(log);
        // Without a checkpoint every segment is read whole.
        let (_, rec) = open(copy.path(), small(900), Known::default());
        assert_eq!(rec.lost, lost, "bit {bit}");
    }
}

fn frames_in_all(dir: &Path, segments: &[SegmentInfo]) -> Vec<(u64, u64)> {
    segments
        .iter()
        .flat_map(|s| frames_in(&segment_file(dir, s.first_seq)))
        .filter(|f| f.kind == Kind::Events)
        .map(|f| (f.first, f.last))
        .collect()
}

#[test]
fn a_flipped_bit_in_a_seal_loses_nothing() {
    let (dir, last, segments) = segmented();
    let first = segments[1].first_seq;
    let path = segment_file(dir.path(), first);
    let seal = *frames_in(&path).last().unwrap();
    assert_eq!(seal.kind, Kind::Seal);
    let events = frames_in_all(dir.path(), &segments);
    for (bit, _) in bits_of(&seal) {
        let copy = copy(dir.path());
        flip(&segment_file(copy.path(), first), bit);
        let known = Known {
            floor: 1,
            applied: Some(last),
        };
        let (log, rec) = open(copy.path(), small(900), known);
        assert_eq!((rec.lost, rec.cut_bytes), (vec![], 0), "bit {bit}");
        assert_eq!(served(&log), (events.clone(), vec![]), "bit {bit}");
        assert_eq!(log.next_seq(), last.seq + 1);
    }
}

#[test]
fn a_flipped_bit_in_a_segment_header_is_reported_and_its_frames_still_served() {
    let (dir, last, segments) = segmented();
    let events = frames_in_all(dir.path(), &segments);
    let newest = segments.last().unwrap().first_seq;
    for first in [segments[0].first_seq, newest] {
        for bit in 0..format::SEGMENT_HEADER_LEN as u64 * 8 {
            let copy = copy(dir.path());
            flip(&segment_file(copy.path(), first), bit);
            let known = Known {
                floor: 1,
                applied: Some(last),
            };
            let (log, rec) = open(copy.path(), small(900), known);
            assert_eq!(rec.bad_headers, [first], "segment {first} bit {bit}");
            assert_eq!((rec.lost, rec.cut_bytes), (vec![], 0), "bit {bit}");
            assert_eq!(served(&log), (events.clone(), vec![]), "bit {bit}");
        }
    }
}
