//! Route statements: parsing and execution of
//!
//! - `CREATE ROUTE [IF NOT EXISTS] name FROM SOURCE source TO DESTINATION destination
//!   [WITH (option = 'value', ...)] AS SELECT ... FROM events [WHERE ...]`
//! - `ALTER ROUTE name PAUSE | RESUME`
//! - `DROP ROUTE [IF EXISTS] name [, ...]`
//! - `REPLAY ROUTE name FROM 'timestamp' [TO 'timestamp']`
//!
//! CREATE checks everything it can before storing the route, so that mistakes are errors
//! with a SQLSTATE and not a route that fails in the background: the source and the
//! destination exist (42704), the options fit the destination's type (22023, 0A000), and the
//! query plans against `events` (42601, 42703, 42883, ...).

use std::collections::BTreeMap;

use chrono::Utc;

use super::events::Transformer;
use super::runner::RouteOptions;
use crate::catalog::RouteEntry;
use crate::engine::Session;
use crate::error::{Result, TallyError};
use crate::statements::tokens::{Tokens, syntax};
use crate::statements::{Completion, Output, change_catalog};

/// A parsed route statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteStatement {
    /// `CREATE ROUTE`.
    Create {
        /// Route name.
        name: String,
        /// Source whose events it reads.
        source: String,
        /// Destination it delivers to.
        destination: String,
        /// `WITH (...)` options.
        options: BTreeMap<String, String>,
        /// The query text after AS.
        query: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `ALTER ROUTE name PAUSE | RESUME`.
    Alter {
        /// Route name.
        name: String,
        /// True for PAUSE, false for RESUME.
        pause: bool,
    },
    /// `DROP ROUTE`.
    Drop {
        /// Route names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// `REPLAY ROUTE name FROM 'ts' [TO 'ts']`.
    Replay {
        /// Route name.
        name: String,
        /// Start of the time range (inclusive), as written.
        from: String,
        /// End of the time range (exclusive), as written.
        to: Option<String>,
    },
}

const CREATE_USAGE: &str = "CREATE ROUTE name FROM SOURCE source TO DESTINATION destination [WITH (option = 'value', ...)] AS SELECT ... FROM events [WHERE ...]";

/// Parses a statement whose first words are `CREATE|ALTER|DROP|REPLAY ROUTE`.
pub fn parse(text: &str) -> Result<RouteStatement> {
    let t = Tokens::new(text)?;
    let verb = t.ident(0).unwrap_or_default();
    if !t.kw(1, "route") {
        return Err(syntax("expected ROUTE"));
    }
    match verb.as_str() {
        "create" => {
            let mut i = 2;
            let mut if_not_exists = false;
            if t.kw(i, "if") && t.kw(i + 1, "not") && t.kw(i + 2, "exists") {
                if_not_exists = true;
                i += 3;
            }
            let name = t.ident(i).ok_or_else(|| syntax(CREATE_USAGE))?;
            i += 1;
            if !(t.kw(i, "from") && t.kw(i + 1, "source")) {
                return Err(syntax(CREATE_USAGE));
            }
            let source = t.ident(i + 2).ok_or_else(|| syntax(CREATE_USAGE))?;
            i += 3;
            if !(t.kw(i, "to") && t.kw(i + 1, "destination")) {
                return Err(syntax(CREATE_USAGE));
            }
            let destination = t.ident(i + 2).ok_or_else(|| syntax(CREATE_USAGE))?;
            i += 3;
            let mut options = BTreeMap::new();
            if t.kw(i, "with") {
                let (o, next) = t.options(i + 1)?;
                options = o;
                i = next;
            }
            if !t.kw(i, "as") {
                return Err(syntax(CREATE_USAGE));
            }
            let query = t.rest(i + 1);
            if query.is_empty() {
                return Err(syntax(CREATE_USAGE));
            }
            Ok(RouteStatement::Create {
                name,
                source,
                destination,
                options,
                query,
                if_not_exists,
            })
        }
        "alter" => {
            let name = t
                .ident(2)
                .ok_or_else(|| syntax("ALTER ROUTE name PAUSE | RESUME"))?;
            let pause = if t.kw(3, "pause") {
                true
            } else if t.kw(3, "resume") {
                false
            } else {
                return Err(syntax("ALTER ROUTE name PAUSE | RESUME"));
            };
            if !t.end(4) {
                return Err(syntax("ALTER ROUTE name PAUSE | RESUME"));
            }
            Ok(RouteStatement::Alter { name, pause })
        }
        "drop" => {
            let (names, if_exists) = t.drop_list(2, "DROP ROUTE [IF EXISTS] name [, ...]")?;
            Ok(RouteStatement::Drop { names, if_exists })
        }
        "replay" => {
            let usage = "REPLAY ROUTE name FROM 'timestamp' [TO 'timestamp']";
            let name = t.ident(2).ok_or_else(|| syntax(usage))?;
            if !t.kw(3, "from") {
                return Err(syntax(usage));
            }
            let from = t.string(4).ok_or_else(|| syntax(usage))?;
            let mut to = None;
            let mut i = 5;
            if t.kw(i, "to") {
                to = Some(t.string(i + 1).ok_or_else(|| syntax(usage))?);
                i += 2;
            }
            if !t.end(i) {
                return Err(syntax(usage));
            }
            Ok(RouteStatement::Replay { name, from, to })
        }
        _ => Err(syntax("expected CREATE, ALTER, DROP or REPLAY ROUTE")),
    }
}

/// Runs a route statement.
pub async fn execute(session: &mut Session, stmt: RouteStatement) -> Result<Output> {
    match stmt {
        RouteStatement::Create {
            name,
            source,
            destination,
            options,
            query,
            if_not_exists,
        } => {
            let doc = session.catalog.doc();
            if doc.routes.contains_key(&name) {
                if if_not_exists {
                    return Ok(Output::Command(
                        Completion::tag("CREATE ROUTE")
                            .with_notice(format!("route \"{name}\" already exists, skipping")),
                    ));
                }
                return Err(TallyError::AlreadyExists {
                    kind: "route",
                    name,
                });
            }
            if !doc.sources.contains_key(&source) {
                return Err(TallyError::NotFound {
                    kind: "source",
                    name: source,
                });
            }
            let dest = doc.destinations.get(&destination).cloned().ok_or_else(|| {
                TallyError::NotFound {
                    kind: "destination",
                    name: destination.clone(),
                }
            })?;
            let opts = RouteOptions::parse(&options, &dest)?;
            let schema = crate::statements::names::default_schema(session);
            let mut transformer = Transformer::new(&session.engine, &source, &query, &schema)?;
            let columns = transformer.check().await?;
            if let Some(k) = &opts.key
                && !columns.iter().any(|c| c == k)
            {
                return Err(TallyError::InvalidValue {
                    code: "42703",
                    message: format!(
                        "key column \"{k}\" is not in the route query's result (it returns: {})",
                        columns.join(", ")
                    ),
                });
            }
            // The route reads what arrives after CREATE ROUTE returns: its start is fixed
            // here, not when the manager gets round to starting it (events sent in between
            // would otherwise be skipped).
            let wal = session.engine.routes.wal();
            let started_here = match &wal {
                Some(wal) if wal.reader(&name).is_none() => {
                    wal.save_reader(&name, wal.end_position())?;
                    true
                }
                _ => false,
            };
            let now = Utc::now().to_rfc3339();
            let created = change_catalog(session, |doc| {
                if doc.routes.contains_key(&name) {
                    return if if_not_exists {
                        Ok(false)
                    } else {
                        Err(TallyError::AlreadyExists {
                            kind: "route",
                            name: name.clone(),
                        })
                    };
                }
                doc.routes.insert(
                    name.clone(),
                    RouteEntry {
                        source: source.clone(),
                        destination: destination.clone(),
                        query: query.clone(),
                        options: options.clone(),
                        default_schema: schema.clone(),
                        paused: false,
                        created_at: now.clone(),
                        altered_at: None,
                    },
                );
                Ok(true)
            })
            .await;
            if let (Some(wal), true) = (&wal, started_here)
                && !matches!(created, Ok(true))
            {
                wal.remove_reader(&name);
            }
            let created = created?;
            session.engine.routes.notify_changed();
            let mut c = Completion::tag("CREATE ROUTE");
            if !created {
                c = c.with_notice(format!("route \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        RouteStatement::Alter { name, pause } => {
            let now = Utc::now().to_rfc3339();
            change_catalog(session, |doc| {
                let e = doc
                    .routes
                    .get_mut(&name)
                    .ok_or_else(|| TallyError::NotFound {
                        kind: "route",
                        name: name.clone(),
                    })?;
                e.paused = pause;
                e.altered_at = Some(now.clone());
                Ok(())
            })
            .await?;
            session.engine.routes.notify_changed();
            let mut c = Completion::tag("ALTER ROUTE");
            if pause && !wait_paused(session, &name).await {
                c = c.with_notice(format!(
                    "route \"{name}\" is finishing a delivery; it pauses after it"
                ));
            }
            Ok(Output::Command(c))
        }
        RouteStatement::Drop { names, if_exists } => {
            let missing = change_catalog(session, |doc| {
                let mut missing = Vec::new();
                for n in &names {
                    if doc.routes.remove(n).is_none() {
                        if !if_exists {
                            return Err(TallyError::NotFound {
                                kind: "route",
                                name: n.clone(),
                            });
                        }
                        missing.push(n.clone());
                    }
                }
                Ok(missing)
            })
            .await?;
            session.engine.routes.notify_changed();
            let mut c = Completion::tag("DROP ROUTE");
            for n in missing {
                c = c.with_notice(format!("route \"{n}\" does not exist, skipping"));
            }
            Ok(Output::Command(c))
        }
        RouteStatement::Replay { name, from, to } => {
            super::replay::run(session, &name, &from, to.as_deref()).await
        }
    }
}

/// Waits (up to 5 s) until route `name`, when it runs on this server, has stopped sending,
/// so that events that arrive after `ALTER ROUTE ... PAUSE` returns are not sent. Returns
/// false when it did not get there in time (it is in the middle of a delivery).
async fn wait_paused(session: &Session, name: &str) -> bool {
    let Some(stats) = session.engine.routes.existing_stats(name) else {
        return true;
    };
    for _ in 0..500 {
        if matches!(*stats.state.lock(), "paused" | "stopped" | "error") {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_route_statements() {
        let s = parse(
            "CREATE ROUTE IF NOT EXISTS R1 FROM SOURCE web TO DESTINATION hooks WITH (batch_size = 10, give_up_after = '1h') AS SELECT user_id, hash_email(json_get_str(traits, 'email')) AS e FROM events WHERE type = 'identify';",
        )
        .expect("parses");
        match s {
            RouteStatement::Create {
                name,
                source,
                destination,
                options,
                query,
                if_not_exists,
            } => {
                assert_eq!(name, "r1");
                assert_eq!(source, "web");
                assert_eq!(destination, "hooks");
                assert!(if_not_exists);
                assert_eq!(options.get("give_up_after").map(String::as_str), Some("1h"));
                assert_eq!(
                    query,
                    "SELECT user_id, hash_email(json_get_str(traits, 'email')) AS e FROM events WHERE type = 'identify'"
                );
            }
            other => panic!("not a create: {other:?}"),
        }
        assert_eq!(
            parse("ALTER ROUTE r1 PAUSE").expect("pause"),
            RouteStatement::Alter {
                name: "r1".into(),
                pause: true
            }
        );
        assert_eq!(
            parse("drop route if exists a, b").expect("drop"),
            RouteStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            }
        );
        assert_eq!(
            parse("REPLAY ROUTE r1 FROM '2024-01-01' TO '2024-01-02'").expect("replay"),
            RouteStatement::Replay {
                name: "r1".into(),
                from: "2024-01-01".into(),
                to: Some("2024-01-02".into())
            }
        );
        assert!(parse("CREATE ROUTE r FROM web TO DESTINATION d AS SELECT 1").is_err());
        assert!(parse("ALTER ROUTE r STOP").is_err());
    }
}
