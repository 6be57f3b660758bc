//! A torn tail: cut at every offset of the last frames, zeros or garbage after them.

use super::*;

/// Seqs 1; 2..4; 5; 6..7; 8.
const COUNTS: [u32; 5] = [1, 3, 1, 2, 1];

fn written() -> (tempfile::TempDir, Vec<Applied>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(), Known::default());
    let applied = append(&log, &COUNTS);
    (dir, applied)
}

#[test]
fn a_tail_torn_at_any_offset_of_the_last_frames_is_cut_and_the_prefix_stays() {
    let (dir, applied) = written();
    let path = segment_file(dir.path(), 1);
    let whole = bytes(&path);
    let frames = frames_in(&path);
    assert_eq!(frames.len(), COUNTS.len());
    for cut in frames[2].offset..whole.len() as u64 {
        let kept: Vec<Placed> = frames.iter().copied().filter(|f| f.end <= cut).collect();
        let kept_end = kept.last().unwrap().end;
        let kept_last = kept.last().unwrap().last;
        let seqs: Vec<(u64, u64)> = kept.iter().map(|f| (f.first, f.last)).collect();

        // Checkpointed below the cut: what is cut was never acknowledged.
        let copy = copy(dir.path());
        let file = segment_file(copy.path(), 1);
        write(&file, &whole[..cut as usize]);
        let known = Known {
            floor: 1,
            applied: Some(applied[1]),
        };
        let (log, rec) = open(copy.path(), options(), known);
        assert_eq!(rec.lost, [], "cut at {cut}");
        assert_eq!(rec.cut_bytes, cut - kept_end, "cut at {cut}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), kept_end);
        let unapplied: Vec<u64> = rec.unapplied.iter().map(|w| w.first_seq).collect();
        let expected: Vec<u64> = kept.iter().map(|f| f.first).filter(|&s| s > 4).collect();
        assert_eq!(unapplied, expected, "cut at {cut}");
        if let Some(w) = rec.unapplied.first() {
            assert_eq!(w.dedup_key, key(5));
        }
        assert_eq!(served(&log), (seqs.clone(), vec![]), "cut at {cut}");
        assert_eq!(log.next_seq(), kept_last + 1);
        if cut % 16 == 0 {
            // It goes on from where the prefix ends, and opens again without a word.
            append(&log, &[2]);
            drop(log);
            let (log, rec) = open(copy.path(), options(), known);
            assert_eq!((rec.lost, rec.cut_bytes), (vec![], 0));
            let mut more = seqs.clone();
            more.push((kept_last + 1, kept_last + 2));
            assert_eq!(served(&log), (more, vec![]));
        }

        // Checkpointed at the last frame: what is cut below it was acknowledged, and is lost.
        let copy = self::copy(dir.path());
        write(&segment_file(copy.path(), 1), &whole[..cut as usize]);
        let known = Known {
            floor: 1,
            applied: applied.last().copied(),
        };
        let (log, rec) = open(copy.path(), options(), known);
        let lost = if kept_last < 8 {
            vec![loss(1, kept_last + 1, 8, Cause::Truncated)]
        } else {
            vec![]
        };
        assert_eq!(rec.lost, lost, "cut at {cut}");
        assert_eq!(served(&log), (seqs, vec![]), "cut at {cut}");
        // No seq the lost frames held is handed out again.
        assert_eq!(log.next_seq(), 9);
    }
}

#[test]
fn zeros_or_garbage_after_the_last_frame_are_cut_quietly() {
    let (dir, applied) = written();
    let path = segment_file(dir.path(), 1);
    let whole = bytes(&path);
    let frames = frames_in(&path);
    let mut rng = fastrand::Rng::with_seed(23);
    let mut random = |n: usize| (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>();
    // The start of a real frame, its header whole and its body short.
    let torn_frame = whole[frames[1].offset as usize..frames[1].end as usize - 1].to_vec();
    let mut magic_then_garbage = format::FRAME_MAGIC.to_vec();
    magic_then_garbage.extend(random(60));
    let tails = [
        vec![0; 1],
        vec![0; 39],
        vec![0; 40],
        vec![0; 41],
        vec![0; 70_000],
        random(1),
        random(40),
        random(333),
        random(300_000),
        magic_then_garbage,
        torn_frame,
    ];
    for (i, tail) in tails.iter().enumerate() {
        let copy = copy(dir.path());
        let file = segment_file(copy.path(), 1);
        let mut damaged = whole.clone();
        damaged.extend_from_slice(tail);
        write(&file, &damaged);
        let known = Known {
            floor: 1,
            applied: applied.last().copied(),
        };
        let (log, rec) = open(copy.path(), options(), known);
        assert_eq!(rec.lost, [], "tail {i}");
        assert_eq!(rec.cut_bytes, tail.len() as u64, "tail {i}");
        assert_eq!(rec.unapplied, [], "tail {i}");
        assert_eq!(bytes(&file), whole, "tail {i}");
        let seqs = frames.iter().map(|f| (f.first, f.last)).collect();
        assert_eq!(served(&log), (seqs, vec![]), "tail {i}");
        assert_eq!(log.next_seq(), 9);
    }
}

#[test]
fn without_a_checkpoint_every_frame_comes_back_unapplied_with_its_key() {
    let (dir, _) = written();
    let (_, rec) = open(dir.path(), options(), Known::default());
    let got: Vec<(u64, u32, u64, Vec<u8>)> = rec
        .unapplied
        .iter()
        .map(|w| (w.first_seq, w.seq_count, w.accepted_ms, w.dedup_key.clone()))
        .collect();
    let want: Vec<(u64, u32, u64, Vec<u8>)> = [(1, 1), (2, 3), (5, 1), (6, 2), (8, 1)]
        .into_iter()
        .map(|(s, n)| (s, n, 1000 * s, key(s)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        (rec.lost, rec.cut_bytes, rec.bad_headers),
        (vec![], 0, vec![])
    );
}
