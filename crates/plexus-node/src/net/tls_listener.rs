//! The cluster port when TLS is on.
//!
//! ractor_cluster's own listener completes each TLS handshake inside its
//! accept loop, with no time limit: one client that connects and then says
//! nothing (or trickles its hello) keeps the node from accepting any other
//! peer for as long as it likes. So with TLS the node accepts on the
//! cluster port itself. Each handshake runs in a task of its own, bounded in
//! time (`[limits] handshake_timeout_ms`) and in number
//! (`max_pending_handshakes`), and only a finished TLS session is handed to
//! the NodeServer, which checks the cookie inside it as before.
//!
//! The NodeServer always starts a listener of its own; with TLS it is put
//! on an ephemeral loopback port and stays TLS-only (nothing dials it).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::ctx::LinkStats;

/// How long and how many handshakes may be in progress.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub timeout: Duration,
    pub max_pending: usize,
}

/// Accept cluster connections on `listener` until the task is aborted.
/// Failed, timed-out and refused handshakes are logged and counted in
/// `stats.handshakes_failed`; none of them holds up another peer.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
    stats: Arc<LinkStats>,
    limits: HandshakeLimits,
) {
    let pending = Arc::new(Semaphore::new(limits.max_pending.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, typically: retrying at once
                // would spin.
                tracing::warn!(error = %e, "cluster listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = limits.max_pending, "cluster TLS handshake refused: too many in progress (limits.max_pending_handshakes)");
            continue;
        };
        let (acceptor, server, stats) = (acceptor.clone(), server.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(why) = handshake(stream, peer, &acceptor, &server, limits.timeout).await {
                stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, reason = %why, "cluster TLS handshake failed");
            }
        });
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    server: &ActorRef<NodeServerMessage>,
    timeout: Duration,
) -> Result<(), String> {
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    // As ractor_cluster's listener does: frames are small and latency-bound.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            return Err(format!(
                "no handshake within {} ms (limits.handshake_timeout_ms)",
                timeout.as_millis()
            ))
        }
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(NetworkStream::TlsServer {
                peer_addr: peer,
                local_addr: local,
                stream: tls,
            }),
            is_server: true,
        })
        .map_err(|_| "the cluster's NodeServer is gone".to_string())?;
    tracing::debug!(%peer, "cluster TLS session opened");
    Ok(())
}
