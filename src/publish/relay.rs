//! The relay: drains the outbox in order to RabbitMQ, removing an entry only after its confirm.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::Confirmation;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::amqp::{self, Attached, Link};
use super::poison::Suspect;
use crate::backoff::Backoff;
use crate::entry::{now_ms, Entry};
use crate::metrics::{Metrics, PublishResult};
use crate::schema::{Outcome, SchemaMode};
use crate::secret::Secret;
use crate::store::Store;

/// How many entries one read takes from the outbox; up to two such windows are unconfirmed.
/// Under load a confirm round trip is long (RabbitMQ shares the CPU with ingest): smaller
/// windows capped the relay, larger ones drain no faster and cost memory (BENCHMARKS.md). A
/// read takes only what is there, so at low rates a window is a few entries.
const WINDOW: usize = 2000;
/// How far past the outbox watermark the relay reads: two windows, the one awaiting its
/// confirms and the next. The store keeps the buckets holding those seqs open
/// (`Store::close_idle`).
pub const READ_AHEAD: u64 = 2 * WINDOW as u64;
/// A window whose confirms have not all come within this time means a stalled link (a broker
/// that blocks publishers, a network that drops without a reset): reconnect.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// May carry a password.
    pub amqp_url: Secret,
    pub exchange: String,
    pub declare_topology: bool,
    pub schema_mode: SchemaMode,
}

pub struct Relay {
    pub config: RelayConfig,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub hooks: Option<Arc<dyn TokenHooks>>,
}

/// A batch handed to the broker, its confirms not yet awaited.
struct InFlight {
    confirms: Vec<(Entry, lapin::PublisherConfirm)>,
    /// Set when the batch could not be handed over whole.
    failure: Option<String>,
}

/// Why a window could not be settled.
enum LinkDown {
    /// The broker closed the channel or the connection, or a publish failed.
    Failed(String),
    /// Confirms stopped coming: no entry's fault.
    Stalled,
}

impl LinkDown {
    /// The stop it means for a link on which entries up to `handed_through` were handed over.
    fn stop(self, handed_through: u64) -> Stop {
        match self {
            LinkDown::Failed(why) => Stop::Broken {
                why,
                handed_through,
            },
            LinkDown::Stalled => Stop::Broken {
                why: format!("no confirm within {CONFIRM_TIMEOUT:?}: the link is stalled"),
                handed_through: 0,
            },
        }
    }
}

enum Stop {
    /// The connection or channel failed; reconnect. `handed_through` is the last seq handed to
    /// the broker on it.
    Broken { why: String, handed_through: u64 },
    /// Shutdown was asked for.
    Shutdown,
}

impl Relay {
    /// Runs until `shutdown`; finishes the batch in flight first.
    pub async fn run(self, shutdown: CancellationToken) {
        // Reset only when entries are confirmed, not on connecting: a link that breaks on the same
        // entry after every connect backs off like one that cannot connect.
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut suspect = Suspect::default();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let link = tokio::select! {
                link = self.open() => link,
                () = shutdown.cancelled() => break,
            };
            match link {
                Ok(link) => {
                    info!(exchange = %self.config.exchange, "connected to RabbitMQ");
                    self.metrics.broker_connected.store(true, Ordering::Relaxed);
                    let stop = self
                        .drain(&link, &shutdown, &mut backoff, &mut suspect)
                        .await;
                    self.metrics
                        .broker_connected
                        .store(false, Ordering::Relaxed);
                    // A dead connection may never answer the close; do not wait on it long.
                    let close = link.connection.close(200, "hlgate closing".into());
                    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
                    match stop {
                        Stop::Shutdown => break,
                        Stop::Broken {
                            why,
                            handed_through,
                        } => {
                            warn!(error = %why, "lost RabbitMQ; reconnecting");
                            let oldest = self.store.published_through() + 1;
                            suspect.broke(oldest, handed_through, &why);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot reach RabbitMQ; events wait in the outbox");
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
        info!("relay stopped");
    }

    async fn open(&self) -> Result<Link, String> {
        // A broker that takes the TCP connection but never answers must not hold the relay.
        tokio::time::timeout(CONFIRM_TIMEOUT, self.connect())
            .await
            .map_err(|_| format!("no answer within {CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let link = amqp::connect(self.config.amqp_url.expose()).await?;
        if self.config.declare_topology {
            amqp::declare_topology(&link.channel, &self.config.exchange).await?;
        }
        Ok(link)
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.pending_after(after, limit)).await {
            Ok(Ok(batch)) => Ok(batch),
            Ok(Err(e)) => Err(format!("reading the outbox: {e}")),
            Err(e) => Err(format!("reading the outbox: {e}")),
        }
    }

    /// Publishes the outbox in order, keeping up to two windows unconfirmed: the next window
    /// goes out while the broker confirms the previous one.
    async fn drain(
        &self,
        link: &Link,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        suspect: &mut Suspect,
    ) -> Stop {
        if let Some((seq, why)) = suspect.poisoned(self.store.published_through()) {
            let why = why.to_string();
            if let Err(why) = self.quarantine(link, seq, &why).await {
                return Stop::Broken {
                    why,
                    handed_through: 0,
                };
            }
            suspect.cleared();
        }
        if let Some(stop) = self.step_carefully(link, shutdown, backoff, suspect).await {
            return stop;
        }
        // The last seq handed to the broker; 0 re-reads the outbox from its oldest entry.
        let mut last_seq = 0;
        let mut in_flight: Option<InFlight> = None;
        loop {
            if shutdown.is_cancelled() && in_flight.is_none() {
                return Stop::Shutdown;
            }
            let batch = if shutdown.is_cancelled() {
                Vec::new()
            } else {
                match self.read_after(last_seq, WINDOW).await {
                    Ok(batch) => batch,
                    Err(why) => {
                        return Stop::Broken {
                            why,
                            handed_through: last_seq,
                        }
                    }
                }
            };
            let sent = if batch.is_empty() {
                None
            } else {
                last_seq = batch.last().map_or(last_seq, |e| e.seq);
                Some(self.publish(link, batch).await)
            };
            if let Some(previous) = in_flight.take() {
                match self.settle(previous).await {
                    Ok(true) => backoff.reset(),
                    Ok(false) => {
                        // Nacked entries stay in the outbox; after a pause, start over from the
                        // oldest (what is in flight now may then go twice: at least once).
                        if let Some(current) = sent {
                            let _ = self.settle(current).await;
                        }
                        last_seq = 0;
                        let delay = backoff.next_delay();
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => return Stop::Shutdown,
                        }
                        continue;
                    }
                    Err(down) => return down.stop(last_seq),
                }
            }
            match sent {
                Some(current) => {
                    if let Some(why) = &current.failure {
                        let why = why.clone();
                        let _ = self.settle(current).await;
                        return Stop::Broken {
                            why,
                            handed_through: last_seq,
                        };
                    }
                    in_flight = Some(current);
                }
                None => {
                    if shutdown.is_cancelled() {
                        return Stop::Shutdown;
                    }
                    tokio::select! {
                        () = self.store.appended() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {
                            if !link.connection.status().connected() {
                                return Stop::Broken {
                                    why: "connection closed".into(),
                                    handed_through: last_seq,
                                };
                            }
                            // Catch entries a nack or a reconnect left behind.
                            last_seq = 0;
                        }
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Publishes the entries that were in flight when the link last broke one at a time, each
    /// confirmed before the next, so that an entry the broker refuses is alone in flight when
    /// the link breaks again (see [`Suspect`]). `None` once they are all confirmed.
    async fn step_carefully(
        &self,
        link: &Link,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        suspect: &Suspect,
    ) -> Option<Stop> {
        while suspect.careful(self.store.published_through()) {
            if shutdown.is_cancelled() {
                return Some(Stop::Shutdown);
            }
            let (batch, handed_through) = match self.read_after(0, 1).await {
                Ok(batch) if batch.is_empty() => return None,
                Ok(batch) => {
                    let seq = batch[0].seq;
                    (batch, seq)
                }
                Err(why) => {
                    return Some(Stop::Broken {
                        why,
                        handed_through: 0,
                    })
                }
            };
            let sent = self.publish(link, batch).await;
            match self.settle(sent).await {
                Ok(true) => backoff.reset(),
                Ok(false) => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = shutdown.cancelled() => return Some(Stop::Shutdown),
                    }
                }
                Err(down) => return Some(down.stop(handed_through)),
            }
        }
        None
    }

    /// Diverts entry `seq`, which the broker keeps refusing, to the quarantine queue with its
    /// body intact, and moves the watermark over it once that publish is confirmed.
    async fn quarantine(&self, link: &Link, seq: u64, why: &str) -> Result<(), String> {
        let entry = match self.read_after(seq - 1, 1).await?.pop() {
            Some(entry) if entry.seq == seq => entry,
            _ => return Ok(()),
        };
        let confirm = link
            .channel
            .basic_publish(
                "".into(),
                amqp::QUARANTINE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &entry.body,
                amqp::quarantine_properties(&entry, why),
            )
            .await
            .map_err(|e| format!("quarantine publish: {e}"))?;
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| "no confirm for the quarantine publish".to_string())?
            .map_err(|e| format!("quarantine confirm: {e}"))?;
        // Returned as unroutable (no quarantine queue) is no better than refused.
        if !matches!(confirm, Confirmation::Ack(None)) {
            return Err("the quarantine queue did not take the entry".into());
        }
        let store = self.store.clone();
        let moved = tokio::task::spawn_blocking(move || store.mark_published(seq, seq)).await;
        if !matches!(moved, Ok(Ok(_))) {
            return Err("cannot record the quarantined entry in the outbox".into());
        }
        self.metrics.publish(PublishResult::Quarantined, 1);
        error!(
            seq,
            message_id = %entry.message_id(),
            reason = %why,
            queue = amqp::QUARANTINE,
            "RabbitMQ refused an entry repeatedly; diverted it to the quarantine queue"
        );
        Ok(())
    }

    /// Hands a batch to the broker without waiting for its confirms.
    ///
    /// lapin takes a publish's delivery tag and queues its frames on the first poll, then waits
    /// until its I/O thread has written them. Polling every publish once, in seq order, before
    /// awaiting any keeps the broker's order and lets that thread write the whole batch in a few
    /// large writes instead of one write and two thread switches per message.
    async fn publish(&self, link: &Link, batch: Vec<Entry>) -> InFlight {
        let mut handed = Vec::with_capacity(batch.len());
        let mut failure = None;
        let attached = match &self.hooks {
            Some(h) => h.attach_many(&batch).await,
            None => Vec::new(),
        };
        {
            let mut sending = Vec::with_capacity(batch.len());
            for (i, entry) in batch.iter().enumerate() {
                let attached = attached.get(i).unwrap_or(&Attached::Off);
                let (exchange, routing_key) = self.destination(entry);
                let mut send = Box::pin(link.channel.basic_publish(
                    exchange,
                    amqp::short(&routing_key),
                    BasicPublishOptions::default(),
                    &entry.body,
                    amqp::properties(entry, attached),
                ));
                let first = futures_util::poll!(send.as_mut());
                let failed = matches!(first, Poll::Ready(Err(_)));
                sending.push((send, first));
                if failed {
                    break;
                }
            }
            for (send, first) in sending {
                let published = match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => send.await,
                };
                match published {
                    Ok(confirm) => handed.push(confirm),
                    Err(e) => {
                        failure = Some(format!("publish: {e}"));
                        break;
                    }
                }
            }
        }
        let confirms = batch.into_iter().zip(handed).collect();
        InFlight { confirms, failure }
    }

    /// Awaits a batch's confirms in order and moves the outbox watermark over the confirmed
    /// prefix. `Ok(false)` when something was nacked.
    async fn settle(&self, in_flight: InFlight) -> Result<bool, LinkDown> {
        let mut failure = in_flight.failure.map(LinkDown::Failed);
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let first = in_flight.confirms.first().map(|(e, _)| e.seq);
        let mut acked = Vec::with_capacity(in_flight.confirms.len());
        let mut prefix_end = None;
        let mut all_acked = true;
        for (entry, confirm) in in_flight.confirms {
            let Ok(confirmed) = tokio::time::timeout_at(deadline, confirm).await else {
                // Readiness says so at once; the reconnect follows.
                self.metrics
                    .broker_connected
                    .store(false, Ordering::Relaxed);
                failure.get_or_insert(LinkDown::Stalled);
                break;
            };
            match confirmed {
                Ok(c) if c.is_ack() => {
                    if all_acked && failure.is_none() {
                        prefix_end = Some(entry.seq);
                    }
                    acked.push(entry);
                }
                Ok(_) => {
                    all_acked = false;
                    self.metrics.publish(PublishResult::Nack, 1);
                    warn!(
                        seq = entry.seq,
                        "RabbitMQ nacked a publish; it will be retried"
                    );
                }
                Err(e) => {
                    self.metrics.publish(PublishResult::Error, 1);
                    failure.get_or_insert_with(|| LinkDown::Failed(format!("confirm: {e}")));
                }
            }
        }

        let now = now_ms();
        for entry in &acked {
            self.metrics
                .publish_seconds
                .observe(Duration::from_millis(now.saturating_sub(entry.accepted_ms)));
            self.metrics.schema(entry.schema);
        }
        self.metrics.publish(PublishResult::Ack, acked.len() as u64);
        if let (Some(first), Some(through)) = (first, prefix_end) {
            let store = self.store.clone();
            let moved =
                tokio::task::spawn_blocking(move || store.mark_published(first, through)).await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(LinkDown::Failed(
                    "cannot record confirmed entries in the outbox".into(),
                ));
            }
        }
        debug!(count = acked.len(), "published");
        if let Some(hooks) = &self.hooks {
            for entry in &acked {
                hooks.published(entry).await;
            }
        }
        match failure {
            Some(why) => Err(why),
            None => Ok(all_acked),
        }
    }

    /// The main exchange and routing key, or the quarantine queue for invalid events in
    /// enforce mode.
    fn destination(&self, entry: &Entry) -> (ShortString, String) {
        if self.config.schema_mode == SchemaMode::Enforce && entry.schema == Outcome::Invalid {
            ("".into(), amqp::QUARANTINE.to_string())
        } else {
            (amqp::short(&self.config.exchange), entry.routing_key())
        }
    }
}
