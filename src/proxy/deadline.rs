//! The upstream time limits of one request (first byte, idle gap, total) and the shutdown's
//! end of the grace period, as one deadline that moves as the exchange goes on.

use std::time::Instant;

use parking_lot::Mutex;

use crate::errors::GatewayError;

/// Which upstream time limit a deadline stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    FirstByte,
    Idle,
    Total,
    /// Not a timeout of the upstream's: the shutdown grace period ended.
    Shutdown,
}

impl TimeoutKind {
    /// The client-facing error for a request this limit ended.
    pub fn error(self) -> GatewayError {
        match self {
            Self::FirstByte => GatewayError::FirstByteTimeout,
            Self::Idle => GatewayError::IdleTimeout,
            Self::Total => GatewayError::TotalTimeout,
            Self::Shutdown => GatewayError::ShuttingDown,
        }
    }
}

/// The limit in force now, and the one that ended the request if one did.
pub struct Deadline {
    at: Mutex<(Instant, TimeoutKind)>,
    fired: Mutex<Option<TimeoutKind>>,
}

impl Deadline {
    /// Only the total limit, at `total_at`, until an attempt arms another.
    pub fn new(total_at: Instant) -> Self {
        Self {
            at: Mutex::new((total_at, TimeoutKind::Total)),
            fired: Mutex::new(None),
        }
    }

    /// Arms `kind` at `at`, unless the total limit `total_at` comes first.
    pub fn arm(&self, kind: TimeoutKind, at: Instant, total_at: Instant) {
        *self.at.lock() = if at < total_at {
            (at, kind)
        } else {
            (total_at, TimeoutKind::Total)
        };
    }

    pub fn current(&self) -> (Instant, TimeoutKind) {
        *self.at.lock()
    }

    pub fn fire(&self, kind: TimeoutKind) {
        *self.fired.lock() = Some(kind);
    }

    /// The limit that ended the request, if one did.
    pub fn fired(&self) -> Option<TimeoutKind> {
        *self.fired.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_total_limit_wins_when_it_comes_first() {
        let t0 = Instant::now();
        let d = Deadline::new(t0 + Duration::from_secs(10));
        d.arm(
            TimeoutKind::FirstByte,
            t0 + Duration::from_secs(2),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(d.current().1, TimeoutKind::FirstByte);
        d.arm(
            TimeoutKind::Idle,
            t0 + Duration::from_secs(20),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            d.current(),
            (t0 + Duration::from_secs(10), TimeoutKind::Total)
        );
        assert_eq!(d.fired(), None);
        d.fire(TimeoutKind::Total);
        assert_eq!(d.fired(), Some(TimeoutKind::Total));
        assert_eq!(TimeoutKind::Shutdown.error(), GatewayError::ShuttingDown);
    }
}
