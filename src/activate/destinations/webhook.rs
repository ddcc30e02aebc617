//! `webhook`: JSON batches to any URL.
//!
//! Contract (what a receiver implements):
//!
//! - `POST <url>` (or `method = 'PUT'`) with `Content-Type: application/json` and the body
//!   `{"copy_id": "...", "mode": "upsert", "key": "id", "rows": [{...}, ...]}`, at most
//!   `batch_size` rows (default 100);
//! - `Idempotency-Key: tally-<hex>`: the same for every retry of one batch (derived from the
//!   copy id and the rows), so a receiver that remembers keys applies a batch once;
//! - with `hmac_secret`, `<signature_header>: sha256=<hex>` (default header
//!   `X-Tally-Signature`): HMAC-SHA256 of the exact body bytes, as GitHub and Stripe sign;
//! - custom headers from `headers = '{"Authorization": "Bearer ..."}'`;
//! - removals (mirror syncs, for keys that left the query): the same request with the body
//!   `{"copy_id": "...", "op": "delete", "key": "id", "keys": ["k1", "k2", ...]}` (keys as
//!   text, at most `batch_size`); a receiver deletes its records with those key values, and
//!   answers 2xx also when some are already gone (a retry sends the same keys with the same
//!   `Idempotency-Key`). Row batches carry no `op`;
//! - answers: 2xx delivered; 429 (with `Retry-After`) throttled; 408 and 5xx retried; 401 and
//!   403 stop the COPY; any other 4xx rejects the batch, which tally splits to find the rows
//!   at fault.

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::{Batch, Destination, Options, SendError, http_outcome};
use crate::error::{Result, TallyError};

/// A webhook destination.
#[derive(Debug)]
pub struct Webhook {
    name: String,
    url: String,
    method: reqwest::Method,
    client: reqwest::Client,
    hmac: Option<ring::hmac::Key>,
    signature_header: HeaderName,
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

impl Webhook {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let url = opts.require("url")?;
        reqwest::Url::parse(&url).map_err(|e| {
            invalid(format!(
                "destination {}: url is not a URL: {e}",
                opts.name()
            ))
        })?;
        let mut headers = HeaderMap::new();
        if let Some(h) = opts.get("headers")? {
            let map: serde_json::Map<String, Value> = serde_json::from_str(&h)
                .map_err(|_| invalid("option headers must be a JSON object of strings".into()))?;
            for (k, v) in map {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| invalid(format!("\"{k}\" is not a valid header name")))?;
                let mut value = HeaderValue::from_str(v.as_str().unwrap_or_default())
                    .map_err(|_| invalid(format!("the value of header \"{k}\" is not valid")))?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        let method = match opts.get("method")?.as_deref().map(str::to_ascii_uppercase) {
            None => reqwest::Method::POST,
            Some(m) if m == "POST" => reqwest::Method::POST,
            Some(m) if m == "PUT" => reqwest::Method::PUT,
            Some(m) => return Err(invalid(format!("method must be POST or PUT, not {m}"))),
        };
        let signature_header = opts
            .get("signature_header")?
            .unwrap_or_else(|| "X-Tally-Signature".into());
        let signature_header = HeaderName::from_bytes(signature_header.as_bytes())
            .map_err(|_| invalid(format!("\"{signature_header}\" is not a valid header name")))?;
        let hmac = opts
            .get("hmac_secret")?
            .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes()));
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(opts.timeout()?)
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TallyError::Internal(format!("http client: {e}")))?;
        Ok(Webhook {
            name: opts.name().to_string(),
            url,
            method,
            client,
            hmac,
            signature_header,
        })
    }
}

/// The HMAC-SHA256 signature header value of `body`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    format!(
        "sha256={}",
        crate::engine::hex_encode(ring::hmac::sign(key, body).as_ref())
    )
}

impl Webhook {
    /// Sends one signed JSON body.
    async fn post(&self, body: String, idempotency_key: &str) -> Result<(), SendError> {
        let mut req = self
            .client
            .request(self.method.clone(), &self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key);
        if let Some(key) = &self.hmac {
            req = req.header(
                self.signature_header.clone(),
                signature(key, body.as_bytes()),
            );
        }
        http_outcome(&self.name, req.body(body).send().await)
            .await
            .map(|_| ())
    }
}

/// The body of a row batch (see the contract above).
#[derive(serde::Serialize)]
struct RowsBody<'a> {
    copy_id: &'a str,
    mode: &'a str,
    key: Option<&'a str>,
    rows: Rows<'a>,
}

/// The records' fields as a JSON array, serialized without copying them.
struct Rows<'a>(&'a [super::Record]);

impl serde::Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| &r.fields))
    }
}

#[async_trait]
impl Destination for Webhook {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let body = RowsBody {
            copy_id: batch.copy_id,
            mode: batch.mode.as_str(),
            key: batch.key,
            rows: Rows(batch.records),
        };
        // Serialized from the records in place: a 1,000-row body is never copied as values.
        let body = serde_json::to_string(&body).map_err(|e| SendError::Fatal {
            code: "XX000",
            message: format!("row batch to JSON: {e}"),
        })?;
        self.post(body, &batch.idempotency_key).await
    }

    async fn remove(&self, copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let body = json!({
            "copy_id": copy_id,
            "op": "delete",
            "key": key,
            "keys": keys,
        })
        .to_string();
        let digest = super::digest_hex(&[copy_id.as_bytes(), body.as_bytes()]);
        self.post(body, &format!("tally-{}", &digest[..40])).await
    }
}
