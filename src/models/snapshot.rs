//! The SQL of a dbt snapshot (a type 2 slowly changing dimension), written as dbt-postgres
//! writes it so that a table built by `tally models snapshot` and one built by `dbt snapshot`
//! hold the same rows, and either tool can take over the other's table.
//!
//! The snapshot table is the query's columns plus `dbt_scd_id` (a hash of the key and the
//! version's time), `dbt_updated_at`, `dbt_valid_from` and `dbt_valid_to` (NULL for the
//! current version). The first run stores every row as current. Later runs:
//!
//! 1. materialise the query once, with its key and change time, into a temporary table;
//! 2. stage the rows to insert (new keys, and new versions of changed rows), the current
//!    versions to close (changed rows; with `hard_deletes='invalidate'` also keys that left
//!    the query), each into a temporary table, before anything changes;
//! 3. in one transaction, close the staged versions with `MERGE ... WHEN MATCHED AND
//!    dbt_valid_to IS NULL THEN UPDATE` (tally runs DataFusion's DELETE/UPDATE filters
//!    without subqueries, and MERGE is one Delta commit) and insert the new versions.
//!
//! Staging first keeps the result independent of the order of the writes, as dbt's staging
//! table does.

use super::jinja::{Relation, quote_ident};
use super::project::SnapshotStrategy;

/// The columns dbt adds to a snapshot, in order.
pub const META_COLUMNS: [&str; 4] = [
    "dbt_scd_id",
    "dbt_updated_at",
    "dbt_valid_from",
    "dbt_valid_to",
];

/// The snapshot time as dbt-postgres writes it (`now()::timestamp without time zone`), used as
/// the version time of the check strategy and the end of hard-deleted rows.
pub const SNAPSHOT_TIME: &str = "CAST(now() AS TIMESTAMP)";

/// The expression giving a row's version time.
fn updated_at(strategy: &SnapshotStrategy) -> &str {
    match strategy {
        SnapshotStrategy::Timestamp { updated_at } => updated_at,
        SnapshotStrategy::Check { .. } => SNAPSHOT_TIME,
    }
}

/// dbt's `snapshot_hash_arguments`: md5 of the key parts and the version time joined by `|`.
fn scd_id(keys: &[String], updated_at: &str) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(String::as_str)
        .chain([updated_at])
        .map(|a| format!("coalesce(cast({a} as varchar), '')"))
        .collect();
    format!("md5({})", parts.join(" || '|' || "))
}

/// The query of the first run: every row of `compiled`, current.
pub fn first_build_sql(compiled: &str, keys: &[String], strategy: &SnapshotStrategy) -> String {
    let u = updated_at(strategy);
    format!(
        "SELECT *, {} AS dbt_scd_id, {u} AS dbt_updated_at, {u} AS dbt_valid_from, nullif({u}, {u}) AS dbt_valid_to FROM (\n{compiled}\n) AS snapshot_query",
        scd_id(keys, u)
    )
}

/// Lines in front of the compiled model in [`first_build_sql`] and [`source_sql`] once they
/// follow a `CREATE ... AS` line, for mapping error positions back to the model.
pub const WRAPPED_LINE_OFFSET: usize = 2;

/// The query of a later run, with each key part as `dbt_unique_key_<n>`, the version time
/// as `dbt_updated_at` and the version's id as `dbt_scd_id`: evaluated once, over the query
/// alone, so keys and times may be expressions.
pub fn source_sql(compiled: &str, keys: &[String], strategy: &SnapshotStrategy) -> String {
    let u = updated_at(strategy);
    format!(
        "SELECT *, {}, {u} AS dbt_updated_at, {} AS dbt_scd_id FROM (\n{compiled}\n) AS snapshot_query",
        key_columns(keys),
        scd_id(keys, u)
    )
}

fn key_columns(keys: &[String]) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS dbt_unique_key_{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The current versions in the snapshot, with their keys computed like the source's.
fn current(target: &Relation, keys: &[String]) -> String {
    format!(
        "(SELECT *, {} FROM {target} WHERE dbt_valid_to IS NULL)",
        key_columns(keys)
    )
}

fn join_on(keys: &[String]) -> String {
    (1..=keys.len())
        .map(|i| format!("snapshotted_data.dbt_unique_key_{i} = source_data.dbt_unique_key_{i}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Whether a source row differs from its current version. `source_columns` are the query's
/// columns (for `check_cols='all'`).
fn row_changed(strategy: &SnapshotStrategy, source_columns: &[String]) -> String {
    match strategy {
        SnapshotStrategy::Timestamp { .. } => {
            "snapshotted_data.dbt_valid_from < source_data.dbt_updated_at".to_string()
        }
        SnapshotStrategy::Check { columns } => {
            let cols: Vec<String> = match columns {
                Some(c) => c.clone(),
                None => source_columns.iter().map(|c| quote_ident(c)).collect(),
            };
            let tests: Vec<String> = cols
                .iter()
                .map(|c| {
                    format!(
                        "snapshotted_data.{c} <> source_data.{c} OR (snapshotted_data.{c} IS NULL) <> (source_data.{c} IS NULL)"
                    )
                })
                .collect();
            if tests.is_empty() {
                "false".to_string()
            } else {
                format!("({})", tests.join(" OR "))
            }
        }
    }
}

/// The statements of one incremental snapshot run, given the snapshot table's columns.
pub struct Plan {
    /// `CREATE TEMPORARY TABLE <source>`: the query with keys and version times.
    pub source: String,
    /// `CREATE TEMPORARY TABLE <inserts>`: new keys and new versions of changed rows, with
    /// the snapshot's columns in order.
    pub inserts: String,
    /// `CREATE TEMPORARY TABLE <updates>`: `dbt_scd_id` and `dbt_valid_to` of the current
    /// versions of changed rows.
    pub updates: String,
    /// `CREATE TEMPORARY TABLE <deletes>`: `dbt_scd_id` of current versions whose key left
    /// the query (only with `hard_deletes='invalidate'`).
    pub deletes: Option<String>,
    /// The transaction that applies the staged changes.
    pub apply: Vec<String>,
    /// The temporary tables, to drop afterwards.
    pub temporaries: Vec<String>,
}

/// Builds the statements of a later snapshot run of `target` (whose columns are `columns`,
/// meta columns included) from the model's `compiled` query.
pub fn plan(
    target: &Relation,
    compiled: &str,
    columns: &[String],
    keys: &[String],
    strategy: &SnapshotStrategy,
    invalidate_deletes: bool,
) -> Plan {
    let tmp = |suffix: &str| quote_ident(&format!("{}__dbt_{suffix}", target.identifier));
    let (src, ins, upd, del) = (tmp("src"), tmp("ins"), tmp("upd"), tmp("del"));
    let source_columns: Vec<String> = columns
        .iter()
        .filter(|c| !META_COLUMNS.contains(&c.as_str()))
        .cloned()
        .collect();
    let current = current(target, keys);
    let on = join_on(keys);
    let changed = row_changed(strategy, &source_columns);

    let select: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            "dbt_scd_id" | "dbt_updated_at" => format!("source_data.{c}"),
            "dbt_valid_from" => "source_data.dbt_updated_at AS dbt_valid_from".to_string(),
            "dbt_valid_to" => {
                "nullif(source_data.dbt_updated_at, source_data.dbt_updated_at) AS dbt_valid_to"
                    .to_string()
            }
            other => format!("source_data.{}", quote_ident(other)),
        })
        .collect();
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let quoted = quoted.join(", ");

    let close = |from: &str, valid_to: &str| {
        format!(
            "MERGE INTO {target} AS dbt_internal_dest USING {from} AS dbt_internal_source ON dbt_internal_dest.dbt_scd_id = dbt_internal_source.dbt_scd_id WHEN MATCHED AND dbt_internal_dest.dbt_valid_to IS NULL THEN UPDATE SET dbt_valid_to = {valid_to}"
        )
    };
    let mut apply = vec![
        "BEGIN".to_string(),
        close(&upd, "dbt_internal_source.dbt_valid_to"),
    ];
    let deletes = invalidate_deletes.then(|| {
        apply.push(close(&del, SNAPSHOT_TIME));
        format!(
            "CREATE TEMPORARY TABLE {del} AS\nSELECT snapshotted_data.dbt_scd_id FROM {current} AS snapshotted_data WHERE NOT EXISTS (SELECT 1 FROM {src} AS source_data WHERE {on})"
        )
    });
    apply.push(format!(
        "INSERT INTO {target} ({quoted}) SELECT {quoted} FROM {ins}"
    ));
    apply.push("COMMIT".to_string());

    let mut temporaries = vec![src.clone(), ins.clone(), upd.clone()];
    if deletes.is_some() {
        temporaries.push(del);
    }
    Plan {
        source: format!(
            "CREATE TEMPORARY TABLE {src} AS\n{}",
            source_sql(compiled, keys, strategy)
        ),
        inserts: format!(
            "CREATE TEMPORARY TABLE {ins} AS\nSELECT {} FROM {src} AS source_data LEFT JOIN {current} AS snapshotted_data ON {on} WHERE snapshotted_data.dbt_scd_id IS NULL OR {changed}",
            select.join(", ")
        ),
        updates: format!(
            "CREATE TEMPORARY TABLE {upd} AS\nSELECT snapshotted_data.dbt_scd_id, source_data.dbt_updated_at AS dbt_valid_to FROM {src} AS source_data JOIN {current} AS snapshotted_data ON {on} WHERE {changed}"
        ),
        deletes,
        apply,
        temporaries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_build_adds_dbts_columns() {
        let sql = first_build_sql(
            "select 1 as id, now() as t",
            &["id".into()],
            &SnapshotStrategy::Timestamp {
                updated_at: "t".into(),
            },
        );
        assert!(sql.starts_with(
            "SELECT *, md5(coalesce(cast(id as varchar), '') || '|' || coalesce(cast(t as varchar), '')) AS dbt_scd_id, t AS dbt_updated_at, t AS dbt_valid_from, nullif(t, t) AS dbt_valid_to FROM (\n"
        ));
        assert_eq!(sql.lines().count(), 1 + WRAPPED_LINE_OFFSET);
    }

    #[test]
    fn check_all_compares_every_query_column() {
        let p = plan(
            &Relation::new("s", "snap"),
            "select id, plan from t",
            &[
                "id".into(),
                "plan".into(),
                "dbt_scd_id".into(),
                "dbt_updated_at".into(),
                "dbt_valid_from".into(),
                "dbt_valid_to".into(),
            ],
            &["id".into()],
            &SnapshotStrategy::Check { columns: None },
            true,
        );
        assert!(p.updates.contains(
            "snapshotted_data.\"plan\" <> source_data.\"plan\" OR (snapshotted_data.\"plan\" IS NULL) <> (source_data.\"plan\" IS NULL)"
        ));
        assert!(!p.updates.contains("dbt_valid_from\" <>"));
        assert!(p.deletes.is_some());
        assert_eq!(p.apply.len(), 5);
        assert_eq!(p.temporaries.len(), 4);
        assert!(
            p.source
                .contains("CAST(now() AS TIMESTAMP) AS dbt_updated_at")
        );
    }
}
