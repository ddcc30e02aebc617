//! Shared machinery for tally's scalar functions (used by [`crate::validate`],
//! [`crate::pii`] and [`crate::transform`]).
//!
//! Most of tally's functions map one text value to one result. Rather than repeating the
//! DataFusion boilerplate (signature, return type, scalar/array dispatch, the three string
//! array layouts) in every function, each function is a [`SimpleUdf`]: a name, a signature,
//! a return type, an optional planning-time argument check and a kernel. The kernels use the
//! helpers here to walk any string layout (`Utf8`, `LargeUtf8`, `Utf8View`) without casting,
//! write into builders sized up front, and hand back a scalar when every argument was one
//! (so constant folding at planning time works).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// A function body: receives the function's name (for error messages) and its arguments.
pub type Kernel = fn(&str, &ScalarFunctionArgs) -> Result<ColumnarValue>;

/// A planning-time check of constant arguments (for example an unknown region or a rate
/// outside `[0, 1]`). It runs when DataFusion computes the function's return type, which it
/// does while planning, so a bad literal fails the statement before any row is read.
pub type Check = fn(&str, &ReturnFieldArgs) -> Result<()>;

/// A scalar function defined by a kernel, see the module documentation.
#[derive(Debug)]
pub struct SimpleUdf {
    name: &'static str,
    signature: Signature,
    return_type: DataType,
    kernel: Kernel,
    check: Option<Check>,
}

impl SimpleUdf {
    /// A function named `name` returning `return_type`, computed by `kernel`.
    pub fn new(
        name: &'static str,
        signature: Signature,
        return_type: DataType,
        kernel: Kernel,
    ) -> Self {
        SimpleUdf {
            name,
            signature,
            return_type,
            kernel,
            check: None,
        }
    }

    /// Adds a planning-time check of constant arguments.
    pub fn with_check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }

    /// Wraps the function for registration.
    pub fn udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }
}

// Function pointers have no reliable identity, so equality and hashing use what defines the
// function for DataFusion: its name, signature and return type.
impl PartialEq for SimpleUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.signature == other.signature
            && self.return_type == other.return_type
    }
}

impl Eq for SimpleUdf {}

impl Hash for SimpleUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.signature.hash(state);
        self.return_type.hash(state);
    }
}

impl ScalarUDFImpl for SimpleUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.return_type.clone())
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let Some(check) = self.check {
            check(self.name, &args)?;
        }
        Ok(Arc::new(Field::new(
            self.name,
            self.return_type.clone(),
            true,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        (self.kernel)(self.name, &args)
    }
}

/// Calls `f` with every value of a string array (`Utf8`, `LargeUtf8` or `Utf8View`, read in
/// place; any other type is cast to `Utf8` first, which gives PostgreSQL-like text forms of
/// numbers). NULL entries are passed as `None`.
pub fn for_each_str<F>(array: &dyn Array, mut f: F) -> Result<()>
where
    F: FnMut(Option<&str>) -> Result<()>,
{
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().try_for_each(f),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().try_for_each(f),
        DataType::Utf8View => array.as_string_view().iter().try_for_each(f),
        DataType::Null => (0..array.len()).try_for_each(|_| f(None)),
        _ => {
            let cast = cast(array, &DataType::Utf8)?;
            cast.as_string::<i32>().iter().try_for_each(f)
        }
    }
}

/// Like [`for_each_str`] over two arrays of the same length, row by row.
pub fn for_each_str2<F>(a: &dyn Array, b: &dyn Array, mut f: F) -> Result<()>
where
    F: FnMut(Option<&str>, Option<&str>) -> Result<()>,
{
    let b = utf8(b)?;
    let b = b.as_string::<i32>();
    let mut i = 0;
    for_each_str(a, |v| {
        let w = if b.is_null(i) { None } else { Some(b.value(i)) };
        i += 1;
        f(v, w)
    })
}

/// `array` as a `Utf8` array (cast only when it is not one already).
pub fn utf8(array: &dyn Array) -> Result<ArrayRef> {
    Ok(cast(array, &DataType::Utf8)?)
}

/// The arguments as arrays of one common length, and whether all of them were scalars (in
/// which case the result should be a scalar too).
pub fn to_arrays(args: &ScalarFunctionArgs) -> Result<(Vec<ArrayRef>, bool)> {
    let all_scalar = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    Ok((ColumnarValue::values_to_arrays(&args.args)?, all_scalar))
}

/// Wraps a result array, turning it back into a scalar when all inputs were scalars.
pub fn finish(out: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar && out.len() == 1 {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
    } else {
        Ok(ColumnarValue::Array(out))
    }
}

/// Checks the argument count a kernel receives (the signature already guarantees it during
/// planning; this guards direct calls).
pub fn expect_args(name: &str, args: &ScalarFunctionArgs, counts: &[usize]) -> Result<()> {
    if counts.contains(&args.args.len()) {
        Ok(())
    } else {
        exec_err!(
            "{name} takes {} arguments, got {}",
            counts
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            args.args.len()
        )
    }
}

/// The text of a scalar argument: `Some(None)` for a NULL of any type, `Some(Some(s))` for a
/// string, `None` for a non-string value.
pub fn scalar_str(v: &ScalarValue) -> Option<Option<&str>> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            Some(s.as_deref())
        }
        v if v.is_null() => Some(None),
        _ => None,
    }
}

/// The literal value of argument `i` during planning, if it is a constant.
pub fn literal<'a>(args: &ReturnFieldArgs<'a>, i: usize) -> Option<&'a ScalarValue> {
    args.scalar_arguments.get(i).copied().flatten()
}

/// The literal text of argument `i` during planning: `None` when it is not a constant or
/// is NULL. A constant that is not text is an error naming the argument.
pub fn literal_text<'a>(
    name: &str,
    arg: &str,
    args: &ReturnFieldArgs<'a>,
    i: usize,
) -> Result<Option<&'a str>> {
    match literal(args, i) {
        None => Ok(None),
        Some(v) => match scalar_str(v) {
            Some(s) => Ok(s),
            None => plan_err!("{name}: argument {arg} must be text, got {}", v.data_type()),
        },
    }
}

/// Maps the first argument, a string, to a boolean; `f` returning `None` gives NULL.
pub fn map_bool(
    name: &str,
    args: &ScalarFunctionArgs,
    mut f: impl FnMut(&str) -> Option<bool>,
) -> Result<ColumnarValue> {
    expect_args(name, args, &[1])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = &arrays[0];
    let mut out = BooleanBuilder::with_capacity(input.len());
    for_each_str(input.as_ref(), |v| {
        out.append_option(v.and_then(&mut f));
        Ok(())
    })?;
    finish(Arc::new(out.finish()), all_scalar)
}

/// Maps the first argument, a string, to a string. `f` writes the result into a cleared
/// scratch buffer (reused across rows, so no allocation per row) and returns whether there
/// is a result; `false` gives NULL.
pub fn map_string(
    name: &str,
    args: &ScalarFunctionArgs,
    mut f: impl FnMut(&str, &mut String) -> bool,
) -> Result<ColumnarValue> {
    expect_args(name, args, &[1])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = &arrays[0];
    let mut out = string_builder(input.as_ref());
    let mut scratch = String::new();
    for_each_str(input.as_ref(), |v| {
        append_mapped(&mut out, &mut scratch, v, &mut f);
        Ok(())
    })?;
    finish(Arc::new(out.finish()), all_scalar)
}

/// Appends `f(v)` (see [`map_string`]) to `out`, or NULL.
pub fn append_mapped(
    out: &mut StringBuilder,
    scratch: &mut String,
    v: Option<&str>,
    f: &mut impl FnMut(&str, &mut String) -> bool,
) {
    match v {
        Some(v) => {
            scratch.clear();
            if f(v, scratch) {
                out.append_value(scratch.as_str());
            } else {
                out.append_null();
            }
        }
        None => out.append_null(),
    }
}

/// A string builder with room for as many rows as `input` has, and about as many bytes.
pub fn string_builder(input: &dyn Array) -> StringBuilder {
    let bytes = match input.data_type() {
        DataType::Utf8 => input.as_string::<i32>().values().len(),
        DataType::LargeUtf8 => input.as_string::<i64>().values().len(),
        _ => input.len() * 16,
    };
    StringBuilder::with_capacity(input.len(), bytes)
}

/// Appends `bytes` as lowercase hexadecimal to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0x0f) as usize] as char);
    }
}

/// Writes `args` into `out` (a convenience for kernels building text with `format_args!`).
pub fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = out.write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{LargeStringArray, StringArray, StringViewArray};

    fn collect(a: &dyn Array) -> Vec<Option<String>> {
        let mut v = Vec::new();
        for_each_str(a, |s| {
            v.push(s.map(str::to_owned));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn walks_every_string_layout() {
        let want = vec![Some("a".to_owned()), None, Some("".to_owned())];
        let vals = [Some("a"), None, Some("")];
        assert_eq!(collect(&StringArray::from(vals.to_vec())), want);
        assert_eq!(collect(&LargeStringArray::from(vals.to_vec())), want);
        assert_eq!(collect(&StringViewArray::from(vals.to_vec())), want);
    }

    #[test]
    fn hex_is_lowercase() {
        let mut s = String::new();
        push_hex(&mut s, &[0x00, 0xab, 0xff]);
        assert_eq!(s, "00abff");
    }
}
