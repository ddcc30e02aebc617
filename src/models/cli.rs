//! The `tally models` command line: its flags and what each action does. `main` resolves
//! where statements run (it owns the configuration) and hands over an [`Executor`].

use std::path::PathBuf;
use std::sync::Arc;

use super::executor::Executor;
use super::project::{LoadOptions, Project};
use super::report::Console;
use super::runner::{self, Command, RunOptions};
use super::{ModelError, Result};

/// What `tally models` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Build the selected models.
    Run,
    /// Run the data tests of the selected models.
    Test,
    /// Seeds, snapshots, models and tests in DAG order; a failing test skips what depends on
    /// it.
    Build,
    /// Load the CSV seeds.
    Seed,
    /// Build or update the snapshots (`{% snapshot %}` blocks under snapshot-paths).
    Snapshot,
    /// List the selected models, seeds and tests.
    Ls,
    /// Render the selected models to SQL (printed, and written under target/compiled/).
    Compile,
}

/// Flags of `tally models`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelsArgs {
    /// run, test, build, seed, snapshot, ls or compile.
    #[arg(value_enum)]
    pub action: Action,
    /// The project folder (holding dbt_project.yml).
    #[arg(long, default_value = ".")]
    pub project: PathBuf,
    /// Models to include: names, +name (with ancestors), name+ (with descendants), tag:x,
    /// path:dir, source:s; several separated by spaces are a union, joined by commas an
    /// intersection (as in dbt).
    #[arg(long, short = 's', num_args = 1..)]
    pub select: Vec<String>,
    /// Models to leave out (same syntax as --select).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
    /// Vars as YAML, overriding dbt_project.yml: '{gap_minutes: 30}'.
    #[arg(long)]
    pub vars: Option<String>,
    /// Models built at once.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Rebuild incremental models from scratch.
    #[arg(long)]
    pub full_refresh: bool,
    /// Schema models are built in (dbt's target schema).
    #[arg(long, default_value = "public")]
    pub target_schema: String,
    /// A running server to build in (postgres://user:password@host:port/db) instead of the
    /// embedded engine over --data.
    #[arg(long, env = "TALLY_MODELS_URL")]
    pub url: Option<String>,
}

impl ModelsArgs {
    /// Loads the project these flags point at.
    pub fn load(&self) -> Result<Project> {
        Project::load(
            &self.project,
            &LoadOptions {
                target_schema: self.target_schema.clone(),
                vars: self.vars.clone(),
            },
        )
    }

    /// The run options these flags ask for.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            select: self.select.clone(),
            exclude: self.exclude.clone(),
            threads: self.threads.max(1),
            full_refresh: self.full_refresh,
            write_target: true,
        }
    }

    /// Whether the action needs a warehouse (all but `ls`).
    pub fn needs_warehouse(&self) -> bool {
        self.action != Action::Ls
    }
}

/// Runs the action against `executor` (unused by `ls`), printing the report. Returns
/// whether everything succeeded.
pub async fn run(args: &ModelsArgs, executor: Option<Arc<dyn Executor>>) -> Result<bool> {
    let project = Arc::new(args.load()?);
    let options = args.run_options();
    let command = match args.action {
        Action::Ls => {
            for line in super::list(&project, &options)? {
                println!("{line}");
            }
            return Ok(true);
        }
        Action::Run => Command::Run,
        Action::Test => Command::Test,
        Action::Build => Command::Build,
        Action::Seed => Command::Seed,
        Action::Snapshot => Command::Snapshot,
        Action::Compile => Command::Compile,
    };
    let Some(executor) = executor else {
        return Err(ModelError::Connect(
            "no warehouse: give --data or --url".into(),
        ));
    };
    let console = Arc::new(Console::new());
    let report = runner::run(project, executor, command, options, console.clone()).await?;
    console.summary(&report);
    if command == Command::Compile {
        for r in &report.results {
            if let Some(sql) = &r.compiled {
                println!("\n-- {} ({})\n{sql}", r.name, r.path);
            }
        }
    }
    Ok(report.success())
}
