//! `meta_custom_audiences`: Meta (Facebook) customer-list Custom Audiences.
//!
//! Contract (developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences,
//! "Add/remove users"): `POST {base}/{api_version}/{audience_id}/users` with the parameters
//! `payload = {"schema": ["EMAIL", "PHONE"], "data": [["<sha256>", "<sha256>"], ...]}` and
//! `access_token`, at most 10,000 rows per request; `DELETE` on the same edge with the same
//! parameters removes the people. tally sends the parameters as a JSON body (the Graph API
//! takes JSON bodies), so the token never lands in a URL. A missing identifier in a
//! multi-key row is an empty string. The answer is `{"audience_id", "session_id",
//! "num_received", "num_invalid_entries", "invalid_entry_samples"}`.
//!
//! Identifiers are normalised and hashed as Meta requires ([`super::matching`]): email
//! trimmed and lowercased, phone as digits with the country code and no `+`, each the
//! lowercase hex SHA-256. A row whose identifier is invalid is rejected before it is sent.
//!
//! Errors come as `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`,
//! and the HTTP status alone does not classify them: code 190 (invalid or expired token)
//! and 10/200-299 (permissions) are fatal whatever the status; 4, 17, 32, 613 and 80003
//! (rate limits) are throttles; 1 and 2 (temporary) are transient; the rest (100, invalid
//! parameter) reject the batch, which the engine splits.
//!
//! Options: `audience_id`, `access_token` (or `_env`), `api_version` (`v21.0`), `base_url`
//! (`https://graph.facebook.com`).

use async_trait::async_trait;
use serde_json::{Value, json};
use tally_udfs::pii::hash::Platform;

use super::matching::{Hashed, identifiers, key_identifiers};
use super::{
    Batch, Destination, HttpAnswer, Options, RecordRejection, SendError, http_classify, http_read,
    partly_rejected, truncate,
};
use crate::error::{Result, TallyError};

/// Graph API root.
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// Graph API version unless `api_version` says otherwise.
pub const DEFAULT_API_VERSION: &str = "v21.0";
/// Rows per request (documented maximum).
pub const MAX_ROWS: usize = 10_000;

/// A Meta Custom Audience destination.
#[derive(Debug)]
pub struct MetaAudience {
    name: String,
    endpoint: String,
    token: String,
    client: reqwest::Client,
}

/// The schema and rows of a payload (the multi-key form): only the identifier kinds
/// present in the batch, in the order EMAIL, PHONE.
fn payload(rows: &[Hashed]) -> Value {
    let email = rows.iter().any(|h| h.email.is_some());
    let phone = rows.iter().any(|h| h.phone.is_some());
    let mut schema = Vec::new();
    if email {
        schema.push("EMAIL");
    }
    if phone {
        schema.push("PHONE");
    }
    let data: Vec<Vec<String>> = rows
        .iter()
        .map(|h| {
            let mut row = Vec::new();
            if email {
                row.push(h.email.clone().unwrap_or_default());
            }
            if phone {
                row.push(h.phone.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    json!({"schema": schema, "data": data})
}

impl MetaAudience {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let audience = opts.require("audience_id")?;
        if audience.is_empty() || !audience.chars().all(|c| c.is_ascii_digit()) {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("\"{audience}\" is not a Meta audience id (digits)"),
            });
        }
        let version = opts
            .get("api_version")?
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        let version = format!("v{}", version.trim_start_matches(['v', 'V']));
        let base = opts
            .get("base_url")?
            .unwrap_or_else(|| DEFAULT_BASE_URL.into());
        Ok(MetaAudience {
            name: opts.name().to_string(),
            endpoint: format!("{}/{version}/{audience}/users", base.trim_end_matches('/')),
            token: opts.require("access_token")?,
            client: opts.http_client()?,
        })
    }

    fn classify(&self, answer: HttpAnswer) -> Result<String, SendError> {
        if answer.status >= 400
            && let Ok(v) = serde_json::from_str::<Value>(&answer.body)
            && let Some(code) = v.pointer("/error/code").and_then(Value::as_i64)
        {
            let message = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(match code {
                190 | 10 | 200..=299 => SendError::Fatal {
                    code: "28000",
                    message: format!(
                        "destination {} refused the access token or its permissions (Graph API error {code}); check it with ALTER DESTINATION {} SET (...)",
                        self.name, self.name
                    ),
                },
                4 | 17 | 32 | 613 | 80003 => SendError::Throttled {
                    message: format!(
                        "destination {} is rate limited (Graph API error {code})",
                        self.name
                    ),
                    retry_after: answer.retry_after,
                },
                1 | 2 => SendError::Transient {
                    message: format!(
                        "destination {}: temporary Graph API error {code}: {}",
                        self.name,
                        truncate(message)
                    ),
                    retry_after: answer.retry_after,
                },
                _ if answer.status >= 500 => SendError::Transient {
                    message: format!(
                        "destination {}: Graph API error {code}: {}",
                        self.name,
                        truncate(message)
                    ),
                    retry_after: answer.retry_after,
                },
                _ => SendError::Rejected {
                    status: Some(answer.status),
                    body: truncate(&answer.body),
                },
            });
        }
        http_classify(&self.name, answer)
    }

    async fn call(&self, method: reqwest::Method, rows: &[Hashed]) -> Result<Value, SendError> {
        let body = json!({"payload": payload(rows), "access_token": self.token});
        let answer = http_read(
            &self.name,
            self.client
                .request(method, &self.endpoint)
                .json(&body)
                .send()
                .await,
        )
        .await?;
        let text = self.classify(answer)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[async_trait]
impl Destination for MetaAudience {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let mut refused = Vec::new();
        let mut rows = Vec::new();
        for (index, r) in batch.records.iter().enumerate() {
            match identifiers(&r.fields, Platform::Meta) {
                Ok(h) => rows.push(h),
                Err(why) => refused.push(RecordRejection {
                    index,
                    status: None,
                    body: why,
                }),
            }
        }
        if !rows.is_empty() {
            let v = self.call(reqwest::Method::POST, &rows).await?;
            let invalid = v
                .get("num_invalid_entries")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if invalid > 0 {
                // Meta counts invalid entries without saying which: let the engine split.
                return Err(SendError::Rejected {
                    status: Some(200),
                    body: truncate(&v.to_string()),
                });
            }
        }
        partly_rejected(refused)
    }

    async fn remove(&self, _copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        let rows: Vec<Hashed> = keys
            .iter()
            .filter_map(|k| key_identifiers(key, k, Platform::Meta))
            .collect();
        for chunk in rows.chunks(MAX_ROWS) {
            self.call(reqwest::Method::DELETE, chunk).await?;
        }
        Ok(())
    }
}
