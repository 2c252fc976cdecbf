//! Backend health: active-check thresholds, passive ejection with growing cooldown, and
//! `Retry-After` holds. Pure: time is passed in.

use std::time::{Duration, Instant};

use crate::config::HealthConfig;

/// First passive-ejection cooldown; each repeat doubles it up to [`MAX_COOLDOWN`].
pub const BASE_COOLDOWN: Duration = Duration::from_secs(1);
pub const MAX_COOLDOWN: Duration = Duration::from_secs(60);
/// The longest `Retry-After` from a backend that is honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Verdict of the active checks (true until checks say otherwise).
    down: bool,
    ok_streak: u32,
    fail_streak: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    hold_until: Option<Instant>,
}

impl Health {
    /// Whether new requests may go to the backend. With active checks, an ejected backend
    /// returns only after its cooldown and a successful check; without, when the cooldown ends.
    pub fn available(&self, now: Instant, active_checks: bool) -> bool {
        !self.down && !self.ejected(now, active_checks) && !self.held(now)
    }

    /// Usable as a last resort: not failed by active checks and not asked to back off.
    pub fn usable_in_panic(&self, now: Instant) -> bool {
        !self.down && !self.held(now)
    }

    /// Up for `llmedge_backend_up`: checks pass and not ejected.
    pub fn up(&self, now: Instant, active_checks: bool) -> bool {
        !self.down && !self.ejected(now, active_checks)
    }

    fn ejected(&self, now: Instant, active_checks: bool) -> bool {
        match self.ejected_until {
            None => false,
            Some(_) if active_checks => true,
            Some(t) => now < t,
        }
    }

    /// How long the backend's own `Retry-After` still holds it, if it does.
    pub fn held_for(&self, now: Instant) -> Option<Duration> {
        self.hold_until
            .filter(|&t| now < t)
            .map(|t| t.saturating_duration_since(now))
    }

    fn held(&self, now: Instant) -> bool {
        self.hold_until.is_some_and(|t| now < t)
    }

    /// Records an active check result.
    pub fn on_check(&mut self, ok: bool, now: Instant, cfg: &HealthConfig) {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if self.down && self.ok_streak >= cfg.healthy_after {
                self.down = false;
            }
            if self.ejected_until.is_some_and(|t| now >= t) {
                self.ejected_until = None;
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if !self.down && self.fail_streak >= cfg.unhealthy_after {
                self.down = true;
            }
        }
    }

    /// Active checks were turned off: their verdict no longer applies.
    pub fn clear_active(&mut self) {
        self.down = false;
        self.ok_streak = 0;
        self.fail_streak = 0;
    }

    /// A live request failed in a way that blames the backend (connect error, 5xx, timeout).
    pub fn eject(&mut self, now: Instant) -> Duration {
        self.ejections = self.ejections.saturating_add(1);
        let factor = 1u32 << (self.ejections - 1).min(6);
        let cooldown = (BASE_COOLDOWN * factor).min(MAX_COOLDOWN);
        self.ejected_until = Some(now + cooldown);
        cooldown
    }

    /// A live request succeeded: the backend's ejection history is forgiven.
    pub fn on_success(&mut self) {
        if self.ejected_until.is_none() {
            self.ejections = 0;
        }
    }

    /// The backend answered 429: leave it alone for `retry_after` (capped).
    pub fn hold(&mut self, now: Instant, retry_after: Duration) {
        let until = now + retry_after.min(MAX_RETRY_AFTER);
        self.hold_until = Some(self.hold_until.map_or(until, |t| t.max(until)));
    }
}

/// Parses `Retry-After` in delay-seconds form (the form LLM providers send).
pub fn parse_retry_after(v: Option<&[u8]>) -> Option<Duration> {
    let s = std::str::from_utf8(v?).ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let secs = s
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)?;
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_RETRY_AFTER, |d| d.min(MAX_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }

    #[test]
    fn thresholds_flip_the_active_verdict() {
        let (c, now) = (cfg(), Instant::now());
        let mut h = Health::default();
        assert!(h.available(now, true), "backends start up");
        h.on_check(false, now, &c);
        assert!(
            h.available(now, true),
            "one failure is below unhealthy_after"
        );
        h.on_check(false, now, &c);
        assert!(!h.available(now, true));
        h.on_check(true, now, &c);
        assert!(h.available(now, true), "healthy_after = 1");
    }

    #[test]
    fn ejection_cooldown_grows_and_needs_a_check_when_checks_exist() {
        let (c, t0) = (cfg(), Instant::now());
        let mut h = Health::default();
        assert_eq!(h.eject(t0), Duration::from_secs(1));
        assert!(!h.available(t0, false));
        assert!(
            h.available(t0 + Duration::from_secs(1), false),
            "no checks: back after cooldown"
        );
        assert!(
            !h.available(t0 + Duration::from_secs(5), true),
            "checks: waits for one"
        );
        h.on_check(true, t0 + Duration::from_millis(500), &c);
        assert!(
            !h.available(t0 + Duration::from_secs(5), true),
            "a check inside the cooldown does not count"
        );
        h.on_check(true, t0 + Duration::from_secs(2), &c);
        assert!(h.available(t0 + Duration::from_secs(2), true));
        assert_eq!(h.eject(t0), Duration::from_secs(2), "repeat doubles");
        assert_eq!(h.eject(t0), Duration::from_secs(4));
        for _ in 0..10 {
            h.eject(t0);
        }
        assert_eq!(h.eject(t0), MAX_COOLDOWN);
        assert!(h.usable_in_panic(t0), "ejected but not down: last resort");
    }

    #[test]
    fn success_resets_the_cooldown_growth() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.eject(t0);
        h.on_check(true, t0 + Duration::from_secs(2), &cfg());
        h.on_success();
        assert_eq!(h.eject(t0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_holds_the_backend() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.hold(t0, Duration::from_secs(3));
        assert!(!h.available(t0 + Duration::from_secs(2), false));
        assert!(!h.usable_in_panic(t0));
        assert!(h.available(t0 + Duration::from_secs(3), false));
        h.hold(t0, Duration::from_secs(3600));
        assert!(h.available(t0 + MAX_RETRY_AFTER, false), "capped");
        assert_eq!(parse_retry_after(Some(b"7")), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(Some(b"0.5")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(Some(b"Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(
            parse_retry_after(Some(b"1e20")),
            Some(MAX_RETRY_AFTER),
            "no panic, capped"
        );
    }
}
