//! `salesforce`: sObject upsert by external id, through sObject Collections or Bulk API 2.0.
//!
//! Contract (developer.salesforce.com, REST API Developer Guide, "Upsert Records Using
//! sObject Collections", API 46.0 and later): `PATCH
//! {instance_url}/services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}` with
//! `Authorization: Bearer <access token>` and the body `{"allOrNone": false, "records":
//! [{"attributes": {"type": "Contact"}, "Ext_Id__c": "k1", "LastName": "A"}]}`, at most 200
//! records, all of the URI's type, each with an `attributes.type`, no `Id`. A well-formed
//! request answers 200 with one `UpsertResult` per record, in request order: `{"id",
//! "success", "created", "errors": [{"statusCode", "message", "fields"}]}`. With
//! `allOrNone=false` the other records are applied when one fails, so tally reports exactly
//! the failed ones as rejected ([`SendError::PartlyRejected`]) and resends nothing. A malformed
//! request answers 400 with `[{"errorCode": "JSON_PARSER_ERROR", "message": ...}]`; an expired
//! or wrong token 401 `INVALID_SESSION_ID` (fatal); the org's API request limit 403
//! `REQUEST_LIMIT_EXCEEDED`, which is a throttle, not a credentials problem.
//!
//! Bulk API 2.0 (`bulk = 'true'`, "Bulk API 2.0 and Bulk API Developer Guide"): each batch
//! becomes one ingest job: `POST .../jobs/ingest` `{"object", "externalIdFieldName",
//! "contentType": "CSV", "operation": "upsert", "lineEnding": "LF"}`, `PUT .../jobs/ingest/{id}/batches`
//! with the CSV (`text/csv`), `PATCH .../jobs/ingest/{id}` `{"state": "UploadComplete"}`,
//! polling `GET .../jobs/ingest/{id}` until `JobComplete` (or `Failed`/`Aborted`), then
//! `GET .../jobs/ingest/{id}/failedResults/`, a CSV of the failed rows with `sf__Id` and
//! `sf__Error` first, matched back to the batch's rows by external id. A null is written
//! `#N/A`, Bulk API's way of clearing a field. Bulk is an option, not automatic above a
//! threshold: a destination sees one batch at a time, not the size of the run, and a job
//! costs four requests plus polling and minutes of queueing, which only pays for large
//! batches (up to 10,000 rows per job here, against 200 per Collections request). A batch
//! retried after a timeout resumes polling its job instead of creating a second one.
//!
//! Removal ([`Destination::remove`], for mirror syncs): Collections delete works by record
//! `Id` only, so tally looks the ids up with SOQL (`GET .../query?q=SELECT Id FROM
//! {SObject} WHERE {ExternalIdField} IN (...)`, 200 keys at a time) and deletes them with
//! `DELETE .../composite/sobjects?ids=...&allOrNone=false`; keys with no record (already
//! removed) and `ENTITY_IS_DELETED` answers count as removed.
//!
//! Options: `instance_url` (`https://MyDomain.my.salesforce.com`), `access_token` (or
//! `access_token_env`: an OAuth access token; tally does not run the OAuth flow), `object`
//! (`Contact`, `Account`, `Customer__c`, ...), `external_id_field` (defaults to the COPY's
//! key field), `api_version` (`62.0`), `bulk` (`false`), `poll_interval_ms` (2000).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{
    Batch, Destination, HttpAnswer, Options, RecordRejection, SendError, http_classify, http_read,
    partly_rejected, truncate, value_text,
};
use crate::error::{Result, TallyError};

/// API version used unless `api_version` says otherwise.
pub const DEFAULT_API_VERSION: &str = "62.0";
/// Records per sObject Collections request (documented maximum).
pub const COLLECTION_LIMIT: usize = 200;

/// Where a bulk job of one batch stands, so a retried batch resumes it.
#[derive(Debug, Clone)]
struct BulkJob {
    id: String,
    uploaded: bool,
}

/// A Salesforce destination.
#[derive(Debug)]
pub struct Salesforce {
    name: String,
    /// `{instance_url}/services/data/v{api_version}`.
    root: String,
    token: String,
    object: String,
    external_id_field: Option<String>,
    bulk: bool,
    poll: Duration,
    client: reqwest::Client,
    /// Bulk jobs by batch idempotency key.
    jobs: Mutex<HashMap<String, BulkJob>>,
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

fn is_api_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Salesforce {
    /// Builds the client from the destination's options.
    pub fn new(opts: &Options) -> Result<Self> {
        let instance = opts.require("instance_url")?;
        let object = opts.require("object")?;
        if !is_api_name(&object) {
            return Err(invalid(format!(
                "\"{object}\" is not a Salesforce object name"
            )));
        }
        let external_id_field = opts.get("external_id_field")?;
        if let Some(f) = &external_id_field
            && !is_api_name(f)
        {
            return Err(invalid(format!("\"{f}\" is not a Salesforce field name")));
        }
        let version = opts
            .get("api_version")?
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        let version = version.trim_start_matches(['v', 'V']).to_string();
        if !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(invalid(format!(
                "\"{version}\" is not an API version like 62.0"
            )));
        }
        let bulk = match opts.get("bulk")?.as_deref().map(str::to_ascii_lowercase) {
            None => false,
            Some(b) if b == "true" || b == "on" || b == "1" => true,
            Some(b) if b == "false" || b == "off" || b == "0" => false,
            Some(b) => return Err(invalid(format!("bulk must be true or false, not \"{b}\""))),
        };
        if !bulk
            && let Some(b) = opts.number("batch_size")?
            && b as usize > COLLECTION_LIMIT
        {
            return Err(invalid(format!(
                "batch_size {b} is over the 200 records of an sObject Collections request; set bulk = 'true' for Bulk API 2.0 jobs of up to 10000 rows"
            )));
        }
        Ok(Salesforce {
            name: opts.name().to_string(),
            root: format!(
                "{}/services/data/v{version}",
                instance.trim_end_matches('/')
            ),
            token: opts.require("access_token")?,
            object,
            external_id_field,
            bulk,
            poll: Duration::from_millis(opts.number("poll_interval_ms")?.unwrap_or(2_000)),
            client: opts.http_client()?,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    fn external_id<'b>(&'b self, batch_key: Option<&'b str>) -> Result<&'b str, SendError> {
        self.external_id_field
            .as_deref()
            .or(batch_key)
            .ok_or_else(|| SendError::Fatal {
                code: "22023",
                message:
                    "salesforce upserts need key = '<column>' (or the external_id_field option)"
                        .into(),
            })
    }

    /// Salesforce answers request-level errors as `[{"errorCode", "message"}]`; the org's API
    /// limit is a 403 that means "later", not "bad token".
    fn classify(&self, answer: HttpAnswer) -> Result<String, SendError> {
        if answer.status == 403 && answer.body.contains("REQUEST_LIMIT_EXCEEDED") {
            return Err(SendError::Throttled {
                message: format!(
                    "destination {} hit the org's API request limit (REQUEST_LIMIT_EXCEEDED)",
                    self.name
                ),
                retry_after: answer.retry_after,
            });
        }
        http_classify(&self.name, answer)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<String, SendError> {
        let answer = http_read(&self.name, req.bearer_auth(&self.token).send().await).await?;
        self.classify(answer)
    }

    /// One sObject Collections upsert.
    async fn upsert_collection(&self, batch: &Batch<'_>, field: &str) -> Result<(), SendError> {
        let records: Vec<Value> = batch
            .records
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("attributes".into(), json!({ "type": self.object }));
                for (k, v) in &r.fields {
                    if Some(k.as_str()) != batch.key || batch.key == Some(field) {
                        o.insert(k.clone(), v.clone());
                    }
                }
                o.insert(
                    field.to_string(),
                    Value::from(r.key.clone().unwrap_or_else(|| {
                        r.fields.get(field).map(value_text).unwrap_or_default()
                    })),
                );
                Value::Object(o)
            })
            .collect();
        let url = format!("{}/composite/sobjects/{}/{field}", self.root, self.object);
        let text = self
            .call(
                self.client
                    .patch(&url)
                    .json(&json!({"allOrNone": false, "records": records})),
            )
            .await?;
        let results: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| SendError::Transient {
                message: format!(
                    "destination {}: unreadable sObject Collections answer ({e}): {}",
                    self.name,
                    truncate(&text)
                ),
                retry_after: None,
            })?;
        if results.len() != batch.records.len() {
            return Err(SendError::Transient {
                message: format!(
                    "destination {}: {} results for {} records",
                    self.name,
                    results.len(),
                    batch.records.len()
                ),
                retry_after: None,
            });
        }
        let refused = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.get("success").and_then(Value::as_bool) != Some(true))
            .map(|(index, r)| RecordRejection {
                index,
                status: None,
                body: truncate(&r.get("errors").cloned().unwrap_or(Value::Null).to_string()),
            })
            .collect();
        partly_rejected(refused)
    }

    /// One Bulk API 2.0 ingest job for the batch.
    async fn upsert_bulk(&self, batch: &Batch<'_>, field: &str) -> Result<(), SendError> {
        let job = self.jobs.lock().get(&batch.idempotency_key).cloned();
        let mut job = match job {
            Some(j) => j,
            None => {
                let text =
                    self.call(self.client.post(format!("{}/jobs/ingest", self.root)).json(
                        &json!({
                            "object": self.object,
                            "externalIdFieldName": field,
                            "contentType": "CSV",
                            "operation": "upsert",
                            "lineEnding": "LF",
                        }),
                    ))
                    .await?;
                let id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
                    .ok_or_else(|| SendError::Transient {
                        message: format!(
                            "destination {}: no job id in {}",
                            self.name,
                            truncate(&text)
                        ),
                        retry_after: None,
                    })?;
                let j = BulkJob {
                    id,
                    uploaded: false,
                };
                self.jobs
                    .lock()
                    .insert(batch.idempotency_key.clone(), j.clone());
                j
            }
        };
        let job_url = format!("{}/jobs/ingest/{}", self.root, job.id);
        if !job.uploaded {
            let csv = bulk_csv(batch, field).map_err(|e| SendError::Fatal {
                code: "XX000",
                message: format!("destination {}: building the CSV: {e}", self.name),
            })?;
            self.call(
                self.client
                    .put(format!("{job_url}/batches"))
                    .header(reqwest::header::CONTENT_TYPE, "text/csv")
                    .body(csv),
            )
            .await?;
            self.call(
                self.client
                    .patch(&job_url)
                    .json(&json!({"state": "UploadComplete"})),
            )
            .await?;
            job.uploaded = true;
            self.jobs
                .lock()
                .insert(batch.idempotency_key.clone(), job.clone());
        }
        loop {
            let text = self.call(self.client.get(&job_url)).await?;
            let info: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match info.get("state").and_then(Value::as_str) {
                Some("JobComplete") => break,
                Some("Failed") | Some("Aborted") => {
                    self.jobs.lock().remove(&batch.idempotency_key);
                    return Err(SendError::Fatal {
                        code: "22023",
                        message: format!(
                            "destination {}: Bulk API job {} failed: {}",
                            self.name,
                            job.id,
                            truncate(
                                info.get("errorMessage")
                                    .and_then(Value::as_str)
                                    .unwrap_or("no error message")
                            )
                        ),
                    });
                }
                _ => tokio::time::sleep(self.poll).await,
            }
        }
        let failed = self
            .call(self.client.get(format!("{job_url}/failedResults/")))
            .await?;
        let outcome = match_failed_rows(batch, field, &failed);
        self.jobs.lock().remove(&batch.idempotency_key);
        outcome
    }

    /// The record ids of these external ids (SOQL).
    async fn ids_of(&self, field: &str, keys: &[String]) -> Result<Vec<String>, SendError> {
        let list: Vec<String> = keys
            .iter()
            .map(|k| format!("'{}'", k.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect();
        let soql = format!(
            "SELECT Id FROM {} WHERE {field} IN ({})",
            self.object,
            list.join(",")
        );
        let mut ids = Vec::new();
        let mut next = Some(
            reqwest::Url::parse_with_params(&format!("{}/query", self.root), [("q", soql)])
                .map_err(|e| SendError::Fatal {
                    code: "22023",
                    message: format!("destination {}: bad instance_url: {e}", self.name),
                })?
                .to_string(),
        );
        while let Some(url) = next.take() {
            let text = self.call(self.client.get(&url)).await?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            for r in v
                .get("records")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = r.get("Id").and_then(Value::as_str) {
                    ids.push(id.to_string());
                }
            }
            if let Some(n) = v.get("nextRecordsUrl").and_then(Value::as_str) {
                let base = self.root.split("/services/").next().unwrap_or_default();
                next = Some(format!("{base}{n}"));
            }
        }
        Ok(ids)
    }
}

/// The batch as a Bulk API CSV: a header of field names (the external id field first), one
/// line per record, `#N/A` for nulls.
fn bulk_csv(batch: &Batch<'_>, field: &str) -> std::result::Result<Vec<u8>, csv::Error> {
    let mut columns: Vec<String> = vec![field.to_string()];
    for r in batch.records {
        for k in r.fields.keys() {
            if k != field && Some(k.as_str()) != batch.key && !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(&columns)?;
    for r in batch.records {
        let line: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    return r
                        .key
                        .clone()
                        .unwrap_or_else(|| r.fields.get(c).map(value_text).unwrap_or_default());
                }
                match r.fields.get(c) {
                    None | Some(Value::Null) => "#N/A".to_string(),
                    Some(v) => value_text(v),
                }
            })
            .collect();
        w.write_record(&line)?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Matches the rows of a `failedResults` CSV to the batch by external id.
fn match_failed_rows(batch: &Batch<'_>, field: &str, csv_text: &str) -> Result<(), SendError> {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(_) => return Ok(()),
    };
    let (Some(err_col), Some(key_col)) = (
        headers.iter().position(|h| h == "sf__Error"),
        headers.iter().position(|h| h == field),
    ) else {
        return if csv_text.trim().is_empty() || headers.is_empty() {
            Ok(())
        } else {
            Err(SendError::Rejected {
                status: None,
                body: truncate(csv_text),
            })
        };
    };
    let mut errors: HashMap<String, String> = HashMap::new();
    for row in reader.records().flatten() {
        if let (Some(k), Some(e)) = (row.get(key_col), row.get(err_col)) {
            errors.insert(k.to_string(), e.to_string());
        }
    }
    let refused = batch
        .records
        .iter()
        .enumerate()
        .filter_map(|(index, r)| {
            let k = r.key.clone()?;
            errors.get(&k).map(|e| RecordRejection {
                index,
                status: None,
                body: truncate(e),
            })
        })
        .collect::<Vec<_>>();
    if refused.len() < errors.len() {
        // Failed rows tally cannot place: let the engine split the batch (upserts by
        // external id are idempotent, so resending the applied rows changes nothing).
        return Err(SendError::Rejected {
            status: None,
            body: truncate(csv_text),
        });
    }
    partly_rejected(refused)
}

#[async_trait]
impl Destination for Salesforce {
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let field = self.external_id(batch.key)?.to_string();
        if self.bulk {
            self.upsert_bulk(batch, &field).await
        } else {
            if batch.records.len() > COLLECTION_LIMIT {
                return Err(SendError::Fatal {
                    code: "22023",
                    message: "sObject Collections take at most 200 records; use bulk = 'true' for larger batches".into(),
                });
            }
            self.upsert_collection(batch, &field).await
        }
    }

    async fn remove(&self, _copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        let field = self.external_id(Some(key))?.to_string();
        for chunk in keys.chunks(COLLECTION_LIMIT) {
            let ids = self.ids_of(&field, chunk).await?;
            if ids.is_empty() {
                continue;
            }
            let url = reqwest::Url::parse_with_params(
                &format!("{}/composite/sobjects", self.root),
                [("ids", ids.join(",")), ("allOrNone", "false".into())],
            )
            .map_err(|e| SendError::Fatal {
                code: "22023",
                message: format!("destination {}: bad instance_url: {e}", self.name),
            })?;
            let text = self.call(self.client.delete(url)).await?;
            let results: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
            let failed: Vec<&Value> = results
                .iter()
                .filter(|r| r.get("success").and_then(Value::as_bool) != Some(true))
                .filter(|r| {
                    !r.get("errors")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .all(|e| {
                            e.get("statusCode").and_then(Value::as_str) == Some("ENTITY_IS_DELETED")
                        })
                })
                .collect();
            if !failed.is_empty() {
                return Err(SendError::Rejected {
                    status: None,
                    body: truncate(
                        &Value::from(failed.into_iter().cloned().collect::<Vec<_>>()).to_string(),
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::super::{Mode, Record};
    use super::*;

    fn record(ordinal: u64, key: &str, email: Value) -> Record {
        let mut fields = Map::new();
        fields.insert("user_id".into(), Value::from(key));
        fields.insert("Email".into(), email);
        Record {
            ordinal,
            key: Some(key.into()),
            fields,
        }
    }

    #[test]
    fn bulk_csv_puts_the_external_id_first_and_clears_nulls() {
        let records = vec![
            record(0, "k1", json!("a@x.io")),
            record(1, "k,2", Value::Null),
        ];
        let batch = Batch {
            copy_id: "c",
            mode: Mode::Upsert,
            key: Some("user_id"),
            records: &records,
            idempotency_key: "i".into(),
        };
        let csv = String::from_utf8(bulk_csv(&batch, "Ext__c").expect("csv")).expect("utf8");
        assert_eq!(csv, "Ext__c,Email\nk1,a@x.io\n\"k,2\",#N/A\n");
        let failed = "\"sf__Id\",\"sf__Error\",Ext__c,Email\n\"\",\"INVALID_EMAIL_ADDRESS:bad\",\"k,2\",#N/A\n";
        match match_failed_rows(&batch, "Ext__c", failed) {
            Err(SendError::PartlyRejected { rejected }) => {
                assert_eq!(rejected.len(), 1);
                assert_eq!(rejected[0].index, 1);
                assert!(rejected[0].body.contains("INVALID_EMAIL_ADDRESS"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            match_failed_rows(&batch, "Ext__c", "\"sf__Id\",\"sf__Error\",Ext__c,Email\n").is_ok()
        );
    }
}
