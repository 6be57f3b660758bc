//! The log on real files in temp dirs, damaged on purpose: torn tails, flipped bits, missing
//! and cut segments, a full disk and failed fsyncs through the fault-injecting file system,
//! and a property test against a model.

mod damage;
mod faults;
mod flips;
mod props;
mod torn;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::faults::{Faults, FaultyFs};
use super::format::{Kind, FRAME_HEADER_LEN};
use super::loss::{Cause, Written};
use super::read::Stored;
use super::walk::{step, Step, Window};
use super::*;

pub const STORE: [u8; 16] = *b"store-id-for-log";

pub fn options() -> Options {
    Options::new(STORE)
}

/// Segments of about `bytes`, an index point every 512 bytes.
pub fn small(bytes: u64) -> Options {
    Options {
        segment_bytes: bytes,
        index_every: 512,
        ..options()
    }
}

pub fn open(dir: &Path, options: Options, known: Known) -> (EventLog, Recovered) {
    EventLog::open(Arc::new(RealFs), dir, options, known).expect("open the log")
}

pub fn open_faulty(dir: &Path, options: Options) -> (EventLog, Arc<Faults>) {
    let (fs, faults) = FaultyFs::new();
    let fs: Arc<dyn LogFs> = fs;
    let (log, _) = EventLog::open(fs, dir, options, Known::default()).expect("open the log");
    (log, faults)
}

pub fn key(seq: u64) -> Vec<u8> {
    format!("webhook-{seq}").into_bytes()
}

/// A record whose bytes and length depend on its seq.
pub fn record(seq: u64) -> Vec<u8> {
    let len = 20 + (seq * 37 % 200) as usize;
    (0..len)
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect()
}

/// A frame of `count` seqs from `first` on, accepted at `1000 * first`.
pub struct Owned {
    pub first: u64,
    pub count: u32,
    pub ms: u64,
    pub key: Vec<u8>,
    pub record: Vec<u8>,
}

impl Owned {
    pub fn new(first: u64, count: u32) -> Owned {
        Owned {
            first,
            count,
            ms: 1000 * first,
            key: key(first),
            record: record(first),
        }
    }

    pub fn frame(&self) -> Frame<'_> {
        Frame {
            first_seq: self.first,
            seq_count: self.count,
            accepted_ms: self.ms,
            dedup_key: &self.key,
            record: &self.record,
        }
    }
}

/// Appends one frame per entry of `counts`, one batch each; the checkpoint after each.
pub fn append(log: &EventLog, counts: &[u32]) -> Vec<Applied> {
    counts
        .iter()
        .map(|&count| {
            let f = Owned::new(log.next_seq(), count);
            log.append(&[f.frame()]).expect("append")
        })
        .collect()
}

/// `(first, last)` of every frame served from `seq` on, each checked against what was
/// appended, and what the read reported lost.
pub fn served(log: &EventLog) -> (Vec<(u64, u64)>, Vec<Loss>) {
    let read = log.read_from(1, usize::MAX).expect("read");
    let seqs = read
        .frames
        .iter()
        .map(|f| {
            assert_eq!(f.dedup_key(), key(f.first_seq), "seq {}", f.first_seq);
            assert_eq!(f.record(), record(f.first_seq), "seq {}", f.first_seq);
            assert_eq!(f.accepted_ms, 1000 * f.first_seq);
            (f.first_seq, f.last_seq())
        })
        .collect();
    (seqs, read.lost)
}

pub fn segment_file(dir: &Path, first_seq: u64) -> PathBuf {
    Segment::path(dir, first_seq).1
}

/// A frame on disk: where it starts and ends, its seqs.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub offset: u64,
    pub end: u64,
    pub first: u64,
    pub last: u64,
    pub kind: Kind,
}

/// The frames of an intact segment file.
pub fn frames_in(path: &Path) -> Vec<Placed> {
    let file = RealFs.open(path).expect("open segment");
    let len = file.len().unwrap();
    let mut w = Window::new(&*file, len);
    let mut pos = format::SEGMENT_HEADER_LEN as u64;
    let mut out = Vec::new();
    while let Some(s) = step(&mut w, pos).unwrap() {
        let Step::Frame { offset, header, .. } = s else {
            panic!("damage in {}", path.display());
        };
        out.push(Placed {
            offset,
            end: offset + header.frame_len(),
            first: header.first_seq,
            last: if header.kind == Kind::Events {
                header.last_seq()
            } else {
                header.first_seq - 1
            },
            kind: header.kind,
        });
        pos = offset + header.frame_len();
    }
    out
}

pub fn loss(segment: u64, first: u64, last: u64, cause: Cause) -> Loss {
    Loss {
        segment,
        first,
        last,
        cause,
    }
}

pub fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A copy of the data dir `from` in a new temp dir.
pub fn copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    copy_into(from, to.path());
    to
}

fn copy_into(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_into(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub const HEADER: u64 = FRAME_HEADER_LEN as u64;
