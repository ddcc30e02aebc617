//! Enrichment connections: `CREATE [OR REPLACE] CONNECTION [IF NOT EXISTS] name TYPE http |
//! zerobounce WITH (url = ..., method = ..., headers = ..., secret = ..., rate_limit = ...,
//! batch_size = ..., cache_ttl = ..., ...)`, `ALTER CONNECTION name SET (...) | RESET (...)`,
//! `DROP CONNECTION [IF EXISTS] name [, ...]`, and `tally.connections` with each connection's
//! request counters.
//!
//! A connection is what `enrich(connection, key)` and `verify_email(connection, email)` call
//! (the functions and the HTTP behaviour live in `tally_udfs::enrich`). Here connections are
//! catalog objects: [`CatalogConnections`] builds the run-time connection from the catalog
//! entry and the secret it names, and keeps it (with its cache and rate limiter) for as long
//! as neither changes.

pub mod system;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;
use datafusion::sql::sqlparser::tokenizer::Token;
use parking_lot::Mutex;
use tally_udfs::enrich::{
    Connection, ConnectionConfig, ConnectionKind, ConnectionRegistry, EnrichError,
};

use crate::catalog::{CatalogStore, ConnectionEntry};
use crate::engine::Session;
use crate::error::{Result, TallyError};
use crate::secrets::SecretStore;
use crate::statements::tokens::{Tokens, syntax};
use crate::statements::{Completion, Output, change_catalog, drop_completion, drop_named};

/// Maps an enrichment error to the SQLSTATE that fits.
pub fn to_tally(e: EnrichError) -> TallyError {
    match e {
        EnrichError::Option { .. } => TallyError::InvalidValue {
            code: "22023",
            message: e.to_string(),
        },
        EnrichError::UnknownConnection(name) => TallyError::NotFound {
            kind: "connection",
            name,
        },
        EnrichError::PrivateAddress { .. } => TallyError::PermissionDenied(e.to_string()),
        EnrichError::Resolve { .. } | EnrichError::Request { .. } => TallyError::Remote {
            code: "08001",
            message: e.to_string(),
        },
    }
}

/// The run-time settings of the catalog entry `entry`, with its secret decrypted.
pub fn config_of(
    name: &str,
    entry: &ConnectionEntry,
    secrets: &SecretStore,
    doc: &crate::catalog::CatalogDoc,
) -> Result<ConnectionConfig> {
    let kind =
        ConnectionKind::parse(&entry.connection_type).ok_or_else(|| TallyError::InvalidValue {
            code: "22023",
            message: format!(
                "unknown connection type \"{}\"; known types: {}",
                entry.connection_type,
                ConnectionKind::NAMES.join(", ")
            ),
        })?;
    let secret = match entry.options.get("secret") {
        Some(s) => Some(secrets.reveal_in(doc, s).map_err(|e| match e {
            TallyError::NotFound { name, .. } => TallyError::InvalidValue {
                code: "42704",
                message: format!(
                    "connection option secret: secret \"{name}\" does not exist (CREATE SECRET {name} VALUE '...')"
                ),
            },
            other => other,
        })?),
        None => None,
    };
    ConnectionConfig::from_options(name, kind, &entry.options, secret).map_err(to_tally)
}

/// Connections from the catalog, built on first use and kept while their entry and secret
/// are unchanged (so the answer cache and the rate limiter outlive a query).
#[derive(Debug)]
pub struct CatalogConnections {
    catalog: Arc<CatalogStore>,
    secrets: Arc<SecretStore>,
    built: Mutex<HashMap<String, (String, Arc<Connection>)>>,
}

impl CatalogConnections {
    /// A registry over `catalog`'s connections.
    pub fn new(catalog: Arc<CatalogStore>, secrets: Arc<SecretStore>) -> Self {
        CatalogConnections {
            catalog,
            secrets,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The connection `name` if it was built already (for its counters).
    pub fn built(&self, name: &str) -> Option<Arc<Connection>> {
        self.built.lock().get(name).map(|(_, c)| c.clone())
    }

    /// What a built connection depends on: its entry and its secret's ciphertext.
    fn fingerprint(doc: &crate::catalog::CatalogDoc, entry: &ConnectionEntry) -> String {
        let secret = entry
            .options
            .get("secret")
            .and_then(|s| doc.secrets.get(s))
            .map(|s| s.ciphertext.as_str())
            .unwrap_or_default();
        format!("{}|{:?}|{}", entry.connection_type, entry.options, secret)
    }
}

impl ConnectionRegistry for CatalogConnections {
    fn connection(&self, name: &str) -> std::result::Result<Arc<Connection>, EnrichError> {
        let doc = self.catalog.current();
        let entry = doc
            .connections
            .get(name)
            .ok_or_else(|| EnrichError::UnknownConnection(name.to_string()))?;
        let fingerprint = Self::fingerprint(&doc, entry);
        if let Some((f, c)) = self.built.lock().get(name)
            && *f == fingerprint
        {
            return Ok(c.clone());
        }
        let config =
            config_of(name, entry, &self.secrets, &doc).map_err(|e| EnrichError::Option {
                option: "secret".into(),
                message: e.to_string(),
            })?;
        let connection = Arc::new(Connection::new(config));
        self.built
            .lock()
            .insert(name.to_string(), (fingerprint, connection.clone()));
        Ok(connection)
    }
}

/// A parsed connection statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatement {
    /// `CREATE [OR REPLACE] CONNECTION [IF NOT EXISTS] name TYPE t [WITH (...)]`.
    Create {
        /// Connection name.
        name: String,
        /// Its type.
        connection_type: String,
        /// Its options.
        options: BTreeMap<String, String>,
        /// OR REPLACE given.
        or_replace: bool,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `ALTER CONNECTION name SET (...) | RESET (...)`.
    Alter {
        /// Connection name.
        name: String,
        /// Options to set.
        set: BTreeMap<String, String>,
        /// Options to remove.
        reset: Vec<String>,
    },
    /// `DROP CONNECTION [IF EXISTS] name [, ...]`.
    Drop {
        /// Connection names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

/// Parses `CREATE | ALTER | DROP CONNECTION`.
pub fn parse(text: &str) -> Result<ConnectionStatement> {
    let t = Tokens::new(text)?;
    match t.ident(0).as_deref() {
        Some("create") => {
            let mut i = 1;
            let or_replace = t.kw(1, "or") && t.kw(2, "replace");
            if or_replace {
                i += 2;
            }
            if !t.kw(i, "connection") {
                return Err(syntax("expected CREATE [OR REPLACE] CONNECTION"));
            }
            i += 1;
            let if_not_exists = t.kw(i, "if") && t.kw(i + 1, "not") && t.kw(i + 2, "exists");
            if if_not_exists {
                i += 3;
            }
            let name = t
                .ident(i)
                .ok_or_else(|| syntax("CREATE CONNECTION needs a connection name"))?;
            i += 1;
            if !t.kw(i, "type") {
                return Err(syntax(format!(
                    "expected TYPE after CREATE CONNECTION {name} (for example: CREATE CONNECTION {name} TYPE http WITH (url = 'https://...'))"
                )));
            }
            let connection_type = t
                .ident(i + 1)
                .ok_or_else(|| syntax("TYPE needs a connection type"))?;
            i += 2;
            let mut options = BTreeMap::new();
            if t.kw(i, "with") {
                let (o, next) = t.options(i + 1)?;
                options = o;
                i = next;
            }
            if let Some(tok) = t.tok(i) {
                return Err(syntax(format!(
                    "unexpected {tok} after the connection options"
                )));
            }
            Ok(ConnectionStatement::Create {
                name,
                connection_type,
                options,
                or_replace,
                if_not_exists,
            })
        }
        Some("alter") => {
            let name = t
                .ident(2)
                .ok_or_else(|| syntax("ALTER CONNECTION needs a connection name"))?;
            let usage = "ALTER CONNECTION name SET (option = 'value', ...) | RESET (option, ...)";
            if t.kw(3, "set") {
                let (set, next) = t.options(4)?;
                if t.tok(next).is_some() {
                    return Err(syntax(usage));
                }
                Ok(ConnectionStatement::Alter {
                    name,
                    set,
                    reset: vec![],
                })
            } else if t.kw(3, "reset") && matches!(t.tok(4), Some(Token::LParen)) {
                let mut reset = Vec::new();
                let mut i = 5;
                loop {
                    reset.push(t.ident(i).ok_or_else(|| syntax(usage))?);
                    match t.tok(i + 1) {
                        Some(Token::Comma) => i += 2,
                        Some(Token::RParen) if t.end(i + 2) => break,
                        _ => return Err(syntax(usage)),
                    }
                }
                Ok(ConnectionStatement::Alter {
                    name,
                    set: BTreeMap::new(),
                    reset,
                })
            } else {
                Err(syntax(usage))
            }
        }
        Some("drop") => {
            let (names, if_exists) = t.drop_list(2, "DROP CONNECTION [IF EXISTS] name [, ...]")?;
            Ok(ConnectionStatement::Drop { names, if_exists })
        }
        _ => Err(syntax("expected CREATE, ALTER or DROP CONNECTION")),
    }
}

/// Checks a connection's settings and its address (the SSRF guard) before it is stored, so
/// that a typo or a refused host is an error now rather than NULLs in a later query.
async fn validate(session: &Session, name: &str, entry: &ConnectionEntry) -> Result<()> {
    let config = config_of(name, entry, &session.engine.secrets, &session.catalog.doc())?;
    Connection::new(config)
        .check_address()
        .await
        .map_err(to_tally)
}

/// Runs a connection statement.
pub async fn execute(session: &mut Session, stmt: ConnectionStatement) -> Result<Output> {
    let now = Utc::now().to_rfc3339();
    match stmt {
        ConnectionStatement::Create {
            name,
            connection_type,
            options,
            or_replace,
            if_not_exists,
        } => {
            let exists = session
                .catalog
                .store()
                .current()
                .connections
                .contains_key(&name);
            if exists && if_not_exists && !or_replace {
                return Ok(Output::Command(
                    Completion::tag("CREATE CONNECTION")
                        .with_notice(format!("connection \"{name}\" already exists, skipping")),
                ));
            }
            let entry = ConnectionEntry {
                connection_type: connection_type.to_ascii_lowercase(),
                options,
                created_at: now.clone(),
                altered_at: None,
            };
            validate(session, &name, &entry).await?;
            let created = change_catalog(session, |doc| {
                if let Some(old) = doc.connections.get_mut(&name) {
                    if or_replace {
                        old.connection_type = entry.connection_type.clone();
                        old.options = entry.options.clone();
                        old.altered_at = Some(now.clone());
                        return Ok(true);
                    }
                    return if if_not_exists {
                        Ok(false)
                    } else {
                        Err(TallyError::AlreadyExists {
                            kind: "connection",
                            name: name.clone(),
                        })
                    };
                }
                doc.connections.insert(name.clone(), entry.clone());
                Ok(true)
            })
            .await?;
            let mut c = Completion::tag("CREATE CONNECTION");
            if !created {
                c = c.with_notice(format!("connection \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        ConnectionStatement::Alter { name, set, reset } => {
            let mut entry = session
                .catalog
                .doc()
                .connections
                .get(&name)
                .cloned()
                .ok_or_else(|| TallyError::NotFound {
                    kind: "connection",
                    name: name.clone(),
                })?;
            for k in &reset {
                entry.options.remove(k);
            }
            entry.options.extend(set);
            validate(session, &name, &entry).await?;
            change_catalog(session, |doc| {
                let old = doc
                    .connections
                    .get_mut(&name)
                    .ok_or_else(|| TallyError::NotFound {
                        kind: "connection",
                        name: name.clone(),
                    })?;
                old.options = entry.options.clone();
                old.altered_at = Some(now.clone());
                Ok(())
            })
            .await?;
            Ok(Output::Command(Completion::tag("ALTER CONNECTION")))
        }
        ConnectionStatement::Drop { names, if_exists } => {
            let missing = change_catalog(session, |doc| {
                drop_named(&mut doc.connections, &names, if_exists, "connection")
            })
            .await?;
            Ok(drop_completion("DROP CONNECTION", "connection", missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_statements() {
        let s = parse(
            "CREATE CONNECTION clearbit TYPE http WITH (url = 'https://x/{key}', rate_limit = 5, secret = cb_key)",
        )
        .expect("parse");
        let ConnectionStatement::Create {
            name,
            connection_type,
            options,
            ..
        } = s
        else {
            panic!("{s:?}");
        };
        assert_eq!(
            (name.as_str(), connection_type.as_str()),
            ("clearbit", "http")
        );
        assert_eq!(options.get("rate_limit").map(String::as_str), Some("5"));
        assert_eq!(options.get("secret").map(String::as_str), Some("cb_key"));
        assert!(matches!(
            parse("ALTER CONNECTION c RESET (rate_limit, cache_ttl)").expect("parse"),
            ConnectionStatement::Alter { reset, .. } if reset == ["rate_limit", "cache_ttl"]
        ));
        assert!(matches!(
            parse("DROP CONNECTION IF EXISTS a, b").expect("parse"),
            ConnectionStatement::Drop { names, if_exists: true } if names.len() == 2
        ));
        assert!(parse("CREATE CONNECTION c").is_err());
        assert!(parse("ALTER CONNECTION c").is_err());
    }
}
