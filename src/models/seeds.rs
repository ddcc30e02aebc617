//! Seeds: small CSV files under `seeds/` loaded as tables, as `dbt seed` does. Column types
//! are inferred from the values (bigint, double precision, boolean, date, timestamp, text),
//! unless `column_types:` says otherwise; values go in as literals through plain
//! `CREATE TABLE` and multi-row `INSERT`, which every PostgreSQL front end accepts.

use std::collections::BTreeMap;

use super::error::{Location, ModelError, Result};
use super::jinja::{quote_ident, quote_literal};

/// A parsed seed file.
#[derive(Debug, Clone)]
pub struct SeedData {
    /// Column names from the header.
    pub columns: Vec<String>,
    /// SQL type per column.
    pub types: Vec<String>,
    /// Values; an empty field is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

/// Rows per INSERT statement.
const BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inferred {
    Empty,
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
    Text,
}

fn infer_value(v: &str) -> Inferred {
    let v = v.trim();
    if v.is_empty() {
        return Inferred::Empty;
    }
    if v.parse::<i64>().is_ok() {
        return Inferred::Integer;
    }
    if v.parse::<f64>().is_ok()
        && v.chars().any(|c| c.is_ascii_digit())
        && !v.contains(['i', 'I', 'n', 'N'])
    {
        return Inferred::Float;
    }
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        return Inferred::Boolean;
    }
    if chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok() {
        return Inferred::Date;
    }
    let ts = v.replace('T', " ");
    let ts = ts.trim_end_matches('Z');
    if chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f").is_ok()
        || chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M").is_ok()
    {
        return Inferred::Timestamp;
    }
    Inferred::Text
}

fn widen(a: Inferred, b: Inferred) -> Inferred {
    use Inferred::*;
    match (a, b) {
        (Empty, x) | (x, Empty) => x,
        (x, y) if x == y => x,
        (Integer, Float) | (Float, Integer) => Float,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        _ => Text,
    }
}

fn sql_type(t: Inferred) -> &'static str {
    match t {
        Inferred::Integer => "bigint",
        Inferred::Float => "double precision",
        Inferred::Boolean => "boolean",
        Inferred::Date => "date",
        Inferred::Timestamp => "timestamp",
        Inferred::Empty | Inferred::Text => "text",
    }
}

/// Parses `text` (the file `path`), with `column_types` overriding inferred types.
pub fn parse(path: &str, text: &str, column_types: &BTreeMap<String, String>) -> Result<SeedData> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, &e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if columns.is_empty() || columns.iter().any(String::is_empty) {
        return Err(ModelError::Invalid {
            at: Location::line(path, Some(1)),
            message: "a seed needs a header row naming every column".into(),
        });
    }
    let mut inferred = vec![Inferred::Empty; columns.len()];
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| csv_error(path, &e))?;
        let mut row = Vec::with_capacity(columns.len());
        for (i, field) in rec.iter().enumerate() {
            inferred[i] = widen(inferred[i], infer_value(field));
            row.push((!field.is_empty()).then(|| field.to_string()));
        }
        rows.push(row);
    }
    let types = columns
        .iter()
        .zip(&inferred)
        .map(|(c, t)| {
            column_types
                .get(c)
                .cloned()
                .unwrap_or_else(|| sql_type(*t).to_string())
        })
        .collect();
    Ok(SeedData {
        columns,
        types,
        rows,
    })
}

fn csv_error(path: &str, e: &csv::Error) -> ModelError {
    ModelError::Invalid {
        at: Location::line(path, e.position().map(|p| p.line() as usize)),
        message: format!("bad CSV: {e}"),
    }
}

fn literal(value: &str, ty: &str) -> String {
    match ty {
        "bigint" | "double precision" => value.trim().to_string(),
        "boolean" => value.trim().to_ascii_uppercase(),
        "date" => format!("DATE {}", quote_literal(value.trim())),
        "timestamp" => format!(
            "TIMESTAMP {}",
            quote_literal(value.trim().replace('T', " ").trim_end_matches('Z'))
        ),
        "text" => quote_literal(value),
        other => format!("CAST({} AS {other})", quote_literal(value)),
    }
}

impl SeedData {
    /// `CREATE TABLE <relation> (...)` for the seed's columns.
    pub fn create_sql(&self, relation: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .zip(&self.types)
            .map(|(c, t)| format!("{} {t}", quote_ident(c)))
            .collect();
        format!("CREATE TABLE {relation} ({})", cols.join(", "))
    }

    /// `INSERT` statements loading every row, in batches.
    pub fn insert_sql(&self, relation: &str) -> Vec<String> {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        self.rows
            .chunks(BATCH)
            .map(|chunk| {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|row| {
                        let vals: Vec<String> = row
                            .iter()
                            .zip(&self.types)
                            .map(|(v, t)| match v {
                                Some(v) => literal(v, t),
                                None => "NULL".to_string(),
                            })
                            .collect();
                        format!("({})", vals.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO {relation} ({}) VALUES {}",
                    cols.join(", "),
                    values.join(", ")
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_types_and_builds_sql() {
        let csv = "id,name,score,active,day,at\n1,Ann,1.5,true,2024-01-02,2024-01-02 10:00:00\n2,O'Neil,,false,2024-01-03,2024-01-03T11:00:00Z\n";
        let s = parse("seeds/p.csv", csv, &BTreeMap::new()).expect("parses");
        assert_eq!(
            s.types,
            vec![
                "bigint",
                "text",
                "double precision",
                "boolean",
                "date",
                "timestamp"
            ]
        );
        let ins = s.insert_sql("\"public\".\"p\"");
        assert_eq!(ins.len(), 1);
        assert!(ins[0].contains("'O''Neil', NULL, FALSE"), "{}", ins[0]);
        assert!(
            ins[0].contains("TIMESTAMP '2024-01-03 11:00:00'"),
            "{}",
            ins[0]
        );
    }

    #[test]
    fn column_types_override() {
        let mut ct = BTreeMap::new();
        ct.insert("zip".to_string(), "text".to_string());
        let s = parse("seeds/z.csv", "zip\n01234\n", &ct).expect("parses");
        assert_eq!(s.types, vec!["text"]);
    }

    #[test]
    fn ragged_rows_name_the_line() {
        let e = parse("seeds/bad.csv", "a,b\n1,2\n3\n", &BTreeMap::new()).expect_err("ragged");
        assert!(e.to_string().starts_with("seeds/bad.csv:3"), "{e}");
    }
}
