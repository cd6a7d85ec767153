//! Timestamps: [`WallTime`] (Unix milliseconds) everywhere in the API, RFC 3339 UTC in
//! documents, the NGCP `%a %b %e %H:%M:%S %Y` form in log lines. Never reads a clock.

use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;
use tollgate_events::WallTime;

/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// One day in milliseconds, for the edges that count in milliseconds (SQL columns, JSON
/// fields, tests written against them); everything else uses [`DAY`].
pub const DAY_MS: u64 = 86_400_000;

/// The latest time a document may name: `9999-12-31T23:59:59.999Z`.
pub const TIMESTAMP_MAX: WallTime = WallTime::from_unix_ms(253_402_300_799_999);

/// Formats `at` (at most [`TIMESTAMP_MAX`]) as RFC 3339 UTC: `2030-01-01T00:00:00Z`, or
/// `2030-01-01T00:00:00.250Z` when the milliseconds are not zero.
pub fn format_rfc3339(at: WallTime) -> String {
    let ms = at.unix_ms();
    let at = datetime(at);
    let base = at
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .unwrap_or_default();
    match ms % 1000 {
        0 => format!("{base}Z"),
        millis => format!("{base}.{millis:03}Z"),
    }
}

/// Parses exactly `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, `T` and `Z`
/// upper case, exactly three fraction digits, year 1970..=9999) into Unix milliseconds.
/// Anything else (offsets, lower case, other precisions, leap seconds) is refused, so
/// that [`format_rfc3339`] of the result gives back the same text.
pub fn parse_rfc3339(text: &str) -> Result<WallTime, &'static str> {
    const PROBLEM: &str = "expected a UTC time like 2030-01-01T00:00:00Z";
    let bytes = text.as_bytes();
    let (main, millis) = match bytes.len() {
        20 if bytes[19] == b'Z' => (&bytes[..19], 0),
        24 if bytes[19] == b'.' && bytes[23] == b'Z' => {
            let millis = digits(&bytes[20..23]).ok_or(PROBLEM)?;
            (&bytes[..19], millis)
        }
        _ => return Err(PROBLEM),
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, sep)| main[at] != sep) {
        return Err(PROBLEM);
    }
    let field = |from: usize, to: usize| digits(&main[from..to]).ok_or(PROBLEM);
    let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
    let (hour, minute, second) = (field(11, 13)?, field(14, 16)?, field(17, 19)?);
    if year < 1970 {
        return Err("times before 1970 are not supported");
    }
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or("no such month")?;
    let date = time::Date::from_calendar_date(year as i32, month, day as u8)
        .map_err(|_| "no such date")?;
    let clock = time::Time::from_hms(hour as u8, minute as u8, second as u8)
        .map_err(|_| "no such time of day")?;
    let seconds = date.with_time(clock).assume_utc().unix_timestamp();
    let seconds = u64::try_from(seconds).map_err(|_| PROBLEM)?;
    Ok(WallTime::from_unix_ms(seconds * 1000 + u64::from(millis)))
}

/// Formats `at` like `ctime` and the NGCP log line: `Tue Jan  1 00:00:00 2030` (UTC).
pub fn format_ngcp(at: WallTime) -> String {
    datetime(at)
        .format(format_description!(
            "[weekday repr:short] [month repr:short] [day padding:space] \
             [hour]:[minute]:[second] [year]"
        ))
        .unwrap_or_default()
}

/// Whole days from `now` until `at`, rounded down (negative once `at` has passed: one
/// millisecond late is day -1).
pub fn days_until(now: WallTime, at: WallTime) -> i64 {
    ms_until(now, at).div_euclid(DAY_MS as i64)
}

/// Milliseconds from `now` until `at`, negative once `at` has passed (a signed difference,
/// so not a `Duration`).
pub fn ms_until(now: WallTime, at: WallTime) -> i64 {
    now.signed_ms_until(at)
}

fn datetime(at: WallTime) -> OffsetDateTime {
    let nanos = i128::from(at.min(TIMESTAMP_MAX).unix_ms()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, &b| {
        b.is_ascii_digit().then(|| value * 10 + u32::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_parse(text: &str, expected: Result<u64, ()>) {
        let parsed = parse_rfc3339(text).map_err(|_| ());
        assert_eq!(parsed, expected.map(WallTime::from_unix_ms), "{text}");
        if let Ok(ms) = parsed {
            assert_eq!(format_rfc3339(ms), text, "round trip");
        }
    }

    #[test]
    fn rfc3339_is_strict_and_round_trips() {
        check_parse("1970-01-01T00:00:00Z", Ok(0));
        check_parse("2030-01-01T00:00:00Z", Ok(1_893_456_000_000));
        check_parse("2030-01-01T00:00:00.250Z", Ok(1_893_456_000_250));
        check_parse("9999-12-31T23:59:59.999Z", Ok(TIMESTAMP_MAX.unix_ms()));
        check_parse("2024-02-29T12:00:00Z", Ok(1_709_208_000_000));
        for bad in [
            "",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "2030-01-01t00:00:00Z",
            "2030-01-01T00:00:00z",
            "2030-01-01 00:00:00Z",
            "2030-01-01T00:00:00+00:00",
            "2030-01-01T00:00:00.5Z",
            "2030-01-01T00:00:00.000001Z",
            "2030-13-01T00:00:00Z",
            "2030-00-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T23:60:00Z",
            "2030-01-01T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "+030-01-01T00:00:00Z",
            "2030-01-01T00:00:0٣Z",
        ] {
            check_parse(bad, Err(()));
        }
    }

    #[test]
    fn ngcp_dates_pad_the_day_with_a_space() {
        assert_eq!(
            format_ngcp(WallTime::from_unix_ms(1_893_456_000_000)),
            "Tue Jan  1 00:00:00 2030"
        );
        assert_eq!(
            format_ngcp(WallTime::from_unix_ms(1_514_305_243_000)),
            "Tue Dec 26 16:20:43 2017"
        );
    }

    #[test]
    fn days_round_down() {
        let t = WallTime::from_unix_ms;
        let day = DAY_MS;
        assert_eq!(days_until(t(0), t(day)), 1);
        assert_eq!(days_until(t(0), t(day - 1)), 0);
        assert_eq!(days_until(t(1), t(0)), -1);
        assert_eq!(days_until(t(day), t(0)), -1);
        assert_eq!(days_until(t(day + 1), t(0)), -2);
        assert_eq!(DAY.as_millis(), u128::from(day));
    }
}
