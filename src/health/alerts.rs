//! Alerts are transitions, not levels: each alert's condition is read at every evaluation, and
//! a change from what was last sent is sent once. A change within the hold-down of the last one
//! sent for the same alert waits for the hold-down's end and is sent only if it still holds,
//! so a condition that flaps sends its first change and then at most one a hold-down.

use serde_json::Value;

/// The alerts, in evaluation order (`hlgate_alerts_total{alert}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The worst window's status: 0 ok, 1 warning, 2 critical.
    Success,
    Silence,
    SignatureFailures,
    OutboxAge,
    BrokerDisconnected,
    /// 0 ok, 1 unwritable, 2 stopped (a failed fsync), 3 damaged.
    Store,
    /// The number of tenants in `needs_reauth`: a rise is news, a fall is not (but to none).
    NeedsReauth,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Success,
        Kind::Silence,
        Kind::SignatureFailures,
        Kind::OutboxAge,
        Kind::BrokerDisconnected,
        Kind::Store,
        Kind::NeedsReauth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Success => "success",
            Kind::Silence => "silence",
            Kind::SignatureFailures => "signature_failures",
            Kind::OutboxAge => "outbox_age",
            Kind::BrokerDisconnected => "broker_disconnected",
            Kind::Store => "store",
            Kind::NeedsReauth => "needs_reauth",
        }
    }

    /// The name of a change to `level`.
    fn state(self, level: u64) -> &'static str {
        match (self, level) {
            (Kind::Success | Kind::Store, 0) => "recovered",
            (Kind::Success, 1) => "warning",
            (Kind::Success, _) => "critical",
            (Kind::Store, 1) => "unwritable",
            (Kind::Store, 2) => "stopped",
            (Kind::Store, _) => "damaged",
            (Kind::NeedsReauth, 0) => "cleared",
            (Kind::NeedsReauth, _) => "new",
            (_, 0) => "ended",
            (_, _) => "started",
        }
    }

    fn severity(self, level: u64) -> Severity {
        match (self, level) {
            (_, 0) => Severity::Resolved,
            (Kind::Success, 1) | (Kind::OutboxAge | Kind::BrokerDisconnected, _) => {
                Severity::Warning
            }
            (Kind::NeedsReauth, _) => Severity::Warning,
            _ => Severity::Critical,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
    /// A condition that ended.
    Resolved,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Resolved => "resolved",
        }
    }
}

/// An alert's condition as read now.
#[derive(Debug)]
pub struct Reading {
    pub kind: Kind,
    /// 0 is quiet; see [`Kind`] for the others.
    pub level: u64,
    /// What holds now, in a few words, for people.
    pub summary: String,
    /// The same for machines; never a token, secret or event body.
    pub details: Value,
}

/// An alert to log, count and send.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub kind: Kind,
    pub state: &'static str,
    pub severity: Severity,
    pub text: String,
    pub details: Value,
    pub at_ms: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Track {
    /// The level last sent; `None` before the first reading of a baseline alert.
    reported: Option<u64>,
    sent_at: Option<u64>,
    /// When the reported level began (for `/v1/health`).
    since: u64,
}

/// Every alert's last sent level.
#[derive(Debug)]
pub struct Alerts {
    tracks: [Track; Kind::ALL.len()],
    hold_down_ms: u64,
}

impl Alerts {
    pub fn new(hold_down_ms: u64) -> Alerts {
        let mut tracks = [Track::default(); Kind::ALL.len()];
        for (track, kind) in tracks.iter_mut().zip(Kind::ALL) {
            // Tenants already in `needs_reauth` at a start are not news.
            if kind != Kind::NeedsReauth {
                track.reported = Some(0);
            }
        }
        Alerts {
            tracks,
            hold_down_ms,
        }
    }

    /// The alerts `readings` make at `now_ms`, in their order.
    pub fn evaluate(&mut self, now_ms: u64, readings: Vec<Reading>) -> Vec<Fired> {
        let mut fired = Vec::new();
        for reading in readings {
            let hold_down_ms = self.hold_down_ms;
            let track = &mut self.tracks[reading.kind as usize];
            let Some(reported) = track.reported else {
                track.reported = Some(reading.level);
                continue;
            };
            let level = reading.level;
            let news = match reading.kind {
                Kind::NeedsReauth if level > 0 && level < reported => {
                    // Fewer, but some: quietly the new baseline for the next rise.
                    track.reported = Some(level);
                    false
                }
                Kind::NeedsReauth => level > reported || (level == 0 && reported > 0),
                _ => level != reported,
            };
            let held = track
                .sent_at
                .is_some_and(|sent| now_ms.saturating_sub(sent) < hold_down_ms);
            if !news || held {
                continue;
            }
            let (kind, state) = (reading.kind, reading.kind.state(level));
            *track = Track {
                reported: Some(level),
                sent_at: Some(now_ms),
                since: now_ms,
            };
            fired.push(Fired {
                kind,
                state,
                severity: kind.severity(level),
                text: format!("hlgate: {} {state}: {}", kind.as_str(), reading.summary),
                details: reading.details,
                at_ms: now_ms,
            });
        }
        fired
    }

    /// The alerts whose last sent change was not a recovery: name, state and since when.
    pub fn active(&self) -> Vec<(Kind, &'static str, u64)> {
        Kind::ALL
            .into_iter()
            .zip(&self.tracks)
            .filter_map(|(kind, t)| match t.reported {
                Some(level) if level > 0 && t.sent_at.is_some() => {
                    Some((kind, kind.state(level), t.since))
                }
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: u64 = 600_000;

    fn read(kind: Kind, level: u64) -> Reading {
        Reading {
            kind,
            level,
            summary: format!("level {level}"),
            details: serde_json::json!({ "level": level }),
        }
    }

    fn states(fired: &[Fired]) -> Vec<(&'static str, &'static str)> {
        fired.iter().map(|f| (f.kind.as_str(), f.state)).collect()
    }

    #[test]
    fn each_change_is_sent_once_in_order() {
        let mut alerts = Alerts::new(0);
        let quiet = || vec![read(Kind::Success, 0), read(Kind::Silence, 0)];
        assert!(alerts.evaluate(0, quiet()).is_empty());
        let fired = alerts.evaluate(1, vec![read(Kind::Success, 1), read(Kind::Silence, 1)]);
        assert_eq!(
            states(&fired),
            [("success", "warning"), ("silence", "started")]
        );
        assert_eq!(fired[0].severity, Severity::Warning);
        assert_eq!(fired[1].severity, Severity::Critical);
        assert_eq!(fired[0].text, "hlgate: success warning: level 1");
        // The same levels again: nothing.
        let again = vec![read(Kind::Success, 1), read(Kind::Silence, 1)];
        assert!(alerts.evaluate(2, again).is_empty());
        let fired = alerts.evaluate(3, vec![read(Kind::Success, 2), read(Kind::Silence, 0)]);
        assert_eq!(
            states(&fired),
            [("success", "critical"), ("silence", "ended")]
        );
        assert_eq!(fired[1].severity, Severity::Resolved);
        assert_eq!(alerts.active(), [(Kind::Success, "critical", 3)]);
        let fired = alerts.evaluate(4, vec![read(Kind::Success, 0)]);
        assert_eq!(states(&fired), [("success", "recovered")]);
        assert!(alerts.active().is_empty());
    }

    #[test]
    fn flapping_within_the_hold_down_sends_the_first_change_and_then_what_holds() {
        let mut alerts = Alerts::new(HOLD);
        let burst = |level| vec![read(Kind::SignatureFailures, level)];
        assert_eq!(alerts.evaluate(1_000, burst(1)).len(), 1);
        // Off and on again within the hold-down: nothing is sent.
        for (t, level) in [(2_000, 0), (3_000, 1), (4_000, 0), (5_000, 1)] {
            assert!(alerts.evaluate(t, burst(level)).is_empty(), "at {t}");
        }
        // Past the hold-down it still holds: still nothing, it was sent.
        assert!(alerts.evaluate(HOLD + 2_000, burst(1)).is_empty());
        // A change past the hold-down goes at once, and starts a new one.
        let fired = alerts.evaluate(HOLD + 3_000, burst(0));
        assert_eq!(states(&fired), [("signature_failures", "ended")]);
        assert!(alerts.evaluate(HOLD + 4_000, burst(1)).is_empty());
        // A change deferred by the hold-down is sent at its end when it still holds.
        let fired = alerts.evaluate(2 * HOLD + 3_000, burst(1));
        assert_eq!(states(&fired), [("signature_failures", "started")]);
    }

    #[test]
    fn tenants_newly_in_needs_reauth_are_news_and_those_at_start_are_not() {
        let mut alerts = Alerts::new(0);
        let reauth = |n| vec![read(Kind::NeedsReauth, n)];
        assert!(alerts.evaluate(0, reauth(4)).is_empty(), "the baseline");
        assert!(alerts.active().is_empty());
        let fired = alerts.evaluate(1, reauth(6));
        assert_eq!(states(&fired), [("needs_reauth", "new")]);
        assert_eq!(fired[0].severity, Severity::Warning);
        // Fewer (one installed again): no alert, but the next rise counts from there.
        assert!(alerts.evaluate(2, reauth(5)).is_empty());
        assert_eq!(alerts.evaluate(3, reauth(6)).len(), 1);
        let fired = alerts.evaluate(4, reauth(0));
        assert_eq!(states(&fired), [("needs_reauth", "cleared")]);
    }

    #[test]
    fn store_levels_have_their_names() {
        let mut alerts = Alerts::new(0);
        let store = |n| vec![read(Kind::Store, n)];
        assert_eq!(
            states(&alerts.evaluate(0, store(3))),
            [("store", "damaged")]
        );
        assert_eq!(
            states(&alerts.evaluate(1, store(2))),
            [("store", "stopped")]
        );
        assert_eq!(
            states(&alerts.evaluate(1, store(1))),
            [("store", "unwritable")]
        );
        assert_eq!(
            states(&alerts.evaluate(2, store(0))),
            [("store", "recovered")]
        );
    }
}
