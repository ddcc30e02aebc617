//! Read-only attachment of PostgreSQL and MySQL/MariaDB tables as external tables:
//!
//! ```sql
//! CREATE EXTERNAL TABLE app_users STORED AS POSTGRES
//!   LOCATION 'postgres://app@db.internal:5432/app' OPTIONS ('table' 'public.users', 'password_env' 'APP_DB_PASSWORD');
//! CREATE EXTERNAL TABLE shop_orders STORED AS MYSQL
//!   LOCATION 'mysql://root@127.0.0.1:3306/shop' OPTIONS ('table' 'orders');
//! INSERT INTO warehouse.users SELECT id, email FROM app_users WHERE plan = 'pro';
//! ```
//!
//! The statement goes through tally's usual `CREATE EXTERNAL TABLE` path and is kept in the
//! catalog under the warehouse root, so the attachment survives a restart; the table
//! factories registered here ([`register_factories`]) turn it into an [`AttachedTable`] each
//! time it is used. Creating it connects and reads the remote columns, so a wrong address,
//! bad credentials (08001 / 28000) or a missing table (42P01) fail the CREATE.
//!
//! A scan sends one `SELECT` with the needed columns, the filters that translate
//! ([`filters`]) and the limit, and streams the rows back as record batches of
//! [`BATCH_ROWS`] rows through a channel of two batches, so memory stays bounded whatever
//! the table's size. Pushed filters are still checked by DataFusion (they are `Inexact`),
//! so a remote collation that compares differently can only send extra rows, never lose
//! any. Every write (INSERT, UPDATE, DELETE, TRUNCATE) fails with 25006; `DROP TABLE`
//! removes the attachment only.
//!
//! Values travel as text in one canonical form per type ([`values`]), which keeps the
//! conversion to Arrow one piece of code for both engines. Passwords come from the URL or
//! from the environment variable named by `password_env`; neither is ever shown in an
//! error or a log.

pub mod filters;
pub mod mysql;
pub mod postgres;
pub mod values;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use crate::error::{Result, TallyError};
use values::{Column, Kind};

/// Rows per record batch read from a remote table.
pub const BATCH_ROWS: usize = 8192;
/// How long a remote table's columns are reused before they are read again: each query
/// re-plans the stored `CREATE EXTERNAL TABLE`, and one round trip per query for the
/// columns would be wasted.
const COLUMNS_TTL: Duration = Duration::from_secs(30);

/// The database engines tables can be attached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// PostgreSQL (`STORED AS POSTGRES`).
    Postgres,
    /// MySQL or MariaDB (`STORED AS MYSQL`).
    Mysql,
}

impl Engine {
    /// The `STORED AS` name.
    pub fn stored_as(self) -> &'static str {
        match self {
            Engine::Postgres => "POSTGRES",
            Engine::Mysql => "MYSQL",
        }
    }

    /// Quotes an identifier for this engine.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Engine::Postgres => format!("\"{}\"", ident.replace('"', "\"\"")),
            Engine::Mysql => format!("`{}`", ident.replace('`', "``")),
        }
    }
}

/// Whether `STORED AS <file_type>` names an attached database rather than files.
pub fn is_attached_type(file_type: &str) -> bool {
    matches!(
        file_type.to_ascii_uppercase().as_str(),
        "POSTGRES" | "POSTGRESQL" | "MYSQL" | "MARIADB"
    )
}

/// Registers the `POSTGRES` and `MYSQL` table factories (with `POSTGRESQL` and `MARIADB`
/// as aliases) on `ctx`.
pub fn register_factories(ctx: &SessionContext) {
    let state = ctx.state_ref();
    let mut state = state.write();
    let factories = state.table_factories_mut();
    for (name, engine) in [
        ("POSTGRES", Engine::Postgres),
        ("POSTGRESQL", Engine::Postgres),
        ("MYSQL", Engine::Mysql),
        ("MARIADB", Engine::Mysql),
    ] {
        factories.insert(name.to_string(), Arc::new(AttachFactory::new(engine)));
    }
}

/// Where and how to connect, with the password resolved (never shown: see [`Self::shown`]).
#[derive(Clone)]
pub struct Remote {
    /// Engine.
    pub engine: Engine,
    /// The connection URL as given (may hold a password).
    pub url: url::Url,
    /// The password from `password_env`, overriding the URL's.
    pub password: Option<String>,
    /// Schema (database for MySQL) of the table, if qualified.
    pub schema: Option<String>,
    /// Table name.
    pub table: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.shown())
    }
}

impl Remote {
    /// `url#table` with the password replaced by `***`, for messages.
    pub fn shown(&self) -> String {
        format!(
            "{} table {}",
            super::redact_url(&self.url),
            self.table_text()
        )
    }

    /// The table name as written.
    pub fn table_text(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// The table name quoted for the engine.
    pub fn quoted_table(&self) -> String {
        match &self.schema {
            Some(s) => format!(
                "{}.{}",
                self.engine.quote(s),
                self.engine.quote(&self.table)
            ),
            None => self.engine.quote(&self.table),
        }
    }

    /// The secrets a message must not show.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.password.iter().cloned().collect();
        if let Some(p) = self.url.password() {
            out.push(p.to_string());
            if let Ok(d) = urlencoding_decode(p) {
                out.push(d);
            }
        }
        out
    }

    /// An error about this remote table, scrubbed of secrets.
    pub fn error(&self, code: &'static str, what: impl std::fmt::Display) -> TallyError {
        TallyError::Remote {
            code,
            message: super::scrub(what.to_string(), &self.secrets()),
        }
    }
}

fn urlencoding_decode(s: &str) -> std::result::Result<String, ()> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or(())
}

fn invalid(message: impl Into<String>) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message: message.into(),
    }
}

/// Reads the location and options of `CREATE EXTERNAL TABLE ... STORED AS POSTGRES|MYSQL`.
pub fn remote_of(engine: Engine, cmd: &CreateExternalTable) -> Result<Remote> {
    let mut options: HashMap<String, String> = HashMap::new();
    for (k, v) in &cmd.options {
        let k = k.strip_prefix("format.").unwrap_or(k).to_ascii_lowercase();
        options.insert(k, v.clone());
    }
    for k in options.keys() {
        if !matches!(k.as_str(), "table" | "password_env") {
            return Err(invalid(format!(
                "unknown option \"{k}\" for STORED AS {}; options: table, password_env",
                engine.stored_as()
            )));
        }
    }
    let location = match cmd.locations.as_slice() {
        [one] => one.as_str(),
        _ => {
            return Err(invalid(format!(
                "STORED AS {} takes exactly one LOCATION",
                engine.stored_as()
            )));
        }
    };
    let url = url::Url::parse(location).map_err(|_| {
        invalid(format!(
            "STORED AS {} needs a LOCATION like {}",
            engine.stored_as(),
            match engine {
                Engine::Postgres => "'postgres://user@host:5432/database'",
                Engine::Mysql => "'mysql://user@host:3306/database'",
            }
        ))
    })?;
    let schemes: &[&str] = match engine {
        Engine::Postgres => &["postgres", "postgresql"],
        Engine::Mysql => &["mysql", "mariadb"],
    };
    if !schemes.contains(&url.scheme()) {
        return Err(invalid(format!(
            "STORED AS {} needs a {}:// LOCATION, not {}://",
            engine.stored_as(),
            schemes[0],
            url.scheme()
        )));
    }
    let table = options.get("table").ok_or_else(|| {
        invalid(format!(
            "STORED AS {} needs OPTIONS ('table' '<remote table>')",
            engine.stored_as()
        ))
    })?;
    let (schema, table) = match table.split_once('.') {
        Some((s, t)) => (Some(s.trim().to_string()), t.trim().to_string()),
        None => (None, table.trim().to_string()),
    };
    let password = options
        .get("password_env")
        .map(|var| super::secret_from_env("password_env", var))
        .transpose()?;
    Ok(Remote {
        engine,
        url,
        password,
        schema,
        table,
    })
}

/// Remote columns by URL and table, with when they were read.
type ColumnCache = Mutex<HashMap<String, (Instant, Arc<Vec<Column>>)>>;

/// Makes [`AttachedTable`]s for one engine; remembers remote columns for [`COLUMNS_TTL`].
#[derive(Debug)]
pub struct AttachFactory {
    engine: Engine,
    columns: ColumnCache,
}

impl AttachFactory {
    /// A factory for `engine`.
    pub fn new(engine: Engine) -> Self {
        AttachFactory {
            engine,
            columns: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl TableProviderFactory for AttachFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DFResult<Arc<dyn TableProvider>> {
        let remote = remote_of(self.engine, cmd)?;
        let key = format!("{}#{}", remote.url, remote.table_text());
        let cached = self
            .columns
            .lock()
            .get(&key)
            .filter(|(at, _)| at.elapsed() < COLUMNS_TTL)
            .map(|(_, c)| c.clone());
        let columns = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(match self.engine {
                    Engine::Postgres => postgres::columns(&remote).await?,
                    Engine::Mysql => mysql::columns(&remote).await?,
                });
                self.columns.lock().insert(key, (Instant::now(), c.clone()));
                c
            }
        };
        if !cmd.schema.fields().is_empty() {
            return Err(invalid(format!(
                "STORED AS {} reads the columns from the remote table; leave the column list out",
                self.engine.stored_as()
            ))
            .into());
        }
        Ok(Arc::new(AttachedTable::new(remote, columns)))
    }
}

/// A remote table, read-only.
#[derive(Debug)]
pub struct AttachedTable {
    remote: Arc<Remote>,
    columns: Arc<Vec<Column>>,
    schema: SchemaRef,
}

impl AttachedTable {
    /// A table over `remote` with its `columns`.
    pub fn new(remote: Remote, columns: Arc<Vec<Column>>) -> Self {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.kind.arrow_type(), true))
                .collect::<Vec<_>>(),
        ));
        AttachedTable {
            remote: Arc::new(remote),
            columns,
            schema,
        }
    }

    fn read_only(&self, what: &str) -> DataFusionError {
        TallyError::Remote {
            code: "25006",
            message: format!(
                "cannot {what} attached table {} ({}): attached {} tables are read-only",
                self.remote.table_text(),
                super::redact_url(&self.remote.url),
                self.remote.engine.stored_as()
            ),
        }
        .into()
    }
}

#[async_trait]
impl TableProvider for AttachedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if filters::to_sql(f, self.remote.engine, &self.columns).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let picked: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let cols: Vec<Column> = picked.iter().map(|i| self.columns[*i].clone()).collect();
        let schema = Arc::new(self.schema.project(&picked)?);
        let engine = self.remote.engine;
        let select = if cols.is_empty() {
            "1".to_string()
        } else {
            cols.iter()
                .map(|c| c.kind.select_text(engine, &engine.quote(&c.name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let wheres: Vec<String> = filters
            .iter()
            .filter_map(|f| filters::to_sql(f, engine, &self.columns))
            .collect();
        let mut sql = format!("SELECT {select} FROM {}", self.remote.quoted_table());
        if !wheres.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wheres.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        tracing::debug!(remote = %self.remote.shown(), %sql, "attached table scan");
        let part = Arc::new(RemotePartition {
            remote: self.remote.clone(),
            kinds: cols.iter().map(|c| c.kind.clone()).collect(),
            schema: schema.clone(),
            sql,
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![part],
            None,
            vec![],
            false,
            limit,
        )?))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("INSERT INTO"))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("DELETE FROM"))
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("UPDATE"))
    }

    async fn truncate(&self, _state: &dyn Session) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("TRUNCATE"))
    }
}

/// One scan's query, run when the plan executes.
#[derive(Debug)]
struct RemotePartition {
    remote: Arc<Remote>,
    kinds: Vec<Kind>,
    schema: SchemaRef,
    sql: String,
}

impl PartitionStream for RemotePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        // Two batches in flight: the reader runs one batch ahead of the consumer, and
        // stops (closing the connection, which ends the remote query) when the consumer
        // drops the stream.
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 2);
        let tx = builder.tx();
        let remote = self.remote.clone();
        let kinds = self.kinds.clone();
        let schema = self.schema.clone();
        let sql = self.sql.clone();
        builder.spawn(async move {
            let out = values::BatchSender::new(tx, schema, kinds);
            let result = match remote.engine {
                Engine::Postgres => postgres::stream(&remote, &sql, out).await,
                Engine::Mysql => mysql::stream(&remote, &sql, out).await,
            };
            result.map_err(DataFusionError::from)
        });
        builder.build()
    }
}
