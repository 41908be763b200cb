//! `bounce-ingest submit`: one report on stdin, from Postfix's local(8) running an alias pipe
//! (`bounce-processing: |"/usr/bin/bounce-ingest submit"`). It succeeds only once the report
//! is safe; otherwise the caller exits 75 (EX_TEMPFAIL) and Postfix keeps the report and tries
//! again later, so Postfix's own queue is this path's spool.
//!
//! Safe means either:
//! - RabbitMQ confirmed the bounce event (published persistent to the durable bounce
//!   exchange, `mandatory`): the default, which needs `broker.url` (and its password) where
//!   local(8) runs the command;
//! - with `--via HOST:PORT`, the listener of a running `bounce-ingest run` answered `250`
//!   after spooling it: no secret is needed by the pipe. The report is streamed as it comes.

use std::net::SocketAddr;
use std::time::Duration;

use platform::broker;
use platform::config::{Config, Urls};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use wire::{BounceEvent, BounceId, BounceSource};

use crate::publish::{self, PublishError};
use crate::report::{self, Received, read_bounded};

/// The exit status that makes Postfix keep the report and retry (sysexits.h).
pub const EX_TEMPFAIL: u8 = 75;
/// The exit status for an empty input: there is no report to keep (sysexits.h).
pub const EX_NOINPUT: u8 = 66;

/// Longest answer line we read from the listener.
const MAX_ANSWER: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot read the report from stdin")]
    Read(#[source] std::io::Error),
    #[error("stdin was empty: no report")]
    Empty,
    #[error("could not hand the report on within submit-timeout ({0:?})")]
    Timeout(Duration),
    #[error("cannot reach RabbitMQ")]
    Connect(#[source] broker::ConnectError),
    #[error("RabbitMQ did not take the report")]
    Publish(#[from] PublishError),
    #[error("cannot hand the report to the listener at {addr}")]
    Listener {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the listener at {addr} did not take the report: {answer:?}")]
    Refused { addr: SocketAddr, answer: String },
}

impl SubmitError {
    /// The exit status for this failure: only an empty input is not worth a retry.
    pub fn exit_code(&self) -> u8 {
        match self {
            SubmitError::Empty => EX_NOINPUT,
            _ => EX_TEMPFAIL,
        }
    }
}

/// What became of a submitted report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Published and confirmed by RabbitMQ.
    Published(BounceId),
    /// Taken by the listener; its answer line.
    Spooled(String),
}

/// Reads one report from `input` and hands it on; see the module documentation.
///
/// # Errors
/// The report is not safe (or there was none); [`SubmitError::exit_code`] says how to exit.
pub async fn submit<R: AsyncRead + Unpin>(
    config: &Config,
    input: &mut R,
    via: Option<SocketAddr>,
) -> Result<Submitted, SubmitError> {
    let timeout = config.bounce_ingest.submit_timeout;
    if let Some(addr) = via {
        return tokio::time::timeout(timeout, to_listener(addr, input))
            .await
            .map_err(|_| SubmitError::Timeout(timeout))?;
    }
    let mut received = Received::default();
    read_bounded(input, config.bounce_ingest.max_size, &mut received)
        .await
        .map_err(SubmitError::Read)?;
    if received.is_empty() {
        return Err(SubmitError::Empty);
    }
    let event = report::event(config, received, BounceSource::Submit, None, None);
    tokio::time::timeout(timeout, to_broker(&config.broker.url, &event))
        .await
        .map_err(|_| SubmitError::Timeout(timeout))??;
    Ok(Submitted::Published(event.bounce_id))
}

async fn to_broker(urls: &Urls, event: &BounceEvent) -> Result<(), SubmitError> {
    let connection = broker::connect_any(urls, "bounce-ingest submit")
        .await
        .map_err(SubmitError::Connect)?;
    let result = async {
        let channel = publish::open_channel(&connection)
            .await
            .map_err(PublishError::from)?;
        publish::publish(&channel, event).await
    }
    .await;
    let _ = connection.close(200, "report handed on".into()).await;
    result.map_err(SubmitError::from)
}

async fn to_listener<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    input: &mut R,
) -> Result<Submitted, SubmitError> {
    let io = |source| SubmitError::Listener { addr, source };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let sent = tokio::io::copy(input, &mut stream).await.map_err(io)?;
    if sent == 0 {
        return Err(SubmitError::Empty);
    }
    stream.shutdown().await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    let answer = String::from_utf8_lossy(&answer).trim().to_owned();
    if answer.starts_with("250 ") {
        Ok(Submitted::Spooled(answer))
    } else {
        Err(SubmitError::Refused { addr, answer })
    }
}
