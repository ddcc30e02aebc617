//! `tally serve`: binds the PostgreSQL and HTTP listeners over one engine and shuts them
//! down gracefully: on SIGINT/SIGTERM the listeners stop accepting, statements already
//! running (and their commits) finish, then the process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Result, TallyError};

/// A running server.
pub struct RunningServer {
    /// The engine behind the listeners.
    pub engine: Arc<Engine>,
    /// Where PostgreSQL clients connect (the real port when 0 was asked).
    pub pg_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
    flush_shutdown: watch::Sender<bool>,
    flusher: JoinHandle<()>,
    routes: crate::route::RouteHandle,
    scheduler: crate::scheduler::SchedulerHandle,
}

/// Opens the warehouse and starts both listeners.
pub async fn start(config: Config) -> Result<RunningServer> {
    let engine = Engine::open(config.clone()).await?;
    if !config.pg_listen.ip().is_loopback() && !engine.has_users() {
        return Err(TallyError::Config(format!(
            "refusing to listen on {} without authentication: define users in tally.toml ([users.NAME] password = \"...\") or listen on a loopback address",
            config.pg_listen
        )));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::wire::tls_acceptor(cert, key)?),
        None => None,
    };
    let pg = TcpListener::bind(config.pg_listen)
        .await
        .map_err(|e| TallyError::Config(format!("cannot listen on {}: {e}", config.pg_listen)))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| TallyError::Config(format!("cannot listen on {}: {e}", config.http_listen)))?;
    let pg_addr = pg
        .local_addr()
        .map_err(|e| TallyError::Internal(e.to_string()))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| TallyError::Internal(e.to_string()))?;
    let (tx, rx) = watch::channel(false);
    // The flusher gets its own signal: it must outlive the HTTP listener, so that requests
    // acknowledged during shutdown are flushed too.
    let (flush_tx, flush_rx) = watch::channel(false);
    let (collector, flusher) = crate::collect::Collector::start(engine.clone(), flush_rx).await?;
    let routes = crate::route::start(engine.clone(), collector.wal().clone());
    let scheduler = crate::scheduler::start(engine.clone());
    let pg_task = tokio::spawn(crate::wire::serve(engine.clone(), pg, tls, rx.clone()));
    let router = crate::collect::http::router(Some(collector));
    let http_task = tokio::spawn(crate::collect::http::serve(http, router, rx));
    tracing::info!(%pg_addr, %http_addr, data = %config.data, "tally is ready");
    Ok(RunningServer {
        engine,
        pg_addr,
        http_addr,
        shutdown: tx,
        tasks: vec![pg_task, http_task],
        flush_shutdown: flush_tx,
        flusher,
        routes,
        scheduler,
    })
}

impl RunningServer {
    /// Stops accepting, lets running statements finish (up to `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // No new scheduled runs; the ones in progress finish (or resend next time).
        self.scheduler.shutdown(grace).await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.engine.running_statements() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Routes save their positions; what they had in flight is sent again after restart.
        self.routes.shutdown(grace).await;
        // Flush what was acknowledged; whatever does not make it stays in the log for the
        // next start.
        let _ = self.flush_shutdown.send(true);
        let _ = tokio::time::timeout(grace.max(Duration::from_secs(5)), self.flusher).await;
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
