//! Refusals: which limit said no, the OpenAI error for it, and the `x-ratelimit-*` values.

use std::time::Duration;

use crate::errors::GatewayError;

/// Which limit refused a request (also the `limit` label of `llmedge_ratelimited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rpm,
    Tpm,
    Concurrency,
    BudgetDay,
    BudgetMonth,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::Concurrency => "concurrency",
            Self::BudgetDay => "budget_day",
            Self::BudgetMonth => "budget_month",
        }
    }
}

/// A refusal: which limit, on which scope (`tenant acme`, `key 3`), and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    pub kind: LimitKind,
    pub scope: String,
    pub limit: f64,
    pub retry_after: Duration,
    pub headers: RateHeaders,
}

impl Denied {
    /// The OpenAI-shaped error for this refusal.
    pub fn to_error(&self) -> GatewayError {
        let (kind, what) = match self.kind {
            LimitKind::Rpm => ("requests", "requests per min (RPM)"),
            LimitKind::Tpm => ("tokens", "tokens per min (TPM)"),
            LimitKind::Concurrency => ("requests", "concurrent requests"),
            LimitKind::BudgetDay | LimitKind::BudgetMonth => {
                let window = if self.kind == LimitKind::BudgetDay {
                    "daily"
                } else {
                    "monthly"
                };
                return GatewayError::QuotaExceeded {
                    window,
                    scope: self.scope.clone(),
                    limit: format!("{:.2}", self.limit),
                };
            }
        };
        GatewayError::RateLimited {
            kind,
            what,
            scope: self.scope.clone(),
            limit: self.limit as u64,
            retry: fmt_reset(self.retry_after),
            retry_after_ms: self.retry_after.as_millis() as u64,
        }
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn fmt_reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// OpenAI's `x-ratelimit-*` values for the most constrained request and token limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    pub requests: Option<HeaderTrio>,
    pub tokens: Option<HeaderTrio>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeaderTrio {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}
