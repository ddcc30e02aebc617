//! The SQL faces of enrichment: `enrich(connection, key [, path])` returns the API's answer
//! for each key as JSON text (or the member at `path`, a dot path such as `company.name`, as
//! text when it is a JSON string, as `->>` gives it),
//! and `verify_email(connection, email)` returns ZeroBounce's verdict as a struct of
//! `status`, `sub_status`, `free_email` and `did_you_mean`. Both are asynchronous scalar
//! functions: DataFusion hands them whole batches, which [`super::Connection`] deduplicates,
//! caches, batches and sends concurrently.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::async_udf::AsyncScalarUDFImpl;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use serde_json::Value;

use super::config::ConnectionKind;
use super::{Connection, ConnectionRegistry};

fn text_literal(v: &ScalarValue) -> Option<Option<&str>> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            Some(s.as_deref())
        }
        ScalarValue::Null => Some(None),
        _ => None,
    }
}

/// The constant connection name of argument 0, checked against the registry while planning.
fn planned_connection(
    name: &str,
    registry: &dyn ConnectionRegistry,
    args: &ReturnFieldArgs,
) -> Result<Option<Arc<Connection>>> {
    match args.scalar_arguments.first().copied().flatten() {
        // Not known as a constant in this planning pass (DataFusion asks before and after
        // coercion); the check at execution covers it.
        None => Ok(None),
        Some(v) => match text_literal(v) {
            Some(Some(c)) => match registry.connection(c) {
                Ok(conn) => Ok(Some(conn)),
                Err(e) => plan_err!("{name}: argument connection: {e}"),
            },
            _ => plan_err!("{name}: argument connection must be text"),
        },
    }
}

fn runtime_connection(
    name: &str,
    registry: &dyn ConnectionRegistry,
    args: &ScalarFunctionArgs,
) -> Result<Arc<Connection>> {
    match args.args.first() {
        Some(ColumnarValue::Scalar(v)) => match text_literal(v) {
            Some(Some(c)) => registry
                .connection(c)
                .or_else(|e| exec_err!("{name}: argument connection: {e}")),
            _ => exec_err!("{name}: argument connection must be text"),
        },
        _ => exec_err!("{name}: argument connection must be a constant"),
    }
}

/// Argument `i` as a Utf8 array of `rows` values.
fn text_array(args: &ScalarFunctionArgs, i: usize, rows: usize) -> Result<ArrayRef> {
    let a = match &args.args[i] {
        ColumnarValue::Array(a) => a.clone(),
        ColumnarValue::Scalar(s) => s.to_array_of_size(rows)?,
    };
    Ok(cast(&a, &DataType::Utf8)?)
}

async fn lookups(
    name: &str,
    connection: &Connection,
    keys: &ArrayRef,
) -> Result<Vec<Option<Arc<Value>>>> {
    let keys = keys.as_string::<i32>();
    let keys: Vec<Option<&str>> = keys.iter().collect();
    connection
        .lookup_all(&keys)
        .await
        .or_else(|e| exec_err!("{name}: {e}"))
}

/// `enrich(connection, key [, path]) -> text`.
#[derive(Debug)]
pub struct EnrichUdf {
    registry: Arc<dyn ConnectionRegistry>,
    signature: Signature,
}

impl EnrichUdf {
    /// `enrich` over the connections of `registry`.
    pub fn new(registry: Arc<dyn ConnectionRegistry>) -> Self {
        EnrichUdf {
            registry,
            signature: Signature::one_of(
                vec![TypeSignature::String(2), TypeSignature::String(3)],
                // Answers change outside the database: never fold or reuse across queries.
                Volatility::Volatile,
            ),
        }
    }
}

impl PartialEq for EnrichUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.registry, &other.registry)
    }
}
impl Eq for EnrichUdf {}
impl Hash for EnrichUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "enrich".hash(state);
    }
}

impl ScalarUDFImpl for EnrichUdf {
    fn name(&self) -> &str {
        "enrich"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        planned_connection("enrich", self.registry.as_ref(), &args)?;
        if let Some(Some(v)) = args.scalar_arguments.get(2)
            && !matches!(text_literal(v), Some(Some(_)))
        {
            return plan_err!("enrich: argument path must be text, such as 'company.name'");
        }
        Ok(Arc::new(Field::new("enrich", DataType::Utf8, true)))
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("enrich is asynchronous and runs through DataFusion's async function node")
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for EnrichUdf {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let connection = runtime_connection("enrich", self.registry.as_ref(), &args)?;
        let rows = args.number_rows;
        let keys = text_array(&args, 1, rows)?;
        let paths = match args.args.len() {
            3 => Some(text_array(&args, 2, rows)?),
            _ => None,
        };
        let values = lookups("enrich", &connection, &keys).await?;
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for (i, v) in values.iter().enumerate() {
            let picked = match (v, &paths) {
                (Some(v), Some(p)) if p.is_valid(i) => at_path(v, p.as_string::<i32>().value(i)),
                (Some(_), Some(_)) => None,
                (Some(v), None) => Some(v.as_ref()),
                (None, _) => None,
            };
            match picked {
                Some(Value::Null) | None => out.append_null(),
                // A member picked by path reads as text, as `->>` does; whole answers stay JSON.
                Some(Value::String(s)) if paths.is_some() => out.append_value(s),
                Some(v) => out.append_value(v.to_string()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(v, |v, step| match v {
            Value::Object(o) => o.get(step),
            Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
}

/// The struct `verify_email` returns.
pub fn verify_email_fields() -> Fields {
    Fields::from(vec![
        Field::new("status", DataType::Utf8, true),
        Field::new("sub_status", DataType::Utf8, true),
        Field::new("free_email", DataType::Boolean, true),
        Field::new("did_you_mean", DataType::Utf8, true),
    ])
}

/// `verify_email(connection, email) -> struct`.
#[derive(Debug)]
pub struct VerifyEmailUdf {
    registry: Arc<dyn ConnectionRegistry>,
    signature: Signature,
}

impl VerifyEmailUdf {
    /// `verify_email` over the connections of `registry`.
    pub fn new(registry: Arc<dyn ConnectionRegistry>) -> Self {
        VerifyEmailUdf {
            registry,
            signature: Signature::string(2, Volatility::Volatile),
        }
    }
}

impl PartialEq for VerifyEmailUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.registry, &other.registry)
    }
}
impl Eq for VerifyEmailUdf {}
impl Hash for VerifyEmailUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "verify_email".hash(state);
    }
}

impl ScalarUDFImpl for VerifyEmailUdf {
    fn name(&self) -> &str {
        "verify_email"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(verify_email_fields()))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let Some(c) = planned_connection("verify_email", self.registry.as_ref(), &args)?
            && c.config().kind != ConnectionKind::ZeroBounce
        {
            return plan_err!(
                "verify_email: argument connection: \"{}\" is a connection of type {}, not an email verification API (TYPE zerobounce)",
                c.config().name,
                c.config().kind.name()
            );
        }
        Ok(Arc::new(Field::new(
            "verify_email",
            DataType::Struct(verify_email_fields()),
            true,
        )))
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("verify_email is asynchronous and runs through DataFusion's async function node")
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for VerifyEmailUdf {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let connection = runtime_connection("verify_email", self.registry.as_ref(), &args)?;
        let rows = args.number_rows;
        let emails = text_array(&args, 1, rows)?;
        let values = lookups("verify_email", &connection, &emails).await?;
        let mut status = StringBuilder::new();
        let mut sub_status = StringBuilder::new();
        let mut free = BooleanBuilder::new();
        let mut did_you_mean = StringBuilder::new();
        let text = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        for v in &values {
            match v {
                Some(v) => {
                    status.append_option(text(v, "status"));
                    sub_status.append_option(text(v, "sub_status"));
                    free.append_option(v.get("free_email").and_then(|f| match f {
                        Value::Bool(b) => Some(*b),
                        Value::String(s) => s.parse().ok(),
                        _ => None,
                    }));
                    did_you_mean.append_option(text(v, "did_you_mean"));
                }
                None => {
                    status.append_null();
                    sub_status.append_null();
                    free.append_null();
                    did_you_mean.append_null();
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(status.finish()),
            Arc::new(sub_status.finish()),
            Arc::new(free.finish()),
            Arc::new(did_you_mean.finish()),
        ];
        let nulls = NullBuffer::from(values.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            verify_email_fields(),
            columns,
            Some(nulls),
        )?)))
    }
}
