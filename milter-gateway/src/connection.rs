//! One milter connection: read commands, drive the [`Session`], and at end of message ask the
//! modules, wait (sending progress so Postfix's timers never fire), decide, answer, audit.
//!
//! Everything that awaits lives here; the protocol rules are in `session.rs`, the verdict in
//! `verdict.rs`, what is applied and answered in `outcome.rs` (carried out here), asking and
//! waiting in `wait.rs`.
//!
//! Late results (DESIGN.md "The verdict"): when the breaker fires, or the message deadline
//! passes before a module's own timeout, the answer does not wait for the modules still
//! outstanding. The audit event is spooled before the answer as always; its publishing is then
//! held (a task of [`Context::late`]) until those modules answered or their timeouts passed, or
//! the gateway shuts down. Results that arrive meanwhile are added to the event marked `late`
//! (its new version is appended to the spool), and never change the verdict. A crash while
//! holding leaves the spooled record without them: replayed once, never lost.
//!
//! A protocol error ends this connection only (Postfix then applies `milter_default_action`);
//! it never takes the gateway down. Generic over the transport ([`Io`]), so that tests can
//! run a connection over `tokio::io::duplex`.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wire::{
    AuditEvent, AuditMessage, AuditResult, AuditVerdict, CheckRequest, CheckResult, CheckStage,
    Envelope, WIRE_VERSION,
};

use crate::audit::AuditPublisher;
use crate::content;
use crate::context::{Context, Io, ModulePlan, Transport};
use crate::dispatch::Pending;
use crate::early;
use crate::headers;
use crate::milter::{FilterCodec, ProtocolError};
use crate::outcome::{self, Facts, Judged, Spooled};
use crate::session::{FinishedMessage, Session, Stage, Step};
use crate::spool::SpoolEntry;
use crate::verdict;
use crate::wait::{self, Outstanding};

/// Serves one connection (from `peer`, for the log) until QUIT, EOF, a protocol error, or
/// shutdown between messages.
pub async fn serve<T: Io>(stream: T, peer: &str, ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut framed = Framed::new(stream, FilterCodec::new(ctx.config.gateway.max_packet_size));
    let mut session = Session::new(ctx.limits);
    let span = tracing::debug_span!("milter", %peer, session_id = %session.info().session_id);
    async move {
        let mut judged = 0_u32;
        let outcome = converse(&mut framed, &mut session, &ctx, &shutdown, &mut judged).await;
        if let Err(error) = outcome {
            tracing::warn!(%error, stage = ?session.stage(), message_id = ?session.message_id(),
                queue_id = %session.queue_id(), "milter connection closed on error");
            metrics::counter!("cluegetter_gateway_protocol_errors_total").increment(1);
            return;
        }
        let info = session.info();
        // Health checks from monitoring hosts carry no message: keep them out of the log.
        let monitor = info
            .client_addr
            .is_some_and(|addr| ctx.config.is_monitor_host(addr));
        if judged == 0 && monitor {
            tracing::debug!(client = ?info.client_addr, "monitor host connection closed");
        } else {
            tracing::info!(client = ?info.client_addr, helo = %info.helo, messages = judged,
                "milter connection closed");
        }
    }
    .instrument(span)
    .await;
}

async fn converse<T: Io>(
    framed: &mut Transport<T>,
    session: &mut Session,
    ctx: &Context,
    shutdown: &CancellationToken,
    judged: &mut u32,
) -> Result<(), ProtocolError> {
    loop {
        // Between messages a shutdown closes the connection; within one, we finish it first.
        let between_messages = matches!(
            session.stage(),
            Stage::Idle | Stage::AwaitConnect | Stage::Negotiate
        );
        let command = tokio::select! {
            command = framed.next() => command,
            () = shutdown.cancelled(), if between_messages => return Ok(()),
        };
        let Some(command) = command.transpose()? else {
            return Ok(()); // EOF: Postfix closed the connection
        };
        match session.on_command(command)? {
            Step::Reply(response) => framed.send(response).await?,
            Step::NoReply => {}
            Step::Close => return Ok(()),
            Step::Check(check) => {
                let answer = early::answer(framed, ctx, &check).await?;
                if let Some(reply) = &answer.refused_recipient {
                    session.refuse_recipient(reply);
                }
                for response in answer.answer {
                    framed.send(response).await?;
                }
            }
            Step::Judge(message) => {
                let span = tracing::info_span!("message", message_id = %message.id, queue_id = %message.queue_id);
                judge(framed, ctx, *message, shutdown)
                    .instrument(span)
                    .await?;
                *judged += 1;
                session.finish_message();
            }
        }
    }
}

async fn judge<T: Io>(
    framed: &mut Transport<T>,
    ctx: &Context,
    mut message: FinishedMessage,
    shutdown: &CancellationToken,
) -> Result<(), ProtocolError> {
    let started = Instant::now();
    let plans: Vec<&ModulePlan> = ctx.modules.iter().collect();
    let mut asked = wait::ask(
        framed,
        ctx,
        message.id,
        &plans,
        |plan| request_for(ctx, plan, &message),
        started,
    )
    .await?;
    // The requests are out: the body is needed only for the archive now.
    let archived_body = (ctx.audit_body_limit > 0).then(|| {
        let mut body = std::mem::take(&mut message.body);
        body.truncate(ctx.audit_body_limit);
        body.shrink_to_fit();
        body
    });
    let decision = verdict::decide(&ctx.policy, &asked.results);
    let noop = ctx.config.noop;
    let whitelisted = message
        .session
        .client_addr
        .is_some_and(|addr| ctx.config.is_whitelisted(addr));

    let client_ip = message
        .session
        .client_addr
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let vars = verdict::Vars::new(
        &ctx.policy,
        &decision,
        &client_ip,
        &message.session.mta_hostname,
    );
    let judged = match &asked.failure {
        Some(failure) => Judged::Failed(failure.clone()),
        // %{clientIp} etc. in a module's reason, with the real totals (spec gap C.24)
        None => Judged::Decided {
            action: decision.action,
            reason: verdict::substitute(&decision.reason, &vars),
            enhanced_status: decision.enhanced_status.clone(),
        },
    };
    let mut facts = Facts {
        stage: CheckStage::Eom,
        judged,
        noop,
        whitelisted,
        fail_action: ctx.config.gateway.fail_action,
        // the event records what applies when the spool takes it
        spooled: Spooled::Written,
        queue_id: &message.queue_id,
    };
    let mut outcome = outcome::outcome(&facts);
    let original_message_id = header_value(&message, "Message-ID");
    let inserted_message_id = (ctx.config.insert_missing_message_id
        && original_message_id.is_empty())
    .then(|| headers::generated_message_id(&message));

    let mut event = AuditEvent {
        version: WIRE_VERSION,
        instance: ctx.config.instance.clone(),
        message_id: message.id,
        answered: true,
        session: message.session.clone(),
        message: AuditMessage {
            queue_id: message.queue_id.clone(),
            received_at: message.received_at,
            sender: message.sender.clone(),
            recipients: message.recipients.clone(),
            rejected_recipients: message.rejected_recipients.clone(),
            headers: message.headers.clone(),
            headers_truncated: message.headers_truncated,
            body_size: message.body_size,
            body_hash: message.body_hash.clone(),
            body: archived_body,
            message_id_header: inserted_message_id
                .clone()
                .unwrap_or_else(|| original_message_id.clone()),
            subject: header_value(&message, "Subject"),
        },
        verdict: AuditVerdict {
            verdict: outcome.verdict,
            applied: outcome.applied,
            reason: outcome.reason.clone(),
            reject_score: decision.reject_score,
            reject_threshold: ctx.policy.reject_score,
            tempfail_score: decision.tempfail_score,
            tempfail_threshold: ctx.policy.tempfail_score,
            noop,
            whitelisted,
            failure: outcome.failure.clone(),
        },
        results: asked
            .results
            .iter()
            .zip(&decision.weighted)
            .map(|(result, weighted)| AuditResult {
                result: recordable(result.clone()),
                weighted_score: *weighted,
                late: false,
            })
            .collect(),
    };
    // The record is on disk before Postfix hears the answer; if it cannot be spooled, the
    // fail policy decides again (outcome.rs).
    let spooled = match ctx.audit.spool(&event).await {
        Ok(entry) => Some(entry),
        Err(error) => {
            tracing::error!(%error, "audit record cannot be spooled; applying the fail action");
            let why = error.to_string();
            facts.spooled = Spooled::Refused(&why);
            outcome = outcome::outcome(&facts);
            event.verdict.applied = outcome.applied;
            event.verdict.failure = outcome.failure.clone();
            None
        }
    };
    let answer = send_answer(
        framed,
        ctx,
        &message,
        &asked.results,
        &vars,
        inserted_message_id.as_deref(),
        &outcome,
    )
    .await;
    // Published whether or not the answer reached the MTA; the record says which.
    let answered = answer.is_ok();
    match asked.late.take() {
        Some((pending, outstanding)) => {
            // The file says "answered" at once: a crash while holding replays it as such.
            if answered && let Some(entry) = &spooled {
                ctx.audit.mark_answered(entry);
            }
            tracing::debug!(outstanding = ?outstanding.iter().map(|o| &o.module).collect::<Vec<_>>(),
                "audit event held for late results");
            ctx.late.spawn(
                hold_for_late(
                    ctx.audit.clone(),
                    pending,
                    outstanding,
                    event,
                    spooled,
                    answered,
                    shutdown.clone(),
                )
                .in_current_span(),
            );
        }
        None => ctx.audit.publish(spooled, event, answered),
    }
    answer?;
    let elapsed = started.elapsed();
    metrics::histogram!("cluegetter_gateway_eom_to_reply_seconds").record(elapsed.as_secs_f64());
    metrics::counter!("cluegetter_gateway_messages_total", "verdict" => outcome.verdict.as_str(), "applied" => outcome.applied.as_str()).increment(1);
    tracing::info!(
        verdict = %outcome.verdict,
        applied = %outcome.applied,
        reject_score = decision.reject_score,
        tempfail_score = decision.tempfail_score,
        noop,
        whitelisted,
        failure = asked.failure.as_deref().unwrap_or(""),
        elapsed_ms = elapsed.as_millis() as u64,
        reason = %outcome.reason,
        "message judged"
    );
    Ok(())
}

/// Carries out the outcome: the modifications (when it says so), then the answer.
async fn send_answer<T: Io>(
    framed: &mut Transport<T>,
    ctx: &Context,
    message: &FinishedMessage,
    results: &[CheckResult],
    vars: &verdict::Vars<'_>,
    inserted_message_id: Option<&str>,
    outcome: &outcome::Outcome,
) -> Result<(), ProtocolError> {
    // Header and envelope changes, whatever the verdict (as ClueGetter), but only where the
    // message goes on: Postfix drops them with a rejected or deferred message anyway.
    if outcome.changes {
        for modification in
            headers::modifications(&ctx.config, message, results, vars, inserted_message_id)
        {
            framed.send(modification).await?;
        }
    }
    for response in &outcome.answer {
        framed.send(response.clone()).await?;
    }
    Ok(())
}

/// A result as the record keeps it. JSON has no NaN or infinity; the verdict already treated
/// such a score as an error (verdict.rs), the record keeps the fact in the determinants.
fn recordable(mut result: CheckResult) -> CheckResult {
    if !result.score.is_finite() {
        result.determinants = serde_json::json!({
            "invalid_score": result.score.to_string(),
            "module_determinants": result.determinants,
        });
        result.score = 0.0;
    }
    result
}

/// Adds a result that came after the verdict to the event, marked late (weighted score 0: it
/// did not count). For a module the deadline cut, it replaces the error result the verdict
/// counted, which stays in `determinants.counted_as`.
fn add_late(event: &mut AuditEvent, result: CheckResult, counted_as_error: bool) {
    let mut result = recordable(result);
    let counted = counted_as_error
        .then(|| {
            event
                .results
                .iter()
                .position(|r| r.result.module == result.module && !r.late)
        })
        .flatten();
    let record = |result| AuditResult {
        result,
        weighted_score: 0.0,
        late: true,
    };
    match counted {
        Some(pos) => {
            let counted = &event.results[pos];
            result.determinants = serde_json::json!({
                "module_determinants": result.determinants,
                "counted_as": {
                    "action": counted.result.action,
                    "score": counted.result.score,
                    "weighted_score": counted.weighted_score,
                    "determinants": counted.result.determinants,
                },
            });
            event.results[pos] = record(result);
        }
        None => event.results.push(record(result)),
    }
}

/// Holds the (spooled, answered) event until the outstanding modules answered or their
/// timeouts passed, or the gateway shuts down; adds what came, marked late; then queues it
/// for publishing as usual.
async fn hold_for_late(
    audit: AuditPublisher,
    mut pending: Pending,
    mut outstanding: Vec<Outstanding>,
    mut event: AuditEvent,
    spooled: Option<SpoolEntry>,
    answered: bool,
    shutdown: CancellationToken,
) {
    let mut late = 0_usize;
    while let Some(until) = outstanding.iter().map(|o| o.until).min() {
        tokio::select! {
            result = pending.results.recv() => match result {
                Some(result) => {
                    if let Some(pos) = outstanding.iter().position(|o| o.module == result.module) {
                        let o = outstanding.swap_remove(pos);
                        tracing::info!(module = %result.module, action = %result.action,
                            score = result.score, "late result recorded");
                        metrics::counter!("cluegetter_gateway_late_results_total",
                            "module" => result.module.clone()).increment(1);
                        add_late(&mut event, result, o.counted_as_error);
                        late += 1;
                    }
                }
                None => break, // the broker link broke: nothing more comes
            },
            () = tokio::time::sleep_until(until) => {
                let now = Instant::now();
                outstanding.retain(|o| o.until > now);
            }
            () = shutdown.cancelled() => break,
        }
    }
    drop(pending);
    if !outstanding.is_empty() {
        tracing::debug!(not_recorded = ?outstanding.iter().map(|o| &o.module).collect::<Vec<_>>(),
            "audit event published without some late results");
    }
    let entry = match spooled {
        Some(entry) if late > 0 => {
            event.answered = answered;
            match audit.rewrite(&entry, &event).await {
                Ok(entry) => Some(entry),
                Err(error) => {
                    // The spooled record stays as it was: complete but for the late results.
                    tracing::warn!(%error, "cannot add the late results to the spooled audit event");
                    Some(entry)
                }
            }
        }
        other => other,
    };
    audit.publish(entry, event, answered);
}

fn header_value(message: &FinishedMessage, name: &str) -> String {
    message
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim().to_owned())
        .unwrap_or_default()
}

fn request_for(ctx: &Context, plan: &ModulePlan, message: &FinishedMessage) -> CheckRequest {
    let (content, content_truncated) = match plan.max_size {
        Some(max) => {
            let (content, truncated) = content::build(message, max);
            (Some(content), truncated)
        }
        None => (None, false),
    };
    CheckRequest {
        version: WIRE_VERSION,
        instance: ctx.config.instance.clone(),
        message_id: message.id,
        queue_id: message.queue_id.clone(),
        module: plan.name.clone(),
        session: message.session.clone(),
        envelope: Envelope {
            sender: message.sender.clone(),
            recipients: message.recipients.clone(),
        },
        headers: message.headers.clone(),
        content,
        content_truncated,
        sent_at: chrono::Utc::now(),
        stage: wire::CheckStage::Eom,
    }
}
