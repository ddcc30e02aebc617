//! Tracking plans in SQL:
//!
//! ```sql
//! CREATE [OR REPLACE] TRACKING PLAN [IF NOT EXISTS] name FROM '<json>' | $$<json>$$ | '<url>';
//! DROP TRACKING PLAN [IF EXISTS] name [, ...] [CASCADE | RESTRICT];
//! ```
//!
//! The plan comes inline, from an `http(s)://` URL (fetched once, at CREATE: the catalog keeps
//! the document, so the plan does not change under a source when the URL's content does;
//! CREATE OR REPLACE fetches it again), or, for superusers only, from a file on the server
//! (`file:///...` or an absolute path), as `COPY FROM` a file. Whatever the origin, the
//! document is checked and every schema compiled before anything is stored, so a bad plan is
//! an error at CREATE naming the event. A plan a source uses cannot be dropped without
//! CASCADE, which detaches it from those sources.

use std::time::Duration;

use chrono::Utc;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::{CompiledPlan, PlanDoc};
use crate::catalog::TrackingPlanEntry;
use crate::engine::Session;
use crate::error::{Result, TallyError};
use crate::statements::{Completion, Output};

/// Largest plan document read from a URL or file.
const MAX_PLAN_BYTES: usize = 8 * 1024 * 1024;
/// How long fetching a plan from a URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed tracking plan statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStatement {
    /// `CREATE [OR REPLACE] TRACKING PLAN [IF NOT EXISTS] name FROM '...'`.
    Create {
        /// Plan name.
        name: String,
        /// The JSON, URL or path after FROM.
        from: String,
        /// OR REPLACE given.
        or_replace: bool,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `DROP TRACKING PLAN [IF EXISTS] name [, ...] [CASCADE]`.
    Drop {
        /// Plan names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
        /// CASCADE given: detach the plans from the sources that use them.
        cascade: bool,
    },
}

fn syntax(message: impl Into<String>) -> TallyError {
    TallyError::syntax(format!("syntax error: {}", message.into()))
}

/// Whether `text` is a tracking plan statement (`CREATE [OR REPLACE] TRACKING PLAN`,
/// `DROP TRACKING PLAN`), judged by its first words.
pub fn matches(text: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, text).tokenize() else {
        return false;
    };
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(5)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "CREATE" if w(1) == "OR" && w(2) == "REPLACE" => w(3) == "TRACKING" && w(4) == "PLAN",
        "CREATE" | "DROP" => w(1) == "TRACKING" && w(2) == "PLAN",
        _ => false,
    }
}

/// Parses a statement for which [`matches`] is true.
pub fn parse(text: &str) -> Result<PlanStatement> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|e| syntax(e.to_string()))?;
    let toks: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let ident = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    let kw = |i: usize, k: &str| matches!(toks.get(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    if kw(0, "create") {
        let mut i = 1;
        let or_replace = kw(1, "or") && kw(2, "replace");
        if or_replace {
            i += 2;
        }
        i += 2; // TRACKING PLAN
        let mut if_not_exists = false;
        if kw(i, "if") && kw(i + 1, "not") && kw(i + 2, "exists") {
            if_not_exists = true;
            i += 3;
        }
        if or_replace && if_not_exists {
            return Err(syntax(
                "OR REPLACE and IF NOT EXISTS cannot be used together",
            ));
        }
        let name = ident(i).ok_or_else(|| syntax("CREATE TRACKING PLAN needs a plan name"))?;
        if !kw(i + 1, "from") {
            return Err(syntax(format!(
                "expected FROM '<plan JSON or URL>' after CREATE TRACKING PLAN {name}"
            )));
        }
        let from = match toks.get(i + 2) {
            Some(
                Token::SingleQuotedString(s)
                | Token::EscapedStringLiteral(s)
                | Token::NationalStringLiteral(s),
            ) => s.clone(),
            Some(Token::DollarQuotedString(d)) => d.value.clone(),
            _ => {
                return Err(syntax(
                    "FROM needs the plan as a string: JSON text, an http(s) URL or a file path",
                ));
            }
        };
        if let Some(extra) = toks.get(i + 3) {
            return Err(syntax(format!("unexpected {extra} after the plan")));
        }
        Ok(PlanStatement::Create {
            name,
            from,
            or_replace,
            if_not_exists,
        })
    } else {
        let mut i = 3;
        let mut if_exists = false;
        if kw(i, "if") && kw(i + 1, "exists") {
            if_exists = true;
            i += 2;
        }
        let mut names = Vec::new();
        while let Some(n) = ident(i) {
            if kw(i, "cascade") || kw(i, "restrict") {
                break;
            }
            names.push(n);
            i += 1;
            if matches!(toks.get(i), Some(Token::Comma)) {
                i += 1;
            } else {
                break;
            }
        }
        let mut cascade = false;
        if kw(i, "cascade") {
            cascade = true;
            i += 1;
        } else if kw(i, "restrict") {
            i += 1;
        }
        if names.is_empty() || i < toks.len() {
            return Err(syntax(
                "DROP TRACKING PLAN [IF EXISTS] name [, ...] [CASCADE | RESTRICT]",
            ));
        }
        Ok(PlanStatement::Drop {
            names,
            if_exists,
            cascade,
        })
    }
}

fn no_transaction(session: &Session, what: &str) -> Result<()> {
    if session.catalog.in_transaction() {
        return Err(TallyError::Transaction {
            code: "25001",
            message: format!("{what} cannot run inside a transaction block"),
        });
    }
    Ok(())
}

/// Reads the plan document the FROM string stands for, and where it came from (`None` for
/// inline JSON).
async fn resolve(session: &Session, from: &str) -> Result<(String, Option<String>)> {
    let trimmed = from.trim_start();
    if trimmed.starts_with('{') {
        return Ok((from.to_string(), None));
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let url = url::Url::parse(trimmed).map_err(|e| TallyError::InvalidValue {
            code: "22023",
            message: format!("tracking plan URL is not valid: {e}"),
        })?;
        let text = fetch(&url).await?;
        return Ok((text, Some(super::super::pull::redact_url(&url))));
    }
    let path = if lower.starts_with("file://") {
        url::Url::parse(trimmed)
            .ok()
            .and_then(|u| u.to_file_path().ok())
    } else if std::path::Path::new(trimmed).is_absolute() {
        Some(std::path::PathBuf::from(trimmed))
    } else {
        None
    };
    let Some(path) = path else {
        return Err(TallyError::InvalidValue {
            code: "22023",
            message: "tracking plan FROM must be JSON text (starting with '{'), an http(s) URL or an absolute file path".into(),
        });
    };
    if !session.is_superuser() {
        return Err(TallyError::PermissionDenied(
            "permission denied: reading a tracking plan from a server file requires the superuser privilege".into(),
        ));
    }
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| file_error(&path, e))?;
    if meta.len() > MAX_PLAN_BYTES as u64 {
        return Err(too_large(&path.display().to_string()));
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| file_error(&path, e))?;
    Ok((text, Some(format!("file://{}", path.display()))))
}

fn file_error(path: &std::path::Path, e: std::io::Error) -> TallyError {
    TallyError::InvalidValue {
        code: if e.kind() == std::io::ErrorKind::NotFound {
            "58P01"
        } else {
            "58030"
        },
        message: format!("cannot read tracking plan file {}: {e}", path.display()),
    }
}

fn too_large(what: &str) -> TallyError {
    TallyError::InvalidValue {
        code: "54000",
        message: format!("tracking plan at {what} is larger than {MAX_PLAN_BYTES} bytes"),
    }
}

/// GETs a plan document. Errors carry the SQLSTATEs `read_json_api` uses for the same
/// failures (08001 no answer, 28000 refused credentials, 42P01 not found, 08006 server error,
/// 22023 other refusals), and the URL with credential-looking parts shown as `***`.
async fn fetch(url: &url::Url) -> Result<String> {
    let shown = super::super::pull::redact_url(url);
    let remote = |code: &'static str, message: String| TallyError::Remote { code, message };
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TallyError::Internal(format!("HTTP client: {e}")))?;
    let resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| {
            remote(
                "08001",
                format!(
                    "cannot fetch tracking plan from {shown}: {}",
                    e.without_url()
                ),
            )
        })?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let code = match status {
            401 | 403 => "28000",
            404 | 410 => "42P01",
            s if s >= 500 => "08006",
            _ => "22023",
        };
        return Err(remote(
            code,
            format!("GET {shown} answered HTTP {status}: no tracking plan there"),
        ));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_PLAN_BYTES as u64)
    {
        return Err(too_large(&shown));
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        remote(
            "08006",
            format!("reading tracking plan from {shown}: {}", e.without_url()),
        )
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PLAN_BYTES {
            return Err(too_large(&shown));
        }
    }
    String::from_utf8(body).map_err(|_| TallyError::InvalidValue {
        code: "22021",
        message: format!("tracking plan from {shown} is not UTF-8 text"),
    })
}

/// Runs a tracking plan statement.
pub async fn execute(session: &mut Session, stmt: PlanStatement) -> Result<Output> {
    match stmt {
        PlanStatement::Create {
            name,
            from,
            or_replace,
            if_not_exists,
        } => {
            no_transaction(session, "CREATE TRACKING PLAN")?;
            if if_not_exists
                && session
                    .catalog
                    .store()
                    .current()
                    .tracking_plans
                    .contains_key(&name)
            {
                return Ok(Output::Command(
                    Completion::tag("CREATE TRACKING PLAN")
                        .with_notice(format!("tracking plan \"{name}\" already exists, skipping")),
                ));
            }
            let (text, origin) = resolve(session, &from).await?;
            let doc = PlanDoc::parse(&text)?;
            // Compiling is what the collector will do; doing it now proves it will work.
            CompiledPlan::compile(&name, &doc)?;
            let stored = serde_json::from_str::<serde_json::Value>(&text)
                .map(|v| v.to_string())
                .unwrap_or(text);
            let entry = TrackingPlanEntry {
                plan: stored,
                origin,
                revision: uuid::Uuid::new_v4().simple().to_string(),
                created_at: Utc::now().to_rfc3339(),
            };
            let created = session
                .catalog
                .store()
                .mutate(|doc| {
                    if doc.tracking_plans.contains_key(&name) && !or_replace {
                        return if if_not_exists {
                            Ok(false)
                        } else {
                            Err(TallyError::AlreadyExists {
                                kind: "tracking plan",
                                name: name.clone(),
                            })
                        };
                    }
                    doc.tracking_plans.insert(name.clone(), entry.clone());
                    Ok(true)
                })
                .await?;
            let mut c = Completion::tag("CREATE TRACKING PLAN");
            if created {
                tracing::info!(plan = %name, events = doc.events.len(), "tracking plan created");
            } else {
                c = c.with_notice(format!("tracking plan \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        PlanStatement::Drop {
            names,
            if_exists,
            cascade,
        } => {
            no_transaction(session, "DROP TRACKING PLAN")?;
            let missing = session
                .catalog
                .store()
                .mutate(|doc| {
                    let mut missing = Vec::new();
                    for n in &names {
                        if !doc.tracking_plans.contains_key(n) {
                            if !if_exists {
                                return Err(TallyError::NotFound {
                                    kind: "tracking plan",
                                    name: n.clone(),
                                });
                            }
                            missing.push(n.clone());
                            continue;
                        }
                        let users: Vec<String> = doc
                            .sources
                            .iter()
                            .filter(|(_, s)| s.tracking_plan.as_ref().is_some_and(|p| &p.plan == n))
                            .map(|(name, _)| name.clone())
                            .collect();
                        if !users.is_empty() && !cascade {
                            return Err(TallyError::InvalidValue {
                                code: "2BP01",
                                message: format!(
                                    "cannot drop tracking plan {n} because source {} uses it; use ALTER SOURCE {} DROP TRACKING PLAN, or DROP TRACKING PLAN ... CASCADE",
                                    users.join(", "),
                                    users[0]
                                ),
                            });
                        }
                        for u in &users {
                            if let Some(s) = doc.sources.get_mut(u) {
                                s.tracking_plan = None;
                            }
                        }
                        doc.tracking_plans.remove(n);
                    }
                    Ok(missing)
                })
                .await?;
            let mut c = Completion::tag("DROP TRACKING PLAN");
            for n in missing {
                c = c.with_notice(format!("tracking plan \"{n}\" does not exist, skipping"));
            }
            Ok(Output::Command(c))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_statements() {
        assert!(matches("CREATE TRACKING PLAN p FROM '{}'"));
        assert!(matches("create or replace tracking plan p from '{}'"));
        assert!(matches("DROP TRACKING PLAN p"));
        assert!(!matches("CREATE TABLE tracking (plan text)"));
        assert!(!matches("DROP TABLE tracking"));
    }

    #[test]
    fn parses_the_statements() {
        assert_eq!(
            parse("CREATE TRACKING PLAN Web_Plan FROM '{\"events\": {}}';").expect("parse"),
            PlanStatement::Create {
                name: "web_plan".into(),
                from: "{\"events\": {}}".into(),
                or_replace: false,
                if_not_exists: false
            }
        );
        assert_eq!(
            parse("CREATE OR REPLACE TRACKING PLAN \"P\" FROM $$ {\"a\": 'b'} $$").expect("parse"),
            PlanStatement::Create {
                name: "P".into(),
                from: " {\"a\": 'b'} ".into(),
                or_replace: true,
                if_not_exists: false
            }
        );
        assert!(matches!(
            parse("CREATE TRACKING PLAN IF NOT EXISTS p FROM 'https://x/p.json'"),
            Ok(PlanStatement::Create {
                if_not_exists: true,
                ..
            })
        ));
        assert_eq!(
            parse("DROP TRACKING PLAN IF EXISTS a, b CASCADE").expect("parse"),
            PlanStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
                cascade: true
            }
        );
        assert!(parse("CREATE TRACKING PLAN p").is_err());
        assert!(parse("CREATE TRACKING PLAN p FROM 12").is_err());
        assert!(parse("CREATE TRACKING PLAN p FROM '{}' extra").is_err());
        assert!(parse("DROP TRACKING PLAN").is_err());
    }
}
