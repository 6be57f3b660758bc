//! Alerts POSTed to `HLGATE_ALERT_WEBHOOK_URL`, in the order they fired, each retried with
//! backoff before the next is sent. The body is an incoming-webhook message (`text`, which
//! Slack, Mattermost and Teams show) with the alert's fields beside it. An alert holds no
//! token, secret or event body, and the URL (whose path is the receiver's secret) is never
//! logged: reqwest's errors are stripped of it.
//!
//! Besides the CLI and the HighLevel client, this is the one file that names reqwest: the
//! receiver is not HighLevel, and this file sends nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::alerts::Fired;
use super::clock::rfc3339;
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Alerts waiting to be sent; past this many (a receiver down for long), new ones are dropped
/// (they are still logged and counted).
const QUEUED: usize = 256;
/// Tries per alert: with the backoff below, about two minutes.
const TRIES: u32 = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The sending end; alerts go out on a task of their own.
pub struct Notifier {
    queue: mpsc::Sender<Fired>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the sender on `tasks`; it stops on `shutdown`, dropping what is still queued.
    pub fn start(
        url: Secret,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Notifier {
        let (queue, receiver) = mpsc::channel(QUEUED);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .build()
            .expect("an HTTP client with timeouts");
        let sender = Sender {
            client,
            url,
            metrics: metrics.clone(),
        };
        tasks.spawn(sender.run(receiver, shutdown));
        Notifier { queue, metrics }
    }

    /// Queues `alert`; never waits.
    pub fn send(&self, alert: &Fired) {
        if self.queue.try_send(alert.clone()).is_err() {
            self.metrics.alert_delivery("dropped");
            warn!(
                alert = alert.kind.as_str(),
                state = alert.state,
                "too many alerts wait for the alert webhook; this one is not sent"
            );
        }
    }
}

/// The JSON an alert is POSTed as.
pub fn payload(alert: &Fired) -> serde_json::Value {
    serde_json::json!({
        "text": alert.text,
        "alert": alert.kind.as_str(),
        "state": alert.state,
        "severity": alert.severity.as_str(),
        "at": rfc3339(alert.at_ms),
        "details": alert.details,
    })
}

struct Sender {
    client: reqwest::Client,
    url: Secret,
    metrics: Arc<Metrics>,
}

/// How one try ended.
enum Tried {
    Sent,
    /// Worth another try: no answer, 408, 429, 5xx.
    Again(String),
    /// The receiver refuses it for good (another 4xx): a wrong URL, not a passing fault.
    Refused(u16),
}

impl Sender {
    async fn run(self, mut receiver: mpsc::Receiver<Fired>, shutdown: CancellationToken) {
        loop {
            let alert = tokio::select! {
                alert = receiver.recv() => alert,
                () = shutdown.cancelled() => None,
            };
            let Some(alert) = alert else { return };
            if !self.deliver(&alert, &shutdown).await {
                return;
            }
        }
    }

    /// Sends one alert with its retries; false when the shutdown came first.
    async fn deliver(&self, alert: &Fired, shutdown: &CancellationToken) -> bool {
        let body = payload(alert);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let (name, state) = (alert.kind.as_str(), alert.state);
        for attempt in 1..=TRIES {
            let why = match self.try_once(&body).await {
                Tried::Sent => {
                    self.metrics.alert_delivery("sent");
                    return true;
                }
                Tried::Refused(status) => {
                    self.metrics.alert_delivery("failed");
                    error!(
                        alert = name,
                        state, status, "the alert webhook refused an alert"
                    );
                    return true;
                }
                Tried::Again(why) => why,
            };
            if attempt == TRIES {
                break;
            }
            self.metrics.alert_delivery("retried");
            warn!(alert = name, state, attempt, error = %why, "alert not delivered; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = shutdown.cancelled() => return false,
            }
        }
        self.metrics.alert_delivery("failed");
        error!(
            alert = name,
            state,
            tries = TRIES,
            "the alert webhook could not be reached; giving up on this alert"
        );
        true
    }

    async fn try_once(&self, body: &serde_json::Value) -> Tried {
        let sent = self.client.post(self.url.expose()).json(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => Tried::Sent,
            Ok(r) => {
                let status = r.status().as_u16();
                if matches!(status, 408 | 429) || status >= 500 {
                    Tried::Again(format!("the receiver answered {status}"))
                } else {
                    Tried::Refused(status)
                }
            }
            Err(e) => Tried::Again(e.without_url().to_string()),
        }
    }
}
