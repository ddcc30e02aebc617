//! `amplitude`: user properties (and events) through Amplitude's Batch Event Upload API.
//!
//! Contract (amplitude.com/docs/apis/analytics/batch-event-upload): `POST {base_url}/batch`
//! with `{"api_key": "...", "events": [...]}`, at most 2,000 events per request. Each row
//! becomes an `$identify` event `{"event_type": "$identify", "user_id": "<key>",
//! "user_properties": {"$set": {...}}, "insert_id": "<id>"}` (`$setOnce` for `insert`);
//! `insert_id` lets Amplitude drop a retried event it already stored (its documented
//! de-duplication). Answers: 200 done; 400 with `events_with_invalid_fields` or
//! `events_with_missing_fields` naming event indexes (tally splits the batch to isolate
//! them); 413 too large; 429 throttled (per-user or per-device limits).
//!
//! Options: `api_key` (or `api_key_env`), `base_url` (`https://api2.amplitude.com`; the EU
//! residency server is `https://api.eu.amplitude.com`).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Batch, Destination, Mode, Options, SendError, digest_hex, http_outcome};
use crate::error::Result;

/// Amplitude's API root.
pub const DEFAULT_BASE_URL: &str = "https://api2.amplitude.com";

/// An Amplitude destination.
#[derive(Debug)]
pub struct Amplitude {
    name: String,
    endpoint: String,
    api_key: String,
    client: reqwest::Client,
}

impl Amplitude {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let base = opts
            .get("base_url")?
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let client = opts.http_client()?;
        Ok(Amplitude {
            name: opts.name().to_string(),
            endpoint: format!("{}/batch", base.trim_end_matches('/')),
            api_key: opts.require("api_key")?,
            client,
        })
    }
}

#[async_trait]
impl Destination for Amplitude {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let key = batch.key.ok_or_else(|| SendError::Fatal {
            code: "22023",
            message: "amplitude needs key = '<column>' (the user id)".into(),
        })?;
        let op = if batch.mode == Mode::Insert {
            "$setOnce"
        } else {
            "$set"
        };
        let events: Vec<Value> = batch
            .records
            .iter()
            .map(|r| {
                let props: Map<String, Value> = r
                    .fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let payload = Value::Object(r.fields.clone()).to_string();
                let insert_id = digest_hex(&[
                    batch.copy_id.as_bytes(),
                    &r.ordinal.to_be_bytes(),
                    payload.as_bytes(),
                ]);
                json!({
                    "event_type": "$identify",
                    "user_id": r.key.clone().unwrap_or_default(),
                    "user_properties": Value::Object(Map::from_iter([(op.to_string(), Value::Object(props))])),
                    "insert_id": &insert_id[..32],
                })
            })
            .collect();
        let resp = self
            .client
            .post(&self.endpoint)
            .json(&json!({ "api_key": self.api_key, "events": events }))
            .send()
            .await;
        match http_outcome(&self.name, resp).await {
            Ok(_) => Ok(()),
            // Amplitude answers a wrong key with 400, not 401.
            Err(SendError::Rejected { body, .. }) if body.contains("Invalid API key") => {
                Err(SendError::Fatal {
                    code: "28000",
                    message: format!(
                        "destination {} refused the API key (HTTP 400 Invalid API key)",
                        self.name
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }
}
