//! URL parts and query parameters: `parse_url`, `url_param` and the `utm_*` functions.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Builder, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, Signature, Volatility};

use crate::validate::util::{
    SimpleUdf, append_mapped, expect_args, finish, for_each_str, for_each_str2, string_builder,
    to_arrays,
};

/// The fields of `parse_url`'s result.
pub fn url_fields() -> Fields {
    Fields::from(vec![
        Field::new("scheme", DataType::Utf8, true),
        Field::new("host", DataType::Utf8, true),
        Field::new("port", DataType::Int32, true),
        Field::new("path", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, true),
        Field::new("fragment", DataType::Utf8, true),
    ])
}

fn parse_url_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[1])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = arrays[0].as_ref();
    let n = input.len();
    let mut scheme = StringBuilder::with_capacity(n, n * 5);
    let mut host = StringBuilder::with_capacity(n, n * 16);
    let mut port = Int32Builder::with_capacity(n);
    let mut path = StringBuilder::with_capacity(n, n * 16);
    let mut query = StringBuilder::with_capacity(n, n * 16);
    let mut fragment = StringBuilder::with_capacity(n, n);
    let mut valid = Vec::with_capacity(n);
    for_each_str(input, |v| {
        let parsed = v.and_then(|v| url::Url::parse(v).ok());
        match parsed {
            Some(u) => {
                scheme.append_value(u.scheme());
                host.append_option(u.host_str());
                port.append_option(u.port().map(i32::from));
                path.append_value(u.path());
                query.append_option(u.query());
                fragment.append_option(u.fragment());
                valid.push(true);
            }
            None => {
                scheme.append_null();
                host.append_null();
                port.append_null();
                path.append_null();
                query.append_null();
                fragment.append_null();
                valid.push(false);
            }
        }
        Ok(())
    })?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(scheme.finish()),
        Arc::new(host.finish()),
        Arc::new(port.finish()),
        Arc::new(path.finish()),
        Arc::new(query.finish()),
        Arc::new(fragment.finish()),
    ];
    let out = StructArray::try_new(url_fields(), columns, Some(NullBuffer::from(valid)))?;
    finish(Arc::new(out), all_scalar)
}

/// `parse_url(url) -> struct<scheme, host, port int, path, query, fragment>`: the parts of
/// an absolute URL as browsers parse it (WHATWG URL standard, crate `url`): scheme and host
/// lowercased, internationalised hosts in their ASCII (punycode) form, percent-encoding
/// normalised. `port` is NULL unless the URL names a port other than its scheme's default;
/// `query` and `fragment` come without `?` and `#` and are NULL when absent. NULL for text
/// that is not an absolute URL. Access a part with `parse_url(url)['host']`.
pub fn parse_url_udf() -> SimpleUdf {
    SimpleUdf::new(
        "parse_url",
        Signature::string(1, Volatility::Immutable),
        DataType::Struct(url_fields()),
        parse_url_kernel,
    )
}

/// The query string of `url` (absolute or relative): what lies between the first `?` and
/// the following `#`.
fn query_of(url: &str) -> Option<&str> {
    let q = &url[url.find('?')? + 1..];
    Some(match q.find('#') {
        Some(end) => &q[..end],
        None => q,
    })
}

/// The first value of query parameter `name` in `url`, decoded as browsers submit forms
/// (`application/x-www-form-urlencoded`: `%XX` escapes and `+` for space). Works on
/// absolute and relative URLs (`/landing?utm_source=x`) and on bare query strings
/// starting with `?`. Names match exactly (case-sensitive, after decoding).
pub fn url_param<'a>(url: &'a str, name: &str) -> Option<Cow<'a, str>> {
    url::form_urlencoded::parse(query_of(url)?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn url_param_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[2])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let mut out = string_builder(arrays[0].as_ref());
    for_each_str2(arrays[0].as_ref(), arrays[1].as_ref(), |u, p| {
        match (u, p) {
            (Some(u), Some(p)) => out.append_option(url_param(u, p)),
            _ => out.append_null(),
        }
        Ok(())
    })?;
    finish(Arc::new(out.finish()), all_scalar)
}

/// `url_param(url, name) -> text`: the first value of query parameter `name`, decoded;
/// NULL when absent (an empty string when present without a value). See [`url_param`].
pub fn url_param_udf() -> SimpleUdf {
    SimpleUdf::new(
        "url_param",
        Signature::string(2, Volatility::Immutable),
        DataType::Utf8,
        url_param_kernel,
    )
}

/// A kernel returning one fixed query parameter (the `utm_*` functions).
fn fixed_param_kernel(
    param: &'static str,
) -> impl Fn(&str, &ScalarFunctionArgs) -> Result<ColumnarValue> {
    move |name, args| {
        expect_args(name, args, &[1])?;
        let (arrays, all_scalar) = to_arrays(args)?;
        let input = arrays[0].as_ref();
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * 8);
        let mut scratch = String::new();
        for_each_str(input, |u| {
            append_mapped(
                &mut out,
                &mut scratch,
                u,
                &mut |u, s| match url_param(u, param) {
                    Some(v) => {
                        s.push_str(&v);
                        true
                    }
                    None => false,
                },
            );
            Ok(())
        })?;
        finish(Arc::new(out.finish()), all_scalar)
    }
}

/// The UTM parameters, each with its own function: `utm_source(url)`, `utm_medium(url)`,
/// `utm_campaign(url)`, `utm_term(url)`, `utm_content(url)` equal
/// `url_param(url, 'utm_source')` and so on: the campaign attribution every marketing
/// report groups by.
pub fn utm_udfs() -> Vec<SimpleUdf> {
    macro_rules! utm {
        ($name:literal) => {
            SimpleUdf::new(
                $name,
                Signature::string(1, Volatility::Immutable),
                DataType::Utf8,
                |name, args| fixed_param_kernel($name)(name, args),
            )
        };
    }
    vec![
        utm!("utm_source"),
        utm!("utm_medium"),
        utm!("utm_campaign"),
        utm!("utm_term"),
        utm!("utm_content"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let u =
            "https://shop.example/p?utm_source=news%20letter&utm_medium=email&q=a+b&e=#utm_term=x";
        assert_eq!(url_param(u, "utm_source").as_deref(), Some("news letter"));
        assert_eq!(url_param(u, "q").as_deref(), Some("a b"));
        assert_eq!(url_param(u, "e").as_deref(), Some(""));
        assert_eq!(url_param(u, "utm_term"), None);
        assert_eq!(
            url_param("/landing?utm_source=x", "utm_source").as_deref(),
            Some("x")
        );
        assert_eq!(url_param("https://example.com/", "a"), None);
        assert_eq!(url_param("?a=1&a=2", "a").as_deref(), Some("1"));
    }
}
