//! Object stores from URLs and Delta Lake tables.
//!
//! The warehouse root is one URL (a local folder by default). Everything tally keeps lives
//! under it: Delta tables at `<root>/<schema>/<table>/` and the catalog at `<root>/_tally/`.
//! This module turns URLs into [`ObjectStore`]s (local path, `file://`, `memory://`, `s3://`,
//! `gs://`, `az://`/`abfss://`), teaches delta-rs the same stores, and wraps Delta tables as
//! DataFusion tables ([`delta::DeltaTableProvider`]).

pub mod append;
pub mod delta;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

use crate::error::{Result, TallyError};

/// The warehouse root: its URL, the store that serves it and the options used to build it.
#[derive(Debug, Clone)]
pub struct Warehouse {
    /// Root URL, always ending in `/`.
    pub root: Url,
    /// Store for the scheme and authority of `root` (paths inside are absolute from there).
    pub store: Arc<dyn ObjectStore>,
    /// Path of the root inside `store`.
    pub prefix: Path,
    /// Options (credentials, endpoints) passed to object stores and delta-rs.
    pub options: HashMap<String, String>,
}

impl Warehouse {
    /// Opens (and, for local folders, creates) the warehouse at `data`: a path or a URL.
    pub fn open(data: &str, options: HashMap<String, String>) -> Result<Warehouse> {
        register_delta_factories();
        let root = root_url(data)?;
        let (store, prefix) = store_for_url(&root, &options)?;
        Ok(Warehouse {
            root,
            store,
            prefix,
            options,
        })
    }

    /// URL of a relative location under the root (for example `public/events/`).
    pub fn url_of(&self, relative: &str) -> Result<Url> {
        self.root
            .join(relative)
            .map_err(|e| TallyError::Internal(format!("bad location {relative}: {e}")))
    }

    /// Object-store path of a relative location under the root.
    pub fn path_of(&self, relative: &str) -> Path {
        let mut parts: Vec<String> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        parts.extend(
            relative
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        Path::from_iter(parts)
    }

    /// Whether a Delta table has been written at a relative location (its `_delta_log/`
    /// holds something). Asking first spares delta-rs's error log for tables that tally
    /// creates on first use and reads before that (`tally.sync_runs`, ...).
    pub async fn has_table(&self, relative: &str) -> Result<bool> {
        use futures::StreamExt;
        let log = self.path_of(&format!("{}/_delta_log/", relative.trim_end_matches('/')));
        match self.store.list(Some(&log)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Deletes everything under a relative location (used by DROP TABLE after the catalog
    /// commit, so a failure here leaves garbage, never a dangling catalog entry).
    pub async fn delete_prefix(&self, relative: &str) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let prefix = self.path_of(relative);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await?;
        if self.root.scheme() == "file" {
            // Local folders keep empty directories behind; remove them so the name is reusable.
            if let Ok(url) = self.url_of(relative)
                && let Ok(path) = url.to_file_path()
            {
                let _ = tokio::fs::remove_dir_all(path).await;
            }
        }
        Ok(())
    }
}

/// Turns the `--data` value into a directory URL ending in `/`. Local paths are created and
/// made absolute so that every component (delta-rs, DataFusion, the catalog) agrees on them.
pub fn root_url(data: &str) -> Result<Url> {
    let mut url = if data.contains("://") {
        Url::parse(data)
            .map_err(|e| TallyError::Config(format!("invalid data URL '{data}': {e}")))?
    } else {
        std::fs::create_dir_all(data)
            .map_err(|e| TallyError::Config(format!("cannot create data folder '{data}': {e}")))?;
        let abs = std::fs::canonicalize(data)
            .map_err(|e| TallyError::Config(format!("cannot resolve data folder '{data}': {e}")))?;
        Url::from_directory_path(&abs)
            .map_err(|_| TallyError::Config(format!("invalid data folder '{data}'")))?
    };
    if url.scheme() == "file"
        && let Ok(p) = url.to_file_path()
    {
        std::fs::create_dir_all(&p)
            .map_err(|e| TallyError::Config(format!("cannot create data folder: {e}")))?;
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    match url.scheme() {
        "file" | "memory" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" => Ok(url),
        other => Err(TallyError::Config(format!(
            "unsupported storage scheme '{other}' (use a path, file://, memory://, s3://, gs:// or az://)"
        ))),
    }
}

/// In-memory stores are process-wide per authority so that `memory://` warehouses survive
/// reopening tables (delta-rs would otherwise build a fresh, empty store per open).
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Builds the store for a URL's scheme and authority, and the path of the URL inside it.
/// Cloud credentials come from the standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`),
/// overridden by `options`.
pub fn store_for_url(
    url: &Url,
    options: &HashMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let path = Path::from_url_path(url.path())
        .map_err(|e| TallyError::Config(format!("invalid path in {url}: {e}")))?;
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "memory" => {
            let key = url.host_str().unwrap_or_default().to_string();
            let mut stores = MEMORY_STORES
                .lock()
                .map_err(|_| TallyError::Internal("memory store registry poisoned".into()))?;
            stores
                .entry(key)
                .or_insert_with(|| Arc::new(InMemory::new()))
                .clone()
        }
        "file" => Arc::new(object_store::local::LocalFileSystem::new()),
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (k, v) in options {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        "gs" => {
            let mut b =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        "az" | "abfs" | "abfss" | "azure" => {
            let mut b =
                object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.build()?)
        }
        other => {
            return Err(TallyError::Config(format!(
                "unsupported storage scheme '{other}'"
            )));
        }
    };
    Ok((store, path))
}

/// delta-rs finds stores through global factories keyed by scheme; tally's factory hands it
/// the same stores as [`store_for_url`], and the default log store, which commits with
/// conditional puts (supported by S3, GCS, Azure and local files).
#[derive(Debug)]
struct TallyStoreFactory;

impl ObjectStoreFactory for TallyStoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (store, path) =
            store_for_url(url, &config.raw).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        Ok((store, path))
    }
}

impl LogStoreFactory for TallyStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_delta_factories() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factory = Arc::new(TallyStoreFactory);
        for scheme in ["memory", "s3", "s3a", "gs", "az", "abfs", "abfss", "azure"] {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            object_store_factories().insert(url.clone(), factory.clone());
            logstore_factories().insert(url, factory.clone());
        }
    });
}
