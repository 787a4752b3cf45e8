//! Wall-clock helpers: timestamps travel as Unix milliseconds and are shown to
//! operators as UTC in a fixed, sortable format.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time an input happened: monotonic for deadlines, wall-clock (Unix
/// milliseconds) for what operators are shown. The loops read it once per
/// pass and hand it to their cores, which never read a clock themselves.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub ms: u64,
}

impl Now {
    /// The current time.
    pub fn real() -> Now {
        Now {
            at: Instant::now(),
            ms: now_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `2026-11-25 07:56:55` (UTC) for a Unix-millisecond timestamp.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Same as `format_utc`, with milliseconds, for log lines.
pub fn format_utc_precise(ms: u64) -> String {
    format!("{}.{:03}", format_utc(ms), ms % 1000)
}

/// A duration as seconds with millisecond precision: `1.250s`.
pub fn format_secs(d: f64) -> String {
    format!("{d:.3}s")
}

/// Seconds as a `Duration`, for intervals read from configuration.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// Howard Hinnant's days-to-civil algorithm: days since 1970-01-01 to (y, m, d).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_795_593_415_000), "2026-11-25 07:56:55");
        assert_eq!(
            format_utc_precise(1_795_593_415_042),
            "2026-11-25 07:56:55.042"
        );
    }
}
