//! Pull collection: data that tally fetches from other systems instead of receiving it.
//!
//! - [`json_api`]: the `read_json_api(url [, options])` table function, which pages through a
//!   JSON HTTP API (cursor, page number, offset/limit or `Link: rel="next"` pagination) and
//!   streams each page as one record batch, so `INSERT INTO t SELECT ... FROM
//!   read_json_api(...)` loads an API into the warehouse in bounded memory.
//! - [`attach`]: `CREATE EXTERNAL TABLE ... STORED AS POSTGRES | MYSQL`, read-only tables
//!   over an application database, so `INSERT INTO warehouse_table SELECT ... FROM
//!   attached_table` copies from it with projection and simple filters pushed down.
//!
//! Both read their credentials from environment variables named by `*_env` options (or,
//! for databases, from the connection URL), and never put a secret in an error or a log.

pub mod attach;
pub mod json_api;

use datafusion::prelude::SessionContext;

/// Registers the pull table function and the attachment table factories on `ctx`, which
/// then hands them to every session cloned from it.
pub fn register(ctx: &SessionContext) {
    ctx.register_udtf("read_json_api", std::sync::Arc::new(json_api::ReadJsonApi));
    attach::register_factories(ctx);
}

/// The text of `url` fit for messages and logs: the password of its user info and the
/// values of query parameters that look like credentials are replaced by `***`.
pub fn redact_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let secret = crate::activate::destinations::is_secret(&k)
                    || ["key", "auth", "signature", "sig"]
                        .iter()
                        .any(|s| k.to_ascii_lowercase().contains(s));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Replaces every occurrence of each secret in `message` by `***`: the last guard before a
/// message leaves tally, for remote systems that echo what they were sent.
pub fn scrub(message: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 3)
        .fold(message, |m, s| m.replace(s.as_str(), "***"))
}

/// Reads the environment variable that an `<option>_env` option names.
pub fn secret_from_env(option: &str, var: &str) -> crate::error::Result<String> {
    std::env::var(var).map_err(|_| crate::error::TallyError::InvalidValue {
        code: "22023",
        message: format!(
            "option {option} names the environment variable {var}, which is not set on the server"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        let u = url::Url::parse("https://u:pw@api.example.com/x?api_key=abc&page=2").unwrap();
        let shown = redact_url(&u);
        assert!(!shown.contains("pw") && !shown.contains("abc"), "{shown}");
        assert!(shown.contains("page=2"));
        assert_eq!(
            scrub("token abcdef here".into(), &["abcdef".into()]),
            "token *** here"
        );
    }
}
