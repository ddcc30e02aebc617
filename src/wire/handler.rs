//! pgwire handlers for one connection. Each connection owns its [`Session`]; the simple and
//! extended query protocols and COPY all go through [`crate::statements`], and every error
//! leaves here as an ErrorResponse with the SQLSTATE [`TallyError::sqlstate`] chose.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{DataRow, NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Describe, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::startup::ParameterStatus;
use pgwire::types::format::FormatOptions;
use tokio::sync::Mutex;

use super::auth::TallyStartup;
use super::cancel::{CancelRegistry, Registration, TallyCancel};
use crate::engine::{Engine, Session};
use crate::error::{TallyError, unwrap_datafusion};
use crate::statements::copy::{CopyIn, CopyOut};
use crate::statements::query::{Prepared, execute_prepared, prepare};
use crate::statements::{self, Completion, Output, TxnChange};

/// The session slot of a connection; the session is created on the first statement, once
/// the user is known.
#[derive(Clone)]
struct SessionSlot {
    engine: Arc<Engine>,
    session: Arc<Mutex<Option<Session>>>,
    registry: Arc<CancelRegistry>,
    registration: Arc<parking_lot::Mutex<Option<Registration>>>,
}

impl SessionSlot {
    async fn lock<C: ClientInfo>(&self, client: &C) -> tokio::sync::MappedMutexGuard<'_, Session> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            let user = client
                .metadata()
                .get("user")
                .cloned()
                .unwrap_or_else(|| "tally".into());
            let mut s = self.engine.new_session(&user);
            if let Some(app) = client.metadata().get("application_name") {
                let _ = s.set("application_name", app);
            }
            let (pid, secret) = client.pid_and_secret_key();
            *self.registration.lock() = Some(self.registry.register(
                pid,
                secret.to_bytes(),
                s.cancel.clone(),
            ));
            *guard = Some(s);
        }
        tokio::sync::MutexGuard::map(guard, |s| s.as_mut().expect("session was just created"))
    }
}

/// The handlers of one connection.
pub struct ConnectionHandlers {
    query: Arc<QueryHandler>,
    startup: Arc<TallyStartup>,
    cancel: Arc<TallyCancel>,
}

impl ConnectionHandlers {
    /// Handlers for a new connection from `addr`.
    pub fn new(
        engine: Arc<Engine>,
        manager: Arc<ConnectionManager>,
        registry: Arc<CancelRegistry>,
        addr: SocketAddr,
    ) -> Self {
        tracing::debug!(%addr, "new connection");
        let slot = SessionSlot {
            engine: engine.clone(),
            session: Arc::new(Mutex::new(None)),
            registry: registry.clone(),
            registration: Arc::new(parking_lot::Mutex::new(None)),
        };
        ConnectionHandlers {
            query: Arc::new(QueryHandler {
                slot: slot.clone(),
                parser: Arc::new(TallyParser { slot }),
                copy: Arc::new(Mutex::new(None)),
                copy_error: Arc::new(Mutex::new(None)),
            }),
            startup: Arc::new(TallyStartup::new(engine, manager.clone())),
            cancel: Arc::new(TallyCancel {
                inner: DefaultCancelHandler::new(manager),
                registry,
            }),
        }
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.query.clone()
    }
    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        tracing::debug!(error = %error, "statement failed");
    }
}

/// Turns a tally error into the protocol's ErrorResponse fields.
pub fn error_info(e: &TallyError) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), e.sqlstate().into(), e.to_string());
    info.position = e.position().map(|p| p.to_string());
    info
}

fn pg_error(e: TallyError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

/// Simple, extended and COPY handling for one connection.
pub struct QueryHandler {
    slot: SessionSlot,
    parser: Arc<TallyParser>,
    copy: Arc<Mutex<Option<CopyIn>>>,
    /// An error found while COPY data was still arriving; PostgreSQL reports it at CopyDone.
    copy_error: Arc<Mutex<Option<TallyError>>>,
}

async fn send_side_messages<C>(client: &mut C, c: &Completion) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for n in &c.notices {
        let info = ErrorInfo::new("NOTICE".into(), "00000".into(), n.clone());
        client
            .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                info,
            )))
            .await?;
    }
    for (k, v) in &c.parameter_status {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                k.clone(),
                v.clone(),
            )))
            .await?;
    }
    Ok(())
}

type RowIter = Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync>;

fn rows_response(
    stream: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
    opts: Arc<FormatOptions>,
) -> PgWireResult<Response> {
    let schema = stream.schema();
    let fields = Arc::new(super::encode::fields(&schema, format, Some(opts))?);
    let presenting = super::encode::needs_presenting(&schema, &fields);
    let f = fields.clone();
    let rows = stream
        .map(move |batch: datafusion::error::Result<RecordBatch>| {
            let it: RowIter = match batch {
                Ok(b) => encode_batch(b, &f, presenting),
                Err(e) => Box::new(std::iter::once(Err(pg_error(unwrap_datafusion(e))))),
            };
            stream::iter(it)
        })
        .flatten();
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

/// A batch as DataRows: column by column from the Arrow buffers where every column allows
/// it ([`super::values`]), else through arrow-pg after [`super::encode::present`].
fn encode_batch(b: RecordBatch, fields: &Arc<Vec<FieldInfo>>, presenting: bool) -> RowIter {
    let fail = |e: TallyError| -> RowIter { Box::new(std::iter::once(Err(pg_error(e)))) };
    match super::values::data_rows(b.columns(), b.num_rows(), fields) {
        Some(Ok(rows)) => Box::new(rows.into_iter().map(Ok)),
        Some(Err(e)) => fail(e.into()),
        None if presenting => match super::encode::present(b, fields) {
            Ok(b) => arrow_pg::datatypes::encode_recordbatch(fields.clone(), b),
            Err(e) => fail(unwrap_datafusion(e.into())),
        },
        None => arrow_pg::datatypes::encode_recordbatch(fields.clone(), b),
    }
}

fn copy_out_response(out: CopyOut) -> Response {
    let columns = out.stream.schema().fields().len();
    let header = out.header();
    let format = out.format.clone();
    let rows = out
        .stream
        .map(move |batch| -> Vec<PgWireResult<CopyData>> {
            match batch
                .map_err(unwrap_datafusion)
                .and_then(|b| CopyOut::encode(&format, &b))
            {
                Ok(rows) => rows.into_iter().map(|r| Ok(CopyData::new(r))).collect(),
                Err(e) => vec![Err(pg_error(e))],
            }
        })
        .flat_map(stream::iter);
    // The header rides in the first row's message: clients and pgwire count rows by message.
    let header = Arc::new(parking_lot::Mutex::new(header));
    let leftover = header.clone();
    let rows = rows.map(move |r| match (header.lock().take(), r) {
        (Some(h), Ok(d)) => {
            let mut joined = bytes::BytesMut::with_capacity(h.len() + d.data.len());
            joined.extend_from_slice(&h);
            joined.extend_from_slice(&d.data);
            Ok(CopyData::new(joined.freeze()))
        }
        (_, r) => r,
    });
    // With no rows at all, the header goes out alone.
    let data = rows.chain(
        stream::once(async move { leftover.lock().take() })
            .filter_map(|h| async move { h.map(|h| Ok(CopyData::new(h))) }),
    );
    Response::CopyOut(CopyResponse::new(0, columns, data))
}

impl QueryHandler {
    async fn respond<C>(
        &self,
        client: &mut C,
        output: Output,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match output {
            Output::Rows(stream) => {
                let opts = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                rows_response(stream, format, opts)
            }
            Output::Command(c) => {
                send_side_messages(client, &c).await?;
                let mut tag = Tag::new(&c.command);
                if let Some(oid) = c.oid {
                    tag = tag.with_oid(oid);
                }
                if let Some(rows) = c.rows {
                    tag = tag.with_rows(rows);
                }
                Ok(match c.txn {
                    Some(TxnChange::Begin) => Response::TransactionStart(tag),
                    Some(TxnChange::End) => Response::TransactionEnd(tag),
                    None => Response::Execution(tag),
                })
            }
            Output::CopyIn(ci) => {
                let columns = ci.columns;
                *self.copy.lock().await = Some(ci);
                Ok(Response::CopyIn(CopyResponse::new(
                    0,
                    columns,
                    stream::empty(),
                )))
            }
            Output::CopyOut(co) => Ok(copy_out_response(co)),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // At debug level, every statement a client sends (as PostgreSQL's log_statement =
        // 'all'): how a tool's statement stream is captured, e.g. dbt's.
        tracing::debug!(target: "tally::statement", client = %client.socket_addr(), protocol = "simple", "{}", crate::secrets::loggable(query));
        let (outputs, error) = {
            let mut session = self.slot.lock(client).await;
            statements::run(&mut session, query).await
        };
        let mut responses = Vec::with_capacity(outputs.len() + 1);
        for o in outputs {
            responses.push(self.respond(client, o, &Format::UnifiedText).await?);
        }
        if let Some(e) = error {
            responses.push(Response::Error(Box::new(error_info(&e))));
        }
        Ok(responses)
    }
}

/// The type a parameter declared (or described) as `t` is decoded as, when arrow-pg has no
/// decoder for `t` itself: types tally stores as text (uuid, json, jsonb, varchar, char,
/// name) decode as text, `oid[]` as `int4[]` (tally keeps oids as int4; asyncpg's type
/// introspection binds one), and arrays of `char` and `name` as `text[]`. The binary forms
/// of these arrays carry the element type in their header only, which the decoder ignores.
fn decoded_as(t: &Type) -> Option<Type> {
    match *t {
        Type::UUID | Type::JSON | Type::JSONB | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            Some(Type::TEXT)
        }
        Type::OID_ARRAY => Some(Type::INT4_ARRAY),
        Type::BPCHAR_ARRAY | Type::NAME_ARRAY => Some(Type::TEXT_ARRAY),
        _ => None,
    }
}

/// The portal with its parameters retyped as [`decoded_as`] says, when any needs it: binary
/// uuids become their canonical string, binary jsonb loses its version byte, and everything
/// else keeps its bytes.
fn retyped_parameters(
    portal: &Portal<WireStatement>,
    effective: &[Type],
) -> PgWireResult<Option<Portal<WireStatement>>> {
    let stored = &portal.statement;
    // The client's types where it declared them, else the ones the server described.
    let declared: Vec<Option<Type>> = (0..portal.parameters.len().max(effective.len()))
        .map(|i| match stored.parameter_types.get(i).cloned().flatten() {
            Some(t) if t != Type::UNKNOWN => Some(t),
            _ => effective.get(i).cloned(),
        })
        .collect();
    if !declared
        .iter()
        .any(|t| t.as_ref().and_then(decoded_as).is_some())
    {
        return Ok(None);
    }
    let mut types = declared;
    let mut values = portal.parameters.clone();
    let mut formats: Vec<i16> = (0..values.len())
        .map(|i| portal.parameter_format.format_for(i).value())
        .collect();
    for (i, t) in types.iter_mut().enumerate() {
        let Some(ty) = t.clone() else { continue };
        let Some(target) = decoded_as(&ty) else {
            continue;
        };
        if target == Type::TEXT
            && formats.get(i) == Some(&1)
            && let Some(Some(raw)) = values.get(i).cloned()
        {
            let text = if ty == Type::UUID && raw.len() == 16 {
                let mut b = [0u8; 16];
                b.copy_from_slice(&raw);
                uuid::Uuid::from_bytes(b)
                    .hyphenated()
                    .to_string()
                    .into_bytes()
            } else if ty == Type::JSONB && raw.first() == Some(&1) {
                raw[1..].to_vec()
            } else {
                raw.to_vec()
            };
            values[i] = Some(bytes::Bytes::from(text));
            formats[i] = 0;
        }
        *t = Some(target);
    }
    let statement = Arc::new(pgwire::api::stmt::StoredStatement::new(
        stored.id.clone(),
        stored.statement.clone(),
        types,
    ));
    let result_formats = match &portal.result_column_format {
        Format::UnifiedText => vec![0],
        Format::UnifiedBinary => vec![1],
        Format::Individual(v) => v.clone(),
    };
    let bind = pgwire::messages::extendedquery::Bind::new(
        Some(portal.name.clone()),
        None,
        formats,
        values,
        result_formats,
    );
    Portal::try_new(&bind, statement).map(Some)
}

/// The SQL type a declared parameter type casts to (None: leave the parameter untyped). An
/// array parameter is an array of its element's type (`int2[]` is `List(Int16)`), for the
/// arrays arrow-pg or [`decoded_as`] decode; `select $1` with an `int8[]` parameter returns an
/// `int8[]`, as in PostgreSQL.
fn sql_type_of(t: &Type) -> Option<datafusion::sql::sqlparser::ast::DataType> {
    use datafusion::sql::sqlparser::ast::{
        ArrayElemTypeDef, DataType as S, ExactNumberInfo, TimezoneInfo,
    };
    let element = match *t {
        Type::BOOL_ARRAY => Some(Type::BOOL),
        Type::INT2_ARRAY => Some(Type::INT2),
        Type::INT4_ARRAY => Some(Type::INT4),
        Type::INT8_ARRAY => Some(Type::INT8),
        Type::FLOAT4_ARRAY => Some(Type::FLOAT4),
        Type::FLOAT8_ARRAY => Some(Type::FLOAT8),
        Type::NUMERIC_ARRAY => Some(Type::NUMERIC),
        Type::TEXT_ARRAY | Type::BPCHAR_ARRAY | Type::NAME_ARRAY => Some(Type::TEXT),
        Type::VARCHAR_ARRAY => Some(Type::VARCHAR),
        _ => None,
    };
    if let Some(element) = element {
        return Some(S::Array(ArrayElemTypeDef::SquareBracket(
            Box::new(sql_type_of(&element)?),
            None,
        )));
    }
    if *t == Type::OID_ARRAY {
        return Some(S::Array(ArrayElemTypeDef::SquareBracket(
            Box::new(S::Custom(
                datafusion::sql::sqlparser::ast::ObjectName::from(vec![
                    datafusion::sql::sqlparser::ast::Ident::new("oid"),
                ]),
                vec![],
            )),
            None,
        )));
    }
    Some(match *t {
        Type::INT2 => S::SmallInt(None),
        Type::INT4 => S::Integer(None),
        Type::INT8 => S::BigInt(None),
        Type::FLOAT4 => S::Real,
        Type::FLOAT8 => S::DoublePrecision,
        Type::BOOL => S::Boolean,
        Type::NUMERIC => S::Numeric(ExactNumberInfo::None),
        Type::DATE => S::Date,
        Type::TIMESTAMP => S::Timestamp(None, TimezoneInfo::None),
        Type::TIMESTAMPTZ => S::Timestamp(None, TimezoneInfo::WithTimeZone),
        // Declared as the client declared them, so results keep the type (`select $1` with
        // a uuid parameter is a uuid).
        Type::UUID => S::Uuid,
        Type::JSON => S::JSON,
        Type::JSONB => S::JSONB,
        Type::VARCHAR => S::Varchar(None),
        Type::TEXT | Type::BPCHAR | Type::NAME => S::Text,
        _ => return None,
    })
}

/// The extended protocol's parser: Parse plans the statement once for its parameter and
/// result types.
pub struct TallyParser {
    slot: SessionSlot,
}

/// A statement parsed by the extended protocol, with the parameter types the client declared.
#[derive(Debug, Clone)]
pub struct WireStatement {
    prepared: Prepared,
    client_types: Vec<Option<Type>>,
    /// The result schema with what PostgreSQL reports about each column
    /// ([`crate::engine::columns`]), when the statement returns rows.
    result_schema: Option<datafusion::arrow::datatypes::SchemaRef>,
    /// Declared PostgreSQL types of parameters (`$1::uuid`, a value inserted into a `uuid`
    /// column), by parameter number from 1.
    declared_params: std::collections::HashMap<usize, String>,
}

impl WireStatement {
    /// Parameter types: the client's where it declared them, else inferred, else text (as
    /// PostgreSQL resolves an untyped parameter).
    fn param_types(&self) -> PgWireResult<Vec<Type>> {
        let inferred = self.prepared.param_types().map_err(pg_error)?;
        let n = inferred.len().max(self.client_types.len());
        (0..n)
            .map(|i| match self.client_types.get(i).cloned().flatten() {
                Some(t) if t != Type::UNKNOWN => Ok(t),
                _ => match inferred.get(i).cloned().flatten() {
                    Some(
                        DataType::Utf8
                        | DataType::Utf8View
                        | DataType::LargeUtf8
                        | DataType::Decimal128(..),
                    ) if self.declared_param(i + 1).is_some() => {
                        Ok(self.declared_param(i + 1).unwrap_or(Type::TEXT))
                    }
                    Some(t) => crate::engine::columns::pg_type(
                        &Arc::new(datafusion::arrow::datatypes::Field::new("", t, true)),
                        false,
                    )
                    .map(|(t, _)| t),
                    None => Ok(Type::TEXT),
                },
            })
            .collect()
    }

    /// The declared PostgreSQL type of parameter `n` (from 1), if it has one.
    fn declared_param(&self, n: usize) -> Option<Type> {
        self.declared_params
            .get(&n)
            .and_then(|d| crate::engine::columns::declared_type(d))
            .map(|(t, _)| t)
    }

    fn fields(&self, format: Option<&Format>) -> PgWireResult<Option<Vec<FieldInfo>>> {
        match &self.result_schema {
            Some(schema) => Ok(Some(super::encode::fields(
                schema,
                format.unwrap_or(&Format::UnifiedText),
                None,
            )?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl QueryParser for TallyParser {
    type Statement = WireStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<WireStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        tracing::debug!(target: "tally::statement", client = %client.socket_addr(), protocol = "extended", "{}", crate::secrets::loggable(sql));
        let session = self.slot.lock(client).await;
        let declared: Vec<_> = types
            .iter()
            .map(|t| t.as_ref().and_then(sql_type_of))
            .collect();
        let p = prepare(&session, sql, &declared).await.map_err(pg_error)?;
        if p.parsed.is_none() {
            return Ok(None);
        }
        let result_schema = match (&p.plan, p.dml_tag) {
            (Some(plan), None) => Some(crate::engine::columns::annotate(&session, plan).await),
            _ => p.result_schema(),
        };
        let declared_params = p
            .plan
            .as_ref()
            .or(p.param_plan.as_ref())
            .map(|plan| crate::engine::columns::declared_parameters(&session, plan))
            .unwrap_or_default();
        Ok(Some(WireStatement {
            prepared: p,
            client_types: types.to_vec(),
            result_schema,
            declared_params,
        }))
    }

    fn get_parameter_types(&self, stmt: &WireStatement) -> PgWireResult<Vec<Type>> {
        stmt.param_types()
    }

    fn get_result_schema(
        &self,
        stmt: &WireStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt.fields(column_format)?.unwrap_or_default())
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = WireStatement;
    type QueryParser = TallyParser;

    fn query_parser(&self) -> Arc<TallyParser> {
        self.parser.clone()
    }

    /// Describe answers NoData for statements that return no rows (pgwire would send an
    /// empty RowDescription when the statement has parameters, which JDBC rejects).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = WireStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        let (params, fields) = match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                Some(Entry::Value(stmt)) => {
                    let mut types = stmt.statement.param_types()?;
                    for (i, t) in stmt.parameter_types.iter().enumerate() {
                        if let (Some(t), Some(slot)) = (t, types.get_mut(i))
                            && *t != Type::UNKNOWN
                        {
                            *slot = t.clone();
                        }
                    }
                    (Some(types), stmt.statement.fields(None)?)
                }
                Some(Entry::Empty) => (Some(vec![]), None),
                None => return Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => (
                    None,
                    portal
                        .statement
                        .statement
                        .fields(Some(&portal.result_column_format))?,
                ),
                Some(Entry::Empty) => (None, None),
                // SQL cursors (DECLARE) are portals too, as in PostgreSQL: psycopg describes
                // its named cursors this way.
                None => {
                    let schema = self
                        .slot
                        .lock(client)
                        .await
                        .cursors
                        .get(name)
                        .map(|c| c.schema());
                    match schema {
                        Some(s) => (
                            None,
                            Some(super::encode::fields(&s, &Format::UnifiedText, None)?),
                        ),
                        None => return Err(PgWireError::PortalNotFound(name.to_owned())),
                    }
                }
            },
            other => return Err(PgWireError::InvalidTargetType(other)),
        };
        if let Some(types) = params {
            let oids = types.iter().map(|t| t.oid()).collect();
            client
                .send(PgWireBackendMessage::ParameterDescription(
                    ParameterDescription::new(oids),
                ))
                .await?;
        }
        match fields {
            Some(f) => {
                let desc = RowDescription::new(f.iter().map(Into::into).collect());
                client
                    .send(PgWireBackendMessage::RowDescription(desc))
                    .await?;
            }
            None => {
                client
                    .send(PgWireBackendMessage::NoData(NoData::new()))
                    .await?
            }
        }
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<WireStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = WireStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let prepared = &stmt.prepared;
        let types = stmt.param_types()?;
        let inferred = prepared.param_types().map_err(pg_error)?;
        let refs: Vec<Option<&DataType>> = inferred.iter().map(|t| t.as_ref()).collect();
        let rewritten = retyped_parameters(portal, &types)?;
        let types: Vec<Type> = match &rewritten {
            Some(p) => types
                .iter()
                .enumerate()
                .map(|(i, t)| match p.statement.parameter_types.get(i) {
                    Some(Some(r)) if decoded_as(t).as_ref() == Some(r) => r.clone(),
                    _ => t.clone(),
                })
                .collect(),
            None => types,
        };
        let server: Vec<Option<&Type>> = types.iter().map(Some).collect();
        let params = arrow_pg::datatypes::df::deserialize_parameters_with_server_types(
            rewritten.as_ref().unwrap_or(portal),
            &refs,
            &server,
        )?;
        let output = {
            let mut session = self.slot.lock(client).await;
            execute_prepared(&mut session, prepared, params).await
        };
        match output {
            Ok(o) => self.respond(client, o, &portal.result_column_format).await,
            Err(e) => Err(pg_error(e)),
        }
    }
}

#[async_trait]
impl CopyHandler for QueryHandler {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.copy.lock().await;
        let Some(ci) = guard.as_mut() else {
            return Ok(());
        };
        if let Err(e) = ci.feed(&copy_data.data).await {
            // Keep the failure: PostgreSQL reports it once the client ends the COPY.
            if let Some(ci) = guard.take() {
                ci.abort();
            }
            drop(guard);
            self.fail_copy(e).await;
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(e) = self.take_copy_failure().await {
            self.fail_transaction(client).await;
            return Err(pg_error(e));
        }
        let ci = self.copy.lock().await.take();
        let Some(ci) = ci else {
            return Err(pg_error(TallyError::Internal("no COPY in progress".into())));
        };
        match ci.finish().await {
            Ok(rows) => {
                let tag = Tag::new("COPY").with_rows(rows);
                client
                    .send(PgWireBackendMessage::CommandComplete(tag.into()))
                    .await?;
                Ok(())
            }
            Err(e) => {
                self.fail_transaction(client).await;
                Err(pg_error(e))
            }
        }
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(ci) = self.copy.lock().await.take() {
            ci.abort();
        }
        let _ = self.take_copy_failure().await;
        self.fail_transaction(client).await;
        pg_error(TallyError::Canceled(format!(
            "COPY from stdin failed: {}",
            fail.message
        )))
    }
}

impl QueryHandler {
    async fn fail_copy(&self, e: TallyError) {
        *self.copy_error.lock().await = Some(e);
    }

    async fn take_copy_failure(&self) -> Option<TallyError> {
        self.copy_error.lock().await.take()
    }

    async fn fail_transaction<C: ClientInfo>(&self, client: &C) {
        let mut session = self.slot.lock(client).await;
        statements::fail_transaction(&mut session);
    }
}
