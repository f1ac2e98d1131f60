//! RFC 3339 UTC timestamps without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as RFC 3339 UTC with second precision, e.g. `2026-07-20T12:34:56Z`.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    unix_to_rfc3339(secs)
}

/// Seconds since the Unix epoch → RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn unix_to_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds from one `YYYY-MM-DDTHH:MM:SS[.ffffff]` stamp to another (naive local times, as
/// Python's `datetime.isoformat()` writes them; a trailing `Z` or offset is ignored, and no
/// daylight-saving change inside a benchmark is assumed). Whole seconds and fractions are
/// subtracted apart, so microseconds survive (an f64 of seconds since 1970 keeps only ~0.2 µs).
/// `None` when either is not in that form.
pub fn iso_naive_seconds_between(from: &str, to: &str) -> Option<f64> {
    let (a, fa) = iso_naive(from)?;
    let (b, fb) = iso_naive(to)?;
    Some((b - a) as f64 + (fb - fa))
}

/// A naive ISO stamp → (whole seconds since 1970-01-01 of that wall-clock time, fraction).
fn iso_naive(s: &str) -> Option<(i64, f64)> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '-']).next()?;
    let mut t = time.splitn(3, ':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    let whole = ss.trunc();
    let secs = days_from_civil(y, m as u32, day as u32) * 86_400 + hh * 3600 + mm * 60;
    Some((secs + whole as i64, ss - whole))
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_timestamps() {
        assert_eq!(unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
        // llmperf's sample summary timestamp.
        assert_eq!(unix_to_rfc3339(1_718_209_114), "2024-06-12T16:18:34Z");
        assert_eq!(unix_to_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(unix_to_rfc3339(1_784_505_600), "2026-07-20T00:00:00Z");
        assert_eq!(iso_naive("2026-07-20T00:00:00"), Some((1_784_505_600, 0.0)));
        assert_eq!(iso_naive("2000-02-29T00:00:00Z"), Some((951_782_400, 0.0)));
        let across_midnight =
            iso_naive_seconds_between("2026-12-04T23:59:59.75", "2026-12-05T00:00:00.25");
        assert_eq!(across_midnight, Some(0.5));
        let us =
            iso_naive_seconds_between("2026-12-04T21:14:30.573166", "2026-12-04T21:14:30.879403");
        assert!((us.unwrap() - 0.306237).abs() < 1e-12, "{us:?}");
        assert_eq!(iso_naive("2026-13-01T00:00:00"), None);
        assert_eq!(iso_naive("yesterday"), None);
        let now = now_rfc3339();
        assert_eq!(now.len(), 20);
        assert!(now.ends_with('Z'));
    }
}
