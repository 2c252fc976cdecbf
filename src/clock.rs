//! Wall-clock time behind a trait (so limits and budgets can be tested across window
//! boundaries), and UTC calendar arithmetic without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

pub const DAY_MS: u64 = 86_400_000;

/// UTC calendar day number.
pub fn day_id(ms: u64) -> u64 {
    ms / DAY_MS
}

/// UTC calendar month number (`year * 12 + month - 1`).
pub fn month_id(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    (y.max(0) as u64) * 12 + u64::from(m) - 1
}

/// Milliseconds from `ms` to the next UTC midnight / first of the next month.
pub fn until_next_day(ms: u64) -> u64 {
    DAY_MS - ms % DAY_MS
}

/// The first instant (ms) of the UTC month `ms` falls in.
pub fn month_start(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    days_from_civil(y, m, 1).max(0) as u64 * DAY_MS
}

pub fn until_next_month(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((ms / DAY_MS) as i64);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let start = days_from_civil(ny, nm, 1) as u64 * DAY_MS;
    start.saturating_sub(ms)
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds since the epoch of an RFC 3339 time (any offset, any fraction); `None` for
/// anything else or a time before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Howard Hinnant's days-to-civil algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse: days since the epoch for a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_parses_offsets_and_round_trips() {
        let ms = 1_764_633_600_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        assert_eq!(
            parse_rfc3339("2025-12-02T01:00:00+01:00"),
            parse_rfc3339("2025-12-02T00:00:00Z")
        );
        assert_eq!(parse_rfc3339("2025-12-02"), None);
        assert_eq!(parse_rfc3339("1960-01-01T00:00:00Z"), None);
    }

    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for z in [-1000, 0, 59, 365, 11_016, 20_414, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn windows_and_boundaries() {
        let nov_30_late = days_from_civil(2026, 11, 30) as u64 * DAY_MS + DAY_MS - 1;
        assert_eq!(until_next_day(nov_30_late), 1);
        assert_eq!(until_next_month(nov_30_late), 1);
        assert_eq!(month_id(nov_30_late) + 1, month_id(nov_30_late + 1));
        assert_eq!(day_id(nov_30_late) + 1, day_id(nov_30_late + 1));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let dec_31 = days_from_civil(2026, 12, 31) as u64 * DAY_MS;
        assert_eq!(
            until_next_month(dec_31),
            DAY_MS,
            "December rolls into January"
        );
    }
}
