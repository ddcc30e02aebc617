//! Running a project: choose the units of work for a command (`seed`, `run`, `test`,
//! `build`, `compile`), order them by the DAG, and run independent ones concurrently on up
//! to `threads` connections. A unit that fails marks everything downstream as skipped
//! (with the name of the failure that blocked it), and the run goes on with the rest, so
//! one broken model costs only its own subtree.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{Location, ModelError, Result};
use super::executor::{Connection, Executor};
use super::graph::{self, Graph};
use super::jinja::{self, Relation, RenderInput, Resolver, quote_literal};
use super::materialize::{self, Existing, StepError, Steps};
use super::project::{HardDeletes, Materialized, NodeKind, Project};
use super::schema_tests::{self, Target, TestKind};
use super::seeds;
use super::snapshot;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Load seeds.
    Seed,
    /// Build models.
    Run,
    /// Run data tests.
    Test,
    /// Seeds, models and tests in DAG order; a failing test skips what depends on its model.
    Build,
    /// Render models to SQL without building them (written to `target/compiled/`).
    Compile,
    /// Build or update snapshots.
    Snapshot,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--select` selectors (all when empty).
    pub select: Vec<String>,
    /// `--exclude` selectors.
    pub exclude: Vec<String>,
    /// Units running at once (at least 1).
    pub threads: usize,
    /// Rebuild incremental models from scratch.
    pub full_refresh: bool,
    /// Write compiled SQL and run statements under `<project>/target/`.
    pub write_target: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            select: vec![],
            exclude: vec![],
            threads: 4,
            full_refresh: false,
            write_target: true,
        }
    }
}

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Built (or compiled).
    Success,
    /// Failed to build.
    Error,
    /// Not run because something upstream failed.
    Skipped,
    /// A test found no failures.
    Pass,
    /// A test found failures.
    Fail,
    /// A `severity: warn` test found failures.
    Warn,
}

impl Status {
    /// Whether this status fails the run and blocks dependants.
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Error | Status::Skipped | Status::Fail)
    }

    /// The word shown in reports.
    pub fn label(self) -> &'static str {
        match self {
            Status::Success => "OK",
            Status::Error => "ERROR",
            Status::Skipped => "SKIP",
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
        }
    }
}

/// The outcome of one model, seed or test.
#[derive(Debug, Clone)]
pub struct UnitResult {
    /// Model, seed or test name.
    pub name: String,
    /// What it is: `view`, `table`, `incremental`, `seed`, `test`.
    pub kind: String,
    /// The relation built or tested, quoted.
    pub relation: Option<String>,
    /// Its file.
    pub path: String,
    /// How it ended.
    pub status: Status,
    /// Rows produced (tables, incremental, seeds) or failures found (tests).
    pub rows: Option<u64>,
    /// Wall time.
    pub duration: Duration,
    /// The error, or what blocked a skipped unit.
    pub message: Option<String>,
    /// For `compile`: the compiled SQL.
    pub compiled: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Every unit, in the order they finished.
    pub results: Vec<UnitResult>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// What it ran against.
    pub target: String,
}

impl RunReport {
    /// True when nothing failed or was skipped.
    pub fn success(&self) -> bool {
        !self.results.iter().any(|r| r.status.is_failure())
    }

    /// How many units ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// The result of the unit named `name`.
    pub fn get(&self, name: &str) -> Option<&UnitResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Follows a run as it goes (the console report and progress bar implement it).
pub trait Observer: Send + Sync {
    /// The run is about to start `total` units against `target`.
    fn begin(&self, _total: usize, _target: &str) {}
    /// A unit started.
    fn started(&self, _name: &str) {}
    /// A unit finished.
    fn finished(&self, _result: &UnitResult) {}
}

/// An observer that ignores everything (tests, library use).
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Unit {
    Node(usize),
    Test(usize),
}

struct Ctx {
    project: Arc<Project>,
    graph: Graph,
    resolver: Arc<Resolver>,
    index: HashMap<String, usize>,
    existing: Mutex<HashMap<(String, String), Existing>>,
    options: RunOptions,
    command: Command,
    run_started_at: String,
}

/// Runs `command` over `project` against `executor`.
///
/// Errors here are the ones that stop a run before it starts (cycle, bad selector, no
/// connection); failures of single units are in the report.
pub async fn run(
    project: Arc<Project>,
    executor: Arc<dyn Executor>,
    command: Command,
    options: RunOptions,
    observer: Arc<dyn Observer>,
) -> Result<RunReport> {
    let started = Instant::now();
    let graph = Graph::build(&project)?;
    let selected = graph::select(&project, &graph, &options.select, &options.exclude)?;
    let units = plan_units(&project, &graph, command, &selected, &options);
    let deps = unit_deps(&project, &graph, command, &units);

    let resolver = Arc::new(resolver(&project));
    let index = project
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let threads = options.threads.max(1);
    let ctx = Arc::new(Ctx {
        project: project.clone(),
        graph,
        resolver,
        index,
        existing: Mutex::new(HashMap::new()),
        options,
        command,
        run_started_at: chrono::Utc::now().to_rfc3339(),
    });

    let mut report = RunReport {
        target: executor.describe(),
        ..Default::default()
    };
    observer.begin(units.len(), &report.target);
    if units.is_empty() {
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    // The first connection prepares schemas and learns what already exists.
    let mut first = executor.connect().await?;
    if command != Command::Test {
        prepare(&ctx, first.as_mut(), &units).await?;
    }
    let mut pool: Vec<Box<dyn Connection>> = vec![first];
    let mut opened = 1usize;

    let n = units.len();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending: Vec<usize> = vec![0; n];
    for (u, ds) in deps.iter().enumerate() {
        pending[u] = ds.len();
        for &d in ds {
            dependants[d].push(u);
        }
    }
    let mut blocked: Vec<Option<String>> = vec![None; n];
    let mut ready: VecDeque<usize> = (0..n).filter(|&u| pending[u] == 0).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut done = 0usize;

    while done < n {
        while running.len() < threads
            && let Some(u) = ready.pop_front()
        {
            if let Some(reason) = blocked[u].clone() {
                let result = skipped(&ctx, units[u], reason);
                observer.finished(&result);
                settle(
                    u,
                    &result,
                    &dependants,
                    &mut pending,
                    &mut blocked,
                    &mut ready,
                );
                report.results.push(result);
                done += 1;
                continue;
            }
            let mut conn = match pool.pop() {
                Some(c) => c,
                None => {
                    opened += 1;
                    tracing::debug!(target: "tally::models", opened, "opening connection");
                    executor.connect().await?
                }
            };
            let unit = units[u];
            observer.started(&unit_name(&ctx, unit));
            let ctx = ctx.clone();
            running.spawn(async move {
                let t = Instant::now();
                let mut result = run_unit(&ctx, conn.as_mut(), unit).await;
                result.duration = t.elapsed();
                (u, result, conn)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (u, result, conn) =
            joined.map_err(|e| ModelError::Connect(format!("worker failed: {e}")))?;
        pool.push(conn);
        observer.finished(&result);
        settle(
            u,
            &result,
            &dependants,
            &mut pending,
            &mut blocked,
            &mut ready,
        );
        report.results.push(result);
        done += 1;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Records a finished unit: its dependants lose one pending parent, and are blocked if it
/// failed.
fn settle(
    u: usize,
    result: &UnitResult,
    dependants: &[Vec<usize>],
    pending: &mut [usize],
    blocked: &mut [Option<String>],
    ready: &mut VecDeque<usize>,
) {
    for &d in &dependants[u] {
        if result.status.is_failure() && blocked[d].is_none() {
            blocked[d] = Some(match result.status {
                Status::Skipped => result
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("upstream {} was skipped", result.name)),
                _ => format!("upstream {} failed", result.name),
            });
        }
        pending[d] -= 1;
        if pending[d] == 0 {
            ready.push_back(d);
        }
    }
}

fn plan_units(
    project: &Project,
    graph: &Graph,
    command: Command,
    selected: &BTreeSet<usize>,
    options: &RunOptions,
) -> Vec<Unit> {
    let nodes = |want: &dyn Fn(NodeKind) -> bool| -> Vec<Unit> {
        graph
            .order
            .iter()
            .copied()
            .filter(|i| selected.contains(i))
            .filter(|&i| want(project.nodes[i].kind))
            .filter(|&i| project.nodes[i].config.materialized != Materialized::Ephemeral)
            .map(Unit::Node)
            .collect()
    };
    let tests = || -> Vec<Unit> {
        graph::selected_tests(project, selected, &options.select, &options.exclude)
            .into_iter()
            .map(Unit::Test)
            .collect()
    };
    match command {
        Command::Seed => nodes(&|k| k == NodeKind::Seed),
        Command::Snapshot => nodes(&|k| k == NodeKind::Snapshot),
        Command::Run | Command::Compile => nodes(&|k| k == NodeKind::Model),
        Command::Test => tests(),
        Command::Build => {
            let mut u = nodes(&|_| true);
            u.extend(tests());
            u
        }
    }
}

/// For each unit, the units it waits for.
fn unit_deps(
    project: &Project,
    graph: &Graph,
    command: Command,
    units: &[Unit],
) -> Vec<Vec<usize>> {
    let pos: HashMap<Unit, usize> = units.iter().enumerate().map(|(i, &u)| (u, i)).collect();
    let index: HashMap<&str, usize> = project
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // Tests by the built node each one reads, for `build`.
    let mut tests_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut test_reads: HashMap<usize, BTreeSet<usize>> = HashMap::new();
    for &u in units {
        if let Unit::Test(t) = u {
            let mut reads = BTreeSet::new();
            for r in &project.tests[t].refs {
                if let Some(&i) = index.get(r.as_str()) {
                    if project.nodes[i].config.materialized == Materialized::Ephemeral {
                        reads.extend(graph.built_parents(project, i));
                    } else {
                        reads.insert(i);
                    }
                }
            }
            if let Some(Target::Node(n)) = &project.tests[t].attached
                && let Some(&i) = index.get(n.as_str())
            {
                tests_of.entry(i).or_default().push(t);
            }
            test_reads.insert(t, reads);
        }
    }
    units
        .iter()
        .map(|&u| {
            let mut out = BTreeSet::new();
            match u {
                Unit::Node(i) => {
                    let parents = graph.built_parents(project, i);
                    for p in &parents {
                        if let Some(&x) = pos.get(&Unit::Node(*p)) {
                            out.insert(x);
                        }
                        if command == Command::Build {
                            let below = graph.descendants(i);
                            for &t in tests_of.get(p).into_iter().flatten() {
                                // A test that reads something downstream of this node
                                // cannot gate it (that would be a cycle).
                                let reads = &test_reads[&t];
                                if reads.iter().all(|r| !below.contains(r) && *r != i)
                                    && let Some(&x) = pos.get(&Unit::Test(t))
                                {
                                    out.insert(x);
                                }
                            }
                        }
                    }
                }
                Unit::Test(t) => {
                    for r in &test_reads[&t] {
                        if let Some(&x) = pos.get(&Unit::Node(*r)) {
                            out.insert(x);
                        }
                    }
                }
            }
            out.into_iter().collect()
        })
        .collect()
}

/// How every model, seed and source is written in compiled SQL.
fn resolver(project: &Project) -> Resolver {
    let mut r = Resolver::default();
    for n in &project.nodes {
        let text = if n.config.materialized == Materialized::Ephemeral {
            cte_name(&n.name)
        } else {
            n.relation.to_string()
        };
        r.refs.insert(n.name.clone(), text);
    }
    for (k, s) in &project.sources {
        r.sources.insert(k.clone(), s.relation.to_string());
    }
    r
}

fn cte_name(model: &str) -> String {
    format!("__dbt__cte__{model}")
}

/// Creates the schemas the units build in and reads which relations exist.
async fn prepare(ctx: &Ctx, conn: &mut dyn Connection, units: &[Unit]) -> Result<()> {
    let mut schemas = BTreeSet::new();
    for u in units {
        if let Unit::Node(i) = u {
            schemas.insert(ctx.project.nodes[*i].relation.schema.clone());
        }
    }
    if ctx.command != Command::Compile {
        for s in &schemas {
            conn.execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                jinja::quote_ident(s)
            ))
            .await?;
        }
    }
    if schemas.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = schemas.iter().map(|s| quote_literal(s)).collect();
    let rows = conn
        .execute(&format!(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_schema IN ({})",
            list.join(", ")
        ))
        .await?
        .rows;
    let mut existing = ctx.existing.lock().unwrap_or_else(|p| p.into_inner());
    for r in rows {
        if let [Some(s), Some(n), Some(t)] = r.as_slice() {
            existing.insert((s.clone(), n.clone()), Existing::from_table_type(t));
        }
    }
    Ok(())
}

impl Ctx {
    fn existing(&self, r: &Relation) -> Option<Existing> {
        self.existing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(r.schema.clone(), r.identifier.clone()))
            .copied()
    }

    fn set_existing(&self, r: &Relation, e: Option<Existing>) {
        let mut m = self.existing.lock().unwrap_or_else(|p| p.into_inner());
        let key = (r.schema.clone(), r.identifier.clone());
        match e {
            Some(e) => m.insert(key, e),
            None => m.remove(&key),
        };
    }

    fn render_input(&self, this: Option<Relation>, is_incremental: bool) -> RenderInput {
        RenderInput {
            vars: self.project.vars.clone(),
            this,
            is_incremental,
            resolver: Some(self.resolver.clone()),
            target_schema: self.project.target_schema.clone(),
            run_started_at: self.run_started_at.clone(),
        }
    }

    /// Renders `raw` and puts the CTEs of the ephemeral models it (transitively) refs in
    /// front.
    fn compile(
        &self,
        path: &str,
        raw: &str,
        refs: &[String],
        this: Option<Relation>,
        is_incremental: bool,
    ) -> Result<String> {
        let (sql, _) = jinja::render(path, raw, &self.render_input(this, is_incremental))?;
        Ok(materialize::inject_ctes(
            &clean(&sql),
            &self.ctes_for(refs)?,
        ))
    }

    /// The CTEs of the ephemeral models reachable from `refs` through ephemeral refs,
    /// parents first.
    fn ctes_for(&self, refs: &[String]) -> Result<Vec<(String, String)>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for r in refs {
            if let Some(&i) = self.index.get(r) {
                self.collect_ephemeral(i, &mut seen, &mut order);
            }
        }
        let mut ctes = Vec::new();
        for i in order {
            let n = &self.project.nodes[i];
            let (text, _) = jinja::render(
                &n.path,
                &n.raw,
                &self.render_input(Some(n.relation.clone()), false),
            )?;
            ctes.push((cte_name(&n.name), clean(&text)));
        }
        Ok(ctes)
    }

    fn collect_ephemeral(&self, i: usize, seen: &mut BTreeSet<usize>, order: &mut Vec<usize>) {
        let n = &self.project.nodes[i];
        if n.config.materialized != Materialized::Ephemeral || !seen.insert(i) {
            return;
        }
        for &p in &self.graph.parents[i] {
            self.collect_ephemeral(p, seen, order);
        }
        order.push(i);
    }

    fn write_target(&self, kind: &str, path: &str, text: &str) {
        if !self.options.write_target {
            return;
        }
        let file = self
            .project
            .root
            .join("target")
            .join(kind)
            .join(&self.project.name)
            .join(path);
        let written = file
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(&file, text));
        if let Err(e) = written {
            tracing::warn!(target: "tally::models", file = %file.display(), error = %e, "cannot write");
        }
    }
}

/// Trims trailing whitespace and semicolons, which would break `CREATE ... AS <sql>`.
fn clean(sql: &str) -> String {
    sql.trim_end().trim_end_matches(';').trim_end().to_string()
}

fn unit_name(ctx: &Ctx, u: Unit) -> String {
    match u {
        Unit::Node(i) => ctx.project.nodes[i].name.clone(),
        Unit::Test(t) => ctx.project.tests[t].name.clone(),
    }
}

fn base_result(ctx: &Ctx, u: Unit) -> UnitResult {
    let (name, kind, relation, path) = match u {
        Unit::Node(i) => {
            let n = &ctx.project.nodes[i];
            (
                n.name.clone(),
                n.config.materialized.as_str().to_string(),
                Some(n.relation.to_string()),
                n.path.clone(),
            )
        }
        Unit::Test(t) => {
            let t = &ctx.project.tests[t];
            (t.name.clone(), "test".to_string(), None, t.path.clone())
        }
    };
    UnitResult {
        name,
        kind,
        relation,
        path,
        status: Status::Success,
        rows: None,
        duration: Duration::ZERO,
        message: None,
        compiled: None,
    }
}

fn skipped(ctx: &Ctx, u: Unit, reason: String) -> UnitResult {
    UnitResult {
        status: Status::Skipped,
        message: Some(reason),
        ..base_result(ctx, u)
    }
}

async fn run_unit(ctx: &Ctx, conn: &mut dyn Connection, u: Unit) -> UnitResult {
    let mut result = base_result(ctx, u);
    let outcome = match u {
        Unit::Node(i) => match ctx.project.nodes[i].kind {
            NodeKind::Seed => build_seed(ctx, conn, i).await,
            NodeKind::Model if ctx.command == Command::Compile => compile_only(ctx, conn, i).await,
            NodeKind::Model => build_model(ctx, conn, i).await,
            NodeKind::Snapshot => build_snapshot(ctx, conn, i).await,
        },
        Unit::Test(t) => run_test(ctx, conn, t).await,
    };
    match outcome {
        Ok(o) => {
            result.rows = o.rows;
            result.compiled = o.compiled;
            result.status = o.status;
            if let Some(m) = o.message {
                result.message = Some(m);
            }
        }
        Err(message) => {
            tracing::debug!(target: "tally::models", unit = %result.name, %message, "failed");
            result.status = Status::Error;
            result.message = Some(message);
        }
    }
    result
}

struct Outcome {
    status: Status,
    rows: Option<u64>,
    compiled: Option<String>,
    message: Option<String>,
}

impl Outcome {
    fn built(rows: Option<u64>) -> Outcome {
        Outcome {
            status: Status::Success,
            rows,
            compiled: None,
            message: None,
        }
    }
}

/// Formats a failed statement as `file:line: message`, finding the line in the model's
/// source where the engine's position or a name in the message points to.
fn step_message(path: &str, raw: &str, compiled: &str, e: &StepError) -> String {
    let compiled_line = e
        .error
        .line_in(&e.sql)
        .and_then(|l| e.model_line_offset.map(|off| l.saturating_sub(off)))
        .filter(|l| *l > 0);
    let line = compiled_line
        .and_then(|l| source_line(raw, compiled, l))
        .or_else(|| named_line(raw, &e.error.message));
    let at = Location::line(path, line);
    format!("{at}: {}", e.error)
}

/// The source line of a compiled line: the same text found once in the source, or the same
/// number when rendering kept the line count.
fn source_line(raw: &str, compiled: &str, line: usize) -> Option<usize> {
    let text = compiled.lines().nth(line - 1)?.trim();
    if !text.is_empty() {
        let hits: Vec<usize> = raw
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == text)
            .map(|(i, _)| i + 1)
            .collect();
        if hits.len() == 1 {
            return Some(hits[0]);
        }
    }
    (raw.lines().count() == compiled.lines().count()).then_some(line)
}

/// The first source line mentioning a name quoted in an error message (`column "x" ...`).
fn named_line(raw: &str, message: &str) -> Option<usize> {
    let mut names = Vec::new();
    for q in ['"', '\''] {
        let parts: Vec<&str> = message.split(q).collect();
        for (k, p) in parts.iter().enumerate() {
            if k % 2 == 1 && !p.is_empty() {
                names.push(p.rsplit('.').next().unwrap_or(p).to_string());
            }
        }
    }
    // DataFusion's "No field named nope." names columns without quotes.
    for marker in ["named ", "column "] {
        let mut rest = message;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let word = word.trim_end_matches('.');
            if !word.is_empty() {
                names.push(word.rsplit('.').next().unwrap_or(word).to_string());
            }
        }
    }
    for name in names {
        let hits: Vec<usize> = raw
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.contains("{{") && contains_word(l, &name))
            .map(|(i, _)| i + 1)
            .collect();
        if let Some(&first) = hits.first() {
            return Some(first);
        }
    }
    None
}

fn contains_word(line: &str, word: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let word = word.to_ascii_lowercase();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut start = 0;
    while let Some(at) = lower[start..].find(&word) {
        let a = start + at;
        let b = a + word.len();
        let before = lower[..a].chars().next_back();
        let after = lower[b..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return true;
        }
        start = b;
    }
    false
}

async fn compile_only(ctx: &Ctx, _conn: &mut dyn Connection, i: usize) -> Result<Outcome, String> {
    let n = &ctx.project.nodes[i];
    let incremental = n.config.materialized == Materialized::Incremental
        && ctx.existing(&n.relation) == Some(Existing::Table)
        && !ctx.options.full_refresh;
    let sql = ctx
        .compile(
            &n.path,
            &n.raw,
            &n.refs,
            Some(n.relation.clone()),
            incremental,
        )
        .map_err(|e| e.to_string())?;
    ctx.write_target("compiled", &n.path, &sql);
    Ok(Outcome {
        compiled: Some(sql),
        ..Outcome::built(None)
    })
}

async fn hooks(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    path: &str,
    this: &Relation,
    hooks: &[String],
) -> Result<(), String> {
    for h in hooks {
        let (sql, _) = jinja::render(path, h, &ctx.render_input(Some(this.clone()), false))
            .map_err(|e| e.to_string())?;
        if sql.trim().is_empty() {
            continue;
        }
        steps
            .run(&sql, None)
            .await
            .map_err(|e| format!("{path}: hook failed: {}", e.error))?;
    }
    Ok(())
}

async fn build_model(ctx: &Ctx, conn: &mut dyn Connection, i: usize) -> Result<Outcome, String> {
    let n = &ctx.project.nodes[i];
    let rel = &n.relation;
    let existing = ctx.existing(rel);
    let mut steps = Steps::new(conn);
    hooks(ctx, &mut steps, &n.path, rel, &n.config.pre_hook).await?;
    let full = ctx.options.full_refresh && n.config.full_refresh != Some(false);
    let incremental = n.config.materialized == Materialized::Incremental
        && existing == Some(Existing::Table)
        && !full;
    let compiled = ctx
        .compile(&n.path, &n.raw, &n.refs, Some(rel.clone()), incremental)
        .map_err(|e| e.to_string())?;
    ctx.write_target("compiled", &n.path, &compiled);
    let fail = |e: StepError| step_message(&n.path, &n.raw, &compiled, &e);

    let rows = match n.config.materialized {
        Materialized::View => {
            match existing {
                Some(Existing::Table) => {
                    let backup = materialize::backup_of(rel);
                    for s in [
                        "BEGIN".to_string(),
                        format!(
                            "ALTER TABLE {rel} RENAME TO {}",
                            jinja::quote_ident(&backup.identifier)
                        ),
                    ] {
                        steps.run(&s, None).await.map_err(fail)?;
                    }
                    steps
                        .run(&format!("CREATE VIEW {rel} AS\n{compiled}"), Some(1))
                        .await
                        .map_err(fail)?;
                    for s in [format!("DROP TABLE {backup}"), "COMMIT".to_string()] {
                        steps.run(&s, None).await.map_err(fail)?;
                    }
                }
                _ => {
                    steps
                        .run(
                            &format!("CREATE OR REPLACE VIEW {rel} AS\n{compiled}"),
                            Some(1),
                        )
                        .await
                        .map_err(fail)?;
                }
            }
            ctx.set_existing(rel, Some(Existing::View));
            None
        }
        Materialized::Table | Materialized::Incremental if !incremental => {
            let rows = build_table(ctx, &mut steps, rel, existing, &compiled)
                .await
                .map_err(fail)?;
            Some(rows)
        }
        Materialized::Incremental => {
            let rows = build_incremental(ctx, &mut steps, n, &compiled)
                .await
                .map_err(fail)?;
            Some(rows)
        }
        Materialized::Ephemeral
        | Materialized::Seed
        | Materialized::Table
        | Materialized::Snapshot => None,
    };
    hooks(ctx, &mut steps, &n.path, rel, &n.config.post_hook).await?;
    ctx.write_target("run", &n.path, &(steps.log.join(";\n\n") + ";\n"));
    Ok(Outcome::built(rows))
}

/// Builds `compiled` as a table beside `rel` and swaps it in; returns the row count.
async fn build_table(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    rel: &Relation,
    existing: Option<Existing>,
    compiled: &str,
) -> Result<u64, StepError> {
    build_table_at(ctx, steps, rel, existing, compiled, 0).await
}

/// [`build_table`] of a query that embeds the model's SQL `offset` lines down.
async fn build_table_at(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    rel: &Relation,
    existing: Option<Existing>,
    compiled: &str,
    offset: usize,
) -> Result<u64, StepError> {
    let tmp = materialize::tmp_of(rel);
    if let Some(kind) = ctx.existing(&tmp) {
        steps
            .run(&format!("DROP {} IF EXISTS {tmp}", kind.keyword()), None)
            .await?;
        ctx.set_existing(&tmp, None);
    }
    let created = steps
        .run(
            &format!("CREATE TABLE {tmp} AS\n{compiled}"),
            Some(1 + offset),
        )
        .await?;
    swap(ctx, steps, rel, &tmp, existing).await?;
    Ok(created.affected.unwrap_or(0))
}

async fn swap(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    rel: &Relation,
    tmp: &Relation,
    existing: Option<Existing>,
) -> Result<(), StepError> {
    for s in materialize::swap_sql(rel, tmp, existing) {
        if let Err(e) = steps.run(&s, None).await {
            // Leave no half-built table behind for the next run to trip over.
            let _ = steps
                .run(&format!("DROP TABLE IF EXISTS {tmp}"), None)
                .await;
            return Err(e);
        }
    }
    ctx.set_existing(rel, Some(Existing::Table));
    Ok(())
}

async fn build_incremental(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    n: &super::project::Node,
    compiled: &str,
) -> Result<u64, StepError> {
    let rel = &n.relation;
    let tmp = jinja::quote_ident(&format!("{}__dbt_tmp", rel.identifier));
    steps
        .run(
            &format!("CREATE TEMPORARY TABLE {tmp} AS\n{compiled}"),
            Some(1),
        )
        .await?;
    let result = incremental_apply(ctx, steps, n, &tmp).await;
    let _ = steps
        .run(&format!("DROP TABLE IF EXISTS {tmp}"), None)
        .await;
    result
}

async fn incremental_apply(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    n: &super::project::Node,
    tmp: &str,
) -> Result<u64, StepError> {
    let rel = &n.relation;
    let columns = table_columns(steps, rel).await?;
    let keys = &n.config.unique_key;
    let strategy = n
        .config
        .incremental_strategy
        .clone()
        .unwrap_or_else(|| if keys.is_empty() { "append" } else { "merge" }.to_string());
    let explicit = n.config.incremental_strategy.is_some();
    match strategy.as_str() {
        "merge" if !keys.is_empty() => {
            match steps
                .run(&materialize::merge_sql(rel, tmp, &columns, keys), None)
                .await
            {
                Ok(r) => return Ok(r.affected.unwrap_or(0)),
                // An engine without MERGE gets delete+insert, unless MERGE was asked for.
                Err(e) if !explicit && matches!(e.error.sqlstate.as_str(), "0A000" | "42601") => {
                    tracing::info!(target: "tally::models", model = %n.name, error = %e.error, "MERGE unavailable, using delete+insert");
                }
                Err(e) => return Err(e),
            }
            delete_insert(ctx, steps, rel, tmp, &columns, keys).await
        }
        "delete+insert" if !keys.is_empty() => {
            delete_insert(ctx, steps, rel, tmp, &columns, keys).await
        }
        _ => {
            let r = steps
                .run(&materialize::insert_sql(rel, tmp, &columns), None)
                .await?;
            Ok(r.affected.unwrap_or(0))
        }
    }
}

/// Replaces the rows whose keys are in `tmp` and adds the new ones, as a rebuild swapped in
/// atomically (see [`materialize::rebuild_sql`]); returns the rows taken from `tmp`.
async fn delete_insert(
    ctx: &Ctx,
    steps: &mut Steps<'_>,
    rel: &Relation,
    tmp: &str,
    columns: &[String],
    keys: &[String],
) -> Result<u64, StepError> {
    let staged = materialize::tmp_of(rel);
    if let Some(kind) = ctx.existing(&staged) {
        steps
            .run(&format!("DROP {} IF EXISTS {staged}", kind.keyword()), None)
            .await?;
        ctx.set_existing(&staged, None);
    }
    steps
        .run(
            &materialize::rebuild_sql(&staged, rel, tmp, columns, keys),
            None,
        )
        .await?;
    swap(ctx, steps, rel, &staged, Some(Existing::Table)).await?;
    let n = steps.query(&format!("SELECT count(*) FROM {tmp}")).await?;
    Ok(n.first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Builds a snapshot: the first run stores the query's rows as current versions, later runs
/// close changed (and, if asked, deleted) versions and insert new ones (see [`snapshot`]).
async fn build_snapshot(ctx: &Ctx, conn: &mut dyn Connection, i: usize) -> Result<Outcome, String> {
    let n = &ctx.project.nodes[i];
    let Some(config) = &n.config.snapshot else {
        return Err(format!("{}: {} is not a snapshot", n.path, n.name));
    };
    let rel = &n.relation;
    let keys = &n.config.unique_key;
    let mut steps = Steps::new(conn);
    hooks(ctx, &mut steps, &n.path, rel, &n.config.pre_hook).await?;
    let compiled = ctx
        .compile(&n.path, &n.raw, &n.refs, Some(rel.clone()), false)
        .map_err(|e| e.to_string())?;
    ctx.write_target("compiled", &n.path, &compiled);
    let fail = |e: StepError| step_message(&n.path, &n.raw, &compiled, &e);
    let rows = match ctx.existing(rel) {
        None => {
            let sql = snapshot::first_build_sql(&compiled, keys, &config.strategy);
            build_table_at(
                ctx,
                &mut steps,
                rel,
                None,
                &sql,
                snapshot::WRAPPED_LINE_OFFSET,
            )
            .await
            .map_err(fail)?
        }
        Some(Existing::View) => {
            return Err(format!(
                "{}: {rel} is a view, not a snapshot table; drop it or give the snapshot another name",
                n.path
            ));
        }
        Some(Existing::Table) => {
            let columns = table_columns(&mut steps, rel).await.map_err(fail)?;
            let missing: Vec<&str> = snapshot::META_COLUMNS
                .into_iter()
                .filter(|m| !columns.iter().any(|c| c == m))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: {rel} is not a snapshot table (it has no {})",
                    n.path,
                    missing.join(", ")
                ));
            }
            let plan = snapshot::plan(
                rel,
                &compiled,
                &columns,
                keys,
                &config.strategy,
                config.hard_deletes == HardDeletes::Invalidate,
            );
            let result = apply_snapshot(&mut steps, &plan).await;
            for t in &plan.temporaries {
                let _ = steps.run(&format!("DROP TABLE IF EXISTS {t}"), None).await;
            }
            result.map_err(fail)?
        }
    };
    hooks(ctx, &mut steps, &n.path, rel, &n.config.post_hook).await?;
    ctx.write_target("run", &n.path, &(steps.log.join(";\n\n") + ";\n"));
    Ok(Outcome::built(Some(rows)))
}

/// Stages and applies a later snapshot run; returns the versions inserted.
async fn apply_snapshot(steps: &mut Steps<'_>, plan: &snapshot::Plan) -> Result<u64, StepError> {
    steps
        .run(&plan.source, Some(1 + snapshot::WRAPPED_LINE_OFFSET))
        .await?;
    steps.run(&plan.inserts, None).await?;
    steps.run(&plan.updates, None).await?;
    if let Some(d) = &plan.deletes {
        steps.run(d, None).await?;
    }
    let mut inserted = 0;
    for s in &plan.apply {
        let r = steps.run(s, None).await?;
        if s.starts_with("INSERT") {
            inserted = r.affected.unwrap_or(0);
        }
    }
    Ok(inserted)
}

/// The columns of `rel`, in order.
async fn table_columns(steps: &mut Steps<'_>, rel: &Relation) -> Result<Vec<String>, StepError> {
    Ok(steps
        .query(&format!(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = {} AND table_name = {} ORDER BY ordinal_position",
            quote_literal(&rel.schema),
            quote_literal(&rel.identifier)
        ))
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn build_seed(ctx: &Ctx, conn: &mut dyn Connection, i: usize) -> Result<Outcome, String> {
    let n = &ctx.project.nodes[i];
    let data = seeds::parse(&n.path, &n.raw, &n.config.column_types).map_err(|e| e.to_string())?;
    let rel = &n.relation;
    let existing = ctx.existing(rel);
    let tmp = materialize::tmp_of(rel);
    let mut steps = Steps::new(conn);
    let fail = |e: StepError| format!("{}: {}", n.path, e.error);
    if let Some(kind) = ctx.existing(&tmp) {
        steps
            .run(&format!("DROP {} IF EXISTS {tmp}", kind.keyword()), None)
            .await
            .map_err(fail)?;
        ctx.set_existing(&tmp, None);
    }
    steps
        .run(&data.create_sql(&tmp.to_string()), None)
        .await
        .map_err(fail)?;
    for ins in data.insert_sql(&tmp.to_string()) {
        if let Err(e) = steps.run(&ins, None).await {
            let _ = steps
                .run(&format!("DROP TABLE IF EXISTS {tmp}"), None)
                .await;
            return Err(fail(e));
        }
    }
    swap(ctx, &mut steps, rel, &tmp, existing)
        .await
        .map_err(fail)?;
    Ok(Outcome::built(Some(data.rows.len() as u64)))
}

async fn run_test(ctx: &Ctx, conn: &mut dyn Connection, t: usize) -> Result<Outcome, String> {
    let test = &ctx.project.tests[t];
    let rel_of = |target: &Target| -> String {
        match target {
            Target::Node(n) => ctx
                .resolver
                .refs
                .get(n)
                .cloned()
                .unwrap_or_else(|| n.clone()),
            Target::Source(s, tb) => ctx
                .resolver
                .sources
                .get(&(s.clone(), tb.clone()))
                .cloned()
                .unwrap_or_else(|| format!("{s}.{tb}")),
        }
    };
    let (sql, raw) = match &test.kind {
        TestKind::Singular { sql } => {
            let compiled = ctx
                .compile(&test.path, sql, &test.refs, None, false)
                .map_err(|e| e.to_string())?;
            ctx.write_target("compiled", &test.path, &compiled);
            (
                schema_tests::failures_sql(&TestKind::Singular { sql: compiled }, "", None, None),
                sql.clone(),
            )
        }
        kind => {
            let Some(target) = &test.attached else {
                return Err(format!("{}: test {} tests nothing", test.path, test.name));
            };
            let parent = match kind {
                TestKind::Relationships { to, .. } => Some(rel_of(to)),
                _ => None,
            };
            let sql = schema_tests::failures_sql(
                kind,
                &rel_of(target),
                parent.as_deref(),
                test.where_clause.as_deref(),
            );
            // Ephemeral models under test are inlined as in models.
            let ctes = ctx.ctes_for(&test.refs).map_err(|e| e.to_string())?;
            (materialize::inject_ctes(&sql, &ctes), String::new())
        }
    };
    let mut steps = Steps::new(conn);
    let rows = steps
        .query(&sql)
        .await
        .map_err(|e| step_message(&test.path, &raw, &sql, &e))?;
    let failures = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let status = match (failures, test.warn) {
        (0, _) => Status::Pass,
        (_, true) => Status::Warn,
        (_, false) => Status::Fail,
    };
    Ok(Outcome {
        status,
        rows: Some(failures),
        compiled: None,
        message: (failures > 0).then(|| {
            format!(
                "{}: {failures} failing row{}",
                test.path,
                if failures == 1 { "" } else { "s" }
            )
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_source_lines() {
        let raw = "{{ config(materialized='table') }}\nselect a,\n  nope\nfrom {{ ref('x') }}";
        let compiled = "\nselect a,\n  nope\nfrom \"s\".\"x\"";
        assert_eq!(source_line(raw, compiled, 3), Some(3));
        assert_eq!(named_line(raw, "column \"nope\" not found"), Some(3));
        assert_eq!(named_line(raw, "no such thing"), None);
        assert_eq!(
            named_line(
                raw,
                "Schema error: No field named nope.\nValid fields are g.x."
            ),
            Some(3)
        );
    }
}
