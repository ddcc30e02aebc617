//! `intercom`: contacts (users) created or updated one request per record.
//!
//! Contract (developers.intercom.com, REST API 2.11, "Contacts"): every request carries
//! `Authorization: Bearer <access token>`, `Intercom-Version: 2.11` and `Accept:
//! application/json`. Intercom has no batch endpoint for contacts, so each record is a
//! search then a write: `POST /contacts/search` `{"query": {"field": "external_id",
//! "operator": "=", "value": "u1"}}` answers `{"type": "list", "data": [{"id": ...}]}`;
//! then `PUT /contacts/{id}` to update, or `POST /contacts` to create (`{"role": "user",
//! "external_id": "u1", "email": ..., "name": ..., "custom_attributes": {...}}`). A create
//! that races another answers 409 `conflict` and is retried as search and update. Errors are
//! `{"type": "error.list", "errors": [{"code", "message"}]}`: 401 `unauthorized` (fatal), 400
//! / 422 a refused record (rejected alone), 429 rate limited with `X-RateLimit-Reset`, the
//! Unix time at which the window resets (used as the wait when there is no `Retry-After`).
//!
//! Records are sent `concurrency` at a time (8 by default), never two of one key at once, so
//! per-key order holds. What a batch already did survives a retry of that batch: a record
//! written (or refused) before a 429 or a 500 in the same batch is not written again.
//!
//! Standard contact fields (`role`, `external_id`, `email`, `phone`, `name`, `avatar`,
//! `signed_up_at`, `last_seen_at`, `owner_id`, `unsubscribed_from_emails`) go at the top
//! level; every other column goes to `custom_attributes`.
//!
//! Options: `access_token` (or `access_token_env`), `id_field` (`external_id`, or `email`:
//! which contact field the COPY's key matches; `email` when the key column is named email),
//! `role` (`user` or `lead`), `api_version` (`2.11`), `base_url` (`https://api.intercom.io`,
//! or the EU/AU hosts), `concurrency` (8).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{
    Batch, Destination, HttpAnswer, Mode, Options, Record, RecordRejection, SendError,
    http_classify, http_read, partly_rejected, truncate, value_text,
};
use crate::error::{Result, TallyError};

/// Intercom's API root (US workspaces).
pub const DEFAULT_BASE_URL: &str = "https://api.intercom.io";
/// API version sent in `Intercom-Version` unless `api_version` says otherwise.
pub const DEFAULT_API_VERSION: &str = "2.11";
/// Contact fields Intercom takes at the top level.
const STANDARD: &[&str] = &[
    "role",
    "external_id",
    "email",
    "phone",
    "name",
    "avatar",
    "signed_up_at",
    "last_seen_at",
    "owner_id",
    "unsubscribed_from_emails",
];

/// What became of one record: `None` written, `Some((status, reason))` refused.
type Verdict = Option<(Option<u16>, String)>;

/// An Intercom destination.
#[derive(Debug)]
pub struct Intercom {
    name: String,
    base: String,
    token: String,
    version: String,
    id_field: Option<String>,
    role: String,
    concurrency: usize,
    client: reqwest::Client,
    /// Verdicts of the records of the batch in flight, by ordinal (`None` written,
    /// `Some(reason)` refused), kept across retries of that batch and cleared once it has its
    /// verdict.
    done: Mutex<HashMap<u64, Verdict>>,
}

impl Intercom {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let id_field = opts.get("id_field")?;
        if let Some(f) = &id_field
            && f != "external_id"
            && f != "email"
        {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("id_field must be external_id or email, not \"{f}\""),
            });
        }
        let role = opts.get("role")?.unwrap_or_else(|| "user".into());
        if role != "user" && role != "lead" {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("role must be user or lead, not \"{role}\""),
            });
        }
        Ok(Intercom {
            name: opts.name().to_string(),
            base: opts
                .get("base_url")?
                .unwrap_or_else(|| DEFAULT_BASE_URL.into())
                .trim_end_matches('/')
                .to_string(),
            token: opts.require("access_token")?,
            version: opts
                .get("api_version")?
                .unwrap_or_else(|| DEFAULT_API_VERSION.into()),
            id_field,
            role,
            concurrency: opts.number("concurrency")?.unwrap_or(8).clamp(1, 64) as usize,
            client: opts.http_client()?,
            done: Mutex::new(HashMap::new()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Intercom-Version", &self.version)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// Intercom's own classification on top of the shared one: 429 waits for
    /// `X-RateLimit-Reset`.
    fn classify(&self, mut answer: HttpAnswer) -> Result<String, SendError> {
        if answer.status == 429 && answer.retry_after.is_none() {
            answer.retry_after = answer
                .headers
                .get("x-ratelimit-reset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|reset| {
                    let wait = reset - chrono::Utc::now().timestamp();
                    Duration::from_secs(wait.clamp(0, 3_600) as u64)
                });
        }
        http_classify(&self.name, answer)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, String), SendError> {
        let answer = http_read(&self.name, req.send().await).await?;
        let status = answer.status;
        if status == 404 || status == 409 {
            // Per record, not per endpoint: a contact that vanished, or one that exists.
            return Err(SendError::Rejected {
                status: Some(status),
                body: truncate(&answer.body),
            });
        }
        Ok((status, self.classify(answer)?))
    }

    /// The contact body of a record.
    fn body(&self, r: &Record, batch_key: Option<&str>, id_field: &str) -> Value {
        let mut top = Map::new();
        let mut custom = Map::new();
        top.insert("role".into(), Value::from(self.role.as_str()));
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
            top.insert("custom_attributes".into(), Value::Object(custom));
        }
        Value::Object(top)
    }

    async fn find(&self, id_field: &str, value: &str) -> Result<Option<String>, SendError> {
        let (_, text) = self
            .call(
                self.request(reqwest::Method::POST, "/contacts/search")
                    .json(&json!({"query": {"field": id_field, "operator": "=", "value": value}})),
            )
            .await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| SendError::Transient {
            message: format!("destination {}: unreadable search answer: {e}", self.name),
            retry_after: None,
        })?;
        Ok(v.get("data")
            .and_then(Value::as_array)
            .and_then(|d| d.first())
            .and_then(|c| c.get("id"))
            .map(value_text))
    }

    /// Applies one record; `Err(Rejected)` refuses it alone.
    async fn one(&self, r: &Record, mode: Mode, batch_key: Option<&str>) -> Result<(), SendError> {
        let id_field = self
            .id_field
            .as_deref()
            .unwrap_or(if batch_key == Some("email") {
                "email"
            } else {
                "external_id"
            });
        let body = self.body(r, batch_key, id_field);
        let key = r.key.clone().unwrap_or_default();
        if mode != Mode::Insert {
            if let Some(id) = self.find(id_field, &key).await? {
                self.call(
                    self.request(reqwest::Method::PUT, &format!("/contacts/{id}"))
                        .json(&body),
                )
                .await?;
                return Ok(());
            }
            if mode == Mode::Update {
                return Ok(());
            }
        }
        match self
            .call(self.request(reqwest::Method::POST, "/contacts").json(&body))
            .await
        {
            Err(SendError::Rejected {
                status: Some(409), ..
            }) if mode == Mode::Upsert => {
                // Created meanwhile (or by an earlier attempt): update it.
                match self.find(id_field, &key).await? {
                    Some(id) => {
                        self.call(
                            self.request(reqwest::Method::PUT, &format!("/contacts/{id}"))
                                .json(&body),
                        )
                        .await?;
                        Ok(())
                    }
                    None => Err(SendError::Transient {
                        message: format!(
                            "destination {}: contact conflict but no match on {id_field}",
                            self.name
                        ),
                        retry_after: None,
                    }),
                }
            }
            other => other.map(|_| ()),
        }
    }
}

#[async_trait]
impl Destination for Intercom {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        if batch.key.is_none() {
            return Err(SendError::Fatal {
                code: "22023",
                message: "intercom needs key = '<column>' (external id or email)".into(),
            });
        }
        let todo: Vec<&Record> = {
            let done = self.done.lock();
            batch
                .records
                .iter()
                .filter(|r| !done.contains_key(&r.ordinal))
                .collect()
        };
        // Waves of at most `concurrency` records with distinct keys, in order.
        let mut failure: Option<SendError> = None;
        let mut i = 0;
        while i < todo.len() && failure.is_none() {
            let mut keys = HashSet::new();
            let mut wave = Vec::new();
            while i < todo.len() && wave.len() < self.concurrency {
                if !keys.insert(todo[i].key.clone()) {
                    break;
                }
                wave.push(todo[i]);
                i += 1;
            }
            let results = join_all(wave.iter().map(|r| self.one(r, batch.mode, batch.key))).await;
            let mut done = self.done.lock();
            for (r, res) in wave.iter().zip(results) {
                match res {
                    Ok(()) => {
                        done.insert(r.ordinal, None);
                    }
                    Err(SendError::Rejected { status, body }) => {
                        done.insert(r.ordinal, Some((status, body)));
                    }
                    Err(e) => {
                        let worse = match (&failure, &e) {
                            (None, _) => true,
                            (Some(SendError::Fatal { .. }), _) => false,
                            (_, SendError::Fatal { .. }) => true,
                            (Some(SendError::Transient { .. }), SendError::Throttled { .. }) => {
                                true
                            }
                            _ => false,
                        };
                        if worse {
                            failure = Some(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut done = self.done.lock();
        let refused = batch
            .records
            .iter()
            .enumerate()
            .filter_map(|(index, r)| match done.get(&r.ordinal) {
                Some(Some((status, body))) => Some(RecordRejection {
                    index,
                    status: *status,
                    body: body.clone(),
                }),
                _ => None,
            })
            .collect();
        // The batch has its verdict and will not be sent again: forget it (bounded memory).
        done.clear();
        partly_rejected(refused)
    }
}
