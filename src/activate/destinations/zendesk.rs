//! `zendesk`: users through Zendesk Support's bulk create-or-update, with its job polled.
//!
//! Contract (developer.zendesk.com, Support API, "Users: Create Or Update Many Users" and
//! "Job Statuses"): `POST {base_url}/api/v2/users/create_or_update_many` with `{"users":
//! [{"external_id": "u1", "email": "a@x.io", "name": "A", "user_fields": {...}}]}`, at most
//! 100 users, authenticated with HTTP basic `{email}/token:{api_token}` or an OAuth
//! `Authorization: Bearer` token. Users are matched on `external_id` or `email`. The answer
//! is `200 {"job_status": {"id", "url", "status": "queued"}}`: the work happens later, so
//! tally polls `GET /api/v2/job_statuses/{id}` until `completed` (or `failed`/`killed`). A
//! completed job lists one result per user, in request order (with an `index` when Zendesk
//! gives one): `{"id", "status": "Created" | "Updated"}` or `{"status": "Failed", "error":
//! "UserUpdateError", "details": "Email ... is not properly formatted"}`; failed users are
//! reported as rejected rows, the others as delivered, nothing is resent. A killed job is
//! retried as a new job; a failed one is a rejection of the batch (split to find the rows at
//! fault; create-or-update is idempotent). 429 carries `Retry-After`; 401/403 are fatal; 400
//! and 422 (malformed request, too many users) are rejections. A batch retried after a
//! timeout resumes polling its job instead of queueing a second one.
//!
//! Standard user properties stay at the top level; every other column goes to `user_fields`
//! (which must exist in the account as user fields).
//!
//! Options: `subdomain` (`acme` for `https://acme.zendesk.com`) or `base_url`; `email` and
//! `api_token` (or `api_token_env`) for basic auth, or `oauth_token` (or `oauth_token_env`);
//! `id_field` (`external_id` or `email`; `email` when the key column is named email);
//! `poll_interval_ms` (1000).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{
    Batch, Destination, Options, RecordRejection, SendError, http_outcome, partly_rejected,
    truncate, value_text,
};
use crate::error::{Result, TallyError};

/// Users per create_or_update_many request (documented maximum).
pub const MAX_USERS: usize = 100;

/// User properties Zendesk takes at the top level.
const STANDARD: &[&str] = &[
    "name",
    "email",
    "external_id",
    "phone",
    "role",
    "alias",
    "details",
    "notes",
    "organization_id",
    "locale",
    "locale_id",
    "time_zone",
    "tags",
    "verified",
    "signature",
    "ticket_restriction",
    "moderator",
    "only_private_comments",
    "restricted_agent",
    "suspended",
    "shared_phone_number",
    "default_group_id",
    "custom_role_id",
    "remote_photo_url",
    "identities",
];

/// A Zendesk destination.
#[derive(Debug)]
pub struct Zendesk {
    name: String,
    base: String,
    authorization: String,
    id_field: Option<String>,
    poll: Duration,
    client: reqwest::Client,
    /// Job ids by batch idempotency key, so a retried batch resumes its job.
    jobs: Mutex<HashMap<String, String>>,
}

impl Zendesk {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let invalid = |message: String| TallyError::InvalidValue {
            code: "22023",
            message,
        };
        let base = match (opts.get("base_url")?, opts.get("subdomain")?) {
            (Some(b), _) => b.trim_end_matches('/').to_string(),
            (None, Some(s)) => {
                if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(invalid(format!("\"{s}\" is not a Zendesk subdomain")));
                }
                format!("https://{s}.zendesk.com")
            }
            (None, None) => {
                return Err(invalid(
                    "a zendesk destination needs subdomain (or base_url)".into(),
                ));
            }
        };
        let authorization = match (opts.get("oauth_token")?, opts.get("api_token")?) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, Some(t)) => {
                let email = opts.get("email")?.ok_or_else(|| {
                    invalid(
                        "zendesk api_token authentication needs the agent's email option".into(),
                    )
                })?;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{email}/token:{t}"))
                )
            }
            (None, None) => {
                return Err(invalid(
                    "a zendesk destination needs email and api_token (or api_token_env), or oauth_token (or oauth_token_env)".into(),
                ));
            }
        };
        let id_field = opts.get("id_field")?;
        if let Some(f) = &id_field
            && f != "external_id"
            && f != "email"
        {
            return Err(invalid(format!(
                "id_field must be external_id or email, not \"{f}\""
            )));
        }
        Ok(Zendesk {
            name: opts.name().to_string(),
            base,
            authorization,
            id_field,
            poll: Duration::from_millis(opts.number("poll_interval_ms")?.unwrap_or(1_000)),
            client: opts.http_client()?,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    fn user(&self, r: &super::Record, batch_key: Option<&str>, id_field: &str) -> Value {
        let mut top = Map::new();
        let mut custom = Map::new();
        for (k, v) in &r.fields {
            if Some(k.as_str()) == batch_key && k != id_field {
                continue;
            }
            if STANDARD.contains(&k.as_str()) {
                top.insert(k.clone(), v.clone());
            } else {
                custom.insert(k.clone(), v.clone());
            }
        }
        if let Some(key) = &r.key {
            top.insert(id_field.to_string(), Value::from(key.as_str()));
        }
        if !custom.is_empty() {
            top.insert("user_fields".into(), Value::Object(custom));
        }
        Value::Object(top)
    }

    async fn get(&self, url: &str) -> Result<String, SendError> {
        http_outcome(
            &self.name,
            self.client
                .get(url)
                .header(reqwest::header::AUTHORIZATION, &self.authorization)
                .send()
                .await,
        )
        .await
    }
}

#[async_trait]
impl Destination for Zendesk {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let batch_key = batch.key;
        let id_field = self
            .id_field
            .as_deref()
            .unwrap_or(if batch_key == Some("email") {
                "email"
            } else {
                "external_id"
            });
        let existing = self.jobs.lock().get(&batch.idempotency_key).cloned();
        let job_id = match existing {
            Some(id) => id,
            None => {
                let users: Vec<Value> = batch
                    .records
                    .iter()
                    .map(|r| self.user(r, batch_key, id_field))
                    .collect();
                let text = http_outcome(
                    &self.name,
                    self.client
                        .post(format!("{}/api/v2/users/create_or_update_many", self.base))
                        .header(reqwest::header::AUTHORIZATION, &self.authorization)
                        .json(&json!({ "users": users }))
                        .send()
                        .await,
                )
                .await?;
                let id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.pointer("/job_status/id").map(value_text))
                    .ok_or_else(|| SendError::Transient {
                        message: format!(
                            "destination {}: no job_status in {}",
                            self.name,
                            truncate(&text)
                        ),
                        retry_after: None,
                    })?;
                self.jobs
                    .lock()
                    .insert(batch.idempotency_key.clone(), id.clone());
                id
            }
        };
        let url = format!("{}/api/v2/job_statuses/{job_id}", self.base);
        let status = loop {
            let text = self.get(&url).await?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let job = v.get("job_status").cloned().unwrap_or(Value::Null);
            match job.get("status").and_then(Value::as_str) {
                Some("completed") => break job,
                Some("killed") => {
                    self.jobs.lock().remove(&batch.idempotency_key);
                    return Err(SendError::Transient {
                        message: format!("destination {}: job {job_id} was killed", self.name),
                        retry_after: None,
                    });
                }
                Some("failed") => {
                    self.jobs.lock().remove(&batch.idempotency_key);
                    return Err(SendError::Rejected {
                        status: None,
                        body: truncate(&job.to_string()),
                    });
                }
                _ => tokio::time::sleep(self.poll).await,
            }
        };
        self.jobs.lock().remove(&batch.idempotency_key);
        let results = status
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let refused = results
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.get("status").and_then(Value::as_str) == Some("Failed")
                    || r.get("error").is_some()
            })
            .filter_map(|(pos, r)| {
                let index = r
                    .get("index")
                    .and_then(Value::as_u64)
                    .map_or(pos, |i| i as usize);
                (index < batch.records.len()).then(|| RecordRejection {
                    index,
                    status: None,
                    body: truncate(&r.to_string()),
                })
            })
            .collect();
        partly_rejected(refused)
    }
}
