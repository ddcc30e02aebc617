//! tally: the customer data stack as one SQL engine.
//!
//! Module map (imports run downward only):
//! - [`config`]: settings from flags, `TALLY_*` environment, `tally.toml` and defaults.
//! - [`wire`]: the PostgreSQL wire protocol front end (pgwire handlers, auth, COPY, encoding).
//! - [`statements`]: tally's SQL surface: parsing in front of DataFusion and executing each statement.
//! - [`engine`]: the shared engine (runtime, memory pool, functions) and per-connection sessions.
//! - [`catalog`]: the persistent catalog under the warehouse root and its DataFusion providers.
//! - [`storage`]: object stores from URLs and Delta Lake tables as DataFusion tables.
//! - [`error`]: the error type of the engine layers and its SQLSTATE mapping.
//! - [`server`]: runs the listeners of `tally serve` and their graceful shutdown.
//! - [`collect`]: the Segment/RudderStack-compatible tracking API, its write-ahead log and flusher.
//! - [`identity`]: persisted identity graphs (`CREATE/REFRESH IDENTITY GRAPH`) over `identity_stitch`.
//! - [`activate`]: destinations (`CREATE DESTINATION`), `COPY ... TO DESTINATION` and the delivery engine.
//! - [`route`]: real-time routes (`CREATE ROUTE`): collected events from the log through SQL to destinations.
//! - [`models`]: `tally models`, the dbt-style model runner (embedded or against a server).
//! - [`secrets`]: `CREATE SECRET`, encrypted under the warehouse's key, and `tally.secrets`.
//! - [`connections`]: `CREATE CONNECTION` for `enrich` and `verify_email`, and `tally.connections`.

pub mod activate;
pub mod catalog;
pub mod collect;
pub mod config;
pub mod connections;
pub mod engine;
pub mod error;
pub mod identity;
pub mod models;
pub mod route;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod statements;
pub mod storage;
pub mod wire;

pub use error::{Result, TallyError};
