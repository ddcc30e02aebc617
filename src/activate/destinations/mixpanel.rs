//! `mixpanel`: user profiles through Mixpanel's Engage API.
//!
//! Contract (developer.mixpanel.com/reference/profile-set): `POST {base_url}/engage?verbose=1`
//! with a JSON array of at most 2,000 updates `{"$token": "<project token>", "$distinct_id":
//! "<key>", "$set": {...}}` (`$set_once` for `insert`: existing values are kept). The answer
//! to a verbose request is `{"status": 1, "error": null}`, or `{"status": 0, "error": "..."}`
//! when the batch was refused (tally splits it to find the updates at fault); 401/403 for a
//! bad token, 429 throttled.
//!
//! Options: `token` (the project token, or `token_env`), `base_url`
//! (`https://api.mixpanel.com`; `https://api-eu.mixpanel.com` for EU residency).

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Batch, Destination, Mode, Options, SendError, http_outcome, truncate};
use crate::error::Result;

/// Mixpanel's API root.
pub const DEFAULT_BASE_URL: &str = "https://api.mixpanel.com";

/// A Mixpanel destination.
#[derive(Debug)]
pub struct Mixpanel {
    name: String,
    endpoint: String,
    token: String,
    client: reqwest::Client,
}

impl Mixpanel {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let base = opts
            .get("base_url")?
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let client = opts.http_client()?;
        Ok(Mixpanel {
            name: opts.name().to_string(),
            endpoint: format!("{}/engage?verbose=1", base.trim_end_matches('/')),
            token: opts.require("token")?,
            client,
        })
    }
}

#[async_trait]
impl Destination for Mixpanel {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let key = batch.key.ok_or_else(|| SendError::Fatal {
            code: "22023",
            message: "mixpanel needs key = '<column>' (the profile's distinct id)".into(),
        })?;
        let op = if batch.mode == Mode::Insert {
            "$set_once"
        } else {
            "$set"
        };
        let updates: Vec<Value> = batch
            .records
            .iter()
            .map(|r| {
                let props: Map<String, Value> = r
                    .fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let mut update = Map::new();
                update.insert("$token".into(), Value::from(self.token.as_str()));
                update.insert(
                    "$distinct_id".into(),
                    Value::from(r.key.clone().unwrap_or_default()),
                );
                update.insert(op.into(), Value::Object(props));
                Value::Object(update)
            })
            .collect();
        let resp = self.client.post(&self.endpoint).json(&updates).send().await;
        let text = http_outcome(&self.name, resp).await?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("status").and_then(Value::as_i64) == Some(1) => Ok(()),
            Ok(v) if v.get("status").and_then(Value::as_i64) == Some(0) => {
                Err(SendError::Rejected {
                    status: Some(200),
                    body: truncate(&text),
                })
            }
            // A non-verbose answer: `1` for success, `0` for failure.
            _ if text.trim() == "1" => Ok(()),
            _ => Err(SendError::Rejected {
                status: Some(200),
                body: truncate(&text),
            }),
        }
    }
}
