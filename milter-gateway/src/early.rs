//! Checks before end of message: the modules listed in `[stage-checks]` are asked at CONNECT,
//! HELO or RCPT, and their answer is given there and then with the verdict's own rules
//! (weights, thresholds, error rule, noop, whitelist, fail action).
//!
//! ClueGetter made every decision at end of message except the per-recipient ones (its SRS
//! module, spec/overview.md §3.4); DESIGN.md keeps that and adds CONNECT and HELO for modules
//! that judge the client alone. What an early check cannot do it leaves to end of message,
//! where every enabled module is asked again: discard and quarantine hold whole messages, so
//! before DATA they continue (and say so in the log). A refused recipient is kept with our
//! reply among the message's refused recipients, so the audit record shows it; a refused
//! client or HELO has no message, and is logged and counted.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use platform::config::FailAction;
use wire::{Action, CheckRequest, CheckResult, CheckStage, Envelope, MessageId, WIRE_VERSION};

use crate::connection::{Context, ModulePlan, Transport, wait_for_results};
use crate::milter::{ProtocolError, Response};
use crate::reply;
use crate::session::EarlyCheck;
use crate::verdict;

/// What to send for the stage, and whether the recipient asked about is refused.
pub struct Answer {
    pub response: Response,
    /// The reply given when an RCPT was refused (for [`crate::session::Session::refuse_recipient`]).
    pub refused_recipient: Option<String>,
}

impl Answer {
    fn proceed() -> Self {
        Self {
            response: Response::Continue,
            refused_recipient: None,
        }
    }
}

/// Asks the stage's modules and decides. Sends SMFIR_PROGRESS while it waits, like end of
/// message; the per-message deadline bounds the wait here too.
pub async fn answer(
    framed: &mut Transport,
    ctx: &Context,
    check: &EarlyCheck,
) -> Result<Answer, ProtocolError> {
    let span = tracing::info_span!("stage_check", stage = %check.stage,
        session_id = %check.session.session_id, client = ?check.session.client_addr,
        helo = %check.session.helo, recipient = %check.recipient);
    decide(framed, ctx, check).instrument(span).await
}

async fn decide(
    framed: &mut Transport,
    ctx: &Context,
    check: &EarlyCheck,
) -> Result<Answer, ProtocolError> {
    let stage = check.stage;
    let wanted = ctx.config.stage_checks.modules(stage);
    let plans: Vec<&ModulePlan> = ctx
        .modules
        .iter()
        .filter(|plan| wanted.contains(&plan.name))
        .collect();
    let client = check.session.client_addr;
    if plans.is_empty() {
        return Ok(Answer::proceed());
    }
    // Whitelisted clients are permitted at end of message, where they are still checked and
    // audited; before it there is nothing to record, so nothing to ask.
    if client.is_some_and(|addr| ctx.config.is_whitelisted(addr)) {
        tracing::debug!("whitelisted client: not asked before end of message");
        return Ok(Answer::proceed());
    }

    let started = Instant::now();
    let (results, failure) = collect(framed, ctx, check, &plans, started).await?;
    let decision = verdict::decide(&ctx.policy, &results);
    let client_ip = client.map(|ip| ip.to_string()).unwrap_or_default();
    let vars = verdict::Vars::new(
        &ctx.policy,
        &decision,
        &client_ip,
        &check.session.mta_hostname,
    );
    let (verdict_action, reason) = match &failure {
        Some(_) => (
            Action::Tempfail,
            "The message could not be checked right now, please try again later".to_owned(),
        ),
        None => (
            decision.action,
            verdict::substitute(&decision.reason, &vars),
        ),
    };
    let applied = if ctx.config.noop {
        Action::Permit
    } else if failure.is_some() {
        match ctx.config.gateway.fail_action {
            FailAction::Tempfail => Action::Tempfail,
            FailAction::Accept => Action::Permit,
        }
    } else {
        match verdict_action {
            // whole-message actions: end of message asks again and applies them
            Action::Discard | Action::Quarantine => Action::Permit,
            action => action,
        }
    };
    let elapsed = started.elapsed();
    metrics::counter!("cluegetter_gateway_stage_checks_total", "stage" => stage.as_str(),
        "verdict" => verdict_action.as_str(), "applied" => applied.as_str())
    .increment(1);
    metrics::histogram!("cluegetter_gateway_stage_check_seconds", "stage" => stage.as_str())
        .record(elapsed.as_secs_f64());
    let modules: Vec<String> = results
        .iter()
        .map(|r| format!("{}={}:{}", r.module, r.action, r.score))
        .collect();
    let reply_text = reply::smtp_reply(applied, &reason, "");
    if let Some(text) = &reply_text {
        tracing::info!(verdict = %verdict_action, %applied, reply = %text, ?modules,
            noop = ctx.config.noop, failure = failure.as_deref().unwrap_or(""),
            elapsed_ms = elapsed.as_millis() as u64, "refused before end of message");
    } else if matches!(verdict_action, Action::Reject | Action::Tempfail) {
        // noop: what would have been refused is what a postmaster trying noop looks for
        tracing::info!(verdict = %verdict_action, %applied, ?modules, noop = ctx.config.noop,
            elapsed_ms = elapsed.as_millis() as u64, reason = %reason,
            "would have been refused before end of message");
    } else {
        tracing::debug!(verdict = %verdict_action, %applied, ?modules, noop = ctx.config.noop,
            elapsed_ms = elapsed.as_millis() as u64, reason = %reason, "stage check passed");
    }
    Ok(match reply_text {
        Some(text) => Answer {
            refused_recipient: (stage == CheckStage::Rcpt).then(|| text.clone()),
            response: Response::ReplyCode(text),
        },
        None => Answer::proceed(),
    })
}

/// The request one module gets at an early stage: the session, and at RCPT the sender and
/// that one recipient. A fresh id per check: it is the reply's correlation id.
fn request_for(
    ctx: &Context,
    plan: &ModulePlan,
    check: &EarlyCheck,
    id: MessageId,
) -> CheckRequest {
    CheckRequest {
        version: WIRE_VERSION,
        instance: ctx.config.instance.clone(),
        message_id: id,
        queue_id: String::new(),
        module: plan.name.clone(),
        session: check.session.clone(),
        envelope: Envelope {
            sender: check.sender.clone(),
            recipients: if check.recipient.is_empty() {
                Vec::new()
            } else {
                vec![check.recipient.clone()]
            },
        },
        headers: Vec::new(),
        content: None,
        content_truncated: false,
        sent_at: chrono::Utc::now(),
        stage: check.stage,
    }
}

/// Asks the plans and waits for them ([`wait_for_results`]). `Err` only when the MTA link
/// fails; a broker that cannot be asked is the second value, the failure.
async fn collect(
    framed: &mut Transport,
    ctx: &Context,
    check: &EarlyCheck,
    plans: &[&ModulePlan],
    started: Instant,
) -> Result<(Vec<CheckResult>, Option<String>), ProtocolError> {
    let id = MessageId::new();
    let requests: Vec<(CheckRequest, Duration)> = plans
        .iter()
        .map(|plan| (request_for(ctx, plan, check, id), plan.timeout))
        .collect();
    let mut pending = match ctx.dispatcher.ask(id, &requests).await {
        Ok(pending) => pending,
        Err(error) => {
            tracing::warn!(%error, "no stage verdict possible");
            metrics::counter!("cluegetter_gateway_broker_unavailable_total").increment(1);
            return Ok((Vec::new(), Some(error.to_string())));
        }
    };
    // what comes after this answer is of no use: the stage is past, and nothing is audited
    let (results, _outstanding) =
        wait_for_results(framed, ctx, &mut pending, plans, id, started).await?;
    Ok((results, None))
}
