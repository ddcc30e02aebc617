//! Cursors: `DECLARE name CURSOR [WITH HOLD] FOR query`, `FETCH [FORWARD] n|ALL|NEXT FROM
//! name`, `CLOSE name|ALL`. A cursor holds the query's stream and hands out rows as fetched,
//! so a client (psycopg's named cursors, pandas chunks) reads a large result in bounded
//! memory. Cursors scan forward only.

use std::collections::VecDeque;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, Declare, FetchDirection, Ident, Statement, Value,
};
use futures::StreamExt;

use super::names::ident;
use super::{Completion, Output, query};
use crate::engine::Session;
use crate::engine::session::TxnState;
use crate::error::{Result, TallyError, unwrap_datafusion};

/// An open cursor.
pub struct Cursor {
    schema: SchemaRef,
    // A mutex only to make the cursor (and so the session) Sync; FETCH has `&mut` access.
    stream: std::sync::Mutex<SendableRecordBatchStream>,
    pending: VecDeque<RecordBatch>,
    /// WITH HOLD: survives the end of its transaction.
    pub hold: bool,
}

impl Cursor {
    /// The row shape FETCH returns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// `DECLARE`.
pub async fn declare(session: &mut Session, decls: Vec<Declare>) -> Result<Output> {
    declare_with(session, decls, None).await
}

/// `DECLARE` with bound parameters (the extended protocol).
pub async fn declare_with(
    session: &mut Session,
    decls: Vec<Declare>,
    params: Option<datafusion::common::ParamValues>,
) -> Result<Output> {
    let Some(d) = decls.into_iter().next() else {
        return Err(TallyError::syntax("DECLARE needs a cursor"));
    };
    let name = d
        .names
        .first()
        .map(ident)
        .ok_or_else(|| TallyError::syntax("DECLARE needs a cursor name"))?;
    let hold = d.hold.unwrap_or(false);
    if session.txn == TxnState::Idle && !hold {
        return Err(TallyError::Transaction {
            code: "25P01",
            message: "DECLARE CURSOR can only be used in transaction blocks".into(),
        });
    }
    if d.scroll == Some(true) {
        return Err(TallyError::Unsupported(
            "SCROLL cursors are not supported; cursors scan forward".into(),
        ));
    }
    if session.cursors.contains_key(&name) {
        return Err(TallyError::AlreadyExists {
            kind: "cursor",
            name,
        });
    }
    let q = d
        .for_query
        .ok_or_else(|| TallyError::syntax("DECLARE CURSOR needs FOR <query>"))?;
    let mut plan = query::plan(session, Statement::Query(q)).await?;
    if let Some(p) = params {
        plan = plan
            .replace_params_with_values(&p)
            .map_err(unwrap_datafusion)?;
    }
    let Output::Rows(stream) = query::stream_plan(session, plan).await? else {
        return Err(TallyError::Internal("cursor query without rows".into()));
    };
    let schema = stream.schema();
    session.cursors.insert(
        name,
        Cursor {
            schema,
            stream: std::sync::Mutex::new(stream),
            pending: VecDeque::new(),
            hold,
        },
    );
    Ok(Output::Command(Completion::tag("DECLARE CURSOR")))
}

fn count_of(v: &Value) -> Result<usize> {
    v.to_string()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(|n| n as usize)
        .ok_or_else(|| TallyError::Unsupported("cursors can only scan forward".into()))
}

/// How many rows a FETCH direction asks for.
fn wanted(direction: &FetchDirection) -> Result<usize> {
    match direction {
        FetchDirection::Next => Ok(1),
        FetchDirection::Count { limit } => count_of(&limit.value),
        FetchDirection::Forward { limit: Some(l) } => count_of(&l.value),
        FetchDirection::Forward { limit: None } => Ok(1),
        FetchDirection::All | FetchDirection::ForwardAll => Ok(usize::MAX),
        _ => Err(TallyError::Unsupported(
            "cursors can only scan forward".into(),
        )),
    }
}

/// `FETCH`.
pub async fn fetch(
    session: &mut Session,
    name: Ident,
    direction: FetchDirection,
) -> Result<Output> {
    let name = ident(&name);
    let mut n = wanted(&direction)?;
    let cursor = session
        .cursors
        .get_mut(&name)
        .ok_or_else(|| TallyError::NotFound {
            kind: "cursor",
            name: name.clone(),
        })?;
    let mut out = Vec::new();
    while n > 0 {
        let batch = match cursor.pending.pop_front() {
            Some(b) => b,
            None => match cursor
                .stream
                .get_mut()
                .map_err(|_| TallyError::Internal("cursor poisoned".into()))?
                .next()
                .await
            {
                Some(b) => b.map_err(unwrap_datafusion)?,
                None => break,
            },
        };
        if batch.num_rows() <= n {
            n -= batch.num_rows();
            out.push(batch);
        } else {
            out.push(batch.slice(0, n));
            cursor
                .pending
                .push_front(batch.slice(n, batch.num_rows() - n));
            n = 0;
        }
    }
    let stream = MemoryStream::try_new(out, cursor.schema.clone(), None)?;
    Ok(Output::Rows(Box::pin(stream)))
}

/// `CLOSE name | ALL`.
pub fn close(session: &mut Session, cursor: CloseCursor) -> Result<Output> {
    match cursor {
        CloseCursor::All => session.cursors.clear(),
        CloseCursor::Specific { name } => {
            let name = ident(&name);
            if session.cursors.remove(&name).is_none() {
                return Err(TallyError::NotFound {
                    kind: "cursor",
                    name,
                });
            }
        }
    }
    Ok(Output::Command(Completion::tag("CLOSE CURSOR")))
}

/// Closes the cursors that end with their transaction.
pub fn end_of_transaction(session: &mut Session) {
    session.cursors.retain(|_, c| c.hold);
}
