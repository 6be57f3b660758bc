//! Event lookup: which stored events match a query, and where each one stands.
//!
//! Exact lookups by dedup key (or webhook id, which is the key when present) go through the
//! dedup records, which name a delivery's seqs; tenant and type go through each segment's
//! lookup index (`rows`, `sidecar`, `index`); a window through the index's acceptance times;
//! what is left to check (a body substring, the state) is checked on the events read. States
//! come from the records the relay leaves in `meta` (`states`). `offline` opens a stopped
//! store's data dir for the same lookups without taking any lock a start needs.

mod engine;
mod index;
mod offline;
mod query;
mod rows;
mod sidecar;
mod states;

pub use engine::Lookup;
pub use offline::open_read_only;
pub use states::State;

pub(super) use engine::Keys;
pub(super) use index::Indexes;
pub(super) use rows::{array_rows, ActiveRows, Row};
pub(super) use states::{forget_before, quarantine, ConfirmTimes};

use std::time::Duration;

use crate::entry::Entry;

/// What `GET /v1/events` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub key: Option<String>,
    pub webhook_id: Option<String>,
    pub tenant: Option<String>,
    pub event_type: Option<String>,
    /// Acceptance times, unix ms, both included.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub state: Option<StateFilter>,
    /// A substring of the body.
    pub q: Option<String>,
    pub limit: usize,
    /// Only seqs past this one (below it newest first, above it oldest first).
    pub after: Option<u64>,
    pub ascending: bool,
    /// How long a query with `q` reads bodies before it answers what it found, with a cursor.
    pub budget: Option<Duration>,
}

/// The states a query can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Pending,
    Published,
    Quarantined,
    Lost,
}

impl StateFilter {
    pub fn parse(text: &str) -> Option<StateFilter> {
        Some(match text {
            "pending" => StateFilter::Pending,
            "published" => StateFilter::Published,
            "quarantined" => StateFilter::Quarantined,
            "lost" => StateFilter::Lost,
            _ => return None,
        })
    }

    fn takes(self, state: &State) -> bool {
        matches!(
            (self, state),
            (StateFilter::Pending, State::Pending)
                | (StateFilter::Published, State::Published { .. })
                | (StateFilter::Quarantined, State::Quarantined { .. })
                | (StateFilter::Lost, State::Lost)
        )
    }
}

/// One event a lookup found.
#[derive(Debug, Clone)]
pub struct Found {
    pub seq: u64,
    /// 0 when a lost event's time is not known.
    pub accepted_ms: u64,
    pub dedup_key: Option<String>,
    /// The event as stored; `None` for a lost one whose frame cannot be read.
    pub entry: Option<Entry>,
    pub state: State,
}

/// A page of events, and the seq the next page goes on from.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Found>,
    pub next: Option<u64>,
}
