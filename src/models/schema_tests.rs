//! Data tests: dbt's four generic tests (`unique`, `not_null`, `accepted_values`,
//! `relationships`) declared on columns in property files, and singular tests (a `.sql` file
//! under `tests/` selecting the failing rows). Each becomes one query counting failures, so a
//! test is one round trip whether it runs embedded or against a server.

use serde_json::{Map, Value as Json};

use super::error::{Location, ModelError, Result};
use super::jinja::quote_literal;

/// What a test is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A model or seed, by name.
    Node(String),
    /// A declared source table.
    Source(String, String),
}

/// The check a test makes.
#[derive(Debug, Clone, PartialEq)]
pub enum TestKind {
    /// No two rows share a non-null value.
    Unique {
        /// The column (or expression).
        column: String,
    },
    /// No null values.
    NotNull {
        /// The column.
        column: String,
    },
    /// Every non-null value is in the list.
    AcceptedValues {
        /// The column.
        column: String,
        /// Accepted values, as written.
        values: Vec<String>,
        /// Quote values as strings (`quote: false` compares numbers or expressions).
        quote: bool,
    },
    /// Every non-null value is present in `field` of another relation (a foreign key).
    Relationships {
        /// The column.
        column: String,
        /// The parent: `ref('x')` or `source('s', 't')`.
        to: Target,
        /// The parent's column.
        field: String,
    },
    /// A query returning the failing rows, from `tests/<name>.sql`.
    Singular {
        /// The file's text (Jinja).
        sql: String,
    },
}

/// One test.
#[derive(Debug, Clone)]
pub struct TestDef {
    /// dbt-style name (`unique_orders_id`), unique in the project.
    pub name: String,
    /// The file declaring it.
    pub path: String,
    /// The check.
    pub kind: TestKind,
    /// The model, seed or source it tests (none for singular tests).
    pub attached: Option<Target>,
    /// Models and seeds it reads: it runs after them, and `--select` of them selects it.
    pub refs: Vec<String>,
    /// Sources it reads.
    pub sources: Vec<(String, String)>,
    /// `severity: warn`: failures are reported but do not fail the run.
    pub warn: bool,
    /// `where:` filter on the tested relation.
    pub where_clause: Option<String>,
}

/// Parses `ref('x')` / `source('s', 't')` as written in a `to:` argument.
fn parse_target(text: &str) -> Option<Target> {
    let t = text.trim();
    let t = t
        .strip_prefix("{{")
        .and_then(|x| x.strip_suffix("}}"))
        .unwrap_or(t)
        .trim();
    let args = |inner: &str| -> Vec<String> {
        inner
            .split(',')
            .map(|a| a.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .filter(|a| !a.is_empty())
            .collect()
    };
    if let Some(inner) = t.strip_prefix("ref(").and_then(|x| x.strip_suffix(')')) {
        let a = args(inner);
        return a.last().map(|n| Target::Node(n.clone()));
    }
    if let Some(inner) = t.strip_prefix("source(").and_then(|x| x.strip_suffix(')')) {
        let a = args(inner);
        if a.len() == 2 {
            return Some(Target::Source(a[0].clone(), a[1].clone()));
        }
    }
    None
}

fn target_label(t: &Target) -> String {
    match t {
        Target::Node(n) => n.clone(),
        Target::Source(s, t) => format!("source_{s}_{t}"),
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect()
}

/// Builds the tests declared in a property entry: column tests (`columns: [{name, tests}]`)
/// and entry-level tests with `column_name:`.
pub fn from_properties(
    target: &Target,
    path: &str,
    columns: &[Json],
    tests: &[Json],
) -> Result<Vec<TestDef>> {
    let mut out = Vec::new();
    for c in columns {
        let Some(col) = c.get("name").and_then(Json::as_str) else {
            continue;
        };
        let specs = c
            .get("data_tests")
            .and_then(Json::as_array)
            .into_iter()
            .chain(c.get("tests").and_then(Json::as_array))
            .flatten();
        for spec in specs {
            if let Some(t) = one(target, path, Some(col), spec)? {
                out.push(t);
            }
        }
    }
    for spec in tests {
        if let Some(t) = one(target, path, None, spec)? {
            out.push(t);
        }
    }
    Ok(out)
}

fn one(target: &Target, path: &str, column: Option<&str>, spec: &Json) -> Result<Option<TestDef>> {
    let (test, args): (String, Map<String, Json>) = match spec {
        Json::String(s) => (s.clone(), Map::new()),
        Json::Object(m) if m.len() == 1 => {
            let (k, v) = m
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            (k, v.as_object().cloned().unwrap_or_default())
        }
        Json::Object(m) => {
            // dbt 1.8 style: {name: ..., test_name: unique, ...}
            match m.get("test_name").and_then(Json::as_str) {
                Some(n) => (n.to_string(), m.clone()),
                None => {
                    return Err(ModelError::Yaml {
                        at: Location::file(path),
                        message: format!("cannot read test {spec}"),
                    });
                }
            }
        }
        _ => {
            return Err(ModelError::Yaml {
                at: Location::file(path),
                message: format!("cannot read test {spec}"),
            });
        }
    };
    // dbt 1.10+ nests a test's own arguments under `arguments:`; they read as top-level.
    let mut args = args;
    if let Some(nested) = args.remove("arguments").as_ref().and_then(Json::as_object) {
        for (k, v) in nested {
            args.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let config = args
        .get("config")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| args.get(k).or_else(|| config.get(k));
    let warn = get("severity")
        .and_then(Json::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("warn"));
    let where_clause = get("where").and_then(Json::as_str).map(str::to_string);
    let column = column.map(str::to_string).or_else(|| {
        args.get("column_name")
            .and_then(Json::as_str)
            .map(str::to_string)
    });
    let need_column = |test: &str| -> Result<String> {
        column.clone().ok_or_else(|| ModelError::Yaml {
            at: Location::file(path),
            message: format!("test {test} on {} needs a column", target_label(target)),
        })
    };
    let label = target_label(target);
    let mut refs = Vec::new();
    let mut sources = Vec::new();
    match target {
        Target::Node(n) => refs.push(n.clone()),
        Target::Source(s, t) => sources.push((s.clone(), t.clone())),
    }
    let (name, kind) = match test.as_str() {
        "unique" => {
            let column = need_column("unique")?;
            (
                format!("unique_{label}_{}", slug(&column)),
                TestKind::Unique { column },
            )
        }
        "not_null" => {
            let column = need_column("not_null")?;
            (
                format!("not_null_{label}_{}", slug(&column)),
                TestKind::NotNull { column },
            )
        }
        "accepted_values" => {
            let column = need_column("accepted_values")?;
            let values: Vec<String> = args
                .get("values")
                .and_then(Json::as_array)
                .ok_or_else(|| ModelError::Yaml {
                    at: Location::file(path),
                    message: format!("accepted_values on {label}.{column} needs values:"),
                })?
                .iter()
                .map(|v| match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let quote = args.get("quote").and_then(Json::as_bool).unwrap_or(true);
            (
                format!(
                    "accepted_values_{label}_{}__{}",
                    slug(&column),
                    slug(&values.join("__"))
                ),
                TestKind::AcceptedValues {
                    column,
                    values,
                    quote,
                },
            )
        }
        "relationships" => {
            let column = need_column("relationships")?;
            let to_text = args.get("to").and_then(Json::as_str).unwrap_or_default();
            let to = parse_target(to_text).ok_or_else(|| ModelError::Yaml {
                at: Location::file(path),
                message: format!(
                    "relationships on {label}.{column}: to: must be ref('model') or source('s', 't'), not '{to_text}'"
                ),
            })?;
            let field = args
                .get("field")
                .and_then(Json::as_str)
                .ok_or_else(|| ModelError::Yaml {
                    at: Location::file(path),
                    message: format!("relationships on {label}.{column} needs field:"),
                })?
                .to_string();
            match &to {
                Target::Node(n) => refs.push(n.clone()),
                Target::Source(s, t) => sources.push((s.clone(), t.clone())),
            }
            (
                format!(
                    "relationships_{label}_{}__{}__{}",
                    slug(&column),
                    slug(&field),
                    target_label(&to)
                ),
                TestKind::Relationships { column, to, field },
            )
        }
        other => {
            tracing::warn!(
                test = other,
                file = path,
                "skipping test: only unique, not_null, accepted_values and relationships are built in"
            );
            return Ok(None);
        }
    };
    Ok(Some(TestDef {
        name,
        path: path.to_string(),
        kind,
        attached: Some(target.clone()),
        refs,
        sources,
        warn,
        where_clause,
    }))
}

/// The query counting a generic test's failures, given the tested relation and (for
/// relationships) the parent relation, both as SQL text. Singular tests are wrapped by the
/// runner after rendering.
pub fn failures_sql(
    kind: &TestKind,
    relation: &str,
    parent: Option<&str>,
    where_clause: Option<&str>,
) -> String {
    let model = match where_clause {
        Some(w) => format!("(SELECT * FROM {relation} WHERE {w}) AS dbt_subquery"),
        None => relation.to_string(),
    };
    match kind {
        TestKind::Unique { column } => format!(
            "SELECT count(*) AS failures FROM (SELECT {column} AS unique_field FROM {model} WHERE {column} IS NOT NULL GROUP BY {column} HAVING count(*) > 1) AS validation_errors"
        ),
        TestKind::NotNull { column } => {
            format!("SELECT count(*) AS failures FROM {model} WHERE {column} IS NULL")
        }
        TestKind::AcceptedValues {
            column,
            values,
            quote,
        } => {
            let list: Vec<String> = values
                .iter()
                .map(|v| if *quote { quote_literal(v) } else { v.clone() })
                .collect();
            format!(
                "SELECT count(*) AS failures FROM (SELECT {column} AS value_field, count(*) AS n_records FROM {model} GROUP BY {column}) AS all_values WHERE value_field IS NOT NULL AND value_field NOT IN ({})",
                list.join(", ")
            )
        }
        TestKind::Relationships { column, field, .. } => format!(
            "SELECT count(*) AS failures FROM (SELECT {column} AS from_field FROM {model} WHERE {column} IS NOT NULL) AS child LEFT JOIN (SELECT {field} AS to_field FROM {}) AS parent ON child.from_field = parent.to_field WHERE parent.to_field IS NULL",
            parent.unwrap_or("NULL")
        ),
        TestKind::Singular { sql } => {
            format!(
                "SELECT count(*) AS failures FROM ({}) AS dbt_internal_test",
                sql.trim().trim_end_matches(';')
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_column_tests() {
        let cols: Vec<Json> = serde_json::from_str(
            r#"[{"name": "id", "tests": ["unique", "not_null"]},
                {"name": "status", "data_tests": [{"accepted_values": {"values": ["a", "b"], "config": {"severity": "warn"}}}]},
                {"name": "customer_id", "tests": [{"relationships": {"to": "ref('customers')", "field": "id"}}]},
                {"name": "kind", "data_tests": [{"accepted_values": {"arguments": {"values": ["x"]}}}]}]"#,
        )
        .expect("json");
        let t = from_properties(
            &Target::Node("orders".into()),
            "models/schema.yml",
            &cols,
            &[],
        )
        .expect("tests");
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "unique_orders_id",
                "not_null_orders_id",
                "accepted_values_orders_status__a__b",
                "relationships_orders_customer_id__id__customers",
                "accepted_values_orders_kind__x"
            ]
        );
        assert!(t[2].warn);
        assert_eq!(t[3].refs, vec!["orders", "customers"]);
    }

    #[test]
    fn parses_relationship_targets() {
        assert_eq!(parse_target("ref('x')"), Some(Target::Node("x".into())));
        assert_eq!(
            parse_target("{{ source(\"web\", 'pages') }}"),
            Some(Target::Source("web".into(), "pages".into()))
        );
        assert_eq!(parse_target("x"), None);
    }
}
