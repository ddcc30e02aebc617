//! Where statements run: one small trait with two implementations, so the runner is the same
//! whether it drives the engine in-process (`--data`, like `tally sql`) or a running server
//! over the PostgreSQL protocol (`--url`).
//!
//! Each worker thread of a run holds its own [`Connection`] (a session or a socket), because
//! temporary tables and transactions belong to a session.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::TryStreamExt;

use super::error::{ModelError, Result, SqlError};
use crate::engine::Engine;
use crate::statements::{self, Output};

/// What one statement returned: rows as text (queries) and the affected-row count of the
/// command tag (`SELECT 12` after CREATE TABLE AS, `INSERT 0 5`, `MERGE 3`), when it has one.
#[derive(Debug, Clone, Default)]
pub struct StatementResult {
    /// Result rows, every value as PostgreSQL text (`None` for NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows affected or produced, from the command tag.
    pub affected: Option<u64>,
}

/// Opens connections to the warehouse.
#[async_trait]
pub trait Executor: Send + Sync {
    /// A new connection (session) for one worker.
    async fn connect(&self) -> Result<Box<dyn Connection>>;
    /// What the runner is connected to, for the run header (`embedded ./tally-data`).
    fn describe(&self) -> String;
}

/// One session with the warehouse.
#[async_trait]
pub trait Connection: Send {
    /// Runs one statement.
    async fn execute(&mut self, sql: &str) -> std::result::Result<StatementResult, SqlError>;
}

/// The engine in-process: statements go through [`crate::statements::run`], exactly as
/// `tally sql` and the wire front end run them.
pub struct Embedded {
    engine: Arc<Engine>,
    label: String,
}

impl Embedded {
    /// Runs against `engine`; `label` names the warehouse in reports.
    pub fn new(engine: Arc<Engine>, label: impl Into<String>) -> Embedded {
        Embedded {
            engine,
            label: label.into(),
        }
    }
}

#[async_trait]
impl Executor for Embedded {
    async fn connect(&self) -> Result<Box<dyn Connection>> {
        Ok(Box::new(EmbeddedConnection {
            session: self.engine.new_session("tally"),
        }))
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.label)
    }
}

struct EmbeddedConnection {
    session: crate::engine::Session,
}

fn sql_error(e: crate::TallyError) -> SqlError {
    SqlError {
        sqlstate: e.sqlstate().to_string(),
        position: e.position(),
        message: e.to_string(),
    }
}

#[async_trait]
impl Connection for EmbeddedConnection {
    async fn execute(&mut self, sql: &str) -> std::result::Result<StatementResult, SqlError> {
        let (outputs, error) = statements::run(&mut self.session, sql).await;
        let mut result = StatementResult::default();
        for o in outputs {
            match o {
                Output::Rows(stream)
                | Output::CopyOut(statements::copy::CopyOut { stream, .. }) => {
                    let batches: Vec<_> = stream
                        .try_collect()
                        .await
                        .map_err(|e| sql_error(crate::error::unwrap_datafusion(e)))?;
                    let options = FormatOptions::default();
                    for b in &batches {
                        let formatters = b
                            .columns()
                            .iter()
                            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(|e| SqlError {
                                message: e.to_string(),
                                sqlstate: "XX000".into(),
                                position: None,
                            })?;
                        for r in 0..b.num_rows() {
                            result.rows.push(
                                b.columns()
                                    .iter()
                                    .zip(&formatters)
                                    .map(|(c, f)| {
                                        if c.is_null(r) {
                                            None
                                        } else {
                                            Some(f.value(r).to_string())
                                        }
                                    })
                                    .collect(),
                            );
                        }
                    }
                    result.affected = Some(result.rows.len() as u64);
                }
                Output::Command(c) => result.affected = c.rows.map(|r| r as u64),
                Output::CopyIn(ci) => {
                    ci.abort();
                    return Err(SqlError {
                        message: "COPY FROM STDIN is not available to models".into(),
                        sqlstate: "0A000".into(),
                        position: None,
                    });
                }
            }
        }
        match error {
            Some(e) => Err(sql_error(e)),
            None => Ok(result),
        }
    }
}

/// A running server (tally's, or any PostgreSQL) over tokio-postgres.
pub struct Remote {
    url: String,
}

impl Remote {
    /// Connects to `url` (`postgres://user:password@host:port/db`) for each worker.
    pub fn new(url: impl Into<String>) -> Remote {
        Remote { url: url.into() }
    }
}

#[async_trait]
impl Executor for Remote {
    async fn connect(&self) -> Result<Box<dyn Connection>> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| ModelError::Connect(format!("{}: {e}", redact(&self.url))))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "model runner connection ended");
            }
        });
        Ok(Box::new(RemoteConnection { client, task }))
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

struct RemoteConnection {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Connection for RemoteConnection {
    async fn execute(&mut self, sql: &str) -> std::result::Result<StatementResult, SqlError> {
        use tokio_postgres::SimpleQueryMessage as M;
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => SqlError {
                    message: db.message().to_string(),
                    sqlstate: db.code().code().to_string(),
                    position: match db.position() {
                        Some(tokio_postgres::error::ErrorPosition::Original(p)) => {
                            Some(*p as usize)
                        }
                        _ => None,
                    },
                },
                None => SqlError {
                    message: e.to_string(),
                    sqlstate: "08006".into(),
                    position: None,
                },
            })?;
        let mut result = StatementResult::default();
        for m in messages {
            match m {
                M::Row(row) => result.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                M::CommandComplete(n) => result.affected = Some(n),
                _ => {}
            }
        }
        Ok(result)
    }
}
