//! Transformation functions: user agents, URL parts and UTM parameters, deterministic
//! sampling, and the JSON functions of `datafusion-functions-json`. Each is vectorised over
//! Arrow string arrays and returns NULL for NULL input.
//!
//! | function | result |
//! |---|---|
//! | `parse_user_agent(ua)` | struct of browser, browser_version, os, os_version, device_type, is_bot; see [`user_agent`] |
//! | `is_bot(ua)` | boolean |
//! | `sample_by_key(key, rate)` | boolean, deterministic; see [`sample`] |
//! | `parse_url(url)` | struct of scheme, host, port, path, query, fragment; see [`url_parts`] |
//! | `url_param(url, name)`, `utm_source(url)`, `utm_medium(url)`, `utm_campaign(url)`, `utm_term(url)`, `utm_content(url)` | decoded query parameter |
//! | `json_get`, `json_get_str`, ... | see [`json`] |

pub mod json;
pub mod sample;
pub mod url_parts;
pub mod user_agent;

use datafusion::logical_expr::ScalarUDF;

/// Every transformation function.
pub fn functions() -> Vec<ScalarUDF> {
    let mut out = vec![
        user_agent::parse_user_agent_udf().udf(),
        user_agent::is_bot_udf().udf(),
        sample::sample_by_key_udf().udf(),
        url_parts::parse_url_udf().udf(),
        url_parts::url_param_udf().udf(),
    ];
    out.extend(url_parts::utm_udfs().into_iter().map(|u| u.udf()));
    out.extend(json::functions());
    out
}
