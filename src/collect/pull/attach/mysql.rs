//! Attached MySQL and MariaDB tables, over `mysql_async` built without its TLS and compression
//! extras (so the connection is plain, for databases on a private network). Rows come
//! through the text protocol, whose values are already the canonical text
//! [`super::values`] parses; the session runs in UTC so `timestamp` columns read as UTC.

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row, Value};

use super::Remote;
use super::values::{BatchSender, Column, Kind};
use crate::collect::pull::redact_url;
use crate::error::{Result, TallyError};

fn connect_error(remote: &Remote, e: mysql_async::Error) -> TallyError {
    let code = match &e {
        mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1044 => "28000",
        mysql_async::Error::Server(s) if s.code == 1049 => "3D000",
        _ => "08001",
    };
    remote.error(
        code,
        format!("cannot connect to {}: {e}", redact_url(&remote.url)),
    )
}

/// Connects, the password from `password_env` overriding the URL's, in UTC.
async fn connect(remote: &Remote) -> Result<Conn> {
    let mut url = remote.url.clone();
    if url.scheme() == "mariadb" {
        // mysql_async knows the scheme mysql:// only.
        let rest = url.as_str().trim_start_matches("mariadb://").to_string();
        url = url::Url::parse(&format!("mysql://{rest}"))
            .map_err(|_| remote.error("22023", "invalid MySQL URL"))?;
    }
    let opts = Opts::from_url(url.as_str()).map_err(|e| {
        remote.error(
            "22023",
            format!("invalid MySQL URL {}: {e}", redact_url(&remote.url)),
        )
    })?;
    let mut builder = OptsBuilder::from_opts(opts);
    if let Some(p) = &remote.password {
        builder = builder.pass(Some(p.clone()));
    }
    let connecting = Conn::new(builder);
    let mut conn = tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
        .await
        .map_err(|_| {
            remote.error(
                "08001",
                format!("cannot connect to {}: timed out", redact_url(&remote.url)),
            )
        })?
        .map_err(|e| connect_error(remote, e))?;
    conn.query_drop("SET time_zone = '+00:00'")
        .await
        .map_err(|e| connect_error(remote, e))?;
    Ok(conn)
}

fn kind_of(data_type: &str, column_type: &str, precision: Option<u64>, scale: Option<u64>) -> Kind {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" if column_type.eq_ignore_ascii_case("tinyint(1)") => Kind::Bool,
        "tinyint" => Kind::Int16,
        "smallint" if unsigned => Kind::Int32,
        "smallint" => Kind::Int16,
        "mediumint" | "year" => Kind::Int32,
        "int" | "integer" if unsigned => Kind::Int64,
        "int" | "integer" => Kind::Int32,
        "bigint" if unsigned => Kind::Decimal(20, 0),
        "bigint" => Kind::Int64,
        "float" => Kind::Float32,
        "double" | "real" => Kind::Float64,
        "decimal" | "numeric" => match (precision, scale) {
            (Some(p), Some(s)) if (1..=38).contains(&p) && s <= p => {
                Kind::Decimal(p as u8, s as i8)
            }
            _ => Kind::Float64,
        },
        "date" => Kind::Date,
        "datetime" => Kind::Timestamp,
        "timestamp" => Kind::TimestampTz,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        _ => Kind::Text,
    }
}

/// The columns of the remote table; a missing table is 42P01.
pub async fn columns(remote: &Remote) -> Result<Vec<Column>> {
    let mut conn = connect(remote).await?;
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE
               FROM information_schema.COLUMNS
              WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?
              ORDER BY ORDINAL_POSITION",
            (remote.schema.clone(), remote.table.clone()),
        )
        .await
        .map_err(|e| {
            remote.error(
                "08006",
                format!("cannot read the columns of {}: {e}", remote.shown()),
            )
        })?;
    let text = |r: &Row, i: usize| -> String {
        match r.as_ref(i) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    };
    let num = |r: &Row, i: usize| -> Option<u64> {
        match r.as_ref(i) {
            Some(Value::UInt(u)) => Some(*u),
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            Some(Value::Bytes(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    };
    let out: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: text(r, 0),
            kind: kind_of(&text(r, 1), &text(r, 2), num(r, 3), num(r, 4)),
        })
        .collect();
    let _ = conn.disconnect().await;
    if out.is_empty() {
        return Err(remote.error(
            "42P01",
            format!(
                "remote table {} does not exist in {}",
                remote.table_text(),
                redact_url(&remote.url)
            ),
        ));
    }
    Ok(out)
}

/// Runs `sql` and streams its rows into `out`.
pub async fn stream(remote: &Remote, sql: &str, mut out: BatchSender) -> Result<()> {
    let mut conn = connect(remote).await?;
    let query_error = |e: mysql_async::Error| {
        remote.error("08006", format!("query on {} failed: {e}", remote.shown()))
    };
    let mut result = conn.query_iter(sql).await.map_err(query_error)?;
    if let Some(mut rows) = result.stream::<Row>().await.map_err(query_error)? {
        while let Some(row) = rows.next().await {
            let row = row.map_err(query_error)?;
            let cells = (0..out.width()).map(|i| match row.as_ref(i) {
                Some(Value::Bytes(b)) => Some(b.as_slice()),
                _ => None,
            });
            // Typed values never come through the text protocol; a NULL is `Value::NULL`.
            if !out.push(cells, false).await? {
                return Ok(());
            }
        }
    }
    drop(result);
    out.flush().await?;
    let _ = conn.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(kind_of("tinyint", "tinyint(1)", None, None), Kind::Bool);
        assert_eq!(kind_of("int", "int(10) unsigned", None, None), Kind::Int64);
        assert_eq!(
            kind_of("decimal", "decimal(10,2)", Some(10), Some(2)),
            Kind::Decimal(10, 2)
        );
        assert_eq!(kind_of("json", "longtext", None, None), Kind::Text);
    }
}
