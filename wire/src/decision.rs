//! "Decided by": which modules a recorded verdict rests on, from the audit record alone.
//!
//! A pure function of what every [`AuditEvent`](crate::AuditEvent) carries (the verdict with its
//! thresholds and totals, and every result with its weighted score), so any process can ask it
//! of any archived message without the configuration that made the verdict: the reputation
//! module's counters (no feedback loop: a refusal decided by reputation alone does not count
//! against the sender), and a "decided by module" search of the archive.
//!
//! # The rule
//!
//! A module is **decisive** when the verdict, worked out again from the record *without that
//! module's results*, would have been different. When no single module is decisive (the
//! verdict is over-determined: rspamd and spamassassin each rejected on their own), every
//! module that contributed points toward the verdict's action counts instead: reject points
//! for a reject; reject or tempfail points for a tempfail (the tempfail threshold counts both);
//! discard or quarantine points for those. Nobody contributes toward a permit, so a permit is
//! decided by the modules whose negative points kept it one (a contacts whitelist), or by none.
//!
//! The verdict is worked out with ClueGetter's rules (spec/overview.md §4.5) as the gateway
//! applies them (`milter-gateway/src/verdict.rs`), over the **stored** weighted scores:
//! - late results (`late`) did not count and are left out;
//! - a result counts as its effective action: an `error` result, or one the gateway recorded
//!   with an `invalid_score` determinant (a non-finite score counted as an error), is an error;
//!   a score of exactly 0 is a permit; anything else its suggested action;
//! - reject total ≥ `reject_threshold` → reject; tempfail + reject totals ≥
//!   `tempfail_threshold` → tempfail; else permit.
//!
//! What the record does not hold is approximated, and said so here:
//! - **Module groups**: removing a group member would re-weight the others; the stored weights
//!   are kept as they are.
//! - **The error rule** (an error no group member excused tempfails): which errors were excused
//!   is not recorded. A tempfail whose totals are below both thresholds can only come from the
//!   error rule: its [`Cause`] is [`Cause::ErrorRule`] and the modules are those that errored
//!   (on time, or cut by the deadline and recorded late with `counted_as`). A tempfail that the
//!   totals explain is [`Cause::Scores`], even when an error counted too.
//! - **Discard and quarantine** need `breaker-score`, which the record does not hold: every
//!   module with points toward that action counts.
//! - A record without a module verdict (`failure`: the broker away, the spool refused) is
//!   [`Cause::Failure`], decided by no module.

use std::collections::{BTreeMap, BTreeSet};

use crate::contract::{Action, AuditResult, AuditVerdict};

/// What made the verdict, beside which modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The module results' scores against the thresholds (or a permit).
    Scores,
    /// ClueGetter's error rule: a module error tempfailed the message (an internal error, not
    /// the sender's doing).
    ErrorRule,
    /// No module verdict at all: the fail action applied (`verdict.failure`).
    Failure,
}

/// The answer of [`decided_by`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedBy {
    pub cause: Cause,
    /// The deciding modules' names, as the results spell them.
    pub modules: BTreeSet<String>,
}

impl DecidedBy {
    /// True when `module` is among the deciding modules.
    pub fn includes(&self, module: &str) -> bool {
        self.modules.contains(module)
    }

    /// True when at least one deciding module is outside `modules` (a refusal decided only by
    /// greylisting or quotas is not.)
    pub fn any_beyond(&self, modules: &[&str]) -> bool {
        self.modules.iter().any(|m| !modules.contains(&m.as_str()))
    }
}

/// The points one module's results gave each action.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Points {
    reject: f64,
    tempfail: f64,
    discard: f64,
    quarantine: f64,
}

impl Points {
    fn add(&mut self, action: Action, weighted: f64) {
        let weighted = if weighted.is_finite() { weighted } else { 0.0 };
        match action {
            Action::Reject => self.reject += weighted,
            Action::Tempfail => self.tempfail += weighted,
            Action::Discard => self.discard += weighted,
            Action::Quarantine => self.quarantine += weighted,
            Action::Permit | Action::Error => {}
        }
    }

    fn minus(self, other: Points) -> Points {
        Points {
            reject: self.reject - other.reject,
            tempfail: self.tempfail - other.tempfail,
            discard: self.discard - other.discard,
            quarantine: self.quarantine - other.quarantine,
        }
    }

    /// Points toward `verdict`, for the over-determined case.
    fn toward(self, verdict: Action) -> bool {
        match verdict {
            Action::Reject => self.reject > 0.0,
            Action::Tempfail => self.tempfail > 0.0 || self.reject > 0.0,
            Action::Discard => self.discard > 0.0,
            Action::Quarantine => self.quarantine > 0.0,
            Action::Permit | Action::Error => false,
        }
    }
}

/// The action a recorded result counted as (see the module documentation).
pub fn effective_action(result: &AuditResult) -> Action {
    let check = &result.result;
    if check.action == Action::Error
        || !check.score.is_finite()
        || check.determinants.get("invalid_score").is_some()
    {
        Action::Error
    } else if check.score == 0.0 {
        Action::Permit
    } else {
        check.action
    }
}

/// The score rules of §4.5 over totals (discard and quarantine aside: see the module
/// documentation); never the error rule.
fn by_scores(points: Points, verdict: &AuditVerdict) -> Action {
    if points.reject >= verdict.reject_threshold {
        Action::Reject
    } else if points.tempfail + points.reject >= verdict.tempfail_threshold {
        Action::Tempfail
    } else {
        Action::Permit
    }
}

/// Which modules the recorded verdict rests on, and why (see the module documentation).
pub fn decided_by(verdict: &AuditVerdict, results: &[AuditResult]) -> DecidedBy {
    if verdict.failure.is_some() {
        return DecidedBy {
            cause: Cause::Failure,
            modules: BTreeSet::new(),
        };
    }
    let mut per_module: BTreeMap<&str, Points> = BTreeMap::new();
    let mut errored: BTreeSet<String> = BTreeSet::new();
    let mut total = Points::default();
    for result in results {
        let module = result.result.module.as_str();
        if result.late {
            // a deadline-cut module whose error counted, replaced by its late result
            let counted_as = result
                .result
                .determinants
                .get("counted_as")
                .and_then(|c| c.get("action"))
                .and_then(|a| a.as_str());
            if counted_as == Some(Action::Error.as_str()) {
                errored.insert(module.to_owned());
            }
            continue;
        }
        let action = effective_action(result);
        if action == Action::Error {
            errored.insert(module.to_owned());
            continue;
        }
        let points = per_module.entry(module).or_default();
        points.add(action, result.weighted_score);
        total.add(action, result.weighted_score);
    }

    let action = verdict.verdict;
    if action == Action::Tempfail && by_scores(total, verdict) == Action::Permit {
        return DecidedBy {
            cause: Cause::ErrorRule,
            modules: errored,
        };
    }
    let modules = match action {
        Action::Reject | Action::Tempfail | Action::Permit => {
            let decisive: BTreeSet<String> = per_module
                .iter()
                .filter(|(_, points)| by_scores(total.minus(**points), verdict) != action)
                .map(|(module, _)| (*module).to_owned())
                .collect();
            if decisive.is_empty() {
                contributors(&per_module, action)
            } else {
                decisive
            }
        }
        Action::Discard | Action::Quarantine | Action::Error => contributors(&per_module, action),
    };
    DecidedBy {
        cause: Cause::Scores,
        modules,
    }
}

fn contributors(per_module: &BTreeMap<&str, Points>, action: Action) -> BTreeSet<String> {
    per_module
        .iter()
        .filter(|(_, points)| points.toward(action))
        .map(|(module, _)| (*module).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::contract::{CheckResult, MessageId};
    use proptest::prelude::*;
    use serde_json::json;

    fn verdict(action: Action) -> AuditVerdict {
        AuditVerdict {
            verdict: action,
            applied: action,
            reason: String::new(),
            reject_score: 0.0,
            reject_threshold: 5.0,
            tempfail_score: 0.0,
            tempfail_threshold: 8.0,
            noop: false,
            whitelisted: false,
            failure: None,
        }
    }

    fn result(module: &str, action: Action, score: f64) -> AuditResult {
        AuditResult {
            result: CheckResult::new(MessageId::new(), module, action, score, "", json!({})),
            weighted_score: score,
            late: false,
        }
    }

    fn names(d: &DecidedBy) -> Vec<&str> {
        d.modules.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_lone_rejecter_decides() {
        let results = [
            result("rspamd", Action::Reject, 15.0),
            result("greylisting", Action::Permit, 0.0),
            result("reputation", Action::Permit, 0.0),
        ];
        let d = decided_by(&verdict(Action::Reject), &results);
        assert_eq!(d.cause, Cause::Scores);
        assert_eq!(names(&d), ["rspamd"]);
    }

    #[test]
    fn an_over_determined_reject_counts_every_rejecter() {
        let results = [
            result("rspamd", Action::Reject, 15.0),
            result("reputation", Action::Reject, 8.0),
            result("spamassassin", Action::Reject, -1.0),
        ];
        let d = decided_by(&verdict(Action::Reject), &results);
        assert_eq!(names(&d), ["reputation", "rspamd"]);
        assert!(d.any_beyond(&["reputation"]));
    }

    #[test]
    fn two_halves_of_a_reject_both_decide() {
        let results = [
            result("rspamd", Action::Reject, 3.0),
            result("reputation", Action::Reject, 3.0),
        ];
        let d = decided_by(&verdict(Action::Reject), &results);
        assert_eq!(names(&d), ["reputation", "rspamd"]);
    }

    #[test]
    fn reputation_alone_is_not_beyond_reputation() {
        let results = [
            result("rspamd", Action::Permit, 0.0),
            result("reputation", Action::Reject, 8.0),
        ];
        let d = decided_by(&verdict(Action::Reject), &results);
        assert_eq!(names(&d), ["reputation"]);
        assert!(!d.any_beyond(&["greylisting", "quotas", "reputation"]));
    }

    #[test]
    fn greylisting_alone_tempfails_and_a_scanner_can_share_it() {
        let alone = [
            result("greylisting", Action::Tempfail, 9.0),
            result("rspamd", Action::Reject, 0.5),
        ];
        let d = decided_by(&verdict(Action::Tempfail), &alone);
        assert_eq!(names(&d), ["greylisting"]);
        let shared = [
            result("greylisting", Action::Tempfail, 7.0),
            result("rspamd", Action::Reject, 4.0),
        ];
        let d = decided_by(&verdict(Action::Tempfail), &shared);
        assert_eq!(names(&d), ["greylisting", "rspamd"]);
    }

    #[test]
    fn the_error_rule_is_decided_by_the_errors_and_a_failure_by_none() {
        let results = [
            AuditResult {
                result: CheckResult::error(MessageId::new(), "clamav", "down"),
                weighted_score: 25.0,
                late: false,
            },
            result("rspamd", Action::Reject, 2.0),
        ];
        let d = decided_by(&verdict(Action::Tempfail), &results);
        assert_eq!(d.cause, Cause::ErrorRule);
        assert_eq!(names(&d), ["clamav"]);

        let mut late = result("spamassassin", Action::Reject, 9.0);
        late.late = true;
        late.weighted_score = 0.0;
        late.result.determinants = json!({"counted_as": {"action": "error"}});
        let d = decided_by(&verdict(Action::Tempfail), &[late]);
        assert_eq!(d.cause, Cause::ErrorRule);
        assert_eq!(names(&d), ["spamassassin"]);

        let mut failed = verdict(Action::Tempfail);
        failed.failure = Some("the broker is away".into());
        let d = decided_by(&failed, &results);
        assert_eq!(d.cause, Cause::Failure);
        assert!(d.modules.is_empty());
    }

    #[test]
    fn a_permit_is_decided_by_what_kept_it_one() {
        let results = [
            result("rspamd", Action::Reject, 6.0),
            result("contacts", Action::Reject, -3.0),
        ];
        let d = decided_by(&verdict(Action::Permit), &results);
        assert_eq!(names(&d), ["contacts"]);
        let plain = [result("rspamd", Action::Reject, 1.0)];
        assert!(
            decided_by(&verdict(Action::Permit), &plain)
                .modules
                .is_empty()
        );
    }

    #[test]
    fn late_results_and_invalid_scores_count_for_nothing() {
        let mut late = result("spamassassin", Action::Reject, 20.0);
        late.late = true;
        let mut invalid = result("rspamd", Action::Reject, 0.0);
        invalid.result.determinants = json!({"invalid_score": "NaN"});
        let results = [late, invalid, result("clamav", Action::Reject, 25.0)];
        let d = decided_by(&verdict(Action::Reject), &results);
        assert_eq!(names(&d), ["clamav"]);
    }

    fn any_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Permit),
            Just(Action::Tempfail),
            Just(Action::Reject),
            Just(Action::Error),
        ]
    }

    fn any_results() -> impl Strategy<Value = Vec<AuditResult>> {
        proptest::collection::vec(
            (0usize..5, any_action(), -10.0f64..30.0, any::<bool>()),
            0..8,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .map(|(m, action, score, late)| {
                    let mut r = result(["a", "b", "c", "d", "e"][m], action, score);
                    r.late = late && m == 4;
                    r
                })
                .collect()
        })
    }

    /// The verdict the gateway's score rules give the record (no errors counted).
    fn rules(results: &[AuditResult], v: &AuditVerdict) -> Action {
        let mut total = Points::default();
        for r in results.iter().filter(|r| !r.late) {
            total.add(effective_action(r), r.weighted_score);
        }
        by_scores(total, v)
    }

    proptest! {
        /// Every decisive module, taken away, changes the verdict; and when some module is
        /// decisive, every module that changes the verdict is in the set.
        #[test]
        fn decisive_modules_change_the_verdict(results in any_results()) {
            let mut v = verdict(Action::Permit);
            v.verdict = rules(&results, &v);
            let d = decided_by(&v, &results);
            prop_assert_eq!(d.cause, Cause::Scores);
            let without = |module: &str| -> Vec<AuditResult> {
                results.iter().filter(|r| r.result.module != module).cloned().collect()
            };
            let changing: BTreeSet<String> = results
                .iter()
                .filter(|r| !r.late)
                .map(|r| r.result.module.clone())
                .filter(|m| rules(&without(m), &v) != v.verdict)
                .collect();
            if changing.is_empty() {
                // over-determined: the contributors toward the verdict's action
                for m in &d.modules {
                    prop_assert_ne!(v.verdict, Action::Permit);
                    prop_assert_eq!(rules(&without(m), &v), v.verdict);
                }
            } else {
                prop_assert_eq!(&d.modules, &changing);
            }
            // only modules that have a result are named, never a late-only one
            for m in &d.modules {
                prop_assert!(results.iter().any(|r| &r.result.module == m && !r.late));
            }
        }

        /// A refusal is never decided by nobody: some module pushed it over its threshold.
        #[test]
        fn a_refusal_by_scores_always_has_a_module(results in any_results()) {
            let mut v = verdict(Action::Permit);
            v.verdict = rules(&results, &v);
            if v.verdict != Action::Permit {
                prop_assert!(!decided_by(&v, &results).modules.is_empty());
            }
        }

        /// The order of the results does not matter.
        #[test]
        fn order_does_not_matter(results in any_results(), action in any_action()) {
            let v = verdict(action);
            let mut reversed = results.clone();
            reversed.reverse();
            prop_assert_eq!(decided_by(&v, &results), decided_by(&v, &reversed));
        }
    }
}
