//! ZeroBounce's email validation API (v2), as its documentation describes it:
//! - one address: `GET https://api.zerobounce.net/v2/validate?api_key=<key>&email=<email>&ip_address=`,
//!   answering a JSON object with `address`, `status` (`valid`, `invalid`, `catch-all`,
//!   `unknown`, `spamtrap`, `abuse`, `do_not_mail`), `sub_status`, `free_email`,
//!   `did_you_mean`, ..., or `{"error": "..."}` for a bad key or missing credits;
//! - up to 200 addresses: `POST https://bulkapi.zerobounce.net/v2/validatebatch` with
//!   `{"api_key": "<key>", "email_batch": [{"email_address": "...", "ip_address": null}]}`,
//!   answering `{"email_batch": [<result>, ...], "errors": [{"error": "...",
//!   "email_address": "..."}]}`, limited to 5 calls a minute.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::client::Lookup;

/// ZeroBounce's single-address endpoint.
pub const API_URL: &str = "https://api.zerobounce.net";
/// ZeroBounce's batch endpoint.
pub const BULK_URL: &str = "https://bulkapi.zerobounce.net";
/// Most addresses in one `validatebatch` call.
pub const MAX_BATCH: usize = 200;

/// The body of a batch request.
pub fn batch_body(api_key: &str, emails: &[&str]) -> Value {
    json!({
        "api_key": api_key,
        "email_batch": emails
            .iter()
            .map(|e| json!({"email_address": e, "ip_address": null}))
            .collect::<Vec<_>>(),
    })
}

/// The query of a single-address request.
pub fn single_query<'a>(api_key: &'a str, email: &'a str) -> [(&'static str, &'a str); 3] {
    [("api_key", api_key), ("email", email), ("ip_address", "")]
}

/// An account-level error in a 200 answer (`{"error": "Invalid API key ..."}`).
pub fn account_error(body: &Value) -> Option<String> {
    body.get("error")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .filter(|_| body.get("status").is_none() && body.get("email_batch").is_none())
        .map(str::to_string)
}

/// Maps a batch answer to one result per requested address.
pub fn decode_batch(emails: &[&str], body: &Value) -> Result<Vec<Lookup>, String> {
    if let Some(e) = account_error(body) {
        return Err(e);
    }
    let Some(results) = body.get("email_batch").and_then(Value::as_array) else {
        return Err("answer has no email_batch array".into());
    };
    let mut by_address: HashMap<String, Arc<Value>> = HashMap::new();
    for r in results {
        if let Some(a) = r.get("address").and_then(Value::as_str) {
            by_address.insert(a.to_lowercase(), Arc::new(r.clone()));
        }
    }
    let mut errors: HashMap<String, String> = HashMap::new();
    for e in body
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(a), Some(m)) = (
            e.get("email_address").and_then(Value::as_str),
            e.get("error").and_then(Value::as_str),
        ) {
            errors.insert(a.to_lowercase(), m.to_string());
        }
    }
    Ok(emails
        .iter()
        .map(|e| {
            let k = e.to_lowercase();
            match (by_address.get(&k), errors.remove(&k)) {
                (Some(v), _) => Ok(Some(v.clone())),
                // The API's verdict on the input itself ("Invalid email address"): an answer,
                // cached like one, not a failure to retry.
                (None, Some(reason)) => {
                    tracing::debug!("zerobounce: no verdict for an address: {reason}");
                    Ok(None)
                }
                (None, None) => Err("the answer does not mention this address".into()),
            }
        })
        .collect())
}

/// Maps a single-address answer.
pub fn decode_single(body: Value) -> Lookup {
    if let Some(e) = account_error(&body) {
        return Err(e);
    }
    if body.get("status").and_then(Value::as_str).is_none() {
        return Err("answer has no status".into());
    }
    Ok(Some(Arc::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_batches_by_address() {
        let body = json!({
            "email_batch": [
                {"address": "Ann@Example.com", "status": "valid", "sub_status": "", "free_email": false},
                {"address": "bob@example.com", "status": "invalid", "sub_status": "mailbox_not_found"}
            ],
            "errors": [{"error": "Invalid input", "email_address": "???"}]
        });
        let got = decode_batch(&["bob@example.com", "ann@example.com", "???"], &body).expect("ok");
        assert_eq!(
            got[0].as_ref().expect("found").as_ref().expect("value")["status"],
            "invalid"
        );
        assert_eq!(
            got[1].as_ref().expect("found").as_ref().expect("value")["status"],
            "valid"
        );
        assert!(
            matches!(got[2], Ok(None)),
            "an address the API refuses has no verdict"
        );
        assert!(decode_batch(&["x@y.z"], &json!({"email_batch": []})).expect("ok")[0].is_err());
        assert!(decode_batch(&["a@b.c"], &json!({"error": "Invalid API Key"})).is_err());
        assert!(decode_single(json!({"error": "Invalid API Key"})).is_err());
    }
}
