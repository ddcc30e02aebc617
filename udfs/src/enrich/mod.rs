//! Enrichment over HTTP: `enrich(connection, key [, path])` and
//! `verify_email(connection, email)`, asynchronous scalar functions that look values up in an
//! outside API while a query runs.
//!
//! A query can hold millions of keys, and an outside API has a rate limit, batch endpoints,
//! transient failures and a price per call. So each function hands a whole Arrow batch of keys
//! to its [`Connection`], which:
//! - drops duplicate keys and answers keys it has seen within `cache_ttl` from a cache;
//! - groups the rest into requests of `batch_size` keys where the API takes batches;
//! - runs up to `concurrency` requests at once, paced to `rate_limit` requests per second
//!   across every query using the connection;
//! - retries 5xx answers, timeouts and dropped connections with exponential backoff and
//!   jitter, and waits out a 429's `Retry-After` (pausing the whole connection, since the API
//!   throttles the account, not the request);
//! - never fails the query for one bad key: a key whose lookup failed is NULL and counted in
//!   the connection's statistics, unless the connection is `strict`.
//!
//! Before the first request the URL's host is resolved and every address checked
//! ([`guard`]): private, loopback and link-local addresses are refused unless the connection
//! sets `allow_private`, and the client then connects only to the addresses that were
//! checked (so a DNS answer cannot change between the check and the request), and never
//! follows redirects.
//!
//! Connections are looked up by name through a [`ConnectionRegistry`]: tally's is backed by
//! its catalog (`CREATE CONNECTION`) and secret store; another DataFusion program can use
//! [`StaticConnections`].

pub mod client;
pub mod config;
pub mod guard;
pub mod udf;
pub mod zerobounce;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use datafusion::logical_expr::async_udf::AsyncScalarUDF;
use datafusion::prelude::SessionContext;

pub use client::{Connection, ConnectionStats, Lookup};
pub use config::{ConnectionConfig, ConnectionKind};

/// Why an enrichment connection could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// An option with a bad value, or a missing required option.
    #[error("connection option {option}: {message}")]
    Option {
        /// The option's name.
        option: String,
        /// What is wrong with it.
        message: String,
    },
    /// No connection of that name.
    #[error("connection \"{0}\" does not exist")]
    UnknownConnection(String),
    /// The connection's host resolves to an address the SSRF guard refuses.
    #[error(
        "connection {connection}: {host} resolves to {address}, a {kind} address; outbound requests to it are refused unless the connection sets allow_private = 'true'"
    )]
    PrivateAddress {
        /// The connection's name.
        connection: String,
        /// The host of its URL.
        host: String,
        /// The refused address.
        address: std::net::IpAddr,
        /// Loopback, private, link-local, ...
        kind: &'static str,
    },
    /// The host could not be resolved.
    #[error("connection {connection}: cannot resolve {host}: {message}")]
    Resolve {
        /// The connection's name.
        connection: String,
        /// The host of its URL.
        host: String,
        /// The resolver's message.
        message: String,
    },
    /// A request failed for good (after retries), in a strict connection.
    #[error("connection {connection}: {message}")]
    Request {
        /// The connection's name.
        connection: String,
        /// What failed, without secrets.
        message: String,
    },
}

/// Finds enrichment connections by name. Lookups happen while planning (to check the name)
/// and when a batch is evaluated, so an implementation should be cheap and cache what it
/// builds: a [`Connection`] holds the HTTP client, the cache and the rate limiter.
pub trait ConnectionRegistry: Send + Sync + Debug {
    /// The connection named `name`.
    fn connection(&self, name: &str) -> Result<Arc<Connection>, EnrichError>;
}

/// A fixed set of connections, for programs without tally's catalog.
#[derive(Debug, Default)]
pub struct StaticConnections {
    connections: HashMap<String, Arc<Connection>>,
}

impl StaticConnections {
    /// Adds `connection` under its configured name.
    pub fn with(mut self, connection: Connection) -> Self {
        self.connections
            .insert(connection.config().name.clone(), Arc::new(connection));
        self
    }
}

impl ConnectionRegistry for StaticConnections {
    fn connection(&self, name: &str) -> Result<Arc<Connection>, EnrichError> {
        self.connections
            .get(name)
            .cloned()
            .ok_or_else(|| EnrichError::UnknownConnection(name.to_string()))
    }
}

/// Registers `enrich` and `verify_email` on `ctx`, resolving connection names with
/// `registry`.
pub fn register(ctx: &SessionContext, registry: Arc<dyn ConnectionRegistry>) {
    ctx.register_udf(
        AsyncScalarUDF::new(Arc::new(udf::EnrichUdf::new(registry.clone()))).into_scalar_udf(),
    );
    ctx.register_udf(
        AsyncScalarUDF::new(Arc::new(udf::VerifyEmailUdf::new(registry))).into_scalar_udf(),
    );
}
