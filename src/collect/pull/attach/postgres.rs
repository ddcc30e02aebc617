//! Attached PostgreSQL tables, over `tokio-postgres` (already tally's PostgreSQL client).
//! TLS is not offered yet: the connection is plain, for databases on a private network.

use std::str::FromStr;

use futures::{StreamExt, pin_mut};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::Remote;
use super::values::{BatchSender, Column, Kind};
use crate::error::Result;

/// Connects, the password from `password_env` overriding the URL's.
async fn connect(remote: &Remote) -> Result<Client> {
    let mut config = tokio_postgres::Config::from_str(remote.url.as_str()).map_err(|e| {
        remote.error(
            "22023",
            format!(
                "invalid PostgreSQL URL {}: {e}",
                super::super::redact_url(&remote.url)
            ),
        )
    })?;
    if let Some(p) = &remote.password {
        config.password(p);
    }
    config.application_name("tally");
    config.connect_timeout(std::time::Duration::from_secs(10));
    let (client, conn) = config.connect(NoTls).await.map_err(|e| {
        let code = match e.code() {
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                "28000"
            }
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => "3D000",
            _ => "08001",
        };
        remote.error(
            code,
            format!(
                "cannot connect to {}: {e}",
                super::super::redact_url(&remote.url)
            ),
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "attached PostgreSQL connection ended");
        }
    });
    Ok(client)
}

fn kind_of(type_name: &str) -> Kind {
    let t = type_name.to_ascii_lowercase();
    match t.as_str() {
        "boolean" => Kind::Bool,
        "smallint" => Kind::Int16,
        "integer" => Kind::Int32,
        "bigint" => Kind::Int64,
        "real" => Kind::Float32,
        "double precision" => Kind::Float64,
        "date" => Kind::Date,
        "bytea" => Kind::Binary,
        "numeric" => {
            let (p, s) = crate::catalog::types::DEFAULT_NUMERIC;
            Kind::Decimal(p, s)
        }
        _ if t.starts_with("numeric(") => {
            let inner = t.trim_start_matches("numeric(").trim_end_matches(')');
            let mut it = inner.split(',').map(|x| x.trim().parse::<i64>().ok());
            match (it.next().flatten(), it.next().flatten().or(Some(0))) {
                (Some(p), Some(s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                    Kind::Decimal(p as u8, s as i8)
                }
                // Wider than Arrow's 38 digits: as double.
                _ => Kind::Float64,
            }
        }
        _ if t.starts_with("timestamp")
            && t.ends_with("with time zone")
            && !t.ends_with("without time zone") =>
        {
            Kind::TimestampTz
        }
        _ if t.starts_with("timestamp") => Kind::Timestamp,
        _ => Kind::Text,
    }
}

/// The columns of the remote table; a missing table is 42P01.
pub async fn columns(remote: &Remote) -> Result<Vec<Column>> {
    let client = connect(remote).await?;
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&remote.quoted_table()],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME => {
                remote.error(
                    "42P01",
                    format!(
                        "remote table {} does not exist in {}",
                        remote.table_text(),
                        super::super::redact_url(&remote.url)
                    ),
                )
            }
            _ => remote.error(
                "08006",
                format!("cannot read the columns of {}: {e}", remote.shown()),
            ),
        })?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0).map_err(|e| remote.error("XX000", e))?;
        let ty: String = r.try_get(1).map_err(|e| remote.error("XX000", e))?;
        out.push(Column {
            kind: kind_of(&ty),
            name,
        });
    }
    Ok(out)
}

/// Runs `sql` and streams its rows into `out`.
pub async fn stream(remote: &Remote, sql: &str, mut out: BatchSender) -> Result<()> {
    let client = connect(remote).await?;
    let rows = client
        .query_raw(
            sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(|e| remote.error("08006", format!("query on {} failed: {e}", remote.shown())))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| {
            remote.error("08006", format!("reading {} failed: {e}", remote.shown()))
        })?;
        let mut cells: Vec<Option<&str>> = Vec::with_capacity(out.width());
        for i in 0..out.width() {
            cells.push(row.try_get(i).map_err(|e| remote.error("XX000", e))?);
        }
        if !out
            .push(cells.into_iter().map(|c| c.map(str::as_bytes)), true)
            .await?
        {
            return Ok(());
        }
    }
    out.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(kind_of("numeric(10,2)"), Kind::Decimal(10, 2));
        assert_eq!(kind_of("timestamp with time zone"), Kind::TimestampTz);
        assert_eq!(kind_of("timestamp(3) without time zone"), Kind::Timestamp);
        assert_eq!(kind_of("jsonb"), Kind::Text);
        assert_eq!(kind_of("character varying(20)"), Kind::Text);
    }
}
