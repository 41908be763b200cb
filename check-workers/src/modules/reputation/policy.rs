//! `[reputation]`'s rules, pure: the score a value's counts give, the decision over the
//! factors, and how both are explained (the determinants, `check-workers reputation show`).

use std::time::Duration;

use platform::config::ReputationConfig;
use platform::reputation::{Factor, Tally};
use serde_json::{Value, json};
use wire::Action;

// one way to write a window, shared with geoip
pub use crate::modules::geoip::policy::duration_text;

/// The thresholds of `[reputation]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub min_messages: u32,
    pub bad_ratio: f64,
    pub max_score: f64,
}

impl Thresholds {
    pub fn from_config(config: &ReputationConfig) -> Self {
        Self {
            min_messages: config.min_messages,
            bad_ratio: config.bad_ratio,
            max_score: config.max_score,
        }
    }
}

/// One factor value with its counts over the window and what they gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub factor: Factor,
    pub value: String,
    pub counts: Tally,
    /// `None`: fewer judged messages than `min-messages`.
    pub score: Option<f64>,
}

/// The score `counts` give: `None` with fewer than `min-messages` judged messages; else
/// `max-score × (share − bad-ratio) / (1 − bad-ratio)` when the refused share is above
/// `bad-ratio`, else 0.
pub fn score(counts: &Tally, thresholds: &Thresholds) -> Option<f64> {
    if counts.judged() < u64::from(thresholds.min_messages) {
        return None;
    }
    let share = counts.refused_ratio();
    if share > thresholds.bad_ratio {
        let score =
            thresholds.max_score * (share - thresholds.bad_ratio) / (1.0 - thresholds.bad_ratio);
        Some(score.clamp(0.0, thresholds.max_score))
    } else {
        Some(0.0)
    }
}

/// Judges every value found.
pub fn judge(found: Vec<(Factor, String, Tally)>, thresholds: &Thresholds) -> Vec<Judged> {
    found
        .into_iter()
        .map(|(factor, value, counts)| Judged {
            score: score(&counts, thresholds),
            factor,
            value,
            counts,
        })
        .collect()
}

/// What the module suggests: reject with the highest score over the factors, when it is above
/// 0; else permit, score 0. The worst value (the first of the highest) comes along for the reason.
pub fn decide(judged: &[Judged]) -> (Action, f64, Option<&Judged>) {
    let worst = judged
        .iter()
        .filter(|j| j.score.is_some_and(|s| s > 0.0))
        .fold(None::<&Judged>, |best, j| match best {
            Some(b) if b.score >= j.score => Some(b),
            _ => Some(j),
        });
    match worst {
        Some(j) => (Action::Reject, j.score.unwrap_or(0.0), Some(j)),
        None => (Action::Permit, 0.0, None),
    }
}

/// The reason of a reject: which value, how many of its messages were refused, over what.
pub fn reason(worst: &Judged, window: Duration) -> String {
    let c = &worst.counts;
    format!(
        "Poor reputation: {} of {} judged messages from {} {} in the last {} were refused",
        c.rejected + c.tempfailed,
        c.judged(),
        worst.factor.as_str().replace('_', " "),
        worst.value,
        duration_text(window)
    )
}

/// One value's row of the determinants (and of `reputation show --json`).
pub fn row(judged: &Judged) -> Value {
    let c = &judged.counts;
    json!({
        "factor": judged.factor.as_str(),
        "value": judged.value,
        "messages": c.messages,
        "rejected": c.rejected,
        "tempfailed": c.tempfailed,
        "permitted": c.permitted,
        "judged": c.judged(),
        "refused_ratio": round(c.refused_ratio()),
        "mean_reject_score": round(c.mean_reject_score()),
        "score": judged.score.map(round),
    })
}

/// Four decimals are plenty to read, and keep the JSON short.
fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const T: Thresholds = Thresholds {
        min_messages: 10,
        bad_ratio: 0.5,
        max_score: 8.0,
    };

    fn counts(rejected: u64, tempfailed: u64, permitted: u64) -> Tally {
        Tally {
            messages: rejected + tempfailed + permitted,
            rejected,
            tempfailed,
            permitted,
            reject_score: 0.0,
        }
    }

    fn judged(factor: Factor, counts: Tally) -> Judged {
        Judged {
            factor,
            value: "v".into(),
            score: score(&counts, &T),
            counts,
        }
    }

    #[test]
    fn the_score_follows_the_issue() {
        assert_eq!(score(&counts(9, 0, 0), &T), None, "below min-messages");
        assert_eq!(score(&counts(12, 0, 0), &T), Some(8.0));
        assert_eq!(score(&counts(5, 0, 5), &T), Some(0.0), "exactly bad-ratio");
        assert_eq!(score(&counts(6, 3, 1), &T), Some(8.0 * 0.4 / 0.5));
        // neutral messages count in `messages` only
        let mut c = counts(0, 0, 10);
        c.messages = 100;
        assert_eq!(score(&c, &T), Some(0.0));
    }

    #[test]
    fn the_highest_factor_decides() {
        let all = [
            judged(Factor::ClientAddress, counts(7, 0, 3)),
            judged(Factor::ClientNetwork, counts(12, 0, 0)),
            judged(Factor::SenderDomain, counts(1, 0, 0)),
        ];
        let (action, score, worst) = decide(&all);
        assert_eq!(action, Action::Reject);
        assert_eq!(score, 8.0);
        assert_eq!(worst.unwrap().factor, Factor::ClientNetwork);
        assert_eq!(
            reason(worst.unwrap(), Duration::from_secs(7 * 86400)),
            "Poor reputation: 12 of 12 judged messages from client network v in the last 7d \
             were refused"
        );
        let fine = [judged(Factor::ClientAddress, counts(1, 0, 30))];
        assert_eq!(decide(&fine), (Action::Permit, 0.0, None));
        assert_eq!(decide(&[]), (Action::Permit, 0.0, None));
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(duration_text(Duration::from_secs(7 * 86400)), "7d");
        assert_eq!(duration_text(Duration::from_secs(36 * 3600)), "36h");
    }

    proptest! {
        #[test]
        fn scores_stay_within_zero_and_max(r in 0u64..1000, t in 0u64..1000, p in 0u64..1000,
                                           bad in 0.0f64..0.99, max in 0.0f64..100.0) {
            let thresholds = Thresholds { min_messages: 1, bad_ratio: bad, max_score: max };
            if let Some(s) = score(&counts(r, t, p), &thresholds) {
                prop_assert!((0.0..=max).contains(&s), "{s}");
            }
        }
    }
}
