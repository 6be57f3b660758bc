//! Verifying together the Ed25519 signatures of requests that arrive together.
//!
//! Each HTTP worker runs its requests on one thread. The first request that asks on a thread
//! leads: it yields once, so that every request the worker already has in hand reaches its own
//! signature check and joins, then verifies all of them as one batch ([`ed25519::all_verify`])
//! and tells each whether the batch held. A request the batch does not vouch for (the batch
//! failed, or it was alone) is checked on its own, so a bad signature costs its sender one
//! batch and one single check and is answered in the same turn of the worker. After a failed
//! batch the thread checks the next [`DISTRUST`] signatures one by one: a stream of forgeries
//! cannot make every batch fail and be paid for twice.

#[cfg(test)]
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ed25519_zebra::batch::Item;
use tokio::sync::oneshot;

use super::ed25519;

/// How many signatures one batch verifies at most; more that gathered go in further batches.
const MAX_BATCH: usize = 64;
/// How many signatures after a failed batch are checked one by one.
const DISTRUST: u32 = 256;

#[derive(Default)]
struct Gathering {
    /// A leader is collecting: requests that ask now join its batch.
    open: bool,
    joined: Vec<(Item, oneshot::Sender<bool>)>,
    /// Signatures still to be checked one by one after a failed batch.
    distrust: u32,
}

thread_local! {
    static HERE: Arc<Mutex<Gathering>> = Arc::default();
}

// What the batches led from each thread counted: exact figures for tests, which run each on a
// thread of its own while the process-wide counters take every test's batches.
#[cfg(test)]
thread_local! {
    static COUNTED_HERE: Cell<BatchCounts> = Cell::default();
}

fn lock(gathering: &Mutex<Gathering>) -> MutexGuard<'_, Gathering> {
    gathering.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts of batches, for the metrics and for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    /// Batches verified (two signatures or more).
    pub batches: u64,
    /// Signatures in those batches.
    pub signatures: u64,
    /// Batches that did not hold: their signatures were checked one by one.
    pub failed: u64,
}

static BATCHES: AtomicU64 = AtomicU64::new(0);
static SIGNATURES: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// What the batches led from this thread counted so far.
#[cfg(test)]
pub(crate) fn counts_here() -> BatchCounts {
    COUNTED_HERE.with(Cell::get)
}

/// Forgets a failed batch on this thread, so that a test's next requests are batched again.
#[cfg(test)]
pub(crate) fn trust_again() {
    HERE.with(|here| lock(here).distrust = 0);
}

/// What all threads of the process have batched so far.
pub fn counts() -> BatchCounts {
    BatchCounts {
        batches: BATCHES.load(Ordering::Relaxed),
        signatures: SIGNATURES.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// True when the signature verified in a batch; false when it must be checked on its own.
/// `item` (the hash of the message) is made only for a batch: not for a request that turns
/// out to be alone, nor while the thread distrusts batches.
pub async fn verified_together(item: impl FnOnce() -> Item) -> bool {
    let here = HERE.with(Arc::clone);
    let role = {
        let mut g = lock(&here);
        if g.distrust > 0 {
            g.distrust -= 1;
            return false;
        }
        if g.open {
            let (tx, rx) = oneshot::channel();
            g.joined.push((item(), tx));
            Role::Follow(rx)
        } else {
            g.open = true;
            Role::Lead(item)
        }
    };
    match role {
        // A leader that went away answers `false` (see `Lead::drop`).
        Role::Follow(rx) => rx.await.unwrap_or(false),
        Role::Lead(item) => {
            let lead = Lead { here, done: false };
            tokio::task::yield_now().await;
            lead.verify(item)
        }
    }
}

enum Role<F> {
    Follow(oneshot::Receiver<bool>),
    Lead(F),
}

/// The leader's hold on its thread's gathering; closes it however the leader ends.
struct Lead {
    here: Arc<Mutex<Gathering>>,
    done: bool,
}

impl Lead {
    fn take(&mut self) -> Vec<(Item, oneshot::Sender<bool>)> {
        self.done = true;
        let mut g = lock(&self.here);
        g.open = false;
        std::mem::take(&mut g.joined)
    }

    /// Verifies the leader's own item with those that joined, [`MAX_BATCH`] at a time, and
    /// answers each; returns the answer for its own.
    fn verify(mut self, own: impl FnOnce() -> Item) -> bool {
        let joined = self.take();
        if joined.is_empty() {
            return false;
        }
        let mut own_held = None;
        let mut items = vec![own()];
        let mut senders = Vec::new();
        let mut joined = joined.into_iter().peekable();
        while let Some((item, tx)) = joined.next() {
            items.push(item);
            senders.push(tx);
            if items.len() == MAX_BATCH || joined.peek().is_none() {
                let held = self.batch(std::mem::take(&mut items));
                own_held.get_or_insert(held);
                for tx in senders.drain(..) {
                    let _ = tx.send(held);
                }
            }
        }
        own_held.unwrap_or(false)
    }

    fn batch(&self, items: Vec<Item>) -> bool {
        let n = items.len() as u64;
        let held = ed25519::all_verify(items);
        BATCHES.fetch_add(1, Ordering::Relaxed);
        SIGNATURES.fetch_add(n, Ordering::Relaxed);
        if !held {
            FAILED.fetch_add(1, Ordering::Relaxed);
            lock(&self.here).distrust = DISTRUST;
        }
        #[cfg(test)]
        COUNTED_HERE.with(|c| {
            let mut counts = c.get();
            counts.batches += 1;
            counts.signatures += n;
            counts.failed += u64::from(!held);
            c.set(counts);
        });
        held
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // A leader dropped while it yielded leaves its followers to check themselves.
        if !self.done {
            for (_, tx) in self.take() {
                let _ = tx.send(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use base64::Engine;
    use futures_util::future::join_all;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::verify::{ed25519_public_pem, Keyring, SignatureHeaders, Verifier, VerifyError};

    pub(super) fn setup() -> (Ed25519KeyPair, Verifier) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = ed25519_public_pem(pair.public_key().as_ref());
        let verifier = Verifier {
            ed25519: Keyring::ed25519_from_pem(&pem).unwrap(),
            rsa: Keyring::rsa_from_pem(include_str!("highlevel-rsa.pem")).unwrap(),
            accept_legacy_rsa: false,
        };
        (pair, verifier)
    }

    /// `n` bodies with their signatures; those at `bad` signed over another body.
    fn signed(pair: &Ed25519KeyPair, n: usize, bad: &[usize]) -> Vec<(Vec<u8>, String)> {
        (0..n)
            .map(|i| {
                let body = format!(r#"{{"type":"ContactCreate","id":"{i}"}}"#).into_bytes();
                let over = if bad.contains(&i) {
                    b"forged".to_vec()
                } else {
                    body.clone()
                };
                let sig = base64::engine::general_purpose::STANDARD.encode(pair.sign(&over));
                (body, sig)
            })
            .collect()
    }

    /// Verifies all at once on this thread, the way one HTTP worker's requests meet.
    fn together(v: &Verifier, requests: &[(Vec<u8>, String)]) -> Vec<Result<(), VerifyError>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(join_all(requests.iter().map(|(body, sig)| async move {
            let headers = SignatureHeaders {
                ghl: Some(sig),
                wh: None,
            };
            v.verify_gathered(body, headers).await.map(|_| ())
        })))
    }

    fn batched(batches: u64, signatures: u64, failed: u64) -> BatchCounts {
        BatchCounts {
            batches,
            signatures,
            failed,
        }
    }

    fn since(before: BatchCounts) -> BatchCounts {
        let now = counts_here();
        BatchCounts {
            batches: now.batches - before.batches,
            signatures: now.signatures - before.signatures,
            failed: now.failed - before.failed,
        }
    }

    #[test]
    fn requests_that_ask_together_are_verified_in_batches() {
        let (pair, v) = setup();
        let before = counts_here();
        let results = together(&v, &signed(&pair, 100, &[]));
        assert!(results.iter().all(Result::is_ok));
        // 100 at 64 a batch.
        let counted = since(before);
        assert_eq!(counted, batched(2, 100, 0));
    }

    #[test]
    fn a_bad_signature_fails_alone_and_the_next_ones_are_checked_one_by_one() {
        let (pair, v) = setup();
        let before = counts_here();
        let results = together(&v, &signed(&pair, 20, &[3]));
        for (i, r) in results.iter().enumerate() {
            let expected = if i == 3 {
                Err(VerifyError::Invalid)
            } else {
                Ok(())
            };
            assert_eq!(*r, expected, "request {i}");
        }
        assert_eq!(since(before), batched(1, 20, 1));

        // The next DISTRUST signatures on this thread are not batched, then batching resumes.
        let before = counts_here();
        let results = together(&v, &signed(&pair, DISTRUST as usize, &[]));
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(since(before), BatchCounts::default());
        let results = together(&v, &signed(&pair, 10, &[]));
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(since(before).batches, 1);
    }

    /// During a key rotation HighLevel signs with the new key: the first batch (built for the
    /// old one) fails, the single checks find the new key, and the batches after use it.
    #[test]
    fn after_a_key_rotation_batches_use_the_key_that_verified() {
        let (old, _) = setup();
        let (new, _) = setup();
        let pem = [old.public_key().as_ref(), new.public_key().as_ref()]
            .map(ed25519_public_pem)
            .join("\n");
        let v = Verifier {
            ed25519: Keyring::ed25519_from_pem(&pem).unwrap(),
            rsa: Keyring::rsa_from_pem(include_str!("highlevel-rsa.pem")).unwrap(),
            accept_legacy_rsa: false,
        };
        trust_again();
        let before = counts_here();
        assert!(together(&v, &signed(&new, 10, &[]))
            .iter()
            .all(Result::is_ok));
        assert_eq!(since(before), batched(1, 10, 1));
        trust_again();
        let before = counts_here();
        assert!(together(&v, &signed(&new, 10, &[]))
            .iter()
            .all(Result::is_ok));
        assert_eq!(since(before), batched(1, 10, 0));
    }

    /// The hash of a message is only worth making for a batch.
    #[test]
    fn no_item_is_made_for_a_lone_request_or_while_distrusting() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let made = std::cell::Cell::new(0);
        let (pair, v) = setup();
        let item = || {
            made.set(made.get() + 1);
            let (body, sig) = &signed(&pair, 1, &[])[0];
            let raw = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .unwrap();
            v.ed25519.batchable(&raw).unwrap().item(body)
        };
        trust_again();
        assert!(!runtime.block_on(verified_together(item)));
        assert_eq!(made.get(), 0, "alone");
        HERE.with(|here| lock(here).distrust = 2);
        assert!(!runtime.block_on(verified_together(item)));
        assert_eq!(made.get(), 0, "distrusting");
        HERE.with(|here| lock(here).distrust = 0);
        let both = runtime.block_on(join_all([verified_together(item), verified_together(item)]));
        assert_eq!((both, made.get()), (vec![true, true], 2));
    }

    #[test]
    fn a_lone_request_is_checked_on_its_own() {
        let (pair, v) = setup();
        let before = counts_here();
        for (body, sig) in signed(&pair, 3, &[1]) {
            let r = together(&v, &[(body, sig)]);
            assert_eq!(r.len(), 1);
        }
        assert_eq!(since(before), BatchCounts::default());
    }

    #[test]
    fn followers_of_a_leader_that_goes_away_check_themselves() {
        let (pair, v) = setup();
        let requests = signed(&pair, 4, &[2]);
        fn headers(sig: &str) -> SignatureHeaders<'_> {
            SignatureHeaders {
                ghl: Some(sig),
                wh: None,
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let results = runtime.block_on(async {
            let mut cx = Context::from_waker(Waker::noop());
            let mut leader = Box::pin(v.verify_gathered(&requests[0].0, headers(&requests[0].1)));
            assert!(leader.as_mut().poll(&mut cx).is_pending());
            let followers = join_all(
                requests[1..]
                    .iter()
                    .map(|(body, sig)| v.verify_gathered(body, headers(sig))),
            );
            let mut followers = pin!(followers);
            assert!(followers.as_mut().poll(&mut cx).is_pending());
            drop(leader);
            followers.await
        });
        let outcomes: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(outcomes, [true, false, true]);
    }
}

#[cfg(test)]
mod properties {
    use base64::Engine;
    use futures_util::future::join_all;
    use proptest::prelude::*;

    use crate::verify::SignatureHeaders;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever mix of good, tampered and garbled signatures asks together, each request
        /// gets the verdict it gets alone.
        #[test]
        fn together_each_gets_its_single_verdict(
            requests in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), 0u8..4, any::<prop::sample::Index>()),
                2..40,
            ),
        ) {
            let (pair, v) = super::tests::setup();
            let b64 = |raw: &[u8]| base64::engine::general_purpose::STANDARD.encode(raw);
            let signed: Vec<(Vec<u8>, String)> = requests
                .iter()
                .map(|(body, how, at)| {
                    let mut sig = pair.sign(body).as_ref().to_vec();
                    match how {
                        // 0: as signed; 1: a flipped signature bit; 2: a flipped body bit;
                        // 3: not a signature at all.
                        1 => sig[at.index(64)] ^= 1 << (at.index(8)),
                        2 if !body.is_empty() => {
                            let mut tampered = body.clone();
                            tampered[at.index(body.len())] ^= 1;
                            return (tampered, b64(&sig));
                        }
                        3 => return (body.clone(), b64(&sig[..at.index(64)])),
                        _ => {}
                    }
                    (body.clone(), b64(&sig))
                })
                .collect();
            fn headers(sig: &str) -> SignatureHeaders<'_> {
                SignatureHeaders { ghl: Some(sig), wh: None }
            }
            let alone: Vec<bool> = signed
                .iter()
                .map(|(body, sig)| v.verify(body, headers(sig)).is_ok())
                .collect();
            super::trust_again();
            let before = super::counts_here();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let together: Vec<bool> = runtime.block_on(join_all(
                signed.iter().map(|(body, sig)| async {
                    v.verify_gathered(body, headers(sig)).await.is_ok()
                }),
            ));
            prop_assert_eq!(together, alone);
            // Those that could be batched met in a batch.
            let batchable = signed
                .iter()
                .filter(|(_, sig)| {
                    let raw = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
                    v.ed25519.batchable(&raw).is_some()
                })
                .count();
            if batchable >= 2 {
                prop_assert!(super::counts_here().batches > before.batches);
            }
        }
    }
}
