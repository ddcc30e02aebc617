//! Function benchmark harness (see `scripts/bench_udfs.py`, which drives it and runs the
//! DuckDB side).
//!
//! Usage: `bench_udfs <data.parquet> <queries.tsv> [repeat]`. Loads the Parquet file into
//! memory as table `t` of a one-partition session (`target_partitions = 1`, so one core)
//! with every tally function registered, then runs each `name<TAB>sql` line of the queries
//! file `repeat` times (default 3; once when the first run takes over 5 s) and prints
//! `name<TAB>best seconds<TAB>first result` per query.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, queries, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_udfs <data.parquet> <queries.tsv> [repeat]");
        std::process::exit(2);
    };
    let repeat: usize = rest.first().and_then(|r| r.parse().ok()).unwrap_or(3);
    let queries = std::fs::read_to_string(queries)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = SessionConfig::new().with_target_partitions(1);
        let ctx = SessionContext::new_with_config(config);
        tally_udfs::register_all(&ctx);
        let df = ctx
            .read_parquet(data.as_str(), ParquetReadOptions::default())
            .await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        eprintln!("loaded {rows} rows from {data}");
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![batches])?))?;
        for line in queries.lines().filter(|l| !l.trim().is_empty()) {
            let Some((name, sql)) = line.split_once('\t') else {
                continue;
            };
            let mut best = f64::INFINITY;
            let mut answer = String::new();
            for i in 0..repeat {
                let start = Instant::now();
                let out = ctx.sql(sql).await?.collect().await?;
                let secs = start.elapsed().as_secs_f64();
                best = best.min(secs);
                if i == 0 {
                    answer = match out.first() {
                        Some(b) if b.num_rows() > 0 => array_value_to_string(b.column(0), 0)?,
                        _ => String::new(),
                    };
                    if secs > 5.0 {
                        break;
                    }
                }
            }
            println!("{name}\t{best:.4}\t{answer}");
        }
        Ok(())
    })
}
