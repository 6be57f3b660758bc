//! `hlgate listen`: the gateway's events, from a durable queue of the developer's own, POSTed to
//! a local URL with HighLevel's original signature, one at a time and in order.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::forward::{http_url, replay, Answer, Forwarder};
use crate::backoff::Backoff;
use crate::config::{format_duration, parse_amqp_url, parse_duration, redact_url, Settings};
use crate::publish::amqp::rfc3339_ms;
use crate::publish::listen::{delete, Incoming, ListenError, ListenQueue, Listener};
use crate::secret::Secret;
use crate::verify::Scheme;

/// The queue of `--name NAME` is `hlgate.listen.NAME`.
pub const QUEUE_PREFIX: &str = "hlgate.listen.";
/// Most message bytes a listener's queue holds, whatever `--max-length` says: bodies reach
/// `HLGATE_MAX_BODY_BYTES` each.
pub const MAX_QUEUE_BYTES: u64 = 100 * 1024 * 1024;
/// The first retry of a refused POST comes after about this long, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

fn secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

/// A duration longer than zero: a zero TTL would drop every event that waits, a zero timeout
/// would fail every POST.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be longer than zero")),
        d => Ok(d),
    }
}

#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Where each event is POSTed, e.g. http://localhost:3000/hook.
    #[arg(long, value_name = "URL", required_unless_present = "delete")]
    pub to: Option<String>,
    /// Routing-key pattern to bind, e.g. 'ContactCreate.*' or '*.<locationId>' (repeatable;
    /// default '#', every event).
    #[arg(long = "bind", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// The queue is hlgate.listen.NAME (default: the user name).
    #[arg(long)]
    pub name: Option<String>,
    /// RabbitMQ URL (default HLGATE_AMQP_URL).
    #[arg(long, value_name = "URL", value_parser = secret)]
    pub amqp: Option<Secret>,
    /// The events exchange (default HLGATE_EXCHANGE).
    #[arg(long)]
    pub exchange: Option<String>,
    /// Most events the queue keeps while nothing consumes it; the oldest go first.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_length: u32,
    /// How long an event waits in the queue before the broker drops it.
    #[arg(long, default_value = "3d", value_parser = positive_duration)]
    pub ttl: Duration,
    /// Replay the archived events of this last window first (e.g. 1h), through the admin API.
    #[arg(long, value_parser = positive_duration)]
    pub since: Option<Duration>,
    /// The admin API for --since (default http://HLGATE_ADMIN_LISTEN).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Bearer token of the admin API (default HLGATE_ADMIN_TOKEN).
    #[arg(long, value_name = "TOKEN", value_parser = secret)]
    pub admin_token: Option<Secret>,
    /// Longest one POST may take, answer included.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Remove the queue (and the events in it) and exit.
    #[arg(long)]
    pub delete: bool,
}

/// The queue name for `--name`, else the user's name.
fn queue_name(name: Option<&str>) -> Result<String, String> {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    let name = match name {
        Some(n) => n.to_string(),
        None => user.unwrap_or_else(|_| "default".into()),
    };
    let queue = format!("{QUEUE_PREFIX}{name}");
    if name.is_empty() || queue.len() > 255 {
        return Err(format!(
            "--name {name:?}: the queue name {queue:?} must be 1 to 255 bytes"
        ));
    }
    Ok(queue)
}

/// What `hlgate listen` was asked for, checked before anything connects.
struct Plan {
    /// The broker URL (it may carry a password: never printed as is).
    url: String,
    queue: ListenQueue,
    to: reqwest::Url,
    forwarder: Forwarder,
    /// The window to replay first, and the admin API to ask.
    replay: Option<(Duration, reqwest::Url, Option<Secret>)>,
}

impl Plan {
    fn new(
        settings: &Settings,
        args: ListenArgs,
        url: String,
        name: String,
    ) -> Result<Plan, String> {
        let to = http_url("--to", args.to.as_deref().unwrap_or_default())?;
        let forwarder = Forwarder::new(to.clone(), args.timeout)?;
        let mut patterns = args.patterns;
        if patterns.is_empty() {
            patterns.push("#".into());
        }
        if let Some(bad) = patterns.iter().find(|p| p.is_empty() || p.len() > 255) {
            return Err(format!("--bind {bad:?}: a pattern is 1 to 255 bytes"));
        }
        let replay = match args.since {
            None => None,
            Some(since) => {
                let admin = match &args.admin {
                    Some(admin) => http_url("--admin", admin)?,
                    None => {
                        let mut addr = settings.http.admin_listen;
                        if addr.ip().is_unspecified() {
                            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                        }
                        http_url("--admin", &format!("http://{addr}"))?
                    }
                };
                let token = args.admin_token.or(settings.http.admin_token.clone());
                Some((since, admin, token))
            }
        };
        let queue = ListenQueue {
            name,
            exchange: args
                .exchange
                .unwrap_or_else(|| settings.amqp.exchange.clone()),
            patterns,
            max_length: args.max_length,
            max_bytes: MAX_QUEUE_BYTES,
            message_ttl: args.ttl,
            declare_topology: settings.amqp.declare_topology,
        };
        Ok(Plan {
            url,
            queue,
            to,
            forwarder,
            replay,
        })
    }

    /// One line for a broker error, naming the broker without its password.
    fn broker_error(&self, e: ListenError) -> String {
        broker_error(&self.url, e)
    }
}

fn broker_error(url: &str, e: ListenError) -> String {
    match e {
        ListenError::Connect(cause) => {
            format!("cannot connect to RabbitMQ at {}: {cause}", redact_url(url))
        }
        e => e.to_string(),
    }
}

/// `hlgate listen`: runs until `stop` is cancelled (Ctrl-C), or deletes the queue.
pub async fn run(
    settings: &Settings,
    args: ListenArgs,
    stop: CancellationToken,
) -> Result<(), String> {
    let name = queue_name(args.name.as_deref())?;
    let url = match &args.amqp {
        Some(url) => parse_amqp_url(url.expose()).map_err(|e| format!("--amqp {e}"))?,
        None => settings.amqp.url.expose().to_string(),
    };
    if args.delete {
        let dropped = delete(&url, &name)
            .await
            .map_err(|e| broker_error(&url, e))?;
        println!("deleted queue {name} and the {dropped} events in it");
        return Ok(());
    }
    let plan = Plan::new(settings, args, url, name)?;
    let listener = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        opened = Listener::open(&plan.url, &plan.queue) => {
            opened.map_err(|e| plan.broker_error(e))?
        }
    };
    print_queue(&plan.queue, listener.waiting);
    if let Some((since, admin, token)) = &plan.replay {
        let asked = tokio::select! {
            _ = stop.cancelled() => Ok(None),
            asked = replay(admin, token.as_ref(), *since, &plan.queue.patterns) => asked.map(Some),
        };
        match asked {
            Ok(Some(n)) => println!(
                "replaying {n} events of the last {} (every consumer bound to them gets them \
                 again, marked x-hl-replay)",
                format_duration(*since)
            ),
            Ok(None) => {
                listener.close().await;
                return Ok(());
            }
            Err(e) => {
                listener.close().await;
                return Err(e);
            }
        }
    }
    println!("forwarding to {}; Ctrl-C stops", plan.to);
    forward(&plan, listener, &stop).await;
    Ok(())
}

/// What the queue is and what bounds it.
fn print_queue(queue: &ListenQueue, waiting: u32) {
    let bound: Vec<String> = queue.patterns.iter().map(|p| format!("'{p}'")).collect();
    println!(
        "queue {} on exchange {} bound to {}: {waiting} events waiting",
        queue.name,
        queue.exchange,
        bound.join(", "),
    );
    println!(
        "it keeps at most {} events ({} MiB) for {} each while nothing listens; \
         `hlgate listen --name {} --delete` removes it",
        queue.max_length,
        MAX_QUEUE_BYTES / (1024 * 1024),
        format_duration(queue.message_ttl),
        queue.name.trim_start_matches(QUEUE_PREFIX)
    );
}

/// Delivers events one after the other until `stop`, opening the listener again whenever the
/// link goes.
async fn forward(plan: &Plan, mut listener: Listener, stop: &CancellationToken) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = listener.next() => next,
        };
        let lost = match next {
            Ok(event) => match deliver(&plan.forwarder, &listener, &event, stop).await {
                Delivery::Acked => continue,
                Delivery::Stopped => break,
                Delivery::Lost(why) => why,
            },
            Err(e) => e.to_string(),
        };
        eprintln!("{lost}; what was not acked comes again after a reconnect");
        listener.close().await;
        match reopen(&plan.url, &plan.queue, stop).await {
            Some(again) => listener = again,
            None => return stopped(&plan.queue),
        }
    }
    listener.close().await;
    stopped(&plan.queue);
}

fn stopped(queue: &ListenQueue) {
    println!(
        "stopped; events wait in queue {} until the next start",
        queue.name
    );
}

enum Delivery {
    Acked,
    Stopped,
    /// The link went: the event is not acked and comes again.
    Lost(String),
}

/// POSTs `event` until the URL answers 2xx, then acks it. Nothing else is delivered meanwhile
/// (prefetch one), so the event keeps its place at the head of the line.
async fn deliver(
    forwarder: &Forwarder,
    listener: &Listener,
    event: &Incoming,
    stop: &CancellationToken,
) -> Delivery {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return Delivery::Stopped,
            answer = forwarder.post(event) => answer,
        };
        if answer.is_success() {
            println!("{}", line(event, &answer, None));
            return match event.ack().await {
                Ok(()) => Delivery::Acked,
                Err(e) => Delivery::Lost(format!("the ack did not reach the broker ({e})")),
            };
        }
        let delay = backoff.next_delay();
        println!("{}", line(event, &answer, Some(delay)));
        tokio::select! {
            _ = stop.cancelled() => return Delivery::Stopped,
            _ = tokio::time::sleep(delay) => {}
        }
        if !listener.is_open() {
            return Delivery::Lost("the broker closed the channel".into());
        }
    }
}

/// One line per attempt: time, type, tenant, status, milliseconds, and what comes next.
fn line(event: &Incoming, answer: &Answer, retry: Option<Duration>) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let status = match &answer.status {
        Ok(code) => code.to_string(),
        Err(why) => format!("error ({why})"),
    };
    let mut line = format!(
        "{} {} {} {status} {}ms",
        rfc3339_ms(now.max(0) as u64),
        event.event_type,
        event.tenant,
        answer.elapsed.as_millis()
    );
    if event.replay {
        line.push_str(" replay");
    }
    let scheme = event
        .signature
        .as_ref()
        .and_then(|(s, _)| Scheme::from_name(s));
    if scheme.is_none() {
        line.push_str(" unsigned");
    }
    if let Some(delay) = retry {
        line.push_str(&format!(" retry in {:.1}s", delay.as_secs_f64()));
    }
    line
}

/// Opens the listener again, with backoff, until it opens or `stop` is cancelled.
async fn reopen(url: &str, queue: &ListenQueue, stop: &CancellationToken) -> Option<Listener> {
    let mut backoff = Backoff::new(Duration::from_secs(1), RETRY_MAX);
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return None,
            opened = Listener::open(url, queue) => opened,
        };
        match opened {
            Ok(listener) => {
                eprintln!("reconnected to queue {}", queue.name);
                return Some(listener);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                eprintln!("{e}; trying again in {:.1}s", delay.as_secs_f64());
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
