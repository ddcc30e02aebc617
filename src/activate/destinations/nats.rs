//! `nats`: one JetStream message per row.
//!
//! Each row is published as its JSON object on `subject` (which may contain `{key}`, replaced
//! by the row's key, so consumers can filter by key), with the headers `Nats-Msg-Id` (derived
//! from the copy id, the row's position and its content: JetStream drops a message whose id
//! it saw within the stream's duplicate window, so a retried batch is not stored twice) and
//! `Tally-Mode`. A batch's messages are published back to back on one connection (so their
//! order is kept) and then every acknowledgement is awaited. A subject that no stream
//! captures stops the COPY.
//!
//! Options: `url` (`nats://host:4222`), `subject`, `token` (or `token_env`).

use async_nats::jetstream::context::PublishErrorKind;
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Batch, Destination, Options, SendError, digest_hex};
use crate::error::Result;

/// A NATS JetStream destination.
pub struct Nats {
    name: String,
    url: String,
    token: Option<String>,
    subject: String,
    js: OnceCell<async_nats::jetstream::Context>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .finish()
    }
}

impl Nats {
    /// Reads the options (the connection opens at the first batch).
    pub fn new(opts: &Options) -> Result<Self> {
        Ok(Nats {
            name: opts.name().to_string(),
            url: opts.require("url")?,
            token: opts.get("token")?,
            subject: opts.require("subject")?,
            js: OnceCell::new(),
        })
    }

    async fn context(&self) -> Result<&async_nats::jetstream::Context, SendError> {
        self.js
            .get_or_try_init(|| async {
                let mut options = async_nats::ConnectOptions::new();
                if let Some(t) = &self.token {
                    options = options.token(t.clone());
                }
                let client =
                    options
                        .connect(self.url.as_str())
                        .await
                        .map_err(|e| SendError::Transient {
                            message: format!(
                                "destination {}: cannot connect: {}",
                                self.name,
                                e.kind()
                            ),
                            retry_after: None,
                        })?;
                Ok::<_, SendError>(async_nats::jetstream::new(client))
            })
            .await
    }

    fn publish_error(&self, kind: PublishErrorKind, detail: String) -> SendError {
        match kind {
            PublishErrorKind::StreamNotFound => SendError::Fatal {
                code: "08001",
                message: format!(
                    "destination {}: no JetStream stream captures subject {} (create one first)",
                    self.name, self.subject
                ),
            },
            PublishErrorKind::MaxPayloadExceeded => SendError::Rejected {
                status: None,
                body: detail,
            },
            _ => SendError::Transient {
                message: format!("destination {}: {detail}", self.name),
                retry_after: None,
            },
        }
    }
}

#[async_trait]
impl Destination for Nats {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let js = self.context().await?;
        let mut acks = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            let payload = Value::Object(r.fields.clone()).to_string();
            let subject = match &r.key {
                Some(k) => self.subject.replace("{key}", k),
                None => self.subject.replace("{key}", "_"),
            };
            let id = digest_hex(&[
                batch.copy_id.as_bytes(),
                &r.ordinal.to_be_bytes(),
                payload.as_bytes(),
            ]);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", &id[..40]);
            headers.insert("Tally-Mode", batch.mode.as_str());
            let ack = js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| self.publish_error(e.kind(), e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| self.publish_error(e.kind(), e.to_string()))?;
        }
        Ok(())
    }
}
