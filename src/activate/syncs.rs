//! Syncs: a named `COPY ... TO DESTINATION` that sends only what changed since its last
//! successful run.
//!
//! ```sql
//! CREATE SYNC trials_to_crm AS
//!   COPY (SELECT email, plan FROM trial_users) TO DESTINATION crm WITH (mode = 'upsert', key = 'email');
//! RUN SYNC trials_to_crm;      -- first run: every row; later runs: added and changed rows
//! SELECT * FROM tally.syncs;
//! SELECT * FROM tally.sync_runs ORDER BY started_at DESC;
//! DROP SYNC trials_to_crm;
//! ```
//!
//! Each run hashes every result row (its mapped JSON) and compares it with the snapshot of
//! the last successful run, a Delta table of `(row_key, row_hash)` under
//! `_tally/activation/syncs/<name>/snapshot`; only rows whose key is new or whose hash
//! changed are sent. After the run the snapshot is replaced by the keys the query returned,
//! without the rows the destination refused, so those are sent again by the next run. A run
//! that fails leaves the snapshot as it was: the next run resends everything changed since
//! the last success (at least once).
//!
//! The query's names resolve with the search path of the session that runs it (the default
//! schema at creation is stored for when the scheduler runs syncs without a session).
//!
//! `SCHEDULE '<cron>'` or `EVERY '<interval>'` lets `tally serve`'s scheduler
//! (`crate::scheduler`) run the sync on its own; `ALTER SYNC ... PAUSE | RESUME` holds and
//! releases it. Runs of one sync never overlap within a server (see
//! [`super::Activation::sync_lock`]).
//!
//! Not yet: mirror syncs (removing rows that left the query at
//! the destination), and the diff as a DataFusion anti-join (the snapshot is read into
//! memory, about 100 bytes per key).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_plan::memory::MemoryStream;
use deltalake::protocol::SaveMode;
use futures::StreamExt;

use super::destinations::{Mode, Record};
use super::statements::{ActivateStatement, RowFilter, run_copy};
use crate::catalog::{SyncEntry, SyncSchedule};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::statements::{Completion, Output, change_catalog};
use crate::storage::delta::{DeltaTableProvider, create_table, open_table};

/// The snapshot's location for sync `name`.
fn snapshot_location(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tag = &super::destinations::digest_hex(&[name.as_bytes()])[..8];
    format!("_tally/activation/syncs/{safe}_{tag}/snapshot/")
}

fn snapshot_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row_key", DataType::Utf8, false),
        Field::new("row_hash", DataType::Utf8, false),
    ]))
}

/// The COPY a sync runs, checked: a key is required and mirror is not supported yet.
fn check_copy(stmt: &ActivateStatement) -> Result<()> {
    let ActivateStatement::Copy { options, .. } = stmt else {
        return Err(TallyError::syntax(
            "syntax error: CREATE SYNC name AS COPY (query) TO DESTINATION d WITH (...)",
        ));
    };
    if !options.contains_key("key") {
        return Err(TallyError::InvalidValue {
            code: "22023",
            message: "a sync needs key = '<column>' to tell changed rows from new ones".into(),
        });
    }
    Ok(())
}

/// `CREATE SYNC [IF NOT EXISTS] name AS COPY ...`.
pub async fn create(
    session: &mut Session,
    name: String,
    copy_sql: String,
    if_not_exists: bool,
    schedule: Option<SyncSchedule>,
) -> Result<Output> {
    let stmt = super::statements::parse(&copy_sql)?;
    check_copy(&stmt)?;
    if let ActivateStatement::Copy { destination, .. } = &stmt
        && !session.catalog.doc().destinations.contains_key(destination)
    {
        return Err(TallyError::NotFound {
            kind: "destination",
            name: destination.clone(),
        });
    }
    let now = Utc::now().to_rfc3339();
    let next_run_at = schedule
        .as_ref()
        .and_then(|s| super::schedule::next_after(s, Utc::now()))
        .map(|t| t.to_rfc3339());
    let schema = crate::statements::names::default_schema(session);
    let (schedule, model_seen) = match schedule {
        Some(s) => {
            let (s, seen) = qualify_model(session, s, &schema).await?;
            (Some(s), seen)
        }
        None => (None, None),
    };
    let created = change_catalog(session, |doc| {
        if doc.syncs.contains_key(&name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(TallyError::AlreadyExists {
                    kind: "sync",
                    name: name.clone(),
                })
            };
        }
        doc.syncs.insert(
            name.clone(),
            SyncEntry {
                copy_sql: copy_sql.clone(),
                default_schema: schema.clone(),
                created_at: now.clone(),
                runs: 0,
                last_run_at: None,
                last_status: None,
                last_error: None,
                last_sent: 0,
                last_unchanged: 0,
                last_failed: 0,
                schedule: schedule.clone(),
                paused: false,
                next_run_at: next_run_at.clone(),
                last_scheduled_at: None,
                model_seen: model_seen.clone(),
            },
        );
        Ok(true)
    })
    .await?;
    let mut c = Completion::tag("CREATE SYNC");
    if !created {
        c = c.with_notice(format!("sync \"{name}\" already exists, skipping"));
    }
    Ok(Output::Command(c))
}

/// `ALTER SYNC name ...`: changes the schedule or pauses/resumes it. A new schedule or a
/// RESUME starts from the next tick after now: ticks missed while paused are not replayed.
pub async fn alter(session: &mut Session, name: String, action: AlterSync) -> Result<Output> {
    let now = Utc::now();
    let (action, model_seen) = match action {
        AlterSync::SetSchedule(s) => {
            let schema = crate::statements::names::default_schema(session);
            let (s, seen) = qualify_model(session, s, &schema).await?;
            (AlterSync::SetSchedule(s), seen)
        }
        other => (other, None),
    };
    change_catalog(session, |doc| {
        let e = doc
            .syncs
            .get_mut(&name)
            .ok_or_else(|| TallyError::NotFound {
                kind: "sync",
                name: name.clone(),
            })?;
        match &action {
            AlterSync::SetSchedule(s) => {
                e.schedule = Some(s.clone());
                e.model_seen = model_seen.clone();
            }
            AlterSync::DropSchedule => e.schedule = None,
            AlterSync::Pause => e.paused = true,
            AlterSync::Resume => e.paused = false,
        }
        if !matches!(action, AlterSync::Pause) {
            e.next_run_at = e
                .schedule
                .as_ref()
                .and_then(|s| super::schedule::next_after(s, now))
                .map(|t| t.to_rfc3339());
        }
        Ok(())
    })
    .await?;
    tracing::info!(sync = name, ?action, "sync altered");
    Ok(Output::Command(Completion::tag("ALTER SYNC")))
}

/// For `AFTER MODEL`: the model's qualified name (unqualified names are in `schema`, the
/// session's default) and its state now, so that the sync runs on the model's next build
/// rather than at once. A model that does not exist yet is allowed (its first build runs
/// the sync): dbt projects are often deployed before their first run.
async fn qualify_model(
    session: &Session,
    schedule: SyncSchedule,
    schema: &str,
) -> Result<(SyncSchedule, Option<String>)> {
    match schedule {
        SyncSchedule::AfterModel { model } => {
            let model = if model.contains('.') {
                model
            } else {
                format!("{schema}.{model}")
            };
            let seen = super::schedule::model_fingerprint(&session.engine, &model, None).await?;
            Ok((SyncSchedule::AfterModel { model }, seen))
        }
        other => Ok((other, None)),
    }
}

/// `DROP SYNC [IF EXISTS] name`: forgets the sync and its snapshot. Waits for a run in
/// progress, so that the run does not write the snapshot back after it was deleted.
pub async fn drop(session: &mut Session, name: String, if_exists: bool) -> Result<Output> {
    let lock = session.engine.activation.sync_lock(&name);
    let _running = lock.lock().await;
    let removed = change_catalog(session, |doc| Ok(doc.syncs.remove(&name).is_some())).await?;
    if !removed {
        if if_exists {
            return Ok(Output::Command(
                Completion::tag("DROP SYNC")
                    .with_notice(format!("sync \"{name}\" does not exist, skipping")),
            ));
        }
        return Err(TallyError::NotFound { kind: "sync", name });
    }
    let wh = session.engine.warehouse().clone();
    if let Err(e) = wh.delete_prefix(&snapshot_location(&name)).await {
        tracing::warn!(sync = name, error = %e, "could not delete the sync's snapshot");
    }
    Ok(Output::Command(Completion::tag("DROP SYNC")))
}

/// The diff of one run against the snapshot.
struct Diff {
    old: HashMap<String, String>,
    new: HashMap<String, String>,
    added: u64,
    changed: u64,
    unchanged: u64,
}

impl RowFilter for Diff {
    fn wants(&mut self, record: &Record) -> bool {
        let Some(key) = &record.key else {
            return true;
        };
        let json = serde_json::Value::Object(record.fields.clone()).to_string();
        let hash = super::destinations::digest_hex(&[json.as_bytes()])[..32].to_string();
        let send = match self.old.get(key) {
            Some(h) if *h == hash => {
                self.unchanged += 1;
                false
            }
            Some(_) => {
                self.changed += 1;
                true
            }
            None => {
                self.added += 1;
                true
            }
        };
        self.new.insert(key.clone(), hash);
        send
    }

    fn failed(&mut self, key: &str) {
        self.new.remove(key);
    }

    fn check_mode(&self, mode: Mode) -> Result<()> {
        if mode == Mode::Mirror {
            return Err(TallyError::Unsupported(
                "mirror syncs are not supported yet (they need deletes at the destination); use mode 'upsert'".into(),
            ));
        }
        Ok(())
    }
}

async fn read_snapshot(session: &Session, location: &str) -> Result<HashMap<String, String>> {
    let wh = session.engine.warehouse();
    let Ok(table) = open_table(&wh.url_of(location)?, &wh.options).await else {
        return Ok(HashMap::new());
    };
    let provider = Arc::new(DeltaTableProvider::try_new(table).await?);
    let mut stream = session
        .ctx
        .read_table(provider)
        .map_err(unwrap_datafusion)?
        .execute_stream()
        .await
        .map_err(unwrap_datafusion)?;
    let mut out = HashMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(unwrap_datafusion)?;
        let col = |n: &str| {
            batch
                .column_by_name(n)
                .and_then(|c| datafusion::arrow::compute::cast(c, &DataType::Utf8).ok())
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| {
                    TallyError::Internal(format!("sync snapshot has no text column {n}"))
                })
        };
        let (k, h) = (col("row_key")?, col("row_hash")?);
        for i in 0..batch.num_rows() {
            if !k.is_null(i) && !h.is_null(i) {
                out.insert(k.value(i).to_string(), h.value(i).to_string());
            }
        }
    }
    Ok(out)
}

async fn write_snapshot(
    session: &Session,
    location: &str,
    rows: &HashMap<String, String>,
) -> Result<()> {
    let wh = session.engine.warehouse();
    let url = wh.url_of(location)?;
    let table = match open_table(&url, &wh.options).await {
        Ok(t) => t,
        Err(_) => create_table(&url, &wh.options, "sync_snapshot", &snapshot_schema()).await?,
    };
    let batch = RecordBatch::try_new(
        snapshot_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.keys())),
            Arc::new(StringArray::from_iter_values(rows.values())),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    table
        .write(vec![batch])
        .with_save_mode(SaveMode::Overwrite)
        .await?;
    Ok(())
}

/// Who started a sync run, recorded in `tally.sync_runs.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `RUN SYNC`.
    Manual,
    /// The scheduler, at a tick of the sync's schedule.
    Schedule,
    /// The scheduler, after a build of the sync's `AFTER MODEL` model.
    Model,
}

impl Trigger {
    /// The name stored in `tally.sync_runs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Model => "model",
        }
    }
}

/// The counts of one successful run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The COPY id of the run.
    pub copy_id: String,
    /// Rows new since the last successful run.
    pub added: u64,
    /// Rows changed since the last successful run.
    pub changed: u64,
    /// Rows not sent because they did not change.
    pub unchanged: u64,
    /// Keys of the last snapshot the query no longer returns.
    pub left_query: u64,
    /// Rows the destination accepted.
    pub delivered: u64,
    /// Rows the destination refused for good.
    pub rejected: u64,
    /// Retried requests.
    pub retried: u64,
}

/// One run of sync `name` in `session`, recorded in `tally.sync_runs` and in the catalog
/// whatever its outcome. The caller holds the sync's lock
/// ([`super::Activation::sync_lock`]) so that two runs never overlap.
pub async fn run_once(session: &mut Session, name: &str, trigger: Trigger) -> Result<RunReport> {
    let name = name.to_string();
    let entry = session
        .catalog
        .doc()
        .syncs
        .get(&name)
        .cloned()
        .ok_or_else(|| TallyError::NotFound {
            kind: "sync",
            name: name.clone(),
        })?;
    let ActivateStatement::Copy {
        query,
        destination,
        options,
    } = super::statements::parse(&entry.copy_sql)?
    else {
        return Err(TallyError::Internal(format!(
            "sync {name} does not hold a COPY"
        )));
    };
    let location = snapshot_location(&name);
    let mut diff = Diff {
        old: read_snapshot(session, &location).await?,
        new: HashMap::new(),
        added: 0,
        changed: 0,
        unchanged: 0,
    };
    let started = Utc::now();
    let started_at = started.timestamp_micros();
    tracing::info!(sync = name, trigger = trigger.as_str(), "sync run starts");
    let result = run_copy(session, &query, &destination, &options, Some(&mut diff)).await;
    let now = Utc::now().to_rfc3339();
    let outcome = match result {
        Ok((copy_id, stats)) => match write_snapshot(session, &location, &diff.new).await {
            Ok(()) => Ok((copy_id, stats)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let (status, error, sent, failed) = match &outcome {
        Ok((_, s)) => ("succeeded", None, s.delivered, s.rejected),
        Err(e) => ("failed", Some(e.to_string()), 0, 0),
    };
    let unchanged = diff.unchanged;
    let run = super::runs::SyncRun {
        sync: name.clone(),
        run_id: outcome
            .as_ref()
            .map(|(id, _)| id.clone())
            .unwrap_or_default(),
        started_at,
        finished_at: Utc::now().timestamp_micros(),
        status: status.to_string(),
        rows_added: diff.added,
        rows_changed: diff.changed,
        rows_unchanged: unchanged,
        rows_delivered: sent,
        rows_failed: failed,
        error: error.clone(),
        trigger: trigger.as_str().to_string(),
    };
    if let Err(e) = super::runs::append(session.engine.warehouse(), &run).await {
        tracing::warn!(sync = name, error = %e, "could not record the sync run in tally.sync_runs");
    }
    match &error {
        Some(e) => {
            tracing::warn!(sync = name, trigger = trigger.as_str(), error = %e, "sync run failed")
        }
        None => tracing::info!(
            sync = name,
            trigger = trigger.as_str(),
            delivered = sent,
            failed,
            "sync run finished"
        ),
    }
    let scheduled_at = (trigger != Trigger::Manual).then(|| started.to_rfc3339());
    change_catalog(session, |doc| {
        if let Some(e) = doc.syncs.get_mut(&name) {
            e.runs += 1;
            e.last_run_at = Some(now.clone());
            e.last_status = Some(status.to_string());
            e.last_error = error.clone();
            e.last_sent = sent;
            e.last_unchanged = unchanged;
            e.last_failed = failed;
            if scheduled_at.is_some() {
                e.last_scheduled_at = scheduled_at.clone();
            }
        }
        Ok(())
    })
    .await?;
    let (copy_id, stats) = outcome?;
    let left_query = diff
        .old
        .keys()
        .filter(|k| !diff.new.contains_key(*k))
        .count() as u64;
    Ok(RunReport {
        copy_id,
        added: diff.added,
        changed: diff.changed,
        unchanged: diff.unchanged,
        left_query,
        delivered: stats.delivered,
        rejected: stats.rejected,
        retried: stats.retried,
    })
}

/// `RUN SYNC name`: one run, answered with one row of counts. When the scheduler is running
/// the same sync, this waits for that run to finish first (runs of one sync never overlap).
pub async fn run(session: &mut Session, name: String) -> Result<Output> {
    if !session.catalog.doc().syncs.contains_key(&name) {
        return Err(TallyError::NotFound { kind: "sync", name });
    }
    let lock = session.engine.activation.sync_lock(&name);
    let _running = lock.lock().await;
    let r = run_once(session, &name, Trigger::Manual).await?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("sync", DataType::Utf8, false),
        Field::new("copy_id", DataType::Utf8, false),
        Field::new("added", DataType::Int64, false),
        Field::new("changed", DataType::Int64, false),
        Field::new("unchanged", DataType::Int64, false),
        Field::new("left_query", DataType::Int64, false),
        Field::new("delivered", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("retried", DataType::Int64, false),
    ]));
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![name.as_str()])),
            Arc::new(StringArray::from(vec![r.copy_id.as_str()])),
            n(r.added),
            n(r.changed),
            n(r.unchanged),
            n(r.left_query),
            n(r.delivered),
            n(r.rejected),
            n(r.retried),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    Ok(Output::Rows(Box::pin(MemoryStream::try_new(
        vec![batch],
        schema,
        None,
    )?)))
}

/// `tally.syncs`: one row per sync with its COPY, the outcome of its last run and its
/// schedule (`next_run_at` is NULL when the sync has no schedule or is paused).
pub fn syncs_table(
    doc: &crate::catalog::CatalogDoc,
) -> datafusion::common::Result<Arc<dyn datafusion::datasource::TableProvider>> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let micros = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("copy_sql", DataType::Utf8, false),
        Field::new("runs", DataType::Int64, false),
        Field::new("last_run_at", DataType::Utf8, true),
        Field::new("last_status", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("last_sent", DataType::Int64, false),
        Field::new("last_unchanged", DataType::Int64, false),
        Field::new("last_failed", DataType::Int64, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("paused", DataType::Boolean, false),
        Field::new("next_run_at", ts(), true),
        Field::new("last_scheduled_at", ts(), true),
    ]));
    let s: Vec<(&String, &SyncEntry)> = doc.syncs.iter().collect();
    let text = |f: &dyn Fn(&SyncEntry) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            s.iter().map(|(_, e)| f(e)).collect::<Vec<_>>(),
        ))
    };
    let int = |f: &dyn Fn(&SyncEntry) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            s.iter().map(|(_, e)| f(e) as i64),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            s.iter().map(|(n, _)| n.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            s.iter().map(|(_, e)| e.copy_sql.as_str()),
        )),
        int(&|e| e.runs),
        text(&|e| e.last_run_at.clone()),
        text(&|e| e.last_status.clone()),
        text(&|e| e.last_error.clone()),
        int(&|e| e.last_sent),
        int(&|e| e.last_unchanged),
        int(&|e| e.last_failed),
        text(&|e| e.schedule.as_ref().map(super::schedule::display)),
        Arc::new(BooleanArray::from_iter(
            s.iter().map(|(_, e)| Some(e.paused)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                s.iter()
                    .map(|(_, e)| {
                        if e.paused || e.schedule.is_none() {
                            None
                        } else {
                            micros(e.next_run_at.as_deref())
                        }
                    })
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                s.iter()
                    .map(|(_, e)| micros(e.last_scheduled_at.as_deref()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(datafusion::catalog::MemTable::try_new(
        schema,
        vec![vec![batch]],
    )?))
}

/// `text` without its first `n` whitespace-separated words.
fn skip_words(text: &str, n: usize) -> &str {
    let mut rest = text;
    for _ in 0..n {
        rest = next_word(rest).1;
    }
    rest
}

/// The first word of `text` and what follows it.
fn next_word(text: &str) -> (&str, &str) {
    let t = text.trim_start();
    let end = t.find(char::is_whitespace).unwrap_or(t.len());
    t.split_at(end)
}

/// A single-quoted literal at the start of `text` (`''` is a quote) and what follows it.
fn literal(text: &str) -> Result<(String, &str)> {
    let t = text.trim_start();
    let body = t.strip_prefix('\'').ok_or_else(|| {
        TallyError::syntax(
            "syntax error: expected a quoted schedule, e.g. '*/15 * * * *' or '15 minutes'",
        )
    })?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                out.push('\'');
            } else {
                return Ok((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    Err(TallyError::syntax(
        "syntax error: unterminated quoted schedule",
    ))
}

/// An optional `SCHEDULE '<cron>'`, `EVERY '<interval>'` or `AFTER MODEL <model>` at the start of `text`, checked
/// (22023 when it cannot be used), and what follows it.
fn schedule_clause(text: &str) -> Result<(Option<SyncSchedule>, &str)> {
    let (kw, after) = next_word(text);
    if kw.eq_ignore_ascii_case("schedule") {
        let (lit, rest) = literal(after)?;
        Ok((Some(super::schedule::cron(&lit)?), rest))
    } else if kw.eq_ignore_ascii_case("every") {
        let (lit, rest) = literal(after)?;
        Ok((Some(super::schedule::every(&lit)?), rest))
    } else if kw.eq_ignore_ascii_case("after") {
        let (model_kw, after_model) = next_word(after);
        let (name, rest) = next_word(after_model);
        let name = name.trim_end_matches(';');
        if !model_kw.eq_ignore_ascii_case("model") || name.is_empty() {
            return Err(TallyError::syntax(
                "syntax error: expected AFTER MODEL <model>, e.g. AFTER MODEL analytics.cohort",
            ));
        }
        let model = name
            .split('.')
            .map(
                |part| match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                    Some(quoted) => quoted.to_string(),
                    None => part.to_ascii_lowercase(),
                },
            )
            .collect::<Vec<_>>()
            .join(".");
        Ok((Some(SyncSchedule::AfterModel { model }), rest))
    } else {
        Ok((None, text))
    }
}

/// Parses `CREATE SYNC [IF NOT EXISTS] name [SCHEDULE '<cron>' | EVERY '<interval>'] AS COPY ...`,
/// `ALTER SYNC name SET SCHEDULE/SET EVERY/DROP SCHEDULE/PAUSE/RESUME`, `RUN SYNC name`,
/// `DROP SYNC [IF EXISTS] name`.
pub fn parse(text: &str) -> Result<SyncStatement> {
    let syntax = |m: &str| TallyError::syntax(format!("syntax error: {m}"));
    let words: Vec<&str> = text.split_whitespace().collect();
    let verb = words
        .first()
        .map(|w| w.to_ascii_lowercase())
        .unwrap_or_default();
    let ident = |w: &str| -> String {
        let w = w.trim_end_matches(';');
        match w.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => w.to_ascii_lowercase(),
        }
    };
    let mut i = 2;
    match verb.as_str() {
        "create" => {
            let mut if_not_exists = false;
            if words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
                if_not_exists = true;
                i = 5;
            }
            let name = words
                .get(i)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("CREATE SYNC needs a name"))?;
            let (schedule, rest) = schedule_clause(skip_words(text, i + 1))?;
            let (kw, rest) = next_word(rest);
            if !kw.eq_ignore_ascii_case("as") {
                return Err(syntax(
                    "CREATE SYNC name [SCHEDULE '<cron>' | EVERY '<interval>' | AFTER MODEL <model>] AS COPY (query) TO DESTINATION d WITH (...)",
                ));
            }
            let copy_sql = rest.trim().trim_end_matches(';').trim().to_string();
            Ok(SyncStatement::Create {
                name,
                copy_sql,
                if_not_exists,
                schedule,
            })
        }
        "alter" => {
            let name = words
                .get(2)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("ALTER SYNC needs a name"))?;
            let usage = "ALTER SYNC name SET SCHEDULE '<cron>' | SET EVERY '<interval>' | SET AFTER MODEL <model> | DROP SCHEDULE | PAUSE | RESUME";
            let rest = skip_words(text, 3);
            let (first, after) = next_word(rest);
            let action = match first.to_ascii_lowercase().trim_end_matches(';') {
                "set" => match schedule_clause(after)? {
                    (Some(schedule), tail) if tail.trim().trim_end_matches(';').is_empty() => {
                        AlterSync::SetSchedule(schedule)
                    }
                    _ => return Err(syntax(usage)),
                },
                "drop" => {
                    let (second, tail) = next_word(after);
                    if !second
                        .trim_end_matches(';')
                        .eq_ignore_ascii_case("schedule")
                        || !tail.trim().trim_end_matches(';').is_empty()
                    {
                        return Err(syntax(usage));
                    }
                    AlterSync::DropSchedule
                }
                "pause" if after.trim().trim_end_matches(';').is_empty() => AlterSync::Pause,
                "resume" if after.trim().trim_end_matches(';').is_empty() => AlterSync::Resume,
                _ => return Err(syntax(usage)),
            };
            Ok(SyncStatement::Alter { name, action })
        }
        "run" | "drop" => {
            let mut if_exists = false;
            if verb == "drop" && words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
                if_exists = true;
                i = 4;
            }
            let name = words
                .get(i)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("expected a sync name"))?;
            if words.len() > i + 1 {
                return Err(syntax("RUN SYNC name | DROP SYNC [IF EXISTS] name"));
            }
            Ok(if verb == "run" {
                SyncStatement::Run { name }
            } else {
                SyncStatement::Drop { name, if_exists }
            })
        }
        _ => Err(syntax("expected CREATE, ALTER, RUN or DROP SYNC")),
    }
}

/// A parsed sync statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStatement {
    /// `CREATE SYNC`.
    Create {
        /// Sync name.
        name: String,
        /// The `COPY ... TO DESTINATION` text it runs.
        copy_sql: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// `SCHEDULE '...'` or `EVERY '...'`, checked.
        schedule: Option<SyncSchedule>,
    },
    /// `ALTER SYNC`.
    Alter {
        /// Sync name.
        name: String,
        /// What changes.
        action: AlterSync,
    },
    /// `RUN SYNC`.
    Run {
        /// Sync name.
        name: String,
    },
    /// `DROP SYNC`.
    Drop {
        /// Sync name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

/// What `ALTER SYNC` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterSync {
    /// `SET SCHEDULE '<cron>'` or `SET EVERY '<interval>'`: replaces the schedule; the next
    /// run is the first tick from now.
    SetSchedule(SyncSchedule),
    /// `DROP SCHEDULE`: back to `RUN SYNC` only.
    DropSchedule,
    /// `PAUSE`: the scheduler leaves the sync alone (a run in progress finishes).
    Pause,
    /// `RESUME`: scheduled again from the next tick after now (missed ticks are not replayed).
    Resume,
}

/// Runs a sync statement.
pub async fn execute(session: &mut Session, stmt: SyncStatement) -> Result<Output> {
    match stmt {
        SyncStatement::Create {
            name,
            copy_sql,
            if_not_exists,
            schedule,
        } => create(session, name, copy_sql, if_not_exists, schedule).await,
        SyncStatement::Alter { name, action } => alter(session, name, action).await,
        SyncStatement::Run { name } => run(session, name).await,
        SyncStatement::Drop { name, if_exists } => drop(session, name, if_exists).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sync_statements() {
        assert_eq!(
            parse("CREATE SYNC IF NOT EXISTS Out AS COPY (SELECT a AS b FROM t) TO DESTINATION d WITH (key = 'b');")
                .expect("parses"),
            SyncStatement::Create {
                name: "out".into(),
                copy_sql: "COPY (SELECT a AS b FROM t) TO DESTINATION d WITH (key = 'b')".into(),
                if_not_exists: true,
                schedule: None,
            }
        );
        assert_eq!(
            parse("CREATE SYNC out SCHEDULE '*/5 * * * *' AS COPY (SELECT 1 AS k) TO DESTINATION d WITH (key = 'k')")
                .expect("parses"),
            SyncStatement::Create {
                name: "out".into(),
                copy_sql: "COPY (SELECT 1 AS k) TO DESTINATION d WITH (key = 'k')".into(),
                if_not_exists: false,
                schedule: Some(SyncSchedule::Cron { expr: "*/5 * * * *".into() }),
            }
        );
        let every =
            parse("CREATE SYNC out EVERY '15 minutes' AS COPY t TO DESTINATION d").expect("parses");
        assert!(matches!(
            every,
            SyncStatement::Create {
                schedule: Some(SyncSchedule::Every {
                    millis: 900_000,
                    ..
                }),
                ..
            }
        ));
        let bad = parse("CREATE SYNC out SCHEDULE 'every tuesday' AS COPY t TO DESTINATION d")
            .expect_err("bad cron");
        assert_eq!(bad.sqlstate(), "22023");
        assert_eq!(
            parse("ALTER SYNC out SET EVERY '2 hours'").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::SetSchedule(SyncSchedule::Every {
                    text: "2 hours".into(),
                    millis: 7_200_000
                }),
            }
        );
        assert_eq!(
            parse("ALTER SYNC out DROP SCHEDULE;").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::DropSchedule
            }
        );
        assert_eq!(
            parse("alter sync out pause").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::Pause
            }
        );
        assert!(parse("ALTER SYNC out SET SCHEDULE").is_err());
        assert!(parse("ALTER SYNC out RESUME now").is_err());
        assert_eq!(
            parse("RUN SYNC out").expect("parses"),
            SyncStatement::Run { name: "out".into() }
        );
        assert_eq!(
            parse("DROP SYNC IF EXISTS out").expect("parses"),
            SyncStatement::Drop {
                name: "out".into(),
                if_exists: true
            }
        );
    }
}
