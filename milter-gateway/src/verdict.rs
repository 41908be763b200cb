//! The verdict: ClueGetter's algorithm (spec/overview.md §4) over the module results, and the
//! `%{...}` substitution of the reason.
//!
//! Pure: no I/O, no clock, no randomness. The gateway calls [`breaker_tripped`] after each result
//! arrives and [`decide`] once it stops waiting; the SMTP text is made by `crate::reply`.
//!
//! # The algorithm
//!
//! 1. **Normalisation** ([`effective_action`]): an `error` result stays an error whatever its score;
//!    a result whose score is not finite (NaN, ±∞) is treated as an error of its module (the
//!    module gave an answer we cannot weigh); any other result with a score of exactly 0 counts
//!    as `permit`.
//! 2. **Module groups**: for each group, `total` is the sum of its configured weights and
//!    `present` the sum of the weights of the members that produced a non-error result (each
//!    member once). When `present > 0` the group is *healthy*: the errors of its members are
//!    excused, and each non-error member's weighted score is `raw × weight × total / present`.
//!    Otherwise (every member errored or produced nothing) nothing changes: weighted = raw and
//!    the errors count. A member with no result at all is absent, not an error. Modules outside
//!    every group keep weighted = raw.
//! 3. **Combining**, first match wins:
//!    1. discard total ≥ `breaker-score` → discard;
//!    2. quarantine total ≥ `breaker-score` → quarantine (ClueGetter had no quarantine; it gets
//!       discard's rule with its own total, checked after discard);
//!    3. reject total ≥ `message-reject-score` → reject;
//!    4. an error that is neither excused by its group nor from an `on-error = ignore` module →
//!       tempfail "An internal server error occurred";
//!    5. tempfail total + reject total ≥ `message-tempfail-score` → tempfail;
//!    6. otherwise permit.
//!
//!    Totals are sums of weighted scores per suggested action; permit and error results count
//!    toward none of them, negative scores reduce them. Rules 1 and 2 also need at least one
//!    result suggesting that action, so a `breaker-score` ≤ 0 cannot discard every message.
//! 4. **Reason** ([`Decision::reason`]): among the results suggesting the verdict's action, the
//!    one with the highest weighted score (> 0, first in arrival order on ties) with a message;
//!    else the first of them with a message; else "Reason Unspecified". Fix of spec gap B.15:
//!    a tempfail reached with no tempfail-suggesting result (by reject points alone) takes its
//!    reason from the reject results, then from any non-error result.
//!
//! # Numbers
//!
//! Non-finite scores never reach a sum: such a result is an error (so a NaN `reject` tempfails
//! the message unless its group excuses it or its module is `on-error = ignore`; it cannot make
//! a reject quietly become a permit), and its weighted score is 0. Weighted scores and totals are
//! clamped to ±`f64::MAX`, so every number in a [`Decision`] is finite and serialises as JSON.
//! Totals are summed in a canonical order (ascending), so the verdict does not depend on the
//! order in which results arrived.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use platform::config::{Config, OnError};
use wire::Action;
use wire::CheckResult;

/// The reason of the error rule (spec §4.5 rule 3, with ClueGetter's typo "ocurred" fixed).
pub const INTERNAL_ERROR_REASON: &str = "An internal server error occurred";

/// The reason when no result that led to the verdict has a message.
pub const UNSPECIFIED_REASON: &str = "Reason Unspecified";

/// The thresholds and groups the verdict is made with.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub reject_score: f64,
    pub tempfail_score: f64,
    pub spamflag_score: f64,
    pub breaker_score: f64,
    /// group name → module → weight. A weight that is not a finite number ≥ 0 counts as 0 (the
    /// configuration refuses them; this keeps a hand-made policy from putting NaN in a sum).
    /// A module listed in several groups belongs to the first by name.
    pub groups: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per module; absent means [`OnError::Tempfail`].
    pub on_error: HashMap<String, OnError>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Self {
        let on_error = platform::config::KNOWN_MODULES
            .iter()
            .filter_map(|m| config.module(m).map(|s| ((*m).to_owned(), s.on_error())))
            .collect();
        Self {
            reject_score: config.message_reject_score,
            tempfail_score: config.message_tempfail_score,
            spamflag_score: config.message_spamflag_score,
            breaker_score: config.breaker_score,
            groups: config.module_groups.clone(),
            on_error,
        }
    }

    /// What an error of `module` does; [`OnError::Tempfail`] unless configured otherwise.
    pub fn on_error(&self, module: &str) -> OnError {
        self.on_error
            .get(module)
            .copied()
            .unwrap_or(OnError::Tempfail)
    }

    /// The group `module` belongs to, with the group's members and weights.
    pub fn group_of(&self, module: &str) -> Option<(&str, &BTreeMap<String, f64>)> {
        self.groups
            .iter()
            .find(|(_, members)| members.contains_key(module))
            .map(|(name, members)| (name.as_str(), members))
    }
}

impl Default for Policy {
    /// The policy of the default configuration (ClueGetter's defaults, no groups).
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// The outcome, with the arithmetic that led to it. Every vector is in the order of the
/// `results` given to [`decide`], one entry per result.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Permit, tempfail, reject, discard or quarantine; never error.
    pub action: Action,
    /// The reason before `%{...}` substitution (see [`substitute`]). Empty for permit, never
    /// empty otherwise.
    pub reason: String,
    /// The enhanced status code (`5.1.1`) of the result the reason was taken from, if that
    /// result gave one; `None` for permit and for the error rule's reason.
    pub enhanced_status: Option<String>,
    /// Weighted sum of the results that suggested reject.
    pub reject_score: f64,
    /// Weighted sum of the results that suggested tempfail (reject points not included).
    pub tempfail_score: f64,
    /// The weighted score of each result (0 for a non-finite score).
    pub weighted: Vec<f64>,
    /// The action each result counted as ([`effective_action`]): a zero score shows as permit,
    /// a non-finite score as error.
    pub actions: Vec<Action>,
    /// True for an error result that its module group excused (another member answered).
    pub excused: Vec<bool>,
    /// How many errors counted for the error rule (neither excused nor `on-error = ignore`).
    pub errors: usize,
}

/// The action a result counts as: see the module documentation, "Normalisation".
pub fn effective_action(result: &CheckResult) -> Action {
    result.action.counted_as(result.score)
}

/// True once any one action's raw (unweighted) score sum reaches the breaker score. Every
/// suggested action counts, permit included (a large permit score stops the checks early);
/// errors do not.
pub fn breaker_tripped(policy: &Policy, results: &[CheckResult]) -> bool {
    let mut sums: BTreeMap<Action, Vec<f64>> = BTreeMap::new();
    for result in results {
        let action = effective_action(result);
        if action != Action::Error {
            sums.entry(action).or_default().push(result.score);
        }
    }
    sums.into_values()
        .any(|scores| total(scores) >= policy.breaker_score)
}

/// Combines the results into the verdict. Never panics, whatever the scores.
pub fn decide(policy: &Policy, results: &[CheckResult]) -> Decision {
    let actions: Vec<Action> = results.iter().map(effective_action).collect();
    let (weighted, excused) = weigh(policy, results, &actions);

    let total_of = |action: Action| -> f64 {
        total(
            actions
                .iter()
                .zip(&weighted)
                .filter(|(a, _)| **a == action)
                .map(|(_, w)| *w),
        )
    };
    let suggested = |action: Action| actions.contains(&action);
    let reject_score = total_of(Action::Reject);
    let tempfail_score = total_of(Action::Tempfail);
    let errors = results
        .iter()
        .zip(&actions)
        .zip(&excused)
        .filter(|((result, action), excused)| {
            **action == Action::Error
                && !**excused
                && policy.on_error(&result.module) == OnError::Tempfail
        })
        .count();

    let chosen = |action: Action| choose_reason(results, &actions, &weighted, |a| a == action);
    // The reason and the enhanced status code come from one result (or none).
    let from = |chosen: Option<&CheckResult>| match chosen {
        Some(result) => (result.message.clone(), result.enhanced_status.clone()),
        None => (UNSPECIFIED_REASON.to_owned(), None),
    };
    let (action, (reason, enhanced_status)) = if suggested(Action::Discard)
        && total_of(Action::Discard) >= policy.breaker_score
    {
        (Action::Discard, from(chosen(Action::Discard)))
    } else if suggested(Action::Quarantine) && total_of(Action::Quarantine) >= policy.breaker_score
    {
        (Action::Quarantine, from(chosen(Action::Quarantine)))
    } else if reject_score >= policy.reject_score {
        (Action::Reject, from(chosen(Action::Reject)))
    } else if errors > 0 {
        (Action::Tempfail, (INTERNAL_ERROR_REASON.to_owned(), None))
    } else if clamp(tempfail_score + reject_score) >= policy.tempfail_score {
        let reason = if suggested(Action::Tempfail) {
            chosen(Action::Tempfail)
        } else {
            // Spec gap B.15: reached by reject points alone (ClueGetter indexed an empty
            // list here and panicked).
            chosen(Action::Reject)
                .or_else(|| choose_reason(results, &actions, &weighted, |a| a != Action::Error))
        };
        (Action::Tempfail, from(reason))
    } else {
        (Action::Permit, (String::new(), None))
    };

    Decision {
        action,
        reason,
        enhanced_status,
        reject_score,
        tempfail_score,
        weighted,
        actions,
        excused,
        errors,
    }
}

/// The module-group step: each result's weighted score, and which errors are excused.
fn weigh(policy: &Policy, results: &[CheckResult], actions: &[Action]) -> (Vec<f64>, Vec<bool>) {
    let mut weighted: Vec<f64> = results
        .iter()
        .map(|r| if r.score.is_finite() { r.score } else { 0.0 })
        .collect();
    let mut excused = vec![false; results.len()];

    for (group, members) in &policy.groups {
        let in_group = |module: &str| policy.group_of(module).is_some_and(|(g, _)| g == group);
        // Each member once, however many results it sent; a set keeps the sum's order fixed.
        let answered: BTreeSet<&str> = results
            .iter()
            .zip(actions)
            .filter(|(r, a)| **a != Action::Error && in_group(&r.module))
            .map(|(r, _)| r.module.as_str())
            .collect();
        let present: f64 = answered
            .iter()
            .map(|m| weight(members.get(*m).copied()))
            .sum();
        if present.is_nan() || present <= 0.0 {
            // Every member errored or produced nothing (or only weight-0 members answered):
            // nothing changes, the errors count.
            continue;
        }
        let group_total: f64 = members
            .iter()
            .filter(|(m, _)| in_group(m))
            .map(|(_, w)| weight(Some(*w)))
            .sum();
        for (i, result) in results.iter().enumerate() {
            if !in_group(&result.module) {
                continue;
            }
            if actions[i] == Action::Error {
                excused[i] = true;
            } else {
                let w = weight(members.get(&result.module).copied());
                // weight × total / present, arranged so that the common cases are exact: with
                // every member present the share is the weight itself, and a lone present
                // member's w / w is exactly 1, so it counts exactly the group's total weight
                // (0.9 spamassassin alone of 0.9 + 0.1: raw × 1.0, not raw × 0.99…).
                let share = if present == group_total {
                    w
                } else {
                    w / present * group_total
                };
                weighted[i] = clamp(weighted[i] * share);
            }
        }
    }
    (weighted, excused)
}

/// A configured weight as the arithmetic uses it: a finite number ≥ 0, else 0.
fn weight(configured: Option<f64>) -> f64 {
    match configured {
        Some(w) if w.is_finite() && w > 0.0 => w,
        _ => 0.0,
    }
}

/// Keeps a number finite: NaN becomes 0, ±∞ becomes ±`f64::MAX`.
fn clamp(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::MAX, f64::MAX)
    }
}

/// The sum of finite values in ascending order, so it does not depend on the order the values
/// came in; clamped to a finite number. (Summing finite values never gives NaN: once a partial
/// sum overflows to ±∞, finite additions keep it there.)
fn total(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().map(clamp).collect();
    values.sort_by(f64::total_cmp);
    // `+ 0.0`: an empty sum is -0.0 in Rust, which logs and stores as "-0"
    clamp(values.into_iter().sum::<f64>() + 0.0)
}

/// The spec's reason choice among the results whose effective action passes `wanted`: the
/// highest weighted score (> 0) with a message, first on ties; else the first with a message.
/// `None` when no such result has a message.
fn choose_reason<'r>(
    results: &'r [CheckResult],
    actions: &[Action],
    weighted: &[f64],
    wanted: impl Fn(Action) -> bool,
) -> Option<&'r CheckResult> {
    let candidates = || {
        results
            .iter()
            .zip(actions)
            .zip(weighted)
            .filter(|((r, a), _)| wanted(**a) && !r.message.trim().is_empty())
            .map(|((r, _), w)| (r, *w))
    };
    let mut best: Option<(&CheckResult, f64)> = None;
    for (result, score) in candidates() {
        if score > best.map_or(0.0, |(_, s)| s) {
            best = Some((result, score));
        }
    }
    best.map(|(r, _)| r)
        .or_else(|| candidates().next().map(|(r, _)| r))
}

/// The values of the `%{...}` variables (spec §4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Vars<'a> {
    /// `%{clientIp}`: the client's address as text.
    pub client_ip: &'a str,
    /// `%{hostname}`: the MTA's host name (Postfix's `j` macro).
    pub hostname: &'a str,
    /// `%{rejectScore}`: the weighted reject total, rendered with two decimals.
    pub reject_score: f64,
    /// `%{spamFlag}`: `YES` when true, else `NO`.
    pub spam_flag: bool,
    /// `%{recipient}`: one envelope recipient (header lines are emitted once per recipient by
    /// their caller); empty when there is none to name.
    pub recipient: &'a str,
}

impl<'a> Vars<'a> {
    /// The variables of a decided message. The reject total is the decision's real one (spec
    /// gap C.24: ClueGetter rendered 0.00 in the reason), and the spam flag is set when it
    /// reaches `message-spamflag-score`.
    pub fn new(
        policy: &Policy,
        decision: &Decision,
        client_ip: &'a str,
        hostname: &'a str,
    ) -> Self {
        Self {
            client_ip,
            hostname,
            reject_score: decision.reject_score,
            spam_flag: decision.reject_score >= policy.spamflag_score,
            recipient: "",
        }
    }

    /// The same variables naming `recipient`.
    pub fn with_recipient(self, recipient: &'a str) -> Self {
        Self { recipient, ..self }
    }
}

/// Replaces `%{clientIp}`, `%{hostname}`, `%{rejectScore}`, `%{spamFlag}` and `%{recipient}` in
/// `template`. Anything else, `%{unknown}` or an unterminated `%{`, is left as it is.
/// Substituted values are not scanned again, so a host name cannot inject variables.
pub fn substitute(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        match &after[..end] {
            "clientIp" => out.push_str(vars.client_ip),
            "hostname" => out.push_str(vars.hostname),
            "rejectScore" => out.push_str(&format_score(vars.reject_score)),
            "spamFlag" => out.push_str(if vars.spam_flag { "YES" } else { "NO" }),
            "recipient" => out.push_str(vars.recipient),
            _ => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Two decimals, as ClueGetter's `%.2f`, without a "-0.00".
fn format_score(score: f64) -> String {
    let text = format!("{score:.2}");
    if text == "-0.00" {
        "0.00".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use wire::Action::*;
    use wire::MessageId;

    pub(super) fn result(module: &str, action: Action, score: f64, message: &str) -> CheckResult {
        CheckResult {
            version: wire::WIRE_VERSION,
            message_id: MessageId(Default::default()),
            module: module.to_owned(),
            action,
            score,
            message: message.to_owned(),
            determinants: serde_json::json!({}),
            duration: 0.0,
            changes: Default::default(),
            enhanced_status: None,
        }
    }

    fn error(module: &str) -> CheckResult {
        result(module, Action::Error, 25.0, "An internal error occurred")
    }

    /// The default thresholds (reject 5, tempfail 8, spamflag 4.5, breaker 100) with the
    /// distribution's group `spam` = 0.9 spamassassin + 0.1 rspamd.
    pub(super) fn spam_group_policy() -> Policy {
        let mut policy = Policy::default();
        policy.groups.insert(
            "spam".to_owned(),
            BTreeMap::from([("spamassassin".to_owned(), 0.9), ("rspamd".to_owned(), 0.1)]),
        );
        policy
    }

    fn ignoring(mut policy: Policy, module: &str) -> Policy {
        policy.on_error.insert(module.to_owned(), OnError::Ignore);
        policy
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    struct Case {
        name: &'static str,
        policy: Policy,
        results: Vec<CheckResult>,
        action: Action,
        reason: &'static str,
        reject_score: f64,
        tempfail_score: f64,
    }

    fn cases() -> Vec<Case> {
        let spam = "Our system has detected that this message is likely unsolicited mail (SPAM).";
        let grey = "Greylisting in effect, please come back later";
        vec![
            Case {
                name: "empty results permit",
                policy: Policy::default(),
                results: vec![],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "worked example, both answer: SA counts 90 %, rspamd 10 %",
                policy: spam_group_policy(),
                results: vec![
                    result("spamassassin", Reject, 6.0, spam),
                    result("rspamd", Reject, 2.0, "rspamd says spam"),
                ],
                action: Reject,
                reason: spam,
                reject_score: 5.6,
                tempfail_score: 0.0,
            },
            Case {
                name: "worked example, both answer, below the threshold",
                policy: spam_group_policy(),
                results: vec![
                    result("spamassassin", Reject, 5.0, spam),
                    result("rspamd", Reject, 4.0, spam),
                ],
                action: Permit,
                reason: "",
                reject_score: 4.9,
                tempfail_score: 0.0,
            },
            Case {
                name: "worked example, rspamd fails: SA counts 100 %, no tempfail",
                policy: spam_group_policy(),
                results: vec![result("spamassassin", Reject, 3.0, spam), error("rspamd")],
                action: Permit,
                reason: "",
                reject_score: 3.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "worked example, rspamd fails, SA alone rejects at full weight",
                policy: spam_group_policy(),
                results: vec![error("rspamd"), result("spamassassin", Reject, 5.0, spam)],
                action: Reject,
                reason: spam,
                reject_score: 5.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "group member absent (no result) rescales like a failure, is no error",
                policy: spam_group_policy(),
                results: vec![result("spamassassin", Reject, 5.0, spam)],
                action: Reject,
                reason: spam,
                reject_score: 5.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "every group member fails: the errors count",
                policy: spam_group_policy(),
                results: vec![error("spamassassin"), error("rspamd")],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "one member fails, the other absent: nobody excuses the error",
                policy: spam_group_policy(),
                results: vec![error("rspamd")],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "ungrouped error tempfails",
                policy: Policy::default(),
                results: vec![result("quotas", Permit, 1.0, ""), error("clamav")],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reject reached anyway wins over the error rule",
                policy: Policy::default(),
                results: vec![error("rspamd"), result("clamav", Reject, 10.0, "virus")],
                action: Reject,
                reason: "virus",
                reject_score: 10.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "error rule comes before the tempfail rule",
                policy: Policy::default(),
                results: vec![error("rspamd"), result("greylisting", Tempfail, 9.0, grey)],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 9.0,
            },
            Case {
                name: "on-error = ignore: the error contributes nothing",
                policy: ignoring(Policy::default(), "rspamd"),
                results: vec![error("rspamd"), result("quotas", Permit, 1.0, "")],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "on-error = ignore on one module does not excuse another",
                policy: ignoring(Policy::default(), "rspamd"),
                results: vec![error("rspamd"), error("clamav")],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reject exactly at the threshold rejects",
                policy: Policy::default(),
                results: vec![result("rspamd", Reject, 5.0, spam)],
                action: Reject,
                reason: spam,
                reject_score: 5.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reject just below the threshold permits",
                policy: Policy::default(),
                results: vec![result("rspamd", Reject, 4.99, spam)],
                action: Permit,
                reason: "",
                reject_score: 4.99,
                tempfail_score: 0.0,
            },
            Case {
                name: "tempfail exactly at the threshold tempfails",
                policy: Policy::default(),
                results: vec![result("greylisting", Tempfail, 8.0, grey)],
                action: Tempfail,
                reason: grey,
                reject_score: 0.0,
                tempfail_score: 8.0,
            },
            Case {
                name: "tempfail just below the threshold permits",
                policy: Policy::default(),
                results: vec![result("greylisting", Tempfail, 7.99, grey)],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 7.99,
            },
            Case {
                name: "tempfail includes reject points: 4 + 4 = 8",
                policy: Policy::default(),
                results: vec![
                    result("rspamd", Reject, 4.0, spam),
                    result("greylisting", Tempfail, 4.0, grey),
                ],
                action: Tempfail,
                reason: grey,
                reject_score: 4.0,
                tempfail_score: 4.0,
            },
            Case {
                name: "B.15: tempfail by reject points alone takes a reject reason",
                policy: Policy {
                    tempfail_score: 4.0,
                    ..Policy::default()
                },
                results: vec![
                    result("rspamd", Reject, 1.0, "weak"),
                    result("spamassassin", Reject, 3.5, spam),
                ],
                action: Tempfail,
                reason: spam,
                reject_score: 4.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "B.15: no reject message either, any non-error result's message",
                policy: Policy {
                    tempfail_score: 4.0,
                    ..Policy::default()
                },
                results: vec![
                    result("rspamd", Reject, 4.5, ""),
                    result("lua", Quarantine, 5.0, "suspicious"),
                ],
                action: Tempfail,
                reason: "suspicious",
                reject_score: 4.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "B.15: an ignored error's message is never the reason",
                policy: Policy {
                    tempfail_score: 4.0,
                    ..ignoring(Policy::default(), "clamav")
                },
                results: vec![error("clamav"), result("rspamd", Reject, 4.5, "")],
                action: Tempfail,
                reason: UNSPECIFIED_REASON,
                reject_score: 4.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "B.15: no message anywhere",
                policy: Policy {
                    tempfail_score: 4.0,
                    ..Policy::default()
                },
                results: vec![result("rspamd", Reject, 4.5, "")],
                action: Tempfail,
                reason: UNSPECIFIED_REASON,
                reject_score: 4.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "B.15: falls back to a permit result's message",
                policy: Policy {
                    tempfail_score: 4.0,
                    ..Policy::default()
                },
                results: vec![
                    result("rspamd", Reject, 4.5, ""),
                    result("lua", Permit, 1.0, "script says so"),
                ],
                action: Tempfail,
                reason: "script says so",
                reject_score: 4.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "negative scores reduce the reject total",
                policy: Policy::default(),
                results: vec![
                    result("rspamd", Reject, 6.0, spam),
                    result("contacts", Reject, -3.0, "whitelisted contact"),
                ],
                action: Permit,
                reason: "",
                reject_score: 3.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "negative reject points reduce the tempfail rule's sum",
                policy: Policy::default(),
                results: vec![
                    result("greylisting", Tempfail, 9.0, grey),
                    result("contacts", Reject, -2.0, "whitelisted contact"),
                ],
                action: Permit,
                reason: "",
                reject_score: -2.0,
                tempfail_score: 9.0,
            },
            Case {
                name: "zero scores count as permit",
                policy: Policy {
                    reject_score: 0.0,
                    ..Policy::default()
                },
                results: vec![result("clamav", Reject, 0.0, "clean")],
                action: Reject,
                reason: UNSPECIFIED_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "permit scores count toward nothing",
                policy: Policy::default(),
                results: vec![result("quotas", Permit, 50.0, "")],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "discard at the breaker score",
                policy: Policy::default(),
                results: vec![
                    result("rspamd", Reject, 20.0, spam),
                    result("lua", Discard, 100.0, "drop it"),
                ],
                action: Discard,
                reason: "drop it",
                reject_score: 20.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "discard below the breaker score does nothing",
                policy: Policy::default(),
                results: vec![result("lua", Discard, 99.0, "drop it")],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "discard before quarantine",
                policy: Policy::default(),
                results: vec![
                    result("lua", Quarantine, 100.0, "hold it"),
                    result("lua2", Discard, 100.0, "drop it"),
                ],
                action: Discard,
                reason: "drop it",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "quarantine at the breaker score, before reject",
                policy: Policy::default(),
                results: vec![
                    result("rspamd", Reject, 20.0, spam),
                    result("lua", Quarantine, 60.0, "hold it"),
                    result("lua2", Quarantine, 40.0, ""),
                ],
                action: Quarantine,
                reason: "hold it",
                reject_score: 20.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "breaker score 0 does not discard without a discard result",
                policy: Policy {
                    breaker_score: 0.0,
                    ..Policy::default()
                },
                results: vec![result("quotas", Permit, 1.0, "")],
                action: Permit,
                reason: "",
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reason: highest weighted score with a message",
                policy: Policy::default(),
                results: vec![
                    result("a", Reject, 2.0, "two"),
                    result("b", Reject, 9.0, ""),
                    result("c", Reject, 3.0, "three"),
                    result("d", Reject, 3.0, "three again"),
                ],
                action: Reject,
                reason: "three",
                reject_score: 17.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reason: weighted, not raw, decides",
                policy: spam_group_policy(),
                results: vec![
                    result("spamassassin", Reject, 5.0, "sa"),
                    result("rspamd", Reject, 20.0, "rspamd"),
                ],
                action: Reject,
                reason: "sa",
                reject_score: 6.5,
                tempfail_score: 0.0,
            },
            Case {
                name: "reason: no positive score with a message, the first message",
                policy: Policy {
                    reject_score: -10.0,
                    ..Policy::default()
                },
                results: vec![
                    result("a", Reject, -1.0, ""),
                    result("b", Reject, -2.0, "first message"),
                    result("c", Reject, -3.0, "second message"),
                ],
                action: Reject,
                reason: "first message",
                reject_score: -6.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reason: no message at all",
                policy: Policy::default(),
                results: vec![result("a", Reject, 7.0, ""), result("b", Reject, 1.0, "  ")],
                action: Reject,
                reason: UNSPECIFIED_REASON,
                reject_score: 8.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "reason only from the verdict's own action",
                policy: Policy::default(),
                results: vec![
                    result("greylisting", Tempfail, 5.0, grey),
                    result("rspamd", Reject, 5.0, ""),
                ],
                action: Reject,
                reason: UNSPECIFIED_REASON,
                reject_score: 5.0,
                tempfail_score: 5.0,
            },
            Case {
                name: "NaN reject is an error: tempfail, not a silent permit",
                policy: Policy::default(),
                results: vec![result("rspamd", Reject, f64::NAN, spam)],
                action: Tempfail,
                reason: INTERNAL_ERROR_REASON,
                reject_score: 0.0,
                tempfail_score: 0.0,
            },
            Case {
                name: "infinite score is an error, excused by a healthy group",
                policy: spam_group_policy(),
                results: vec![
                    result("rspamd", Reject, f64::INFINITY, spam),
                    result("spamassassin", Reject, 5.0, "sa"),
                ],
                action: Reject,
                reason: "sa",
                reject_score: 5.0,
                tempfail_score: 0.0,
            },
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(!cases.is_empty());
        for case in cases {
            let decision = decide(&case.policy, &case.results);
            assert_eq!(decision.action, case.action, "{}: action", case.name);
            assert_eq!(decision.reason, case.reason, "{}: reason", case.name);
            assert!(
                close(decision.reject_score, case.reject_score),
                "{}: reject score {} != {}",
                case.name,
                decision.reject_score,
                case.reject_score
            );
            assert!(
                close(decision.tempfail_score, case.tempfail_score),
                "{}: tempfail score {} != {}",
                case.name,
                decision.tempfail_score,
                case.tempfail_score
            );
            assert_eq!(decision.weighted.len(), case.results.len(), "{}", case.name);
            assert_eq!(decision.excused.len(), case.results.len(), "{}", case.name);
            assert_eq!(decision.actions.len(), case.results.len(), "{}", case.name);
        }
    }

    #[test]
    fn worked_example_weights_and_excuses() {
        let policy = spam_group_policy();
        let both = decide(
            &policy,
            &[
                result("spamassassin", Reject, 10.0, ""),
                result("rspamd", Reject, 10.0, ""),
            ],
        );
        assert!(close(both.weighted[0], 9.0) && close(both.weighted[1], 1.0));
        assert_eq!(both.excused, [false, false]);

        let failed = decide(
            &policy,
            &[result("spamassassin", Reject, 4.0, ""), error("rspamd")],
        );
        assert!(close(failed.weighted[0], 4.0), "{}", failed.weighted[0]);
        assert_eq!(failed.weighted[1], 25.0, "an error keeps its raw score");
        assert_eq!(failed.excused, [false, true]);
        assert_eq!(failed.errors, 0);

        let all_failed = decide(&policy, &[error("spamassassin"), error("rspamd")]);
        assert_eq!(all_failed.excused, [false, false]);
        assert_eq!(all_failed.errors, 2);
    }

    #[test]
    fn ungrouped_modules_keep_raw_scores() {
        let decision = decide(
            &spam_group_policy(),
            &[
                result("spamassassin", Reject, 2.0, ""),
                result("clamav", Reject, 3.0, ""),
            ],
        );
        assert_eq!(decision.weighted[1], 3.0);
        assert!(close(decision.weighted[0], 2.0));
    }

    #[test]
    fn ignored_error_in_group_is_neither_counted_nor_needed() {
        let policy = ignoring(spam_group_policy(), "rspamd");
        let decision = decide(&policy, &[error("spamassassin"), error("rspamd")]);
        assert_eq!(decision.errors, 1, "spamassassin's error still counts");
        assert_eq!(decision.action, Action::Tempfail);
    }

    #[test]
    fn weight_zero_members_only_leave_the_group_unhealthy() {
        let mut policy = Policy::default();
        policy.groups.insert(
            "g".to_owned(),
            BTreeMap::from([("a".to_owned(), 0.0), ("b".to_owned(), 1.0)]),
        );
        let decision = decide(&policy, &[result("a", Reject, 6.0, "a"), error("b")]);
        assert_eq!(decision.excused, [false, false]);
        assert_eq!(
            decision.weighted[0], 6.0,
            "nothing changes in an unhealthy group"
        );
        assert_eq!(decision.action, Action::Reject);
    }

    #[test]
    fn normalised_actions_are_reported() {
        let decision = decide(
            &Policy::default(),
            &[
                result("clamav", Reject, 0.0, ""),
                result("rspamd", Reject, f64::NAN, ""),
                error("quotas"),
                result("spamassassin", Reject, -0.0, ""),
            ],
        );
        assert_eq!(
            decision.actions,
            [Action::Permit, Action::Error, Action::Error, Action::Permit]
        );
        assert_eq!(decision.weighted[1], 0.0);
        assert_eq!(decision.errors, 2);
    }

    #[test]
    fn error_with_zero_score_is_still_an_error() {
        let decision = decide(
            &Policy::default(),
            &[result("rspamd", Action::Error, 0.0, "")],
        );
        assert_eq!(decision.actions, [Action::Error]);
        assert_eq!(decision.action, Action::Tempfail);
    }

    #[test]
    fn huge_scores_stay_finite() {
        let decision = decide(
            &spam_group_policy(),
            &[
                result("spamassassin", Reject, f64::MAX, ""),
                result("clamav", Reject, f64::MAX, ""),
                result("contacts", Reject, -f64::MAX, ""),
            ],
        );
        assert!(decision.reject_score.is_finite());
        assert!(decision.weighted.iter().all(|w| w.is_finite()));
        assert_eq!(decision.action, Action::Reject);
    }

    #[test]
    fn breaker_trips_on_any_action_including_permit() {
        let policy = Policy {
            breaker_score: 25.0,
            ..Policy::default()
        };
        let table: &[(&str, Vec<CheckResult>, bool)] = &[
            ("nothing", vec![], false),
            (
                "permit at 25",
                vec![result("lua", Action::Permit, 25.0, "")],
                true,
            ),
            (
                "permit sum at 25",
                vec![
                    result("quotas", Action::Permit, 20.0, ""),
                    result("lua", Action::Permit, 5.0, ""),
                ],
                true,
            ),
            (
                "tempfail 100",
                vec![result("quotas", Action::Tempfail, 100.0, "")],
                true,
            ),
            (
                "reject 24.9",
                vec![result("rspamd", Action::Reject, 24.9, "")],
                false,
            ),
            (
                "sums are per action",
                vec![
                    result("rspamd", Action::Reject, 20.0, ""),
                    result("greylisting", Action::Tempfail, 20.0, ""),
                ],
                false,
            ),
            (
                "raw, not weighted",
                vec![result("spamassassin", Action::Reject, 26.0, "")],
                true,
            ),
            ("errors excluded", vec![error("a"), error("b")], false),
            (
                "NaN excluded",
                vec![result("a", Action::Reject, f64::NAN, "")],
                false,
            ),
            (
                "negative scores reduce",
                vec![
                    result("a", Action::Reject, 30.0, ""),
                    result("b", Action::Reject, -10.0, ""),
                ],
                false,
            ),
        ];
        for (name, results, expected) in table {
            assert_eq!(breaker_tripped(&policy, results), *expected, "{name}");
        }
        let grouped = Policy {
            breaker_score: 25.0,
            ..spam_group_policy()
        };
        assert!(breaker_tripped(
            &grouped,
            &[result("spamassassin", Action::Reject, 26.0, "")]
        ));
    }

    #[test]
    fn substitutes_the_variables() {
        let vars = Vars {
            client_ip: "192.0.2.1",
            hostname: "mx.example.org",
            reject_score: 5.678,
            spam_flag: true,
            recipient: "bob@example.org",
        };
        let table = [
            ("plain", "plain"),
            ("%{clientIp}", "192.0.2.1"),
            ("at %{hostname}.", "at mx.example.org."),
            ("%{rejectScore}", "5.68"),
            ("%{spamFlag}", "YES"),
            ("to %{recipient}", "to bob@example.org"),
            ("%{unknown} %{clientIp}", "%{unknown} 192.0.2.1"),
            ("%{clientIp", "%{clientIp"),
            ("100% %{spamFlag}%", "100% YES%"),
            ("%{%{clientIp}}", "%{%{clientIp}}"),
            ("%{}", "%{}"),
            ("ünïcode %{spamFlag}", "ünïcode YES"),
        ];
        for (template, expected) in table {
            assert_eq!(substitute(template, &vars), expected, "{template}");
        }
        let no = Vars {
            spam_flag: false,
            reject_score: -0.001,
            ..vars
        };
        assert_eq!(substitute("%{spamFlag} %{rejectScore}", &no), "NO 0.00");
    }

    #[test]
    fn substituted_values_are_not_scanned_again() {
        let vars = Vars {
            hostname: "%{clientIp}",
            client_ip: "192.0.2.1",
            ..Vars::default()
        };
        assert_eq!(substitute("%{hostname}", &vars), "%{clientIp}");
    }

    #[test]
    fn c24_reason_renders_the_real_reject_score() {
        let policy = Policy::default();
        let decision = decide(
            &policy,
            &[result(
                "rspamd",
                Action::Reject,
                7.25,
                "Spam score %{rejectScore}, flag %{spamFlag}",
            )],
        );
        let vars = Vars::new(&policy, &decision, "192.0.2.1", "mx");
        assert_eq!(
            substitute(&decision.reason, &vars),
            "Spam score 7.25, flag YES"
        );
        let low = decide(&policy, &[result("rspamd", Action::Reject, 4.4, "")]);
        assert!(!Vars::new(&policy, &low, "", "").spam_flag);
        let at = decide(&policy, &[result("rspamd", Action::Reject, 4.5, "")]);
        assert!(
            Vars::new(&policy, &at, "", "").spam_flag,
            "≥ spamflag-score"
        );
        assert_eq!(
            Vars::new(&policy, &at, "", "")
                .with_recipient("a@b")
                .recipient,
            "a@b"
        );
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]

    use super::tests::{result, spam_group_policy};
    use super::*;
    use proptest::prelude::*;

    const MODULES: &[&str] = &["spamassassin", "rspamd", "quotas", "clamav", "lua"];

    fn action() -> impl Strategy<Value = Action> {
        prop::sample::select(Action::ALL.to_vec())
    }

    fn finite_score() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            -20.0..20.0f64,
            (-20i32..40).prop_map(f64::from),
            Just(25.0),
            Just(100.0),
        ]
    }

    fn any_score() -> impl Strategy<Value = f64> {
        prop_oneof![
            finite_score(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-f64::MAX),
            any::<f64>(),
        ]
    }

    fn results_with(score: impl Strategy<Value = f64>) -> impl Strategy<Value = Vec<CheckResult>> {
        prop::collection::vec(
            (
                prop::sample::select(MODULES),
                action(),
                score,
                prop::sample::select(vec!["", "spam", "grey", "virus"]),
            )
                .prop_map(|(m, a, s, msg)| result(m, a, s, msg)),
            0..8,
        )
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            prop::bool::ANY,
            prop::bool::ANY,
            0.01..10.0f64,
            0.01..10.0f64,
            prop::sample::select(vec![25.0, 100.0]),
        )
            .prop_map(|(grouped, ignore_rspamd, w_sa, w_rs, breaker)| {
                let mut policy = if grouped {
                    let mut p = spam_group_policy();
                    p.groups.insert(
                        "spam".to_owned(),
                        BTreeMap::from([
                            ("spamassassin".to_owned(), w_sa),
                            ("rspamd".to_owned(), w_rs),
                        ]),
                    );
                    p
                } else {
                    Policy::default()
                };
                if ignore_rspamd {
                    policy.on_error.insert("rspamd".to_owned(), OnError::Ignore);
                }
                policy.breaker_score = breaker;
                policy
            })
    }

    proptest! {
        // The reject property skips the generated sets that do not reject (about a third).
        #![proptest_config(ProptestConfig {
            max_global_rejects: 1 << 20,
            ..ProptestConfig::default()
        })]

        #[test]
        fn adding_a_reject_never_turns_a_reject_into_a_permit(
            policy in policy(),
            results in results_with(finite_score()),
            seed in 5.0..30.0f64,
            seed_at in 0usize..8,
            score in 0.001..50.0f64,
        ) {
            // A seed reject makes most generated sets reject, so few cases are skipped.
            let mut results = results;
            results.insert(seed_at.min(results.len()), result("clamav", Action::Reject, seed, "virus"));
            let before = decide(&policy, &results);
            prop_assume!(before.action == Action::Reject);
            let mut more = results.clone();
            // From a module outside every group: a grouped one would change the group's
            // rescaling, which by design can dilute the other members' scores.
            more.push(result("contacts", Action::Reject, score, "blacklisted"));
            let after = decide(&policy, &more);
            prop_assert_eq!(after.action, Action::Reject);
            prop_assert!(after.reject_score >= before.reject_score);
        }

        #[test]
        fn verdict_does_not_depend_on_result_order(
            policy in policy(),
            (results, shuffled) in results_with(any_score())
                .prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        ) {
            let a = decide(&policy, &results);
            let b = decide(&policy, &shuffled);
            prop_assert_eq!(a.action, b.action);
            prop_assert_eq!(a.reject_score.to_bits(), b.reject_score.to_bits());
            prop_assert_eq!(a.tempfail_score.to_bits(), b.tempfail_score.to_bits());
            prop_assert_eq!(a.errors, b.errors);
            let sorted = |mut v: Vec<f64>| { v.sort_by(f64::total_cmp); v };
            prop_assert_eq!(sorted(a.weighted), sorted(b.weighted));
            prop_assert_eq!(breaker_tripped(&policy, &results), breaker_tripped(&policy, &shuffled));
        }

        #[test]
        fn group_rescale_is_exact(
            weights in prop::collection::vec(0.01..100.0f64, 1..6),
            fates in prop::collection::vec(0u8..3, 6),
            succeeds in 0usize..6,
            permit in prop::bool::ANY,
        ) {
            let mut policy = Policy::default();
            let members: BTreeMap<String, f64> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("m{i}"), *w))
                .collect();
            let group_total: f64 = weights.iter().sum();
            policy.groups.insert("g".to_owned(), members);
            let mut results = Vec::new();
            for (i, fate) in fates.iter().take(weights.len()).enumerate() {
                // 0: succeeded with score 1, 1: errored, 2: no result at all; at least one
                // member succeeds.
                let fate = if i == succeeds % weights.len() { 0 } else { *fate };
                let module = format!("m{i}");
                match fate {
                    0 => {
                        let suggested = if permit { Action::Permit } else { Action::Reject };
                        results.push(result(&module, suggested, 1.0, ""));
                    }
                    1 => results.push(result(&module, Action::Error, 25.0, "")),
                    _ => {}
                }
            }
            let decision = decide(&policy, &results);
            let sum: f64 = decision
                .weighted
                .iter()
                .zip(&decision.actions)
                .filter(|(_, a)| **a != Action::Error)
                .map(|(w, _)| *w)
                .sum();
            prop_assert!((sum - group_total).abs() < 1e-9, "{} != {}", sum, group_total);
            prop_assert_eq!(decision.errors, 0, "a healthy group excuses its errors");
            prop_assert!(decision
                .excused
                .iter()
                .zip(&decision.actions)
                .all(|(e, a)| *e == (*a == Action::Error)));
        }

        #[test]
        fn decide_never_panics_and_stays_finite(
            policy in policy(),
            results in results_with(any_score()),
        ) {
            let decision = decide(&policy, &results);
            prop_assert!(decision.reject_score.is_finite());
            prop_assert!(decision.tempfail_score.is_finite());
            prop_assert!(decision.weighted.iter().all(|w| w.is_finite()));
            prop_assert_ne!(decision.action, Action::Error);
            prop_assert_eq!(decision.reason.is_empty(), decision.action == Action::Permit);
            std::hint::black_box(breaker_tripped(&policy, &results));
        }

        #[test]
        fn a_non_finite_reject_never_permits_silently(
            results in results_with(finite_score()),
            bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
            at in 0usize..8,
        ) {
            // An ungrouped module with the default on-error = tempfail.
            let mut results = results;
            let at = at.min(results.len());
            results.insert(at, result("clamav", Action::Reject, bad, "virus"));
            let decision = decide(&Policy::default(), &results);
            prop_assert_ne!(decision.action, Action::Permit);
            prop_assert_eq!(decision.actions[at], Action::Error);
        }
    }
}
