//! User agents: `parse_user_agent(ua)` and `is_bot(ua)`.
//!
//! Parsing uses `woothee` (the Rust implementation of the woothee project's shared user
//! agent dataset, pure Rust, no regex file to ship); bot detection uses `isbot` (a Rust
//! port of the `isbot` pattern list, about 350 crawler and tool patterns) together with
//! woothee's crawler category. Both are a few microseconds per user agent, and event
//! tables repeat the same few thousand user agents millions of times, so results are
//! cached per thread (bounded, emptied when full).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, StringBuilder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, Signature, Volatility};

use crate::validate::util::{SimpleUdf, expect_args, finish, for_each_str, map_bool, to_arrays};

/// The compiled bot patterns, built on first use.
static BOTS: LazyLock<isbot::Bots> = LazyLock::new(isbot::Bots::default);

/// The woothee parser (stateless; its regexes are compiled lazily by the crate).
static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);

/// Entries the per-thread cache holds before it is emptied.
const CACHE_ENTRIES: usize = 16_384;

/// User agents longer than this are parsed but not cached (they are junk or attacks, and
/// would only fill the cache).
const CACHE_MAX_KEY: usize = 1024;

/// What `parse_user_agent` reports about one user agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserAgent {
    /// Browser (or app/crawler) name, e.g. `Chrome`, `Safari`, `Googlebot`.
    pub browser: Option<String>,
    /// Its version, e.g. `126.0.0.0`.
    pub browser_version: Option<String>,
    /// Operating system, e.g. `Windows 10`, `Mac OSX`, `iPhone`, `Android`.
    pub os: Option<String>,
    /// Its version, e.g. `10.15.7`.
    pub os_version: Option<String>,
    /// `desktop`, `mobile`, `tablet`, `bot` or `other`; `None` when unknown.
    pub device_type: Option<&'static str>,
    /// Whether the user agent is a known bot, crawler or tool.
    pub is_bot: bool,
}

fn known(s: &str) -> Option<String> {
    (!s.is_empty() && s != "UNKNOWN").then(|| s.to_owned())
}

/// Whether `ua` is a bot: the isbot patterns, or woothee's crawler category.
pub fn is_bot(ua: &str) -> bool {
    BOTS.is_bot(ua) || PARSER.parse(ua).is_some_and(|r| r.category == "crawler")
}

/// Parses one user agent (uncached).
pub fn parse_user_agent(ua: &str) -> UserAgent {
    let bot = BOTS.is_bot(ua);
    let Some(r) = PARSER.parse(ua) else {
        return UserAgent {
            is_bot: bot,
            device_type: bot.then_some("bot"),
            ..UserAgent::default()
        };
    };
    let crawler = r.category == "crawler";
    // woothee's categories, mapped to the device types analytics tools use. woothee files
    // tablets under "smartphone"; iPads and Android devices without "Mobile" in the user
    // agent (Google's documented convention for tablets) are tablets.
    let device_type = if bot || crawler {
        Some("bot")
    } else {
        match r.category {
            "pc" => Some("desktop"),
            "smartphone" if r.os == "iPad" || (r.os == "Android" && !ua.contains("Mobile")) => {
                Some("tablet")
            }
            "smartphone" | "mobilephone" => Some("mobile"),
            "appliance" | "misc" => Some("other"),
            _ => None,
        }
    };
    UserAgent {
        browser: known(r.name),
        browser_version: known(r.version),
        os: known(r.os),
        os_version: known(&r.os_version),
        device_type,
        is_bot: bot || crawler,
    }
}

thread_local! {
    static CACHE: RefCell<HashMap<Box<str>, Rc<UserAgent>>> = RefCell::new(HashMap::new());
}

/// [`parse_user_agent`] through the per-thread cache.
pub fn parse_user_agent_cached(ua: &str) -> Rc<UserAgent> {
    if ua.len() > CACHE_MAX_KEY {
        return Rc::new(parse_user_agent(ua));
    }
    CACHE.with(|cache| {
        if let Some(hit) = cache.borrow().get(ua) {
            return hit.clone();
        }
        let parsed = Rc::new(parse_user_agent(ua));
        let mut cache = cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(ua.into(), parsed.clone());
        parsed
    })
}

/// The fields of `parse_user_agent`'s result.
pub fn user_agent_fields() -> Fields {
    Fields::from(vec![
        Field::new("browser", DataType::Utf8, true),
        Field::new("browser_version", DataType::Utf8, true),
        Field::new("os", DataType::Utf8, true),
        Field::new("os_version", DataType::Utf8, true),
        Field::new("device_type", DataType::Utf8, true),
        Field::new("is_bot", DataType::Boolean, true),
    ])
}

fn parse_user_agent_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[1])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = arrays[0].as_ref();
    let n = input.len();
    let mut browser = StringBuilder::with_capacity(n, n * 8);
    let mut browser_version = StringBuilder::with_capacity(n, n * 8);
    let mut os = StringBuilder::with_capacity(n, n * 8);
    let mut os_version = StringBuilder::with_capacity(n, n * 6);
    let mut device = StringBuilder::with_capacity(n, n * 7);
    let mut bot = BooleanBuilder::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    for_each_str(input, |ua| {
        match ua {
            Some(ua) => {
                let p = parse_user_agent_cached(ua);
                browser.append_option(p.browser.as_deref());
                browser_version.append_option(p.browser_version.as_deref());
                os.append_option(p.os.as_deref());
                os_version.append_option(p.os_version.as_deref());
                device.append_option(p.device_type);
                bot.append_value(p.is_bot);
                valid.push(true);
            }
            None => {
                browser.append_null();
                browser_version.append_null();
                os.append_null();
                os_version.append_null();
                device.append_null();
                bot.append_null();
                valid.push(false);
            }
        }
        Ok(())
    })?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(browser.finish()),
        Arc::new(browser_version.finish()),
        Arc::new(os.finish()),
        Arc::new(os_version.finish()),
        Arc::new(device.finish()),
        Arc::new(bot.finish()),
    ];
    let out = StructArray::try_new(user_agent_fields(), columns, Some(NullBuffer::from(valid)))?;
    finish(Arc::new(out), all_scalar)
}

/// `parse_user_agent(ua) -> struct<browser, browser_version, os, os_version, device_type,
/// is_bot>`: what a user agent says about the client, for device and browser breakdowns
/// and for dropping bots; fields that cannot be told are NULL. `device_type` is one of
/// `desktop`, `mobile`, `tablet`, `bot`, `other`. Access a field with
/// `parse_user_agent(ua)['browser']`.
pub fn parse_user_agent_udf() -> SimpleUdf {
    SimpleUdf::new(
        "parse_user_agent",
        Signature::string(1, Volatility::Immutable),
        DataType::Struct(user_agent_fields()),
        parse_user_agent_kernel,
    )
}

/// `is_bot(ua) -> boolean`: whether the user agent is a known bot, crawler, monitoring or
/// HTTP tool (the `isbot` list plus woothee's crawlers). Bots are a few percent of web
/// events and skew every funnel.
pub fn is_bot_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_bot",
        Signature::string(1, Volatility::Immutable),
        DataType::Boolean,
        |name, args| map_bool(name, args, |ua| Some(parse_user_agent_cached(ua).is_bot)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn parses_browsers() {
        let c = parse_user_agent(CHROME_WIN);
        assert_eq!(c.browser.as_deref(), Some("Chrome"));
        assert_eq!(c.browser_version.as_deref(), Some("126.0.0.0"));
        assert_eq!(c.os.as_deref(), Some("Windows 10"));
        assert_eq!(c.device_type, Some("desktop"));
        assert!(!c.is_bot);
        let i = parse_user_agent(IPHONE);
        assert_eq!(i.browser.as_deref(), Some("Safari"));
        assert_eq!(i.os.as_deref(), Some("iPhone"));
        assert_eq!(i.device_type, Some("mobile"));
        assert_eq!(parse_user_agent(IPAD).device_type, Some("tablet"));
    }

    #[test]
    fn detects_bots() {
        assert!(is_bot(GOOGLEBOT));
        assert!(is_bot("curl/8.4.0"));
        assert!(is_bot("python-requests/2.31.0"));
        assert!(!is_bot(CHROME_WIN));
        assert!(!is_bot(IPHONE));
        let g = parse_user_agent_cached(GOOGLEBOT);
        assert_eq!(g.device_type, Some("bot"));
        assert!(g.is_bot);
    }
}
