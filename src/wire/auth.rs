//! Start-up and authentication. With users defined (in `tally.toml` or by CREATE USER),
//! every connection authenticates with SCRAM-SHA-256 against the stored salted password.
//! With none, tally trusts loopback connections, like PostgreSQL's default local `trust`,
//! and refuses any other peer.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{
    AuthSource, LoginInfo, Password, ServerParameterProvider, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionHandle, ConnectionManager, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::engine::{Engine, PG_VERSION};

/// Parameters sent to every client after authentication.
#[derive(Debug)]
pub struct TallyParameters {
    engine: Arc<Engine>,
}

impl ServerParameterProvider for TallyParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let superuser = if self.engine.is_superuser(&user) {
            "on"
        } else {
            "off"
        };
        let mut p: HashMap<String, String> = [
            ("server_version", PG_VERSION),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("IntervalStyle", "postgres"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("is_superuser", superuser),
            ("default_transaction_read_only", "off"),
            ("in_hot_standby", "off"),
            ("scram_iterations", "4096"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        p.insert("session_authorization".into(), user);
        p.insert(
            "application_name".into(),
            client
                .metadata()
                .get("application_name")
                .cloned()
                .unwrap_or_default(),
        );
        Some(p)
    }
}

/// Looks up salted passwords for SCRAM.
#[derive(Debug)]
struct TallyAuthSource {
    engine: Arc<Engine>,
}

#[async_trait]
impl AuthSource for TallyAuthSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.engine.credentials(user) {
            Some(c) => Ok(Password::new(Some(c.salt), c.salted_password)),
            None => Err(auth_failed(user)),
        }
    }
}

fn auth_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

/// The start-up handler of one connection.
pub enum TallyStartup {
    /// SCRAM-SHA-256.
    Scram(Box<SASLAuthStartupHandler<TallyParameters>>),
    /// Loopback trust when no user is defined.
    Trust {
        /// For parameters and the superuser check.
        params: TallyParameters,
        /// Registers the connection for cancel requests.
        manager: Arc<ConnectionManager>,
    },
}

impl TallyStartup {
    /// Chooses the method for a new connection.
    pub fn new(engine: Arc<Engine>, manager: Arc<ConnectionManager>) -> Self {
        if engine.has_users() {
            let scram = ScramAuth::new(Arc::new(TallyAuthSource {
                engine: engine.clone(),
            }));
            let h = SASLAuthStartupHandler::new(Arc::new(TallyParameters { engine }))
                .with_scram(scram)
                .with_connection_manager(manager);
            TallyStartup::Scram(Box::new(h))
        } else {
            TallyStartup::Trust {
                params: TallyParameters { engine },
                manager,
            }
        }
    }
}

#[async_trait]
impl StartupHandler for TallyStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            TallyStartup::Scram(h) => h.on_startup(client, message).await,
            TallyStartup::Trust { params, manager } => {
                let PgWireFrontendMessage::Startup(ref startup) = message else {
                    return Ok(());
                };
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !client.socket_addr().ip().is_loopback() {
                    let user = client.metadata().get("user").cloned().unwrap_or_default();
                    let err = ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        format!(
                            "no user is defined, so only loopback connections are trusted; refusing user \"{user}\" from {}",
                            client.socket_addr().ip()
                        ),
                    );
                    client
                        .send(PgWireBackendMessage::ErrorResponse(err.into()))
                        .await?;
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        "untrusted peer".into(),
                    ))));
                }
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = manager.register(pid, secret);
                client
                    .session_extensions()
                    .insert::<Arc<ConnectionHandle>>(handle);
                client.session_extensions().insert(guard);
                finish_authentication(client, params).await
            }
        }
    }
}
