//! `hubspot`: CRM objects through HubSpot's batch upsert API.
//!
//! Contract (developers.hubspot.com, CRM API v3): `POST {base_url}/crm/v3/objects/{object}/batch/upsert`
//! with `Authorization: Bearer <private app token>` and the body
//! `{"inputs": [{"idProperty": "email", "id": "a@x.io", "properties": {"firstname": "A"}}]}`,
//! at most 100 inputs per call; property values are strings. Answers: 200/201 done, 207
//! multi-status with `errors` (some inputs failed: tally splits the batch to find them), 400
//! `VALIDATION_ERROR` (rejected), 401 bad token, 429 rate limited (190 requests per 10 s for
//! Professional/Enterprise private apps: the limiter's default ceiling is 18.5 per second, a little under the limit).
//!
//! Removal by key (mirror syncs): `batch/archive` takes HubSpot's internal object ids, not
//! `idProperty` values, so a removal is two calls of at most 100 inputs each: `POST
//! .../batch/read` with `{"idProperty": "email", "inputs": [{"id": "a@x.io"}], "properties":
//! ["email"]}` finds the ids (keys HubSpot does not know answer 207 with `OBJECT_NOT_FOUND`
//! errors: already gone, nothing to do), then `POST .../batch/archive` with `{"inputs":
//! [{"id": "123"}]}` (204) moves them to the recycling bin. Both are safe to repeat.
//!
//! Options: `token` (or `token_env`), `object` (`contacts` by default, or `companies`, ...),
//! `id_property` (defaults to the COPY's key field), `base_url` (`https://api.hubapi.com`).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Batch, Destination, Options, SendError, http_outcome, truncate, value_text};
use crate::error::{Result, TallyError};

/// HubSpot's API root.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";

/// A HubSpot destination.
#[derive(Debug)]
pub struct HubSpot {
    name: String,
    endpoint: String,
    /// `{base_url}/crm/v3/objects/{object}`.
    objects: String,
    token: String,
    id_property: Option<String>,
    client: reqwest::Client,
}

impl HubSpot {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let token = opts.require("token")?;
        let base = opts
            .get("base_url")?
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        let object = opts.get("object")?.unwrap_or_else(|| "contacts".into());
        if !object
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("\"{object}\" is not a HubSpot object type"),
            });
        }
        let client = opts.http_client()?;
        let objects = format!("{}/crm/v3/objects/{object}", base.trim_end_matches('/'));
        Ok(HubSpot {
            name: opts.name().to_string(),
            endpoint: format!("{objects}/batch/upsert"),
            objects,
            token,
            id_property: opts.get("id_property")?,
            client,
        })
    }
}

#[async_trait]
impl Destination for HubSpot {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let id_property =
            self.id_property
                .as_deref()
                .or(batch.key)
                .ok_or_else(|| SendError::Fatal {
                    code: "22023",
                    message: "hubspot upserts need key = '<column>' (or the id_property option)"
                        .into(),
                })?;
        let inputs: Vec<Value> = batch
            .records
            .iter()
            .map(|r| {
                let id = r
                    .fields
                    .get(id_property)
                    .map(value_text)
                    .unwrap_or_default();
                let properties: Map<String, Value> = r
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(value_text(v))))
                    .collect();
                json!({"idProperty": id_property, "id": id, "properties": properties})
            })
            .collect();
        let body = json!({ "inputs": inputs });
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        let text = http_outcome(&self.name, resp).await?;
        // 207 Multi-Status carries per-input errors in a 2xx answer.
        if let Ok(v) = serde_json::from_str::<Value>(&text)
            && v.get("errors")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty())
        {
            return Err(SendError::Rejected {
                status: Some(207),
                body: truncate(&text),
            });
        }
        Ok(())
    }

    async fn remove(&self, _copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let id_property = self.id_property.as_deref().unwrap_or(key);
        let inputs: Vec<Value> = keys.iter().map(|k| json!({ "id": k })).collect();
        let body = json!({
            "idProperty": id_property,
            "inputs": inputs,
            "properties": [id_property],
        });
        let resp = self
            .client
            .post(format!("{}/batch/read", self.objects))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        let text = http_outcome(&self.name, resp).await?;
        let found: Value = serde_json::from_str(&text).map_err(|_| SendError::Transient {
            message: format!("destination {}: batch/read answered no JSON", self.name),
            retry_after: None,
        })?;
        let missing_only = found
            .get("errors")
            .and_then(Value::as_array)
            .is_none_or(|errors| {
                errors
                    .iter()
                    .all(|e| e.get("category").and_then(Value::as_str) == Some("OBJECT_NOT_FOUND"))
            });
        if !missing_only {
            return Err(SendError::Rejected {
                status: Some(207),
                body: truncate(&text),
            });
        }
        let ids: Vec<Value> = found
            .get("results")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|o| o.get("id").cloned())
                    .map(|id| json!({ "id": id }))
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(());
        }
        let resp = self
            .client
            .post(format!("{}/batch/archive", self.objects))
            .bearer_auth(&self.token)
            .json(&json!({ "inputs": ids }))
            .send()
            .await;
        http_outcome(&self.name, resp).await.map(|_| ())
    }
}
