//! The API's accept loop: hyper's HTTP/1 server with the bounds
//! `axum::serve` does not expose. A client has `header_timeout` to send a
//! request head once it connects, and again after each answer (an idle
//! keep-alive connection is closed after the same time); heads are at
//! most `max_header_bytes`, and at most `max_connections` are open at
//! once: the next is closed at once and counted. Idle and half-sent
//! connections (a slowloris) therefore cannot pile up.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::ctx::NodeCtx;

/// A listener the API is served on: TCP for clients, a Unix socket for the
/// plugins the node hosts (a sandboxed plugin has no network).
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, String)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, String)> {
        let (s, peer) = TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, peer.to_string()))
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, String)> {
        let (s, _) = UnixListener::accept(self).await?;
        Ok((s, "unix".into()))
    }
}

/// Serve `app` on `listener` until `stop` fires, then let the requests in
/// hand finish (the caller bounds how long).
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    ctx: Arc<NodeCtx>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let limits = ctx.config.api_limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    loop {
        let (sock, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin on the error.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.metrics.api_connection_refused();
            tracing::debug!(%peer, max = limits.max_connections, "API connection refused: at the connection limit");
            drop(sock);
            continue;
        };
        let conn = http.serve_connection(TokioIo::new(sock), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        let open = ctx.clone();
        tokio::spawn(async move {
            open.metrics.api_connections(1);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            open.metrics.api_connections(-1);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
