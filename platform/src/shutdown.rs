//! The one shutdown-signal handler: the first SIGTERM or SIGINT cancels the process's shutdown
//! token (stop taking work, finish what is in hand); a second one exits at once, for an
//! operator who does not want to wait (what was unfinished is redelivered or replayed: every
//! process acks only what is done, and the gateway's audit spool is on disk).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupted program).
pub const SECOND_SIGNAL_EXIT: i32 = 130;

/// Spawns the handler on the current runtime. `doing` says what the process finishes before it
/// stops, for the log line (`"finishing messages in flight"`).
pub fn cancel_on_signal(shutdown: CancellationToken, doing: &'static str) {
    tokio::spawn(async move {
        let mut signals = Signals::new();
        let first = signals.next().await;
        tracing::info!("{first}: {doing} (a second signal stops at once)");
        shutdown.cancel();
        let second = signals.next().await;
        tracing::warn!("{second} again: exiting without waiting");
        std::process::exit(SECOND_SIGNAL_EXIT);
    });
}

/// SIGTERM and SIGINT; when SIGTERM cannot be watched (never seen on Linux), Ctrl-C alone.
struct Signals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Signals {
    fn new() -> Self {
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot watch {name}");
                None
            }
        };
        Self {
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The name of the next signal that arrives.
    async fn next(&mut self) -> &'static str {
        async fn recv(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.terminate) => "SIGTERM",
            () = recv(&mut self.interrupt) => "SIGINT",
        }
    }
}
