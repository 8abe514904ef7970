//! Parsing and printing of the two units limits are written in: sizes
//! (`64M`, powers of 1024) and durations (`1.5`, seconds, fractions allowed).
//!
//! Parsing never touches the system; it only turns text into numbers or says
//! precisely what is wrong with the text.

use std::time::Duration;

/// Why a size or duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("empty value: give a number such as `64M` or `2.5`")]
    Empty,
    #[error("`{0}` is not a size: use a whole number of bytes with an optional K, M or G suffix (powers of 1024), e.g. `256M`")]
    BadSize(String),
    #[error("`{0}` is too large a size: the largest is 16E - 1 bytes")]
    SizeOverflow(String),
    #[error("`{0}` is not a duration: use seconds, fractions allowed, e.g. `10` or `0.5` (an optional `s` or `ms` suffix is accepted)")]
    BadDuration(String),
    #[error("`{0}` is out of range for a duration: use a value from 0.001 to 1000000 seconds")]
    DurationRange(String),
}

/// Parses a size: a whole number with an optional suffix `K`, `M`, `G` or `T`
/// (powers of 1024, case-insensitive, an optional trailing `B` or `iB` allowed).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let lower = t.to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match stripped.as_bytes().last() {
        Some(b'k') => (&stripped[..stripped.len() - 1], 10),
        Some(b'm') => (&stripped[..stripped.len() - 1], 20),
        Some(b'g') => (&stripped[..stripped.len() - 1], 30),
        Some(b't') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError::BadSize(text.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::SizeOverflow(text.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::SizeOverflow(text.to_string()))
}

/// Prints a size the way `parse_size` reads it, exactly (no rounding).
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{}", bytes >> shift, suffix);
        }
    }
    bytes.to_string()
}

/// Parses a duration in seconds (`10`, `0.25`), or with an explicit `s` or
/// `ms` suffix. The value must lie between 1 ms and 1,000,000 s.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let valid = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1
        && number != ".";
    if !valid {
        return Err(UnitError::BadDuration(text.to_string()));
    }
    let secs: f64 = number
        .parse()
        .map_err(|_| UnitError::BadDuration(text.to_string()))?;
    let secs = secs * scale;
    if !(0.001..=1_000_000.0).contains(&secs) {
        return Err(UnitError::DurationRange(text.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_powers_of_1024() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("17"), Ok(17));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size(" 8K "), Ok(8192));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_text() {
        for bad in ["", "M", "-1", "1.5M", "12Q", "1 M", "0x10", "K1"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(UnitError::SizeOverflow("99999999999999999999".into()))
        );
        assert_eq!(
            parse_size("99999999999T"),
            Err(UnitError::SizeOverflow("99999999999T".into()))
        );
    }

    #[test]
    fn sizes_print_back_exactly() {
        for n in [0, 1, 1023, 1024, 1536, 64 << 20, (64 << 20) + 1, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(256 << 20), "256M");
        assert_eq!(format_size(1536), "1536");
    }

    #[test]
    fn durations_take_fractional_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(".25"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "-1", "1..2", "abc", "1m", "inf", "NaN", ".", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            parse_duration("0"),
            Err(UnitError::DurationRange(_))
        ));
        assert!(matches!(
            parse_duration("2000000"),
            Err(UnitError::DurationRange(_))
        ));
    }
}
