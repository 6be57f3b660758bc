//! One batch's trip to the broker: handing it over in order, waiting for the confirms (time
//! the broker spends blocking the connection does not count), and recording what the broker
//! answered: acks in the store, nacks in the [`Refused`] schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::amqp::{self, Attached, Link};
use super::refused::{Refused, Verdict};
use crate::entry::{now_ms, Entry};
use crate::loglimit::LogLimit;
use crate::metrics::{BrokerState, Metrics, PublishResult};
use crate::schema::{Outcome, SchemaMode};
use crate::store::Store;
use crate::traces::{Kind, Span, SpanContext, Tracer};

/// A window whose confirms have not all come within this time means a stalled link (a network
/// that drops without a reset): reconnect. Time the broker spends blocking the connection (a
/// memory or disk alarm) does not count: a new connection would be blocked too, and one
/// abandoned while blocked delivers what it held once the alarm clears.
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Why an event went to the quarantine queue without a refusal, as lookups show it.
const SCHEMA_REASON: &str = "invalid against its schema (HLGATE_SCHEMA_MODE=enforce)";
/// How often a wait on the broker looks at the connection's state.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Warnings that would otherwise come once per entry or per reconnect: one line per cause per
/// ten seconds.
pub(super) static LOGS: LogLimit = LogLimit::new(Duration::from_secs(10));

/// What the token module does around a publish. The relay works without one.
pub trait TokenHooks: Send + Sync {
    /// The token facts to attach to each of a window's entries, in order; empty when nothing
    /// is attached. Answered from memory, without waiting on HighLevel beyond a short bound.
    fn attach_many<'a>(
        &'a self,
        entries: &'a [Entry],
    ) -> Pin<Box<dyn Future<Output = Vec<Attached>> + Send + 'a>>;
    /// Called once a message is confirmed (INSTALL, UNINSTALL handling).
    fn published<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// A batch handed to the broker, its confirms not yet awaited; each with its publish span,
/// which ends at its confirm.
pub(super) struct InFlight {
    pub confirms: Vec<(Entry, lapin::PublisherConfirm, Span)>,
    /// Set when the batch could not be handed over whole.
    pub failure: Option<LinkDown>,
}

impl InFlight {
    pub fn first(&self) -> u64 {
        self.confirms.first().map_or(0, |(e, _, _)| e.seq)
    }
}

/// Why a window could not be settled.
pub(super) enum LinkDown {
    /// The broker closed the channel or the connection (with its reply code, when it gave
    /// one), or a publish failed.
    Failed { why: String, code: Option<u16> },
    /// Confirms stopped coming while the broker did not block: no entry's fault.
    Stalled,
    /// Shutdown was asked for while waiting on the broker.
    Shutdown,
}

impl LinkDown {
    pub fn from_error(what: &str, e: &lapin::Error) -> LinkDown {
        LinkDown::Failed {
            why: format!("{what}: {e}"),
            code: amqp::reply_code(e),
        }
    }

    /// The stop it means for a link on which `oldest..=handed_through` were in flight.
    pub fn stop(self, oldest: u64, handed_through: u64) -> Stop {
        match self {
            LinkDown::Failed { why, code } => Stop::Broken {
                why,
                oldest,
                handed_through,
                every_publish: code.is_some_and(amqp::refuses_every_publish),
            },
            LinkDown::Stalled => Stop::Broken {
                why: format!("no confirm within {CONFIRM_TIMEOUT:?}: the link is stalled"),
                oldest: 0,
                handed_through: 0,
                every_publish: false,
            },
            LinkDown::Shutdown => Stop::Shutdown,
        }
    }
}

pub(super) enum Stop {
    /// The connection or channel failed; reconnect. `oldest..=handed_through` were in flight
    /// (`oldest` 0: nothing). `every_publish`: the broker refused the exchange itself, which
    /// every entry would get: an outage, never an entry's fault.
    Broken {
        why: String,
        oldest: u64,
        handed_through: u64,
        every_publish: bool,
    },
    /// Shutdown was asked for.
    Shutdown,
}

impl Stop {
    pub fn broken(why: String) -> Stop {
        Stop::Broken {
            why,
            oldest: 0,
            handed_through: 0,
            every_publish: false,
        }
    }
}

/// What the broker answered for a settled batch.
#[derive(Default)]
pub(super) struct Settled {
    pub acked: usize,
    /// Entries refused past the bound, to divert: seq and why.
    pub expired: Vec<(u64, String)>,
}

/// How long a window may still wait for the broker while it does not block.
struct Patience(Duration);

/// What a batch's trip needs: the link, where answers are recorded, where messages go.
pub(super) struct Wire<'a> {
    pub link: &'a Link,
    pub shutdown: &'a CancellationToken,
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    pub hooks: Option<&'a Arc<dyn TokenHooks>>,
    pub exchange: &'a str,
    pub schema_mode: SchemaMode,
    pub tracer: &'a Tracer,
}

impl Wire<'_> {
    /// Hands a batch to the broker without waiting for its confirms.
    ///
    /// lapin takes a publish's delivery tag and queues its frames on the first poll, then waits
    /// until its I/O thread has written them. Polling every publish once, in seq order, before
    /// awaiting any keeps the broker's order and lets that thread write the whole batch in a few
    /// large writes instead of one write and two thread switches per message.
    pub async fn publish(&self, batch: Vec<Entry>) -> InFlight {
        let mut handed = Vec::with_capacity(batch.len());
        let mut failure = None;
        let spans: Vec<Span> = batch.iter().map(|e| self.span(e)).collect();
        let attached = match self.hooks {
            Some(h) => h.attach_many(&batch).await,
            None => Vec::new(),
        };
        {
            let mut sending = Vec::with_capacity(batch.len());
            for (i, entry) in batch.iter().enumerate() {
                let attached = attached.get(i).unwrap_or(&Attached::Off);
                let (exchange, routing_key) = self.destination(entry);
                // Off, a trace of its own that nothing records: a consumer still continues it.
                let trace = spans[i]
                    .context()
                    .unwrap_or_else(|| SpanContext::random(false));
                let mut send = Box::pin(self.link.channel.basic_publish(
                    exchange,
                    amqp::short(&routing_key),
                    BasicPublishOptions::default(),
                    &entry.body,
                    amqp::properties(entry, attached, Some(&trace)),
                ));
                let first = futures_util::poll!(send.as_mut());
                let failed = matches!(first, Poll::Ready(Err(_)));
                sending.push((send, first));
                if failed {
                    break;
                }
            }
            // Frames wait in lapin while the broker blocks the connection: the same patience
            // as for confirms, and a shutdown ends the wait (the entries stay in the outbox).
            let mut patience = Patience(CONFIRM_TIMEOUT);
            for (send, first) in sending {
                let published = match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => match self.on_link(&mut patience, send).await {
                        Ok(result) => result,
                        Err(down) => {
                            failure = Some(down);
                            break;
                        }
                    },
                };
                match published {
                    Ok(confirm) => handed.push(confirm),
                    Err(e) => {
                        failure = Some(LinkDown::from_error("publish", &e));
                        break;
                    }
                }
            }
        }
        let mut spans = spans.into_iter();
        let confirms = (batch.into_iter().zip(handed))
            .map(|(entry, confirm)| (entry, confirm, spans.next().unwrap_or_default()))
            .collect();
        spans.for_each(|mut s| s.fail("not handed to the broker"));
        InFlight { confirms, failure }
    }

    /// An entry's publish span: a child of its webhook's while the entry came from memory.
    fn span(&self, entry: &Entry) -> Span {
        let mut span = self.tracer.span("publish", Kind::Producer, entry.trace);
        if span.is_recording() {
            let (exchange, routing_key) = self.destination(entry);
            span.set("messaging.system", "rabbitmq");
            span.set("messaging.operation.type", "send");
            span.set("messaging.destination.name", exchange.as_str());
            span.set("messaging.rabbitmq.destination.routing_key", routing_key);
            span.set("messaging.message.id", entry.message_id());
            span.set("hlgate.seq", entry.seq as i64);
            span.set("hlgate.tenant", entry.tenant.as_str());
            span.set("hlgate.event_type", entry.event_type.as_str());
            span.set("hlgate.replay", entry.replay);
        }
        span
    }

    /// Awaits `work` while the broker answers. Time the broker spends blocking the connection
    /// does not use up `patience` (readiness says `blocked` meanwhile); a closed connection,
    /// patience used up, or shutdown end the wait.
    async fn on_link<T>(
        &self,
        patience: &mut Patience,
        work: impl Future<Output = T>,
    ) -> Result<T, LinkDown> {
        tokio::pin!(work);
        loop {
            let look = tokio::time::sleep(LOOK_EVERY);

            tokio::select! {
                done = &mut work => {
                    if self.metrics.broker() == BrokerState::Blocked {
                        self.metrics.set_broker(BrokerState::Connected);
                        info!("RabbitMQ unblocked the connection");
                    }
                    return Ok(done);
                }
                () = self.shutdown.cancelled() => return Err(LinkDown::Shutdown),
                () = look => {}
            }
            let status = self.link.connection.status();
            if status.blocked() {
                if self.metrics.broker() != BrokerState::Blocked {
                    self.metrics.set_broker(BrokerState::Blocked);
                    warn!("RabbitMQ blocks publishers (a resource alarm); waiting on the same connection");
                }
                continue;
            }
            if !status.connected() {
                return Err(LinkDown::Failed {
                    why: "connection closed".into(),
                    code: None,
                });
            }
            if self.metrics.broker() == BrokerState::Blocked {
                self.metrics.set_broker(BrokerState::Connected);
            }
            patience.0 = patience.0.saturating_sub(LOOK_EVERY);
            if patience.0.is_zero() {
                // Readiness says so at once; the reconnect follows.
                self.metrics.set_broker(BrokerState::Disconnected);
                return Err(LinkDown::Stalled);
            }
        }
    }

    /// Awaits a batch's confirms in order and records what the broker confirmed. A nacked
    /// entry is retried on its own when due, or listed to be diverted once refused past the
    /// bound; it never holds back the entries behind it, and nothing acked goes again.
    pub async fn settle(
        &self,
        in_flight: InFlight,
        refused: &mut Refused,
    ) -> Result<Settled, LinkDown> {
        let mut failure = in_flight.failure;
        let mut patience = Patience(CONFIRM_TIMEOUT);
        let mut acked = Vec::with_capacity(in_flight.confirms.len());
        let mut settled = Settled::default();
        let mut confirms = in_flight.confirms.into_iter();
        while let Some((entry, confirm, mut span)) = confirms.next() {
            let confirmed = match self.on_link(&mut patience, confirm).await {
                Ok(confirmed) => confirmed,
                Err(down) => {
                    failure.get_or_insert(down);
                    span.fail("no confirm: the link went down");
                    confirms.for_each(|(_, _, mut s)| s.fail("no confirm: the link went down"));
                    break;
                }
            };
            let now = Instant::now();
            match confirmed {
                Ok(c) if c.is_ack() => {
                    span.end();
                    refused.acked(entry.seq, now);
                    acked.push(entry);
                }
                Ok(_) => {
                    span.fail("nacked by the broker");
                    self.metrics.publish(PublishResult::Nack, 1);
                    match refused.nacked(entry.seq, now) {
                        Verdict::Retry => {
                            if let Some(held_back) = LOGS.admit("nacked") {
                                warn!(seq = entry.seq, held_back,
                                    "RabbitMQ nacked a publish; it is retried on its own while the entries behind it go on");
                            }
                        }
                        Verdict::Quarantine {
                            attempts,
                            refused_for,
                        } => settled.expired.push((
                            entry.seq,
                            format!(
                                "nacked by RabbitMQ {attempts} times over {}s while it took other entries",
                                refused_for.as_secs()
                            ),
                        )),
                    }
                }
                Err(e) => {
                    span.fail("the confirm failed");
                    self.metrics.publish(PublishResult::Error, 1);
                    failure.get_or_insert_with(|| LinkDown::from_error("confirm", &e));
                }
            }
        }
        self.metrics.set_refused(refused.len() as u64);
        if !acked.is_empty() && self.metrics.broker() == BrokerState::Refused {
            self.metrics.set_broker(BrokerState::Connected);
        }
        let now = now_ms();
        for entry in &acked {
            self.metrics
                .publish_seconds
                .observe(Duration::from_millis(now.saturating_sub(entry.accepted_ms)));
            self.metrics.schema(entry.schema);
        }
        self.metrics.publish(PublishResult::Ack, acked.len() as u64);
        let ranges = runs(acked.iter().map(|e| e.seq));
        if !ranges.is_empty() {
            let store = self.store.clone();
            // What the quarantine queue took is recorded as such, for lookups.
            let diverted: Vec<u64> = acked
                .iter()
                .filter(|e| self.to_quarantine(e))
                .map(|e| e.seq)
                .collect();
            let moved = tokio::task::spawn_blocking(move || {
                let why: Vec<(u64, &str)> = diverted.iter().map(|&s| (s, SCHEMA_REASON)).collect();
                store.mark_confirmed(&ranges, &why)
            })
            .await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(LinkDown::Failed {
                    why: "cannot record confirmed entries in the outbox".into(),
                    code: None,
                });
            }
        }
        debug!(count = acked.len(), "published");
        if let Some(hooks) = self.hooks {
            for entry in &acked {
                hooks.published(entry).await;
            }
        }
        settled.acked = acked.len();
        match failure {
            Some(down) => Err(down),
            None => Ok(settled),
        }
    }

    /// The main exchange and routing key, or the quarantine queue for invalid events in
    /// enforce mode (but for one an operator replayed on its own: a redrive).
    fn destination(&self, entry: &Entry) -> (ShortString, String) {
        if self.to_quarantine(entry) {
            ("".into(), amqp::QUARANTINE.to_string())
        } else {
            (amqp::short(self.exchange), entry.routing_key())
        }
    }

    fn to_quarantine(&self, entry: &Entry) -> bool {
        self.schema_mode == SchemaMode::Enforce
            && entry.schema == Outcome::Invalid
            && !entry.redrive
    }
}

/// Consecutive runs of rising seqs, as (first, last) pairs.
fn runs(seqs: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for seq in seqs {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_split_where_seqs_skip() {
        assert_eq!(
            super::runs([3, 4, 5, 7, 9, 10].into_iter()),
            [(3, 5), (7, 7), (9, 10)]
        );
        assert!(super::runs(std::iter::empty()).is_empty());
    }
}
