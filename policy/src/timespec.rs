//! TIMESPEC: a whole number followed by `s`, `m`, `h` or `d` (seconds, minutes, hours, days).
//!
//! Used by nanny.conf (dropipafter, expireevery) and by the rules' time matchers. Pure parsing of
//! administrator text.

use std::fmt;

/// Why a TIMESPEC did not parse; the caller wraps it in a positioned diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimespecError {
    /// The text does not end in s, m, h or d.
    NoUnit,
    /// What precedes the unit is not a whole number.
    NotANumber,
    /// The value does not fit in 64-bit seconds.
    TooLarge,
}

impl fmt::Display for TimespecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimespecError::NoUnit => "a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)",
            TimespecError::NotANumber => "a time must be a whole number followed by s, m, h or d",
            TimespecError::TooLarge => "that time is too large",
        })
    }
}

impl std::error::Error for TimespecError {}

/// Parses a TIMESPEC into seconds.
pub fn parse_timespec(text: &str) -> Result<u64, TimespecError> {
    let unit = match text.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => return Err(TimespecError::NoUnit),
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimespecError::NotANumber);
    }
    let n: u64 = digits.parse().map_err(|_| TimespecError::TooLarge)?;
    n.checked_mul(unit).ok_or(TimespecError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let rows: &[(&str, Result<u64, TimespecError>)] = &[
            ("30s", Ok(30)),
            ("0s", Ok(0)),
            ("10m", Ok(600)),
            ("2h", Ok(7200)),
            ("1d", Ok(86_400)),
            ("30", Err(TimespecError::NoUnit)),
            ("", Err(TimespecError::NoUnit)),
            ("s", Err(TimespecError::NotANumber)),
            ("-1s", Err(TimespecError::NotANumber)),
            ("1.5h", Err(TimespecError::NotANumber)),
            ("99999999999999999999s", Err(TimespecError::TooLarge)),
            ("999999999999999999d", Err(TimespecError::TooLarge)),
        ];
        for (text, want) in rows {
            assert_eq!(&parse_timespec(text), want, "{text}");
        }
    }
}
