//! The SaaS destination types of issue 6 beyond the first ones (salesforce, intercom,
//! zendesk, google_ads_customer_match, meta_custom_audiences) and the `file` destination.
//!
//! Each SaaS type runs against a local HTTP server written here that implements the vendor's
//! documented contract strictly (auth, headers, batch limits, body shapes, per-record
//! errors) and injects throttles and server errors; every test checks that each good row
//! arrived exactly once and that the row the vendor refuses lands in `tally.rejected_rows`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::{TestServer, code, num, rows};

// ---------------------------------------------------------------------------------------
// Helpers (copied from activate.rs, which other work is changing).

fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the mock sees of a request.
struct Req {
    method: String,
    path: String,
    query: String,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// An answer: status, extra headers, body.
#[derive(Clone)]
struct Answer(u16, Vec<(&'static str, String)>, String);

fn reply(status: u16, body: Value) -> Answer {
    Answer(status, vec![], body.to_string())
}

/// A mock's state: its own `S`, the request counter and faults by request number (answered
/// before the request is looked at, so a fault never applies anything).
struct Mock<S> {
    requests: u64,
    faults: HashMap<u64, Answer>,
    s: S,
}

type Shared<S> = Arc<Mutex<Mock<S>>>;

async fn serve<S: Send + 'static>(
    s: S,
    faults: Vec<(u64, Answer)>,
    handler: fn(&mut S, &Req) -> Answer,
) -> (SocketAddr, Shared<S>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state: Shared<S> = Arc::new(Mutex::new(Mock {
        requests: 0,
        faults: faults.into_iter().collect(),
        s,
    }));
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let st = st.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map_err(std::io::Error::other)?
                            .to_bytes();
                        let r = Req {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_string(),
                            query: parts.uri.query().unwrap_or_default().to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let Answer(status, headers, body) = {
                            let mut m = st.lock();
                            m.requests += 1;
                            let n = m.requests;
                            match m.faults.remove(&n) {
                                Some(a) => a,
                                None => handler(&mut m.s, &r),
                            }
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        for (k, v) in headers {
                            resp.headers_mut()
                                .insert(k, hyper::header::HeaderValue::from_str(&v).expect("hv"));
                        }
                        Ok::<_, std::io::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

/// The rows `tally.rejected_rows` holds for a destination.
async fn rejected(c: &Client, destination: &str) -> Vec<BTreeMap<String, String>> {
    rows(
        c,
        &format!(
            "SELECT row_number AS ordinal, row_key AS key, row_json, response FROM tally.rejected_rows WHERE destination = '{destination}' ORDER BY row_number"
        ),
    )
    .await
}

/// A destination built straight from options, for what SQL cannot reach yet (`remove`,
/// which mirror syncs will call).
async fn build(
    type_name: &str,
    options: &[(&str, String)],
) -> Box<dyn tally::activate::destinations::Destination> {
    let entry = tally::catalog::DestinationEntry {
        destination_type: type_name.into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        created_at: "2024-01-01T00:00:00Z".into(),
        altered_at: None,
    };
    tally::activate::destinations::build("direct", &entry)
        .await
        .expect("builds")
}

// ---------------------------------------------------------------------------------------
// Salesforce: sObject Collections upsert, Bulk API 2.0, SOQL + Collections delete.

#[derive(Default)]
struct Salesforce {
    /// Writes per external id (upserts).
    writes: HashMap<String, u32>,
    /// Records by external id, with their Salesforce id.
    records: BTreeMap<String, (String, Value)>,
    jobs: HashMap<String, SfJob>,
    deleted: Vec<String>,
}

#[derive(Default, Clone)]
struct SfJob {
    state: String,
    csv: String,
    polls: u32,
    failed_csv: String,
}

fn sf_error(status: u16, code: &str, message: &str) -> Answer {
    reply(status, json!([{"message": message, "errorCode": code}]))
}

fn sf_upsert_one(s: &mut Salesforce, ext: &str, fields: Value) -> Result<String, Value> {
    let email = fields.get("Email").and_then(Value::as_str).unwrap_or("");
    if !email.is_empty() && !email.contains('@') {
        return Err(
            json!({"statusCode": "INVALID_EMAIL_ADDRESS", "message": format!("Email: invalid email address: {email}"), "fields": ["Email"]}),
        );
    }
    *s.writes.entry(ext.to_string()).or_default() += 1;
    let n = s.records.len();
    let id = s
        .records
        .get(ext)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| format!("003{n:015}"));
    s.records.insert(ext.to_string(), (id.clone(), fields));
    Ok(id)
}

fn salesforce(s: &mut Salesforce, r: &Req) -> Answer {
    if r.header("authorization") != Some("Bearer sf-token") {
        return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
    }
    let root = "/services/data/v62.0";
    let Some(path) = r.path.strip_prefix(root) else {
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist");
    };
    match (r.method.as_str(), path) {
        ("PATCH", "/composite/sobjects/Contact/Ext_Id__c") => {
            let Some(body) = r.json() else {
                return sf_error(400, "JSON_PARSER_ERROR", "Unexpected character");
            };
            if body.get("allOrNone") != Some(&Value::Bool(false)) {
                return sf_error(400, "INVALID_FIELD", "tests expect allOrNone=false");
            }
            let Some(records) = body.get("records").and_then(Value::as_array) else {
                return sf_error(400, "JSON_PARSER_ERROR", "records is required");
            };
            if records.len() > 200 {
                return sf_error(
                    400,
                    "EXCEEDED_ID_LIMIT",
                    "record limit reached. cannot submit more than 200 records into this call",
                );
            }
            for rec in records {
                if rec.pointer("/attributes/type") != Some(&json!("Contact")) {
                    return sf_error(400, "INVALID_TYPE", "attributes.type must be Contact");
                }
                if rec.get("Id").is_some() || rec.get("user_id").is_some() {
                    return sf_error(400, "INVALID_FIELD", "No such column on entity 'Contact'");
                }
                if rec.get("Ext_Id__c").and_then(Value::as_str).is_none() {
                    return sf_error(400, "MISSING_ARGUMENT", "Ext_Id__c not specified");
                }
            }
            let results: Vec<Value> = records
                .iter()
                .map(|rec| {
                    let ext = rec["Ext_Id__c"].as_str().unwrap_or_default().to_string();
                    match sf_upsert_one(s, &ext, rec.clone()) {
                        Ok(id) => json!({"id": id, "success": true, "errors": [], "created": true}),
                        Err(e) => json!({"success": false, "errors": [e]}),
                    }
                })
                .collect();
            reply(200, Value::from(results))
        }
        ("POST", "/jobs/ingest") => {
            let body = r.json().unwrap_or(Value::Null);
            let want = json!({"object": "Contact", "externalIdFieldName": "Ext_Id__c", "contentType": "CSV", "operation": "upsert", "lineEnding": "LF"});
            if body != want {
                return sf_error(400, "INVALIDJOB", &format!("unexpected job {body}"));
            }
            let id = format!("7505e00000{:08}", s.jobs.len());
            s.jobs.insert(
                id.clone(),
                SfJob {
                    state: "Open".into(),
                    ..Default::default()
                },
            );
            reply(
                200,
                json!({"id": id, "state": "Open", "object": "Contact", "operation": "upsert", "contentUrl": format!("services/data/v62.0/jobs/ingest/{id}/batches")}),
            )
        }
        (m, p) if p.starts_with("/jobs/ingest/") => {
            let rest = &p["/jobs/ingest/".len()..];
            let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(mut job) = s.jobs.get(id).cloned() else {
                return sf_error(404, "NOT_FOUND", "no such job");
            };
            let answer = match (m, tail) {
                ("PUT", "batches") => {
                    if r.header("content-type") != Some("text/csv") || job.state != "Open" {
                        return sf_error(400, "INVALIDBATCH", "CSV upload to an open job only");
                    }
                    job.csv = String::from_utf8_lossy(&r.body).to_string();
                    Answer(201, vec![], String::new())
                }
                ("PATCH", "") => {
                    if r.json() != Some(json!({"state": "UploadComplete"})) {
                        return sf_error(400, "INVALIDJOBSTATE", "bad state change");
                    }
                    job.state = "UploadComplete".into();
                    reply(200, json!({"id": id, "state": "UploadComplete"}))
                }
                ("GET", "") => {
                    job.polls += 1;
                    if job.state == "UploadComplete" && job.polls >= 2 {
                        // Process the CSV now.
                        let mut reader = csv::Reader::from_reader(job.csv.as_bytes());
                        let headers = reader.headers().expect("headers").clone();
                        let mut failed = csv::Writer::from_writer(Vec::new());
                        let mut head = vec!["sf__Id", "sf__Error"];
                        head.extend(headers.iter());
                        failed.write_record(&head).expect("csv");
                        for row in reader.records() {
                            let row = row.expect("row");
                            let fields: serde_json::Map<String, Value> = headers
                                .iter()
                                .zip(row.iter())
                                .map(|(h, v)| (h.to_string(), Value::from(v)))
                                .collect();
                            let ext = row.get(0).unwrap_or_default().to_string();
                            if let Err(e) = sf_upsert_one(s, &ext, Value::Object(fields)) {
                                let mut line = vec![
                                    String::new(),
                                    format!(
                                        "{}:{}",
                                        e["statusCode"].as_str().unwrap_or(""),
                                        e["message"].as_str().unwrap_or("")
                                    ),
                                ];
                                line.extend(row.iter().map(str::to_string));
                                failed.write_record(&line).expect("csv");
                            }
                        }
                        job.failed_csv =
                            String::from_utf8(failed.into_inner().expect("csv")).expect("utf8");
                        job.state = "JobComplete".into();
                    }
                    let shown = if job.state == "UploadComplete" {
                        "InProgress"
                    } else {
                        job.state.as_str()
                    };
                    reply(200, json!({"id": id, "state": shown}))
                }
                ("GET", "failedResults/") => {
                    if job.state != "JobComplete" {
                        return sf_error(400, "INVALIDJOBSTATE", "job not complete");
                    }
                    Answer(200, vec![], job.failed_csv.clone())
                }
                _ => return sf_error(404, "NOT_FOUND", "no such resource"),
            };
            s.jobs.insert(id.to_string(), job);
            answer
        }
        ("GET", "/query") => {
            let q: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
            let soql = q.get("q").cloned().unwrap_or_default();
            let Some(list) = soql
                .strip_prefix("SELECT Id FROM Contact WHERE Ext_Id__c IN (")
                .and_then(|l| l.strip_suffix(')'))
            else {
                return sf_error(400, "MALFORMED_QUERY", &soql);
            };
            let records: Vec<Value> = list
                .split(',')
                .map(|k| k.trim_matches('\''))
                .filter_map(|k| s.records.get(k))
                .map(|(id, _)| json!({"attributes": {"type": "Contact"}, "Id": id}))
                .collect();
            reply(
                200,
                json!({"totalSize": records.len(), "done": true, "records": records}),
            )
        }
        ("DELETE", "/composite/sobjects") => {
            let q: HashMap<String, String> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .collect();
            if q.get("allOrNone").map(String::as_str) != Some("false") {
                return sf_error(400, "INVALID_FIELD", "tests expect allOrNone=false");
            }
            let ids: Vec<&str> = q
                .get("ids")
                .map(|v| v.split(',').collect())
                .unwrap_or_default();
            if ids.len() > 200 {
                return sf_error(400, "EXCEEDED_ID_LIMIT", "more than 200 ids");
            }
            let results: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let before = s.records.len();
                    s.records.retain(|_, (rid, _)| rid != id);
                    if s.records.len() < before {
                        s.deleted.push(id.to_string());
                        json!({"id": id, "success": true, "errors": []})
                    } else {
                        json!({"id": id, "success": false, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted"}]})
                    }
                })
                .collect();
            reply(200, Value::from(results))
        }
        _ => sf_error(404, "NOT_FOUND", "The requested resource does not exist"),
    }
}

#[tokio::test]
async fn salesforce_collections_upsert_isolates_failed_records_and_bulk_and_remove_work() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let limit = sf_error(
        403,
        "REQUEST_LIMIT_EXCEEDED",
        "TotalRequests Limit exceeded.",
    );
    let (addr, state) = serve(
        Salesforce::default(),
        vec![(2, reply(500, json!([{"errorCode": "UNKNOWN_EXCEPTION", "message": "An unexpected error occurred"}]))), (4, limit)],
        salesforce,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION crm TYPE salesforce WITH (instance_url = 'http://{addr}', access_token = 'sf-token', object = 'Contact', external_id_field = 'Ext_Id__c')"
    ))
    .await
    .expect("create");
    let shown = rows(
        &c,
        "SELECT options FROM tally.destinations WHERE name = 'crm'",
    )
    .await;
    assert!(!shown[0]["options"].contains("sf-token"), "{shown:?}");

    let query = "SELECT 'k' || CAST(value AS text) AS user_id, \
                 CASE WHEN value = 321 THEN 'broken' ELSE 'u' || CAST(value AS text) || '@x.io' END AS \"Email\", \
                 'L' || CAST(value AS text) AS \"LastName\" FROM generate_series(1, 450) ORDER BY value";
    let out = rows(
        &c,
        &format!("COPY ({query}) TO DESTINATION crm WITH (key = 'user_id')"),
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 449, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    {
        let m = state.lock();
        assert_eq!(m.s.writes.len(), 449);
        assert!(
            m.s.writes.values().all(|&n| n == 1),
            "a record was written twice"
        );
        assert!(!m.s.writes.contains_key("k321"));
        assert_eq!(m.s.records["k7"].1["LastName"], json!("L7"));
    }
    let bad = rejected(&c, "crm").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["key"], "k321");
    assert!(
        bad[0]["response"].contains("INVALID_EMAIL_ADDRESS"),
        "{bad:?}"
    );

    // Over 200 without bulk is refused before anything is sent.
    let err = c
        .simple_query(&format!(
            "COPY ({query}) TO DESTINATION crm WITH (key = 'user_id', batch_size = 300)"
        ))
        .await
        .expect_err("over the Collections limit");
    assert_eq!(code(&err), "22023", "{err:?}");

    // Bulk API 2.0: two jobs of up to 1,000 rows; the failed row comes from failedResults.
    c.batch_execute(&format!(
        "CREATE DESTINATION crm_bulk TYPE salesforce WITH (instance_url = 'http://{addr}', access_token = 'sf-token', object = 'Contact', external_id_field = 'Ext_Id__c', bulk = 'true', poll_interval_ms = '10')"
    ))
    .await
    .expect("create bulk");
    state.lock().s.writes.clear();
    let bulk_query = "SELECT 'b' || CAST(value AS text) AS user_id, \
                 CASE WHEN value = 1234 THEN 'nope' ELSE 'b' || CAST(value AS text) || '@x.io' END AS \"Email\" \
                 FROM generate_series(1, 1500) ORDER BY value";
    let out = rows(
        &c,
        &format!(
            "COPY ({bulk_query}) TO DESTINATION crm_bulk WITH (key = 'user_id', batch_size = 1000)"
        ),
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 1499, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    {
        let m = state.lock();
        assert_eq!(m.s.jobs.len(), 2, "one job per batch");
        assert_eq!(m.s.writes.len(), 1499);
        assert!(m.s.writes.values().all(|&n| n == 1));
    }
    let bad = rejected(&c, "crm_bulk").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["key"], "b1234");

    // Removal for mirror syncs: SOQL lookup, then Collections delete; gone keys are fine.
    let dest = build(
        "salesforce",
        &[
            ("instance_url", format!("http://{addr}")),
            ("access_token", "sf-token".into()),
            ("object", "Contact".into()),
            ("external_id_field", "Ext_Id__c".into()),
        ],
    )
    .await;
    let keys = vec!["k1".to_string(), "k2".to_string(), "k999999".to_string()];
    dest.remove("c", "user_id", &keys).await.expect("removes");
    dest.remove("c", "user_id", &keys)
        .await
        .expect("removing again succeeds");
    {
        let m = state.lock();
        assert_eq!(m.s.deleted.len(), 2);
        assert!(!m.s.records.contains_key("k1") && !m.s.records.contains_key("k2"));
        assert!(m.s.records.contains_key("k3"));
    }

    // A wrong token stops the COPY without the token in the error.
    c.batch_execute(&format!(
        "CREATE DESTINATION crm_bad TYPE salesforce WITH (instance_url = 'http://{addr}', access_token = 'wrong-secret', object = 'Contact', external_id_field = 'Ext_Id__c')"
    ))
    .await
    .expect("create");
    let err = c
        .simple_query("COPY (SELECT 'x' AS user_id) TO DESTINATION crm_bad WITH (key = 'user_id')")
        .await
        .expect_err("bad token");
    assert_eq!(code(&err), "28000", "{err:?}");
    assert!(!format!("{err:?}").contains("wrong-secret"));
}

// ---------------------------------------------------------------------------------------
// Intercom: one request per contact, search then update or create.

#[derive(Default)]
struct Intercom {
    /// Contacts by Intercom id.
    contacts: BTreeMap<String, Value>,
    /// Writes (creates and updates) per external id.
    writes: HashMap<String, u32>,
}

const INTERCOM_TOP: &[&str] = &[
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
    "custom_attributes",
];

fn ic_error(status: u16, code: &str, message: &str) -> Answer {
    reply(
        status,
        json!({"type": "error.list", "request_id": "r1", "errors": [{"code": code, "message": message}]}),
    )
}

fn intercom_contact_check(body: &Value) -> Result<(), Answer> {
    let Some(obj) = body.as_object() else {
        return Err(ic_error(400, "parameter_invalid", "body must be an object"));
    };
    if let Some(k) = obj.keys().find(|k| !INTERCOM_TOP.contains(&k.as_str())) {
        return Err(ic_error(
            400,
            "parameter_not_found",
            &format!("{k} is not a contact field"),
        ));
    }
    if let Some(e) = obj.get("email").and_then(Value::as_str)
        && !e.contains('@')
    {
        return Err(ic_error(400, "parameter_invalid", "Invalid email"));
    }
    Ok(())
}

fn intercom(s: &mut Intercom, r: &Req) -> Answer {
    if r.header("authorization") != Some("Bearer ic-token") {
        return ic_error(401, "unauthorized", "Access Token Invalid");
    }
    if r.header("intercom-version") != Some("2.11") {
        return ic_error(
            400,
            "intercom_version_invalid",
            "Requested version is not valid",
        );
    }
    if r.header("accept") != Some("application/json") {
        return ic_error(406, "not_acceptable", "Accept must be application/json");
    }
    let body = r.json().unwrap_or(Value::Null);
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/contacts/search") => {
            let (Some(field), Some("="), Some(value)) = (
                body.pointer("/query/field").and_then(Value::as_str),
                body.pointer("/query/operator").and_then(Value::as_str),
                body.pointer("/query/value").and_then(Value::as_str),
            ) else {
                return ic_error(400, "parameter_invalid", "bad search query");
            };
            let data: Vec<Value> = s
                .contacts
                .values()
                .filter(|c| c.get(field).and_then(Value::as_str) == Some(value))
                .cloned()
                .collect();
            reply(
                200,
                json!({"type": "list", "data": data, "total_count": data.len()}),
            )
        }
        ("POST", "/contacts") => {
            if let Err(a) = intercom_contact_check(&body) {
                return a;
            }
            let ext = body
                .get("external_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some((id, _)) = s
                .contacts
                .iter()
                .find(|(_, c)| c.get("external_id").and_then(Value::as_str) == Some(ext))
            {
                return ic_error(
                    409,
                    "conflict",
                    &format!("A contact matching those details already exists with id={id}"),
                );
            }
            let id = format!("6{:011}", s.contacts.len());
            let mut contact = body.clone();
            contact["id"] = json!(id);
            contact["type"] = json!("contact");
            s.contacts.insert(id, contact.clone());
            *s.writes.entry(ext.to_string()).or_default() += 1;
            reply(200, contact)
        }
        ("PUT", p) if p.starts_with("/contacts/") => {
            let id = &p["/contacts/".len()..];
            if let Err(a) = intercom_contact_check(&body) {
                return a;
            }
            let Some(contact) = s.contacts.get_mut(id) else {
                return ic_error(404, "not_found", "User Not Found");
            };
            for (k, v) in body.as_object().into_iter().flatten() {
                contact[k] = v.clone();
            }
            let ext = contact["external_id"].as_str().unwrap_or("").to_string();
            *s.writes.entry(ext).or_default() += 1;
            reply(200, contact.clone())
        }
        _ => ic_error(404, "not_found", "Resource Not Found"),
    }
}

#[tokio::test]
async fn intercom_contacts_are_upserted_one_request_each_through_rate_limits() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let reset = (chrono::Utc::now().timestamp() + 1).to_string();
    let throttle = Answer(
        429,
        vec![("x-ratelimit-reset", reset), ("x-ratelimit-remaining", "0".into())],
        json!({"type": "error.list", "errors": [{"code": "rate_limit_exceeded", "message": "Exceeded rate limit"}]}).to_string(),
    );
    let mut seed = Intercom::default();
    for i in [3, 4] {
        seed.contacts.insert(
            format!("old{i}"),
            json!({"type": "contact", "id": format!("old{i}"), "role": "user", "external_id": format!("u{i}"), "email": "old@x.io"}),
        );
    }
    let (addr, state) = serve(
        seed,
        vec![(5, throttle), (17, reply(500, json!({"type": "error.list", "errors": [{"code": "server_error", "message": "Server Error"}]})))],
        intercom,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION support TYPE intercom WITH (access_token = 'ic-token', base_url = 'http://{addr}', concurrency = '4')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT 'u' || CAST(value AS text) AS user_id, \
               CASE WHEN value = 9 THEN 'not-an-email' ELSE 'u' || CAST(value AS text) || '@x.io' END AS email, \
               'plan' || CAST(value % 3 AS text) AS plan \
               FROM generate_series(1, 30) ORDER BY value) \
         TO DESTINATION support WITH (key = 'user_id', batch_size = 10)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 29, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    {
        let m = state.lock();
        assert_eq!(m.s.writes.len(), 29, "{:?}", m.s.writes);
        assert!(m.s.writes.values().all(|&n| n == 1), "{:?}", m.s.writes);
        assert!(!m.s.writes.contains_key("u9"));
        // Existing contacts were updated, not duplicated; custom columns nest.
        assert_eq!(m.s.contacts.len(), 29);
        assert_eq!(m.s.contacts["old3"]["email"], json!("u3@x.io"));
        assert_eq!(
            m.s.contacts["old3"]["custom_attributes"]["plan"],
            json!("plan0")
        );
    }
    let bad = rejected(&c, "support").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["key"], "u9");
    assert!(bad[0]["response"].contains("Invalid email"), "{bad:?}");

    c.batch_execute(&format!(
        "CREATE DESTINATION support_bad TYPE intercom WITH (access_token = 'nope-secret', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let err = c
        .simple_query(
            "COPY (SELECT 'x' AS user_id) TO DESTINATION support_bad WITH (key = 'user_id')",
        )
        .await
        .expect_err("bad token");
    assert_eq!(code(&err), "28000", "{err:?}");
    assert!(!format!("{err:?}").contains("nope-secret"));
}

// ---------------------------------------------------------------------------------------
// Zendesk: create_or_update_many and its job status.

#[derive(Default)]
struct Zendesk {
    users: BTreeMap<String, Value>,
    writes: HashMap<String, u32>,
    jobs: HashMap<String, (u32, Vec<Value>)>,
}

fn zendesk(s: &mut Zendesk, r: &Req) -> Answer {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("agent@x.io/token:zd-token")
    );
    if r.header("authorization") != Some(basic.as_str()) {
        return reply(401, json!({"error": "Couldn't authenticate you"}));
    }
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v2/users/create_or_update_many") => {
            let Some(users) = r
                .json()
                .and_then(|b| b.get("users").and_then(Value::as_array).cloned())
            else {
                return reply(
                    400,
                    json!({"error": "InvalidEndpoint", "description": "users is required"}),
                );
            };
            if users.len() > 100 {
                return reply(
                    400,
                    json!({"error": "TooManyValues", "description": "Too many values in users: 100 is the maximum"}),
                );
            }
            let results: Vec<Value> = users
                .iter()
                .enumerate()
                .map(|(index, u)| {
                    let ext = u.get("external_id").and_then(Value::as_str).unwrap_or("");
                    let email = u.get("email").and_then(Value::as_str).unwrap_or("");
                    if ext.is_empty() || u.get("name").is_none() {
                        return json!({"index": index, "status": "Failed", "error": "UserCreateFailed", "details": "Name: cannot be blank"});
                    }
                    if !email.is_empty() && !email.contains('@') {
                        return json!({"index": index, "status": "Failed", "error": "UserUpdateError", "details": format!("Email: {email} is not properly formatted")});
                    }
                    let status = if s.users.contains_key(ext) { "Updated" } else { "Created" };
                    s.users.insert(ext.to_string(), u.clone());
                    *s.writes.entry(ext.to_string()).or_default() += 1;
                    json!({"index": index, "id": 1000 + index, "status": status, "external_id": ext})
                })
                .collect();
            let id = format!("8b726e606741012ffc2d782bcb7848fe{:04}", s.jobs.len());
            s.jobs.insert(id.clone(), (0, results));
            reply(
                200,
                json!({"job_status": {"id": id, "status": "queued", "url": format!("https://x.zendesk.com/api/v2/job_statuses/{id}.json"), "total": users.len(), "progress": null}}),
            )
        }
        ("GET", p) if p.starts_with("/api/v2/job_statuses/") => {
            let id = p["/api/v2/job_statuses/".len()..].trim_end_matches(".json");
            let Some((polls, results)) = s.jobs.get_mut(id) else {
                return reply(404, json!({"error": "RecordNotFound"}));
            };
            *polls += 1;
            if *polls < 2 {
                return reply(
                    200,
                    json!({"job_status": {"id": id, "status": "working", "progress": 0}}),
                );
            }
            reply(
                200,
                json!({"job_status": {"id": id, "status": "completed", "total": results.len(), "progress": results.len(), "results": results}}),
            )
        }
        _ => reply(404, json!({"error": "InvalidEndpoint"})),
    }
}

#[tokio::test]
async fn zendesk_create_or_update_many_polls_jobs_and_rejects_failed_users() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (addr, state) = serve(
        Zendesk::default(),
        vec![
            (
                1,
                Answer(
                    429,
                    vec![("retry-after", "1".into())],
                    json!({"error": "APIRateLimitExceeded"}).to_string(),
                ),
            ),
            (4, reply(503, json!({"error": "ServiceUnavailable"}))),
        ],
        zendesk,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION desk TYPE zendesk WITH (base_url = 'http://{addr}', email = 'agent@x.io', api_token = 'zd-token', poll_interval_ms = '10', rate_limit = '100')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT 'z' || CAST(value AS text) AS external_id, 'Name ' || CAST(value AS text) AS name, \
               CASE WHEN value = 150 THEN 'bad-address' ELSE 'z' || CAST(value AS text) || '@x.io' END AS email, \
               'gold' AS tier FROM generate_series(1, 250) ORDER BY value) \
         TO DESTINATION desk WITH (key = 'external_id')",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 249, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    {
        let m = state.lock();
        assert_eq!(m.s.writes.len(), 249);
        assert!(m.s.writes.values().all(|&n| n == 1));
        assert_eq!(m.s.jobs.len(), 3, "one job per batch of 100, none twice");
        assert_eq!(m.s.users["z7"]["user_fields"]["tier"], json!("gold"));
    }
    let bad = rejected(&c, "desk").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["key"], "z150");
    assert!(
        bad[0]["response"].contains("not properly formatted"),
        "{bad:?}"
    );

    let err = c
        .simple_query("COPY (SELECT 1 AS external_id) TO DESTINATION desk WITH (key = 'external_id', batch_size = 101)")
        .await
        .expect_err("over 100 users");
    assert_eq!(code(&err), "22023");
    c.batch_execute(&format!(
        "CREATE DESTINATION desk_bad TYPE zendesk WITH (base_url = 'http://{addr}', email = 'agent@x.io', api_token = 'other-secret')"
    ))
    .await
    .expect("create");
    let err = c
        .simple_query("COPY (SELECT 'x' AS external_id, 'X' AS name) TO DESTINATION desk_bad WITH (key = 'external_id')")
        .await
        .expect_err("bad token");
    assert_eq!(code(&err), "28000", "{err:?}");
    assert!(!format!("{err:?}").contains("other-secret"));
}

// ---------------------------------------------------------------------------------------
// Google Ads Customer Match: offline user data jobs.

#[derive(Default)]
struct GoogleAds {
    /// Job resource name -> (status, operations added).
    jobs: BTreeMap<String, (String, Vec<Value>)>,
    /// Identifier hashes added and removed once their job ran.
    members: HashMap<String, u32>,
    removed: Vec<String>,
}

fn g_error(status: u16, code: &str, message: &str) -> Answer {
    reply(
        status,
        json!({"error": {"code": status, "message": message, "status": code}}),
    )
}

fn google_ads(s: &mut GoogleAds, r: &Req) -> Answer {
    if r.header("authorization") != Some("Bearer ga-token") {
        return g_error(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential.",
        );
    }
    if r.header("developer-token") != Some("dev-token") {
        return g_error(
            403,
            "PERMISSION_DENIED",
            "The developer token is not valid.",
        );
    }
    if r.header("login-customer-id") != Some("1112223333") {
        return g_error(
            403,
            "PERMISSION_DENIED",
            "User doesn't have permission to access customer.",
        );
    }
    let body = r.json().unwrap_or(Value::Null);
    let prefix = "/v19/customers/1234567890/offlineUserDataJobs";
    if r.method != "POST" {
        return g_error(404, "NOT_FOUND", "no such method");
    }
    if r.path == format!("{prefix}:create") {
        let want = json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {"userList": "customers/1234567890/userLists/987654"}}});
        if body != want {
            return g_error(400, "INVALID_ARGUMENT", &format!("unexpected job {body}"));
        }
        let name = format!(
            "customers/1234567890/offlineUserDataJobs/{}",
            5000 + s.jobs.len()
        );
        s.jobs.insert(name.clone(), ("PENDING".into(), vec![]));
        return reply(200, json!({"resourceName": name}));
    }
    let Some(rest) = r.path.strip_prefix("/v19/") else {
        return g_error(404, "NOT_FOUND", "no such path");
    };
    let (job, verb) = rest.rsplit_once(':').unwrap_or((rest, ""));
    let Some((status, ops)) = s.jobs.get_mut(job) else {
        return g_error(404, "NOT_FOUND", "no such job");
    };
    match verb {
        "addOperations" => {
            if status != "PENDING" {
                return g_error(
                    400,
                    "INVALID_ARGUMENT",
                    "OfflineUserDataJobError.INVALID_JOB_STATUS",
                );
            }
            if body.get("enablePartialFailure") != Some(&Value::Bool(true)) {
                return g_error(400, "INVALID_ARGUMENT", "tests expect enablePartialFailure");
            }
            let Some(operations) = body.get("operations").and_then(Value::as_array) else {
                return g_error(400, "INVALID_ARGUMENT", "operations is required");
            };
            let identifiers: usize = operations
                .iter()
                .map(|o| {
                    o.as_object()
                        .and_then(|m| m.values().next())
                        .and_then(|v| v.get("userIdentifiers"))
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                })
                .sum();
            if identifiers > 100_000 {
                return g_error(400, "INVALID_ARGUMENT", "TOO_MANY_USER_IDENTIFIERS");
            }
            let mut errors = vec![];
            for (i, o) in operations.iter().enumerate() {
                let Some(m) = o.as_object() else {
                    return g_error(400, "INVALID_ARGUMENT", "operation must be an object");
                };
                let ok_verb =
                    m.len() == 1 && (m.contains_key("create") || m.contains_key("remove"));
                let ids = m
                    .values()
                    .next()
                    .and_then(|v| v.get("userIdentifiers"))
                    .and_then(Value::as_array);
                let well_formed = ok_verb
                    && ids.is_some_and(|ids| {
                        !ids.is_empty()
                            && ids.iter().all(|id| {
                                id.as_object().is_some_and(|f| {
                                    f.len() == 1
                                        && f.iter().all(|(k, v)| {
                                            (k == "hashedEmail" || k == "hashedPhoneNumber")
                                                && v.as_str().is_some_and(is_sha256_hex)
                                        })
                                })
                            })
                    });
                if !well_formed {
                    return g_error(400, "INVALID_ARGUMENT", &format!("malformed operation {o}"));
                }
                // Injected per-operation failure: this one address is refused.
                if o.to_string().contains(&sha256_hex("refused@example.com")) {
                    errors.push(json!({"errorCode": {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, "message": "The SHA256 encoded value is malformed.", "location": {"fieldPathElements": [{"fieldName": "operations", "index": i}, {"fieldName": "create"}]}}));
                } else {
                    ops.push(o.clone());
                }
            }
            if errors.is_empty() {
                reply(200, json!({}))
            } else {
                reply(
                    200,
                    json!({"partialFailureError": {"code": 3, "message": "Multiple errors in details.", "details": [{"@type": "type.googleapis.com/google.ads.googleads.v19.errors.GoogleAdsFailure", "errors": errors}]}}),
                )
            }
        }
        "run" => {
            if status != "PENDING" {
                return g_error(
                    400,
                    "INVALID_ARGUMENT",
                    "OfflineUserDataJobError.INVALID_JOB_STATUS",
                );
            }
            *status = "RUNNING".into();
            for o in ops.iter() {
                for (v, payload) in o.as_object().into_iter().flatten() {
                    for id in payload["userIdentifiers"].as_array().into_iter().flatten() {
                        let h = id
                            .as_object()
                            .and_then(|f| f.values().next())
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        if v == "create" {
                            *s.members.entry(h).or_default() += 1;
                        } else {
                            s.members.remove(&h);
                            s.removed.push(h);
                        }
                    }
                }
            }
            reply(200, json!({"name": format!("{job}/operations/1")}))
        }
        _ => g_error(404, "NOT_FOUND", "no such method"),
    }
}

#[tokio::test]
async fn google_customer_match_uploads_hashes_as_google_requires_and_removes() {
    let server = TestServer::start().await;
    let c = server.client().await;
    // RESOURCE_EXHAUSTED without Retry-After: the wait is the RetryInfo's retryDelay.
    let throttle = Answer(
        429,
        vec![],
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many requests", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"}]}}).to_string(),
    );
    let (addr, state) = serve(
        GoogleAds::default(),
        vec![
            (2, throttle),
            (4, g_error(500, "INTERNAL", "Internal error encountered.")),
        ],
        google_ads,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION ads TYPE google_ads_customer_match WITH (customer_id = '123-456-7890', user_list_id = '987654', developer_token = 'dev-token', access_token = 'ga-token', login_customer_id = '111-222-3333', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let shown = rows(
        &c,
        "SELECT options FROM tally.destinations WHERE name = 'ads'",
    )
    .await;
    assert!(
        !shown[0]["options"].contains("dev-token") && !shown[0]["options"].contains("ga-token")
    );
    c.batch_execute(
        "CREATE TABLE audience (id int, email text, phone text); \
         INSERT INTO audience VALUES \
           (1, ' Jo.Doe@GMAIL.com ', '+1 650-253-0000'), \
           (2, 'ANN@Example.ORG', NULL), \
           (3, 'not-an-email', NULL), \
           (4, NULL, '+44 20 7031 3000'), \
           (5, 'refused@example.com', NULL)",
    )
    .await
    .expect("audience");
    for i in 6..=40 {
        c.batch_execute(&format!(
            "INSERT INTO audience VALUES ({i}, 'p{i}@x.io', NULL)"
        ))
        .await
        .expect("insert");
    }
    let out = rows(
        &c,
        "COPY (SELECT email, phone FROM audience ORDER BY id) TO DESTINATION ads WITH (batch_size = 10)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 38, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 2, "{out:?}");
    {
        let m = state.lock();
        assert_eq!(m.s.jobs.len(), 1, "one job for the whole COPY");
        assert!(
            m.s.jobs.values().all(|(status, _)| status == "RUNNING"),
            "the job ran"
        );
        // Google's normalisation: trimmed, lowercased, no dots before @gmail.com; E.164 phone.
        for expected in [
            "jodoe@gmail.com",
            "+16502530000",
            "ann@example.org",
            "+442070313000",
            "p6@x.io",
            "p40@x.io",
        ] {
            assert_eq!(
                m.s.members.get(&sha256_hex(expected)),
                Some(&1),
                "{expected}"
            );
        }
        assert_eq!(m.s.members.len(), 2 + 1 + 1 + 35);
        assert!(
            m.s.members.values().all(|&n| n == 1),
            "an identifier arrived twice"
        );
    }
    let bad = rejected(&c, "ads").await;
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0]["response"].contains("not a valid address"),
        "{bad:?}"
    );
    assert!(
        bad[1]["response"].contains("INVALID_SHA256_FORMAT"),
        "{bad:?}"
    );

    let dest = build(
        "google_ads_customer_match",
        &[
            ("customer_id", "1234567890".into()),
            ("user_list_id", "987654".into()),
            ("developer_token", "dev-token".into()),
            ("access_token", "ga-token".into()),
            ("login_customer_id", "1112223333".into()),
            ("base_url", format!("http://{addr}")),
        ],
    )
    .await;
    dest.remove("c", "email", &["jo.doe@gmail.com".to_string()])
        .await
        .expect("removes");
    let m = state.lock();
    assert_eq!(m.s.removed, vec![sha256_hex("jodoe@gmail.com")]);
    assert!(!m.s.members.contains_key(&sha256_hex("jodoe@gmail.com")));
}

// ---------------------------------------------------------------------------------------
// Meta Custom Audiences: /{audience_id}/users.

#[derive(Default)]
struct Meta {
    members: HashMap<String, u32>,
    removed: Vec<String>,
}

fn fb_error(status: u16, code: i64, message: &str) -> Answer {
    reply(
        status,
        json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf"}}),
    )
}

fn meta(s: &mut Meta, r: &Req) -> Answer {
    if r.path != "/v21.0/555000111/users" {
        return fb_error(400, 803, "Some of the aliases you requested do not exist");
    }
    let Some(body) = r.json() else {
        return fb_error(400, 100, "Invalid parameter");
    };
    if body.get("access_token").and_then(Value::as_str) != Some("fb-token") {
        return fb_error(
            400,
            190,
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    let (Some(schema), Some(data)) = (
        body.pointer("/payload/schema").and_then(Value::as_array),
        body.pointer("/payload/data").and_then(Value::as_array),
    ) else {
        return fb_error(400, 100, "(#100) payload must have schema and data");
    };
    if data.len() > 10_000 {
        return fb_error(
            400,
            100,
            "(#100) Too many users in one request: the limit is 10000",
        );
    }
    if schema.is_empty() || !schema.iter().all(|k| k == "EMAIL" || k == "PHONE") {
        return fb_error(400, 100, &format!("(#100) unsupported schema {schema:?}"));
    }
    let mut invalid = 0;
    let mut hashes = vec![];
    for row in data {
        let Some(row) = row.as_array().filter(|r| r.len() == schema.len()) else {
            return fb_error(400, 100, "(#100) every data row must match the schema");
        };
        let mut any = false;
        for v in row {
            match v.as_str() {
                Some("") => {}
                Some(h) if is_sha256_hex(h) => {
                    any = true;
                    hashes.push(h.to_string());
                }
                _ => invalid += 1,
            }
        }
        if !any {
            invalid += 1;
        }
    }
    match r.method.as_str() {
        "POST" => {
            for h in hashes {
                *s.members.entry(h).or_default() += 1;
            }
        }
        "DELETE" => {
            for h in hashes {
                s.members.remove(&h);
                s.removed.push(h);
            }
        }
        _ => return fb_error(400, 100, "Unsupported method"),
    }
    reply(
        200,
        json!({"audience_id": "555000111", "session_id": "9778993", "num_received": data.len(), "num_invalid_entries": invalid, "invalid_entry_samples": {}}),
    )
}

#[tokio::test]
async fn meta_custom_audience_takes_meta_normalised_hashes_and_removes() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (addr, state) = serve(
        Meta::default(),
        vec![
            // Meta's custom audience throttle is an HTTP 400 with code 80003.
            (
                1,
                fb_error(
                    400,
                    80003,
                    "There have been too many calls to this ad-account.",
                ),
            ),
            (
                3,
                fb_error(
                    500,
                    2,
                    "An unexpected error has occurred. Please retry your request later.",
                ),
            ),
        ],
        meta,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION fb TYPE meta_custom_audiences WITH (audience_id = '555000111', access_token = 'fb-token', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT * FROM (VALUES \
            (1, ' Jo.Doe@GMAIL.com ', '+1 (650) 253-0000'), \
            (2, 'ann@example.org', NULL), \
            (3, 'broken@', NULL), \
            (4, NULL, '+44 20 7031 3000')) AS t(id, email, phone) ORDER BY id) \
         TO DESTINATION fb WITH (map = 'email,phone', batch_size = 2)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 3, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    {
        let m = state.lock();
        // Meta's normalisation: trimmed and lowercased, dots kept; phone digits, no '+'.
        for expected in [
            "jo.doe@gmail.com",
            "16502530000",
            "ann@example.org",
            "442070313000",
        ] {
            assert_eq!(
                m.s.members.get(&sha256_hex(expected)),
                Some(&1),
                "{expected}"
            );
        }
        assert_eq!(m.s.members.len(), 4);
    }
    let bad = rejected(&c, "fb").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0]["row_json"].contains("broken@"), "{bad:?}");

    let dest = build(
        "meta_custom_audiences",
        &[
            ("audience_id", "555000111".into()),
            ("access_token", "fb-token".into()),
            ("base_url", format!("http://{addr}")),
        ],
    )
    .await;
    dest.remove("c", "email", &["ANN@example.org".to_string()])
        .await
        .expect("removes");
    assert_eq!(state.lock().s.removed, vec![sha256_hex("ann@example.org")]);

    c.batch_execute(&format!(
        "CREATE DESTINATION fb_bad TYPE meta_custom_audiences WITH (audience_id = '555000111', access_token = 'expired-secret', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let err = c
        .simple_query("COPY (SELECT 'a@b.io' AS email) TO DESTINATION fb_bad")
        .await
        .expect_err("bad token");
    assert_eq!(code(&err), "28000", "{err:?}");
    assert!(!format!("{err:?}").contains("expired-secret"));
}

// ---------------------------------------------------------------------------------------
// file: Parquet, CSV and JSON lines on object storage.

#[tokio::test]
async fn file_destination_writes_parquet_csv_and_json_and_a_rerun_replaces_its_file() {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let server = TestServer::start().await;
    let c = server.client().await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let parquet = out_dir.path().join("people.parquet");
    c.batch_execute(&format!(
        "CREATE DESTINATION lake TYPE file WITH (url = '{}', format = 'parquet', compression = 'zstd')",
        parquet.display()
    ))
    .await
    .expect("create");
    let query = "SELECT value AS id, 'p' || CAST(value AS text) AS name, value * 1.5 AS score, value % 2 = 0 AS even \
                 FROM generate_series(1, 2500) ORDER BY value";
    for _ in 0..2 {
        let out = rows(
            &c,
            &format!("COPY ({query}) TO DESTINATION lake WITH (batch_size = 700)"),
        )
        .await;
        assert_eq!(num(&out[0], "delivered"), 2500, "{out:?}");
        let file = std::fs::File::open(&parquet).expect("parquet file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        let mut n = 0;
        let mut ids = vec![];
        for b in reader {
            let b = b.expect("batch");
            n += b.num_rows();
            let col = b
                .column_by_name("id")
                .expect("id column")
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("ids are Int64")
                .clone();
            ids.extend(col.values().iter().copied());
        }
        assert_eq!(n, 2500, "a re-run replaces the file instead of adding rows");
        assert_eq!(ids, (1..=2500).collect::<Vec<i64>>());
        let names: Vec<_> = std::fs::read_dir(out_dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    // A folder: one gzipped CSV per run, named by the copy id.
    let folder = out_dir.path().join("exports");
    c.batch_execute(&format!(
        "CREATE DESTINATION csvs TYPE file WITH (url = '{}/', format = 'csv', compression = 'gzip')",
        folder.display()
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT value AS id, 'a, \"quoted\" name' AS name FROM generate_series(1, 30) ORDER BY value) TO DESTINATION csvs WITH (batch_size = 7)",
    )
    .await;
    let copy_id = out[0]["copy_id"].clone();
    let gz =
        std::fs::read(folder.join(format!("{copy_id}.csv.gz"))).expect("csv.gz named by copy id");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
        .expect("gzip");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        ["id", "name"]
    );
    let lines: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(lines.len(), 30);
    assert_eq!(&lines[4][0], "5");
    assert_eq!(&lines[4][1], "a, \"quoted\" name");

    // JSON lines, through a file:// URL.
    let jsonl = out_dir.path().join("rows.jsonl");
    c.batch_execute(&format!(
        "CREATE DESTINATION js TYPE file WITH (url = 'file://{}', format = 'json')",
        jsonl.display()
    ))
    .await
    .expect("create");
    rows(
        &c,
        "COPY (SELECT value AS id, CASE WHEN value = 2 THEN NULL ELSE 'x' END AS tag FROM generate_series(1, 3) ORDER BY value) TO DESTINATION js",
    )
    .await;
    let text = std::fs::read_to_string(&jsonl).expect("jsonl");
    let parsed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0]["id"], json!(1));
    assert_eq!(parsed[1]["tag"], Value::Null);

    let err = c
        .simple_query("CREATE DESTINATION nope TYPE file WITH (url = '/tmp/x', format = 'xlsx')")
        .await;
    if err.is_ok() {
        let err = c
            .simple_query("COPY (SELECT 1 AS a) TO DESTINATION nope")
            .await
            .expect_err("unknown format");
        assert_eq!(code(&err), "22023");
    }
}
