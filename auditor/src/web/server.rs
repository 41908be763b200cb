//! The web interface's HTTP server: the router served over TCP within bounds, so that a flood of
//! slow or idle clients can neither take the process's file descriptors (and with them the
//! consumer's RabbitMQ and database connections) nor keep the UI from answering.
//!
//! - **Connection cap** (`web-max-connections`): a permit is taken *before* `accept`, so at most
//!   that many connections are open; further clients wait in the kernel's accept queue, costing
//!   the process nothing.
//! - **Header read timeout** (`web-header-read-timeout`, hyper's): a client must send a whole
//!   request head within it, counted from the connection or the previous response; so it also
//!   closes idle kept-alive connections (slowloris and idle floods alike).
//! - **Stall timeout** (`web-idle-timeout`, [`Stall`]): a connection on which nothing moves
//!   either way for that long while the server waits on it is closed (a client that does not
//!   read its response, a request body that stops).
//! - **Request timeout** (`web-request-timeout`): `super::mod`'s middleware answers 503.
//! - **Its own runtime** ([`spawn`]): the web runs on threads of its own, so a busy UI cannot
//!   take the consumer's worker threads, nor the consumer the UI's.
//!
//! On shutdown the listener closes at once and open connections finish their request in hand
//! (hyper's graceful shutdown) for at most [`DRAIN_TIMEOUT`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Longest the open connections get to finish after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed `accept` (out of file descriptors: wait for some to close).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Worker threads of the web's own runtime ([`spawn`]).
pub const THREADS: usize = 2;

/// The server's bounds, from `[auditor]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &platform::config::AuditorConfig) -> Self {
        Self {
            max_connections: usize::try_from(config.web_max_connections).unwrap_or(usize::MAX),
            header_read_timeout: config.web_header_read_timeout,
            idle_timeout: config.web_idle_timeout,
            request_timeout: config.web_request_timeout,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` fires, then drains.
///
/// # Errors
/// None so far: a failed `accept` is logged and retried; kept fallible for the caller's sake.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        // the permit first: beyond the cap, clients wait in the kernel's queue, not in ours
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "the web listener cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // what `into_make_service_with_connect_info` would give: the login throttles by it
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, request).await }
        });
        let io = TokioIo::new(Stall::new(stream, limits.idle_timeout));
        let connection = graceful.watch(http.serve_connection(io, service));
        ::metrics::gauge!(metrics::WEB_CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "web connection ended with an error");
            }
            ::metrics::gauge!(metrics::WEB_CONNECTIONS).decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("web connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// Runs `serve` (any future) on a runtime of its own, on [`THREADS`] threads named
/// `auditor-web`, so the web and the consumer cannot starve each other. Returns the thread;
/// its result is the future's.
///
/// # Errors
/// The runtime or its thread cannot be made.
pub fn spawn<F>(
    serve: impl FnOnce() -> F + Send + 'static,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>>
where
    F: Future<Output = io::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .thread_name("auditor-web")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("auditor-web".to_owned())
        .spawn(move || runtime.block_on(serve()))
}

/// A connection's I/O that fails with `TimedOut` once a read or write has waited `limit`
/// without any byte moving either way. Any progress starts the wait again.
pub struct Stall<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    waiting: bool,
}

impl<S> Stall<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }

    /// After a poll of the inner I/O: progress clears the wait, a pending poll starts it (once)
    /// and turns into `TimedOut` when it has lasted `limit`.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    let limit = self.limit;
                    self.deadline.as_mut().reset(Instant::now() + limit);
                }
                match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nothing moved on the connection for web-idle-timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.check(cx, polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A peer that neither writes nor reads: the read fails after the limit; one that keeps
    /// writing never does.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_connection_times_out_and_a_moving_one_does_not() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut stalled = Stall::new(ours, Duration::from_secs(60));
        let started = Instant::now();
        let mut buf = [0_u8; 8];
        let error = stalled.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60));

        let (ours, mut theirs2) = tokio::io::duplex(64);
        let mut moving = Stall::new(ours, Duration::from_secs(60));
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                theirs2.write_all(b"x").await.unwrap();
            }
            theirs2
        });
        for _ in 0..5 {
            assert_eq!(moving.read(&mut buf).await.unwrap(), 1);
        }
        drop(writer.await.unwrap());
        theirs.shutdown().await.unwrap();
    }
}
