//! Telling a broker outage from one entry the broker refuses.
//!
//! A broker that refuses one message (a frame over its limit, a header it cannot take) closes the
//! channel or the connection, and the relay would publish that entry first again after every
//! reconnect: nothing behind it would ever go. So when the link breaks, the entries that were in
//! flight go again one at a time, each confirmed before the next; an entry that is alone in flight
//! when the link breaks, again and again, is diverted to the quarantine queue with its body intact.

/// Breaks in a row with the same oldest unconfirmed entry, the last ones with it alone in
/// flight, after which that entry is quarantined. A first break in a pipelined window may be
/// any entry's doing; two more with the entry alone are its own.
const STRIKES: u32 = 3;

/// What the relay remembers of the breaks of its link.
#[derive(Debug, Default)]
pub struct Suspect {
    /// The oldest unconfirmed seq at the last break.
    seq: u64,
    /// Breaks in a row with `seq` the oldest unconfirmed and in flight.
    strikes: u32,
    /// Why the link broke last.
    why: String,
    /// Entries up to this seq go one at a time: they were in flight when the link broke.
    careful_through: u64,
}

impl Suspect {
    /// Records a break: `oldest` was the oldest unconfirmed seq in flight (0: none),
    /// `handed_through` the last seq handed to the broker.
    pub fn broke(&mut self, oldest: u64, handed_through: u64, why: &str) {
        self.careful_through = self.careful_through.max(handed_through);
        if oldest == 0 || handed_through < oldest {
            // Nothing was in flight: the link broke on its own.
            return;
        }
        if oldest == self.seq {
            self.strikes += 1;
        } else {
            self.seq = oldest;
            self.strikes = 1;
        }
        self.why = why.to_string();
    }

    /// Whether entry `seq` must go alone: it was in flight when the link broke.
    pub fn careful(&self, seq: u64) -> bool {
        seq <= self.careful_through
    }

    /// The entry to quarantine and why, when one has broken the link often enough alone. The
    /// relay diverts it only if it is still unconfirmed.
    pub fn poisoned(&self) -> Option<(u64, &str)> {
        (self.strikes >= STRIKES).then_some((self.seq, &self.why))
    }

    /// The oldest unconfirmed entry was confirmed or quarantined: its strikes are over.
    pub fn cleared(&mut self) {
        self.strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_repeated_breaks_on_the_same_oldest_entry_make_it_poison() {
        let mut s = Suspect::default();
        s.broke(5, 900, "frame");
        assert!(s.careful(5) && s.careful(900) && !s.careful(901));
        assert_eq!(s.poisoned(), None);
        s.broke(5, 5, "frame");
        assert_eq!(s.poisoned(), None);
        s.broke(5, 5, "frame too large");
        assert_eq!(s.poisoned(), Some((5, "frame too large")));
        s.cleared();
        assert_eq!(s.poisoned(), None);
    }

    #[test]
    fn a_new_oldest_entry_starts_over_and_idle_breaks_do_not_count() {
        let mut s = Suspect::default();
        s.broke(5, 5, "a");
        s.broke(5, 5, "a");
        s.broke(6, 6, "b");
        s.broke(7, 6, "idle");
        assert_eq!(s.poisoned(), None);
        s.broke(6, 6, "b");
        s.broke(6, 6, "b");
        assert_eq!(s.poisoned(), Some((6, "b")));
        s.cleared();
        assert_eq!(s.poisoned(), None);
    }
}
