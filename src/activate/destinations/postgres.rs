//! `postgres`: rows into a table of a PostgreSQL database over a real connection.
//!
//! Each batch is one statement with the rows as one JSON parameter, which PostgreSQL turns
//! into typed rows of the target table with `json_populate_recordset(NULL::table, $1)`:
//!
//! - `insert`: `INSERT INTO t (cols) SELECT cols FROM json_populate_recordset(...)`;
//! - `upsert` and `mirror`: the same `... ON CONFLICT (key) DO UPDATE SET col = EXCLUDED.col`
//!   (the key needs a unique index; within a batch the last row of a key wins, as it would
//!   have sequentially);
//! - `update`: `UPDATE t SET ... FROM json_populate_recordset(...) s WHERE t.key = s.key`;
//! - `mirror` also notes every key the query returned in a temporary table of the session
//!   and, once the whole query was sent, deletes the rows of `t` whose key is not there;
//! - removal by key (mirror syncs): `DELETE FROM t WHERE key = ANY (SELECT key FROM
//!   json_populate_recordset(NULL::t, $1))`, the keys typed by the table's own key column
//!   (so an index on it is used); a key already gone deletes nothing, so a retry is harmless,
//!   and a constraint that forbids the delete (a foreign key) refuses the keys concerned.
//!
//! Upserts are idempotent, so a retried batch never duplicates. Errors: data and constraint
//! errors (classes 22 and 23) reject the batch (split to find the rows), connection errors
//! and classes 08, 40, 53, 57 are retried on a new connection, anything else (a missing table
//! or column, privileges) stops the COPY.
//!
//! Options: `table` (`[schema.]name`), and `url` (`postgres://...`) or `host`, `port`,
//! `user`, `password` (or `password_env`), `dbname`, `sslmode` (only `disable` for now).

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{Batch, Destination, Mode, Options, SendError, truncate};
use crate::error::{Result, TallyError};

/// Temporary table of the keys a mirror run saw.
const MIRROR_KEYS: &str = "_tally_mirror_keys";

/// A PostgreSQL destination.
pub struct Postgres {
    name: String,
    config: tokio_postgres::Config,
    table: String,
    client: Mutex<Option<Client>>,
    /// A connection was replaced during a mirror run: its temporary key table is gone.
    mirror_broken: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("name", &self.name)
            .field("table", &self.table)
            .finish()
    }
}

/// `"a"."b"` from `a.b`, quotes doubled.
fn quote_table(t: &str) -> String {
    t.split('.')
        .map(|p| quote(p.trim_matches('"')))
        .collect::<Vec<_>>()
        .join(".")
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Postgres {
    /// Reads the connection options (the connection opens at the first batch).
    pub fn new(opts: &Options) -> Result<Self> {
        let invalid = |message: String| TallyError::InvalidValue {
            code: "22023",
            message,
        };
        let mut config = match opts.get("url")? {
            Some(u) => u.parse::<tokio_postgres::Config>().map_err(|_| {
                invalid(format!(
                    "destination {}: url is not a PostgreSQL connection URL",
                    opts.name()
                ))
            })?,
            None => tokio_postgres::Config::new(),
        };
        if let Some(h) = opts.get("host")? {
            config.host(&h);
        }
        if config.get_hosts().is_empty() {
            config.host("127.0.0.1");
        }
        if let Some(p) = opts.number("port")? {
            let p = u16::try_from(p).map_err(|_| invalid(format!("port {p} is out of range")))?;
            config.port(p);
        }
        if let Some(u) = opts.get("user")? {
            config.user(&u);
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        if let Some(p) = opts.get("password")? {
            config.password(p);
        }
        if let Some(d) = opts.get("dbname")? {
            config.dbname(&d);
        }
        if let Some(s) = opts.get("sslmode")?
            && s != "disable"
        {
            return Err(TallyError::Unsupported(format!(
                "sslmode {s} is not supported yet by postgres destinations; use sslmode = 'disable'"
            )));
        }
        config.application_name("tally");
        Ok(Postgres {
            name: opts.name().to_string(),
            config,
            table: quote_table(&opts.require("table")?),
            client: Mutex::new(None),
            mirror_broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn classify(&self, e: tokio_postgres::Error) -> SendError {
        let Some(db) = e.as_db_error() else {
            return SendError::Transient {
                message: format!("destination {}: {e}", self.name),
                retry_after: None,
            };
        };
        let code = db.code().code();
        let message = format!("destination {}: {} ({code})", self.name, db.message());
        match &code[..2] {
            "22" | "23" => SendError::Rejected {
                status: None,
                body: truncate(&format!(
                    "{code}: {}{}",
                    db.message(),
                    db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
                )),
            },
            "08" | "40" | "53" | "57" => SendError::Transient {
                message,
                retry_after: None,
            },
            "28" => SendError::Fatal {
                code: "28000",
                message,
            },
            "42" => SendError::Fatal {
                code: match code {
                    "42P01" => "42P01",
                    "42703" => "42703",
                    "42501" => "42501",
                    _ => "42000",
                },
                message,
            },
            _ => SendError::Fatal {
                code: "58000",
                message,
            },
        }
    }

    /// The open connection, or a new one.
    async fn client<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a Client, SendError> {
        let alive = slot.as_ref().is_some_and(|c| !c.is_closed());
        if !alive {
            if slot.take().is_some() {
                // The previous connection died: a mirror run's key table died with it.
                self.mirror_broken
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let (client, conn) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| self.classify(e))?;
            let name = self.name.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(destination = name, error = %e, "postgres destination connection ended");
                }
            });
            *slot = Some(client);
        }
        slot.as_ref().ok_or_else(|| SendError::Transient {
            message: format!("destination {}: no connection", self.name),
            retry_after: None,
        })
    }

    async fn run(&self, sql: &str, param: &Value) -> Result<u64, SendError> {
        let mut slot = self.client.lock().await;
        let client = self.client(&mut slot).await?;
        match client
            .execute(sql, &[param as &(dyn tokio_postgres::types::ToSql + Sync)])
            .await
        {
            Ok(n) => Ok(n),
            Err(e) => {
                let err = self.classify(e);
                if matches!(err, SendError::Transient { .. }) {
                    *slot = None;
                    self.mirror_broken
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Destination for Postgres {
    async fn begin(&self, _copy_id: &str, mode: Mode, key: Option<&str>) -> Result<(), SendError> {
        let mut slot = self.client.lock().await;
        let client = self.client(&mut slot).await?;
        self.mirror_broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Checks the table exists (and, for a mirror, prepares the key table).
        client
            .execute(&format!("SELECT 1 FROM {} LIMIT 0", self.table), &[])
            .await
            .map_err(|e| self.classify(e))?;
        if mode == Mode::Mirror {
            let key = key.ok_or_else(|| SendError::Fatal {
                code: "22023",
                message: "mirror mode needs key = '<column>'".into(),
            })?;
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS pg_temp.{MIRROR_KEYS}; CREATE TEMP TABLE {MIRROR_KEYS} (k text PRIMARY KEY); SELECT {} FROM {} LIMIT 0",
                    quote(key),
                    self.table
                ))
                .await
                .map_err(|e| self.classify(e))?;
        }
        Ok(())
    }

    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let Some(first) = batch.records.first() else {
            return Ok(());
        };
        let cols: Vec<String> = first.fields.keys().map(|c| quote(c)).collect();
        let list = cols.join(", ");
        let t = &self.table;
        let source = format!("json_populate_recordset(NULL::{t}, $1::json)");
        let key = batch.key.map(quote);
        let rows: Vec<Value> = match (batch.mode, batch.key) {
            // One row per key: the last one, as sequential upserts would leave it.
            (Mode::Upsert | Mode::Mirror | Mode::Update, Some(k)) => {
                let mut last = std::collections::HashMap::new();
                for (i, r) in batch.records.iter().enumerate() {
                    last.insert(r.fields.get(k).map(Value::to_string), i);
                }
                batch
                    .records
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| last.get(&r.fields.get(k).map(Value::to_string)) == Some(i))
                    .map(|(_, r)| Value::Object(r.fields.clone()))
                    .collect()
            }
            _ => batch
                .records
                .iter()
                .map(|r| Value::Object(r.fields.clone()))
                .collect(),
        };
        let sql = match (batch.mode, key) {
            (Mode::Insert, _) => format!("INSERT INTO {t} ({list}) SELECT {list} FROM {source}"),
            (Mode::Upsert | Mode::Mirror, Some(k)) => {
                let sets: Vec<String> = cols
                    .iter()
                    .filter(|c| **c != k)
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect();
                if sets.is_empty() {
                    format!(
                        "INSERT INTO {t} ({list}) SELECT {list} FROM {source} ON CONFLICT ({k}) DO NOTHING"
                    )
                } else {
                    format!(
                        "INSERT INTO {t} ({list}) SELECT {list} FROM {source} ON CONFLICT ({k}) DO UPDATE SET {}",
                        sets.join(", ")
                    )
                }
            }
            (Mode::Update, Some(k)) => {
                let sets: Vec<String> = cols
                    .iter()
                    .filter(|c| **c != k)
                    .map(|c| format!("{c} = s.{c}"))
                    .collect();
                if sets.is_empty() {
                    return Ok(());
                }
                format!(
                    "UPDATE {t} AS d SET {} FROM {source} AS s WHERE d.{k} = s.{k}",
                    sets.join(", ")
                )
            }
            (_, None) => {
                return Err(SendError::Fatal {
                    code: "22023",
                    message: format!("mode {} needs key = '<column>'", batch.mode.as_str()),
                });
            }
        };
        self.run(&sql, &Value::Array(rows)).await.map(|_| ())
    }

    async fn remove(&self, _copy_id: &str, key: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (t, k) = (&self.table, quote(key));
        let sql = format!(
            "DELETE FROM {t} WHERE {k} = ANY (SELECT {k} FROM json_populate_recordset(NULL::{t}, $1::json))"
        );
        let rows = Value::Array(
            keys.iter()
                .map(|v| {
                    let mut o = serde_json::Map::new();
                    o.insert(key.to_string(), Value::from(v.as_str()));
                    Value::Object(o)
                })
                .collect(),
        );
        self.run(&sql, &rows).await.map(|_| ())
    }

    async fn note_keys(&self, _copy_id: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO pg_temp.{MIRROR_KEYS} SELECT DISTINCT k FROM json_array_elements_text($1::json) AS k ON CONFLICT DO NOTHING"
        );
        let keys = Value::Array(keys.iter().map(|k| Value::from(k.as_str())).collect());
        self.run(&sql, &keys).await.map(|_| ())
    }

    async fn finish(
        &self,
        _copy_id: &str,
        mode: Mode,
        key: Option<&str>,
    ) -> Result<u64, SendError> {
        if mode != Mode::Mirror {
            return Ok(0);
        }
        if self.mirror_broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SendError::Fatal {
                code: "08006",
                message: format!(
                    "destination {}: the connection was lost during a mirror COPY, so rows that left the query were not removed; every row was sent, run the COPY again to remove them",
                    self.name
                ),
            });
        }
        let Some(k) = key else {
            return Ok(0);
        };
        let k = quote(k);
        let sql = format!(
            "DELETE FROM {} AS d WHERE NOT EXISTS (SELECT 1 FROM pg_temp.{MIRROR_KEYS} m WHERE m.k = d.{k}::text)",
            self.table
        );
        let mut slot = self.client.lock().await;
        let client = self.client(&mut slot).await?;
        let removed = client
            .execute(&sql, &[])
            .await
            .map_err(|e| self.classify(e))?;
        let _ = client
            .batch_execute(&format!("DROP TABLE IF EXISTS pg_temp.{MIRROR_KEYS}"))
            .await;
        Ok(removed)
    }
}
