//! One milter connection: read commands, drive the [`Session`], and at end of message ask the
//! modules, wait (sending progress so Postfix's timers never fire), decide, answer, audit.
//!
//! Everything that awaits lives here; the protocol rules are in `session.rs`, the verdict in
//! `verdict.rs`.
//!
//! Late results (DESIGN.md "The verdict"): when the breaker fires, or the message deadline
//! passes before a module's own timeout, the answer does not wait for the modules still
//! outstanding. The audit event is spooled before the answer as always; its publishing is then
//! held (a task of [`Context::late`]) until those modules answered or their timeouts passed, or
//! the gateway shuts down. Results that arrive meanwhile are added to the event marked `late`
//! (the spool file is rewritten atomically), and never change the verdict. A crash while
//! holding leaves the spooled record without them: replayed once, never lost. A protocol error ends this connection only (Postfix then applies
//! `milter_default_action`); it never takes the gateway down.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use platform::config::{Config, FailAction};
use wire::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, CheckRequest, CheckResult,
    Envelope, MessageId, WIRE_VERSION,
};

use crate::audit::AuditPublisher;
use crate::content;
use crate::dispatch::{Dispatcher, Pending};
use crate::early;
use crate::headers;
use crate::milter::{FilterCodec, ProtocolError, Response};
use crate::reply;
use crate::session::{EarlyChecks, FinishedMessage, Limits, Session, Stage, Step};
use crate::spool::SpoolEntry;
use crate::verdict::{self, Policy};

/// What every connection shares.
pub struct Context {
    pub config: Config,
    pub policy: Policy,
    pub limits: Limits,
    /// The enabled modules, in the order results are listed when they tie.
    pub modules: Vec<ModulePlan>,
    pub dispatcher: Dispatcher,
    pub audit: AuditPublisher,
    /// Bytes of the body the audit event carries (0: none); see
    /// [`platform::config::GatewayConfig::audit_body_limit`].
    pub audit_body_limit: usize,
    /// The audit events held back for late results; the server waits for them at shutdown.
    pub late: TaskTracker,
}

/// How one module is asked.
#[derive(Clone, Debug)]
pub struct ModulePlan {
    pub name: String,
    pub timeout: Duration,
    /// Bytes of content the module gets; `None` for metadata modules.
    pub max_size: Option<usize>,
}

impl Context {
    pub fn new(config: Config, dispatcher: Dispatcher, audit: AuditPublisher) -> Self {
        let modules: Vec<ModulePlan> = config
            .enabled_modules()
            .into_iter()
            .filter_map(|name| {
                config.module(name).map(|settings| ModulePlan {
                    name: name.to_owned(),
                    timeout: settings.timeout(),
                    max_size: settings.max_size(),
                })
            })
            .collect();
        let audit_body_limit = platform::config::GatewayConfig::audit_body_limit(&config);
        // The body is kept only as far as someone needs it: the largest module max-size, or
        // the archive's share.
        let body_limit = modules
            .iter()
            .filter_map(|m| m.max_size)
            .max()
            .unwrap_or(0)
            .max(audit_body_limit);
        let stage_checks = &config.stage_checks;
        let limits = Limits {
            body_limit,
            max_headers: config.gateway.max_headers,
            max_header_bytes: config.gateway.max_header_bytes,
            early_checks: EarlyChecks {
                connect: !stage_checks.connect.is_empty(),
                helo: !stage_checks.helo.is_empty(),
                rcpt: !stage_checks.rcpt.is_empty(),
            },
        };
        Self {
            policy: Policy::from_config(&config),
            limits,
            modules,
            dispatcher,
            audit,
            audit_body_limit,
            late: TaskTracker::new(),
            config,
        }
    }
}

pub(crate) type Transport = Framed<TcpStream, FilterCodec>;

/// Serves one connection until QUIT, EOF, a protocol error, or shutdown between messages.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: CancellationToken) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
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

async fn converse(
    framed: &mut Transport,
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
                framed.send(answer.response).await?;
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

/// What came of asking the modules.
struct Collected {
    results: Vec<CheckResult>,
    /// Set when no verdict could be had at all.
    failure: Option<String>,
    /// Modules the verdict did not wait for whose results may still come, and where they
    /// come; `None` when nothing is outstanding.
    late: Option<(Pending, Vec<Outstanding>)>,
}

/// A module whose result the verdict was made without, though its timeout had not passed.
#[derive(Debug)]
pub(crate) struct Outstanding {
    module: String,
    /// The module's own timeout: no result is awaited after it.
    until: Instant,
    /// The message deadline cut it: the verdict counted it as an error result, which a late
    /// result replaces in the record. Otherwise (the breaker fired) it has no result yet.
    counted_as_error: bool,
}

async fn judge(
    framed: &mut Transport,
    ctx: &Context,
    mut message: FinishedMessage,
    shutdown: &CancellationToken,
) -> Result<(), ProtocolError> {
    let started = Instant::now();
    let mut collected = collect_results(framed, ctx, &message, started).await?;
    // The requests are out: the body is needed only for the archive now.
    let archived_body = (ctx.audit_body_limit > 0).then(|| {
        let mut body = std::mem::take(&mut message.body);
        body.truncate(ctx.audit_body_limit);
        body.shrink_to_fit();
        body
    });
    let decision = verdict::decide(&ctx.policy, &collected.results);
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
    let (verdict_action, reason) = match &collected.failure {
        Some(_) => (
            Action::Tempfail,
            "The message could not be checked right now, please try again later".to_owned(),
        ),
        // %{clientIp} etc. in a module's reason, with the real totals (spec gap C.24)
        None => (
            decision.action,
            verdict::substitute(&decision.reason, &vars),
        ),
    };
    let original_message_id = header_value(&message, "Message-ID");
    let inserted_message_id = (ctx.config.insert_missing_message_id
        && original_message_id.is_empty())
    .then(|| headers::generated_message_id(&message));
    let mut applied = if noop || whitelisted {
        Action::Permit
    } else if collected.failure.is_some() {
        match ctx.config.gateway.fail_action {
            FailAction::Tempfail => Action::Tempfail,
            FailAction::Accept => Action::Permit,
        }
    } else {
        verdict_action
    };

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
            verdict: verdict_action,
            applied,
            reason: reason.clone(),
            reject_score: decision.reject_score,
            reject_threshold: ctx.policy.reject_score,
            tempfail_score: decision.tempfail_score,
            tempfail_threshold: ctx.policy.tempfail_score,
            noop,
            whitelisted,
            failure: collected.failure.clone(),
        },
        results: collected
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
    // fail action applies rather than an answer without a record.
    let spooled = match ctx.audit.spool(&event).await {
        Ok(entry) => Some(entry),
        Err(error) => {
            tracing::error!(%error, "audit record cannot be spooled; applying the fail action");
            if !noop && ctx.config.gateway.fail_action == FailAction::Tempfail {
                applied = Action::Tempfail;
                event.verdict.applied = applied;
                event.verdict.failure = Some(error.to_string());
            }
            None
        }
    };
    let reply_reason = if applied == verdict_action {
        reason.clone()
    } else {
        "Service temporarily unavailable, please try again later".to_owned()
    };
    let answer = send_answer(
        framed,
        ctx,
        &message,
        &collected.results,
        &vars,
        inserted_message_id.as_deref(),
        applied,
        &reply_reason,
        &reason,
    )
    .await;
    // Published whether or not the answer reached the MTA; the record says which.
    let answered = answer.is_ok();
    match collected.late.take() {
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
    metrics::counter!("cluegetter_gateway_messages_total", "verdict" => verdict_action.as_str(), "applied" => applied.as_str()).increment(1);
    tracing::info!(
        verdict = %verdict_action,
        %applied,
        reject_score = decision.reject_score,
        tempfail_score = decision.tempfail_score,
        noop,
        whitelisted,
        failure = collected.failure.as_deref().unwrap_or(""),
        elapsed_ms = elapsed.as_millis() as u64,
        reason = %reason,
        "message judged"
    );
    Ok(())
}

/// The modifications and the final reply for the message.
#[allow(clippy::too_many_arguments)]
async fn send_answer(
    framed: &mut Transport,
    ctx: &Context,
    message: &FinishedMessage,
    results: &[CheckResult],
    vars: &verdict::Vars<'_>,
    inserted_message_id: Option<&str>,
    applied: Action,
    reply_reason: &str,
    reason: &str,
) -> Result<(), ProtocolError> {
    // Header and envelope changes, whatever the verdict (as ClueGetter), but only where the
    // message goes on: Postfix drops them with a rejected or deferred message anyway.
    if matches!(applied, Action::Permit | Action::Quarantine) {
        for modification in
            headers::modifications(&ctx.config, message, results, vars, inserted_message_id)
        {
            framed.send(modification).await?;
        }
    }
    match applied {
        Action::Reject | Action::Tempfail => {
            let text = reply::smtp_reply(applied, reply_reason, &message.queue_id)
                .unwrap_or_else(|| "451 4.7.1 Please try again later".to_owned());
            framed.send(Response::ReplyCode(text)).await?;
        }
        Action::Discard => framed.send(Response::Discard).await?,
        Action::Quarantine => {
            framed
                .send(Response::Quarantine(reply::quarantine_reason(reason)))
                .await?;
            framed.send(Response::Continue).await?;
        }
        Action::Permit | Action::Error => framed.send(Response::Continue).await?,
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

/// Asks every enabled module and waits for their results: until all answered, the breaker
/// fired, or each module's timeout (and the message deadline) passed. Sends SMFIR_PROGRESS
/// every `progress-interval` meanwhile.
async fn collect_results(
    framed: &mut Transport,
    ctx: &Context,
    message: &FinishedMessage,
    started: Instant,
) -> Result<Collected, ProtocolError> {
    if ctx.modules.is_empty() {
        return Ok(Collected {
            results: Vec::new(),
            failure: None,
            late: None,
        });
    }
    let requests: Vec<(CheckRequest, Duration)> = ctx
        .modules
        .iter()
        .map(|plan| (request_for(ctx, plan, message), plan.timeout))
        .collect();
    let mut pending = match ctx.dispatcher.ask(message.id, &requests).await {
        Ok(pending) => pending,
        Err(error) => {
            tracing::warn!(%error, "no verdict possible");
            metrics::counter!("cluegetter_gateway_broker_unavailable_total").increment(1);
            return Ok(Collected {
                results: Vec::new(),
                failure: Some(error.to_string()),
                late: None,
            });
        }
    };

    let plans: Vec<&ModulePlan> = ctx.modules.iter().collect();
    let (results, outstanding) =
        wait_for_results(framed, ctx, &mut pending, &plans, message.id, started).await?;
    Ok(Collected {
        results,
        failure: None,
        late: (!outstanding.is_empty()).then_some((pending, outstanding)),
    })
}

/// Waits for the results of `plans` (asked as `id`): until all answered, the breaker fired,
/// or each module's timeout (bounded by the message deadline) passed, sending SMFIR_PROGRESS
/// every `progress-interval` meanwhile. A module that did not answer in time counts as an
/// error. Also returns the modules still worth waiting for after the verdict (cut by the
/// breaker or the message deadline before their own timeout), for the late results.
pub(crate) async fn wait_for_results(
    framed: &mut Transport,
    ctx: &Context,
    pending: &mut Pending,
    plans: &[&ModulePlan],
    id: MessageId,
    started: Instant,
) -> Result<(Vec<CheckResult>, Vec<Outstanding>), ProtocolError> {
    let deadline = started + ctx.config.gateway.message_deadline;
    let mut results: Vec<CheckResult> = Vec::with_capacity(plans.len());
    let mut waiting: Vec<&ModulePlan> = plans.to_vec();
    let progress_every = ctx.config.gateway.progress_interval;
    let mut next_progress = started + progress_every;
    let mut outstanding: Vec<Outstanding> = Vec::new();
    while !waiting.is_empty() {
        if verdict::breaker_tripped(&ctx.policy, &results) {
            tracing::debug!(not_awaited = ?waiting.iter().map(|m| &m.name).collect::<Vec<_>>(), "breaker fired");
            let now = Instant::now();
            outstanding.extend(
                waiting
                    .iter()
                    .filter(|plan| started + plan.timeout > now)
                    .map(|plan| Outstanding {
                        module: plan.name.clone(),
                        until: started + plan.timeout,
                        counted_as_error: false,
                    }),
            );
            break;
        }
        let next_timeout = waiting
            .iter()
            .map(|m| (started + m.timeout).min(deadline))
            .min()
            .unwrap_or(deadline);
        tokio::select! {
            result = pending.results.recv() => match result {
                Some(result) => {
                    if let Some(pos) = waiting.iter().position(|m| m.name == result.module) {
                        waiting.swap_remove(pos);
                        results.push(result);
                    }
                }
                None => {
                    // The broker link broke: these results will never come.
                    for plan in waiting.drain(..) {
                        results.push(CheckResult::error(id, &plan.name, "the RabbitMQ connection was lost while waiting"));
                    }
                }
            },
            () = tokio::time::sleep_until(next_timeout) => {
                let now = Instant::now();
                waiting.retain(|plan| {
                    let expired = now >= (started + plan.timeout).min(deadline);
                    if expired {
                        if started + plan.timeout > now {
                            // the message deadline, not the module's timeout: it may still come
                            outstanding.push(Outstanding {
                                module: plan.name.clone(),
                                until: started + plan.timeout,
                                counted_as_error: true,
                            });
                        }
                        tracing::warn!(module = %plan.name, timeout = ?plan.timeout, "module did not answer in time");
                        metrics::counter!("cluegetter_gateway_module_timeouts_total", "module" => plan.name.clone()).increment(1);
                        results.push(CheckResult::error(
                            id,
                            &plan.name,
                            format!("no answer within {:?}", plan.timeout.min(ctx.config.gateway.message_deadline)),
                        ));
                    }
                    !expired
                });
            },
            () = tokio::time::sleep_until(next_progress) => {
                framed.send(Response::Progress).await?;
                next_progress += progress_every;
            }
        }
    }
    // Keep the order stable (module order), so the audit and the reason choice do not depend
    // on arrival order.
    results.sort_by_key(|r| {
        plans
            .iter()
            .position(|m| m.name == r.module)
            .unwrap_or(usize::MAX)
    });
    Ok((results, outstanding))
}
