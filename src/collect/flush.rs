//! The flusher: moves the write-ahead log into Delta tables in micro-batches.
//!
//! Every `flush_interval_ms`, or as soon as `flush_max_events` records wait, it reads the
//! next records from the log, lays them out as rows per table ([`super::layout`]), and
//! commits one Delta version per table. Each commit carries a Delta application transaction
//! (`app_id` = the log's id, `version` = the last sequence number in it), so after a crash
//! between two table commits, the replay skips, per table, what that table already holds:
//! every record lands exactly once. Only when every table of the micro-batch is committed is
//! the log marked flushed and its old segments deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use datafusion::arrow::datatypes::Schema;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde_json::Value;
use tokio::sync::watch;

use super::Stats;
use super::layout::{self, REJECTED_TABLE, TableRows};
use super::message::Kind;
use super::wal::{Cursor, Record, RecordKind, Wal};
use crate::catalog::{Relation, SchemaEntry, TableEntry, ViewEntry};
use crate::config::CollectConfig;
use crate::engine::Engine;
use crate::error::{Result, TallyError};
use crate::storage::delta::create_table;

struct TableState {
    location: String,
    table: DeltaTable,
    /// The last log sequence number this table holds from this log.
    applied: i64,
}

/// Moves the log into tables until shutdown.
pub struct Flusher {
    engine: Arc<Engine>,
    wal: Arc<Wal>,
    config: CollectConfig,
    stats: Arc<Stats>,
    app_id: String,
    tables: HashMap<(String, String), TableState>,
}

impl Flusher {
    /// A flusher for `wal` into the warehouse of `engine`.
    pub fn new(
        engine: Arc<Engine>,
        wal: Arc<Wal>,
        config: CollectConfig,
        stats: Arc<Stats>,
    ) -> Self {
        let app_id = format!("tally-collect-{}", wal.id());
        Flusher {
            engine,
            wal,
            config,
            stats,
            app_id,
            tables: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true, then flushes what is left (best effort: what stays
    /// in the log is flushed at the next start).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = match self.wal.start_cursor() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the write-ahead log; events stay in it until a restart");
                return;
            }
        };
        let mut durable = self.wal.watch();
        let interval = Duration::from_millis(self.config.flush_interval_ms.max(1));
        let mut failures = 0u32;
        loop {
            let deadline = tokio::time::Instant::now() + interval;
            let stopping = loop {
                let pending = self.wal.durable().seq.saturating_sub(self.wal.flushed());
                if pending as usize >= self.config.flush_max_events
                    || tokio::time::Instant::now() >= deadline
                {
                    break false;
                }
                tokio::select! {
                    _ = durable.changed() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = shutdown.changed() => break true,
                }
            };
            match self.flush_once(cursor).await {
                Ok(next) => {
                    cursor = next;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis((200u64 << failures.min(8)).min(30_000));
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "flushing collected events failed; they stay in the write-ahead log and are retried");
                    if !stopping {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if stopping || *shutdown.borrow() {
                // Drain what is durable, then stop.
                while self.wal.flushed() < self.wal.durable().seq {
                    match self.flush_once(cursor).await {
                        Ok(next) if next != cursor => cursor = next,
                        _ => break,
                    }
                }
                return;
            }
        }
    }

    /// Flushes one micro-batch; returns the cursor after it.
    async fn flush_once(&mut self, cursor: Cursor) -> Result<Cursor> {
        let wal = self.wal.clone();
        let max = self.config.flush_max_events.max(1);
        let (records, next) = tokio::task::spawn_blocking(move || wal.read(cursor, max))
            .await
            .map_err(|e| TallyError::Internal(format!("log reader failed: {e}")))??;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(next);
        };
        let started = std::time::Instant::now();
        let count = records.len();
        self.write(records).await?;
        self.wal.mark_flushed(last)?;
        tracing::debug!(
            events = count,
            last_seq = last,
            ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
        Ok(next)
    }

    async fn write(&mut self, records: Vec<Record>) -> Result<()> {
        let loaded_at = Utc::now();
        // Parse and lay out every record, grouped by (schema, table).
        let mut laid: BTreeMap<(String, String), Vec<(u64, layout::Row)>> = BTreeMap::new();
        let mut per_source: HashMap<String, u64> = HashMap::new();
        for rec in records {
            let schema = rec.source.clone();
            *per_source.entry(schema.clone()).or_default() += 1;
            let value: Value = match serde_json::from_slice(&rec.payload) {
                Ok(v) => v,
                Err(e) => {
                    // The collector wrote this record itself, so this is a bug, not bad input;
                    // keep the bytes where a person can see them.
                    tracing::error!(seq = rec.seq, error = %e, "unreadable log record moved to _rejected");
                    serde_json::json!({"reason_code": "internal", "reason": format!("unreadable log record: {e}"),
                        "raw": String::from_utf8_lossy(&rec.payload)})
                }
            };
            let rows = match (rec.kind, &value) {
                (RecordKind::Message, Value::Object(body)) => {
                    match body
                        .get("type")
                        .and_then(Value::as_str)
                        .and_then(Kind::parse)
                    {
                        Some(kind) => layout::rows_of(kind, body, loaded_at),
                        None => vec![(
                            REJECTED_TABLE.to_string(),
                            layout::rejected_row(
                                &serde_json::json!({
                            "reason_code": "invalid_type", "reason": "message without a known type",
                            "raw": value.to_string()}),
                                loaded_at,
                            ),
                        )],
                    }
                }
                _ => vec![(
                    REJECTED_TABLE.to_string(),
                    layout::rejected_row(&value, loaded_at),
                )],
            };
            for (table, cells) in rows {
                laid.entry((schema.clone(), table))
                    .or_default()
                    .push((rec.seq, cells));
            }
        }

        // Build one batch per table against its current schema, skipping what it holds.
        let mut jobs = Vec::new();
        let doc = self.engine.catalog.refresh().await?;
        for ((schema, table), rows) in laid {
            // A view or external table of the user's under a collected table's name keeps
            // its name; the events go to `<name>_collected` instead of failing the flush.
            let table = match doc.relation(&schema, &table) {
                Some(Relation::Table(_)) | None => table,
                Some(_) => format!("{table}_collected"),
            };
            let key = (schema.clone(), table.clone());
            let state = self.table_state(&schema, &table).await?;
            let (existing, applied) = match &state {
                Some(s) => (
                    s.table
                        .snapshot()?
                        .snapshot()
                        .arrow_schema()
                        .as_ref()
                        .clone(),
                    s.applied,
                ),
                None => (Schema::empty(), 0),
            };
            let mut builder = TableRows::new(&existing);
            for (seq, cells) in rows {
                if (seq as i64) > applied {
                    builder.push_row(cells);
                    builder.last_seq = seq;
                }
            }
            if builder.is_empty() {
                continue;
            }
            jobs.push((key, state, builder));
        }

        let results = futures::future::join_all(jobs.into_iter().map(|(key, state, rows)| {
            let engine = self.engine.clone();
            let app_id = self.app_id.clone();
            async move {
                let r = write_table(&engine, &app_id, &key.0, &key.1, state, rows).await;
                (key, r)
            }
        }))
        .await;
        let mut first_error = None;
        for (key, r) in results {
            match r {
                Ok((state, new_columns)) => {
                    if key.1 == "identifies" && new_columns {
                        let schema = state.table.snapshot()?.snapshot().arrow_schema();
                        if let Err(e) = self.refresh_users_view(&key.0, &schema).await {
                            tracing::warn!(schema = %key.0, error = %e, "cannot update the users view");
                        }
                    }
                    self.tables.insert(key, state);
                }
                Err(e) => {
                    self.tables.remove(&key);
                    first_error.get_or_insert(TallyError::Internal(format!(
                        "writing {}.{}: {e}",
                        key.0, key.1
                    )));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for (source, n) in per_source {
            self.stats.flushed(&source, n);
        }
        Ok(())
    }

    /// The open table `schema.table` with what it holds from this log, or `None` when it
    /// does not exist yet (it is created by the first write).
    async fn table_state(&mut self, schema: &str, table: &str) -> Result<Option<TableState>> {
        let doc = self.engine.catalog.refresh().await?;
        let location = match doc.relation(schema, table) {
            Some(Relation::Table(t)) => t.location.clone(),
            Some(other) => {
                return Err(TallyError::Conflict(format!(
                    "{schema}.{table} is a {}, not a table, so collected events cannot be written to it",
                    other.kind_name()
                )));
            }
            None => {
                self.tables.remove(&(schema.to_string(), table.to_string()));
                return Ok(None);
            }
        };
        let key = (schema.to_string(), table.to_string());
        if let Some(s) = self.tables.remove(&key)
            && s.location == location
        {
            let mut t = s.table;
            t.update_incremental(None).await?;
            let applied = t
                .snapshot()?
                .transaction_version(t.log_store().as_ref(), &self.app_id)
                .await?
                .unwrap_or(0);
            return Ok(Some(TableState {
                location,
                table: t,
                applied,
            }));
        }
        let t = self.engine.tables.latest(&location).await?;
        let applied = t
            .snapshot()?
            .transaction_version(t.log_store().as_ref(), &self.app_id)
            .await?
            .unwrap_or(0);
        Ok(Some(TableState {
            location,
            table: t,
            applied,
        }))
    }

    async fn refresh_users_view(&self, schema: &str, identifies: &Schema) -> Result<()> {
        let sql = layout::users_view_sql(schema, identifies);
        let schema = schema.to_string();
        self.engine
            .catalog
            .mutate(|doc| {
                let entry = doc.schemas.entry(schema.clone()).or_default();
                match entry.relations.get("users") {
                    None | Some(Relation::View(_)) => {
                        entry.relations.insert(
                            "users".into(),
                            Relation::View(ViewEntry {
                                sql: sql.clone(),
                                default_schema: Some(schema.clone()),
                                comment: None,
                                column_comments: Default::default(),
                                created_at: None,
                            }),
                        );
                    }
                    // A table of the user's named `users` is left alone.
                    Some(_) => {}
                }
                Ok(())
            })
            .await
    }
}

/// Commits `rows` into `schema.table` (creating it when absent) with this log's progress.
/// Returns the table after the commit and whether columns were added.
async fn write_table(
    engine: &Arc<Engine>,
    app_id: &str,
    schema: &str,
    table: &str,
    state: Option<TableState>,
    rows: TableRows,
) -> Result<(TableState, bool)> {
    let last_seq = rows.last_seq as i64;
    let adds = rows.adds_columns();
    let batch = rows.finish()?;
    let (location, delta) = match state {
        Some(s) => (s.location, s.table),
        None => create_collected_table(engine, schema, table, batch.schema().as_ref()).await?,
    };
    let commit = CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, last_seq));
    let mut write = delta
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_writer_properties(crate::storage::append::writer_properties())
        .with_commit_properties(commit);
    if adds {
        write = write.with_schema_mode(SchemaMode::Merge);
    }
    let delta = write.await?;
    Ok((
        TableState {
            location,
            table: delta,
            applied: last_seq,
        },
        adds,
    ))
}

/// Creates the Delta table and its catalog entry (and the schema, if the source's schema
/// was dropped while events were waiting: acknowledged events are never thrown away).
async fn create_collected_table(
    engine: &Arc<Engine>,
    schema: &str,
    table: &str,
    columns: &Schema,
) -> Result<(String, DeltaTable)> {
    let wh = engine.warehouse();
    let doc = engine.catalog.refresh().await?;
    let used: std::collections::BTreeSet<&str> = doc.table_locations().collect();
    let mut location = format!("{schema}/{table}/");
    let mut n = 1;
    while used.contains(location.as_str()) || wh_has_files(engine, &location).await {
        n += 1;
        location = format!("{schema}/{table}_{n}/");
    }
    let delta = create_table(&wh.url_of(&location)?, &wh.options, table, columns).await?;
    let (s, t, loc) = (schema.to_string(), table.to_string(), location.clone());
    let created = engine
        .catalog
        .mutate(|doc| {
            let entry: &mut SchemaEntry = doc.schemas.entry(s.clone()).or_default();
            match entry.relations.get(&t) {
                Some(Relation::Table(existing)) => Ok(Some(existing.location.clone())),
                Some(other) => Err(TallyError::Conflict(format!(
                    "{s}.{t} is a {}, not a table",
                    other.kind_name()
                ))),
                None => {
                    entry.relations.insert(
                        t.clone(),
                        Relation::Table(TableEntry {
                            location: loc.clone(),
                            pg_types: Default::default(),
                            primary_key: vec![],
                            comment: None,
                            column_comments: Default::default(),
                        }),
                    );
                    Ok(None)
                }
            }
        })
        .await?;
    match created {
        None => Ok((location, delta)),
        // Someone created the table meanwhile (another server on the same root): use it.
        Some(existing) => {
            let _ = wh.delete_prefix(&location).await;
            let t = engine.tables.latest(&existing).await?;
            Ok((existing, t))
        }
    }
}

async fn wh_has_files(engine: &Arc<Engine>, location: &str) -> bool {
    use futures::StreamExt;
    let wh = engine.warehouse();
    let path = wh.path_of(location);
    wh.store.list(Some(&path)).next().await.is_some()
}
