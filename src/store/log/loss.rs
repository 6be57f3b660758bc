//! What the log tells its caller about seqs it cannot serve, and about the frames a start found
//! past the caller's checkpoint.

use std::fmt;

/// Seqs `first..=last` that the log should hold and cannot serve. The caller records them in
/// the damage ledger (`Ledger::found(segment, first, last)`): loss is never silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The segment (its first seq) that should hold them.
    pub segment: u64,
    pub first: u64,
    pub last: u64,
    pub cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No segment holds them: a segment is missing, or ends early, or they lie below the
    /// oldest segment although the caller still needs them.
    Missing,
    /// Bytes that parse as no frame, with frames after them.
    Unreadable,
    /// A frame whose header checks and whose body does not.
    BadBody,
    /// The log ends below the checkpoint the caller recorded: acknowledged events are gone.
    Truncated,
    /// The frame the checkpoint names is not where it was written.
    Replaced,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.cause {
            Cause::Missing => "no segment holds them",
            Cause::Unreadable => "their frames are unreadable",
            Cause::BadBody => "their frame's body fails its checksum",
            Cause::Truncated => "the log ends below the last applied checkpoint",
            Cause::Replaced => "the checkpoint's frame is not where it was written",
        };
        write!(
            f,
            "seqs {}..{} of segment {}: {why}",
            self.first, self.last, self.segment
        )
    }
}

/// A frame found on disk past the caller's checkpoint: it was fsynced, so it may have been
/// acknowledged, and its dedup key must be recorded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub first_seq: u64,
    pub seq_count: u32,
    pub accepted_ms: u64,
    pub dedup_key: Vec<u8>,
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Sorted, not overlapping.
    pub lost: Vec<Loss>,
    /// The frames past the checkpoint (all of them without one), in seq order.
    pub unapplied: Vec<Written>,
    /// Segments (by first seq) whose header fails its check. Nothing is lost by it: their
    /// frames are still read, and their first seq is their directory's name.
    pub bad_headers: Vec<u64>,
    /// Bytes of a torn tail cut from the newest segment: written, never fsynced, so never
    /// acknowledged.
    pub cut_bytes: u64,
}

/// `lost` sorted by first seq, each seq reported once (the first report of it wins).
pub fn tidy(lost: Vec<Loss>) -> Vec<Loss> {
    let mut kept: Vec<Loss> = Vec::with_capacity(lost.len());
    for loss in lost {
        let mut parts = vec![loss];
        for k in &kept {
            parts = parts
                .into_iter()
                .flat_map(|p| without(p, k.first, k.last))
                .collect();
        }
        kept.extend(parts);
    }
    kept.sort_by_key(|l| l.first);
    kept
}

/// `loss` less the seqs `first..=last`.
fn without(loss: Loss, first: u64, last: u64) -> Vec<Loss> {
    if loss.last < first || loss.first > last {
        return vec![loss];
    }
    let mut parts = Vec::new();
    if loss.first < first {
        parts.push(Loss {
            last: first - 1,
            ..loss
        });
    }
    if loss.last > last {
        parts.push(Loss {
            first: last + 1,
            ..loss
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(first: u64, last: u64, cause: Cause) -> Loss {
        Loss {
            segment: 1,
            first,
            last,
            cause,
        }
    }

    #[test]
    fn tidy_reports_each_seq_once_in_order() {
        let got = tidy(vec![
            loss(10, 20, Cause::Missing),
            loss(1, 2, Cause::BadBody),
            loss(15, 25, Cause::Truncated),
            loss(12, 12, Cause::Replaced),
        ]);
        assert_eq!(
            got,
            [
                loss(1, 2, Cause::BadBody),
                loss(10, 20, Cause::Missing),
                loss(21, 25, Cause::Truncated),
            ]
        );
    }
}
