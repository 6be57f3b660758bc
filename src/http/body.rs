//! Reading a webhook body: bounded in size, in time (by the caller), and by what all bodies
//! being received may hold together.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::error::PayloadError;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

/// The bound on the memory all webhook bodies hold together, from their first byte until their
/// request is answered.
///
/// When a body would go over it, that request gets 429 `overloaded` (HighLevel retries it)
/// rather than waiting for room: a wait could outlast the body timeout and end in 408, and
/// dropping older bodies to make room would let a flood of new connections starve real slow
/// uploads. Stalled bodies give their room back within the body timeout, so the bound recovers
/// by itself.
pub struct BodyBudget {
    held: AtomicUsize,
    limit: usize,
}

/// 64 bodies of the default maximum size, thousands of HighLevel's usual few-KB events.
const BODY_BUDGET_BYTES: usize = 64 << 20;

impl BodyBudget {
    /// Room for at least one body of `max_body_bytes`, so that every allowed body can arrive.
    pub fn for_max_body(max_body_bytes: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit: BODY_BUDGET_BYTES.max(max_body_bytes),
        }
    }

    // A counter that orders no other memory: relaxed is enough.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A body's bytes, with the room they took from the budget until it is dropped.
pub struct Body<'a> {
    pub bytes: Vec<u8>,
    taken: usize,
    budget: &'a BodyBudget,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Declared or grown past the maximum body size.
    TooLarge,
    /// The budget of all bodies has no room for this one now.
    NoRoom,
    /// Not received in full within the body timeout.
    Timeout,
    /// The connection broke or sent a malformed body.
    Read(PayloadError),
}

/// A body's first allocation is its declared length up to this: a usual event takes one
/// allocation of its size, and a client declaring a large body it does not send holds little.
const FIRST_CAPACITY: usize = 16 * 1024;

impl<'a> Body<'a> {
    fn new(budget: &'a BodyBudget, capacity: usize) -> Result<Self, BodyError> {
        if !budget.take(capacity) {
            return Err(BodyError::NoRoom);
        }
        Ok(Self {
            bytes: Vec::with_capacity(capacity),
            taken: capacity,
            budget,
        })
    }

    /// Appends `chunk` (`len + chunk.len()` is within `limit`), doubling the capacity up to
    /// `limit` when it must grow, with the room taken from the budget first.
    fn extend(&mut self, chunk: &[u8], limit: usize) -> Result<(), BodyError> {
        let needed = self.bytes.len() + chunk.len();
        if needed > self.taken {
            let capacity = needed.max(self.taken * 2).min(limit);
            if !self.budget.take(capacity - self.taken) {
                return Err(BodyError::NoRoom);
            }
            self.bytes.reserve_exact(capacity - self.bytes.len());
            self.taken = capacity;
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

impl Drop for Body<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

/// Reads the body up to the limit, within the budget of all bodies.
pub async fn read_limited<'a>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    budget: &'a BodyBudget,
) -> Result<Body<'a>, BodyError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Body::new(budget, declared.unwrap_or(4096).min(FIRST_CAPACITY))?;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if body.bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend(&chunk, limit)?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_grows_by_doubling_within_its_limit_and_gives_its_room_back() {
        let budget = BodyBudget::for_max_body(0);
        let limit = 100_000;
        let mut body = Body::new(&budget, 1_000).unwrap();
        body.extend(&[1; 1_500], limit).unwrap();
        assert_eq!(body.taken, 2_000);
        body.extend(&[2; 90_000], limit).unwrap();
        assert_eq!(body.taken, 91_500);
        body.extend(&[3; 8_500], limit).unwrap();
        assert_eq!(body.taken, limit);
        assert_eq!(budget.held.load(Ordering::Relaxed), limit);
        drop(body);
        assert_eq!(budget.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_body_gets_room_past_the_budget() {
        let budget = BodyBudget::for_max_body(0);
        let full = Body::new(&budget, BODY_BUDGET_BYTES).unwrap();
        assert!(matches!(Body::new(&budget, 1), Err(BodyError::NoRoom)));
        drop(full);
        let _most = Body::new(&budget, BODY_BUDGET_BYTES - 100).unwrap();
        let mut body = Body::new(&budget, 80).unwrap();
        // Growing past the budget fails and leaves what the body took as it was.
        assert!(matches!(
            body.extend(&[0; 90], usize::MAX),
            Err(BodyError::NoRoom)
        ));
        assert_eq!(body.taken, 80);
        assert_eq!(budget.held.load(Ordering::Relaxed), BODY_BUDGET_BYTES - 20);
    }
}
