//! `braze`: user attributes through Braze's `/users/track` endpoint.
//!
//! Contract (braze.com/docs/api/endpoints/user_data/post_user_track): `POST
//! {base_url}/users/track` with `Authorization: Bearer <REST API key>` and the body
//! `{"attributes": [{"external_id": "u1", "first_name": "A", ...}]}`, at most 75 attribute
//! objects per request; `"_update_existing_only": true` makes an update not create users.
//! Answers: 201 with `"message": "success"` (possibly with per-object `errors`, which tally
//! treats as a rejection of the batch and splits to find the objects at fault), 400 for a
//! malformed request, 401 bad key, 429 rate limited with `X-RateLimit-Reset`/`Retry-After`.
//!
//! Removal by key (mirror syncs): `POST {base_url}/users/delete` with `{"external_ids":
//! [...]}` (or `braze_ids`, `email_addresses`, `phone_numbers` when `id_field` is
//! `braze_id`, `email` or `phone`), at most 50 identifiers per request, so a batch of keys is
//! sent in requests of 50. Deleting users cannot be undone; unknown identifiers are ignored
//! by Braze, so a retry is harmless.
//!
//! Options: `api_key` (or `api_key_env`), `base_url` (the instance's REST endpoint, such as
//! `https://rest.iad-01.braze.com`), `id_field` (`external_id` by default: the Braze field
//! the COPY's key goes to).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Batch, Destination, Mode, Options, SendError, http_outcome, truncate};
use crate::error::Result;

/// `/users/delete` takes at most this many identifiers per request.
pub const DELETE_BATCH: usize = 50;

/// A Braze destination.
#[derive(Debug)]
pub struct Braze {
    name: String,
    endpoint: String,
    /// The instance's REST endpoint.
    base: String,
    api_key: String,
    id_field: String,
    client: reqwest::Client,
}

impl Braze {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let client = opts.http_client()?;
        let base = opts.require("base_url")?.trim_end_matches('/').to_string();
        Ok(Braze {
            name: opts.name().to_string(),
            endpoint: format!("{base}/users/track"),
            base,
            api_key: opts.require("api_key")?,
            id_field: opts
                .get("id_field")?
                .unwrap_or_else(|| "external_id".into()),
            client,
        })
    }
}

#[async_trait]
impl Destination for Braze {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let key = batch.key.ok_or_else(|| SendError::Fatal {
            code: "22023",
            message: "braze needs key = '<column>' (the user's external id)".into(),
        })?;
        let attributes: Vec<Value> = batch
            .records
            .iter()
            .map(|r| {
                let mut a: Map<String, Value> = r
                    .fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                a.insert(
                    self.id_field.clone(),
                    Value::from(r.key.clone().unwrap_or_default()),
                );
                if batch.mode == Mode::Update {
                    a.insert("_update_existing_only".into(), Value::Bool(true));
                }
                Value::Object(a)
            })
            .collect();
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.api_key)
            .json(&json!({ "attributes": attributes }))
            .send()
            .await;
        let text = http_outcome(&self.name, resp).await?;
        if let Ok(v) = serde_json::from_str::<Value>(&text)
            && v.get("errors")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty())
        {
            return Err(SendError::Rejected {
                status: Some(201),
                body: truncate(&text),
            });
        }
        Ok(())
    }

    async fn remove(&self, _copy_id: &str, _key: &str, keys: &[String]) -> Result<(), SendError> {
        let field = match self.id_field.as_str() {
            "external_id" => "external_ids",
            "braze_id" => "braze_ids",
            "email" => "email_addresses",
            "phone" => "phone_numbers",
            other => {
                return Err(SendError::Fatal {
                    code: "0A000",
                    message: format!(
                        "destination {}: Braze deletes users by external_id, braze_id, email or phone, not by {other}",
                        self.name
                    ),
                });
            }
        };
        for chunk in keys.chunks(DELETE_BATCH) {
            let resp = self
                .client
                .post(format!("{}/users/delete", self.base))
                .bearer_auth(&self.api_key)
                .json(&Value::Object(Map::from_iter([(
                    field.to_string(),
                    Value::from(chunk.to_vec()),
                )])))
                .send()
                .await;
            http_outcome(&self.name, resp).await?;
        }
        Ok(())
    }
}
