//! Values as the pages and the JSON API show them: times (UTC, to the second), periods
//! (`1h30m`), addresses (`<>` for the null sender), stored bytes as text.

use chrono::{DateTime, Utc};

/// Times as the pages and the API show them: UTC, to the second.
pub fn fmt_date(date: DateTime<Utc>) -> String {
    date.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn fmt_opt_date(date: Option<DateTime<Utc>>) -> String {
    date.map(fmt_date).unwrap_or_default()
}

/// `3600` → `1h`, `90` → `1m30s`.
pub fn fmt_period(secs: u32) -> String {
    let mut secs = u64::from(secs);
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// `local@domain`, or `<>` for the null sender.
pub fn address(local: &str, domain: &str) -> String {
    match (local.is_empty(), domain.is_empty()) {
        (true, true) => "<>".to_owned(),
        (_, true) => local.to_owned(),
        _ => format!("{local}@{domain}"),
    }
}

/// Bytes as text for display (headers and bodies are binary in the archive).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_as_durations() {
        assert_eq!(fmt_period(3600), "1h");
        assert_eq!(fmt_period(90), "1m30s");
        assert_eq!(fmt_period(86_400 * 7), "7d");
        assert_eq!(fmt_period(0), "0s");
    }

    #[test]
    fn the_null_sender_reads_as_angle_brackets() {
        assert_eq!(address("", ""), "<>");
        assert_eq!(address("a", "b.example"), "a@b.example");
        assert_eq!(address("postmaster", ""), "postmaster");
    }
}
