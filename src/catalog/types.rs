//! PostgreSQL column types as Arrow types that Delta Lake can store.
//!
//! Delta has no uuid or json type and no unsigned integers, so `uuid`, `json` and `jsonb`
//! are stored as strings and their declared name is kept in the catalog
//! ([`super::TableEntry::pg_types`]). Timestamps are microseconds, Delta's resolution.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, DataType as SqlType, ExactNumberInfo, TimezoneInfo,
};

use crate::error::{Result, TallyError};

/// Precision and scale used for an unconstrained `numeric`: Delta decimals are at most 38
/// digits, so tally keeps 28 before and 10 after the point.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 10);

/// The Arrow type for a declared SQL type, and the PostgreSQL name to remember when the
/// Arrow type alone would lose it.
pub fn arrow_type(sql: &SqlType) -> Result<(DataType, Option<String>)> {
    use SqlType as S;
    let t = match sql {
        S::BigInt(_) | S::Int8(_) | S::Int64 => DataType::Int64,
        S::Int(_) | S::Integer(_) | S::Int4(_) | S::Int32 | S::MediumInt(_) => DataType::Int32,
        S::SmallInt(_) | S::Int2(_) | S::Int16 | S::TinyInt(_) => DataType::Int16,
        S::DoublePrecision | S::Double(_) | S::Float8 | S::Float64 => DataType::Float64,
        S::Real | S::Float4 | S::Float32 => DataType::Float32,
        S::Float(info) => match info {
            ExactNumberInfo::Precision(p) if *p <= 24 => DataType::Float32,
            _ => DataType::Float64,
        },
        S::Numeric(info) | S::Decimal(info) | S::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => DEFAULT_NUMERIC,
                ExactNumberInfo::Precision(p) => (*p as u8, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p as u8, *s as i8),
            };
            if p == 0 || p > 38 {
                return Err(TallyError::InvalidValue {
                    code: "22023",
                    message: format!("NUMERIC precision {p} must be between 1 and 38"),
                });
            }
            if s < 0 || s as u8 > p {
                return Err(TallyError::InvalidValue {
                    code: "22023",
                    message: format!("NUMERIC scale {s} must be between 0 and precision {p}"),
                });
            }
            DataType::Decimal128(p, s)
        }
        S::Text
        | S::String(_)
        | S::Varchar(_)
        | S::CharVarying(_)
        | S::CharacterVarying(_)
        | S::Char(_)
        | S::Character(_)
        | S::Nvarchar(_) => DataType::Utf8,
        S::Boolean | S::Bool => DataType::Boolean,
        S::Date => DataType::Date32,
        S::Timestamp(_, tz) => match tz {
            TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
            }
            _ => DataType::Timestamp(TimeUnit::Microsecond, None),
        },
        S::JSON | S::JSONB | S::Uuid => DataType::Utf8,
        S::Bytea | S::Blob(_) | S::Binary(_) | S::Varbinary(_) => DataType::Binary,
        S::Array(elem) => {
            let inner = match elem {
                ArrayElemTypeDef::SquareBracket(t, _)
                | ArrayElemTypeDef::AngleBracket(t)
                | ArrayElemTypeDef::Parenthesis(t) => t,
                ArrayElemTypeDef::None => {
                    return Err(TallyError::Unsupported(
                        "array type without element type".into(),
                    ));
                }
            };
            let (inner, _) = arrow_type(inner)?;
            DataType::List(Arc::new(Field::new("element", inner, true)))
        }
        S::Custom(name, _) => {
            let n = name.to_string().to_ascii_lowercase();
            match n.trim_matches('"') {
                "int8" | "bigint" => DataType::Int64,
                "int4" | "int" | "integer" => DataType::Int32,
                "int2" | "smallint" => DataType::Int16,
                "float8" => DataType::Float64,
                "float4" => DataType::Float32,
                "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
                "jsonb" | "json" | "uuid" | "citext" | "name" => DataType::Utf8,
                other => {
                    return Err(TallyError::Unsupported(format!(
                        "type \"{other}\" is not supported"
                    )));
                }
            }
        }
        other => {
            return Err(TallyError::Unsupported(format!(
                "type \"{other}\" is not supported"
            )));
        }
    };
    Ok((t, pg_name_to_keep(sql)))
}

fn pg_name_to_keep(sql: &SqlType) -> Option<String> {
    match sql {
        // Stored with a fixed scale; PostgreSQL reports it without a type modifier.
        SqlType::Numeric(ExactNumberInfo::None)
        | SqlType::Decimal(ExactNumberInfo::None)
        | SqlType::Dec(ExactNumberInfo::None) => Some("numeric".into()),
        SqlType::JSON => Some("json".into()),
        SqlType::JSONB => Some("jsonb".into()),
        SqlType::Uuid => Some("uuid".into()),
        SqlType::Varchar(_)
        | SqlType::CharacterVarying(_)
        | SqlType::CharVarying(_)
        | SqlType::Char(_)
        | SqlType::Character(_) => Some(sql.to_string().to_ascii_lowercase()),
        SqlType::Custom(name, _) => {
            let n = name.to_string().to_ascii_lowercase();
            matches!(n.as_str(), "json" | "jsonb" | "uuid").then_some(n)
        }
        _ => None,
    }
}

/// Arrow types that Delta cannot store, widened to ones it can, so that a
/// `CREATE TABLE AS` over any query lands in Delta.
pub fn storable(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            DataType::Binary
        }
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Int8 => DataType::Int16,
        DataType::Float16 => DataType::Float32,
        DataType::Null => DataType::Utf8,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.clone().map(|_| Arc::from("UTC")))
        }
        DataType::Date64 => DataType::Date32,
        DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Interval(_)
        | DataType::Duration(_) => DataType::Utf8,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        DataType::Decimal256(p, s) => DataType::Decimal128((*p).min(38), *s),
        DataType::Dictionary(_, v) => storable(v),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => DataType::List(Arc::new(Field::new(
            "element",
            storable(f.data_type()),
            true,
        ))),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(Field::new(f.name(), storable(f.data_type()), true)))
                .collect(),
        ),
        other => other.clone(),
    }
}
