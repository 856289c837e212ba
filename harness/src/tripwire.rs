//! A power cut at a log line where the harness throws the switch (QEMU, a bench's power
//! commands): the thread that reads the device's log throws it the moment a line matches, while
//! the runner may be busy with an upload. What the device prints after that line is timing, not
//! behaviour, and is dropped by the reader.

use regex::Regex;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Tripwire {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pattern: Option<Regex>,
    /// The line that tripped it, until the device is powered again.
    fired: Option<String>,
    /// Whether the device's owner has taken that line (it is taken once).
    taken: bool,
}

impl Tripwire {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn arm(&self, pattern: Regex) {
        *self.state() = State { pattern: Some(pattern), fired: None, taken: false };
    }

    pub fn disarm(&self) {
        self.state().pattern = None;
    }

    /// For the reader, on each line: whether this line trips the wire (once).
    pub fn trips(&self, line: &str) -> bool {
        let mut s = self.state();
        if s.pattern.as_ref().is_some_and(|p| p.is_match(line)) {
            s.pattern = None;
            s.fired = Some(line.to_string());
            s.taken = false;
            return true;
        }
        false
    }

    /// The device is powered again: whatever tripped before is over (the pattern stays armed).
    pub fn clear_fired(&self) {
        let mut s = self.state();
        s.fired = None;
        s.taken = false;
    }

    /// Whether the wire has tripped and the reader has stopped passing lines on (until the
    /// device is powered again: the switch may take a while to cut, and what the device prints
    /// meanwhile is timing, not behaviour).
    pub fn tripped(&self) -> bool {
        self.state().fired.is_some()
    }

    /// For the owner, on each line it takes from the reader: whether it is the line that
    /// tripped the wire. It is taken once; the reader keeps dropping lines until
    /// [`Tripwire::clear_fired`].
    pub fn take_if_tripped_by(&self, line: &str) -> bool {
        let mut s = self.state();
        if !s.taken && s.fired.as_deref() == Some(line) {
            s.taken = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_once_at_the_first_match_and_is_taken_by_that_line() {
        let t = Tripwire::default();
        assert!(!t.trips("I (1) ota: progress 50%"), "not armed");
        t.arm(Regex::new("progress 50%").unwrap());
        assert!(!t.trips("I (1) ota: progress 25%"));
        assert!(t.trips("I (2) ota: progress 50%"));
        assert!(t.tripped());
        assert!(!t.trips("I (3) ota: progress 50%"), "once");
        assert!(!t.take_if_tripped_by("I (1) ota: progress 25%"), "an earlier line still queued");
        assert!(t.take_if_tripped_by("I (2) ota: progress 50%"));
        assert!(!t.take_if_tripped_by("I (2) ota: progress 50%"), "taken once");
        assert!(t.tripped(), "lines are dropped until the device is powered again");
        t.clear_fired();
        assert!(!t.tripped());
        t.arm(Regex::new("x").unwrap());
        t.disarm();
        assert!(!t.trips("x"));
    }
}
