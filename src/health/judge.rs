//! Pure judgements over the minute counts at a given time: a window's status against
//! HighLevel's pause rule, silence, and a burst of signature failures.
//!
//! HighLevel looks at each webhook URL's last 3 days once it received more than 10 000
//! deliveries there, and pauses it after a second look finds under 90 % of them answered 2xx.
//! A shorter window is judged the same way once its volume passes the same rate (10 000 over
//! 72 h is 139 an hour), so that a sudden failure shows within the hour.

use std::time::Duration;

use super::clock::minute_of;
use super::minutes::{Minutes, Totals};
use super::tally::Attempt;

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// What HighLevel's rule counts: more than this many deliveries over [`HIGHLEVEL_SPAN`].
pub const HIGHLEVEL_VOLUME: u64 = 10_000;
pub const HIGHLEVEL_SPAN: Duration = Duration::from_secs(72 * 3600);
/// The success ratio under which HighLevel flags, then pauses, a URL.
pub const HIGHLEVEL_RATIO: f64 = 0.9;

/// The windows `/v1/health` reports, by name.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("1h", Duration::from_secs(3600)),
    ("24h", Duration::from_secs(24 * 3600)),
    ("72h", HIGHLEVEL_SPAN),
];

/// Signature failures within the window below this many never make a burst, whatever their
/// share: two bad requests out of three are a probe, not a key rotation.
pub const SIGNATURE_MIN: u64 = 10;
/// How many earlier days silence compares with, and on how many of them the same hours must
/// have had traffic.
pub const SILENCE_DAYS: u64 = 3;
pub const SILENCE_DAYS_WITH_TRAFFIC: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// The success ratios under which a window is `warning` and `critical`.
#[derive(Clone, Copy, Debug)]
pub struct Margins {
    pub warn: f64,
    pub critical: f64,
}

/// The minutes a window of `span` ending in the minute of `now_ms` covers (that one included).
pub fn span_minutes(now_ms: u64, span: Duration) -> (u64, u64) {
    let last = minute_of(now_ms);
    let n = (span.as_millis() as u64 / MINUTE_MS).max(1);
    (last.saturating_sub(n - 1), last)
}

/// The volume above which a window of `span` is judged: HighLevel's, at the same rate.
pub fn volume_threshold(span: Duration) -> u64 {
    let scaled = HIGHLEVEL_VOLUME as u128 * span.as_millis() / HIGHLEVEL_SPAN.as_millis();
    scaled.max(1) as u64
}

/// A window's status: `ok` until its volume passes the threshold, then by its success ratio.
pub fn judge(totals: &Totals, span: Duration, margins: Margins) -> Status {
    if totals.attempts() <= volume_threshold(span) {
        return Status::Ok;
    }
    match totals.success_ratio() {
        Some(r) if r < margins.critical => Status::Critical,
        Some(r) if r < margins.warn => Status::Warning,
        _ => Status::Ok,
    }
}

/// How silence stands at `now_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    /// Nothing accepted for at least the length asked for.
    pub quiet: bool,
    /// Of the [`SILENCE_DAYS`] days before, those whose same span had an accepted event.
    pub days_with_traffic: usize,
}

impl Silence {
    /// Quiet while the same hours of earlier days were not: what a paused URL looks like.
    pub fn silent(&self) -> bool {
        self.quiet && self.days_with_traffic >= SILENCE_DAYS_WITH_TRAFFIC
    }
}

/// Silence over `length` before `now_ms`, given the last acceptance.
pub fn silence(
    now_ms: u64,
    last_accepted_ms: Option<u64>,
    length: Duration,
    minutes: &Minutes,
) -> Silence {
    let length_ms = length.as_millis() as u64;
    let quiet = now_ms.saturating_sub(last_accepted_ms.unwrap_or(0)) >= length_ms;
    let days_with_traffic = (1..=SILENCE_DAYS)
        .filter(|day| {
            let Some(end) = now_ms.checked_sub(day * DAY_MS) else {
                return false;
            };
            let start = end.saturating_sub(length_ms);
            let totals = minutes.totals(minute_of(start), minute_of(end));
            totals.of(Attempt::Accepted) > 0
        })
        .count();
    Silence {
        quiet,
        days_with_traffic,
    }
}

/// Signature failures make at least `share` of the attempts (and at least [`SIGNATURE_MIN`]).
pub fn signature_burst(totals: &Totals, share: f64) -> bool {
    let failures = totals.signature_failures();
    failures >= SIGNATURE_MIN && failures as f64 >= share * totals.attempts() as f64
}

#[cfg(test)]
mod tests {
    use super::super::minutes::Counts;
    use super::*;

    const MARGINS: Margins = Margins {
        warn: 0.97,
        critical: 0.93,
    };

    fn totals(ok: u64, failed: u64) -> Totals {
        let mut c = Counts::default();
        c[Attempt::Accepted as usize] = ok;
        c[Attempt::OutboxFull as usize] = failed;
        Totals(c)
    }

    #[test]
    fn a_window_is_judged_only_past_highlevels_volume_at_its_rate() {
        let h72 = HIGHLEVEL_SPAN;
        assert_eq!(volume_threshold(h72), 10_000);
        assert_eq!(volume_threshold(Duration::from_secs(3600)), 138);
        // At 10 000 deliveries HighLevel does not look yet, however they went.
        assert_eq!(judge(&totals(0, 10_000), h72, MARGINS), Status::Ok);
        assert_eq!(judge(&totals(9_701, 300), h72, MARGINS), Status::Ok);
        assert_eq!(judge(&totals(9_700, 301), h72, MARGINS), Status::Warning);
        assert_eq!(judge(&totals(9_301, 700), h72, MARGINS), Status::Warning);
        assert_eq!(judge(&totals(9_300, 701), h72, MARGINS), Status::Critical);
        let hour = Duration::from_secs(3600);
        assert_eq!(judge(&totals(0, 138), hour, MARGINS), Status::Ok);
        assert_eq!(judge(&totals(0, 139), hour, MARGINS), Status::Critical);
    }

    #[test]
    fn window_spans_end_in_the_current_minute() {
        let now = 10 * DAY_MS + 30_000;
        let (first, last) = span_minutes(now, Duration::from_secs(3600));
        assert_eq!((last - first + 1, last), (60, minute_of(now)));
    }

    /// Minutes with `n` accepted events in each of `minutes`.
    fn accepted_at(minutes: &[u64]) -> Minutes {
        let mut m = Minutes::default();
        let mut c = Counts::default();
        c[Attempt::Accepted as usize] = 1;
        for minute in minutes {
            m.add(*minute, &c);
        }
        m
    }

    #[test]
    fn silence_needs_quiet_now_and_traffic_at_the_same_hours_on_two_earlier_days() {
        let length = Duration::from_secs(1800);
        let now = 10 * DAY_MS + 12 * 3_600_000;
        let at = |ms: u64| minute_of(ms);
        let day = |d: u64, back_min: u64| at(now - d * DAY_MS - back_min * MINUTE_MS);
        // Busy 10 minutes before "now" yesterday and the day before: a quiet half hour is silence.
        let m = accepted_at(&[day(1, 10), day(2, 10)]);
        let last = Some(now - 31 * MINUTE_MS);
        let s = silence(now, last, length, &m);
        assert_eq!((s.quiet, s.days_with_traffic, s.silent()), (true, 2, true));
        // 29 minutes of quiet are not yet.
        let recent = Some(now - 29 * MINUTE_MS);
        assert!(!silence(now, recent, length, &m).silent());
        // One earlier day with traffic then is not enough: a one-off, not a pattern.
        let once = accepted_at(&[day(1, 10)]);
        assert!(!silence(now, last, length, &once).silent());
        // Traffic outside the same span (an hour earlier) does not count.
        let earlier = accepted_at(&[day(1, 70), day(2, 70), day(3, 70)]);
        assert_eq!(silence(now, last, length, &earlier).days_with_traffic, 0);
        // Never anything accepted, but busy days before: silent too (a URL paused for days).
        let s = silence(now, None, length, &accepted_at(&[day(2, 1), day(3, 29)]));
        assert!(s.silent());
        // The clock advanced into the next day: yesterday's traffic moves along with it.
        let later = now + DAY_MS;
        let m = accepted_at(&[day(0, 10), day(1, 10)]);
        assert!(silence(later, last, length, &m).silent());
    }

    #[test]
    fn a_signature_burst_is_a_share_of_attempts_and_a_few_failures() {
        let burst = |bad: u64, good: u64| {
            let mut c = Counts::default();
            c[Attempt::InvalidSignature as usize] = bad / 2;
            c[Attempt::MissingSignature as usize] = bad - bad / 2;
            c[Attempt::Accepted as usize] = good;
            // Refused, but not for their signature.
            c[Attempt::StaleTimestamp as usize] = 10;
            signature_burst(&Totals(c), 0.1)
        };
        assert!(!burst(9, 0), "fewer than the minimum");
        assert!(burst(10, 0));
        assert!(burst(20, 170), "20 of 200");
        assert!(!burst(20, 171));
    }
}
