//! Asking modules and waiting for their results, for end of message (`connection.rs`) and
//! for the early stages (`early.rs`) alike: publish the requests, then wait until all
//! answered, the breaker fired, or each module's timeout (bounded by the message deadline)
//! passed, sending SMFIR_PROGRESS meanwhile so Postfix's timers never fire. What is decided
//! from the results is not here (`verdict.rs`, `outcome.rs`).

use futures::SinkExt;
use tokio::time::Instant;
use wire::{CheckRequest, CheckResult, MessageId};

use crate::context::{Context, Io, ModulePlan, Transport};
use crate::dispatch::Pending;
use crate::milter::{ProtocolError, Response};
use crate::verdict;

/// What came of asking the modules.
pub(crate) struct Asked {
    pub(crate) results: Vec<CheckResult>,
    /// Set when no verdict could be had at all: the modules could not be asked.
    pub(crate) failure: Option<String>,
    /// Modules the verdict did not wait for whose results may still come, and where they
    /// come; `None` when nothing is outstanding.
    pub(crate) late: Option<(Pending, Vec<Outstanding>)>,
}

/// Asks `plans` (one request each, made by `request`, all correlated as `id`) and waits for
/// their results ([`wait_for_results`]). `Err` only when the MTA link fails; a broker that
/// cannot be asked is [`Asked::failure`].
pub(crate) async fn ask<T: Io>(
    framed: &mut Transport<T>,
    ctx: &Context,
    id: MessageId,
    plans: &[&ModulePlan],
    request: impl Fn(&ModulePlan) -> CheckRequest,
    started: Instant,
) -> Result<Asked, ProtocolError> {
    if plans.is_empty() {
        return Ok(Asked {
            results: Vec::new(),
            failure: None,
            late: None,
        });
    }
    // Each request lives until its module's timeout, bounded by the message deadline: a
    // message that finds no broker link waits that long for one (`Dispatcher::ask`).
    let deadline = started + ctx.config.gateway.message_deadline;
    let requests: Vec<_> = plans
        .iter()
        .map(|plan| (request(plan), (started + plan.timeout).min(deadline)))
        .collect();
    let mut pending = match ctx.dispatcher.ask(id, &requests).await {
        Ok(pending) => pending,
        Err(error) => {
            tracing::warn!(%error, "no verdict possible");
            metrics::counter!("cluegetter_gateway_broker_unavailable_total").increment(1);
            return Ok(Asked {
                results: Vec::new(),
                failure: Some(error.to_string()),
                late: None,
            });
        }
    };
    let (results, outstanding) =
        wait_for_results(framed, ctx, &mut pending, plans, id, started).await?;
    Ok(Asked {
        results,
        failure: None,
        late: (!outstanding.is_empty()).then_some((pending, outstanding)),
    })
}

/// A module whose result the verdict was made without, though its timeout had not passed.
#[derive(Debug)]
pub(crate) struct Outstanding {
    pub(crate) module: String,
    /// The module's own timeout: no result is awaited after it.
    pub(crate) until: Instant,
    /// The message deadline cut it: the verdict counted it as an error result, which a late
    /// result replaces in the record. Otherwise (the breaker fired) it has no result yet.
    pub(crate) counted_as_error: bool,
}

/// Waits for the results of `plans` (asked as `id`): until all answered, the breaker fired,
/// or each module's timeout (bounded by the message deadline) passed, sending SMFIR_PROGRESS
/// every `progress-interval` meanwhile. A module that did not answer in time counts as an
/// error. Also returns the modules still worth waiting for after the verdict (cut by the
/// breaker or the message deadline before their own timeout), for the late results.
async fn wait_for_results<T: Io>(
    framed: &mut Transport<T>,
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
                    // The gateway is shutting down: these results will never come.
                    for plan in waiting.drain(..) {
                        results.push(CheckResult::error(id, &plan.name, "the gateway stopped waiting (shutting down)"));
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
