//! Cancel requests. pgwire's own handler interrupts a statement while the server is still
//! planning it; rows are streamed after that, so tally also keeps each session's cancel
//! token here, by backend pid, and fires it when the pid and secret key match.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::messages::cancel::CancelRequest;
use tokio_util::sync::CancellationToken;

type TokenSlot = Arc<parking_lot::Mutex<CancellationToken>>;

/// Running sessions by backend pid.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: DashMap<i32, (Bytes, TokenSlot)>,
}

impl CancelRegistry {
    /// Registers a session; it stays registered until the returned guard drops.
    pub fn register(self: &Arc<Self>, pid: i32, secret: Bytes, slot: TokenSlot) -> Registration {
        self.sessions.insert(pid, (secret, slot));
        Registration {
            registry: self.clone(),
            pid,
        }
    }

    fn cancel(&self, pid: i32, secret: &Bytes) {
        if let Some(entry) = self.sessions.get(&pid)
            && entry.0 == *secret
        {
            entry.1.lock().cancel();
        }
    }
}

/// Removes a session from the registry when its connection ends.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pid: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.sessions.remove(&self.pid);
    }
}

/// Cancels through both pgwire's connection manager and the session's token.
pub struct TallyCancel {
    /// pgwire's handler (statements still being planned).
    pub inner: DefaultCancelHandler,
    /// Session tokens (statements streaming rows).
    pub registry: Arc<CancelRegistry>,
}

#[async_trait]
impl CancelHandler for TallyCancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.registry
            .cancel(request.pid, &request.secret_key.to_bytes());
        self.inner.on_cancel_request(request).await;
    }
}
