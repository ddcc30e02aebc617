//! One client's session: its DataFusion context over the shared catalog, its settings
//! (`search_path`, `statement_timeout`, `TimeZone`, ...), temporary tables and transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use parking_lot::RwLock;

use super::Engine;
use super::pg_compat::{CurrentSetting, Settings};
use crate::catalog::provider::CatalogView;
use crate::error::{Result, TallyError};

/// Where the session stands with respect to transactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxnState {
    /// Autocommit: every statement commits on its own.
    #[default]
    Idle,
    /// Inside BEGIN ... COMMIT.
    Active,
    /// A statement failed inside the transaction; only ROLLBACK (or ROLLBACK TO) helps.
    Failed,
}

/// What an open transaction block has done that COMMIT or ROLLBACK must finish or undo.
#[derive(Debug, Clone, Default)]
pub struct TxnEffects {
    /// The catalog as it was at BEGIN, for the three-way merge at COMMIT.
    pub base: Option<crate::catalog::CatalogDoc>,
    /// Table folders written in this transaction (deleted at ROLLBACK).
    pub created: Vec<String>,
    /// Table folders of tables dropped in this transaction (deleted at COMMIT).
    pub dropped: Vec<String>,
    /// Savepoints: name, staged catalog, how many created/dropped folders existed then, and
    /// the table versions written so far.
    pub savepoints: Vec<Savepoint>,
    /// Tables that existed before the transaction and were written in it: location →
    /// (version before the first write, version of the latest own write).
    pub written: std::collections::BTreeMap<
        String,
        (deltalake::kernel::Version, deltalake::kernel::Version),
    >,
}

/// What a savepoint remembers.
#[derive(Debug, Clone)]
pub struct Savepoint {
    /// Its name.
    pub name: String,
    /// The staged catalog at that point.
    pub catalog: crate::catalog::CatalogDoc,
    /// Number of created table folders at that point.
    pub created: usize,
    /// Number of dropped table folders at that point.
    pub dropped: usize,
    /// Written tables at that point.
    pub written: std::collections::BTreeMap<
        String,
        (deltalake::kernel::Version, deltalake::kernel::Version),
    >,
}

/// A client session.
pub struct Session {
    /// The shared engine.
    pub engine: Arc<Engine>,
    /// This session's DataFusion context.
    pub ctx: SessionContext,
    /// This session's view of the catalog.
    pub catalog: CatalogView,
    /// The authenticated user.
    pub user: String,
    /// Process id reported to the client (`pg_backend_pid()`).
    pub id: u32,
    /// Run-time settings, as SHOW prints them.
    pub settings: Settings,
    /// Transaction state.
    pub txn: TxnState,
    /// Effects of the open transaction block.
    pub txn_effects: TxnEffects,
    /// Cancels the running statement (a client's cancel request fires it).
    pub cancel: Arc<parking_lot::Mutex<tokio_util::sync::CancellationToken>>,
    /// Set when a result stream failed after its statement returned (the error reached the
    /// client while rows were streaming); the next statement marks the transaction failed.
    pub stream_failed: Arc<std::sync::atomic::AtomicBool>,
    /// Open cursors by name.
    pub cursors: std::collections::HashMap<String, crate::statements::cursor::Cursor>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("id", &self.id)
            .finish()
    }
}

/// Settings every session starts with: PostgreSQL's defaults where clients read them.
fn default_settings(user: &str) -> BTreeMap<String, String> {
    [
        ("search_path", "\"$user\", public"),
        ("statement_timeout", "0"),
        ("timezone", "UTC"),
        ("datestyle", "ISO, MDY"),
        ("intervalstyle", "postgres"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("server_version", super::PG_VERSION),
        ("server_version_num", "160006"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("application_name", ""),
        ("extra_float_digits", "1"),
        ("transaction_isolation", "read committed"),
        ("default_transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
        ("default_transaction_read_only", "off"),
        ("max_identifier_length", "63"),
        ("lc_collate", "C.UTF-8"),
        ("lc_ctype", "C.UTF-8"),
        ("bytea_output", "hex"),
        ("is_superuser", "on"),
        ("max_index_keys", "32"),
        ("block_size", "8192"),
        ("jit", "off"),
        ("max_connections", "100"),
        ("default_text_search_config", "pg_catalog.english"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("session_authorization".to_string(), user.to_string())])
    .collect()
}

impl Session {
    pub(super) fn new(
        engine: Arc<Engine>,
        ctx: SessionContext,
        catalog: CatalogView,
        user: String,
        id: u32,
    ) -> Self {
        let settings: Settings = Arc::new(RwLock::new(default_settings(&user)));
        ctx.register_udf(CurrentSetting::udf(settings.clone()));
        ctx.register_udf(super::pg_compat::SetConfig::udf(settings.clone()));
        ctx.register_udf(super::pg_compat::user_udf("session_user", &user));
        ctx.register_udf(super::pg_compat::user_udf("current_user", &user));
        ctx.register_udf(super::pg_compat::owner_udf(&user));
        Session {
            engine,
            ctx,
            catalog,
            user,
            id,
            settings,
            txn: TxnState::Idle,
            txn_effects: TxnEffects::default(),
            cancel: Arc::new(parking_lot::Mutex::new(
                tokio_util::sync::CancellationToken::new(),
            )),
            stream_failed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            cursors: std::collections::HashMap::new(),
        }
    }

    /// A setting's current value.
    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings
            .read()
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// Changes a setting, applying it to the engine where it has an effect.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "search_path" => {
                let first = value
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .trim_matches('"')
                            .trim_matches('\'')
                            .to_ascii_lowercase()
                    })
                    .find(|s| !s.is_empty() && s != "$user" && s != "pg_catalog")
                    .unwrap_or_else(|| crate::catalog::DEFAULT_SCHEMA.to_string());
                self.catalog.set_default_schema(&first);
                self.ctx
                    .state_ref()
                    .write()
                    .config_mut()
                    .options_mut()
                    .catalog
                    .default_schema = first;
            }
            "statement_timeout" => {
                parse_duration_ms(value)?;
            }
            "timezone" | "time zone" => {
                let tz = value.trim_matches('\'').to_string();
                let tz = if tz.eq_ignore_ascii_case("utc") || tz.eq_ignore_ascii_case("etc/utc") {
                    "+00:00".to_string()
                } else {
                    tz
                };
                self.ctx
                    .state_ref()
                    .write()
                    .config_mut()
                    .options_mut()
                    .execution
                    .time_zone = Some(tz);
            }
            _ => {}
        }
        let key = if name == "time zone" {
            "timezone".to_string()
        } else {
            name
        };
        self.settings.write().insert(key, value.to_string());
        Ok(())
    }

    /// `statement_timeout` as a duration (`None` when 0, i.e. no limit).
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.setting("statement_timeout")
            .and_then(|v| parse_duration_ms(&v).ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// Whether the user may write server-side files and manage users.
    pub fn is_superuser(&self) -> bool {
        self.engine.is_superuser(&self.user)
    }
}

/// Parses PostgreSQL durations: a bare number is milliseconds; units ms, s, min, h, d.
pub fn parse_duration_ms(value: &str) -> Result<u64> {
    let v = value.trim().trim_matches('\'').trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| TallyError::InvalidValue {
        code: "22023",
        message: format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
    })?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("invalid value for parameter \"statement_timeout\": \"{value}\""),
            });
        }
    };
    Ok((n * factor) as u64)
}
