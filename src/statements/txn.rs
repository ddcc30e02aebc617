//! Transaction blocks.
//!
//! Isolation given (documented in the README): catalog changes made inside BEGIN ... COMMIT
//! (CREATE/DROP/ALTER of schemas, tables and views, including `CREATE TABLE AS` and the
//! rename dance dbt does) are staged in the session, visible only to it, and become visible
//! to others atomically at COMMIT, merged three-way onto whatever others committed meanwhile
//! (a conflicting change to the same object fails the COMMIT with 40001). ROLLBACK discards
//! them and deletes data written for new tables.
//!
//! Row changes to tables that existed before BEGIN (INSERT, UPDATE, DELETE, TRUNCATE)
//! commit per statement as Delta versions, so other sessions see them before COMMIT (read
//! uncommitted for those rows). ROLLBACK and ROLLBACK TO SAVEPOINT undo them with a Delta
//! restore to the version before the transaction's first write, provided nobody else wrote
//! the table since; otherwise the undo is refused with a warning rather than erase the
//! other session's rows.

use datafusion::sql::sqlparser::ast::Ident;

use super::names::ident;
use super::{Completion, Output, TxnChange};
use crate::catalog::CatalogDoc;
use crate::engine::Session;
use crate::engine::session::{Savepoint, TxnEffects, TxnState};
use crate::error::{Result, TallyError};

/// `BEGIN` / `START TRANSACTION`.
pub fn begin(session: &mut Session) -> Result<Output> {
    let mut c = Completion::tag("BEGIN");
    if session.txn != TxnState::Idle {
        c = c.with_notice("there is already a transaction in progress");
        return Ok(Output::Command(c));
    }
    session.catalog.begin();
    session.txn_effects = TxnEffects {
        base: Some((*session.catalog.store().current()).clone()),
        ..Default::default()
    };
    session.txn = TxnState::Active;
    c.txn = Some(TxnChange::Begin);
    Ok(Output::Command(c))
}

/// `COMMIT` / `END`. In a failed transaction it rolls back, as PostgreSQL does.
pub async fn commit(session: &mut Session) -> Result<Output> {
    match session.txn {
        TxnState::Idle => Ok(Output::Command(
            Completion::tag("COMMIT").with_notice("there is no transaction in progress"),
        )),
        TxnState::Failed => {
            let mut c = Completion::tag("ROLLBACK");
            for n in abort(session).await {
                c = c.with_notice(n);
            }
            c.txn = Some(TxnChange::End);
            Ok(Output::Command(c))
        }
        TxnState::Active => {
            let staged = session.catalog.end();
            let effects = std::mem::take(&mut session.txn_effects);
            session.txn = TxnState::Idle;
            if let (Some(staged), Some(base)) = (staged, effects.base.clone()) {
                let merged = session
                    .catalog
                    .store()
                    .mutate(|latest| merge(latest, &base, &staged))
                    .await;
                if let Err(e) = merged {
                    discard_created(session, &effects.created).await;
                    return Err(e);
                }
            }
            for loc in &effects.dropped {
                session.catalog.tables().forget(loc);
                if let Err(e) = session.engine.warehouse().delete_prefix(loc).await {
                    tracing::warn!(location = %loc, error = %e, "could not delete dropped table data");
                }
            }
            super::cursor::end_of_transaction(session);
            let mut c = Completion::tag("COMMIT");
            c.txn = Some(TxnChange::End);
            Ok(Output::Command(c))
        }
    }
}

/// `ROLLBACK [TO SAVEPOINT name]`.
pub async fn rollback(session: &mut Session, savepoint: Option<Ident>) -> Result<Output> {
    if let Some(sp) = savepoint {
        let name = ident(&sp);
        if session.txn == TxnState::Idle {
            return Err(no_block("ROLLBACK TO SAVEPOINT"));
        }
        let pos = session
            .txn_effects
            .savepoints
            .iter()
            .rposition(|sp| sp.name == name)
            .ok_or_else(|| TallyError::NotFound {
                kind: "savepoint",
                name: name.clone(),
            })?;
        let sp = session.txn_effects.savepoints[pos].clone();
        session.txn_effects.savepoints.truncate(pos + 1);
        let undone: Vec<String> = session.txn_effects.created.split_off(sp.created);
        session.txn_effects.dropped.truncate(sp.dropped);
        discard_created(session, &undone).await;
        session.catalog.stage(|staged| {
            *staged = sp.catalog.clone();
            Ok(())
        })?;
        // Undo row writes made after the savepoint.
        let written = std::mem::take(&mut session.txn_effects.written);
        let mut keep = sp.written.clone();
        let mut targets = Vec::new();
        for (loc, (base, last)) in written {
            match sp.written.get(&loc) {
                Some((_, at_sp)) if *at_sp == last => {}
                Some((b, at_sp)) => targets.push((loc.clone(), *at_sp, last, *b)),
                None => targets.push((loc.clone(), base, last, base)),
            }
        }
        let mut c = Completion::tag("ROLLBACK");
        for (loc, to, last, base) in targets {
            match undo_writes(session, &loc, to, last).await {
                Ok(v) => {
                    if to != base {
                        keep.insert(loc, (base, v));
                    } else {
                        keep.insert(loc, (v, v));
                    }
                }
                Err(e) => c = c.with_notice(e.to_string()),
            }
        }
        session.txn_effects.written = keep;
        session.txn = TxnState::Active;
        return Ok(Output::Command(c));
    }
    if session.txn == TxnState::Idle {
        return Ok(Output::Command(
            Completion::tag("ROLLBACK").with_notice("there is no transaction in progress"),
        ));
    }
    let mut c = Completion::tag("ROLLBACK");
    for n in abort(session).await {
        c = c.with_notice(n);
    }
    c.txn = Some(TxnChange::End);
    Ok(Output::Command(c))
}

/// Ends the transaction undoing everything; returns warnings for writes it could not undo.
async fn abort(session: &mut Session) -> Vec<String> {
    super::cursor::end_of_transaction(session);
    session.catalog.end();
    let effects = std::mem::take(&mut session.txn_effects);
    session.txn = TxnState::Idle;
    discard_created(session, &effects.created).await;
    let mut warnings = Vec::new();
    for (loc, (base, last)) in effects.written {
        if effects.created.contains(&loc) {
            continue;
        }
        if let Err(e) = undo_writes(session, &loc, base, last).await {
            warnings.push(e.to_string());
        }
    }
    warnings
}

/// Restores a table to `version` if its latest version is still our write `last`.
async fn undo_writes(
    session: &Session,
    location: &str,
    version: deltalake::kernel::Version,
    last: deltalake::kernel::Version,
) -> Result<deltalake::kernel::Version> {
    let table = session.catalog.tables().latest(location).await?;
    if table.version() != Some(last) {
        return Err(TallyError::Conflict(format!(
            "could not roll back the writes to table folder {location}: it was changed by another session since"
        )));
    }
    let (table, _) = table.restore().with_version_to_restore(version).await?;
    Ok(table.version().unwrap_or(version))
}

/// Records a row write to an existing table inside a transaction block, so ROLLBACK can
/// undo it.
pub fn record_write(
    session: &mut Session,
    location: &str,
    before: deltalake::kernel::Version,
    after: deltalake::kernel::Version,
) {
    if session.txn == TxnState::Idle
        || after == before
        || session.txn_effects.created.iter().any(|c| c == location)
    {
        return;
    }
    session
        .txn_effects
        .written
        .entry(location.to_string())
        .and_modify(|e| e.1 = after)
        .or_insert((before, after));
}

async fn discard_created(session: &Session, locations: &[String]) {
    for loc in locations {
        session.catalog.tables().forget(loc);
        if let Err(e) = session.engine.warehouse().delete_prefix(loc).await {
            tracing::warn!(location = %loc, error = %e, "could not delete rolled-back table data");
        }
    }
}

fn no_block(what: &str) -> TallyError {
    TallyError::Transaction {
        code: "25P01",
        message: format!("{what} can only be used in transaction blocks"),
    }
}

/// `SAVEPOINT name`.
pub fn savepoint(session: &mut Session, name: Ident) -> Result<Output> {
    if session.txn == TxnState::Idle {
        return Err(no_block("SAVEPOINT"));
    }
    let catalog = (*session.catalog.doc()).clone();
    let e = &mut session.txn_effects;
    e.savepoints.push(Savepoint {
        name: ident(&name),
        catalog,
        created: e.created.len(),
        dropped: e.dropped.len(),
        written: e.written.clone(),
    });
    Ok(Output::Command(Completion::tag("SAVEPOINT")))
}

/// `RELEASE [SAVEPOINT] name`.
pub fn release(session: &mut Session, name: Ident) -> Result<Output> {
    if session.txn == TxnState::Idle {
        return Err(no_block("RELEASE SAVEPOINT"));
    }
    let name = ident(&name);
    let pos = session
        .txn_effects
        .savepoints
        .iter()
        .rposition(|sp| sp.name == name)
        .ok_or_else(|| TallyError::NotFound {
            kind: "savepoint",
            name,
        })?;
    session.txn_effects.savepoints.truncate(pos);
    Ok(Output::Command(Completion::tag("RELEASE")))
}

fn same<T: serde::Serialize>(a: Option<&T>, b: Option<&T>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => serde_json::to_value(a).ok() == serde_json::to_value(b).ok(),
        _ => false,
    }
}

/// The three-way merge of one map of named objects (see [`merge`]).
fn merge_map<T: Clone + serde::Serialize>(
    latest: &mut std::collections::BTreeMap<String, T>,
    base: &std::collections::BTreeMap<String, T>,
    staged: &std::collections::BTreeMap<String, T>,
    kind: &str,
) -> Result<()> {
    let names: std::collections::BTreeSet<&String> = base.keys().chain(staged.keys()).collect();
    for n in names {
        let (bv, sv) = (base.get(n), staged.get(n));
        if same(bv, sv) {
            continue;
        }
        if !same(latest.get(n), bv) {
            return Err(conflict(&format!("{kind} \"{n}\"")));
        }
        match sv {
            Some(v) => latest.insert(n.clone(), v.clone()),
            None => latest.remove(n),
        };
    }
    Ok(())
}

fn conflict(what: &str) -> TallyError {
    TallyError::Conflict(format!(
        "could not serialize access: {what} was changed by a concurrent transaction"
    ))
}

/// Applies what the transaction changed (`base` → `staged`) onto `latest`, refusing when
/// another session changed the same object since BEGIN.
pub fn merge(latest: &mut CatalogDoc, base: &CatalogDoc, staged: &CatalogDoc) -> Result<()> {
    let schema_names: std::collections::BTreeSet<&String> =
        base.schemas.keys().chain(staged.schemas.keys()).collect();
    for s in schema_names {
        match (base.schemas.get(s), staged.schemas.get(s)) {
            (None, Some(st)) => {
                if latest.schemas.contains_key(s) {
                    return Err(conflict(&format!("schema \"{s}\"")));
                }
                latest.schemas.insert(s.clone(), st.clone());
            }
            (Some(_), None) => {
                latest.schemas.remove(s);
            }
            (Some(b), Some(st)) => {
                let rels: std::collections::BTreeSet<&String> =
                    b.relations.keys().chain(st.relations.keys()).collect();
                for r in rels {
                    let (bv, sv) = (b.relations.get(r), st.relations.get(r));
                    if same(bv, sv) {
                        continue;
                    }
                    let schema = latest
                        .schemas
                        .get_mut(s)
                        .ok_or_else(|| conflict(&format!("schema \"{s}\"")))?;
                    if !same(schema.relations.get(r), bv) {
                        return Err(conflict(&format!("relation \"{r}\"")));
                    }
                    match sv {
                        Some(v) => schema.relations.insert(r.clone(), v.clone()),
                        None => schema.relations.remove(r),
                    };
                }
            }
            (None, None) => {}
        }
    }
    // Every other kind of named object (users, sources, tracking plans, identity graphs,
    // destinations, syncs, routes, secrets, connections): what the transaction created,
    // changed or dropped is applied, and one that another session changed meanwhile is a
    // serialization failure, as for relations.
    merge_map(&mut latest.users, &base.users, &staged.users, "user")?;
    merge_map(
        &mut latest.sources,
        &base.sources,
        &staged.sources,
        "source",
    )?;
    merge_map(
        &mut latest.tracking_plans,
        &base.tracking_plans,
        &staged.tracking_plans,
        "tracking plan",
    )?;
    merge_map(
        &mut latest.identity_graphs,
        &base.identity_graphs,
        &staged.identity_graphs,
        "identity graph",
    )?;
    merge_map(
        &mut latest.destinations,
        &base.destinations,
        &staged.destinations,
        "destination",
    )?;
    merge_map(&mut latest.syncs, &base.syncs, &staged.syncs, "sync")?;
    merge_map(&mut latest.routes, &base.routes, &staged.routes, "route")?;
    merge_map(
        &mut latest.secrets,
        &base.secrets,
        &staged.secrets,
        "secret",
    )?;
    merge_map(
        &mut latest.connections,
        &base.connections,
        &staged.connections,
        "connection",
    )?;
    Ok(())
}
