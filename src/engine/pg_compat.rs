//! PostgreSQL system functions that drivers and tools call during start-up and introspection
//! (`version()`, `current_setting()`, `pg_get_serial_sequence()`, ...), beyond those
//! datafusion-pg-catalog provides. Each returns what PostgreSQL returns for a database
//! without the feature in question (no sequences, no comments, every function visible).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DFResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use parking_lot::RwLock;

use super::PG_VERSION;

/// An argument as a text array (casting other types), for the functions below.
fn text_arg(array: &ArrayRef) -> DFResult<StringArray> {
    let cast = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
    cast.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("expected text".into()))
}

/// A function of fixed result that accepts the argument shapes PostgreSQL's does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConstFn {
    name: &'static str,
    signature: Signature,
    value: ScalarValue,
}

impl ConstFn {
    fn udf(name: &'static str, arities: &[usize], value: ScalarValue) -> ScalarUDF {
        let sigs = arities
            .iter()
            .map(|n| TypeSignature::Any(*n))
            .collect::<Vec<_>>();
        let sigs = if arities.contains(&0) {
            let mut s: Vec<TypeSignature> = sigs
                .into_iter()
                .filter(|t| *t != TypeSignature::Any(0))
                .collect();
            s.push(TypeSignature::Nullary);
            s
        } else {
            sigs
        };
        ScalarUDF::new_from_impl(ConstFn {
            name,
            signature: Signature::one_of(sigs, Volatility::Stable),
            value,
        })
    }
}

impl ScalarUDFImpl for ConstFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// The `version()` string: PostgreSQL's shape, which drivers (SQLAlchemy, JDBC) parse.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {PG_VERSION} (tally {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION")
    )
}

/// Registers the engine-wide compatibility functions.
pub fn register(ctx: &SessionContext) {
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    let null_text = ScalarValue::Utf8(None);
    for udf in [
        ConstFn::udf("version", &[0], text(&version_string())),
        ConstFn::udf("pg_get_serial_sequence", &[2], null_text.clone()),
        ConstFn::udf(
            "pg_function_is_visible",
            &[1],
            ScalarValue::Boolean(Some(true)),
        ),
        ConstFn::udf("pg_type_is_visible", &[1], ScalarValue::Boolean(Some(true))),
        ConstFn::udf("pg_is_in_recovery", &[0], ScalarValue::Boolean(Some(false))),
        // A session sees only its own temporary schema.
        ConstFn::udf(
            "pg_is_other_temp_schema",
            &[1],
            ScalarValue::Boolean(Some(false)),
        ),
        ConstFn::udf("to_regclass", &[1], null_text.clone()),
        ConstFn::udf("obj_description", &[1, 2], null_text.clone()),
        ConstFn::udf("col_description", &[2], null_text.clone()),
        ConstFn::udf("shobj_description", &[2], null_text.clone()),
        ConstFn::udf("pg_get_indexdef", &[1, 3], null_text.clone()),
        ConstFn::udf("pg_get_viewdef", &[1, 2], null_text.clone()),
        ConstFn::udf("pg_get_triggerdef", &[1, 2], null_text.clone()),
        ConstFn::udf("pg_get_function_identity_arguments", &[1], text("")),
        ConstFn::udf("pg_get_function_result", &[1], null_text.clone()),
        ConstFn::udf("pg_get_function_arguments", &[1], text("")),
        ConstFn::udf("txid_current", &[0], ScalarValue::Int64(Some(1))),
        ConstFn::udf("pg_postmaster_start_time", &[0], null_text.clone()),
        ConstFn::udf("inet_server_addr", &[0], null_text.clone()),
        ConstFn::udf("pg_encoding_max_length", &[1], ScalarValue::Int32(Some(4))),
        ConstFn::udf("pg_tablespace_location", &[1], text("")),
    ] {
        ctx.register_udf(udf);
    }
    register_functions(ctx);
    register_more(ctx);
    register_types(ctx);
}

/// Session settings shared between the session and its `current_setting()` function.
pub type Settings = Arc<RwLock<BTreeMap<String, String>>>;

/// `current_setting(name [, missing_ok])`, reading the calling session's settings.
#[derive(Debug)]
pub struct CurrentSetting {
    settings: Settings,
    signature: Signature,
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }
}
impl Eq for CurrentSetting {}
impl Hash for CurrentSetting {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "current_setting".hash(state)
    }
}

impl CurrentSetting {
    /// The function for one session.
    pub fn udf(settings: Settings) -> ScalarUDF {
        ScalarUDF::new_from_impl(CurrentSetting {
            settings,
            signature: Signature::one_of(
                vec![TypeSignature::Any(1), TypeSignature::Any(2)],
                Volatility::Stable,
            ),
        })
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let settings = self.settings.read();
        let lookup = |name: &str| settings.get(&name.to_ascii_lowercase()).cloned();
        match &args.args[0] {
            ColumnarValue::Scalar(s) => {
                let name = s.to_string();
                let v = lookup(name.trim_matches('\''));
                if v.is_none() && args.args.len() == 1 {
                    return Err(datafusion::error::DataFusionError::External(Box::new(
                        crate::error::TallyError::NotFound {
                            kind: "configuration parameter",
                            name,
                        },
                    )));
                }
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(v)))
            }
            ColumnarValue::Array(a) => {
                let names = text_arg(a)?;
                let mut b = StringBuilder::new();
                for i in 0..names.len() {
                    if names.is_null(i) {
                        b.append_null();
                    } else {
                        b.append_option(lookup(names.value(i)));
                    }
                }
                Ok(ColumnarValue::Array(Arc::new(b.finish()) as ArrayRef))
            }
        }
    }
}

/// `session_user` / `current_user` for one session: the login user.
pub fn user_udf(name: &'static str, user: &str) -> ScalarUDF {
    ConstFn::udf(name, &[0], ScalarValue::Utf8(Some(user.to_string())))
}

/// `pg_get_userbyid(oid)` for one session: the login user. tally keeps no owner per object
/// (every user with access may change any object), so the owner shown for a relation is the
/// user looking at it, as it would be on PostgreSQL when each user works in their own
/// objects; dbt's catalog compares the owner with the connected user.
pub fn owner_udf(user: &str) -> ScalarUDF {
    ConstFn::udf(
        "pg_get_userbyid",
        &[1],
        ScalarValue::Utf8(Some(user.to_string())),
    )
}

/// `set_config(name, value, is_local)`: sets a session setting and returns the value.
/// Settings changed this way are recorded for SHOW and `current_setting()`; those with an
/// engine effect (`search_path`, `statement_timeout`) take effect through `SET`.
#[derive(Debug)]
pub struct SetConfig {
    settings: Settings,
    signature: Signature,
}

impl PartialEq for SetConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }
}
impl Eq for SetConfig {}
impl Hash for SetConfig {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "set_config".hash(state)
    }
}

impl SetConfig {
    /// The function for one session.
    pub fn udf(settings: Settings) -> ScalarUDF {
        ScalarUDF::new_from_impl(SetConfig {
            settings,
            signature: Signature::any(3, Volatility::Volatile),
        })
    }
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (names, values) = (text_arg(&arrays[0])?, text_arg(&arrays[1])?);
        let mut out = StringBuilder::new();
        let mut settings = self.settings.write();
        for i in 0..names.len() {
            if names.is_null(i) {
                out.append_null();
                continue;
            }
            let v = if values.is_null(i) {
                String::new()
            } else {
                values.value(i).to_string()
            };
            settings.insert(names.value(i).to_ascii_lowercase(), v.clone());
            out.append_value(v);
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(if args.number_rows == 1 && arrays[0].len() == 1 {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        })
    }
}

/// Plans PostgreSQL type names DataFusion lacks (`uuid`, `json`, `jsonb`, `name`,
/// `citext`) as text, then defers to the catalog's planner (regclass and friends). Casts to
/// `uuid`, `json`, `jsonb`, `varchar(n)`, `char(n)` and `numeric` keep the type's PostgreSQL
/// name in their field's metadata ([`super::columns::PG_TYPE_KEY`]), so the result column is
/// reported as that type (asyncpg decodes `$1::uuid` as a `uuid.UUID`, psycopg a jsonb as a
/// document) although Arrow holds a string or a decimal.
#[derive(Debug)]
pub struct PgTypePlanner {
    /// The planner it wraps.
    pub inner: Option<Arc<dyn datafusion::logical_expr::planner::TypePlanner>>,
}

/// A nullable field of `t` whose metadata names the PostgreSQL type `pg`.
fn declared_field(t: DataType, pg: Option<String>) -> datafusion::arrow::datatypes::FieldRef {
    let f = datafusion::arrow::datatypes::Field::new("", t, true);
    Arc::new(match pg {
        Some(pg) => f.with_metadata(
            [(super::columns::PG_TYPE_KEY.to_string(), pg)]
                .into_iter()
                .collect(),
        ),
        None => f,
    })
}

impl datafusion::logical_expr::planner::TypePlanner for PgTypePlanner {
    fn plan_type_field(
        &self,
        sql_type: &datafusion::sql::sqlparser::ast::DataType,
    ) -> DFResult<Option<datafusion::arrow::datatypes::FieldRef>> {
        use datafusion::sql::sqlparser::ast::{
            ArrayElemTypeDef, CharacterLength, DataType as S, ExactNumberInfo,
        };
        let text =
            |pg: Option<&str>| Ok(Some(declared_field(DataType::Utf8, pg.map(str::to_string))));
        let with_length = |base: &str, len: &Option<CharacterLength>| match len {
            Some(CharacterLength::IntegerLength { length, .. }) => format!("{base}({length})"),
            _ => base.to_string(),
        };
        match sql_type {
            S::Uuid => return text(Some("uuid")),
            S::JSON => return text(Some("json")),
            S::JSONB => return text(Some("jsonb")),
            S::Varchar(len) | S::CharacterVarying(len) | S::CharVarying(len) => {
                return text(Some(&with_length("varchar", len)));
            }
            S::Char(len) | S::Character(len) => {
                // `char` alone is `char(1)`.
                let len = (*len).or(Some(CharacterLength::IntegerLength {
                    length: 1,
                    unit: None,
                }));
                return text(Some(&with_length("bpchar", &len)));
            }
            S::Numeric(info) | S::Decimal(info) | S::Dec(info) => {
                let (p, s, pg) = match info {
                    ExactNumberInfo::None => {
                        let (p, s) = crate::catalog::types::DEFAULT_NUMERIC;
                        (p, s, "numeric".to_string())
                    }
                    ExactNumberInfo::Precision(p) => (*p as u8, 0, format!("numeric({p},0)")),
                    ExactNumberInfo::PrecisionAndScale(p, s) => {
                        (*p as u8, *s as i8, format!("numeric({p},{s})"))
                    }
                };
                if p == 0 || p > 38 || s < 0 || s as u8 > p {
                    // DataFusion's own planner reports the bad precision or scale.
                    return Ok(None);
                }
                return Ok(Some(declared_field(DataType::Decimal128(p, s), Some(pg))));
            }
            S::Array(
                ArrayElemTypeDef::SquareBracket(inner, None)
                | ArrayElemTypeDef::AngleBracket(inner),
            ) if is_oid_type(inner) => {
                // `oid[]`: the element carries the oid marker inside the list type itself, so
                // the column and the parameter are reported as `oid[]` (asyncpg has a codec
                // for it but none for `int4[]`, and casts its introspection parameter so).
                let item = datafusion::arrow::datatypes::Field::new("item", DataType::Int32, true)
                    .with_metadata(
                        [(
                            arrow_pg::datatypes::PG_OID_ALIAS_KEY.to_string(),
                            "oid".to_string(),
                        )]
                        .into_iter()
                        .collect(),
                    );
                return Ok(Some(declared_field(DataType::List(Arc::new(item)), None)));
            }
            S::Custom(name, _) => {
                let n = name.to_string().to_ascii_lowercase();
                match n.trim_matches('"') {
                    // `"char"`, the one-byte catalog type (plain `char` is not `Custom`).
                    "char" => {
                        let f = datafusion::arrow::datatypes::Field::new("", DataType::Utf8, true)
                            .with_metadata(
                                [(arrow_pg::datatypes::PG_CHAR_KEY.to_string(), "char".into())]
                                    .into_iter()
                                    .collect(),
                            );
                        return Ok(Some(Arc::new(f)));
                    }
                    "name" | "citext" | "bpchar" => return text(None),
                    pg @ ("jsonb" | "json" | "uuid") => return text(Some(pg)),
                    _ => {}
                }
            }
            _ => {}
        }
        match &self.inner {
            Some(p) => p.plan_type_field(sql_type),
            None => Ok(None),
        }
    }
}

/// Whether a SQL type is `oid` (or `pg_catalog.oid`).
fn is_oid_type(t: &datafusion::sql::sqlparser::ast::DataType) -> bool {
    use datafusion::sql::sqlparser::ast::{DataType as S, ObjectNamePart};
    match t {
        S::Custom(name, args) if args.is_empty() => {
            let parts: Vec<&str> = name
                .0
                .iter()
                .filter_map(|p| match p {
                    ObjectNamePart::Identifier(i) => Some(i.value.as_str()),
                    _ => None,
                })
                .collect();
            match parts.as_slice() {
                [t] => t.eq_ignore_ascii_case("oid"),
                [s, t] => s.eq_ignore_ascii_case("pg_catalog") && t.eq_ignore_ascii_case("oid"),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `quote_literal(text)`: the value as a SQL string literal.
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuoteLiteral {
    signature: Signature,
}

impl ScalarUDFImpl for QuoteLiteral {
    fn name(&self) -> &str {
        "quote_literal"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let strings = text_arg(&arrays[0])?;
        let out: StringArray = strings
            .iter()
            .map(|v| {
                v.map(|s| {
                    if s.contains('\\') {
                        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
                    } else {
                        format!("'{}'", s.replace('\'', "''"))
                    }
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `pg_typeof(any)`: the PostgreSQL type name of the argument.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let name = crate::wire::types::pg_type_name(args.arg_fields[0].data_type());
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `json_build_object(k1, v1, ...)`: a JSON object from alternating keys and values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn aliases(&self) -> &[String] {
        static A: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["jsonb_build_object".into()]);
        &A
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(datafusion::error::DataFusionError::Plan(
                "argument list must have even number of elements".into(),
            ));
        }
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DFResult<_>>()?;
        let mut out = StringBuilder::new();
        for row in 0..n {
            let mut obj = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let key = match key {
                    ScalarValue::Utf8(Some(k))
                    | ScalarValue::Utf8View(Some(k))
                    | ScalarValue::LargeUtf8(Some(k)) => k,
                    other if other.is_null() => {
                        return Err(datafusion::error::DataFusionError::Execution(
                            "null value not allowed for object key".into(),
                        ));
                    }
                    other => other.to_string(),
                };
                obj.insert(key, scalar_json(&value));
            }
            out.append_value(serde_json::Value::Object(obj).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn scalar_json(v: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    if v.is_null() {
        return J::Null;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => J::Bool(*b),
        ScalarValue::Int8(Some(x)) => J::from(*x),
        ScalarValue::Int16(Some(x)) => J::from(*x),
        ScalarValue::Int32(Some(x)) => J::from(*x),
        ScalarValue::Int64(Some(x)) => J::from(*x),
        ScalarValue::UInt8(Some(x)) => J::from(*x),
        ScalarValue::UInt16(Some(x)) => J::from(*x),
        ScalarValue::UInt32(Some(x)) => J::from(*x),
        ScalarValue::UInt64(Some(x)) => J::from(*x),
        ScalarValue::Float32(Some(x)) => J::from(*x),
        ScalarValue::Float64(Some(x)) => J::from(*x),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => J::String(s.clone()),
        other => J::String(other.to_string()),
    }
}

/// Registers the functions above that do not depend on the session.
pub fn register_functions(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(QuoteLiteral {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(PgTypeof {
        signature: Signature::any(1, Volatility::Immutable),
    }));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
}

/// `pg_like(value, pattern, escape, case_insensitive)`: SQL LIKE with any escape character
/// (statements rewrite `LIKE ... ESCAPE 'c'` to it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgLike {
    signature: Signature,
}

fn like_to_regex(pattern: &str, escape: Option<char>, ci: bool) -> String {
    let mut re = String::from(if ci { "(?is)^" } else { "(?s)^" });
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            if let Some(n) = chars.next() {
                re.push_str(&regex_escape(n));
            }
        } else if c == '%' {
            re.push_str(".*");
        } else if c == '_' {
            re.push('.');
        } else {
            re.push_str(&regex_escape(c));
        }
    }
    re.push('$');
    re
}

fn regex_escape(c: char) -> String {
    if "\\.+*?()|[]{}^$#&-~".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

impl ScalarUDFImpl for PgLike {
    fn name(&self) -> &str {
        "pg_like"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DFResult<_>>()?;
        let (values, patterns, escapes) = (
            text_arg(&arrays[0])?,
            text_arg(&arrays[1])?,
            text_arg(&arrays[2])?,
        );
        let ci = datafusion::arrow::compute::cast(&arrays[3], &DataType::Boolean)?;
        let ci = ci
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
            .cloned();
        let mut cache: std::collections::HashMap<(String, String, bool), regex::Regex> =
            std::collections::HashMap::new();
        let mut out = datafusion::arrow::array::BooleanBuilder::with_capacity(n);
        for i in 0..n {
            if values.is_null(i) || patterns.is_null(i) {
                out.append_null();
                continue;
            }
            let esc = if escapes.is_null(i) {
                String::new()
            } else {
                escapes.value(i).to_string()
            };
            let insensitive = ci.as_ref().is_some_and(|c| c.is_valid(i) && c.value(i));
            let key = (patterns.value(i).to_string(), esc.clone(), insensitive);
            if !cache.contains_key(&key) {
                let re = like_to_regex(&key.0, esc.chars().next(), insensitive);
                let compiled = regex::Regex::new(&re)
                    .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
                cache.insert(key.clone(), compiled);
            }
            out.append_value(cache[&key].is_match(values.value(i)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Registers `pg_like` and the visibility functions catalog queries call.
pub fn register_more(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(PgLike {
        signature: Signature::any(4, Volatility::Immutable),
    }));
    for name in [
        "pg_collation_is_visible",
        "pg_conversion_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_ts_config_is_visible",
    ] {
        ctx.register_udf(ConstFn::udf(name, &[1], ScalarValue::Boolean(Some(true))));
    }
}

/// `to_regtype(name)`: the OID of a built-in type by name (NULL when unknown), for drivers
/// that look types up before registering adapters (psycopg's `TypeInfo.fetch`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

fn type_oid(name: &str) -> Option<i64> {
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    let n = n.strip_prefix("pg_catalog.").unwrap_or(&n);
    let (base, array) = match n.strip_suffix("[]") {
        Some(b) => (b, true),
        None => (n, false),
    };
    let t = match base {
        "bool" | "boolean" => pgwire::api::Type::BOOL,
        "int2" | "smallint" => pgwire::api::Type::INT2,
        "int4" | "int" | "integer" => pgwire::api::Type::INT4,
        "int8" | "bigint" => pgwire::api::Type::INT8,
        "float4" | "real" => pgwire::api::Type::FLOAT4,
        "float8" | "double precision" => pgwire::api::Type::FLOAT8,
        "numeric" | "decimal" => pgwire::api::Type::NUMERIC,
        "text" => pgwire::api::Type::TEXT,
        "varchar" | "character varying" => pgwire::api::Type::VARCHAR,
        "bpchar" | "character" | "char" => pgwire::api::Type::BPCHAR,
        "name" => pgwire::api::Type::NAME,
        "bytea" => pgwire::api::Type::BYTEA,
        "date" => pgwire::api::Type::DATE,
        "timestamp" | "timestamp without time zone" => pgwire::api::Type::TIMESTAMP,
        "timestamptz" | "timestamp with time zone" => pgwire::api::Type::TIMESTAMPTZ,
        "time" => pgwire::api::Type::TIME,
        "interval" => pgwire::api::Type::INTERVAL,
        "json" => pgwire::api::Type::JSON,
        "jsonb" => pgwire::api::Type::JSONB,
        "uuid" => pgwire::api::Type::UUID,
        "oid" => pgwire::api::Type::OID,
        _ => return None,
    };
    let t = if array {
        match t {
            pgwire::api::Type::BOOL => pgwire::api::Type::BOOL_ARRAY,
            pgwire::api::Type::INT2 => pgwire::api::Type::INT2_ARRAY,
            pgwire::api::Type::INT4 => pgwire::api::Type::INT4_ARRAY,
            pgwire::api::Type::INT8 => pgwire::api::Type::INT8_ARRAY,
            pgwire::api::Type::FLOAT4 => pgwire::api::Type::FLOAT4_ARRAY,
            pgwire::api::Type::FLOAT8 => pgwire::api::Type::FLOAT8_ARRAY,
            pgwire::api::Type::TEXT => pgwire::api::Type::TEXT_ARRAY,
            pgwire::api::Type::VARCHAR => pgwire::api::Type::VARCHAR_ARRAY,
            pgwire::api::Type::JSON => pgwire::api::Type::JSON_ARRAY,
            pgwire::api::Type::JSONB => pgwire::api::Type::JSONB_ARRAY,
            pgwire::api::Type::UUID => pgwire::api::Type::UUID_ARRAY,
            _ => return None,
        }
    } else {
        t
    };
    Some(t.oid() as i64)
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = text_arg(&arrays[0])?;
        let out: datafusion::arrow::array::Int64Array =
            names.iter().map(|n| n.and_then(type_oid)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Registers `to_regtype`.
pub fn register_types(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(ToRegtype {
        signature: Signature::any(1, Volatility::Stable),
    }));
}
