//! `CREATE USER`, `ALTER USER`, `DROP USER`: password users stored in the catalog as
//! SCRAM-SHA-256 salted passwords (never in the clear). Only superusers manage users, except
//! that anyone may change their own password.

use super::{Completion, Output, change_catalog};
use crate::catalog::UserEntry;
use crate::engine::{Credentials, Session, hex_encode};
use crate::error::{Result, TallyError};

fn entry(password: &str, superuser: bool) -> UserEntry {
    let c = Credentials::from_password(password, superuser);
    UserEntry {
        salt: hex_encode(&c.salt),
        salted_password: hex_encode(&c.salted_password),
        superuser,
    }
}

fn require_superuser(session: &Session) -> Result<()> {
    if session.is_superuser() {
        Ok(())
    } else {
        Err(TallyError::PermissionDenied(
            "permission denied to manage users".into(),
        ))
    }
}

/// `CREATE USER name [WITH] PASSWORD '...' [SUPERUSER]`.
pub async fn create_user(
    session: &mut Session,
    name: String,
    password: Option<String>,
    superuser: bool,
) -> Result<Output> {
    require_superuser(session)?;
    let password = password.ok_or_else(|| {
        TallyError::Unsupported(
            "users without a password cannot log in to tally; give PASSWORD '...'".into(),
        )
    })?;
    if session.engine.config.users.contains_key(&name) {
        return Err(TallyError::AlreadyExists { kind: "role", name });
    }
    let e = entry(&password, superuser);
    change_catalog(session, |doc| {
        if doc.users.contains_key(&name) {
            return Err(TallyError::AlreadyExists {
                kind: "role",
                name: name.clone(),
            });
        }
        doc.users.insert(name.clone(), e.clone());
        Ok(())
    })
    .await?;
    Ok(Output::Command(Completion::tag("CREATE ROLE")))
}

/// `ALTER USER name [WITH] PASSWORD '...' | SUPERUSER | NOSUPERUSER`.
pub async fn alter_user(
    session: &mut Session,
    name: String,
    password: Option<String>,
    superuser: Option<bool>,
) -> Result<Output> {
    if name != session.user || superuser.is_some() {
        require_superuser(session)?;
    }
    if session.engine.config.users.contains_key(&name) {
        return Err(TallyError::Unsupported(format!(
            "user \"{name}\" is defined in tally.toml; change it there"
        )));
    }
    change_catalog(session, |doc| {
        let u = doc
            .users
            .get_mut(&name)
            .ok_or_else(|| TallyError::NotFound {
                kind: "role",
                name: name.clone(),
            })?;
        let su = superuser.unwrap_or(u.superuser);
        if let Some(p) = &password {
            *u = entry(p, su);
        }
        u.superuser = su;
        Ok(())
    })
    .await?;
    Ok(Output::Command(Completion::tag("ALTER ROLE")))
}

/// `DROP USER [IF EXISTS] name [, ...]`.
pub async fn drop_users(
    session: &mut Session,
    names: Vec<String>,
    if_exists: bool,
) -> Result<Output> {
    require_superuser(session)?;
    change_catalog(session, |doc| {
        for n in &names {
            if doc.users.remove(n).is_none() && !if_exists {
                return Err(TallyError::NotFound {
                    kind: "role",
                    name: n.clone(),
                });
            }
        }
        Ok(())
    })
    .await?;
    Ok(Output::Command(Completion::tag("DROP ROLE")))
}
