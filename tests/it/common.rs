//! A tally server per test, on port 0, over a fresh temporary warehouse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tally::config::Config;
use tally::server::RunningServer;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A server and the folder it keeps its warehouse in.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server over a new empty warehouse.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_at(dir.path().to_path_buf(), |_| {}).await;
        TestServer {
            server: Some(server),
            dir,
        }
    }

    /// Starts a server with adjusted settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_at(dir.path().to_path_buf(), adjust).await;
        TestServer {
            server: Some(server),
            dir,
        }
    }

    /// The PostgreSQL port.
    pub fn port(&self) -> u16 {
        self.server.as_ref().expect("running").pg_addr.port()
    }

    /// A connected tokio-postgres client.
    pub async fn client(&self) -> Client {
        connect(self.port(), "tally", None).await.expect("connect")
    }

    /// Stops the server and starts a new one on the same warehouse.
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
        self.server = Some(start_at(self.dir.path().to_path_buf(), |_| {}).await);
    }
}

/// Starts a server on `data` with ports chosen by the OS.
pub async fn start_at(data: PathBuf, adjust: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config::for_data(data.to_string_lossy().to_string());
    config.pg_listen = "127.0.0.1:0".parse().expect("addr");
    config.http_listen = "127.0.0.1:0".parse().expect("addr");
    config.memory_limit = 2 << 30;
    adjust(&mut config);
    tally::server::start(config).await.expect("server starts")
}

/// Connects with tokio-postgres.
pub async fn connect(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user(user).dbname("tally");
    if let Some(p) = password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a failed statement.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// A name no other test uses, for objects in shared external systems.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Runs a statement with the simple protocol and returns its rows as maps of text.
pub async fn rows(c: &Client, sql: &str) -> Vec<BTreeMap<String, String>> {
    let msgs = c.simple_query(sql).await.expect(sql);
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| {
                        (
                            col.name().to_string(),
                            r.get(i).unwrap_or("NULL").to_string(),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A numeric column of a row from [`rows`].
pub fn num(row: &BTreeMap<String, String>, col: &str) -> i64 {
    row.get(col)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {col} in {row:?}"))
}

/// A loopback port free right now (for `tally serve` processes, which take fixed ports).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real `tally serve` process, so that it can be killed with SIGKILL.
pub async fn spawn_tally(data: &std::path::Path, pg: u16, http: u16) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "serve",
            "--data",
            &data.to_string_lossy(),
            "--pg-listen",
            &format!("127.0.0.1:{pg}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .env("TALLY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tally")
}

/// Waits until the `tally serve` on these ports answers health checks and connections.
pub async fn wait_up(pg: u16, http: u16) -> Client {
    for _ in 0..600 {
        if reqwest::get(format!("http://127.0.0.1:{http}/health"))
            .await
            .is_ok()
            && let Ok(c) = crate::common::connect(pg, "tally", None).await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tally did not come up");
}

/// A client of the real PostgreSQL of this machine (127.0.0.1:5432, user postgres,
/// database test), used as a source or destination.
pub async fn local_postgres() -> Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("local PostgreSQL on 127.0.0.1:5432 (user postgres, database test)");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
