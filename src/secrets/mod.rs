//! Secrets: `CREATE [OR REPLACE] SECRET [IF NOT EXISTS] name VALUE '...'`, `ALTER SECRET name
//! VALUE '...'`, `DROP SECRET [IF EXISTS] name [, ...]`, and `tally.secrets` (names and dates,
//! never values).
//!
//! A secret is an API key or an HMAC key that SQL refers to by name: enrichment connections
//! (`CREATE CONNECTION ... WITH (secret = 'name')`) and `pseudonymize(value, 'name')`. Its
//! value is stored in the catalog encrypted with AES-256-GCM (ring), the secret's name bound
//! as associated data, so that the catalog's JSON files, their backups and object-store
//! listings never hold a usable key, and no statement prints one.
//!
//! The encryption key is, in order: the `TALLY_SECRETS_KEY` environment variable (32 bytes
//! as 64 hex digits or base64), or the key object `_tally/secrets.key` under the warehouse
//! root, created from the system's random generator the first time a secret is created.
//! The key object keeps a laptop warehouse self-contained; a production deployment sets
//! `TALLY_SECRETS_KEY` from its secret manager, so that whoever can read the bucket still
//! cannot read the secrets.

pub mod system;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::Utc;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parking_lot::RwLock;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::catalog::{CatalogStore, SecretEntry};
use crate::engine::Session;
use crate::error::{Result, TallyError};
use crate::statements::tokens::{Tokens, syntax};
use crate::statements::{Completion, Output, change_catalog, drop_completion, drop_named};

/// The environment variable holding the secrets key.
pub const KEY_ENV: &str = "TALLY_SECRETS_KEY";
const KEY_OBJECT: &str = "_tally/secrets.key";

/// The warehouse's secrets key, once known.
struct Key {
    aead: LessSafeKey,
    id: String,
}

impl Key {
    fn from_bytes(bytes: &[u8], origin: &str) -> Result<Key> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| {
            TallyError::Config(format!(
                "{origin}: the secrets key must be 32 bytes (64 hex digits or base64)"
            ))
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let id = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Key {
            aead: LessSafeKey::new(unbound),
            id,
        })
    }

    fn parse(text: &str, origin: &str) -> Result<Key> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<std::result::Result<Vec<u8>, _>>()
                .map_err(|e| TallyError::Config(format!("{origin}: {e}")))?
        } else {
            B64.decode(t).map_err(|_| {
                TallyError::Config(format!(
                    "{origin}: the secrets key must be 64 hex digits or base64 of 32 bytes"
                ))
            })?
        };
        Key::from_bytes(&bytes, origin)
    }
}

/// Encrypts and decrypts the warehouse's secrets.
pub struct SecretStore {
    catalog: Arc<CatalogStore>,
    key: RwLock<Option<Arc<Key>>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Loads the key from the environment or the warehouse, if there is one yet.
    pub async fn open(catalog: Arc<CatalogStore>) -> Result<Arc<SecretStore>> {
        let key = match std::env::var(KEY_ENV) {
            Ok(text) => Some(Arc::new(Key::parse(&text, KEY_ENV)?)),
            Err(_) => read_key_object(&catalog).await?.map(Arc::new),
        };
        Ok(Arc::new(SecretStore {
            catalog,
            key: RwLock::new(key),
        }))
    }

    /// The key, creating the key object when the warehouse has none yet.
    async fn key_for_writing(&self) -> Result<Arc<Key>> {
        if let Some(k) = self.key.read().clone() {
            return Ok(k);
        }
        let wh = self.catalog.warehouse();
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TallyError::Internal("the system random generator failed".into()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let created = wh
            .store
            .put_opts(
                &wh.path_of(KEY_OBJECT),
                PutPayload::from(Bytes::from(B64.encode(bytes))),
                opts,
            )
            .await;
        let key = match created {
            Ok(_) => Key::from_bytes(&bytes, KEY_OBJECT)?,
            // Another server created it first: use that one.
            Err(object_store::Error::AlreadyExists { .. }) => read_key_object(&self.catalog)
                .await?
                .ok_or_else(|| TallyError::Internal("secrets key vanished".into()))?,
            Err(e) => return Err(e.into()),
        };
        let key = Arc::new(key);
        *self.key.write() = Some(key.clone());
        Ok(key)
    }

    /// The value of the secret `name`, decrypted.
    pub fn reveal(&self, name: &str) -> Result<String> {
        self.reveal_in(&self.catalog.current(), name)
    }

    /// The value of the secret `name` as `doc` has it (a transaction's staged catalog sees
    /// the secrets it created).
    pub fn reveal_in(&self, doc: &crate::catalog::CatalogDoc, name: &str) -> Result<String> {
        let entry = doc.secrets.get(name).ok_or_else(|| TallyError::NotFound {
            kind: "secret",
            name: name.to_string(),
        })?;
        let key = self.key.read().clone().ok_or_else(|| {
            TallyError::Config(format!(
                "secret \"{name}\" cannot be read: this server has no secrets key (set {KEY_ENV}, or restart it so it reads {KEY_OBJECT})"
            ))
        })?;
        if key.id != entry.key_id {
            return Err(TallyError::Config(format!(
                "secret \"{name}\" was encrypted with another key (id {}; this server's is {}): set {KEY_ENV} to the key it was created with, or ALTER SECRET it",
                entry.key_id, key.id
            )));
        }
        let damaged =
            || TallyError::Internal(format!("secret \"{name}\" is damaged and cannot be read"));
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&entry.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(damaged)?;
        let mut data = B64.decode(&entry.ciphertext).map_err(|_| damaged())?;
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }

    /// Encrypts `value` as the secret `name`.
    async fn seal(&self, name: &str, value: &str) -> Result<(String, String, String)> {
        let key = self.key_for_writing().await?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| TallyError::Internal("the system random generator failed".into()))?;
        let mut data = value.as_bytes().to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| TallyError::Internal("encrypting the secret failed".into()))?;
        Ok((B64.encode(nonce), B64.encode(data), key.id.clone()))
    }
}

impl tally_udfs::pii::hash::SecretResolver for SecretStore {
    fn secret(&self, name: &str) -> std::result::Result<String, String> {
        self.reveal(name).map_err(|e| match e {
            TallyError::NotFound { .. } => {
                format!("secret \"{name}\" does not exist (CREATE SECRET {name} VALUE '...')")
            }
            other => other.to_string(),
        })
    }
}

async fn read_key_object(catalog: &CatalogStore) -> Result<Option<Key>> {
    let wh = catalog.warehouse();
    match wh.store.get(&wh.path_of(KEY_OBJECT)).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            let text = String::from_utf8_lossy(&bytes);
            Ok(Some(Key::parse(&text, KEY_OBJECT)?))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A parsed secret statement.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretStatement {
    /// `CREATE [OR REPLACE] SECRET [IF NOT EXISTS] name VALUE '...'`.
    Create {
        /// Secret name.
        name: String,
        /// The value (never printed: see the `Debug` impl).
        value: String,
        /// OR REPLACE given.
        or_replace: bool,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `ALTER SECRET name VALUE '...'`.
    Alter {
        /// Secret name.
        name: String,
        /// The new value.
        value: String,
    },
    /// `DROP SECRET [IF EXISTS] name [, ...]`.
    Drop {
        /// Secret names.
        names: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

// Statements are logged and shown in errors by their `Debug` form: keep values out of it.
impl std::fmt::Debug for SecretStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretStatement::Create { name, .. } => write!(f, "CreateSecret({name}, ***)"),
            SecretStatement::Alter { name, .. } => write!(f, "AlterSecret({name}, ***)"),
            SecretStatement::Drop { names, if_exists } => {
                write!(f, "DropSecret({names:?}, if_exists: {if_exists})")
            }
        }
    }
}

/// The statement text as it may be logged: a query string holding a `CREATE` or `ALTER
/// SECRET` has its quoted strings replaced by `'***'` (PostgreSQL's statement log would show
/// a `CREATE ROLE ... PASSWORD`; tally's does not show secrets).
pub fn loggable(text: &str) -> std::borrow::Cow<'_, str> {
    let upper = text.to_ascii_uppercase();
    if !(upper.contains("SECRET") && upper.contains("VALUE")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_quote = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quote, c) {
            (false, '\'') => {
                in_quote = true;
                out.push_str("'***'");
            }
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
            }
            (true, '\'') => in_quote = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Parses `CREATE | ALTER | DROP SECRET`.
pub fn parse(text: &str) -> Result<SecretStatement> {
    let t = Tokens::new(text)?;
    let value_at = |i: usize, name: &str| -> Result<String> {
        if !t.kw(i, "value") {
            return Err(syntax(format!(
                "expected VALUE after SECRET {name} (for example: CREATE SECRET {name} VALUE '...')"
            )));
        }
        let v = t
            .string(i + 1)
            .ok_or_else(|| syntax("VALUE needs a quoted string"))?;
        if v.is_empty() {
            return Err(TallyError::InvalidValue {
                code: "22023",
                message: format!("secret \"{name}\" cannot be empty"),
            });
        }
        if !t.end(i + 2) {
            return Err(syntax("unexpected text after the secret's value"));
        }
        Ok(v)
    };
    match t.ident(0).as_deref() {
        Some("create") => {
            let mut i = 1;
            let or_replace = t.kw(1, "or") && t.kw(2, "replace");
            if or_replace {
                i += 2;
            }
            if !t.kw(i, "secret") {
                return Err(syntax("expected CREATE [OR REPLACE] SECRET"));
            }
            i += 1;
            let if_not_exists = t.kw(i, "if") && t.kw(i + 1, "not") && t.kw(i + 2, "exists");
            if if_not_exists {
                i += 3;
            }
            let name = t
                .ident(i)
                .ok_or_else(|| syntax("CREATE SECRET needs a secret name"))?;
            let value = value_at(i + 1, &name)?;
            Ok(SecretStatement::Create {
                name,
                value,
                or_replace,
                if_not_exists,
            })
        }
        Some("alter") => {
            let name = t
                .ident(2)
                .ok_or_else(|| syntax("ALTER SECRET needs a secret name"))?;
            let value = value_at(3, &name)?;
            Ok(SecretStatement::Alter { name, value })
        }
        Some("drop") => {
            let (names, if_exists) = t.drop_list(2, "DROP SECRET [IF EXISTS] name [, ...]")?;
            Ok(SecretStatement::Drop { names, if_exists })
        }
        _ => Err(syntax("expected CREATE, ALTER or DROP SECRET")),
    }
}

/// Runs a secret statement.
pub async fn execute(session: &mut Session, stmt: SecretStatement) -> Result<Output> {
    let secrets = session.engine.secrets.clone();
    let now = Utc::now().to_rfc3339();
    match stmt {
        SecretStatement::Create {
            name,
            value,
            or_replace,
            if_not_exists,
        } => {
            let (nonce, ciphertext, key_id) = secrets.seal(&name, &value).await?;
            let created = change_catalog(session, |doc| {
                if let Some(old) = doc.secrets.get_mut(&name) {
                    if or_replace {
                        old.nonce = nonce.clone();
                        old.ciphertext = ciphertext.clone();
                        old.key_id = key_id.clone();
                        old.altered_at = Some(now.clone());
                        return Ok(true);
                    }
                    return if if_not_exists {
                        Ok(false)
                    } else {
                        Err(TallyError::AlreadyExists {
                            kind: "secret",
                            name: name.clone(),
                        })
                    };
                }
                doc.secrets.insert(
                    name.clone(),
                    SecretEntry {
                        nonce: nonce.clone(),
                        ciphertext: ciphertext.clone(),
                        key_id: key_id.clone(),
                        created_at: now.clone(),
                        altered_at: None,
                    },
                );
                Ok(true)
            })
            .await?;
            let mut c = Completion::tag("CREATE SECRET");
            if !created {
                c = c.with_notice(format!("secret \"{name}\" already exists, skipping"));
            }
            Ok(Output::Command(c))
        }
        SecretStatement::Alter { name, value } => {
            let (nonce, ciphertext, key_id) = secrets.seal(&name, &value).await?;
            change_catalog(session, |doc| {
                let old = doc
                    .secrets
                    .get_mut(&name)
                    .ok_or_else(|| TallyError::NotFound {
                        kind: "secret",
                        name: name.clone(),
                    })?;
                old.nonce = nonce.clone();
                old.ciphertext = ciphertext.clone();
                old.key_id = key_id.clone();
                old.altered_at = Some(now.clone());
                Ok(())
            })
            .await?;
            Ok(Output::Command(Completion::tag("ALTER SECRET")))
        }
        SecretStatement::Drop { names, if_exists } => {
            let missing = change_catalog(session, |doc| {
                for n in &names {
                    if let Some((c, _)) = doc
                        .connections
                        .iter()
                        .find(|(_, c)| c.options.get("secret") == Some(n))
                    {
                        return Err(TallyError::InvalidValue {
                            code: "2BP01",
                            message: format!(
                                "cannot drop secret \"{n}\" because connection \"{c}\" uses it"
                            ),
                        });
                    }
                }
                drop_named(&mut doc.secrets, &names, if_exists, "secret")
            })
            .await?;
            Ok(drop_completion("DROP SECRET", "secret", missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_secret_statements_without_showing_values() {
        let s = parse("CREATE SECRET crm_key VALUE 's3cr3t'").expect("parse");
        assert_eq!(
            s,
            SecretStatement::Create {
                name: "crm_key".into(),
                value: "s3cr3t".into(),
                or_replace: false,
                if_not_exists: false,
            }
        );
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(matches!(
            parse("CREATE OR REPLACE SECRET IF NOT EXISTS k VALUE 'v'").expect("parse"),
            SecretStatement::Create {
                or_replace: true,
                if_not_exists: true,
                ..
            }
        ));
        assert_eq!(
            parse("ALTER SECRET k VALUE 'v2'").expect("parse"),
            SecretStatement::Alter {
                name: "k".into(),
                value: "v2".into()
            }
        );
        assert_eq!(
            parse("DROP SECRET IF EXISTS a, b").expect("parse"),
            SecretStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            }
        );
        assert!(parse("CREATE SECRET k").is_err());
        assert!(parse("CREATE SECRET k VALUE ''").is_err());
        assert!(parse("CREATE SECRET k VALUE 'v' extra").is_err());
    }

    #[test]
    fn logged_statements_hide_secret_values() {
        assert_eq!(
            loggable("CREATE SECRET k VALUE 'it''s s3cr3t'; SELECT 'x'"),
            "CREATE SECRET k VALUE '***'; SELECT '***'"
        );
        assert_eq!(loggable("SELECT 'value'"), "SELECT 'value'");
    }

    #[test]
    fn keys_parse_from_hex_and_base64_and_tell_apart() {
        let hex = "00".repeat(32);
        let a = Key::parse(&hex, "t").expect("hex");
        let b = Key::parse(&B64.encode([0u8; 32]), "t").expect("b64");
        assert_eq!(a.id, b.id);
        let c = Key::parse(&B64.encode([1u8; 32]), "t").expect("b64");
        assert_ne!(a.id, c.id);
        assert!(Key::parse("short", "t").is_err());
    }
}
