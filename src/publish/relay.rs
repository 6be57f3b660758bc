//! The relay: drains the outbox in order to RabbitMQ, removing an entry only after its confirm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::Confirmation;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::amqp::{self, Link};
use super::poison::Suspect;
use super::refused::Refused;
use super::window::{InFlight, Stop, TokenHooks, Wire, CONFIRM_TIMEOUT, LOGS};
use crate::backoff::Backoff;
use crate::entry::Entry;
use crate::metrics::{BrokerState, Metrics, PublishResult};
use crate::schema::SchemaMode;
use crate::secret::Secret;
use crate::store::Store;
use crate::traces::Tracer;

/// How many entries one read takes from the outbox; up to two such windows are unconfirmed.
/// Under load a confirm round trip is long (RabbitMQ shares the CPU with ingest): smaller
/// windows capped the relay, larger ones drain no faster and cost memory (BENCHMARKS.md). A
/// read takes only what is there, so at low rates a window is a few entries.
const WINDOW: usize = 2000;
/// How far past the outbox watermark the relay reads: two windows, the one awaiting its
/// confirms and the next. The store keeps the buckets holding those seqs open
/// (`Store::close_idle`).
pub const READ_AHEAD: u64 = 2 * WINDOW as u64;
/// Refused entries retried in one window, besides the new ones.
const RETRIES_PER_WINDOW: usize = 256;
/// New entries sent with each probe while the broker refuses everything.
const PROBE_NEW: usize = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// May carry a password.
    pub amqp_url: Secret,
    pub exchange: String,
    pub declare_topology: bool,
    /// How long one entry may be nacked while others pass before it is quarantined.
    pub nack_quarantine_after: Duration,
    pub schema_mode: SchemaMode,
}

pub struct Relay {
    pub config: RelayConfig,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub hooks: Option<Arc<dyn TokenHooks>>,
    /// Where each publish's span starts; its context is the message's `traceparent`.
    pub tracer: Tracer,
}

impl Relay {
    /// Runs until `shutdown`; finishes the batch in flight first.
    pub async fn run(self, shutdown: CancellationToken) {
        // Reset only when entries are confirmed, not on connecting: a link that breaks on the same
        // entry after every connect backs off like one that cannot connect.
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut suspect = Suspect::default();
        let mut refused = Refused::new(self.config.nack_quarantine_after);
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
                    self.metrics
                        .broker_connections
                        .fetch_add(1, Ordering::Relaxed);
                    // A refusal of the exchange is reported until a publish passes again.
                    if self.metrics.broker() != BrokerState::Refused {
                        self.metrics.set_broker(BrokerState::Connected);
                    }
                    let stop = self
                        .drain(&link, &shutdown, &mut backoff, &mut suspect, &mut refused)
                        .await;
                    if self.metrics.broker() != BrokerState::Refused {
                        self.metrics.set_broker(BrokerState::Disconnected);
                    }
                    // A dead connection may never answer the close; do not wait on it long.
                    let close = link.connection.close(200, "hlgate closing".into());
                    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
                    match stop {
                        Stop::Shutdown => break,
                        Stop::Broken {
                            why,
                            every_publish: true,
                            ..
                        } => {
                            self.metrics.set_broker(BrokerState::Refused);
                            if let Some(held_back) = LOGS.admit(&why) {
                                error!(error = %why, held_back,
                                    "RabbitMQ refuses every publish to the exchange; events wait in the outbox");
                            }
                        }
                        Stop::Broken {
                            why,
                            oldest,
                            handed_through,
                            every_publish: false,
                        } => {
                            if let Some(held_back) = LOGS.admit(&why) {
                                warn!(error = %why, held_back, "lost RabbitMQ; reconnecting");
                            }
                            suspect.broke(oldest, handed_through, &why);
                        }
                    }
                }
                Err(e) => {
                    if let Some(held_back) = LOGS.admit(&e) {
                        warn!(error = %e, held_back, "cannot reach RabbitMQ; events wait in the outbox");
                    }
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

    fn wire<'a>(&'a self, link: &'a Link, shutdown: &'a CancellationToken) -> Wire<'a> {
        Wire {
            link,
            shutdown,
            store: &self.store,
            metrics: &self.metrics,
            hooks: self.hooks.as_ref(),
            exchange: &self.config.exchange,
            schema_mode: self.config.schema_mode,
            tracer: &self.tracer,
        }
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

    /// The refused entries in `seqs` that are still unconfirmed, read again for a retry; the
    /// others are forgotten.
    async fn read_refused(
        &self,
        seqs: Vec<u64>,
        refused: &mut Refused,
    ) -> Result<Vec<Entry>, String> {
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.read_after(seq - 1, 1).await?.pop() {
                Some(entry) if entry.seq == seq => out.push(entry),
                _ => refused.settled(seq),
            }
        }
        Ok(out)
    }

    /// Publishes the outbox in order, keeping up to two windows unconfirmed: the next window
    /// goes out while the broker confirms the previous one. An entry the broker nacks is retried
    /// on its own when due, in a later window, while the entries behind it go on.
    async fn drain(
        &self,
        link: &Link,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        suspect: &mut Suspect,
        refused: &mut Refused,
    ) -> Stop {
        refused.link_lost();
        if let Some((seq, why)) = suspect.poisoned() {
            let why = why.to_string();
            if let Err(why) = self.quarantine(link, seq, &why).await {
                return Stop::broken(why);
            }
            refused.settled(seq);
            suspect.cleared();
        }
        if let Some(stop) = self
            .step_carefully(link, shutdown, backoff, suspect, refused)
            .await
        {
            return stop;
        }
        // The last seq read from the outbox; 0 re-reads it from its oldest entry.
        let mut last_seq = 0;
        let mut in_flight: Option<InFlight> = None;
        loop {
            if shutdown.is_cancelled() && in_flight.is_none() {
                return Stop::Shutdown;
            }
            if let Some(oldest) = refused.refusing_all() {
                if let Some(previous) = in_flight.take() {
                    let first = previous.first();
                    match self.wire(link, shutdown).settle(previous, refused).await {
                        Ok(settled) => {
                            if let Err(why) = self.divert(link, settled.expired, refused).await {
                                return Stop::broken(why);
                            }
                        }
                        Err(down) => return down.stop(first, last_seq),
                    }
                    continue;
                }
                match self
                    .probe(link, shutdown, backoff, oldest, &mut last_seq, refused)
                    .await
                {
                    Ok(()) => continue,
                    Err(stop) => return stop,
                }
            }
            let mut batch = Vec::new();
            let mut read_any = false;
            if !shutdown.is_cancelled() {
                let due = refused.take_due(Instant::now(), RETRIES_PER_WINDOW);
                match self.read_refused(due, refused).await {
                    Ok(retries) => batch = retries,
                    Err(why) => return Stop::broken(why),
                }
                match self.read_after(last_seq, WINDOW).await {
                    Ok(read) => {
                        read_any = !read.is_empty();
                        last_seq = read.last().map_or(last_seq, |e| e.seq);
                        batch.extend(read.into_iter().filter(|e| !refused.contains(e.seq)));
                    }
                    Err(why) => return Stop::broken(why),
                }
            }
            let handed_through = last_seq;
            let sent = if batch.is_empty() {
                None
            } else {
                Some(self.wire(link, shutdown).publish(batch).await)
            };
            if let Some(previous) = in_flight.take() {
                let first = previous.first();
                match self.wire(link, shutdown).settle(previous, refused).await {
                    Ok(settled) => {
                        if settled.acked > 0 {
                            backoff.reset();
                        }
                        if let Err(why) = self.divert(link, settled.expired, refused).await {
                            return Stop::broken(why);
                        }
                    }
                    Err(down) => return down.stop(first, handed_through),
                }
            }
            match sent {
                Some(mut current) => {
                    if let Some(down) = current.failure.take() {
                        let first = current.first();
                        let _ = self.wire(link, shutdown).settle(current, refused).await;
                        return down.stop(first, handed_through);
                    }
                    in_flight = Some(current);
                }
                // Only refused entries were read: read on.
                None if read_any => {}
                None => {
                    if shutdown.is_cancelled() {
                        return Stop::Shutdown;
                    }
                    let retry_at = refused
                        .next_due()
                        .map(tokio::time::Instant::from_std)
                        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        () = self.store.appended() => {}
                        () = tokio::time::sleep_until(retry_at) => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {
                            if !link.connection.status().connected() {
                                return Stop::broken("connection closed".into());
                            }
                            // Catch entries a reconnect left behind.
                            last_seq = 0;
                        }
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// While the broker refuses everything: waits out the backoff, then sends the oldest refused
    /// entry and a few new ones, and settles them. One ack ends the outage.
    async fn probe(
        &self,
        link: &Link,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        oldest: u64,
        last_seq: &mut u64,
        refused: &mut Refused,
    ) -> Result<(), Stop> {
        if let Some(held_back) = LOGS.admit("refusing everything") {
            error!(
                refused = refused.len(),
                held_back,
                "RabbitMQ nacks every publish; retrying the oldest refused entry, quarantining none"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return Err(Stop::Shutdown),
        }
        refused.take(oldest);
        let mut batch = self
            .read_refused(vec![oldest], refused)
            .await
            .map_err(Stop::broken)?;
        let fresh = self
            .read_after(*last_seq, PROBE_NEW)
            .await
            .map_err(Stop::broken)?;
        *last_seq = fresh.last().map_or(*last_seq, |e| e.seq);
        batch.extend(fresh.into_iter().filter(|e| !refused.contains(e.seq)));
        if batch.is_empty() {
            return Ok(());
        }
        let sent = self.wire(link, shutdown).publish(batch).await;
        let first = sent.first();
        // A batch not handed over whole comes back from `settle` as its failure.
        match self.wire(link, shutdown).settle(sent, refused).await {
            Ok(settled) => {
                if settled.acked > 0 {
                    backoff.reset();
                }
                self.divert(link, settled.expired, refused)
                    .await
                    .map_err(Stop::broken)
            }
            Err(down) => Err(down.stop(first, *last_seq)),
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
        refused: &mut Refused,
    ) -> Option<Stop> {
        let mut cursor = 0;
        loop {
            if shutdown.is_cancelled() {
                return Some(Stop::Shutdown);
            }
            let entry = match self.read_after(cursor, 1).await {
                Ok(mut batch) => batch.pop()?,
                Err(why) => return Some(Stop::broken(why)),
            };
            if !suspect.careful(entry.seq) {
                return None;
            }
            cursor = entry.seq;
            if refused.contains(entry.seq) {
                // Retried when due, with the windows.
                continue;
            }
            let seq = entry.seq;
            let mut sent = self.wire(link, shutdown).publish(vec![entry]).await;
            let failure = sent.failure.take();
            match self.wire(link, shutdown).settle(sent, refused).await {
                Ok(settled) => {
                    if let Some(down) = failure {
                        return Some(down.stop(seq, seq));
                    }
                    if settled.acked > 0 {
                        backoff.reset();
                    }
                    if let Err(why) = self.divert(link, settled.expired, refused).await {
                        return Some(Stop::broken(why));
                    }
                }
                Err(down) => return Some(down.stop(seq, seq)),
            }
        }
    }

    /// Diverts the entries refused past the bound to the quarantine queue.
    async fn divert(
        &self,
        link: &Link,
        expired: Vec<(u64, String)>,
        refused: &mut Refused,
    ) -> Result<(), String> {
        for (seq, why) in expired {
            self.quarantine(link, seq, &why).await?;
            refused.settled(seq);
        }
        self.metrics.set_refused(refused.len() as u64);
        Ok(())
    }

    /// Diverts entry `seq`, which the broker keeps refusing, to the quarantine queue with its
    /// body intact, and records it as confirmed once that publish is. Nothing to do when it
    /// is no longer unconfirmed.
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
        let (store, reason) = (self.store.clone(), why.to_string());
        let moved = tokio::task::spawn_blocking(move || {
            store.mark_confirmed(&[(seq, seq)], &[(seq, &reason)])
        })
        .await;
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
}
