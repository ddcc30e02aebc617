//! Settings: command-line flags win over `TALLY_*` environment variables, which win over
//! `tally.toml`, which wins over the defaults. The same [`Config`] drives `tally serve` and
//! `tally sql`, so both open the same warehouse the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, TallyError};

/// Default warehouse root: a local folder next to where tally runs.
pub const DEFAULT_DATA: &str = "./tally-data";
/// Default PostgreSQL listen address (5433 so it never fights a local PostgreSQL on 5432).
pub const DEFAULT_PG_LISTEN: &str = "127.0.0.1:5433";
/// Default HTTP listen address (collection API and health).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// A user defined in `tally.toml` (`[users.<name>] password = "..."`).
#[derive(Debug, Clone, Deserialize)]
pub struct UserConfig {
    /// Clear-text password; hashed with SCRAM-SHA-256 at start-up and never stored in the clear.
    pub password: String,
    /// Whether the user may write files on object storage with `COPY ... TO '<url>'`.
    #[serde(default)]
    pub superuser: bool,
}

/// The contents of `tally.toml`. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Warehouse root: a path or an object-store URL.
    pub data: Option<String>,
    /// PostgreSQL listen address.
    pub pg_listen: Option<String>,
    /// HTTP listen address.
    pub http_listen: Option<String>,
    /// Memory limit for query execution in bytes; above it operators spill or fail.
    pub memory_limit: Option<usize>,
    /// Maximum concurrent PostgreSQL connections.
    pub max_connections: Option<usize>,
    /// TLS certificate (PEM) for the PostgreSQL listener.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8 or RSA) for the PostgreSQL listener.
    pub tls_key: Option<PathBuf>,
    /// Folder for spill files; defaults to the system temporary folder.
    pub spill_dir: Option<PathBuf>,
    /// Users that may log in with a password.
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Object-store options (for example `aws_endpoint`, `aws_region`, `aws_allow_http`).
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// The collection API (`[collect]`).
    #[serde(default)]
    pub collect: CollectConfig,
}

/// Settings of the collection API: how events move from the write-ahead log into tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectConfig {
    /// Folder of the write-ahead log. Defaults to `<data>/_tally/wal` for a local warehouse
    /// and `./tally-wal` for one on object storage: the log must be on a local disk, since
    /// an acknowledgement waits for its fsync.
    pub wal_dir: Option<PathBuf>,
    /// Flush the log into tables at least this often (milliseconds).
    pub flush_interval_ms: u64,
    /// Flush as soon as this many events are waiting, and never more in one micro-batch.
    pub flush_max_events: usize,
    /// A messageId seen again within this many seconds is acknowledged but not stored twice.
    pub dedupe_window_secs: u64,
    /// At most this many recent messageIds are remembered for de-duplication (about 40 bytes
    /// each), so memory stays bounded at any ingest rate.
    pub dedupe_max_ids: usize,
    /// Start a new log segment after this many bytes; flushed segments are deleted whole.
    pub wal_segment_bytes: u64,
    /// Disk the log may keep for routes that have not passed it yet (a paused route, a
    /// destination that is down). Beyond it, flushed segments are deleted anyway and the
    /// routes behind them skip ahead (counted in `tally.route_stats`); a warning is logged
    /// from 80% on.
    pub route_retention_bytes: u64,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            wal_dir: None,
            flush_interval_ms: 1000,
            flush_max_events: 100_000,
            dedupe_window_secs: 24 * 3600,
            dedupe_max_ids: 2_000_000,
            wal_segment_bytes: 64 << 20,
            route_retention_bytes: 8 << 30,
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Warehouse root as given (path or URL).
    pub data: String,
    /// PostgreSQL listen address.
    pub pg_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Memory limit for query execution in bytes.
    pub memory_limit: usize,
    /// Maximum concurrent PostgreSQL connections.
    pub max_connections: usize,
    /// TLS certificate and key, when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Folder for spill files.
    pub spill_dir: Option<PathBuf>,
    /// Users from `tally.toml`.
    pub users: BTreeMap<String, UserConfig>,
    /// Object-store options.
    pub storage: BTreeMap<String, String>,
    /// The collection API.
    pub collect: CollectConfig,
}

/// Values given on the command line or in the environment (clap fills both).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data` / `TALLY_DATA`.
    pub data: Option<String>,
    /// `--pg-listen` / `TALLY_PG_LISTEN`.
    pub pg_listen: Option<String>,
    /// `--http-listen` / `TALLY_HTTP_LISTEN`.
    pub http_listen: Option<String>,
    /// `--config` / `TALLY_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--memory-limit` / `TALLY_MEMORY_LIMIT`.
    pub memory_limit: Option<usize>,
}

impl Config {
    /// Resolves the settings. A `--config` file that does not exist is an error; the implicit
    /// `./tally.toml` is read only when present.
    pub fn resolve(overrides: Overrides) -> Result<Config> {
        let file = match &overrides.config {
            Some(path) => Some(read_file(path)?),
            None if Path::new("tally.toml").exists() => Some(read_file(Path::new("tally.toml"))?),
            None => None,
        }
        .unwrap_or_default();
        let data = overrides
            .data
            .or(file.data)
            .unwrap_or_else(|| DEFAULT_DATA.to_string());
        let pg_listen = parse_addr(
            "pg_listen",
            overrides
                .pg_listen
                .or(file.pg_listen)
                .as_deref()
                .unwrap_or(DEFAULT_PG_LISTEN),
        )?;
        let http_listen = parse_addr(
            "http_listen",
            overrides
                .http_listen
                .or(file.http_listen)
                .as_deref()
                .unwrap_or(DEFAULT_HTTP_LISTEN),
        )?;
        let tls = match (file.tls_cert, file.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(TallyError::Config(
                    "tls_cert and tls_key must be given together".into(),
                ));
            }
        };
        Ok(Config {
            data,
            pg_listen,
            http_listen,
            memory_limit: overrides
                .memory_limit
                .or(file.memory_limit)
                .unwrap_or_else(default_memory_limit),
            max_connections: file.max_connections.unwrap_or(100),
            tls,
            spill_dir: file.spill_dir,
            users: file.users,
            storage: file.storage,
            collect: file.collect,
        })
    }

    /// Settings for an embedded warehouse at `data` with every other value defaulted
    /// (used by tests and `tally sql`).
    pub fn for_data(data: impl Into<String>) -> Config {
        Config {
            data: data.into(),
            pg_listen: DEFAULT_PG_LISTEN.parse().expect("valid default address"),
            http_listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default address"),
            memory_limit: default_memory_limit(),
            max_connections: 100,
            tls: None,
            spill_dir: None,
            users: BTreeMap::new(),
            storage: BTreeMap::new(),
            collect: CollectConfig::default(),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TallyError::Config(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| TallyError::Config(format!("invalid {}: {e}", path.display())))
}

fn parse_addr(name: &str, value: &str) -> Result<SocketAddr> {
    value
        .parse()
        .map_err(|e| TallyError::Config(format!("invalid {name} '{value}': {e}")))
}

/// Half of physical memory: queries get a generous share while the OS page cache, the
/// collector and the wire buffers keep the rest.
fn default_memory_limit() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30);
    total / 2
}
