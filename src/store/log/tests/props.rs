//! Appends, checkpoints, seals, retention, crashes with a torn tail, and reads, against a
//! model that is a plain list of frames: a crash never loses an fsynced frame, what it left
//! past the last fsync is cut, and reads serve exactly what was appended.

use proptest::prelude::*;

use super::format::FrameHeader;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// One batch: (seq count, record length, acceptance time) of each frame.
    Append(Vec<(u32, u16, u64)>),
    /// The caller records the last append's checkpoint.
    Checkpoint,
    Seal,
    DropOldest,
    /// The process dies with bytes past the last fsync, then the log is opened again.
    Crash(Tail),
    ReadFrom(u64, usize),
    Window(u64, u64, usize),
}

#[derive(Debug, Clone)]
enum Tail {
    Nothing,
    Zeros(usize),
    Random(Vec<u8>),
    /// This many bytes of the frame the next append would write.
    Torn(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let frame = (1u32..4, 0u16..300, 0u64..10_000);
    let tail = prop_oneof![
        Just(Tail::Nothing),
        (1usize..200).prop_map(Tail::Zeros),
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(Tail::Random),
        (1usize..300).prop_map(Tail::Torn),
    ];
    prop_oneof![
        6 => proptest::collection::vec(frame, 1..4).prop_map(Op::Append),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Seal),
        1 => Just(Op::DropOldest),
        2 => tail.prop_map(Op::Crash),
        2 => (0u64..60, 1usize..8).prop_map(|(s, n)| Op::ReadFrom(s, n)),
        1 => (0u64..10_000, 0u64..10_000, 1usize..8).prop_map(|(a, b, n)| Op::Window(a, b, n)),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    first: u64,
    count: u32,
    ms: u64,
    key: Vec<u8>,
    record: Vec<u8>,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }

    fn of(f: &Stored) -> Model {
        Model {
            first: f.first_seq,
            count: f.seq_count,
            ms: f.accepted_ms,
            key: f.dedup_key().to_vec(),
            record: f.record().to_vec(),
        }
    }
}

struct Run {
    dir: tempfile::TempDir,
    log: Option<EventLog>,
    frames: Vec<Model>,
    floor: u64,
    last_append: Option<Applied>,
    checkpoint: Option<Applied>,
}

#[allow(non_snake_case)]
fn OPTIONS() -> Options {
    Options {
        segment_bytes: 700,
        index_every: 128,
        ..options()
    }
}

impl Run {
    fn log(&self) -> &EventLog {
        self.log.as_ref().expect("open")
    }

    fn known(&self) -> Known {
        Known {
            floor: self.floor,
            applied: self.checkpoint,
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(batch) => {
                let mut next = self.log().next_seq();
                let mut made = Vec::new();
                for (count, len, ms) in batch {
                    let record = (0..len).map(|i| (next as u8) ^ (i as u8)).collect();
                    made.push(Model {
                        first: next,
                        count,
                        ms,
                        key: key(next),
                        record,
                    });
                    next += u64::from(count);
                }
                let frames: Vec<Frame<'_>> = made
                    .iter()
                    .map(|m| Frame {
                        first_seq: m.first,
                        seq_count: m.count,
                        accepted_ms: m.ms,
                        dedup_key: &m.key,
                        record: &m.record,
                    })
                    .collect();
                self.last_append = Some(self.log().append(&frames).expect("append"));
                self.frames.extend(made);
            }
            Op::Checkpoint => self.checkpoint = self.last_append,
            Op::Seal => self.log().seal(0).expect("seal"),
            Op::DropOldest => {
                if let Some(gone) = self.log().drop_oldest().expect("drop") {
                    prop_assert_eq!(Some(gone.first_seq), self.frames.first().map(|f| f.first));
                    self.frames.retain(|f| f.first > gone.last_seq);
                    self.floor = gone.last_seq + 1;
                }
            }
            Op::Crash(tail) => self.crash(tail)?,
            Op::ReadFrom(seq, max) => {
                let read = self.log().read_from(seq, max).expect("read");
                prop_assert_eq!(read.lost, vec![]);
                let want: Vec<Model> = self
                    .frames
                    .iter()
                    .filter(|f| f.last() >= seq)
                    .take(max)
                    .cloned()
                    .collect();
                prop_assert_eq!(read.frames.iter().map(Model::of).collect::<Vec<_>>(), want);
            }
            Op::Window(from, to, max) => {
                let read = self.log().read_window(from, to, 0, max).expect("read");
                let want: Vec<Model> = self
                    .frames
                    .iter()
                    .filter(|f| (from..to).contains(&f.ms))
                    .take(max)
                    .cloned()
                    .collect();
                prop_assert_eq!(read.frames.iter().map(Model::of).collect::<Vec<_>>(), want);
            }
        }
        Ok(())
    }

    fn crash(&mut self, tail: Tail) -> Result<(), TestCaseError> {
        let log = self.log.take().expect("open");
        let newest = log.segments().last().cloned();
        let next = log.next_seq();
        drop(log);
        let mut written = 0;
        if let Some(newest) = newest.filter(|s| !s.sealed) {
            let bytes = match tail {
                Tail::Nothing => Vec::new(),
                Tail::Zeros(n) => vec![0; n],
                Tail::Random(bytes) => bytes,
                Tail::Torn(n) => {
                    let (key, record) = (key(next), vec![7u8; 300]);
                    let mut header = FrameHeader::events(next, 1, 5, &key, &record);
                    let mut frame = header.encode().to_vec();
                    frame.extend_from_slice(&key);
                    frame.extend_from_slice(&record);
                    frame.truncate(n.min(frame.len() - 1));
                    frame
                }
            };
            let path = segment_file(self.dir.path(), newest.first_seq);
            let mut on_disk = super::bytes(&path);
            on_disk.extend_from_slice(&bytes);
            write(&path, &on_disk);
            written = bytes.len() as u64;
        }
        let (log, rec) = open(self.dir.path(), OPTIONS(), self.known());
        prop_assert_eq!(rec.lost, vec![]);
        prop_assert_eq!(rec.bad_headers, Vec::<u64>::new());
        prop_assert_eq!(rec.cut_bytes, written);
        let after = self.checkpoint.map_or(0, |a| a.seq);
        let unapplied: Vec<(u64, Vec<u8>)> = rec
            .unapplied
            .into_iter()
            .map(|w: Written| (w.first_seq, w.dedup_key))
            .collect();
        let want: Vec<(u64, Vec<u8>)> = self
            .frames
            .iter()
            .filter(|f| f.last() > after)
            .map(|f| (f.first, f.key.clone()))
            .collect();
        prop_assert_eq!(unapplied, want);
        prop_assert_eq!(log.next_seq(), next);
        self.log = Some(log);
        self.everything()
    }

    fn everything(&self) -> Result<(), TestCaseError> {
        let read = self.log().read_from(0, usize::MAX).expect("read");
        prop_assert_eq!(read.lost, vec![]);
        prop_assert_eq!(
            read.frames.iter().map(Model::of).collect::<Vec<_>>(),
            self.frames.clone()
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn the_log_serves_every_fsynced_frame_across_crashes(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path(), OPTIONS(), Known::default());
        let mut run = Run {
            dir,
            log: Some(log),
            frames: Vec::new(),
            floor: 1,
            last_append: None,
            checkpoint: None,
        };
        for op in ops {
            run.apply(op)?;
        }
        run.crash(Tail::Nothing)?;
    }
}
