//! The error type of the engine layers (storage, catalog, engine, statements) and the one
//! place where an error gets its PostgreSQL SQLSTATE. The wire layer asks [`TallyError::sqlstate`]
//! and never inspects message text.

use datafusion::error::DataFusionError;

/// Result alias used across tally's library code.
pub type Result<T, E = TallyError> = std::result::Result<T, E>;

/// Everything that can go wrong below the wire protocol, classified by cause.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    /// A table, view or schema that does not exist (42P01 / 3F000).
    #[error("{kind} \"{name}\" does not exist")]
    NotFound {
        /// "relation", "schema", "column", "user", ...
        kind: &'static str,
        /// The name as the user wrote it.
        name: String,
    },
    /// An object that already exists (42P07 / 42P06 / 42710).
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// "relation", "schema", "user", ...
        kind: &'static str,
        /// The name as the user wrote it.
        name: String,
    },
    /// SQL that does not parse (42601), with the 1-based character position when known.
    #[error("{message}")]
    Syntax {
        /// What the parser expected.
        message: String,
        /// 1-based character offset into the statement text.
        position: Option<usize>,
    },
    /// A statement or feature tally does not support (0A000).
    #[error("{0}")]
    Unsupported(String),
    /// A value that does not fit its type (22P02 and friends).
    #[error("{message}")]
    InvalidValue {
        /// The SQLSTATE that fits best (22P02, 22003, 22007, 23502, ...).
        code: &'static str,
        /// Human-readable description.
        message: String,
    },
    /// A statement not allowed in the current transaction state (25P02, 25001).
    #[error("{message}")]
    Transaction {
        /// 25P02 for an aborted transaction, 25001/25P01 for misplaced commands.
        code: &'static str,
        /// Human-readable description.
        message: String,
    },
    /// Lack of privilege (42501).
    #[error("{0}")]
    PermissionDenied(String),
    /// A concurrent change won (40001).
    #[error("{0}")]
    Conflict(String),
    /// A query canceled by the client, a timeout or shutdown (57014).
    #[error("{0}")]
    Canceled(String),
    /// Bad configuration (F0000).
    #[error("configuration error: {0}")]
    Config(String),
    /// Failure from DataFusion planning or execution.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Failure in Delta Lake storage.
    #[error("storage error: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// Failure of the object store.
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A destination outside tally failed a COPY TO DESTINATION for good (credentials,
    /// endpoint, retries exhausted); the code says which (28000, 08001, 08006, ...).
    #[error("{message}")]
    Destination {
        /// The SQLSTATE that fits best.
        code: &'static str,
        /// What happened, without secrets.
        message: String,
    },
    /// A system tally pulls from (an HTTP API read by `read_json_api`, an attached
    /// PostgreSQL or MySQL database) failed; the code says how (08001 cannot connect,
    /// 28000 refused credentials, 42P01 missing table or resource, 25006 write refused, ...).
    /// The message never holds a secret.
    #[error("{message}")]
    Remote {
        /// The SQLSTATE that fits best.
        code: &'static str,
        /// What happened, without secrets.
        message: String,
    },
    /// Anything else that should never happen (XX000).
    #[error("internal error: {0}")]
    Internal(String),
}

impl TallyError {
    /// Shorthand for an unknown relation.
    pub fn no_relation(name: impl Into<String>) -> Self {
        TallyError::NotFound {
            kind: "relation",
            name: name.into(),
        }
    }

    /// Shorthand for a syntax error without a position.
    pub fn syntax(message: impl Into<String>) -> Self {
        TallyError::Syntax {
            message: message.into(),
            position: None,
        }
    }

    /// The PostgreSQL SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TallyError::NotFound { kind, .. } => match *kind {
                "schema" => "3F000",
                "column" => "42703",
                "user" | "role" | "source" | "identity graph" | "destination" | "sync"
                | "route" | "secret" | "connection" | "tracking plan" => "42704",
                "function" => "42883",
                "prepared statement" => "26000",
                "cursor" => "34000",
                "savepoint" => "3B001",
                _ => "42P01",
            },
            TallyError::AlreadyExists { kind, .. } => match *kind {
                "schema" => "42P06",
                "user" | "role" | "source" | "identity graph" | "destination" | "sync"
                | "route" | "secret" | "connection" | "tracking plan" => "42710",
                "prepared statement" => "42P05",
                "cursor" => "42P03",
                _ => "42P07",
            },
            TallyError::Syntax { .. } => "42601",
            TallyError::Unsupported(_) => "0A000",
            TallyError::InvalidValue { code, .. } => code,
            TallyError::Transaction { code, .. } => code,
            TallyError::PermissionDenied(_) => "42501",
            TallyError::Conflict(_) => "40001",
            TallyError::Canceled(_) => "57014",
            TallyError::Config(_) => "F0000",
            TallyError::DataFusion(e) => datafusion_sqlstate(e),
            TallyError::Delta(e) => delta_sqlstate(e),
            TallyError::ObjectStore(_) => "58030",
            TallyError::Destination { code, .. } => code,
            TallyError::Remote { code, .. } => code,
            TallyError::Internal(_) => "XX000",
        }
    }

    /// The error position (1-based character offset), where the parser knows it.
    pub fn position(&self) -> Option<usize> {
        match self {
            TallyError::Syntax { position, .. } => *position,
            _ => None,
        }
    }
}

/// Classifies a DataFusion error. DataFusion errors carry no SQLSTATE, so the variant decides
/// and, for planning errors, the stable start of DataFusion's message text does.
fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    match e {
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            datafusion::arrow::error::ArrowError::CastError(_)
            | datafusion::arrow::error::ArrowError::ParseError(_) => "22P02",
            datafusion::arrow::error::ArrowError::DivideByZero => "22012",
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => "22003",
            _ => "XX000",
        },
        DataFusionError::Context(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_sqlstate(inner),
        DataFusionError::Shared(inner) => datafusion_sqlstate(inner),
        DataFusionError::External(inner) => {
            if let Some(t) = inner.downcast_ref::<TallyError>() {
                t.sqlstate()
            } else if let Some(d) = inner.downcast_ref::<DataFusionError>() {
                datafusion_sqlstate(d)
            } else {
                "XX000"
            }
        }
        DataFusionError::Plan(msg) | DataFusionError::Execution(msg) => classify_message(msg)
            .unwrap_or(if matches!(e, DataFusionError::Plan(_)) {
                "42601"
            } else {
                "XX000"
            }),
        DataFusionError::SchemaError(se, _) => match se.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { .. } => "42703",
            datafusion::common::SchemaError::AmbiguousReference { .. } => "42702",
            datafusion::common::SchemaError::DuplicateQualifiedField { .. }
            | datafusion::common::SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        _ => "XX000",
    }
}

fn classify_message(msg: &str) -> Option<&'static str> {
    let m = msg.to_ascii_lowercase();
    if m.contains("table '") && m.contains("not found") || m.starts_with("table not found") {
        Some("42P01")
    } else if m.contains("invalid function") || m.contains("no function matches") {
        Some("42883")
    } else if m.contains("cannot cast") || m.contains("cast error") || m.contains("can't cast") {
        Some("22P02")
    } else if m.contains("divide by zero") {
        Some("22012")
    } else if m.contains("overflow") {
        Some("22003")
    } else if m.contains("non-nullable") || m.contains("null value") {
        Some("23502")
    } else if m.contains("does not support") || m.contains("unsupported") {
        Some("0A000")
    } else {
        None
    }
}

fn delta_sqlstate(e: &deltalake::DeltaTableError) -> &'static str {
    use deltalake::DeltaTableError as D;
    match e {
        D::Transaction { .. } | D::VersionAlreadyExists(_) => "40001",
        D::NotATable(_) => "42P01",
        D::InvalidData { .. } | D::SchemaMismatch { .. } => "22000",
        D::GenericError { .. } => "XX000",
        D::Arrow { .. } => "22P02",
        _ => "XX000",
    }
}

impl From<TallyError> for DataFusionError {
    fn from(e: TallyError) -> Self {
        match e {
            TallyError::DataFusion(d) => d,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// Finds the [`TallyError`] inside a DataFusion error that crossed a provider boundary, so
/// its SQLSTATE survives the trip through DataFusion.
pub fn unwrap_datafusion(e: DataFusionError) -> TallyError {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<TallyError>() {
            Ok(t) => *t,
            Err(other) => TallyError::DataFusion(DataFusionError::External(other)),
        },
        DataFusionError::Context(ctx, inner) => match unwrap_datafusion(*inner) {
            TallyError::DataFusion(d) => {
                TallyError::DataFusion(DataFusionError::Context(ctx, Box::new(d)))
            }
            t => t,
        },
        other => TallyError::DataFusion(other),
    }
}
