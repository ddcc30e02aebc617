//! `redis`: one hash per key, an online feature store for real-time lookups.
//!
//! Each row becomes the hash `<prefix>:<key>` (`HSET` of every non-null field; null fields
//! are removed with `HDEL`, so the hash mirrors the row), optionally with a TTL. One batch is
//! one pipelined `MULTI ... EXEC`, so a batch lands whole or not at all, and `HSET` is
//! idempotent, so a retried batch changes nothing twice.
//!
//! Mirror mode keeps the set `<prefix>:__tally_keys` of the keys tally wrote: a mirror run
//! collects the keys its query returned in a run set, then deletes the hashes of keys that
//! are in the old set and not in the run set, and makes the run set the new key set.
//!
//! Removal by key (mirror syncs) deletes the keys' hashes and takes them out of that set, in
//! one `MULTI ... EXEC`; deleting a hash that is gone is a no-op, so a retry is harmless.
//!
//! Options: `url` (`redis://[:password@]host:port[/db]`), `prefix` (the destination's name by
//! default), `ttl_seconds`.

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Batch, Destination, Mode, Options, SendError, truncate, value_text};
use crate::error::{Result, TallyError};

/// A Redis destination.
pub struct Redis {
    name: String,
    client: redis::Client,
    prefix: String,
    ttl: Option<u64>,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Redis {
    /// Reads the options (the connection opens at the first batch).
    pub fn new(opts: &Options) -> Result<Self> {
        let url = opts.require("url")?;
        let client = redis::Client::open(url.as_str()).map_err(|_| TallyError::InvalidValue {
            code: "22023",
            message: format!("destination {}: url is not a Redis URL", opts.name()),
        })?;
        Ok(Redis {
            name: opts.name().to_string(),
            client,
            prefix: opts
                .get("prefix")?
                .unwrap_or_else(|| opts.name().to_string()),
            ttl: opts.number("ttl_seconds")?,
            conn: Mutex::new(None),
        })
    }

    fn members(&self) -> String {
        format!("{}:__tally_keys", self.prefix)
    }

    fn run_set(&self, copy_id: &str) -> String {
        format!("{}:__tally_run:{copy_id}", self.prefix)
    }

    fn classify(&self, e: redis::RedisError) -> SendError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            SendError::Transient {
                message: format!("destination {}: {e}", self.name),
                retry_after: None,
            }
        } else {
            SendError::Rejected {
                status: None,
                body: truncate(&e.to_string()),
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, SendError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.classify(e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, SendError> {
        let mut conn = self.connection().await?;
        match pipe.query_async::<T>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = self.classify(e);
                if matches!(err, SendError::Transient { .. }) {
                    *self.conn.lock().await = None;
                }
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Destination for Redis {
    async fn begin(&self, copy_id: &str, mode: Mode, _key: Option<&str>) -> Result<(), SendError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        if mode == Mode::Mirror {
            pipe.del(self.run_set(copy_id)).ignore();
        }
        self.query::<()>(&pipe).await.map_err(|e| match e {
            SendError::Transient { message, .. } => SendError::Fatal {
                code: "08001",
                message,
            },
            other => other,
        })
    }

    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in batch.records {
            let Some(key) = &r.key else {
                continue;
            };
            let hash = format!("{}:{key}", self.prefix);
            let set: Vec<(&str, String)> = r
                .fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.as_str(), value_text(v)))
                .collect();
            let nulls: Vec<&str> = r
                .fields
                .iter()
                .filter(|(_, v)| matches!(v, Value::Null))
                .map(|(k, _)| k.as_str())
                .collect();
            if !set.is_empty() {
                pipe.hset_multiple(&hash, &set).ignore();
            }
            if !nulls.is_empty() {
                pipe.hdel(&hash, nulls).ignore();
            }
            if let Some(ttl) = self.ttl {
                pipe.expire(&hash, ttl as i64).ignore();
            }
            if batch.mode != Mode::Mirror {
                pipe.sadd(self.members(), key).ignore();
            }
        }
        self.query::<()>(&pipe).await
    }

    async fn remove(&self, _copy_id: &str, _key: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let hashes: Vec<String> = keys
            .iter()
            .map(|k| format!("{}:{k}", self.prefix))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&hashes)
            .ignore()
            .srem(self.members(), keys)
            .ignore();
        self.query::<()>(&pipe).await
    }

    async fn note_keys(&self, copy_id: &str, keys: &[String]) -> Result<(), SendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.sadd(self.run_set(copy_id), keys).ignore();
        self.query::<()>(&pipe).await
    }

    async fn finish(
        &self,
        copy_id: &str,
        mode: Mode,
        _key: Option<&str>,
    ) -> Result<u64, SendError> {
        if mode != Mode::Mirror {
            return Ok(0);
        }
        let run = self.run_set(copy_id);
        let mut pipe = redis::pipe();
        pipe.sdiff(vec![self.members(), run.clone()]);
        let (gone,): (Vec<String>,) = self.query(&pipe).await?;
        let mut removed = 0u64;
        for chunk in gone.chunks(1_000) {
            let hashes: Vec<String> = chunk
                .iter()
                .map(|k| format!("{}:{k}", self.prefix))
                .collect();
            let mut pipe = redis::pipe();
            pipe.atomic().del(&hashes).srem(self.members(), chunk);
            let (n, _): (u64, u64) = self.query(&pipe).await?;
            removed += n;
        }
        // The run's keys become the key set (an empty run leaves no set).
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.members())
            .ignore()
            .cmd("SUNIONSTORE")
            .arg(self.members())
            .arg(&run)
            .ignore()
            .del(&run)
            .ignore();
        self.query::<()>(&pipe).await?;
        Ok(removed)
    }
}
