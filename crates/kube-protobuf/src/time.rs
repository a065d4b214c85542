//! `metav1.Time` and `metav1.MicroTime` as Go prints them: UTC, RFC 3339, and `null` for
//! the zero time (0001-01-01T00:00:00Z).

/// Unix seconds of Go's zero `time.Time`.
const ZERO_SECONDS: i64 = -62_135_596_800;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Years Go's JSON decoder (RFC 3339, four-digit years) reads back.
const YEARS: std::ops::RangeInclusive<i64> = 0..=9999;

/// A `Time` read from the wire. Go keeps whole seconds only: nanoseconds are dropped.
/// `None` is the zero time; `Err` is a year the API server could not read back.
pub(crate) fn time(seconds: i64) -> Result<Option<String>, &'static str> {
    if seconds == ZERO_SECONDS {
        return Ok(None);
    }
    let (date, clock) = civil(seconds)?;
    Ok(Some(format!("{date}T{clock}Z")))
}

/// A `MicroTime` read from the wire: nanoseconds truncated toward zero to microseconds,
/// then normalised into the second, as `time.Unix` does.
pub(crate) fn micro_time(seconds: i64, nanos: i32) -> Result<Option<String>, &'static str> {
    let truncated = i128::from(nanos) - i128::from(nanos) % 1000;
    let total = i128::from(seconds) * NANOS_PER_SECOND + truncated;
    let seconds = i64::try_from(total.div_euclid(NANOS_PER_SECOND)).map_err(|_| OUT_OF_RANGE)?;
    let micros = total.rem_euclid(NANOS_PER_SECOND) / 1000;
    if seconds == ZERO_SECONDS && micros == 0 {
        return Ok(None);
    }
    let (date, clock) = civil(seconds)?;
    Ok(Some(format!("{date}T{clock}.{micros:06}Z")))
}

const OUT_OF_RANGE: &str = "the time is outside years 0000 to 9999";

/// The UTC date and clock of Unix `seconds` (proleptic Gregorian calendar).
fn civil(seconds: i64) -> Result<(String, String), &'static str> {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil, on 400-year eras starting 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    if !YEARS.contains(&year) {
        return Err(OUT_OF_RANGE);
    }
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    Ok((
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{hour:02}:{minute:02}:{second:02}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0), Ok(Some("1970-01-01T00:00:00Z".into())));
        assert_eq!(time(1_741_964_966), Ok(Some("2025-03-14T15:09:26Z".into())));
        assert_eq!(time(951_782_400), Ok(Some("2000-02-29T00:00:00Z".into())));
        assert_eq!(time(ZERO_SECONDS), Ok(None));
        assert_eq!(
            time(ZERO_SECONDS + 1),
            Ok(Some("0001-01-01T00:00:01Z".into()))
        );
        assert_eq!(
            time(-62_167_219_200),
            Ok(Some("0000-01-01T00:00:00Z".into()))
        );
        assert_eq!(time(-62_167_219_201), Err(OUT_OF_RANGE));
        assert_eq!(
            time(253_402_300_799),
            Ok(Some("9999-12-31T23:59:59Z".into()))
        );
        assert_eq!(time(253_402_300_800), Err(OUT_OF_RANGE));
        assert_eq!(time(i64::MIN), Err(OUT_OF_RANGE));
        assert_eq!(time(i64::MAX), Err(OUT_OF_RANGE));
    }

    #[test]
    fn micro_times() {
        assert_eq!(
            micro_time(1_741_964_966, 535_897_932),
            Ok(Some("2025-03-14T15:09:26.535897Z".into()))
        );
        assert_eq!(
            micro_time(-1, 500_000_999),
            Ok(Some("1969-12-31T23:59:59.500000Z".into()))
        );
        // Negative nanoseconds truncate toward zero, then borrow from the second.
        assert_eq!(
            micro_time(0, -1_500),
            Ok(Some("1969-12-31T23:59:59.999999Z".into()))
        );
        assert_eq!(micro_time(ZERO_SECONDS, 999), Ok(None));
        assert_eq!(micro_time(ZERO_SECONDS - 1, 1_000_000_000), Ok(None));
        assert_eq!(micro_time(i64::MAX, i32::MAX), Err(OUT_OF_RANGE));
        assert_eq!(micro_time(i64::MIN, i32::MIN), Err(OUT_OF_RANGE));
    }
}
