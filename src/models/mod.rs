//! `tally models`: a dbt-style model runner with no dependencies beyond tally itself.
//!
//! It reads the same project layout dbt does (so a team can keep using dbt against tally's
//! PostgreSQL wire protocol, or run the project with nothing but tally on a laptop), renders
//! models with minijinja, builds the DAG, and materialises views, tables, incremental models
//! and ephemeral CTEs, then runs schema tests, either embedded against a warehouse folder or
//! against a running server.
//!
//! - [`project`]: loading `dbt_project.yml`, models, seeds, tests and property files.
//! - [`jinja`]: rendering with `ref`, `source`, `config`, `this`, `is_incremental`, `var`,
//!   `env_var`.
//! - [`graph`]: the DAG, cycle detection, `--select`/`--exclude`.
//! - [`materialize`]: the SQL each materialisation sends.
//! - [`schema_tests`]: `unique`, `not_null`, `accepted_values`, `relationships`, singular tests.
//! - [`seeds`]: CSV seeds.
//! - [`snapshot`]: snapshots (type 2 history of a query's rows), as dbt builds them.
//! - [`executor`]: where statements run (in-process engine or a server).
//! - [`runner`]: concurrent execution, skip-on-failure, the run report.
//! - [`report`]: the console output and progress bar.
//! - [`error`]: errors that name the file and line.
//! - [`cli`]: the `tally models` flags and actions.

pub mod cli;
pub mod error;
pub mod executor;
pub mod graph;
pub mod jinja;
pub mod materialize;
pub mod project;
pub mod report;
pub mod runner;
pub mod schema_tests;
pub mod seeds;
pub mod snapshot;

pub use error::{ModelError, Result};
pub use executor::{Connection, Embedded, Executor, Remote};
pub use project::{LoadOptions, Project};
pub use runner::{Command, RunOptions, RunReport, Status, UnitResult, run};

/// One line per selected model, seed and test, for `tally models ls`: name, kind, relation
/// and file, in DAG order. Needs no warehouse.
pub fn list(project: &Project, options: &RunOptions) -> Result<Vec<String>> {
    let g = graph::Graph::build(project)?;
    let selected = graph::select(project, &g, &options.select, &options.exclude)?;
    let mut out = Vec::new();
    for &i in &g.order {
        if !selected.contains(&i) {
            continue;
        }
        let n = &project.nodes[i];
        out.push(format!(
            "{:<11} {:<40} {:<50} {}",
            n.config.materialized.as_str(),
            n.name,
            n.relation,
            n.path
        ));
    }
    for t in graph::selected_tests(project, &selected, &options.select, &options.exclude) {
        let t = &project.tests[t];
        out.push(format!(
            "{:<11} {:<40} {:<50} {}",
            "test", t.name, "", t.path
        ));
    }
    Ok(out)
}
