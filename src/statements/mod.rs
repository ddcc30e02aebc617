//! tally's SQL surface: every statement a client sends is parsed here ([`parse`]), checked
//! against the session's transaction state, and executed by the module for its kind:
//! queries and DML through DataFusion ([`query`]), catalog statements ([`ddl`]),
//! transactions ([`txn`]), settings ([`set_show`]), COPY ([`copy`]) and users ([`users`]).
//! The result is an [`Output`] that the wire layer (or `tally sql`) turns into messages.

pub mod copy;
pub mod copy_in;
pub mod cursor;
pub mod ddl;
pub mod merge;
pub mod names;
pub mod parse;
pub mod query;
pub mod rewrite;
pub mod set_show;
pub mod tokens;
pub mod txn;
pub mod users;

use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::Statement;
use tokio_util::sync::CancellationToken;

use crate::catalog::CatalogDoc;
use crate::engine::Session;
use crate::engine::session::TxnState;
use crate::error::{Result, TallyError};
pub use parse::{Parsed, TallyStatement};

/// How a statement changed the transaction state, for the protocol's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnChange {
    /// A transaction block started.
    Begin,
    /// The transaction block ended (committed or rolled back).
    End,
}

/// A command's completion: its tag (`CREATE TABLE`, `INSERT 0 5`, ...) and side notes.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The command word(s) of the tag.
    pub command: String,
    /// Affected rows, for tags that carry them.
    pub rows: Option<usize>,
    /// The OID field of INSERT tags (always 0).
    pub oid: Option<u32>,
    /// Transaction state change.
    pub txn: Option<TxnChange>,
    /// Run-time parameters whose new values the client must be told (ParameterStatus).
    pub parameter_status: Vec<(String, String)>,
    /// Notices to send before the completion (e.g. "relation already exists, skipping").
    pub notices: Vec<String>,
}

impl Completion {
    /// A plain tag.
    pub fn tag(command: &str) -> Self {
        Completion {
            command: command.to_string(),
            rows: None,
            oid: None,
            txn: None,
            parameter_status: vec![],
            notices: vec![],
        }
    }

    /// A tag with a row count.
    pub fn rows(command: &str, rows: usize) -> Self {
        Completion {
            rows: Some(rows),
            oid: (command == "INSERT").then_some(0),
            ..Completion::tag(command)
        }
    }

    /// Adds a notice.
    pub fn with_notice(mut self, notice: impl Into<String>) -> Self {
        self.notices.push(notice.into());
        self
    }
}

/// What a statement produced.
pub enum Output {
    /// Rows to stream to the client (SELECT, SHOW, EXPLAIN, ...).
    Rows(SendableRecordBatchStream),
    /// A completed command.
    Command(Completion),
    /// `COPY ... FROM STDIN`: the client sends data next.
    CopyIn(copy::CopyIn),
    /// `COPY ... TO STDOUT`: rows to stream in COPY format.
    CopyOut(copy::CopyOut),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(_) => write!(f, "Rows"),
            Output::Command(c) => write!(f, "Command({c:?})"),
            Output::CopyIn(_) => write!(f, "CopyIn"),
            Output::CopyOut(_) => write!(f, "CopyOut"),
        }
    }
}

/// Runs every statement of a query string, stopping at the first error, as PostgreSQL's
/// simple query protocol does. Returns the outputs so far and the error, if any.
pub async fn run(session: &mut Session, sql: &str) -> (Vec<Output>, Option<TallyError>) {
    let parsed = match parse::parse(sql) {
        Ok(p) => p,
        Err(e) => {
            fail_transaction(session);
            return (vec![], Some(e));
        }
    };
    let mut outputs = Vec::with_capacity(parsed.len());
    for p in parsed {
        match run_parsed(session, p).await {
            Ok(o) => outputs.push(o),
            Err(e) => return (outputs, Some(e)),
        }
    }
    (outputs, None)
}

/// Runs one parsed statement with the transaction rules and `statement_timeout`.
pub async fn run_parsed(session: &mut Session, parsed: Parsed) -> Result<Output> {
    let allowed_when_failed = parsed.stmt.ends_transaction() || is_rollback_to(&parsed.stmt);
    let run = begin_statement(session, allowed_when_failed)?;
    let result = guarded(execute(session, parsed), run.deadline, &run.token).await;
    finish_statement(session, run, result)
}

/// A statement in flight: counted as running, with its deadline and cancel token.
pub struct StatementRun {
    _running: crate::engine::RunningGuard,
    deadline: Option<Instant>,
    token: CancellationToken,
}

/// The checks and set-up every statement goes through, whichever protocol sent it: an
/// earlier streaming failure fails the transaction, a failed transaction refuses all but
/// its end, and the statement gets its deadline and a fresh cancel token.
pub fn begin_statement(session: &mut Session, allowed_when_failed: bool) -> Result<StatementRun> {
    note_stream_failure(session);
    if session.txn == TxnState::Failed && !allowed_when_failed {
        return Err(TallyError::Transaction {
            code: "25P02",
            message:
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into(),
        });
    }
    let token = CancellationToken::new();
    *session.cancel.lock() = token.clone();
    Ok(StatementRun {
        _running: session.engine.statement_started(),
        deadline: session.statement_timeout().map(|t| Instant::now() + t),
        token,
    })
}

/// Completes a statement: rows keep streaming under its deadline and token; an error fails
/// the open transaction.
pub fn finish_statement(
    session: &mut Session,
    run: StatementRun,
    result: Result<Output>,
) -> Result<Output> {
    match result {
        Ok(Output::Rows(stream)) => Ok(Output::Rows(guard_stream(
            stream,
            run.deadline,
            run.token,
            session.stream_failed.clone(),
        ))),
        Ok(o) => Ok(o),
        Err(e) => {
            fail_transaction(session);
            Err(e)
        }
    }
}

fn timeout_error() -> TallyError {
    TallyError::Canceled("canceling statement due to statement timeout".into())
}

fn cancel_error() -> TallyError {
    TallyError::Canceled("canceling statement due to user request".into())
}

/// Runs a statement's future until it ends, its deadline passes or the client cancels it.
pub async fn guarded<T>(
    fut: impl std::future::Future<Output = Result<T>>,
    deadline: Option<Instant>,
    token: &CancellationToken,
) -> Result<T> {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = fut => r,
        _ = sleep => Err(timeout_error()),
        _ = token.cancelled() => Err(cancel_error()),
    }
}

/// Moves a result stream onto its own task so that a deadline or a cancel request is
/// honoured even while operators are busy computing, and the connection answers at once.
/// Dropping the task drops the DataFusion stream, which stops its work.
pub fn guard_stream(
    mut stream: SendableRecordBatchStream,
    deadline: Option<Instant>,
    token: CancellationToken,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let (tx, rx) = tokio::sync::mpsc::channel::<datafusion::error::Result<RecordBatch>>(2);
    let producer = tokio::spawn(async move {
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
    });
    let abort = producer.abort_handle();
    let out = futures::stream::unfold(Some((rx, token, abort, failed)), move |state| async move {
        let (mut rx, token, abort, failed) = state?;
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let item = tokio::select! {
            b = rx.recv() => b,
            _ = sleep => Some(Err(DataFusionError::External(Box::new(timeout_error())))),
            _ = token.cancelled() => Some(Err(DataFusionError::External(Box::new(cancel_error())))),
        };
        match item {
            Some(Ok(batch)) => Some((Ok(batch), Some((rx, token, abort, failed)))),
            Some(Err(e)) => {
                abort.abort();
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                Some((Err(e), None))
            }
            None => None,
        }
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, out))
}

fn is_rollback_to(stmt: &TallyStatement) -> bool {
    matches!(stmt, TallyStatement::Sql(s) if matches!(**s, Statement::Rollback { savepoint: Some(_), .. }))
}

/// Applies a failure that happened while the previous statement's rows were streaming.
pub fn note_stream_failure(session: &mut Session) {
    if session
        .stream_failed
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        fail_transaction(session);
    }
}

/// Marks an open transaction as failed after an error.
pub fn fail_transaction(session: &mut Session) {
    if session.txn == TxnState::Active {
        session.txn = TxnState::Failed;
    }
}

async fn execute(session: &mut Session, parsed: Parsed) -> Result<Output> {
    session.catalog.store().refresh().await?;
    match parsed.stmt {
        TallyStatement::CreateExternalTable { sql, stmt } => {
            ddl::create_external_table(session, sql, *stmt).await
        }
        TallyStatement::CreateUser {
            name,
            password,
            superuser,
        } => users::create_user(session, name, password, superuser).await,
        TallyStatement::AlterUser {
            name,
            password,
            superuser,
        } => users::alter_user(session, name, password, superuser).await,
        TallyStatement::DropUser { names, if_exists } => {
            users::drop_users(session, names, if_exists).await
        }
        TallyStatement::Source(stmt) => crate::collect::sources::execute(session, stmt).await,
        TallyStatement::TrackingPlan(stmt) => {
            crate::collect::plans::statements::execute(session, stmt).await
        }
        TallyStatement::IdentityGraph(stmt) => {
            crate::identity::statements::execute(session, stmt).await
        }
        TallyStatement::Activate(stmt) => crate::activate::statements::execute(session, stmt).await,
        TallyStatement::Sync(stmt) => crate::activate::syncs::execute(session, stmt).await,
        TallyStatement::Route(stmt) => crate::route::statements::execute(session, stmt).await,
        TallyStatement::Secret(stmt) => crate::secrets::execute(session, stmt).await,
        TallyStatement::Connection(stmt) => crate::connections::execute(session, stmt).await,
        TallyStatement::Sql(stmt) => execute_sql(session, *stmt).await,
    }
}

async fn execute_sql(session: &mut Session, stmt: Statement) -> Result<Output> {
    use Statement as S;
    match stmt {
        S::Query(_) | S::Explain { .. } | S::ExplainTable { .. } => query::run_query(session, stmt).await,
        S::Insert(_) => query::run_dml(session, stmt, "INSERT").await,
        S::Update(u) if u.from.is_some() => merge::update_from(session, u).await,
        S::Update(u) if merge::has_subquery(u.selection.as_ref()) => merge::update_with_subquery(session, u).await,
        S::Delete(d) if merge::delete_needs_merge(&d) => merge::delete(session, d).await,
        S::Update(_) => query::run_dml(session, stmt, "UPDATE").await,
        S::Delete(_) => query::run_dml(session, stmt, "DELETE").await,
        S::Truncate(_) => query::run_dml(session, stmt, "TRUNCATE TABLE").await.map(|o| match o {
            Output::Command(_) => Output::Command(Completion::tag("TRUNCATE TABLE")),
            other => other,
        }),
        S::Merge(m) => merge::execute(session, m).await,
        S::CreateTable(ct) => ddl::create_table(session, ct).await,
        S::CreateView(cv) => ddl::create_view(session, cv).await,
        S::CreateSchema { schema_name, if_not_exists, .. } => ddl::create_schema(session, schema_name, if_not_exists).await,
        S::Drop { object_type, if_exists, names, cascade, .. } => ddl::drop(session, object_type, if_exists, names, cascade).await,
        S::AlterTable(at) => ddl::alter_table(session, at).await,
        S::AlterView { name, query, .. } => ddl::alter_view(session, name, *query).await,
        S::Comment { object_type, object_name, comment, .. } => ddl::comment(session, object_type, object_name, comment).await,
        S::StartTransaction { .. } => txn::begin(session),
        S::Commit { .. } => txn::commit(session).await,
        S::Rollback { savepoint, .. } => txn::rollback(session, savepoint).await,
        S::Savepoint { name } => txn::savepoint(session, name),
        S::ReleaseSavepoint { name } => txn::release(session, name),
        S::Set(set) => set_show::set(session, set),
        S::ShowVariable { variable } => set_show::show(session, variable).await,
        S::Discard { .. } => set_show::discard(session),
        S::Copy { source, to, target, options, legacy_options, .. } => {
            copy::start(session, source, to, target, options, legacy_options).await
        }
        S::Deallocate { .. } => Ok(Output::Command(Completion::tag("DEALLOCATE"))),
        S::Declare { stmts } => cursor::declare(session, stmts).await,
        S::Fetch { name, direction, .. } => cursor::fetch(session, name, direction).await,
        S::Close { cursor } => cursor::close(session, cursor),
        S::CreateIndex(_) => Err(TallyError::Unsupported(
            "CREATE INDEX is not supported: tally tables are columnar and scanned with statistics, not indexes".into(),
        )),
        S::CreateDatabase { .. } => Err(TallyError::Unsupported(
            "CREATE DATABASE is not supported: a tally server is one database (use CREATE SCHEMA)".into(),
        )),
        other => Err(TallyError::Unsupported(format!(
            "statement not supported: {}",
            statement_kind(&other)
        ))),
    }
}

fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `DROP <object> [IF EXISTS] name [, ...]` on one of the catalog's maps of named objects:
/// removes each name; a missing one is an error, or with IF EXISTS is returned so that the
/// completion can say it was skipped ([`drop_completion`]).
pub fn drop_named<T>(
    map: &mut std::collections::BTreeMap<String, T>,
    names: &[String],
    if_exists: bool,
    kind: &'static str,
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for n in names {
        if map.remove(n).is_none() {
            if !if_exists {
                return Err(TallyError::NotFound {
                    kind,
                    name: n.clone(),
                });
            }
            missing.push(n.clone());
        }
    }
    Ok(missing)
}

/// The completion of a [`drop_named`] DROP: `tag`, with a notice for each skipped name.
pub fn drop_completion(tag: &str, kind: &str, missing: Vec<String>) -> Output {
    let c = missing.into_iter().fold(Completion::tag(tag), |c, n| {
        c.with_notice(format!("{kind} \"{n}\" does not exist, skipping"))
    });
    Output::Command(c)
}

/// Applies a catalog change: to the transaction's staged copy inside a transaction block,
/// else committed at once as a new catalog version.
pub async fn change_catalog<T>(
    session: &Session,
    change: impl Fn(&mut CatalogDoc) -> Result<T>,
) -> Result<T> {
    if session.catalog.in_transaction() {
        session.catalog.stage(change)
    } else {
        session.catalog.store().mutate(change).await
    }
}
