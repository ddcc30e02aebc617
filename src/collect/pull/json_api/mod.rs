//! `read_json_api(url [, options])`: a table over a paginated JSON HTTP API.
//!
//! ```sql
//! INSERT INTO crm.tickets
//! SELECT id, subject, status FROM read_json_api('https://api.example.com/tickets',
//!   '{"records": "/tickets", "pagination": "cursor", "cursor_path": "/next_cursor",
//!     "bearer_env": "TICKETS_TOKEN", "rate_limit": 5}');
//! ```
//!
//! - [`options`]: the options document (records location, pagination style, caps,
//!   credential header, rate limit, retries, explicit columns);
//! - [`fetch`]: one request with retries and the pager that walks the pages;
//! - [`records`]: the schema inferred from the first page and each page as a batch.
//!
//! The columns are needed while the query is planned, so without the `columns` option the
//! first page is fetched then (its records are kept and reused by the scan, not fetched
//! twice). The scan streams: one request, one record batch, and the next request only when
//! the consumer asks, so memory holds about one page whatever the API's size, and a
//! `LIMIT` stops the requests.

pub mod fetch;
pub mod options;
pub mod records;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use parking_lot::Mutex;
use url::Url;

use crate::activate::limiter::AimdLimiter;
use crate::collect::pull::redact_url;
use crate::error::{Result, TallyError};
use fetch::{Fetcher, Pager, Response};
use options::Options;

/// The `read_json_api` table function, registered by [`super::register`].
#[derive(Debug, Default)]
pub struct ReadJsonApi;

fn literal_text(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.as_str()),
        Expr::Cast(c) => literal_text(&c.expr),
        Expr::TryCast(c) => literal_text(&c.expr),
        _ => None,
    }
}

fn usage() -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message: "read_json_api takes a URL and an optional options document, both text literals: read_json_api('https://...', '{\"records\": \"/data\"}')".into(),
    }
}

impl TableFunctionImpl for ReadJsonApi {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let (url, opts) = match exprs {
            [u] => (literal_text(u), None),
            [u, o] => (literal_text(u), Some(literal_text(o).ok_or_else(usage)?)),
            _ => return Err(usage().into()),
        };
        let url = url.ok_or_else(usage)?;
        let url = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| TallyError::InvalidValue {
                code: "22023",
                message: "read_json_api: the URL must be an absolute http:// or https:// URL"
                    .into(),
            })?;
        let opts = Arc::new(Options::parse(opts)?);
        let limiter = Arc::new(AimdLimiter::new(opts.rate_limit));
        let (schema, first) = match &opts.columns {
            Some(s) => (s.clone(), None),
            None => {
                let (schema, first) =
                    block_on_side(infer(url.clone(), opts.clone(), limiter.clone()))??;
                (schema, Some(first))
            }
        };
        Ok(Arc::new(JsonApiTable {
            url,
            opts,
            schema,
            limiter,
            first: Arc::new(Mutex::new(first)),
        }))
    }
}

/// Fetches the first page and infers the columns from its records.
async fn infer(
    url: Url,
    opts: Arc<Options>,
    limiter: Arc<AimdLimiter>,
) -> Result<(SchemaRef, FirstPage)> {
    let fetcher = Fetcher::new(opts.clone(), limiter)?;
    let pager = Pager::new(&url, opts.clone(), None);
    let Some(first_url) = pager.next_url().cloned() else {
        return Err(TallyError::InvalidValue {
            code: "22023",
            message: "read_json_api: max_pages or max_rows is 0 and no columns are given".into(),
        });
    };
    let resp = fetcher.get(&first_url).await?;
    let mut probe = Pager::new(&url, opts, None);
    let records = probe.take(resp.clone(), &redact_url(&first_url))?;
    let schema = records::infer_schema(&records)?;
    Ok((
        schema,
        FirstPage {
            url: first_url,
            resp,
        },
    ))
}

/// Runs `fut` to completion from synchronous planning code, on a thread of its own with
/// its own runtime (its HTTP connections die with it), telling a multi-threaded tokio
/// runtime to move other work off the current worker meanwhile.
fn block_on_side<F>(fut: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let run = || {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(fut))
            })
            .join()
        })
    };
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let joined = if multi {
        tokio::task::block_in_place(run)
    } else {
        run()
    };
    joined
        .map_err(|_| TallyError::Internal("read_json_api: the request thread panicked".into()))?
        .map_err(|e| TallyError::Internal(format!("read_json_api: no runtime: {e}")))
}

/// The first page, fetched while planning to learn the columns, kept for the first scan.
#[derive(Debug, Clone)]
struct FirstPage {
    url: Url,
    resp: Response,
}

/// The table one `read_json_api` call returns.
#[derive(Debug)]
pub struct JsonApiTable {
    url: Url,
    opts: Arc<Options>,
    schema: SchemaRef,
    limiter: Arc<AimdLimiter>,
    first: Arc<Mutex<Option<FirstPage>>>,
}

#[async_trait]
impl TableProvider for JsonApiTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let part = Arc::new(JsonApiPartition {
            url: self.url.clone(),
            opts: self.opts.clone(),
            schema: self.schema.clone(),
            limiter: self.limiter.clone(),
            first: self.first.clone(),
            limit,
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            self.schema.clone(),
            vec![part],
            projection,
            vec![],
            false,
            limit,
        )?))
    }
}

#[derive(Debug)]
struct JsonApiPartition {
    url: Url,
    opts: Arc<Options>,
    schema: SchemaRef,
    limiter: Arc<AimdLimiter>,
    first: Arc<Mutex<Option<FirstPage>>>,
    limit: Option<usize>,
}

impl PartitionStream for JsonApiPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let first = self.first.lock().take();
        let pager = Pager::new(&self.url, self.opts.clone(), self.limit);
        let fetcher = Fetcher::new(self.opts.clone(), self.limiter.clone());
        let state = (fetcher, pager, first, schema.clone());
        let stream = futures::stream::try_unfold(
            state,
            |(fetcher, mut pager, mut first, schema)| async move {
                let fetcher = fetcher.map_err(DataFusionError::from)?;
                let Some(url) = pager.next_url().cloned() else {
                    return Ok(None);
                };
                let resp = match first.take() {
                    Some(f) if f.url == url => f.resp,
                    _ => fetcher.get(&url).await?,
                };
                let records = pager.take(resp, &redact_url(&url))?;
                tracing::debug!(url = %redact_url(&url), records = records.len(), "read_json_api: page");
                let batch = records::to_batch(&records, &schema)?;
                Ok(Some((batch, (Ok(fetcher), pager, first, schema))))
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}
