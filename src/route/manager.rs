//! The route manager of `tally serve`: follows the catalog's routes and keeps one task per
//! route running, each independent of the others (a route stuck on a slow destination
//! never holds another, nor the flusher). It reacts at once to statements of this server
//! ([`super::Registry::notify_changed`]) and polls the catalog every second for changes
//! made by other servers on the same warehouse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::runner::RouteTask;
use crate::catalog::RouteEntry;
use crate::collect::wal::Wal;
use crate::engine::Engine;

struct Running {
    entry: RouteEntry,
    paused: watch::Sender<bool>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Stops the route manager and its routes.
pub struct RouteHandle {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for RouteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteHandle")
    }
}

impl RouteHandle {
    /// Stops every route (each saves its position) and waits up to `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(grace, self.handle).await;
    }
}

/// Starts the manager over the collector's log `wal`.
pub fn start(engine: Arc<Engine>, wal: Arc<Wal>) -> RouteHandle {
    wal.set_retention_budget(engine.config.collect.route_retention_bytes);
    engine.routes.set_wal(wal.clone());
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(run(engine, wal, cancel.clone()));
    RouteHandle { cancel, handle }
}

/// Whether two definitions differ in what the route does (pausing is not a change).
fn same_route(a: &RouteEntry, b: &RouteEntry) -> bool {
    a.source == b.source
        && a.destination == b.destination
        && a.query == b.query
        && a.options == b.options
        && a.default_schema == b.default_schema
        && a.created_at == b.created_at
}

async fn run(engine: Arc<Engine>, wal: Arc<Wal>, cancel: CancellationToken) {
    let mut running: HashMap<String, Running> = HashMap::new();
    // Positions of routes dropped while the server was down hold the log for nothing.
    if let Ok(doc) = engine.catalog.refresh().await {
        for (name, _) in wal.readers() {
            if !doc.routes.contains_key(&name) {
                tracing::info!(route = %name, "forgetting the log position of a dropped route");
                wal.remove_reader(&name);
            }
        }
    }
    loop {
        let doc = match engine.catalog.refresh().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "route manager cannot read the catalog; retrying");
                engine.catalog.current()
            }
        };
        // Stop what was dropped or redefined.
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, r)| {
                doc.routes
                    .get(*name)
                    .is_none_or(|e| !same_route(e, &r.entry))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                r.cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), r.handle).await;
                let redefined = doc.routes.get(&name);
                if redefined.is_none_or(|e| e.created_at != r.entry.created_at) {
                    // Dropped (or dropped and created again): its position goes with it.
                    wal.remove_reader(&name);
                    engine.routes.forget(&name);
                    tracing::info!(route = %name, "route stopped and forgotten");
                }
            }
        }
        for (name, entry) in &doc.routes {
            match running.get(name) {
                Some(r) => {
                    if *r.paused.borrow() != entry.paused {
                        let _ = r.paused.send(entry.paused);
                        tracing::info!(route = %name, paused = entry.paused, "route paused or resumed");
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(entry.paused);
                    let token = cancel.child_token();
                    let task = RouteTask {
                        name: name.clone(),
                        entry: entry.clone(),
                        engine: engine.clone(),
                        wal: wal.clone(),
                        stats: engine.routes.stats(name),
                        paused: rx,
                        cancel: token.clone(),
                    };
                    tracing::info!(route = %name, source = %entry.source, destination = %entry.destination, "route started");
                    let handle = tokio::spawn(task.run());
                    running.insert(
                        name.clone(),
                        Running {
                            entry: entry.clone(),
                            paused: tx,
                            cancel: token,
                            handle,
                        },
                    );
                }
            }
        }
        tokio::select! {
            _ = engine.routes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => break,
        }
    }
    for (_, r) in running.drain() {
        r.cancel.cancel();
        let _ = r.handle.await;
    }
}
