//! The SQL each materialisation sends, chosen from what tally (and PostgreSQL) accept:
//!
//! - `view`: `CREATE OR REPLACE VIEW`; a table in the way is renamed aside and dropped in the
//!   same transaction.
//! - `table` (and seeds): built under `<name>__tally_tmp`, then swapped in one transaction
//!   (`ALTER TABLE ... RENAME` twice, drop the old), so readers never see a missing or half
//!   built table, and a failed build leaves the old table untouched. tally's views bind
//!   tables by name, so views over the model keep working across the swap.
//! - `incremental`: the first run (or `--full-refresh`) builds a table; later runs render with
//!   `is_incremental()` true into a temporary table, then `append` inserts it, `merge` runs
//!   `MERGE INTO` on `unique_key`, and `delete+insert` (also the fallback where MERGE is
//!   missing) rebuilds the table from its rows without the new keys plus the new rows and
//!   swaps it in like a table.
//! - `ephemeral`: nothing here; dependants inline it as a CTE.

use super::error::SqlError;
use super::executor::{Connection, StatementResult};
use super::jinja::{Relation, quote_ident};

/// What kind of relation already stands at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// A table.
    Table,
    /// A view.
    View,
}

impl Existing {
    /// The DROP keyword for it.
    pub fn keyword(self) -> &'static str {
        match self {
            Existing::Table => "TABLE",
            Existing::View => "VIEW",
        }
    }

    /// From information_schema's `table_type`.
    pub fn from_table_type(t: &str) -> Existing {
        if t.eq_ignore_ascii_case("VIEW") {
            Existing::View
        } else {
            Existing::Table
        }
    }
}

/// A statement that failed, with the text that was sent (to find the line).
#[derive(Debug, Clone)]
pub struct StepError {
    /// The statement.
    pub sql: String,
    /// Why.
    pub error: SqlError,
    /// Line offset of the model's SQL inside `sql` (lines before it), when the statement
    /// embeds the compiled model.
    pub model_line_offset: Option<usize>,
}

/// Runs statements on one connection, rolling back an open transaction on failure so the
/// session stays usable.
pub struct Steps<'a> {
    conn: &'a mut dyn Connection,
    in_txn: bool,
    /// Every statement sent, in order (written to `target/run/`).
    pub log: Vec<String>,
}

impl<'a> Steps<'a> {
    /// Wraps a connection.
    pub fn new(conn: &'a mut dyn Connection) -> Steps<'a> {
        Steps {
            conn,
            in_txn: false,
            log: Vec::new(),
        }
    }

    /// Runs one statement; `model_line_offset` is set when it embeds the model's SQL.
    pub async fn run(
        &mut self,
        sql: &str,
        model_line_offset: Option<usize>,
    ) -> Result<StatementResult, StepError> {
        tracing::debug!(target: "tally::models", sql, "statement");
        self.log.push(sql.to_string());
        match self.conn.execute(sql).await {
            Ok(r) => {
                let upper = sql.trim_start().get(..6).unwrap_or("").to_ascii_uppercase();
                if upper.starts_with("BEGIN") {
                    self.in_txn = true;
                } else if upper.starts_with("COMMIT") || upper.starts_with("ROLLBA") {
                    self.in_txn = false;
                }
                Ok(r)
            }
            Err(error) => {
                if self.in_txn {
                    let _ = self.conn.execute("ROLLBACK").await;
                    self.in_txn = false;
                }
                Err(StepError {
                    sql: sql.to_string(),
                    error,
                    model_line_offset,
                })
            }
        }
    }

    /// Runs a query and returns its rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, StepError> {
        self.run(sql, None).await.map(|r| r.rows)
    }
}

/// Name of the build-aside relation of a table swap.
pub fn tmp_of(r: &Relation) -> Relation {
    r.with_identifier(format!("{}__tally_tmp", r.identifier))
}

/// Name the old relation takes during a swap.
pub fn backup_of(r: &Relation) -> Relation {
    r.with_identifier(format!("{}__tally_backup", r.identifier))
}

/// Statements that replace whatever stands at `target` with the already built `tmp` table,
/// atomically.
pub fn swap_sql(target: &Relation, tmp: &Relation, existing: Option<Existing>) -> Vec<String> {
    let rename = |from: &Relation, to: &Relation| {
        format!(
            "ALTER TABLE {from} RENAME TO {}",
            quote_ident(&to.identifier)
        )
    };
    match existing {
        None => vec![rename(tmp, target)],
        Some(kind) => {
            let backup = backup_of(target);
            vec![
                "BEGIN".into(),
                rename(target, &backup),
                rename(tmp, target),
                format!("DROP {} {backup}", kind.keyword()),
                "COMMIT".into(),
            ]
        }
    }
}

/// `INSERT INTO target (cols) SELECT cols FROM source`.
pub fn insert_sql(target: &Relation, source: &str, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let cols = cols.join(", ");
    format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM {source}")
}

/// `MERGE INTO target USING source ON keys` updating matched rows and inserting the rest.
pub fn merge_sql(target: &Relation, source: &str, columns: &[String], keys: &[String]) -> String {
    let on: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "dbt_internal_dest.{k} = dbt_internal_source.{k}",
                k = quote_ident(k)
            )
        })
        .collect();
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{q} = dbt_internal_source.{q}", q = quote_ident(c)))
        .collect();
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let vals: Vec<String> = columns
        .iter()
        .map(|c| format!("dbt_internal_source.{}", quote_ident(c)))
        .collect();
    let matched = if set.is_empty() {
        String::new()
    } else {
        format!(" WHEN MATCHED THEN UPDATE SET {}", set.join(", "))
    };
    format!(
        "MERGE INTO {target} AS dbt_internal_dest USING {source} AS dbt_internal_source ON {}{matched} WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
        on.join(" AND "),
        cols.join(", "),
        vals.join(", ")
    )
}

/// delete+insert as a rebuild: `CREATE TABLE <into> AS` the target's rows whose keys are not
/// in `source`, plus every row of `source`; the runner then swaps it in like a table.
///
/// Why not `DELETE ... WHERE key IN (SELECT ...)`: tally hands DELETE's filters to delta-rs,
/// and DataFusion turns an IN/EXISTS subquery into a join, so the filter never arrives and
/// the DELETE removes every row. A rebuild costs a rewrite of the table but is correct and
/// atomic (one swap), and MERGE is used instead wherever the engine has it.
pub fn rebuild_sql(
    into: &Relation,
    target: &Relation,
    source: &str,
    columns: &[String],
    keys: &[String],
) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let cols = cols.join(", ");
    let cond: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "dbt_internal_source.{q} = dbt_internal_dest.{q}",
                q = quote_ident(k)
            )
        })
        .collect();
    format!(
        "CREATE TABLE {into} AS\nSELECT {cols} FROM {target} AS dbt_internal_dest WHERE NOT EXISTS (SELECT 1 FROM {source} AS dbt_internal_source WHERE {})\nUNION ALL\nSELECT {cols} FROM {source}",
        cond.join(" AND ")
    )
}

/// Puts the CTEs of ephemeral models in front of a query, joining an existing `WITH` the way
/// dbt does (so `WITH a AS (...) SELECT ...` becomes `WITH __dbt__cte__e AS (...), a AS ...`).
pub fn inject_ctes(sql: &str, ctes: &[(String, String)]) -> String {
    if ctes.is_empty() {
        return sql.to_string();
    }
    let defs: Vec<String> = ctes
        .iter()
        .map(|(n, s)| format!("{n} AS (\n{}\n)", s.trim().trim_end_matches(';')))
        .collect();
    let defs = defs.join(", ");
    let start = first_token(sql);
    let (head, rest) = sql.split_at(start);
    let lower = rest.to_ascii_lowercase();
    let is_with = lower.starts_with("with") && lower[4..].starts_with(|c: char| c.is_whitespace());
    if is_with {
        let after = rest[4..].trim_start();
        let lower_after = after.to_ascii_lowercase();
        if lower_after.starts_with("recursive")
            && lower_after[9..].starts_with(|c: char| c.is_whitespace())
        {
            return format!("{head}WITH RECURSIVE {defs}, {}", after[9..].trim_start());
        }
        format!("{head}WITH {defs}, {after}")
    } else {
        format!("{head}WITH {defs}\n{rest}")
    }
}

/// Byte offset of the first token after leading whitespace and comments.
fn first_token(sql: &str) -> usize {
    let mut i = 0;
    let b = sql.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if sql[i..].starts_with("--") {
            match sql[i..].find('\n') {
                Some(n) => i += n + 1,
                None => return sql.len(),
            }
        } else if sql[i..].starts_with("/*") {
            match sql[i..].find("*/") {
                Some(n) => i += n + 2,
                None => return sql.len(),
            }
        } else {
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctes_join_an_existing_with() {
        let ctes = vec![("__dbt__cte__e".to_string(), "select 1 as x;".to_string())];
        assert_eq!(
            inject_ctes("-- hi\nWITH a AS (select 2) select * from a", &ctes),
            "-- hi\nWITH __dbt__cte__e AS (\nselect 1 as x\n), a AS (select 2) select * from a"
        );
        assert_eq!(
            inject_ctes("select * from __dbt__cte__e", &ctes),
            "WITH __dbt__cte__e AS (\nselect 1 as x\n)\nselect * from __dbt__cte__e"
        );
        assert_eq!(inject_ctes("select 1", &[]), "select 1");
    }

    #[test]
    fn swaps_in_one_transaction() {
        let t = Relation::new("s", "m");
        let s = swap_sql(&t, &tmp_of(&t), Some(Existing::Table));
        assert_eq!(
            s,
            vec![
                "BEGIN",
                "ALTER TABLE \"s\".\"m\" RENAME TO \"m__tally_backup\"",
                "ALTER TABLE \"s\".\"m__tally_tmp\" RENAME TO \"m\"",
                "DROP TABLE \"s\".\"m__tally_backup\"",
                "COMMIT"
            ]
        );
    }

    #[test]
    fn merge_updates_non_keys() {
        let sql = merge_sql(
            &Relation::new("s", "m"),
            "t",
            &["id".into(), "v".into()],
            &["id".into()],
        );
        assert!(sql.contains("ON dbt_internal_dest.\"id\" = dbt_internal_source.\"id\""));
        assert!(sql.contains("UPDATE SET \"v\" = dbt_internal_source.\"v\""));
        assert!(sql.contains(
            "INSERT (\"id\", \"v\") VALUES (dbt_internal_source.\"id\", dbt_internal_source.\"v\")"
        ));
    }
}
