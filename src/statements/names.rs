//! Object names as PostgreSQL resolves them: unquoted identifiers fold to lower case, an
//! unqualified name lives in the session's default schema (first of `search_path`).

use datafusion::sql::sqlparser::ast::{Ident, ObjectName};

use crate::catalog::SYSTEM_SCHEMAS;
use crate::engine::Session;
use crate::error::{Result, TallyError};

/// A schema-qualified name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    /// Schema.
    pub schema: String,
    /// Relation name.
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// An identifier as PostgreSQL stores it.
pub fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The parts of an object name.
pub fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(ident)
        .collect()
}

/// Resolves a relation name against the session's default schema.
pub fn resolve(session: &Session, name: &ObjectName) -> Result<QualifiedName> {
    let parts = parts(name);
    match parts.as_slice() {
        [n] => Ok(QualifiedName {
            schema: default_schema(session),
            name: n.clone(),
        }),
        [s, n] | [_, s, n] => Ok(QualifiedName {
            schema: s.clone(),
            name: n.clone(),
        }),
        _ => Err(TallyError::syntax(format!(
            "improper qualified name: {name}"
        ))),
    }
}

/// The session's default schema.
pub fn default_schema(session: &Session) -> String {
    session
        .ctx
        .state_ref()
        .read()
        .config_options()
        .catalog
        .default_schema
        .clone()
}

/// Rejects writes into system schemas.
pub fn check_writable_schema(schema: &str) -> Result<()> {
    if SYSTEM_SCHEMAS.contains(&schema) {
        return Err(TallyError::PermissionDenied(format!(
            "permission denied to create or change objects in schema \"{schema}\""
        )));
    }
    Ok(())
}
