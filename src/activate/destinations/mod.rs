//! Destination types: one module per type behind the [`Destination`] trait, and the option
//! rules every type shares (what is required, what is secret, how secrets are shown).
//!
//! A secret option (`token`, `hmac_secret`, `password`, ...) can be given as the value
//! itself, stored in the catalog under the warehouse root, or as `<option>_env = 'VAR'`,
//! which reads the environment variable of the server at delivery time so that the secret
//! never reaches the warehouse. Secrets are shown as `***` in `tally.destinations` and never
//! appear in logs or error messages.

pub mod amplitude;
pub mod braze;
pub mod file;
pub mod google_ads;
pub mod hubspot;
pub mod intercom;
pub mod matching;
pub mod meta;
pub mod mixpanel;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod salesforce;
pub mod webhook;
pub mod zendesk;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::catalog::DestinationEntry;
use crate::error::{Result, TallyError};

/// How a COPY applies its rows to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create records; existing ones are the destination's business (duplicates or errors).
    Insert,
    /// Change existing records by key; unknown keys are not created.
    Update,
    /// Create or change records by key.
    Upsert,
    /// Upsert, then remove the destination's records whose key the query no longer returns.
    Mirror,
}

impl Mode {
    /// Parses a `mode` option.
    pub fn parse(s: &str) -> Result<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "insert" => Ok(Mode::Insert),
            "update" => Ok(Mode::Update),
            "upsert" => Ok(Mode::Upsert),
            "mirror" => Ok(Mode::Mirror),
            other => Err(invalid(format!(
                "unknown mode \"{other}\"; modes are insert, update, upsert and mirror"
            ))),
        }
    }

    /// The mode's name, as written in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Insert => "insert",
            Mode::Update => "update",
            Mode::Upsert => "upsert",
            Mode::Mirror => "mirror",
        }
    }

    /// Whether the mode needs a key column.
    pub fn needs_key(self) -> bool {
        !matches!(self, Mode::Insert)
    }
}

/// What a destination type accepts, from its vendor's documentation.
#[derive(Debug)]
pub struct TypeSpec {
    /// Type name as written after `TYPE`.
    pub name: &'static str,
    /// Options that must be given (a secret may be given as `<option>_env` instead).
    pub required: &'static [&'static str],
    /// Other options the type understands.
    pub optional: &'static [&'static str],
    /// Modes the type supports.
    pub modes: &'static [Mode],
    /// Whether every mode needs `key` (APIs that address records by an id).
    pub key_required: bool,
    /// The largest batch the API accepts (rows per request).
    pub max_batch: usize,
    /// Rows per request unless `batch_size` says otherwise.
    pub default_batch: usize,
    /// Requests per second the API allows, the rate limiter's ceiling by default.
    pub default_rate: Option<f64>,
    /// Whether [`Destination::remove`] works for this type, which mirror syncs need.
    pub removes: bool,
}

/// Options every type understands.
pub const COMMON_OPTIONS: &[&str] = &[
    "batch_size",
    "rate_limit",
    "timeout_ms",
    "max_retries",
    "concurrency",
];

/// Most requests of one COPY in flight at once (`concurrency` option).
pub const MAX_CONCURRENCY: usize = 32;

/// Requests of one COPY in flight at once unless `concurrency` says otherwise: several for
/// webhooks (a round trip is mostly waiting, and receivers take independent batches), one
/// for the vendor APIs until each one's conformance suite has run with several lanes (their
/// quotas are per account, and some tie requests together: a Google Ads job takes its
/// operations one call at a time, a file is written in order, the PostgreSQL destination
/// holds one connection). A user can raise it per destination or per COPY.
pub fn default_concurrency(spec: &TypeSpec) -> usize {
    match spec.name {
        "webhook" => 4,
        _ => 1,
    }
}

/// The destination types tally can create.
pub const TYPES: &[TypeSpec] = &[
    TypeSpec {
        name: "webhook",
        required: &["url"],
        optional: &["headers", "hmac_secret", "signature_header", "method"],
        modes: &[Mode::Insert, Mode::Update, Mode::Upsert],
        key_required: false,
        max_batch: 10_000,
        default_batch: 100,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "hubspot",
        required: &["token"],
        optional: &["object", "base_url", "id_property"],
        modes: &[Mode::Upsert],
        key_required: true,
        // https://developers.hubspot.com/docs/api/crm/contacts: 100 inputs per batch call;
        // Professional/Enterprise private apps get 190 requests per 10 seconds.
        max_batch: 100,
        default_batch: 100,
        removes: true,
        // Paced at exactly 19/s, timing jitter pushes a request into a full rolling window
        // now and then, and each 429 halves the rate (measured: 0.86x of the limit, two
        // 429s); 18.5/s keeps 2.6% headroom (0.97x, no 429; scripts/bench-activation.sh).
        default_rate: Some(18.5),
    },
    TypeSpec {
        name: "braze",
        required: &["api_key", "base_url"],
        optional: &["id_field"],
        modes: &[Mode::Update, Mode::Upsert],
        key_required: true,
        // /users/track: at most 75 attribute objects per request; 3,000 requests per 3 s.
        max_batch: 75,
        default_batch: 75,
        removes: true,
        default_rate: Some(1000.0),
    },
    TypeSpec {
        name: "mixpanel",
        required: &["token"],
        optional: &["base_url"],
        // $set_once for insert, $set for upsert.
        modes: &[Mode::Insert, Mode::Upsert],
        key_required: true,
        // Engage API: at most 2,000 profile updates per request.
        max_batch: 2_000,
        default_batch: 500,
        removes: false,
        default_rate: None,
    },
    TypeSpec {
        name: "amplitude",
        required: &["api_key"],
        optional: &["base_url"],
        // $setOnce for insert, $set for upsert.
        modes: &[Mode::Insert, Mode::Upsert],
        key_required: true,
        // Batch Event Upload API: at most 2,000 events per request.
        max_batch: 2_000,
        default_batch: 1_000,
        removes: false,
        default_rate: None,
    },
    TypeSpec {
        name: "postgres",
        required: &["table"],
        optional: &[
            "host", "port", "user", "password", "dbname", "url", "sslmode",
        ],
        modes: &[Mode::Insert, Mode::Update, Mode::Upsert, Mode::Mirror],
        key_required: false,
        max_batch: 50_000,
        default_batch: 1_000,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "redis",
        required: &["url"],
        optional: &["prefix", "ttl_seconds"],
        modes: &[Mode::Upsert, Mode::Mirror],
        key_required: true,
        max_batch: 10_000,
        default_batch: 500,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "nats",
        required: &["url", "subject"],
        optional: &["token"],
        modes: &[Mode::Insert, Mode::Update, Mode::Upsert],
        key_required: false,
        max_batch: 10_000,
        default_batch: 256,
        removes: false,
        default_rate: None,
    },
    TypeSpec {
        name: "salesforce",
        required: &["instance_url", "access_token", "object"],
        optional: &[
            "external_id_field",
            "api_version",
            "bulk",
            "poll_interval_ms",
        ],
        modes: &[Mode::Upsert],
        key_required: true,
        // sObject Collections: at most 200 records per request (the default batch). With
        // bulk = 'true' each batch is one Bulk API 2.0 ingest job, up to 10,000 rows here
        // (Bulk API's own ceiling is 150 MB of CSV per job). Salesforce limits requests per
        // 24 hours per org, not per second: no default ceiling, 403 REQUEST_LIMIT_EXCEEDED
        // throttles.
        max_batch: 10_000,
        default_batch: 200,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "intercom",
        required: &["access_token"],
        optional: &["id_field", "role", "api_version", "base_url", "concurrency"],
        modes: &[Mode::Insert, Mode::Update, Mode::Upsert],
        key_required: true,
        // No batch endpoint: a batch is sent one record per request, `concurrency` at a time;
        // its size only bounds what one retry may redo. Intercom allows 10,000 calls per
        // minute per app (and answers 429 with X-RateLimit-Reset): the limiter paces batches,
        // the 429s pace the records.
        max_batch: 1_000,
        default_batch: 100,
        removes: false,
        default_rate: None,
    },
    TypeSpec {
        name: "zendesk",
        required: &[],
        optional: &[
            "subdomain",
            "base_url",
            "email",
            "api_token",
            "oauth_token",
            "id_field",
            "poll_interval_ms",
        ],
        modes: &[Mode::Upsert],
        key_required: true,
        // create_or_update_many: at most 100 users per request. The smallest Support plans
        // allow 200 requests per minute; one batch is a request plus job polls.
        max_batch: 100,
        default_batch: 100,
        removes: false,
        default_rate: Some(3.0),
    },
    TypeSpec {
        name: "google_ads_customer_match",
        required: &[
            "customer_id",
            "user_list_id",
            "developer_token",
            "access_token",
        ],
        optional: &["login_customer_id", "api_version", "base_url"],
        modes: &[Mode::Insert, Mode::Upsert],
        key_required: false,
        // addOperations: at most 100,000 identifiers per request, and a row carries up to two
        // (email, phone); Google recommends about 10,000 per call.
        max_batch: 50_000,
        default_batch: 10_000,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "meta_custom_audiences",
        required: &["audience_id", "access_token"],
        optional: &["api_version", "base_url"],
        modes: &[Mode::Insert, Mode::Upsert],
        key_required: false,
        // /{audience_id}/users: at most 10,000 rows per request.
        max_batch: 10_000,
        default_batch: 10_000,
        removes: true,
        default_rate: None,
    },
    TypeSpec {
        name: "file",
        required: &[],
        optional: &["url", "path", "format", "compression"],
        modes: &[Mode::Insert],
        key_required: false,
        // Batches are appended to one file as they come; the size only sets how many rows a
        // write holds.
        max_batch: 100_000,
        default_batch: 10_000,
        removes: false,
        default_rate: None,
    },
];

/// The spec of type `name`.
pub fn spec(name: &str) -> Result<&'static TypeSpec> {
    TYPES.iter().find(|t| t.name == name).ok_or_else(|| {
        invalid(format!(
            "unknown destination type \"{name}\"; known types: {}",
            TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        ))
    })
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

/// Whether an option holds a secret: its value is never shown, logged or put in an error.
pub fn is_secret(option: &str) -> bool {
    let o = option.to_ascii_lowercase();
    !o.ends_with("_env")
        && [
            "token",
            "secret",
            "password",
            "api_key",
            "apikey",
            "credential",
            "private_key",
        ]
        .iter()
        .any(|s| o.contains(s))
}

/// How an option's value is shown in `tally.destinations`: secrets as `***`, the password
/// inside a URL as `***`, and header values that carry credentials as `***`.
pub fn display_value(option: &str, value: &str) -> String {
    if is_secret(option) {
        return "***".into();
    }
    if option == "headers"
        && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(value)
    {
        let shown: Map<String, Value> = map
            .into_iter()
            .map(|(k, v)| {
                let lk = k.to_ascii_lowercase();
                let sensitive = ["auth", "token", "key", "secret", "cookie", "signature"]
                    .iter()
                    .any(|s| lk.contains(s));
                (k, if sensitive { Value::from("***") } else { v })
            })
            .collect();
        return Value::Object(shown).to_string();
    }
    if value.contains("://")
        && let Ok(mut url) = url::Url::parse(value)
        && url.password().is_some()
    {
        let _ = url.set_password(Some("***"));
        return url.to_string();
    }
    value.to_string()
}

/// Groups of options of which a type needs at least one, beyond its `required` ones.
fn needs_one_of(type_name: &str) -> &'static [&'static [&'static str]] {
    match type_name {
        "zendesk" => &[&["subdomain", "base_url"], &["api_token", "oauth_token"]],
        "file" => &[&["url", "path"]],
        _ => &[],
    }
}

/// Checks a destination's options against its type: every option known, every required one
/// present (directly or as `<option>_env`), numbers where numbers are expected.
pub fn validate(type_name: &str, options: &BTreeMap<String, String>) -> Result<()> {
    let spec = spec(type_name)?;
    let known = |o: &str| {
        spec.required.contains(&o) || spec.optional.contains(&o) || COMMON_OPTIONS.contains(&o)
    };
    for k in options.keys() {
        let base = k.strip_suffix("_env").filter(|b| is_secret(b));
        if !known(k) && !base.is_some_and(known) {
            let mut all: Vec<&str> = spec.required.to_vec();
            all.extend(spec.optional);
            all.extend(COMMON_OPTIONS);
            return Err(invalid(format!(
                "unknown option \"{k}\" for a {type_name} destination; options: {}",
                all.join(", ")
            )));
        }
    }
    for r in spec.required {
        if !options.contains_key(*r) && !options.contains_key(&format!("{r}_env")) {
            return Err(invalid(format!(
                "a {type_name} destination needs the option \"{r}\"{}",
                if is_secret(r) {
                    format!(" (or \"{r}_env\" naming an environment variable)")
                } else {
                    String::new()
                }
            )));
        }
    }
    for group in needs_one_of(type_name) {
        let given =
            |o: &&str| options.contains_key(*o) || options.contains_key(&format!("{o}_env"));
        if !group.iter().any(given) {
            return Err(invalid(format!(
                "a {type_name} destination needs one of the options {}",
                group.join(", ")
            )));
        }
    }
    if let Some(v) = options.get("concurrency")
        && !v
            .parse::<usize>()
            .is_ok_and(|c| (1..=MAX_CONCURRENCY).contains(&c))
    {
        return Err(invalid(format!(
            "option \"concurrency\" is requests in flight at once, 1 to {MAX_CONCURRENCY}, not \"{v}\""
        )));
    }
    for k in [
        "batch_size",
        "timeout_ms",
        "max_retries",
        "ttl_seconds",
        "port",
        "poll_interval_ms",
        "concurrency",
    ] {
        if let Some(v) = options.get(k) {
            v.parse::<u64>().map_err(|_| {
                invalid(format!(
                    "option \"{k}\" must be a whole number, not \"{v}\""
                ))
            })?;
        }
    }
    if let Some(v) = options.get("rate_limit") {
        match v.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => {}
            _ => {
                return Err(invalid(format!(
                    "option \"rate_limit\" is requests per second and must be positive, not \"{v}\""
                )));
            }
        }
    }
    if let Some(b) = options
        .get("batch_size")
        .and_then(|v| v.parse::<usize>().ok())
        && (b == 0 || b > spec.max_batch)
    {
        return Err(invalid(format!(
            "batch_size {b} is out of range for {type_name}: 1 to {} rows per request",
            spec.max_batch
        )));
    }
    if let Some(h) = options.get("headers") {
        match serde_json::from_str::<Value>(h) {
            Ok(Value::Object(m)) if m.values().all(Value::is_string) => {}
            _ => {
                return Err(invalid(
                    "option \"headers\" must be a JSON object of strings, like '{\"X-Team\": \"growth\"}'"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// A destination's options with secrets resolved, for building a connection.
#[derive(Debug, Clone)]
pub struct Options {
    name: String,
    type_name: String,
    values: BTreeMap<String, String>,
}

impl Options {
    /// The options of destination `name`.
    pub fn new(name: &str, entry: &DestinationEntry) -> Self {
        Options {
            name: name.to_string(),
            type_name: entry.destination_type.clone(),
            values: entry.options.clone(),
        }
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An option's value; a secret given as `<option>_env` is read from the environment.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        if let Some(v) = self.values.get(key) {
            return Ok(Some(v.clone()));
        }
        match self.values.get(&format!("{key}_env")) {
            Some(var) => std::env::var(var).map(Some).map_err(|_| {
                TallyError::Config(format!(
                    "destination {}: environment variable {var} (option {key}_env) is not set",
                    self.name
                ))
            }),
            None => Ok(None),
        }
    }

    /// A required option.
    pub fn require(&self, key: &str) -> Result<String> {
        self.get(key)?.ok_or_else(|| {
            invalid(format!(
                "destination {} ({}) has no option \"{key}\"",
                self.name, self.type_name
            ))
        })
    }

    /// A numeric option.
    pub fn number(&self, key: &str) -> Result<Option<u64>> {
        match self.values.get(key) {
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                invalid(format!(
                    "option \"{key}\" must be a whole number, not \"{v}\""
                ))
            }),
            None => Ok(None),
        }
    }

    /// The request timeout (`timeout_ms`, 30 s by default).
    pub fn timeout(&self) -> Result<Duration> {
        Ok(Duration::from_millis(
            self.number("timeout_ms")?.unwrap_or(30_000),
        ))
    }

    /// An HTTP client with the destination's `timeout_ms`: what every SaaS destination
    /// without extra default headers sends through.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(self.timeout()?)
            .build()
            .map_err(|e| TallyError::Internal(format!("http client: {e}")))
    }
}

/// One row on its way to a destination: its fields by destination name, its key and its
/// position in the query result.
#[derive(Debug, Clone)]
pub struct Record {
    /// 0-based position of the row in the COPY's result.
    pub ordinal: u64,
    /// The key column's value as text, when the COPY has a key.
    pub key: Option<String>,
    /// The row as a JSON object (destination field names).
    pub fields: Map<String, Value>,
}

/// One request's worth of records.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The COPY's id.
    pub copy_id: &'a str,
    /// How to apply the rows.
    pub mode: Mode,
    /// The key field's destination name, when the COPY has a key.
    pub key: Option<&'a str>,
    /// The rows, in query order.
    pub records: &'a [Record],
    /// Derived from the copy id and the batch content: the same batch retried carries the
    /// same key, so a destination that honours it applies the batch once.
    pub idempotency_key: String,
}

/// Why a send failed, which decides what the delivery engine does next.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying after a pause: 5xx, 408, timeouts, dropped connections.
    #[error("{message}")]
    Transient {
        /// What happened (no secrets).
        message: String,
        /// The destination's own `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// 429: slow down, and retry after `retry_after` if given.
    #[error("{message}")]
    Throttled {
        /// What happened.
        message: String,
        /// The destination's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The destination refused the batch for good (4xx other than 408/429, a constraint
    /// violation): the engine splits the batch to find the rows at fault.
    #[error("{body}")]
    Rejected {
        /// HTTP status or equivalent, when there is one.
        status: Option<u16>,
        /// The response body or error message (truncated).
        body: String,
    },
    /// Some records of the batch were refused for good and every other record of it was
    /// applied: what APIs that answer per record report (Salesforce sObject Collections with
    /// `allOrNone=false`, Zendesk job results, Google Ads partial failures, one request per
    /// record for Intercom). The engine records exactly these rows as rejected and counts the
    /// rest as delivered, without resending anything (bisection would send the applied rows
    /// again).
    #[error("the destination refused {} record(s) of the batch", .rejected.len())]
    PartlyRejected {
        /// The refused records, by position in [`Batch::records`].
        rejected: Vec<RecordRejection>,
    },
    /// Nothing will work until the user changes something (credentials, URL, table): the COPY
    /// stops with this error.
    #[error("{message}")]
    Fatal {
        /// SQLSTATE for the client.
        code: &'static str,
        /// What happened (no secrets).
        message: String,
    },
}

/// One record a destination refused for good inside a batch it otherwise applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRejection {
    /// Position of the record in [`Batch::records`].
    pub index: usize,
    /// HTTP status (or the vendor's per-record equivalent), when there is one.
    pub status: Option<u16>,
    /// The vendor's reason (truncated, no secrets).
    pub body: String,
}

/// The outcome of a batch whose records got individual verdicts: `Ok` when none was
/// refused, [`SendError::PartlyRejected`] otherwise.
pub fn partly_rejected(rejected: Vec<RecordRejection>) -> Result<(), SendError> {
    if rejected.is_empty() {
        Ok(())
    } else {
        Err(SendError::PartlyRejected { rejected })
    }
}

/// Truncates a response body for storage and messages.
pub fn truncate(body: &str) -> String {
    const MAX: usize = 2_000;
    if body.len() <= MAX {
        return body.to_string();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

/// A destination: a connection to one external system.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Prepares a run (connects, checks the target exists, sets up mirror bookkeeping).
    async fn begin(
        &self,
        _copy_id: &str,
        _mode: Mode,
        _key: Option<&str>,
    ) -> Result<(), SendError> {
        Ok(())
    }

    /// Sends one batch. Must be safe to call again with the same batch after a failure.
    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError>;

    /// Mirror mode: notes the keys the query returned (delivered or not), so that
    /// [`Destination::finish`] removes only records whose key is gone.
    async fn note_keys(&self, _copy_id: &str, _keys: &[String]) -> Result<(), SendError> {
        Ok(())
    }

    /// Removes the records with these keys (values of the key field `key`) from the
    /// destination: what a mirror sync does with rows that left its query since the last
    /// successful run. Must be safe to call again with the same keys (removing a record that
    /// is already gone succeeds). Types whose API cannot remove records keep this default,
    /// and their [`TypeSpec::removes`] is `false`, so a mirror sync to them is refused when
    /// it is created rather than failing at run time.
    async fn remove(&self, _copy_id: &str, key: &str, _keys: &[String]) -> Result<(), SendError> {
        Err(SendError::Fatal {
            code: "0A000",
            message: format!(
                "this destination type cannot remove records (key {key}); use mode 'upsert'"
            ),
        })
    }

    /// Ends a run that read the whole query (mirror mode removes what left it).
    async fn finish(
        &self,
        _copy_id: &str,
        _mode: Mode,
        _key: Option<&str>,
    ) -> Result<u64, SendError> {
        Ok(0)
    }
}

/// Builds the destination `name` from its catalog entry.
pub async fn build(name: &str, entry: &DestinationEntry) -> Result<Box<dyn Destination>> {
    let opts = Options::new(name, entry);
    Ok(match entry.destination_type.as_str() {
        "webhook" => Box::new(webhook::Webhook::new(&opts)?),
        "hubspot" => Box::new(hubspot::HubSpot::new(&opts)?),
        "braze" => Box::new(braze::Braze::new(&opts)?),
        "mixpanel" => Box::new(mixpanel::Mixpanel::new(&opts)?),
        "amplitude" => Box::new(amplitude::Amplitude::new(&opts)?),
        "postgres" => Box::new(postgres::Postgres::new(&opts)?),
        "redis" => Box::new(redis::Redis::new(&opts)?),
        "nats" => Box::new(nats::Nats::new(&opts)?),
        "salesforce" => Box::new(salesforce::Salesforce::new(&opts)?),
        "intercom" => Box::new(intercom::Intercom::new(&opts)?),
        "zendesk" => Box::new(zendesk::Zendesk::new(&opts)?),
        "google_ads_customer_match" => Box::new(google_ads::GoogleAds::new(&opts)?),
        "meta_custom_audiences" => Box::new(meta::MetaAudience::new(&opts)?),
        "file" => Box::new(file::FileDestination::new(&opts)?),
        other => {
            return Err(spec(other)
                .err()
                .unwrap_or_else(|| invalid(format!("destination type {other} cannot be built"))));
        }
    })
}

/// An HTTP answer read in full, before it is sorted into success or failure: for vendors
/// that look at the body of some statuses before [`http_classify`] (Salesforce's 403
/// `REQUEST_LIMIT_EXCEEDED` is a throttle, Meta's 400 with error code 190 a bad token).
#[derive(Debug)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when sent.
    pub retry_after: Option<Duration>,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub body: String,
}

/// Reads an HTTP response; transport failures (timeouts, resets, refused connections) are
/// transient.
pub async fn http_read(
    destination: &str,
    result: std::result::Result<reqwest::Response, reqwest::Error>,
) -> Result<HttpAnswer, SendError> {
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            // Without the URL: it may carry a token.
            let e = e.without_url();
            return Err(SendError::Transient {
                message: format!("destination {destination}: {e}"),
                retry_after: None,
            });
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => {
            return Err(SendError::Transient {
                message: format!(
                    "destination {destination}: reading the response failed: {}",
                    e.without_url()
                ),
                retry_after: None,
            });
        }
    };
    Ok(HttpAnswer {
        status,
        retry_after,
        headers,
        body,
    })
}

/// Sorts a read answer: 2xx is the body; 429 throttled; 408 and 5xx transient; 401/403
/// fatal (credentials); 404/405 fatal (endpoint); other 4xx rejected.
pub fn http_classify(destination: &str, answer: HttpAnswer) -> Result<String, SendError> {
    let HttpAnswer {
        status,
        retry_after,
        body,
        ..
    } = answer;
    match status {
        200..=299 => Ok(body),
        429 => Err(SendError::Throttled {
            message: format!("destination {destination} throttled the request (HTTP 429)"),
            retry_after,
        }),
        408 | 500..=599 => Err(SendError::Transient {
            message: format!(
                "destination {destination} answered HTTP {status}: {}",
                truncate(&body)
            ),
            retry_after,
        }),
        401 | 403 => Err(SendError::Fatal {
            code: "28000",
            message: format!(
                "destination {destination} refused the credentials (HTTP {status}); check its token with ALTER DESTINATION {destination} SET (...)"
            ),
        }),
        404 | 405 => Err(SendError::Fatal {
            code: "08001",
            message: format!(
                "destination {destination} has no such endpoint (HTTP {status}); check its url"
            ),
        }),
        _ => Err(SendError::Rejected {
            status: Some(status),
            body: truncate(&body),
        }),
    }
}

/// Sorts an HTTP response into success or a [`SendError`]: the contract every HTTP API
/// destination shares.
pub async fn http_outcome(
    destination: &str,
    result: std::result::Result<reqwest::Response, reqwest::Error>,
) -> Result<String, SendError> {
    let answer = http_read(destination, result).await?;
    http_classify(destination, answer)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s >= 0.0 && s.is_finite()).then(|| Duration::from_secs_f64(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Hex of SHA-256 over `parts`, each length-prefixed so that parts cannot run together.
pub fn digest_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    crate::engine::hex_encode(ctx.finish().as_ref())
}

/// The idempotency key of a batch: the copy id and every record's position and content.
pub fn batch_idempotency_key(copy_id: &str, records: &[Record]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(copy_id.as_bytes());
    for r in records {
        ctx.update(&r.ordinal.to_be_bytes());
        // Serialized straight into the digest: no copy of the row, no intermediate text.
        let mut w = DigestWriter(&mut ctx);
        if serde_json::to_writer(&mut w, &r.fields).is_err() {
            // A map of JSON values always serializes; keep the key deterministic anyway.
            ctx.update(b"?");
        }
    }
    let hex = crate::engine::hex_encode(ctx.finish().as_ref());
    format!("tally-{}", &hex[..40])
}

/// Feeds what serde_json writes into a digest.
struct DigestWriter<'a>(&'a mut ring::digest::Context);

impl std::io::Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON value as text for text-only APIs (HubSpot properties, Redis hash fields): strings
/// as they are, null as empty, everything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(display_value("token", "abc"), "***");
        assert_eq!(display_value("hmac_secret", "abc"), "***");
        assert_eq!(display_value("token_env", "HUBSPOT_TOKEN"), "HUBSPOT_TOKEN");
        assert_eq!(
            display_value("url", "redis://:hunter2@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        let h = display_value(
            "headers",
            r#"{"Authorization": "Bearer x", "X-Team": "growth"}"#,
        );
        assert!(h.contains("***") && h.contains("growth") && !h.contains("Bearer"));
    }

    #[test]
    fn options_are_checked_against_the_type() {
        let mut o = BTreeMap::new();
        assert!(validate("webhook", &o).is_err());
        o.insert("url".to_string(), "http://x".to_string());
        assert!(validate("webhook", &o).is_ok());
        o.insert("colour".to_string(), "red".to_string());
        assert!(validate("webhook", &o).is_err());
        let mut h = BTreeMap::new();
        h.insert("token_env".to_string(), "T".to_string());
        assert!(validate("hubspot", &h).is_ok());
        h.insert("batch_size".to_string(), "101".to_string());
        assert!(validate("hubspot", &h).is_err());
        assert_eq!(
            validate("carrier_pigeon", &h).unwrap_err().sqlstate(),
            "22023"
        );
        let mut z = BTreeMap::new();
        z.insert("subdomain".to_string(), "acme".to_string());
        assert!(validate("zendesk", &z).is_err(), "no credentials");
        z.insert("api_token_env".to_string(), "ZD".to_string());
        assert!(validate("zendesk", &z).is_ok());
        assert!(validate("file", &BTreeMap::new()).is_err(), "no url");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
