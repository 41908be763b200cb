//! The arithmetic of the sliding windows, without a database: where each period's window starts
//! at one instant, what a message would bring each period to, and the units a reservation
//! writes per row. The SQL in [`super::store`] applies these cut-offs to the tally
//! (`quota_message`); the tests here pin the rules down (boundaries, empty windows, periods
//! that overlap), with a model of the sums the SQL computes.
//!
//! A window of `p` seconds at `now` holds the tally rows dated strictly after `now − p`. A row
//! counts there when it is `kept`, or `reserved` and dated strictly after `now − TTL` (an older
//! reservation was never settled and has expired). Every window ends at `now`, so a shorter
//! period's window lies inside every longer one: one scan from the longest cut-off sees them
//! all.

use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use serde::Serialize;

/// One period of one matched quota row, as counted for this message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeriodUsage {
    /// Seconds.
    pub period: u32,
    pub curb: u32,
    /// Units counted in the window, this message not included.
    pub used: u64,
    /// `used` plus this message's units.
    pub would_be: u64,
    /// `would_be` is over `curb`.
    pub exceeded: bool,
}

impl PeriodUsage {
    /// The period `(period, curb)` with `used` units counted, if the message's `units` were
    /// added. Reaching the curb is allowed; only going over it is not.
    pub fn of(period: u32, curb: u32, used: u64, units: u32) -> Self {
        let would_be = used.saturating_add(u64::from(units));
        Self {
            period,
            curb,
            used,
            would_be,
            exceeded: would_be > u64::from(curb),
        }
    }
}

/// Each period `(period, curb)` with the units counted in its window (same order), for a
/// message of `units`.
pub fn usages(periods: &[(u32, u32)], used: &[u64], units: u32) -> Vec<PeriodUsage> {
    periods
        .iter()
        .zip(used)
        .map(|(&(period, curb), &used)| PeriodUsage::of(period, curb, used, units))
        .collect()
}

/// The units to reserve per quota row, from each matched row with what the message costs it,
/// in first-seen order. A row is matched by one factor value, but were it matched twice its
/// tally row (one per message and row) carries both.
pub fn units_per_row(matched: impl IntoIterator<Item = (u64, u32)>) -> Vec<(u64, u64)> {
    let mut per_row: Vec<(u64, u64)> = Vec::new();
    for (row, units) in matched {
        match per_row.iter_mut().find(|(id, _)| *id == row) {
            Some((_, total)) => *total += u64::from(units),
            None => per_row.push((row, u64::from(units))),
        }
    }
    per_row
}

/// The cut-offs of every window at one instant of the database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub now: NaiveDateTime,
    /// Reservations dated at or before this have expired and are not counted.
    pub ttl_cutoff: NaiveDateTime,
}

impl Windows {
    pub fn at(now: NaiveDateTime, reservation_ttl: Duration) -> Self {
        Self {
            now,
            ttl_cutoff: before(now, reservation_ttl.as_secs()),
        }
    }

    /// Rows dated after this are inside the window of `period` seconds.
    pub fn cutoff(&self, period: u32) -> NaiveDateTime {
        before(self.now, u64::from(period))
    }

    /// The cut-off of the longest of the periods `(period, curb)`: every window lies after it.
    /// `None` without periods: there is no window to count.
    pub fn scan_from(&self, periods: &[(u32, u32)]) -> Option<NaiveDateTime> {
        periods
            .iter()
            .map(|&(period, _)| period)
            .max()
            .map(|longest| self.cutoff(longest))
    }
}

/// `now` less `seconds` (at most a century, which DATETIME can always hold).
fn before(now: NaiveDateTime, seconds: u64) -> NaiveDateTime {
    const CENTURY: i64 = 100 * 366 * 24 * 3600;
    let seconds = i64::try_from(seconds).unwrap_or(CENTURY).min(CENTURY);
    now.checked_sub_signed(TimeDelta::seconds(seconds))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A tally row as the model sees it.
    struct Tally {
        message: u32,
        date: NaiveDateTime,
        kept: bool,
        units: u64,
    }

    /// What the check's SQL sums (`store::check`): per period, the units of the rows inside
    /// its window that count, the checked message's own rows left out.
    fn sums(windows: &Windows, periods: &[(u32, u32)], tally: &[Tally], message: u32) -> Vec<u64> {
        let Some(scan_from) = windows.scan_from(periods) else {
            return Vec::new();
        };
        let scanned: Vec<&Tally> = tally
            .iter()
            .filter(|t| t.date > scan_from && t.message != message)
            .filter(|t| t.kept || t.date > windows.ttl_cutoff)
            .collect();
        periods
            .iter()
            .map(|&(period, _)| {
                let cutoff = windows.cutoff(period);
                scanned
                    .iter()
                    .filter(|t| t.date > cutoff)
                    .map(|t| t.units)
                    .sum()
            })
            .collect()
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn kept(message: u32, date: &str, units: u64) -> Tally {
        Tally {
            message,
            date: at(date),
            kept: true,
            units,
        }
    }

    fn reserved(message: u32, date: &str, units: u64) -> Tally {
        Tally {
            kept: false,
            ..kept(message, date, units)
        }
    }

    const NOW: &str = "2026-01-01 12:00:00";

    fn windows() -> Windows {
        Windows::at(at(NOW), Duration::from_secs(600))
    }

    #[test]
    fn a_window_holds_rows_strictly_after_its_cutoff() {
        let w = windows();
        assert_eq!(w.cutoff(60), at("2026-01-01 11:59:00"));
        assert_eq!(w.ttl_cutoff, at("2026-01-01 11:50:00"));
        let tally = [
            kept(1, "2026-01-01 11:59:00", 1), // exactly p seconds old: out
            kept(2, "2026-01-01 11:59:01", 2), // one second younger: in
            kept(3, NOW, 4),                   // now: in
        ];
        assert_eq!(sums(&w, &[(60, 10)], &tally, 0), [6]);
    }

    #[test]
    fn reservations_count_until_the_ttl_and_kept_rows_for_the_whole_window() {
        let w = windows();
        let tally = [
            reserved(1, "2026-01-01 11:50:00", 1), // exactly TTL old: expired
            reserved(2, "2026-01-01 11:50:01", 2), // younger than the TTL: counted
            kept(3, "2026-01-01 11:00:01", 4),     // kept: counted however old, within the window
        ];
        assert_eq!(sums(&w, &[(3600, 10)], &tally, 0), [6]);
        assert_eq!(sums(&w, &[(3601, 10)], &tally, 0), [6]);
        assert_eq!(sums(&w, &[(3599, 10)], &tally, 0), [2]);
    }

    #[test]
    fn the_message_itself_is_never_counted() {
        let w = windows();
        let tally = [kept(7, NOW, 3), reserved(7, NOW, 3), kept(8, NOW, 1)];
        assert_eq!(sums(&w, &[(60, 10)], &tally, 7), [1]);
    }

    #[test]
    fn empty_windows() {
        let w = windows();
        // no periods: nothing to scan, nothing counted, nothing over a curb
        assert_eq!(w.scan_from(&[]), None);
        assert!(sums(&w, &[], &[kept(1, NOW, 1)], 0).is_empty());
        assert!(usages(&[], &[], 5).is_empty());
        // a window with no rows counts zero; the message alone may reach the curb
        assert_eq!(sums(&w, &[(60, 1)], &[], 0), [0]);
        assert!(!usages(&[(60, 1)], &[0], 1)[0].exceeded);
        assert!(usages(&[(60, 1)], &[0], 2)[0].exceeded);
        // a zero-second window is empty: even a row dated now is not after `now`
        assert_eq!(sums(&w, &[(0, 1)], &[kept(1, NOW, 1)], 0), [0]);
    }

    #[test]
    fn overlapping_periods_each_count_their_own_window() {
        let w = windows();
        let periods = [(60, 3), (3600, 5), (86_400, 100)];
        assert_eq!(w.scan_from(&periods), Some(at("2025-12-31 12:00:00")));
        let tally = [
            kept(1, "2026-01-01 11:59:30", 2),  // in all three
            kept(2, "2026-01-01 11:30:00", 2),  // in the hour and the day
            kept(3, "2026-01-01 01:00:00", 9),  // in the day only
            kept(4, "2025-12-31 11:00:00", 50), // in none
        ];
        let used = sums(&w, &periods, &tally, 0);
        assert_eq!(used, [2, 4, 13]);
        let usage = usages(&periods, &used, 1);
        assert_eq!(
            usage
                .iter()
                .map(|u| (u.would_be, u.exceeded))
                .collect::<Vec<_>>(),
            [(3, false), (5, false), (14, false)]
        );
        // one unit more goes over the minute's curb (4 > 3) and the hour's (6 > 5), not the day's
        let usage = usages(&periods, &used, 2);
        assert_eq!(
            usage.iter().map(|u| u.exceeded).collect::<Vec<_>>(),
            [true, true, false]
        );
    }

    #[test]
    fn reaching_the_curb_is_allowed_going_over_is_not() {
        assert!(!PeriodUsage::of(60, 10, 9, 1).exceeded);
        assert!(PeriodUsage::of(60, 10, 10, 1).exceeded);
        assert!(PeriodUsage::of(60, 0, 0, 1).exceeded);
        assert!(!PeriodUsage::of(60, 0, 0, 0).exceeded);
        let saturated = PeriodUsage::of(60, u32::MAX, u64::MAX, u32::MAX);
        assert_eq!(saturated.would_be, u64::MAX);
        assert!(saturated.exceeded);
    }

    #[test]
    fn huge_periods_are_capped_at_a_century() {
        let w = Windows::at(at(NOW), Duration::from_secs(u64::MAX));
        let century = at(NOW) - TimeDelta::seconds(100 * 366 * 24 * 3600);
        assert_eq!(w.ttl_cutoff, century);
        // u32::MAX seconds is 136 years: over a century, so capped too
        assert_eq!(w.cutoff(u32::MAX), century);
        assert_eq!(w.cutoff(3600), at(NOW) - TimeDelta::seconds(3600));
        // the earliest instant chrono holds: the cut-off stays at now rather than wrap
        let first = NaiveDateTime::MIN;
        assert_eq!(Windows::at(first, Duration::from_secs(1)).ttl_cutoff, first);
    }

    #[test]
    fn units_add_up_per_row_in_first_seen_order() {
        assert_eq!(units_per_row([]), []);
        assert_eq!(units_per_row([(9, 2), (3, 1), (9, 5)]), [(9, 7), (3, 1)]);
    }
}
