//! The `tally` command: `serve` runs the server, `sql` runs statements against a warehouse
//! without one, `models` runs a dbt-style project, `version` prints the version.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use tally::config::{Config, Overrides};
use tally::statements::{self, Output};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "The customer data stack as one SQL engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Warehouse root: a folder or an object-store URL (s3://, gs://, az://, memory://).
    #[arg(long, env = "TALLY_DATA")]
    data: Option<String>,
    /// Settings file.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Memory limit for query execution, in bytes (default: half of RAM).
    #[arg(long, env = "TALLY_MEMORY_LIMIT")]
    memory_limit: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (PostgreSQL wire protocol and HTTP API).
    Serve {
        #[command(flatten)]
        common: Common,
        /// PostgreSQL listen address.
        #[arg(long, env = "TALLY_PG_LISTEN")]
        pg_listen: Option<String>,
        /// HTTP listen address.
        #[arg(long, env = "TALLY_HTTP_LISTEN")]
        http_listen: Option<String>,
    },
    /// Run SQL statements against the warehouse without a server and print the results.
    Sql {
        #[command(flatten)]
        common: Common,
        /// The statements (several may be given, or several separated by ';').
        #[arg(required = true)]
        statements: Vec<String>,
    },
    /// Run a dbt-style project (models, seeds, tests) embedded over --data or against --url.
    Models {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: tally::models::cli::ModelsArgs,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "info,datafusion=warn,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,delta_kernel=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn overrides(common: Common) -> Overrides {
    Overrides {
        data: common.data,
        config: common.config,
        memory_limit: common.memory_limit,
        ..Default::default()
    }
}

async fn run(cli: Cli) -> tally::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("tally {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            common,
            pg_listen,
            http_listen,
        } => {
            let config = Config::resolve(Overrides {
                pg_listen,
                http_listen,
                ..overrides(common)
            })?;
            let server = tally::server::start(config).await?;
            eprintln!(
                "tally {} serving PostgreSQL on {} and HTTP on {}",
                env!("CARGO_PKG_VERSION"),
                server.pg_addr,
                server.http_addr
            );
            tally::server::wait_for_signal().await;
            eprintln!("shutting down: finishing running statements");
            server.shutdown(Duration::from_secs(60)).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { common, args } => {
            let executor: Option<Arc<dyn tally::models::Executor>> = match &args.url {
                _ if !args.needs_warehouse() => None,
                Some(url) => Some(Arc::new(tally::models::Remote::new(url.clone()))),
                None => {
                    let config = Config::resolve(overrides(common))?;
                    let label = config.data.clone();
                    let engine = tally::engine::Engine::open(config).await?;
                    Some(Arc::new(tally::models::Embedded::new(engine, label)))
                }
            };
            match tally::models::cli::run(&args, executor).await {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Ok(ExitCode::FAILURE),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Sql {
            common,
            statements: sqls,
        } => {
            let config = Config::resolve(overrides(common))?;
            let engine = tally::engine::Engine::open(config).await?;
            let mut session = engine.new_session("tally");
            for sql in sqls {
                let (outputs, error) = statements::run(&mut session, &sql).await;
                for o in outputs {
                    print_output(o).await?;
                }
                if let Some(e) = error {
                    eprintln!("ERROR:  {e} (SQLSTATE {})", e.sqlstate());
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The batches with the column names a PostgreSQL client would be shown (see
/// `statements::rewrite::client_name`).
fn client_names(
    batches: Vec<datafusion::arrow::array::RecordBatch>,
) -> Vec<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::datatypes::{Field, Schema};
    batches
        .into_iter()
        .map(|b| {
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    f.as_ref()
                        .clone()
                        .with_name(statements::rewrite::client_name(f.name()))
                })
                .collect();
            let schema = std::sync::Arc::new(Schema::new(fields));
            datafusion::arrow::array::RecordBatch::try_new(schema, b.columns().to_vec())
                .unwrap_or(b)
        })
        .collect()
}

async fn print_output(o: Output) -> tally::Result<()> {
    match o {
        Output::Rows(stream) | Output::CopyOut(statements::copy::CopyOut { stream, .. }) => {
            let batches: Vec<_> = stream
                .try_collect()
                .await
                .map_err(tally::error::unwrap_datafusion)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let batches = client_names(batches);
            let table = pretty_format_batches(&batches)
                .map_err(|e| tally::TallyError::Internal(e.to_string()))?;
            println!("{table}\n({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        Output::Command(c) => {
            for n in &c.notices {
                eprintln!("NOTICE:  {n}");
            }
            match c.rows {
                Some(r) if c.oid.is_some() => println!("{} 0 {r}", c.command),
                Some(r) => println!("{} {r}", c.command),
                None => println!("{}", c.command),
            }
        }
        Output::CopyIn(ci) => {
            ci.abort();
            eprintln!("COPY FROM STDIN needs a client connection; use psql against tally serve");
        }
    }
    Ok(())
}
