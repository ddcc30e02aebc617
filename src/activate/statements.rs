//! Activation statements: parsing and execution of
//!
//! - `CREATE DESTINATION [IF NOT EXISTS] name TYPE type [WITH (option = 'value', ...)]`
//! - `ALTER DESTINATION name SET (option = 'value', ...)` and `ALTER DESTINATION name RESET (option, ...)`
//! - `DROP DESTINATION [IF EXISTS] name [, ...]`
//! - `COPY (query) | table TO DESTINATION name [WITH (mode = ..., key = ..., batch_size = ..., map = ..., max_retries = ...)]`
//!
//! COPY answers with one row: the copy id and the rows delivered, rejected and retried, the
//! requests made and the records mirror mode removed, which is what a psql user wants to see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::StreamExt;

use super::delivery::{Deliverer, DeliveryStats, LaneRouter, RetryPolicy, drain_lane};
use super::destinations::{self, Mode, SendError};
use super::rejected;
use crate::catalog::DestinationEntry;
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::statements::tokens::{Tokens, syntax};
use crate::statements::{Completion, Output, change_catalog, drop_completion, drop_named, query};

/// A parsed activation statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivateStatement {
    /// `CREATE DESTINATION`.
    Create {
        /// Destination name.
        name: String,
        /// Destination type.
        destination_type: String,
        /// Options.
        options: BTreeMap<String, String>,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `ALTER DESTINATION name SET (...)` / `RESET (...)`.
    Alter {
        /// Destination name.
        name: String,
        /// Options to set.
        set: BTreeMap<String, String>,
        /// Options to remove.
        reset: Vec<String>,
    },
    /// `DROP DESTINATION`.
    Drop {
        /// Destination names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// `COPY (query) TO DESTINATION name WITH (...)`.
    Copy {
        /// The query's text.
        query: String,
        /// Destination name.
        destination: String,
        /// COPY options.
        options: BTreeMap<String, String>,
    },
}

const COPY_USAGE: &str = "COPY (query) TO DESTINATION name [WITH (mode = 'upsert', key = 'column', batch_size = 100, map = 'src:dst,...')]";

/// Whether a statement is `COPY (...) | name TO DESTINATION ...` (the parser's dispatch asks).
pub fn is_copy_to_destination(text: &str) -> bool {
    let Ok(t) = Tokens::new(text) else {
        return false;
    };
    if !t.kw(0, "copy") {
        return false;
    }
    let after = if matches!(t.tok(1), Some(Token::LParen)) {
        match t.closing(1) {
            Some(e) => e + 1,
            None => return false,
        }
    } else {
        let mut i = 2;
        while matches!(t.tok(i), Some(Token::Period)) {
            i += 2;
        }
        i
    };
    t.kw(after, "to") && t.kw(after + 1, "destination")
}

/// Parses a statement whose first words are `CREATE|ALTER|DROP DESTINATION` or a
/// `COPY ... TO DESTINATION`.
pub fn parse(text: &str) -> Result<ActivateStatement> {
    let t = Tokens::new(text)?;
    let verb = t.ident(0).unwrap_or_default();
    match verb.as_str() {
        "create" => {
            let mut i = 2;
            let mut if_not_exists = false;
            if t.kw(i, "if") && t.kw(i + 1, "not") && t.kw(i + 2, "exists") {
                if_not_exists = true;
                i += 3;
            }
            let name = t
                .ident(i)
                .ok_or_else(|| syntax("CREATE DESTINATION needs a destination name"))?;
            i += 1;
            if !t.kw(i, "type") {
                return Err(syntax(format!(
                    "expected TYPE after CREATE DESTINATION {name} (for example: CREATE DESTINATION {name} TYPE webhook WITH (url = 'https://...'))"
                )));
            }
            let destination_type = t
                .ident(i + 1)
                .ok_or_else(|| syntax("TYPE needs a destination type"))?;
            i += 2;
            let mut options = BTreeMap::new();
            if t.kw(i, "with") {
                let (o, next) = t.options(i + 1)?;
                options = o;
                i = next;
            }
            if let Some(tok) = t.tok(i) {
                return Err(syntax(format!(
                    "unexpected {tok} after the destination options"
                )));
            }
            Ok(ActivateStatement::Create {
                name,
                destination_type,
                options,
                if_not_exists,
            })
        }
        "alter" => {
            let name = t
                .ident(2)
                .ok_or_else(|| syntax("ALTER DESTINATION needs a destination name"))?;
            let usage = "ALTER DESTINATION name SET (option = 'value', ...) | RESET (option, ...)";
            if t.kw(3, "set") {
                let (set, next) = t.options(4)?;
                if t.tok(next).is_some() {
                    return Err(syntax(usage));
                }
                Ok(ActivateStatement::Alter {
                    name,
                    set,
                    reset: vec![],
                })
            } else if t.kw(3, "reset") && matches!(t.tok(4), Some(Token::LParen)) {
                let mut reset = Vec::new();
                let mut i = 5;
                loop {
                    reset.push(t.ident(i).ok_or_else(|| syntax(usage))?);
                    match t.tok(i + 1) {
                        Some(Token::Comma) => i += 2,
                        Some(Token::RParen) if t.tok(i + 2).is_none() => break,
                        _ => return Err(syntax(usage)),
                    }
                }
                Ok(ActivateStatement::Alter {
                    name,
                    set: BTreeMap::new(),
                    reset,
                })
            } else {
                Err(syntax(usage))
            }
        }
        "drop" => {
            let (names, if_exists) = t.drop_list(2, "DROP DESTINATION [IF EXISTS] name [, ...]")?;
            Ok(ActivateStatement::Drop { names, if_exists })
        }
        "copy" => {
            let (query, mut i) = if matches!(t.tok(1), Some(Token::LParen)) {
                let end = t
                    .closing(1)
                    .ok_or_else(|| syntax("unbalanced parentheses around the COPY query"))?;
                let q = t.text_between(1, end);
                if q.is_empty() {
                    return Err(syntax(COPY_USAGE));
                }
                (q, end + 1)
            } else {
                // COPY table TO DESTINATION: the table's rows.
                let mut parts = vec![
                    t.tok(1)
                        .map(|x| x.to_string())
                        .ok_or_else(|| syntax(COPY_USAGE))?,
                ];
                let mut i = 2;
                while matches!(t.tok(i), Some(Token::Period)) {
                    parts.push(
                        t.tok(i + 1)
                            .map(|x| x.to_string())
                            .ok_or_else(|| syntax(COPY_USAGE))?,
                    );
                    i += 2;
                }
                (format!("SELECT * FROM {}", parts.join(".")), i)
            };
            if !(t.kw(i, "to") && t.kw(i + 1, "destination")) {
                return Err(syntax(COPY_USAGE));
            }
            let destination = t.ident(i + 2).ok_or_else(|| syntax(COPY_USAGE))?;
            i += 3;
            let mut options = BTreeMap::new();
            if t.kw(i, "with") {
                let (o, next) = t.options(i + 1)?;
                options = o;
                i = next;
            }
            if let Some(tok) = t.tok(i) {
                return Err(syntax(format!("unexpected {tok}: {COPY_USAGE}")));
            }
            Ok(ActivateStatement::Copy {
                query,
                destination,
                options,
            })
        }
        _ => Err(syntax(
            "expected CREATE, ALTER or DROP DESTINATION, or COPY ... TO DESTINATION",
        )),
    }
}

/// Runs an activation statement.
pub async fn execute(session: &mut Session, stmt: ActivateStatement) -> Result<Output> {
    match stmt {
        ActivateStatement::Create {
            name,
            destination_type,
            options,
            if_not_exists,
        } => {
            destinations::validate(&destination_type, &options)?;
            let now = Utc::now().to_rfc3339();
            let created = change_catalog(session, |doc| {
                if doc.destinations.contains_key(&name) {
                    return if if_not_exists {
                        Ok(false)
                    } else {
                        Err(TallyError::AlreadyExists {
                            kind: "destination",
                            name: name.clone(),
                        })
                    };
                }
                doc.destinations.insert(
                    name.clone(),
                    DestinationEntry {
                        destination_type: destination_type.clone(),
                        options: options.clone(),
                        created_at: now.clone(),
                        altered_at: None,
                    },
                );
                Ok(true)
            })
            .await?;
            let mut c = Completion::tag("CREATE DESTINATION");
            if !created {
                c = c.with_notice(format!("destination \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        ActivateStatement::Alter { name, set, reset } => {
            let now = Utc::now().to_rfc3339();
            change_catalog(session, |doc| {
                let e = doc
                    .destinations
                    .get_mut(&name)
                    .ok_or_else(|| TallyError::NotFound {
                        kind: "destination",
                        name: name.clone(),
                    })?;
                let mut options = e.options.clone();
                for r in &reset {
                    options.remove(r);
                }
                for (k, v) in &set {
                    // A secret given directly replaces one read from the environment, and
                    // the other way round.
                    options.remove(&format!("{k}_env"));
                    if let Some(base) = k.strip_suffix("_env") {
                        options.remove(base);
                    }
                    options.insert(k.clone(), v.clone());
                }
                destinations::validate(&e.destination_type, &options)?;
                e.options = options;
                e.altered_at = Some(now.clone());
                Ok(())
            })
            .await?;
            session.engine.activation.forget(&name);
            Ok(Output::Command(Completion::tag("ALTER DESTINATION")))
        }
        ActivateStatement::Drop { names, if_exists } => {
            let missing = change_catalog(session, |doc| {
                drop_named(&mut doc.destinations, &names, if_exists, "destination")
            })
            .await?;
            for n in &names {
                session.engine.activation.forget(n);
            }
            Ok(drop_completion("DROP DESTINATION", "destination", missing))
        }
        ActivateStatement::Copy {
            query,
            destination,
            options,
        } => copy_to_destination(session, &query, &destination, &options).await,
    }
}

/// The options of one COPY, checked.
#[derive(Debug)]
struct CopyOptions {
    mode: Mode,
    key: Option<String>,
    batch_size: usize,
    concurrency: usize,
    map: Option<String>,
    policy: RetryPolicy,
}

fn copy_options(
    spec: &destinations::TypeSpec,
    dest_options: &BTreeMap<String, String>,
    options: &BTreeMap<String, String>,
) -> Result<CopyOptions> {
    let invalid = |message: String| TallyError::InvalidValue {
        code: "22023",
        message,
    };
    for k in options.keys() {
        if ![
            "mode",
            "key",
            "batch_size",
            "map",
            "max_retries",
            "timeout_ms",
            "concurrency",
        ]
        .contains(&k.as_str())
        {
            return Err(invalid(format!(
                "unknown COPY option \"{k}\"; options: mode, key, batch_size, map, max_retries, timeout_ms, concurrency"
            )));
        }
    }
    let key = options.get("key").cloned();
    let mode = match options.get("mode") {
        Some(m) => Mode::parse(m)?,
        None if key.is_some() => Mode::Upsert,
        None => Mode::Insert,
    };
    if !spec.modes.contains(&mode) {
        return Err(TallyError::Unsupported(format!(
            "{} destinations support mode {}, not {}",
            spec.name,
            spec.modes
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            mode.as_str()
        )));
    }
    if key.is_none() && (mode.needs_key() || spec.key_required) {
        return Err(invalid(format!(
            "mode {} to a {} destination needs key = '<column>'",
            mode.as_str(),
            spec.name
        )));
    }
    let number = |k: &str| -> Result<Option<usize>> {
        match options.get(k).or_else(|| dest_options.get(k)) {
            Some(v) => v
                .parse::<usize>()
                .map(Some)
                .map_err(|_| invalid(format!("{k} must be a whole number, not \"{v}\""))),
            None => Ok(None),
        }
    };
    let batch_size = number("batch_size")?.unwrap_or(spec.default_batch);
    if batch_size == 0 || batch_size > spec.max_batch {
        return Err(invalid(format!(
            "batch_size {batch_size} is out of range for {}: 1 to {} rows per request",
            spec.name, spec.max_batch
        )));
    }
    // Intercom has no batch endpoint: its `concurrency` is the records of one batch in flight
    // (see intercom.rs), and its batches go one at a time.
    let concurrency = if spec.name == "intercom" {
        1
    } else {
        number("concurrency")?.unwrap_or_else(|| destinations::default_concurrency(spec))
    };
    if !(1..=destinations::MAX_CONCURRENCY).contains(&concurrency) {
        return Err(invalid(format!(
            "concurrency {concurrency} is out of range: 1 to {} requests in flight",
            destinations::MAX_CONCURRENCY
        )));
    }
    let mut policy = RetryPolicy::default();
    if let Some(n) = number("max_retries")? {
        policy.max_retries = n;
    }
    if let Some(ms) = number("timeout_ms")? {
        policy.timeout = Duration::from_millis(ms as u64);
    }
    Ok(CopyOptions {
        mode,
        key,
        batch_size,
        concurrency,
        map: options.get("map").cloned(),
        policy,
    })
}

/// The columns of COPY TO DESTINATION's result row (also its Describe answer).
pub fn copy_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("destination", DataType::Utf8, false),
        Field::new("copy_id", DataType::Utf8, false),
        Field::new("delivered", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("retried", DataType::Int64, false),
        Field::new("requests", DataType::Int64, false),
        Field::new("removed", DataType::Int64, false),
    ]))
}

/// The COPY's result row.
fn result_output(destination: &str, copy_id: &str, stats: &DeliveryStats) -> Result<Output> {
    let schema = copy_result_schema();
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![destination])),
            Arc::new(StringArray::from(vec![copy_id])),
            n(stats.delivered),
            n(stats.rejected),
            n(stats.retried),
            n(stats.requests),
            n(stats.removed),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    Ok(Output::Rows(Box::pin(MemoryStream::try_new(
        vec![batch],
        schema,
        None,
    )?)))
}

/// The COPY's error for a destination failure outside the delivery engine.
pub fn fatal(e: SendError) -> TallyError {
    match e {
        SendError::Fatal { code, message } => TallyError::Destination { code, message },
        other => TallyError::Destination {
            code: "08006",
            message: other.to_string(),
        },
    }
}

/// Rejected rows are flushed to `tally.rejected_rows` once this many are pending.
pub const REJECTED_FLUSH: usize = 1_000;

async fn copy_to_destination(
    session: &mut Session,
    query_text: &str,
    name: &str,
    options: &BTreeMap<String, String>,
) -> Result<Output> {
    let (copy_id, stats) = run_copy(session, query_text, name, options).await?;
    result_output(name, &copy_id, &stats)
}

/// A COPY made ready to run: its query planned, its options checked, its destination built.
pub struct PreparedCopy {
    /// The query, planned and not yet executed.
    pub df: datafusion::dataframe::DataFrame,
    /// How result columns become destination fields.
    pub mapping: super::rows::Mapping,
    /// The key's destination field name.
    pub key_field: Option<String>,
    /// The destination.
    pub dest: Box<dyn destinations::Destination>,
    /// The destination type's contract.
    pub spec: &'static destinations::TypeSpec,
    /// The destination's rate limiter.
    pub limiter: Arc<super::limiter::AimdLimiter>,
    /// This COPY's id.
    pub copy_id: String,
    /// How rows are applied.
    pub mode: Mode,
    /// Rows per request.
    pub batch_size: usize,
    /// Requests in flight at once (lanes of [`super::delivery::LaneRouter`]).
    pub concurrency: usize,
    /// Retries and timeouts.
    pub policy: RetryPolicy,
}

/// Plans the COPY of `query_text` to destination `name` with COPY `options` and builds the
/// destination (nothing is sent and nothing connects yet).
pub async fn prepare_copy(
    session: &mut Session,
    query_text: &str,
    name: &str,
    options: &BTreeMap<String, String>,
) -> Result<PreparedCopy> {
    let entry = session
        .catalog
        .doc()
        .destinations
        .get(name)
        .cloned()
        .ok_or_else(|| TallyError::NotFound {
            kind: "destination",
            name: name.to_string(),
        })?;
    let spec = destinations::spec(&entry.destination_type)?;
    let opts = copy_options(spec, &entry.options, options)?;

    let stmt = Parser::parse_sql(&PostgreSqlDialect {}, query_text)
        .map_err(|e| syntax(format!("in the COPY query: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| syntax("the COPY query is empty"))?;
    let plan = query::plan(session, stmt).await?;
    let df = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(unwrap_datafusion)?;
    let schema = df.schema().as_arrow().clone();
    let mapping = super::rows::Mapping::new(&schema, opts.map.as_deref(), opts.key.as_deref())?;
    let key_field = mapping.key_field().map(str::to_string);

    let dest = destinations::build(name, &entry).await?;
    let ceiling = match entry.options.get("rate_limit") {
        Some(r) => r.parse::<f64>().ok(),
        None => spec.default_rate,
    };
    let limiter = session.engine.activation.limiter(name, ceiling);
    Ok(PreparedCopy {
        df,
        mapping,
        key_field,
        dest,
        spec,
        limiter,
        copy_id: uuid::Uuid::new_v4().to_string(),
        mode: opts.mode,
        batch_size: opts.batch_size,
        concurrency: opts.concurrency,
        policy: opts.policy,
    })
}

/// Runs a COPY to destination `name`. Returns the copy id and what was delivered.
pub async fn run_copy(
    session: &mut Session,
    query_text: &str,
    name: &str,
    options: &BTreeMap<String, String>,
) -> Result<(String, DeliveryStats)> {
    let p = prepare_copy(session, query_text, name, options).await?;
    let copy_id = p.copy_id.clone();
    let key_field = p.key_field.as_deref();
    tracing::info!(destination = name, copy_id = %copy_id, mode = p.mode.as_str(), "COPY TO DESTINATION started");
    p.dest
        .begin(&copy_id, p.mode, key_field)
        .await
        .map_err(fatal)?;

    let mut stream = p.df.execute_stream().await.map_err(unwrap_datafusion)?;
    let new_deliverer = || {
        Deliverer::new(
            name,
            p.dest.as_ref(),
            p.limiter.clone(),
            p.policy.clone(),
            &copy_id,
            p.mode,
            key_field,
        )
    };
    // Rows refused before sending (a null key) are recorded by a deliverer of their own.
    let mut local = new_deliverer();
    let mut lanes: Vec<Deliverer> = (0..p.concurrency).map(|_| new_deliverer()).collect();
    let (mut router, receivers) = LaneRouter::new(p.concurrency, p.batch_size);
    let warehouse = session.engine.warehouse().clone();
    let produce = async {
        let mut ordinal = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(unwrap_datafusion)?;
            let records = p.mapping.records(&batch, ordinal)?;
            ordinal += batch.num_rows() as u64;
            if p.mode == Mode::Mirror {
                let keys: Vec<String> = records.iter().filter_map(|r| r.key.clone()).collect();
                p.dest.note_keys(&copy_id, &keys).await.map_err(fatal)?;
            }
            for r in records {
                if key_field.is_some() && r.key.is_none() {
                    local.reject_locally(&r, "the key column is null");
                    continue;
                }
                if router.push(r).await.is_err() {
                    // A lane stopped for good; its error is the COPY's.
                    return Ok(false);
                }
            }
        }
        Ok(router.finish().await.is_ok())
    };
    let consume = futures::future::join_all(
        lanes
            .iter_mut()
            .zip(receivers)
            .map(|(d, rx)| drain_lane(rx, d, &warehouse, REJECTED_FLUSH)),
    );
    let (produced, consumed): (Result<bool>, Vec<Result<()>>) = tokio::join!(produce, consume);
    let mut outcome: Result<()> = consumed
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .map(|_| ());
    if outcome.is_ok() {
        outcome = produced.map(|_| ());
    }
    let mut stats = local.stats.clone();
    let mut refused = std::mem::take(&mut local.rejected);
    for d in &mut lanes {
        stats.add(&d.stats);
        refused.append(&mut d.rejected);
    }
    if outcome.is_ok() {
        // Mirror removals only after the whole query was read and sent.
        match p.dest.finish(&copy_id, p.mode, key_field).await {
            Ok(removed) => stats.removed = removed,
            Err(e) => outcome = Err(fatal(e)),
        }
    }
    // Refused rows are kept even when the COPY stops early.
    let kept = rejected::append(&warehouse, &refused).await;
    tracing::info!(
        destination = name,
        copy_id = %copy_id,
        delivered = stats.delivered,
        rejected = stats.rejected,
        retried = stats.retried,
        lanes = p.concurrency,
        ok = outcome.is_ok(),
        "COPY TO DESTINATION finished"
    );
    outcome?;
    kept?;
    Ok((copy_id, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destination_statements() {
        let s = parse("CREATE DESTINATION IF NOT EXISTS Hooks TYPE webhook WITH (url = 'http://x', batch_size = 50, Verify = true)")
            .expect("parses");
        let mut o = BTreeMap::new();
        o.insert("url".to_string(), "http://x".to_string());
        o.insert("batch_size".to_string(), "50".to_string());
        o.insert("verify".to_string(), "true".to_string());
        assert_eq!(
            s,
            ActivateStatement::Create {
                name: "hooks".into(),
                destination_type: "webhook".into(),
                options: o,
                if_not_exists: true
            }
        );
        assert!(matches!(
            parse("ALTER DESTINATION d RESET (headers, hmac_secret)").expect("parses"),
            ActivateStatement::Alter { reset, .. } if reset == vec!["headers".to_string(), "hmac_secret".to_string()]
        ));
        assert_eq!(
            parse("DROP DESTINATION IF EXISTS a, b").expect("parses"),
            ActivateStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            }
        );
        assert!(parse("CREATE DESTINATION d WITH (url = 'x')").is_err());
    }

    #[test]
    fn parses_copy_to_destination() {
        let text = "COPY (SELECT id, email FROM users WHERE note = 'a)b') TO DESTINATION crm WITH (mode = 'upsert', key = 'email')";
        assert!(is_copy_to_destination(text));
        assert!(!is_copy_to_destination("COPY (SELECT 1) TO STDOUT"));
        assert!(!is_copy_to_destination("COPY t FROM STDIN"));
        match parse(text).expect("parses") {
            ActivateStatement::Copy {
                query,
                destination,
                options,
            } => {
                assert_eq!(query, "SELECT id, email FROM users WHERE note = 'a)b'");
                assert_eq!(destination, "crm");
                assert_eq!(options.get("key").map(String::as_str), Some("email"));
            }
            other => panic!("not a copy: {other:?}"),
        }
        assert!(is_copy_to_destination(
            "copy web.users to destination hooks"
        ));
        assert!(matches!(
            parse("copy web.users to destination hooks").expect("parses"),
            ActivateStatement::Copy { query, .. } if query == "SELECT * FROM web.users"
        ));
    }
}
