//! Sources in SQL: `CREATE SOURCE [IF NOT EXISTS] name TYPE tracking_api`, `ALTER SOURCE
//! name ROTATE WRITE KEY`, `ALTER SOURCE name SET TRACKING PLAN plan [MODE flag | block]`,
//! `ALTER SOURCE name DROP TRACKING PLAN` (or `SET TRACKING PLAN NONE`), `DROP SOURCE
//! [IF EXISTS] name [, ...]`.
//!
//! A source is a catalog object with a write key; its events land in the schema of the same
//! name, which CREATE SOURCE creates when absent. Dropping a source revokes its key and
//! keeps its schema and tables: collected data is the user's to drop, as with Segment.

use chrono::Utc;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::catalog::{PlanMode, SYSTEM_SCHEMAS, SourceEntry, SourcePlan};
use crate::engine::Session;
use crate::error::{Result, TallyError};
use crate::statements::{Completion, Output, change_catalog, drop_completion, drop_named};

/// Source types tally can create.
pub const SOURCE_TYPES: &[&str] = &["tracking_api"];

/// A parsed source statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatement {
    /// `CREATE SOURCE`.
    Create {
        /// Source (and schema) name.
        name: String,
        /// Source type.
        source_type: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `ALTER SOURCE name ROTATE WRITE KEY`.
    RotateKey {
        /// Source name.
        name: String,
    },
    /// `ALTER SOURCE name SET TRACKING PLAN plan [MODE flag | block]`, or with no plan
    /// `ALTER SOURCE name DROP TRACKING PLAN` / `SET TRACKING PLAN NONE`.
    SetTrackingPlan {
        /// Source name.
        name: String,
        /// The plan and its mode; `None` takes the source off its plan.
        plan: Option<(String, PlanMode)>,
    },
    /// `DROP SOURCE`.
    Drop {
        /// Source names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

fn syntax(message: impl Into<String>) -> TallyError {
    TallyError::Syntax {
        message: format!("syntax error: {}", message.into()),
        position: None,
    }
}

/// Parses a statement whose first two words are `CREATE|ALTER|DROP SOURCE`.
pub fn parse(text: &str) -> Result<SourceStatement> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|e| syntax(e.to_string()))?;
    let toks: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    // Identifiers fold to lower case unless quoted; keywords compare case-insensitively.
    let ident = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    let kw = |i: usize, k: &str| matches!(toks.get(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let verb = ident(0).unwrap_or_default();
    let mut i = 2;
    match verb.as_str() {
        "create" => {
            let mut if_not_exists = false;
            if kw(i, "if") && kw(i + 1, "not") && kw(i + 2, "exists") {
                if_not_exists = true;
                i += 3;
            }
            let name = ident(i).ok_or_else(|| syntax("CREATE SOURCE needs a source name"))?;
            i += 1;
            if !kw(i, "type") {
                return Err(syntax(format!(
                    "expected TYPE after CREATE SOURCE {name} (for example: CREATE SOURCE {name} TYPE tracking_api)"
                )));
            }
            let source_type = ident(i + 1).ok_or_else(|| syntax("TYPE needs a source type"))?;
            if toks.len() > i + 2 {
                return Err(syntax(format!(
                    "unexpected {} after the source type",
                    toks[i + 2]
                )));
            }
            Ok(SourceStatement::Create {
                name,
                source_type,
                if_not_exists,
            })
        }
        "alter" => {
            let name = ident(i).ok_or_else(|| syntax("ALTER SOURCE needs a source name"))?;
            if kw(i + 1, "rotate") && kw(i + 2, "write") && kw(i + 3, "key") && toks.len() == i + 4
            {
                Ok(SourceStatement::RotateKey { name })
            } else if kw(i + 1, "drop")
                && kw(i + 2, "tracking")
                && kw(i + 3, "plan")
                && toks.len() == i + 4
            {
                Ok(SourceStatement::SetTrackingPlan { name, plan: None })
            } else if kw(i + 1, "set") && kw(i + 2, "tracking") && kw(i + 3, "plan") {
                let j = i + 4;
                if kw(j, "none") && toks.len() == j + 1 {
                    return Ok(SourceStatement::SetTrackingPlan { name, plan: None });
                }
                let plan = ident(j).ok_or_else(|| syntax("SET TRACKING PLAN needs a plan name"))?;
                let mode = if toks.len() == j + 1 {
                    PlanMode::Flag
                } else if kw(j + 1, "mode") && toks.len() == j + 3 {
                    if kw(j + 2, "flag") {
                        PlanMode::Flag
                    } else if kw(j + 2, "block") {
                        PlanMode::Block
                    } else {
                        return Err(syntax("tracking plan MODE is flag or block"));
                    }
                } else {
                    return Err(syntax(
                        "ALTER SOURCE name SET TRACKING PLAN plan [MODE flag | block]",
                    ));
                };
                Ok(SourceStatement::SetTrackingPlan {
                    name,
                    plan: Some((plan, mode)),
                })
            } else {
                Err(syntax(
                    "ALTER SOURCE supports ROTATE WRITE KEY, SET TRACKING PLAN plan [MODE flag | block] and DROP TRACKING PLAN",
                ))
            }
        }
        "drop" => {
            let mut if_exists = false;
            if kw(i, "if") && kw(i + 1, "exists") {
                if_exists = true;
                i += 2;
            }
            let mut names = Vec::new();
            while let Some(n) = ident(i) {
                names.push(n);
                i += 1;
                if matches!(toks.get(i), Some(Token::Comma)) {
                    i += 1;
                } else {
                    break;
                }
            }
            if names.is_empty() || i < toks.len() {
                return Err(syntax("DROP SOURCE [IF EXISTS] name [, ...]"));
            }
            Ok(SourceStatement::Drop { names, if_exists })
        }
        _ => Err(syntax("expected CREATE, ALTER or DROP SOURCE")),
    }
}

/// A new write key: 32 characters from a cryptographic generator (about 190 bits).
pub fn new_write_key() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Runs a source statement.
pub async fn execute(session: &mut Session, stmt: SourceStatement) -> Result<Output> {
    match stmt {
        SourceStatement::Create {
            name,
            source_type,
            if_not_exists,
        } => {
            if !SOURCE_TYPES.contains(&source_type.as_str()) {
                return Err(TallyError::InvalidValue {
                    code: "22023",
                    message: format!(
                        "unknown source type \"{source_type}\"; known types: {}",
                        SOURCE_TYPES.join(", ")
                    ),
                });
            }
            if SYSTEM_SCHEMAS.contains(&name.as_str()) {
                return Err(TallyError::PermissionDenied(format!(
                    "\"{name}\" is a system schema and cannot be a source"
                )));
            }
            let key = new_write_key();
            let now = Utc::now().to_rfc3339();
            let created = change_catalog(session, |doc| {
                if doc.sources.contains_key(&name) {
                    return if if_not_exists {
                        Ok(false)
                    } else {
                        Err(TallyError::AlreadyExists {
                            kind: "source",
                            name: name.clone(),
                        })
                    };
                }
                doc.sources.insert(
                    name.clone(),
                    SourceEntry {
                        source_type: source_type.clone(),
                        write_key: key.clone(),
                        created_at: now.clone(),
                        key_rotated_at: None,
                        tracking_plan: None,
                    },
                );
                doc.schemas.entry(name.clone()).or_default();
                Ok(true)
            })
            .await?;
            let mut c = Completion::tag("CREATE SOURCE");
            if !created {
                c = c.with_notice(format!("source \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        SourceStatement::RotateKey { name } => {
            let key = new_write_key();
            let now = Utc::now().to_rfc3339();
            change_catalog(session, |doc| {
                let s = doc
                    .sources
                    .get_mut(&name)
                    .ok_or_else(|| TallyError::NotFound {
                        kind: "source",
                        name: name.clone(),
                    })?;
                s.write_key = key.clone();
                s.key_rotated_at = Some(now.clone());
                Ok(())
            })
            .await?;
            Ok(Output::Command(Completion::tag("ALTER SOURCE")))
        }
        SourceStatement::SetTrackingPlan { name, plan } => {
            if session.catalog.in_transaction() {
                return Err(TallyError::Transaction {
                    code: "25001",
                    message: "ALTER SOURCE ... TRACKING PLAN cannot run inside a transaction block"
                        .into(),
                });
            }
            let now = Utc::now().to_rfc3339();
            session
                .catalog
                .store()
                .mutate(|doc| {
                    if let Some((p, _)) = &plan
                        && !doc.tracking_plans.contains_key(p)
                    {
                        return Err(TallyError::NotFound {
                            kind: "tracking plan",
                            name: p.clone(),
                        });
                    }
                    let s = doc
                        .sources
                        .get_mut(&name)
                        .ok_or_else(|| TallyError::NotFound {
                            kind: "source",
                            name: name.clone(),
                        })?;
                    s.tracking_plan = plan.as_ref().map(|(p, mode)| SourcePlan {
                        plan: p.clone(),
                        mode: *mode,
                        set_at: now.clone(),
                    });
                    Ok(())
                })
                .await?;
            match &plan {
                Some((p, mode)) => {
                    tracing::info!(source = %name, plan = %p, mode = mode.as_str(), "source put under a tracking plan")
                }
                None => tracing::info!(source = %name, "source taken off its tracking plan"),
            }
            Ok(Output::Command(Completion::tag("ALTER SOURCE")))
        }
        SourceStatement::Drop { names, if_exists } => {
            let missing = change_catalog(session, |doc| {
                drop_named(&mut doc.sources, &names, if_exists, "source")
            })
            .await?;
            Ok(drop_completion("DROP SOURCE", "source", missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_source_statements() {
        assert_eq!(
            parse("CREATE SOURCE Web TYPE tracking_api").expect("parse"),
            SourceStatement::Create {
                name: "web".into(),
                source_type: "tracking_api".into(),
                if_not_exists: false
            }
        );
        assert_eq!(
            parse("create source if not exists \"Mobile\" type tracking_api;").expect("parse"),
            SourceStatement::Create {
                name: "Mobile".into(),
                source_type: "tracking_api".into(),
                if_not_exists: true
            }
        );
        assert_eq!(
            parse("ALTER SOURCE web ROTATE WRITE KEY").expect("parse"),
            SourceStatement::RotateKey { name: "web".into() }
        );
        assert_eq!(
            parse("DROP SOURCE IF EXISTS a, b").expect("parse"),
            SourceStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            }
        );
        assert!(parse("CREATE SOURCE web").is_err());
        assert!(parse("ALTER SOURCE web SET x").is_err());
        assert_eq!(
            parse("ALTER SOURCE web SET TRACKING PLAN Shop MODE block").expect("parse"),
            SourceStatement::SetTrackingPlan {
                name: "web".into(),
                plan: Some(("shop".into(), PlanMode::Block))
            }
        );
        assert_eq!(
            parse("alter source web set tracking plan shop").expect("parse"),
            SourceStatement::SetTrackingPlan {
                name: "web".into(),
                plan: Some(("shop".into(), PlanMode::Flag))
            }
        );
        for text in [
            "ALTER SOURCE web DROP TRACKING PLAN",
            "ALTER SOURCE web SET TRACKING PLAN NONE",
        ] {
            assert_eq!(
                parse(text).expect("parse"),
                SourceStatement::SetTrackingPlan {
                    name: "web".into(),
                    plan: None
                }
            );
        }
        assert!(parse("ALTER SOURCE web SET TRACKING PLAN shop MODE loud").is_err());
        assert!(parse("ALTER SOURCE web SET TRACKING PLAN").is_err());
    }

    #[test]
    fn write_keys_are_long_and_distinct() {
        let a = new_write_key();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_write_key());
    }
}
