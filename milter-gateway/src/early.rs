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

use tokio::time::Instant;
use tracing::Instrument;
use wire::{Action, CheckRequest, Envelope, MessageId, WIRE_VERSION};

use crate::context::{Context, Io, ModulePlan, Transport};
use crate::milter::{ProtocolError, Response};
use crate::outcome::{self, Facts, Judged, Spooled};
use crate::session::EarlyCheck;
use crate::verdict;
use crate::wait;

/// What to send for the stage, and whether the recipient asked about is refused.
pub struct Answer {
    /// The responses, in order.
    pub answer: Vec<Response>,
    /// The reply given when an RCPT was refused (for [`crate::session::Session::refuse_recipient`]).
    pub refused_recipient: Option<String>,
}

impl Answer {
    fn proceed() -> Self {
        Self {
            answer: vec![Response::Continue],
            refused_recipient: None,
        }
    }
}

/// Asks the stage's modules and decides. Sends SMFIR_PROGRESS while it waits, like end of
/// message; the per-message deadline bounds the wait here too.
pub async fn answer<T: Io>(
    framed: &mut Transport<T>,
    ctx: &Context,
    check: &EarlyCheck,
) -> Result<Answer, ProtocolError> {
    let span = tracing::info_span!("stage_check", stage = %check.stage,
        session_id = %check.session.session_id, client = ?check.session.client_addr,
        helo = %check.session.helo, recipient = %check.recipient);
    decide(framed, ctx, check).instrument(span).await
}

async fn decide<T: Io>(
    framed: &mut Transport<T>,
    ctx: &Context,
    check: &EarlyCheck,
) -> Result<Answer, ProtocolError> {
    let stage = check.stage;
    // `[stage-checks]`, and srs at RCPT for recipients that look like SRS addresses
    let plans: Vec<&ModulePlan> = ctx
        .modules
        .iter()
        .filter(|plan| ctx.config.asks_early(&plan.name, stage, &check.recipient))
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
    // A fresh id per check: it is the replies' correlation id, so a late answer can never
    // pass for the message's own result.
    let id = MessageId::new();
    // What comes after this answer is of no use (the stage is past, nothing is audited): the
    // late results are dropped with `asked`.
    let asked = wait::ask(
        framed,
        ctx,
        id,
        &plans,
        |plan| request_for(ctx, plan, check, id),
        started,
    )
    .await?;
    let decision = verdict::decide(&ctx.policy, &asked.results);
    let client_ip = client.map(|ip| ip.to_string()).unwrap_or_default();
    let vars = verdict::Vars::new(
        &ctx.policy,
        &decision,
        &client_ip,
        &check.session.mta_hostname,
    );
    let judged = match &asked.failure {
        Some(failure) => Judged::Failed(failure.clone()),
        None => Judged::Decided {
            action: decision.action,
            reason: verdict::substitute(&decision.reason, &vars),
            enhanced_status: decision.enhanced_status.clone(),
        },
    };
    let outcome = outcome::outcome(&Facts {
        stage,
        judged,
        noop: ctx.config.noop,
        whitelisted: false,
        fail_action: ctx.config.gateway.fail_action,
        spooled: Spooled::NotUsed,
        queue_id: "",
    });
    let (verdict_action, applied, reason) = (outcome.verdict, outcome.applied, &outcome.reason);
    let elapsed = started.elapsed();
    metrics::counter!("cluegetter_gateway_stage_checks_total", "stage" => stage.as_str(),
        "verdict" => verdict_action.as_str(), "applied" => applied.as_str())
    .increment(1);
    metrics::histogram!("cluegetter_gateway_stage_check_seconds", "stage" => stage.as_str())
        .record(elapsed.as_secs_f64());
    let modules: Vec<String> = asked
        .results
        .iter()
        .map(|r| format!("{}={}:{}", r.module, r.action, r.score))
        .collect();
    let failure = asked.failure.as_deref().unwrap_or("");
    if let Some(Response::ReplyCode(text)) = outcome.answer.first() {
        tracing::info!(verdict = %verdict_action, %applied, reply = %text, ?modules,
            noop = ctx.config.noop, failure, elapsed_ms = elapsed.as_millis() as u64,
            "refused before end of message");
    } else if matches!(verdict_action, Action::Reject | Action::Tempfail) {
        // noop: what would have been refused is what a postmaster trying noop looks for
        tracing::info!(verdict = %verdict_action, %applied, ?modules, noop = ctx.config.noop,
            elapsed_ms = elapsed.as_millis() as u64, reason = %reason,
            "would have been refused before end of message");
    } else {
        tracing::debug!(verdict = %verdict_action, %applied, ?modules, noop = ctx.config.noop,
            elapsed_ms = elapsed.as_millis() as u64, reason = %reason, "stage check passed");
    }
    Ok(Answer {
        answer: outcome.answer,
        refused_recipient: outcome.refused_recipient,
    })
}

/// The request one module gets at an early stage: the session, and at RCPT the sender and
/// that one recipient, correlated as `id`.
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
