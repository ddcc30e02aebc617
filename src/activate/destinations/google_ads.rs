//! `google_ads_customer_match`: Customer Match user lists through offline user data jobs.
//!
//! Contract (developers.google.com/google-ads/api, "Customer Match" and
//! `OfflineUserDataJobService`, REST): every request carries `Authorization: Bearer <OAuth
//! access token>`, `developer-token: <token>` and, when the list's account is reached
//! through a manager account, `login-customer-id: <manager id, digits only>`.
//!
//! 1. `POST {base}/v{N}/customers/{customer_id}/offlineUserDataJobs:create` with `{"job":
//!    {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {"userList":
//!    "customers/{customer_id}/userLists/{user_list_id}"}}}` answers `{"resourceName":
//!    "customers/{id}/offlineUserDataJobs/{job}"}`;
//! 2. `POST {base}/v{N}/{resourceName}:addOperations` with `{"enablePartialFailure": true,
//!    "operations": [{"create": {"userIdentifiers": [{"hashedEmail": "..."},
//!    {"hashedPhoneNumber": "..."}]}}]}` (`remove` instead of `create` to take members out),
//!    at most 100,000 identifiers per request (so at most 50,000 rows of email and phone
//!    here; Google recommends about 10,000 per call, the default batch). A partial failure
//!    answers 200 with `partialFailureError.details[].errors[]`, each locating its operation
//!    at `location.fieldPathElements[{"fieldName": "operations", "index": i}]`: those rows are
//!    rejected, the others accepted;
//! 3. `POST {base}/v{N}/{resourceName}:run` once all operations are added (at the end of the
//!    COPY, so an interrupted COPY never applies half a list).
//!
//! Identifiers are normalised and hashed as Google requires ([`super::matching`]): email
//! trimmed, lowercased, dots removed before `@gmail.com`/`@googlemail.com`, SHA-256 hex;
//! phone in E.164 with `+`, SHA-256 hex. Errors: 401 `UNAUTHENTICATED` and 403
//! `PERMISSION_DENIED` (bad token, unapproved developer token) are fatal; 429
//! `RESOURCE_EXHAUSTED` is throttled (waiting for the `retryDelay` in its details when there
//! is no `Retry-After`); 400 `INVALID_ARGUMENT` is a rejection.
//!
//! [`Destination::remove`] runs its own job of `remove` operations for the keys (emails, or
//! phones when the key column is a phone column), so mirror syncs can take people out.
//!
//! Options: `customer_id`, `user_list_id`, `developer_token` (or `_env`), `access_token` (or
//! `_env`), `login_customer_id`, `api_version` (`v19`), `base_url`
//! (`https://googleads.googleapis.com`).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tally_udfs::pii::hash::Platform;

use super::matching::{Hashed, identifiers, key_identifiers};
use super::{
    Batch, Destination, HttpAnswer, Mode, Options, RecordRejection, SendError, http_classify,
    http_read, partly_rejected, truncate,
};
use crate::error::{Result, TallyError};

/// Google Ads API root.
pub const DEFAULT_BASE_URL: &str = "https://googleads.googleapis.com";
/// API version unless `api_version` says otherwise.
pub const DEFAULT_API_VERSION: &str = "v19";

/// A Customer Match destination.
#[derive(Debug)]
pub struct GoogleAds {
    name: String,
    root: String,
    customer_id: String,
    user_list: String,
    developer_token: String,
    access_token: String,
    login_customer_id: Option<String>,
    client: reqwest::Client,
    /// The job of this COPY's additions, created by the first batch and run by `finish`.
    job: tokio::sync::Mutex<Option<String>>,
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn user_identifiers(h: &Hashed) -> Vec<Value> {
    let mut ids = Vec::new();
    if let Some(e) = &h.email {
        ids.push(json!({ "hashedEmail": e }));
    }
    if let Some(p) = &h.phone {
        ids.push(json!({ "hashedPhoneNumber": p }));
    }
    ids
}

/// `"30s"` or `"1.5s"` (a protobuf Duration in JSON).
fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs = s.strip_suffix('s')?.parse::<f64>().ok()?;
    (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

fn find_retry_delay(v: &Value) -> Option<Duration> {
    match v {
        Value::Object(m) => m
            .get("retryDelay")
            .and_then(Value::as_str)
            .and_then(parse_proto_duration)
            .or_else(|| m.values().find_map(find_retry_delay)),
        Value::Array(a) => a.iter().find_map(find_retry_delay),
        _ => None,
    }
}

/// Operation indexes named by a `partialFailureError`, with their messages.
fn failed_operations(partial: &Value) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for detail in partial
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for err in detail
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = err
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("fieldName").and_then(Value::as_str) == Some("operations"))
                .and_then(|e| e.get("index"))
                .and_then(Value::as_u64);
            if let Some(i) = index {
                out.push((i as usize, truncate(&err.to_string())));
            }
        }
    }
    out
}

impl GoogleAds {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let customer_id = digits(&opts.require("customer_id")?);
        let user_list_id = digits(&opts.require("user_list_id")?);
        if customer_id.is_empty() || user_list_id.is_empty() {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message:
                    "customer_id and user_list_id must be Google Ads ids (digits, dashes allowed)"
                        .into(),
            });
        }
        let version = opts
            .get("api_version")?
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        let version = format!("v{}", version.trim_start_matches(['v', 'V']));
        let base = opts
            .get("base_url")?
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        Ok(GoogleAds {
            name: opts.name().to_string(),
            root: format!("{}/{version}", base.trim_end_matches('/')),
            user_list: format!("customers/{customer_id}/userLists/{user_list_id}"),
            customer_id,
            developer_token: opts.require("developer_token")?,
            access_token: opts.require("access_token")?,
            login_customer_id: opts.get("login_customer_id")?.map(|s| digits(&s)),
            client: opts.http_client()?,
            job: tokio::sync::Mutex::new(None),
        })
    }

    fn classify(&self, mut answer: HttpAnswer) -> Result<String, SendError> {
        if answer.status == 429 && answer.retry_after.is_none() {
            answer.retry_after = serde_json::from_str::<Value>(&answer.body)
                .ok()
                .as_ref()
                .and_then(find_retry_delay);
        }
        http_classify(&self.name, answer)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, SendError> {
        let mut req = self
            .client
            .post(format!("{}/{path}", self.root))
            .bearer_auth(&self.access_token)
            .header("developer-token", &self.developer_token)
            .json(body);
        if let Some(l) = &self.login_customer_id {
            req = req.header("login-customer-id", l);
        }
        let answer = http_read(&self.name, req.send().await).await?;
        let text = self.classify(answer)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_job(&self) -> Result<String, SendError> {
        let v = self
            .post(
                &format!("customers/{}/offlineUserDataJobs:create", self.customer_id),
                &json!({"job": {
                    "type": "CUSTOMER_MATCH_USER_LIST",
                    "customerMatchUserListMetadata": {"userList": self.user_list},
                }}),
            )
            .await?;
        v.get("resourceName")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SendError::Transient {
                message: format!(
                    "destination {}: no resourceName in {}",
                    self.name,
                    truncate(&v.to_string())
                ),
                retry_after: None,
            })
    }

    /// Adds operations (`create` or `remove`) to a job; the indexes Google refused.
    async fn add(
        &self,
        job: &str,
        verb: &str,
        ops: &[Hashed],
    ) -> Result<Vec<(usize, String)>, SendError> {
        let operations: Vec<Value> = ops
            .iter()
            .map(|h| json!({ verb: {"userIdentifiers": user_identifiers(h)} }))
            .collect();
        let v = self
            .post(
                &format!("{job}:addOperations"),
                &json!({"enablePartialFailure": true, "operations": operations}),
            )
            .await?;
        Ok(v.get("partialFailureError")
            .map(failed_operations)
            .unwrap_or_default())
    }

    async fn run(&self, job: &str) -> Result<(), SendError> {
        self.post(&format!("{job}:run"), &json!({}))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Destination for GoogleAds {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let mut refused = Vec::new();
        let mut ops = Vec::new();
        let mut positions = Vec::new();
        for (index, r) in batch.records.iter().enumerate() {
            match identifiers(&r.fields, Platform::Google) {
                Ok(h) => {
                    ops.push(h);
                    positions.push(index);
                }
                Err(why) => refused.push(RecordRejection {
                    index,
                    status: None,
                    body: why,
                }),
            }
        }
        if !ops.is_empty() {
            let job = {
                let mut job = self.job.lock().await;
                match job.as_ref() {
                    Some(j) => j.clone(),
                    None => {
                        let j = self.create_job().await?;
                        *job = Some(j.clone());
                        j
                    }
                }
            };
            for (i, why) in self.add(&job, "create", &ops).await? {
                if let Some(&index) = positions.get(i) {
                    refused.push(RecordRejection {
                        index,
                        status: Some(400),
                        body: why,
                    });
                }
            }
        }
        refused.sort_by_key(|r| r.index);
        partly_rejected(refused)
    }

    async fn remove(&self, _copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        let ops: Vec<Hashed> = keys
            .iter()
            .filter_map(|k| key_identifiers(key, k, Platform::Google))
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        let job = self.create_job().await?;
        let failed = self.add(&job, "remove", &ops).await?;
        self.run(&job).await?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(SendError::Rejected {
                status: Some(400),
                body: truncate(
                    &failed
                        .into_iter()
                        .map(|(_, m)| m)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            })
        }
    }

    async fn finish(
        &self,
        _copy_id: &str,
        _mode: Mode,
        _key: Option<&str>,
    ) -> Result<u64, SendError> {
        let job = self.job.lock().await.take();
        let Some(job) = job else {
            return Ok(0);
        };
        // `finish` is outside the engine's retries: a few of its own for a blip.
        let mut wait = Duration::from_millis(500);
        for _ in 0..5 {
            match self.run(&job).await {
                Err(SendError::Transient { retry_after, .. })
                | Err(SendError::Throttled { retry_after, .. }) => {
                    tokio::time::sleep(retry_after.unwrap_or(wait).min(Duration::from_secs(60)))
                        .await;
                    wait *= 2;
                }
                other => return other.map(|_| 0),
            }
        }
        self.run(&job).await.map(|_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_failures_name_their_operations_and_throttles_their_delay() {
        let partial = json!({"code": 3, "details": [{"errors": [
            {"message": "bad", "location": {"fieldPathElements": [
                {"fieldName": "operations", "index": 4}, {"fieldName": "create"}]}},
            {"message": "no location"}
        ]}]});
        let failed = failed_operations(&partial);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 4);
        let throttled = json!({"error": {"details": [{"retryDelay": "1.5s"}]}});
        assert_eq!(
            find_retry_delay(&throttled),
            Some(Duration::from_millis(1_500))
        );
    }
}
