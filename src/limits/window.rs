//! A sliding-window counter over one-minute buckets.

use std::time::Duration;

const MINUTE_MS: u64 = 60_000;

/// Counts in the current and the previous minute. The estimate of the last 60 s is the current
/// minute plus the previous one weighted by the part of it still inside the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub minute: u64,
    pub prev: f64,
    pub curr: f64,
}

impl Window {
    fn roll(&mut self, now_ms: u64) {
        let m = now_ms / MINUTE_MS;
        if m == self.minute {
            return;
        }
        self.prev = if m == self.minute + 1 { self.curr } else { 0.0 };
        self.curr = 0.0;
        self.minute = m;
    }

    fn fraction_left(now_ms: u64) -> f64 {
        1.0 - (now_ms % MINUTE_MS) as f64 / MINUTE_MS as f64
    }

    pub fn estimate(&mut self, now_ms: u64) -> f64 {
        self.roll(now_ms);
        self.prev * Self::fraction_left(now_ms) + self.curr
    }

    /// Adds `v` (negative to give back an unused reservation).
    pub fn add(&mut self, now_ms: u64, v: f64) {
        self.roll(now_ms);
        self.curr = (self.curr + v).max(0.0);
    }

    /// Adjusts the bucket of the minute that started at `at_ms` (a reservation being settled):
    /// the current or previous minute; older buckets have left the window already.
    pub fn adjust_at(&mut self, now_ms: u64, at_ms: u64, v: f64) {
        self.roll(now_ms);
        let m = at_ms / MINUTE_MS;
        if m == self.minute {
            self.curr = (self.curr + v).max(0.0);
        } else if m + 1 == self.minute {
            self.prev = (self.prev + v).max(0.0);
        }
    }

    /// `self += file - base` for the file's current minute (refunds included), where `base` is
    /// the same window as another writer last left it: what that writer counted since. A window
    /// still in an older minute is rolled forward first; one already past it is left alone.
    pub fn merge_delta(&mut self, base: Window, file: Window) {
        let base_curr = if base.minute == file.minute {
            base.curr
        } else {
            0.0
        };
        let delta = file.curr - base_curr;
        if delta != 0.0 && self.minute <= file.minute {
            self.add(file.minute * MINUTE_MS, delta);
        }
    }

    /// Whether nothing counted here is inside the last minute any more.
    pub fn expired(&self, now_ms: u64) -> bool {
        (self.prev == 0.0 && self.curr == 0.0) || self.minute + 1 < now_ms / MINUTE_MS
    }

    /// How long until `cost` more fits under `limit`.
    pub fn wait_for(&mut self, now_ms: u64, limit: f64, cost: f64) -> Duration {
        self.roll(now_ms);
        let room = limit - cost;
        if self.prev * Self::fraction_left(now_ms) + self.curr <= room {
            return Duration::ZERO;
        }
        let into = (now_ms % MINUTE_MS) as f64;
        let to_next = MINUTE_MS as f64 - into;
        // within this minute the previous bucket decays: prev * (1 - t/60s) + curr <= room
        if self.curr <= room && self.prev > 0.0 {
            let t = (1.0 - (room - self.curr) / self.prev) * MINUTE_MS as f64;
            return Duration::from_millis((t - into).max(1.0).ceil() as u64);
        }
        if room <= 0.0 {
            return Duration::from_millis((to_next + MINUTE_MS as f64) as u64);
        }
        // next minute, this minute's count becomes the decaying previous bucket
        let t = if self.curr > 0.0 {
            (1.0 - room / self.curr).max(0.0) * MINUTE_MS as f64
        } else {
            0.0
        };
        Duration::from_millis((to_next + t).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_slides_instead_of_resetting() {
        let mut w = Window::default();
        let t0 = 10 * MINUTE_MS;
        w.add(t0, 60.0);
        assert_eq!(w.estimate(t0 + 59_999), 60.0);
        assert!(
            (w.estimate(t0 + MINUTE_MS) - 60.0).abs() < 1e-9,
            "no reset at the edge"
        );
        assert!(
            (w.estimate(t0 + MINUTE_MS + 30_000) - 30.0).abs() < 1e-9,
            "half decayed"
        );
        assert_eq!(
            w.estimate(t0 + 3 * MINUTE_MS),
            0.0,
            "two minutes later: gone"
        );
    }

    #[test]
    fn wait_for_predicts_when_the_estimate_fits() {
        let mut w = Window::default();
        let t0 = 10 * MINUTE_MS;
        w.add(t0, 10.0);
        assert_eq!(w.wait_for(t0, 11.0, 1.0), Duration::ZERO);
        let wait = w.wait_for(t0, 10.0, 1.0);
        let later = t0 + wait.as_millis() as u64;
        assert!(
            w.estimate(later) + 1.0 <= 10.0 + 1e-9,
            "fits after the wait"
        );
        assert!(w.estimate(later - 50) + 1.0 > 10.0, "and not much before");
    }

    #[test]
    fn settlement_lands_in_the_reservations_minute() {
        let mut w = Window::default();
        let t0 = 10 * MINUTE_MS + 50_000;
        w.add(t0, 1000.0);
        let later = t0 + 20_000; // the next minute
        w.add(later, 500.0); // someone else's tokens
        w.adjust_at(later, t0, -900.0);
        assert_eq!(
            (w.prev, w.curr),
            (100.0, 500.0),
            "the refund leaves others' counts alone"
        );
        w.adjust_at(later + 2 * MINUTE_MS, t0, -50.0);
        assert_eq!(w.estimate(later + 2 * MINUTE_MS), 0.0, "too old to matter");
    }

    #[test]
    fn giving_back_never_goes_negative() {
        let mut w = Window::default();
        w.add(0, 5.0);
        w.add(0, -10.0);
        assert_eq!(w.estimate(0), 0.0);
    }

    #[test]
    fn another_writers_minute_merges_with_refunds_and_rolls_an_older_window_forward() {
        let at = |minute: u64, curr: f64| Window {
            minute,
            prev: 0.0,
            curr,
        };
        let mut mine = at(5, 12.0);
        mine.merge_delta(at(5, 10.0), at(5, 7.0)); // the other writer refunded 3
        assert_eq!(mine.curr, 9.0);
        let mut old = at(4, 6.0);
        old.merge_delta(at(4, 1.0), at(5, 2.0)); // its base is a minute behind: all 2 are new
        assert_eq!((old.minute, old.prev, old.curr), (5, 6.0, 2.0));
        let mut ahead = at(6, 1.0);
        ahead.merge_delta(Window::default(), at(5, 2.0));
        assert_eq!(
            ahead.curr, 1.0,
            "a minute that already passed here is not merged"
        );
    }
}
