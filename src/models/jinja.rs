//! Jinja rendering of model files with minijinja, with the dbt functions a model may call:
//! `ref`, `source`, `config`, `this`, `is_incremental`, `var`, `env_var`, `target`, `log`,
//! `run_started_at`.
//!
//! A model is rendered twice, as dbt does: once when the project loads ("parse": `ref` and
//! `source` only record what they name, `config` records settings, `is_incremental()` is
//! false and then true so that refs in either branch are seen), and once just before it
//! runs ("compile": names resolve to real relations and `is_incremental()` tells the truth
//! about the warehouse at that moment).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Object, Rest, Serde, Value};
use minijinja::{AutoEscape, Environment, ErrorKind};
use serde_json::{Map, Value as Json};

use super::error::{Location, ModelError, Result};

/// A relation as models see it: `{{ this }}` and `{{ ref('m') }}` render it quoted,
/// `{{ this.schema }}` and `{{ this.identifier }}` give the parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Relation {
    /// The schema.
    pub schema: String,
    /// The table or view name.
    pub identifier: String,
}

impl Relation {
    /// A relation from its parts.
    pub fn new(schema: impl Into<String>, identifier: impl Into<String>) -> Relation {
        Relation {
            schema: schema.into(),
            identifier: identifier.into(),
        }
    }

    /// The same schema, another name (for temporary and backup relations).
    pub fn with_identifier(&self, identifier: impl Into<String>) -> Relation {
        Relation::new(self.schema.clone(), identifier)
    }
}

/// Double-quotes an identifier for SQL, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Single-quotes a string literal for SQL, doubling embedded quotes.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.identifier)
        )
    }
}

impl Object for Relation {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "schema" => Some(Value::from(self.schema.clone())),
            "identifier" | "name" | "table" => Some(Value::from(self.identifier.clone())),
            "database" => Some(Value::from("tally")),
            _ => None,
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// What rendering a model recorded about it.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Names passed to `ref()`, in order of appearance.
    pub refs: Vec<String>,
    /// `(source, table)` pairs passed to `source()`.
    pub sources: Vec<(String, String)>,
    /// Settings passed to `config()`.
    pub config: Map<String, Json>,
}

/// How `ref()` and `source()` resolve while compiling; when absent (parsing) they render a
/// placeholder and only record the name.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    /// Model or seed name to the SQL text that stands for it (a quoted relation, or the CTE
    /// name of an ephemeral model).
    pub refs: HashMap<String, String>,
    /// `(source, table)` to its quoted relation.
    pub sources: HashMap<(String, String), String>,
}

/// Everything a render needs besides the template text.
#[derive(Debug, Clone, Default)]
pub struct RenderInput {
    /// Project vars merged with `--vars` (the latter win).
    pub vars: Map<String, Json>,
    /// The model's own relation, for `{{ this }}`.
    pub this: Option<Relation>,
    /// What `is_incremental()` returns.
    pub is_incremental: bool,
    /// `None` while parsing; the name table while compiling.
    pub resolver: Option<Arc<Resolver>>,
    /// The target schema (for `{{ target.schema }}`).
    pub target_schema: String,
    /// `{{ run_started_at }}`, ISO 8601.
    pub run_started_at: String,
}

/// Renders `source` (the file `path`, relative to the project) and returns the text and
/// what it recorded.
pub fn render(path: &str, source: &str, input: &RenderInput) -> Result<(String, Captured)> {
    let captured = Arc::new(Mutex::new(Captured::default()));
    let env = environment(input, &captured);
    let tmpl = env
        .template_from_named_str(path, source)
        .map_err(|e| jinja_error(path, &e))?;
    let text = tmpl.render(()).map_err(|e| jinja_error(path, &e))?;
    let captured = captured
        .lock()
        .map(|c| c.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    Ok((text, captured))
}

/// Renders a YAML string value that may hold Jinja (`schema: "{{ var('web_schema', 'web') }}"`,
/// `+target_schema: "{{ target.schema }}_snapshots"`), with `var`, `env_var` and `target`
/// available; `at` names it in errors.
pub fn render_value(
    at: &str,
    text: &str,
    vars: &Map<String, Json>,
    target_schema: &str,
) -> Result<String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_string());
    }
    let input = RenderInput {
        vars: vars.clone(),
        target_schema: target_schema.to_string(),
        ..Default::default()
    };
    render(at, text, &input).map(|(t, _)| t)
}

fn jinja_error(path: &str, e: &minijinja::Error) -> ModelError {
    let mut message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    // An error raised inside our own functions is the useful part; keep minijinja's
    // wrapper short.
    if let Some(src) = std::error::Error::source(e) {
        message = format!("{message}: {src}");
    }
    ModelError::Jinja {
        at: Location::line(e.name().unwrap_or(path).to_string(), e.line()),
        message,
    }
}

fn environment<'s>(input: &RenderInput, captured: &Arc<Mutex<Captured>>) -> Environment<'s> {
    let mut env = Environment::new();
    // SQL is not HTML: never escape, whatever the file is called.
    env.set_auto_escape_callback(|_| AutoEscape::None);

    let c = captured.clone();
    let resolver = input.resolver.clone();
    env.add_function(
        "ref",
        move |a: String,
              b: Option<String>,
              _kw: Kwargs|
              -> std::result::Result<Value, minijinja::Error> {
            // ref('package', 'model') names the model last.
            let name = b.unwrap_or(a);
            if let Ok(mut c) = c.lock() {
                c.refs.push(name.clone());
            }
            match &resolver {
                None => Ok(Value::from(format!("__ref_{name}"))),
                Some(r) => r
                    .refs
                    .get(&name)
                    .map(|s| Value::from(s.clone()))
                    .ok_or_else(|| {
                        minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("ref('{name}') names no model or seed of this project"),
                        )
                    }),
            }
        },
    );

    let c = captured.clone();
    let resolver = input.resolver.clone();
    env.add_function(
        "source",
        move |s: String, t: String| -> std::result::Result<Value, minijinja::Error> {
            if let Ok(mut c) = c.lock() {
                c.sources.push((s.clone(), t.clone()));
            }
            match &resolver {
                None => Ok(Value::from(format!("__source_{s}_{t}"))),
                Some(r) => r
                    .sources
                    .get(&(s.clone(), t.clone()))
                    .map(|x| Value::from(x.clone()))
                    .ok_or_else(|| {
                        minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            format!("source('{s}', '{t}') is not declared in any sources: block"),
                        )
                    }),
            }
        },
    );

    let c = captured.clone();
    env.add_function(
        "config",
        move |kw: Kwargs| -> std::result::Result<String, minijinja::Error> {
            let mut map = Map::new();
            for key in kw.args() {
                let v: Value = kw.peek(key)?;
                let json = serde_json::to_value(&v).map_err(|e| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string())
                })?;
                map.insert(key.to_string(), json);
            }
            if let Ok(mut c) = c.lock() {
                c.config.extend(map);
            }
            Ok(String::new())
        },
    );

    let is_incr = input.is_incremental;
    env.add_function("is_incremental", move || is_incr);

    let vars = input.vars.clone();
    env.add_function(
        "var",
        // `Rest` rather than `Option`: minijinja turns an explicit `none` default into a
        // missing argument, and `var('x', none)` is a common way to make a var optional.
        move |name: String, rest: Rest<Value>| -> std::result::Result<Value, minijinja::Error> {
            match vars.get(&name) {
                Some(v) => Ok(Value::from(Serde(v.clone()))),
                None => rest.first().cloned().ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("required var '{name}' not found: set it under vars: in dbt_project.yml or pass --vars"),
                    )
                }),
            }
        },
    );

    env.add_function(
        "env_var",
        |name: String, rest: Rest<Value>| -> std::result::Result<Value, minijinja::Error> {
            match std::env::var(&name) {
                Ok(v) => Ok(Value::from(v)),
                Err(_) => rest.first().cloned().ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("env var '{name}' is not set and has no default"),
                    )
                }),
            }
        },
    );

    env.add_function("log", |msg: Value, _info: Option<bool>| {
        tracing::info!(target: "tally::models", "{msg}");
        String::new()
    });

    if let Some(this) = &input.this {
        env.add_global("this", Value::from_object(this.clone()));
    }
    env.add_global(
        "target",
        Value::from(Serde(serde_json::json!({
            "name": "tally",
            "type": "tally",
            "schema": input.target_schema,
            "database": "tally",
        }))),
    );
    env.add_global("run_started_at", Value::from(input.run_started_at.clone()));
    env.add_global("execute", Value::from(input.resolver.is_some()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_refs_sources_and_config() {
        let src = "{{ config(materialized='incremental', unique_key='id') }}\nselect * from {{ ref('a') }} join {{ source('web', 'pages') }}\n{% if is_incremental() %}where x > (select max(x) from {{ this }}){% endif %}";
        let input = RenderInput {
            this: Some(Relation::new("public", "m")),
            ..Default::default()
        };
        let (_, c) = render("models/m.sql", src, &input).expect("renders");
        assert_eq!(c.refs, vec!["a"]);
        assert_eq!(c.sources, vec![("web".to_string(), "pages".to_string())]);
        assert_eq!(c.config["materialized"], "incremental");
        assert_eq!(c.config["unique_key"], "id");
    }

    #[test]
    fn compiles_names_and_vars() {
        let mut r = Resolver::default();
        r.refs
            .insert("a".into(), Relation::new("s", "a").to_string());
        let mut vars = Map::new();
        vars.insert("gap".into(), Json::from(30));
        let input = RenderInput {
            vars,
            this: Some(Relation::new("s", "m")),
            is_incremental: true,
            resolver: Some(Arc::new(r)),
            ..Default::default()
        };
        let (sql, _) = render(
            "m.sql",
            "select {{ var('gap') }}, {{ var('x', 'd') }}{% if var('y', none) %}!{% endif %} from {{ ref('a') }}{% if is_incremental() %} -- {{ this }} {{ this.identifier }}{% endif %}",
            &input,
        )
        .expect("renders");
        assert_eq!(sql, "select 30, d from \"s\".\"a\" -- \"s\".\"m\" m");
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = render(
            "models/bad.sql",
            "select 1\n{{ nope( }}",
            &RenderInput::default(),
        )
        .expect_err("syntax error");
        assert!(err.to_string().starts_with("models/bad.sql:2:"), "{err}");
        let err = render(
            "models/v.sql",
            "\n\nselect {{ var('missing') }}",
            &RenderInput::default(),
        )
        .expect_err("missing var");
        assert!(err.to_string().starts_with("models/v.sql:3:"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
