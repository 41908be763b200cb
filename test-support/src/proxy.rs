//! A TCP forwarder in front of a real service, to take the service away from a client and give
//! it back without touching the service itself: [`TcpProxy::cut`] closes every forwarded
//! connection and stops listening (new connections are refused), [`TcpProxy::restore`] listens
//! again on the same port.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards 127.0.0.1:`port()` to `target` while up.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    /// Cancels the listener and every forwarded connection of the current up period.
    up: Mutex<Option<CancellationToken>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proxy = Self {
            addr,
            target,
            up: Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    /// Starts cut: the port is known, but connecting to it is refused until [`Self::restore`].
    pub async fn start_cut(target: SocketAddr) -> Result<Self> {
        let proxy = Self::start(target).await?;
        proxy.cut();
        Ok(proxy)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every forwarded connection and the listener.
    pub fn cut(&self) {
        if let Some(up) = self
            .up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            up.cancel();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) -> Result<()> {
        // the port was ours a moment ago; another process taking it in between is unlikely
        // enough on a test machine, and would fail here loudly
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("cannot listen on {} again", self.addr))?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let up = CancellationToken::new();
        if let Some(old) = self
            .up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(up.clone())
        {
            old.cancel();
        }
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = up.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let up = up.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = up.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
