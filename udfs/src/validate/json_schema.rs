//! `json_schema_errors(json, schema)`: JSON Schema (draft 2020-12) validation with the
//! `jsonschema` crate.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ListBuilder, StringBuilder, StructBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use jsonschema::Draft;
pub use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;

use super::util::{expect_args, finish, for_each_str2, literal_text, to_arrays};

/// How many compiled schemas one function instance keeps. Queries use one or a handful of
/// schemas (a literal, or a tracking plan's few event schemas), so a small cache that is
/// simply emptied when full is enough.
const SCHEMA_CACHE_SIZE: usize = 64;

/// The element type of the result: one violation.
pub fn violation_fields() -> Fields {
    Fields::from(vec![
        Field::new("path", DataType::Utf8, true),
        Field::new("message", DataType::Utf8, true),
    ])
}

/// The result type: a list of violations.
pub fn violations_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(violation_fields()),
        true,
    )))
}

/// Compiles a schema under draft 2020-12 with format assertions on (so `"format": "email"`
/// is checked, as a data contract expects, rather than being the annotation the draft makes
/// it by default). The crate is built without its HTTP and file resolvers, so a schema can
/// only `$ref` into itself: a SQL function never reaches out to the network or disk.
pub fn compile_schema(schema_text: &str) -> std::result::Result<Validator, String> {
    let schema: serde_json::Value =
        serde_json::from_str(schema_text).map_err(|e| format!("not valid JSON: {e}"))?;
    compile_schema_value(&schema)
}

/// [`compile_schema`] for a schema already parsed, as tracking plans hold them: the same
/// draft, format assertions and no remote `$ref`s, so a plan validates at ingest exactly as
/// `json_schema_errors` does in SQL.
pub fn compile_schema_value(schema: &serde_json::Value) -> std::result::Result<Validator, String> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// One way a document violates a schema, split to one property where the keyword names
/// several: a missing `required` property and each property `additionalProperties` (or
/// `unevaluatedProperties`) refuses get their own violation whose path points at the
/// property, so reports can count violations per property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer into the document (`/price`, `/items/0/sku`; `""` for the document).
    pub path: String,
    /// The JSON Schema keyword that failed (`type`, `required`, `additionalProperties`, ...).
    pub keyword: String,
    /// What is wrong, as the validator words it.
    pub message: String,
}

/// Escapes a property name as a JSON Pointer token (RFC 6901).
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Every violation of `instance` against `validator`, at most `limit` of them (a document
/// can violate a schema in very many ways; the first ones are enough to act on).
pub fn schema_violations(
    validator: &Validator,
    instance: &serde_json::Value,
    limit: usize,
) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    for e in validator.iter_errors(instance) {
        if out.len() >= limit {
            break;
        }
        let base = e.instance_path().as_str().to_owned();
        let keyword = e.kind().keyword().to_owned();
        match e.kind() {
            ValidationErrorKind::Required { property } => {
                let name = property
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| property.to_string());
                out.push(SchemaViolation {
                    path: format!("{base}/{}", pointer_token(&name)),
                    keyword,
                    message: e.to_string(),
                });
            }
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                for name in unexpected {
                    if out.len() >= limit {
                        break;
                    }
                    out.push(SchemaViolation {
                        path: format!("{base}/{}", pointer_token(name)),
                        keyword: keyword.clone(),
                        message: format!("property \"{name}\" is not allowed here"),
                    });
                }
            }
            _ => out.push(SchemaViolation {
                path: base,
                keyword,
                message: e.to_string(),
            }),
        }
    }
    out
}

/// `json_schema_errors(json, schema) -> list<struct<path text, message text>>`: the ways
/// the JSON document `json` violates `schema` (JSON Schema draft 2020-12), as instance
/// paths (JSON Pointers, `''` for the document itself) with messages; an empty list when it
/// conforms. Text that is not JSON gives one violation at path `''`. NULL in gives NULL.
///
/// Each schema is compiled once: a constant schema when the statement is planned (an
/// invalid one is a planning error naming the argument), and every schema into a small
/// per-function cache keyed by its text, so a query compiles each distinct schema once.
#[derive(Debug)]
pub struct JsonSchemaErrors {
    signature: Signature,
    cache: Mutex<HashMap<String, Arc<Validator>>>,
}

impl JsonSchemaErrors {
    /// The function.
    pub fn new() -> Self {
        JsonSchemaErrors {
            signature: Signature::string(2, Volatility::Immutable),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled schema for `text`, from the cache or compiled now.
    fn validator(&self, text: &str) -> std::result::Result<Arc<Validator>, String> {
        if let Ok(cache) = self.cache.lock()
            && let Some(v) = cache.get(text)
        {
            return Ok(v.clone());
        }
        let v = Arc::new(compile_schema(text)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= SCHEMA_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(text.to_owned(), v.clone());
        }
        Ok(v)
    }
}

impl Default for JsonSchemaErrors {
    fn default() -> Self {
        Self::new()
    }
}

// The cache is not part of the function's identity.
impl PartialEq for JsonSchemaErrors {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for JsonSchemaErrors {}

impl Hash for JsonSchemaErrors {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

/// Appends one violation to the current list.
fn push_violation(out: &mut ListBuilder<StructBuilder>, path: &str, message: &str) -> Result<()> {
    let s = out.values();
    s.field_builder::<StringBuilder>(0)
        .ok_or_else(|| DataFusionError::Internal("violation path builder".into()))?
        .append_value(path);
    s.field_builder::<StringBuilder>(1)
        .ok_or_else(|| DataFusionError::Internal("violation message builder".into()))?
        .append_value(message);
    s.append(true);
    Ok(())
}

impl ScalarUDFImpl for JsonSchemaErrors {
    fn name(&self) -> &str {
        "json_schema_errors"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(violations_type())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let Some(schema) = literal_text(self.name(), "schema", &args, 1)?
            && let Err(e) = self.validator(schema)
        {
            return plan_err!("json_schema_errors: argument schema is {e}");
        }
        Ok(Arc::new(Field::new(self.name(), violations_type(), true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        expect_args(name, &args, &[2])?;
        let (arrays, all_scalar) = to_arrays(&args)?;
        let values = StructBuilder::from_fields(violation_fields(), 0);
        let mut out = ListBuilder::with_capacity(values, arrays[0].len());
        // The last schema text seen and its validator: constant schemas cost one lookup.
        let mut current: Option<(String, Arc<Validator>)> = None;
        for_each_str2(arrays[0].as_ref(), arrays[1].as_ref(), |doc, schema| {
            let (Some(doc), Some(schema)) = (doc, schema) else {
                out.append(false);
                return Ok(());
            };
            let validator = match &current {
                Some((text, v)) if text == schema => v.clone(),
                _ => {
                    let v = match self.validator(schema) {
                        Ok(v) => v,
                        Err(e) => return exec_err!("{name}: argument schema is {e}"),
                    };
                    current = Some((schema.to_owned(), v.clone()));
                    v
                }
            };
            match serde_json::from_str::<serde_json::Value>(doc) {
                Ok(instance) => {
                    for e in validator.iter_errors(&instance) {
                        push_violation(&mut out, e.instance_path().as_str(), &e.to_string())?;
                    }
                }
                Err(e) => push_violation(&mut out, "", &format!("not valid JSON: {e}"))?,
            }
            out.append(true);
            Ok(())
        })?;
        finish(Arc::new(out.finish()), all_scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_reports() {
        let v = compile_schema(
            r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"},"email":{"type":"string","format":"email"}}}"#,
        )
        .unwrap();
        let doc = serde_json::json!({"id": "x", "email": "nope"});
        let errs: Vec<(String, String)> = v
            .iter_errors(&doc)
            .map(|e| (e.instance_path().as_str().to_owned(), e.to_string()))
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|(p, _)| p == "/id"));
        assert!(errs.iter().any(|(p, _)| p == "/email"));
    }

    #[test]
    fn violations_are_split_per_property() {
        let v = compile_schema(
            r#"{"type":"object","required":["id","sku"],"additionalProperties":false,
                "properties":{"id":{"type":"integer"},"sku":{"type":"string"},"a/b":{}}}"#,
        )
        .unwrap();
        let doc = serde_json::json!({"id": "x", "extra": 1, "more": 2});
        let mut got: Vec<(String, String)> = schema_violations(&v, &doc, 100)
            .into_iter()
            .map(|v| (v.path, v.keyword))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("/extra".to_owned(), "additionalProperties".to_owned()),
                ("/id".to_owned(), "type".to_owned()),
                ("/more".to_owned(), "additionalProperties".to_owned()),
                ("/sku".to_owned(), "required".to_owned()),
            ]
        );
        assert_eq!(schema_violations(&v, &doc, 2).len(), 2);
        assert!(schema_violations(&v, &serde_json::json!({"id": 1, "sku": "s"}), 10).is_empty());
    }

    #[test]
    fn rejects_bad_schemas() {
        assert!(compile_schema("{").is_err());
        assert!(compile_schema(r#"{"type": 12}"#).is_err());
        assert!(compile_schema(r#"{"$ref": "https://example.com/s.json"}"#).is_err());
    }
}
