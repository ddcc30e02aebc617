//! The PostgreSQL wire protocol front end, built on pgwire: one handler set per connection
//! holding that connection's [`Session`](crate::engine::Session), password authentication
//! (SCRAM-SHA-256) or loopback trust, TLS, COPY in both directions, cancel requests and
//! SQLSTATE error responses.

pub mod auth;
pub mod cancel;
pub mod encode;
pub mod handler;
pub mod types;
pub mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use pgwire::api::ConnectionManager;
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::process_socket;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::engine::Engine;
use crate::error::{Result, TallyError};

use pgwire::tokio::tokio_rustls;

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    use std::io::BufReader;
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let open = |p: &std::path::Path| {
        std::fs::File::open(p)
            .map_err(|e| TallyError::Config(format!("cannot read {}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut BufReader::new(open(cert)?))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TallyError::Config(format!("bad certificate {}: {e}", cert.display())))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(open(key)?))
        .map_err(|e| TallyError::Config(format!("bad key {}: {e}", key.display())))?
        .ok_or_else(|| TallyError::Config(format!("no private key in {}", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TallyError::Config(format!("TLS configuration: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts PostgreSQL connections until `shutdown` turns true. Connections past
/// `max_connections` are answered with SQLSTATE 53300 and closed.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let limit = Arc::new(Semaphore::new(engine.config.max_connections));
    let manager = Arc::new(ConnectionManager::new());
    let registry = Arc::new(cancel::CancelRegistry::default());
    loop {
        let (socket, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = socket.set_nodelay(true);
        let engine = engine.clone();
        let tls = tls.clone();
        let manager = manager.clone();
        let registry = registry.clone();
        let permit = limit.clone().try_acquire_owned();
        tokio::spawn(async move {
            let Ok(_permit) = permit else {
                reject_too_many(socket, addr).await;
                return;
            };
            let handlers = handler::ConnectionHandlers::new(engine, manager, registry, addr);
            if let Err(e) = process_socket(socket, tls, handlers).await {
                tracing::debug!(%addr, error = %e, "connection ended with error");
            }
        });
    }
    Ok(())
}

/// Answers a connection over the limit with PostgreSQL's "too many connections" error.
async fn reject_too_many(mut socket: tokio::net::TcpStream, addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tracing::warn!(%addr, "connection refused: too many connections");
    // Read the startup packet (or SSL request) so the client sees the error, not a reset.
    let mut len = [0u8; 4];
    if socket.read_exact(&mut len).await.is_ok() {
        let n = u32::from_be_bytes(len).saturating_sub(4).min(10_000) as usize;
        let mut rest = vec![0u8; n];
        let _ = socket.read_exact(&mut rest).await;
        if n == 4 && rest == [0x04, 0xd2, 0x16, 0x2f] {
            // SSLRequest: decline, then read the real startup packet.
            let _ = socket.write_all(b"N").await;
            if socket.read_exact(&mut len).await.is_ok() {
                let n = u32::from_be_bytes(len).saturating_sub(4).min(10_000) as usize;
                let mut rest = vec![0u8; n];
                let _ = socket.read_exact(&mut rest).await;
            }
        }
    }
    let mut body = Vec::new();
    for (k, v) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        body.push(k);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    let _ = socket.write_all(&msg).await;
}
