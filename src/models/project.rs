//! Loading a dbt-style project from disk: `dbt_project.yml` (name, paths, vars, per-folder
//! configs), models (`models/**/*.sql`), seeds (`seeds/**/*.csv`), singular tests
//! (`tests/**/*.sql`) and property files (any `*.yml` under those folders with `models:`,
//! `sources:` or `seeds:`), in the layout dbt uses, so one project serves both tally's
//! runner and dbt itself.
//!
//! Loading parses every model's Jinja once to learn its `ref()`s, `source()`s and
//! `config()`, then checks that every name resolves: a missing ref fails the load with the
//! file and line that asked for it, before anything touches the warehouse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::error::{Location, ModelError, Result, read_to_string};
use super::jinja::{self, Relation, RenderInput};
use super::schema_tests::{TestDef, TestKind};

/// How a model is built in the warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Materialized {
    /// `CREATE VIEW`: nothing stored, always current.
    View,
    /// `CREATE TABLE AS`, rebuilt whole on each run and swapped in atomically.
    Table,
    /// A table built once, then only new rows appended (or upserted on `unique_key`).
    Incremental,
    /// Not built: inlined as a CTE into the models that ref it.
    Ephemeral,
    /// A seed: a table loaded from a CSV file.
    Seed,
    /// A snapshot: a table keeping every version of the rows of a query (type 2 slowly
    /// changing dimension), with `dbt_valid_from`/`dbt_valid_to`.
    Snapshot,
}

impl Materialized {
    /// The word dbt uses (`view`, `table`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Materialized::View => "view",
            Materialized::Table => "table",
            Materialized::Incremental => "incremental",
            Materialized::Ephemeral => "ephemeral",
            Materialized::Seed => "seed",
            Materialized::Snapshot => "snapshot",
        }
    }
}

/// The settings of one model or seed, after merging `dbt_project.yml`, property files and
/// the model's own `config()` (later wins; tags accumulate).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How it is built.
    pub materialized: Materialized,
    /// Columns identifying a row, for incremental upserts.
    pub unique_key: Vec<String>,
    /// `append`, `delete+insert` or `merge`; `None` picks by `unique_key`.
    pub incremental_strategy: Option<String>,
    /// Custom schema (dbt appends it to the target schema: `<target>_<schema>`).
    pub schema: Option<String>,
    /// Relation name other than the model name.
    pub alias: Option<String>,
    /// Tags for `--select tag:x`.
    pub tags: Vec<String>,
    /// Disabled models are left out of the project.
    pub enabled: bool,
    /// Column types for seeds (`column_types: {id: bigint}`).
    pub column_types: BTreeMap<String, String>,
    /// Statements run before the model is built.
    pub pre_hook: Vec<String>,
    /// Statements run after the model is built.
    pub post_hook: Vec<String>,
    /// `full_refresh: false` keeps an incremental model even under `--full-refresh`.
    pub full_refresh: Option<bool>,
    /// How a snapshot detects changes (snapshots only).
    pub snapshot: Option<SnapshotConfig>,
}

/// How a snapshot decides that a row changed, as dbt's `strategy` config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStrategy {
    /// `strategy='timestamp'`: a row changed when its `updated_at` (a column or expression)
    /// is later than the `dbt_valid_from` of its current version.
    Timestamp {
        /// The expression giving the time a row last changed.
        updated_at: String,
    },
    /// `strategy='check'`: a row changed when one of these columns differs from its current
    /// version (`None`: `check_cols='all'`, every column of the query).
    Check {
        /// The columns compared, or all.
        columns: Option<Vec<String>>,
    },
}

/// What happens to current versions whose key left the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardDeletes {
    /// They stay current (dbt's default).
    Ignore,
    /// They are closed (`dbt_valid_to` set to the snapshot time): `hard_deletes='invalidate'`
    /// or the older `invalidate_hard_deletes=true`.
    Invalidate,
}

/// The settings only snapshots have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// How changes are detected.
    pub strategy: SnapshotStrategy,
    /// What happens to rows that disappear.
    pub hard_deletes: HardDeletes,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A SQL model.
    Model,
    /// A CSV seed.
    Seed,
    /// A snapshot (`{% snapshot %}` block under `snapshot-paths`).
    Snapshot,
}

/// A model or a seed: something `ref()` can name.
#[derive(Debug, Clone)]
pub struct Node {
    /// Model or seed.
    pub kind: NodeKind,
    /// The name `ref()` uses (the file name without extension).
    pub name: String,
    /// The file, relative to the project root.
    pub path: String,
    /// The file's text (SQL with Jinja for models, CSV for seeds).
    pub raw: String,
    /// Settings.
    pub config: NodeConfig,
    /// Where it is built.
    pub relation: Relation,
    /// Models and seeds it refs (deduplicated, in order).
    pub refs: Vec<String>,
    /// Sources it reads.
    pub sources: Vec<(String, String)>,
    /// Project name, folders and name: what `dbt_project.yml` configs and `path:` selectors
    /// match against.
    pub fqn: Vec<String>,
}

/// A table declared in a `sources:` block.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// The source's name (first argument of `source()`).
    pub source: String,
    /// The table's name (second argument).
    pub table: String,
    /// Where it lives.
    pub relation: Relation,
    /// The property file declaring it.
    pub path: String,
}

/// Options that shape a load, from the command line.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The schema models are built in unless configured otherwise (dbt's target schema).
    pub target_schema: String,
    /// `--vars`: YAML (or JSON) mapping overriding the project's vars.
    pub vars: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            target_schema: "public".into(),
            vars: None,
        }
    }
}

/// A loaded project: every node, source and test, with names checked.
#[derive(Debug, Clone)]
pub struct Project {
    /// The folder holding `dbt_project.yml`.
    pub root: PathBuf,
    /// `name:` of `dbt_project.yml`.
    pub name: String,
    /// Project vars merged with `--vars`.
    pub vars: Map<String, Json>,
    /// The target schema.
    pub target_schema: String,
    /// Models and seeds, sorted by path.
    pub nodes: Vec<Node>,
    /// Declared source tables by `(source, table)`.
    pub sources: BTreeMap<(String, String), SourceTable>,
    /// Schema tests and singular tests.
    pub tests: Vec<TestDef>,
}

/// Config keys that may appear in `dbt_project.yml` without the `+` prefix.
const CONFIG_KEYS: &[&str] = &[
    "materialized",
    "schema",
    "alias",
    "tags",
    "enabled",
    "unique_key",
    "incremental_strategy",
    "full_refresh",
    "column_types",
    "pre-hook",
    "post-hook",
    "pre_hook",
    "post_hook",
    "persist_docs",
    "docs",
    "meta",
    "quote_columns",
    "on_schema_change",
    "grants",
    "database",
    "severity",
    "where",
    "contract",
    "delimiter",
    "target_schema",
    "target_database",
    "strategy",
    "updated_at",
    "check_cols",
    "invalidate_hard_deletes",
    "hard_deletes",
];

/// A property file's per-node entry (`models:` / `seeds:` list item).
#[derive(Debug, Clone, Default)]
struct Properties {
    path: String,
    config: Map<String, Json>,
    columns: Vec<Json>,
    tests: Vec<Json>,
}

impl Project {
    /// Loads the project in `root`.
    pub fn load(root: &Path, options: &LoadOptions) -> Result<Project> {
        let project_file = root.join("dbt_project.yml");
        let text = read_to_string(&project_file, "dbt_project.yml")?;
        let doc = parse_yaml("dbt_project.yml", &text)?;
        let project_name = doc
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| ModelError::Yaml {
                at: Location::file("dbt_project.yml"),
                message: "a project needs a name:".into(),
            })?
            .to_string();
        let vars = merge_vars(&project_name, doc.get("vars"), options.vars.as_deref())?;
        let model_paths = paths_of(&doc, "model-paths", &["models"]);
        let seed_paths = paths_of(&doc, "seed-paths", &["seeds"]);
        let test_paths = paths_of(&doc, "test-paths", &["tests"]);
        let snapshot_paths = paths_of(&doc, "snapshot-paths", &["snapshots"]);
        let models_tree = doc.get("models").cloned().unwrap_or(Json::Null);
        let seeds_tree = doc.get("seeds").cloned().unwrap_or(Json::Null);
        let snapshots_tree = doc.get("snapshots").cloned().unwrap_or(Json::Null);

        // Property files: models, seeds and sources.
        let mut model_props: HashMap<String, Properties> = HashMap::new();
        let mut seed_props: HashMap<String, Properties> = HashMap::new();
        let mut snapshot_props: HashMap<String, Properties> = HashMap::new();
        let mut source_decls: Vec<(String, Json)> = Vec::new();
        for dir in model_paths.iter().chain(&seed_paths).chain(&snapshot_paths) {
            for file in files_under(root, dir, &["yml", "yaml"])? {
                let shown = shown_path(root, &file);
                let text = read_to_string(&file, &shown)?;
                let doc = parse_yaml(&shown, &text)?;
                for (section, into) in [
                    ("models", &mut model_props),
                    ("seeds", &mut seed_props),
                    ("snapshots", &mut snapshot_props),
                ] {
                    for entry in list(doc.get(section)) {
                        let Some(n) = entry.get("name").and_then(Json::as_str) else {
                            return Err(ModelError::Yaml {
                                at: Location::file(&shown),
                                message: format!("an entry under {section}: has no name:"),
                            });
                        };
                        into.insert(
                            n.to_string(),
                            Properties {
                                path: shown.clone(),
                                config: entry
                                    .get("config")
                                    .and_then(Json::as_object)
                                    .cloned()
                                    .unwrap_or_default(),
                                columns: list(entry.get("columns")).cloned().collect(),
                                tests: list(entry.get("data_tests"))
                                    .chain(list(entry.get("tests")))
                                    .cloned()
                                    .collect(),
                            },
                        );
                    }
                }
                for s in list(doc.get("sources")) {
                    source_decls.push((shown.clone(), s.clone()));
                }
            }
        }

        let mut sources = BTreeMap::new();
        let mut tests = Vec::new();
        for (path, s) in &source_decls {
            let Some(sname) = s.get("name").and_then(Json::as_str) else {
                return Err(ModelError::Yaml {
                    at: Location::file(path),
                    message: "a source has no name:".into(),
                });
            };
            let schema = match s.get("schema").and_then(Json::as_str) {
                Some(t) => jinja::render_value(path, t, &vars, &options.target_schema)?,
                None => sname.to_string(),
            };
            for t in list(s.get("tables")) {
                let Some(tname) = t.get("name").and_then(Json::as_str) else {
                    return Err(ModelError::Yaml {
                        at: Location::file(path),
                        message: format!("a table of source {sname} has no name:"),
                    });
                };
                let identifier = match t.get("identifier").and_then(Json::as_str) {
                    Some(i) => jinja::render_value(path, i, &vars, &options.target_schema)?,
                    None => tname.to_string(),
                };
                let key = (sname.to_string(), tname.to_string());
                sources.insert(
                    key,
                    SourceTable {
                        source: sname.to_string(),
                        table: tname.to_string(),
                        relation: Relation::new(schema.trim(), identifier.trim()),
                        path: path.clone(),
                    },
                );
                let props = Properties {
                    path: path.clone(),
                    config: Map::new(),
                    columns: list(t.get("columns")).cloned().collect(),
                    tests: list(t.get("data_tests"))
                        .chain(list(t.get("tests")))
                        .cloned()
                        .collect(),
                };
                let target = super::schema_tests::Target::Source(sname.into(), tname.into());
                tests.extend(super::schema_tests::from_properties(
                    &target,
                    &props.path,
                    &props.columns,
                    &props.tests,
                )?);
            }
        }

        let mut nodes: Vec<Node> = Vec::new();
        let base_input = RenderInput {
            vars: vars.clone(),
            target_schema: options.target_schema.clone(),
            ..Default::default()
        };
        for dir in &model_paths {
            for file in files_under(root, dir, &["sql"])? {
                let shown = shown_path(root, &file);
                let raw = read_to_string(&file, &shown)?;
                let name = stem(&file);
                let fqn = fqn_of(&name, &name_dirs(root, dir, &file), &project_name);
                let mut config = tree_config(&models_tree, &fqn);
                let props = model_props.get(&name).cloned().unwrap_or_default();
                merge_config(&mut config, &props.config);
                // Parse: refs in either branch of is_incremental() count.
                let mut refs = Vec::new();
                let mut srcs = Vec::new();
                let mut file_config = Map::new();
                for incremental in [false, true] {
                    let input = RenderInput {
                        this: Some(Relation::new(options.target_schema.clone(), name.clone())),
                        is_incremental: incremental,
                        ..base_input.clone()
                    };
                    let (_, captured) = jinja::render(&shown, &raw, &input)?;
                    refs.extend(captured.refs);
                    srcs.extend(captured.sources);
                    file_config.extend(captured.config);
                }
                merge_config(&mut config, &file_config);
                let config = typed_config(&shown, &config, Materialized::View)?;
                if !config.enabled {
                    continue;
                }
                let relation = relation_of(&options.target_schema, &name, &config);
                nodes.push(Node {
                    kind: NodeKind::Model,
                    name,
                    path: shown,
                    raw,
                    config,
                    relation,
                    refs: dedup(refs),
                    sources: dedup(srcs),
                    fqn,
                });
            }
        }
        for dir in &seed_paths {
            for file in files_under(root, dir, &["csv"])? {
                let shown = shown_path(root, &file);
                let raw = read_to_string(&file, &shown)?;
                let name = stem(&file);
                let fqn = fqn_of(&name, &name_dirs(root, dir, &file), &project_name);
                let mut config = tree_config(&seeds_tree, &fqn);
                if let Some(p) = seed_props.get(&name) {
                    merge_config(&mut config, &p.config);
                }
                let config = typed_config(&shown, &config, Materialized::Seed)?;
                if !config.enabled {
                    continue;
                }
                let relation = relation_of(&options.target_schema, &name, &config);
                nodes.push(Node {
                    kind: NodeKind::Seed,
                    name,
                    path: shown,
                    raw,
                    config,
                    relation,
                    refs: vec![],
                    sources: vec![],
                    fqn,
                });
            }
        }
        for dir in &snapshot_paths {
            for file in files_under(root, dir, &["sql"])? {
                let shown = shown_path(root, &file);
                let text = read_to_string(&file, &shown)?;
                for block in snapshot_blocks(&shown, &text)? {
                    let fqn = fqn_of(&block.name, &name_dirs(root, dir, &file), &project_name);
                    let mut config = tree_config(&snapshots_tree, &fqn);
                    if let Some(p) = snapshot_props.get(&block.name) {
                        merge_config(&mut config, &p.config);
                    }
                    let input = RenderInput {
                        this: Some(Relation::new(
                            options.target_schema.clone(),
                            block.name.clone(),
                        )),
                        ..base_input.clone()
                    };
                    let (_, captured) = jinja::render(&shown, &block.body, &input)?;
                    merge_config(&mut config, &captured.config);
                    let typed = typed_config(&shown, &config, Materialized::Snapshot)?;
                    if !typed.enabled {
                        continue;
                    }
                    let relation = match config.get("target_schema").and_then(Json::as_str) {
                        Some(t) if !t.trim().is_empty() => {
                            let schema =
                                jinja::render_value(&shown, t, &vars, &options.target_schema)?;
                            Relation::new(
                                schema.trim(),
                                typed.alias.clone().unwrap_or_else(|| block.name.clone()),
                            )
                        }
                        _ => relation_of(&options.target_schema, &block.name, &typed),
                    };
                    nodes.push(Node {
                        kind: NodeKind::Snapshot,
                        name: block.name,
                        path: shown.clone(),
                        raw: block.body,
                        config: typed,
                        relation,
                        refs: dedup(captured.refs),
                        sources: dedup(captured.sources),
                        fqn,
                    });
                }
            }
        }
        nodes.sort_by(|a, b| a.path.cmp(&b.path));

        // One name, one node.
        let mut by_name: HashMap<&str, &Node> = HashMap::new();
        for n in &nodes {
            if let Some(other) = by_name.insert(&n.name, n) {
                return Err(ModelError::Invalid {
                    at: Location::file(&n.path),
                    message: format!(
                        "two models or seeds are named '{}' (also {}); names must be unique",
                        n.name, other.path
                    ),
                });
            }
        }
        // Every ref and source resolves.
        for n in &nodes {
            for r in &n.refs {
                if !by_name.contains_key(r.as_str()) {
                    return Err(ModelError::MissingRef {
                        at: Location::line(&n.path, line_of_call(&n.raw, "ref", r)),
                        message: format!(
                            "model '{}' depends on '{r}' (ref('{r}')), which is not a model or seed of this project",
                            n.name
                        ),
                    });
                }
            }
            for (s, t) in &n.sources {
                if !sources.contains_key(&(s.clone(), t.clone())) {
                    return Err(ModelError::MissingRef {
                        at: Location::line(&n.path, line_of_call(&n.raw, "source", t)),
                        message: format!(
                            "model '{}' reads source('{s}', '{t}'), which no sources: block declares",
                            n.name
                        ),
                    });
                }
            }
        }

        // Schema tests of models and seeds.
        for n in &nodes {
            let props = match n.kind {
                NodeKind::Model => model_props.get(&n.name),
                NodeKind::Seed => seed_props.get(&n.name),
                NodeKind::Snapshot => snapshot_props.get(&n.name),
            };
            if let Some(p) = props {
                let target = super::schema_tests::Target::Node(n.name.clone());
                tests.extend(super::schema_tests::from_properties(
                    &target, &p.path, &p.columns, &p.tests,
                )?);
            }
        }
        // Singular tests.
        for dir in &test_paths {
            for file in files_under(root, dir, &["sql"])? {
                let shown = shown_path(root, &file);
                let raw = read_to_string(&file, &shown)?;
                let (_, captured) = jinja::render(&shown, &raw, &base_input)?;
                tests.push(TestDef {
                    name: stem(&file),
                    path: shown,
                    kind: TestKind::Singular { sql: raw },
                    attached: None,
                    refs: dedup(captured.refs),
                    sources: dedup(captured.sources),
                    warn: matches!(
                        captured.config.get("severity").and_then(Json::as_str),
                        Some(s) if s.eq_ignore_ascii_case("warn")
                    ),
                    where_clause: None,
                });
            }
        }
        for t in &tests {
            for r in &t.refs {
                if !by_name.contains_key(r.as_str()) {
                    return Err(ModelError::MissingRef {
                        at: Location::file(&t.path),
                        message: format!(
                            "test '{}' refers to '{r}', which is not a model or seed of this project",
                            t.name
                        ),
                    });
                }
            }
            for (s, tb) in &t.sources {
                if !sources.contains_key(&(s.clone(), tb.clone())) {
                    return Err(ModelError::MissingRef {
                        at: Location::file(&t.path),
                        message: format!(
                            "test '{}' reads source('{s}', '{tb}'), which no sources: block declares",
                            t.name
                        ),
                    });
                }
            }
        }
        // dbt names generic tests by their arguments; keep names unique when two collide.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for t in &mut tests {
            let n = seen.entry(t.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                t.name = format!("{}_{}", t.name, n);
            }
        }

        Ok(Project {
            root: root.to_path_buf(),
            name: project_name,
            vars,
            target_schema: options.target_schema.clone(),
            nodes,
            sources,
            tests,
        })
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The relation a node is built as: dbt's default `generate_schema_name` (custom schemas
/// are appended to the target schema) and alias.
fn relation_of(target: &str, name: &str, config: &NodeConfig) -> Relation {
    let schema = match &config.schema {
        Some(s) if !s.trim().is_empty() => format!("{target}_{}", s.trim()),
        _ => target.to_string(),
    };
    Relation::new(schema, config.alias.clone().unwrap_or_else(|| name.into()))
}

/// Parses YAML into JSON values (one value model for configs and vars).
fn parse_yaml(shown: &str, text: &str) -> Result<Json> {
    let v: serde_norway::Value = serde_norway::from_str(text).map_err(|e| ModelError::Yaml {
        at: Location::line(shown, e.location().map(|l| l.line())),
        message: e.to_string(),
    })?;
    serde_json::to_value(v).map_err(|e| ModelError::Yaml {
        at: Location::file(shown),
        message: e.to_string(),
    })
}

/// Project vars (global ones and those scoped to this project) overlaid with `--vars`.
fn merge_vars(project: &str, vars: Option<&Json>, cli: Option<&str>) -> Result<Map<String, Json>> {
    let mut out = Map::new();
    if let Some(Json::Object(m)) = vars {
        for (k, v) in m {
            match v {
                Json::Object(scoped) if k == project => {
                    out.extend(scoped.clone());
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if let Some(text) = cli {
        match parse_yaml("--vars", text)? {
            Json::Object(m) => out.extend(m),
            Json::Null => {}
            _ => {
                return Err(ModelError::Yaml {
                    at: Location::file("--vars"),
                    message: "--vars must be a YAML mapping, like '{gap_minutes: 30}'".into(),
                });
            }
        }
    }
    Ok(out)
}

fn paths_of(doc: &Json, key: &str, default: &[&str]) -> Vec<String> {
    match doc.get(key) {
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_string)
            .collect(),
        Some(Json::String(s)) => vec![s.clone()],
        _ => default.iter().map(|s| s.to_string()).collect(),
    }
}

fn list(v: Option<&Json>) -> impl Iterator<Item = &Json> {
    v.and_then(Json::as_array).into_iter().flatten()
}

/// Files with one of `exts` under `root/dir`, sorted (so loads are deterministic).
fn files_under(root: &Path, dir: &str, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let base = root.join(dir);
    let mut out = Vec::new();
    if !base.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![base];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ModelError::Io {
            path: shown_path(root, &d),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| ModelError::Io {
                path: shown_path(root, &d),
                source,
            })?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn shown_path(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The folders between the model path and the file.
fn name_dirs(root: &Path, dir: &str, file: &Path) -> Vec<String> {
    let base = root.join(dir);
    file.parent()
        .and_then(|p| p.strip_prefix(&base).ok())
        .map(|rel| {
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn fqn_of(name: &str, dirs: &[String], project: &str) -> Vec<String> {
    let mut f = vec![project.to_string()];
    f.extend(dirs.iter().cloned());
    f.push(name.to_string());
    f
}

fn is_config_entry(key: &str, value: &Json) -> Option<String> {
    if let Some(k) = key.strip_prefix('+') {
        return Some(k.replace('-', "_"));
    }
    if CONFIG_KEYS.contains(&key) && !value.is_object() {
        return Some(key.replace('-', "_"));
    }
    if matches!(
        key,
        "column_types" | "meta" | "docs" | "persist_docs" | "grants"
    ) {
        return Some(key.to_string());
    }
    None
}

/// Configs from a `models:`/`seeds:` tree of `dbt_project.yml` along `fqn`: deeper levels
/// win, tags accumulate.
fn tree_config(tree: &Json, fqn: &[String]) -> Map<String, Json> {
    let mut out = Map::new();
    let mut node = tree;
    let mut level = 0;
    while let Json::Object(m) = node {
        let mut here = Map::new();
        for (k, v) in m {
            if let Some(key) = is_config_entry(k, v) {
                here.insert(key, v.clone());
            }
        }
        merge_config(&mut out, &here);
        match fqn.get(level).and_then(|part| m.get(part)) {
            Some(next) if next.is_object() => {
                node = next;
                level += 1;
            }
            _ => break,
        }
    }
    out
}

/// Overlays `with` onto `base`: later wins, except tags, which accumulate.
fn merge_config(base: &mut Map<String, Json>, with: &Map<String, Json>) {
    for (k, v) in with {
        let k = k.replace('-', "_");
        if k == "tags" {
            let mut tags = strings(base.get("tags"));
            for t in strings(Some(v)) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            base.insert(k, Json::from(tags));
        } else {
            base.insert(k, v.clone());
        }
    }
}

/// A string or a list of strings as a list.
fn strings(v: Option<&Json>) -> Vec<String> {
    match v {
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

fn typed_config(path: &str, c: &Map<String, Json>, default: Materialized) -> Result<NodeConfig> {
    let materialized = match c.get("materialized").and_then(Json::as_str) {
        None => default,
        Some(_) if default == Materialized::Seed => Materialized::Seed,
        Some(_) if default == Materialized::Snapshot => Materialized::Snapshot,
        Some("view") => Materialized::View,
        Some("table") => Materialized::Table,
        Some("incremental") => Materialized::Incremental,
        Some("ephemeral") => Materialized::Ephemeral,
        Some(other) => {
            return Err(ModelError::Invalid {
                at: Location::file(path),
                message: format!(
                    "materialized='{other}' is not supported (use view, table, incremental or ephemeral)"
                ),
            });
        }
    };
    let incremental_strategy = c
        .get("incremental_strategy")
        .and_then(Json::as_str)
        .map(str::to_string);
    if let Some(s) = &incremental_strategy
        && !matches!(s.as_str(), "append" | "delete+insert" | "merge")
    {
        return Err(ModelError::Invalid {
            at: Location::file(path),
            message: format!(
                "incremental_strategy='{s}' is not supported (use append, delete+insert or merge)"
            ),
        });
    }
    let column_types = c
        .get("column_types")
        .and_then(Json::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|t| (k.clone(), t.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let unique_key: Vec<String> = strings(c.get("unique_key"))
        .into_iter()
        .flat_map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let snapshot = if materialized == Materialized::Snapshot {
        Some(snapshot_config(path, c, &unique_key)?)
    } else {
        None
    };
    Ok(NodeConfig {
        materialized,
        unique_key,
        incremental_strategy,
        schema: c.get("schema").and_then(Json::as_str).map(str::to_string),
        alias: c.get("alias").and_then(Json::as_str).map(str::to_string),
        tags: strings(c.get("tags")),
        enabled: c.get("enabled").and_then(Json::as_bool).unwrap_or(true),
        column_types,
        pre_hook: strings(c.get("pre_hook")),
        post_hook: strings(c.get("post_hook")),
        full_refresh: c.get("full_refresh").and_then(Json::as_bool),
        snapshot,
    })
}

/// The strategy and hard-delete handling of a snapshot, checked as dbt checks them: a
/// `unique_key` always, `updated_at` for `timestamp`, `check_cols` for `check`.
fn snapshot_config(
    path: &str,
    c: &Map<String, Json>,
    unique_key: &[String],
) -> Result<SnapshotConfig> {
    let invalid = |message: String| ModelError::Invalid {
        at: Location::file(path),
        message,
    };
    if unique_key.is_empty() {
        return Err(invalid("a snapshot needs unique_key=".into()));
    }
    let strategy = match c.get("strategy").and_then(Json::as_str) {
        Some("timestamp") => match c.get("updated_at").and_then(Json::as_str) {
            Some(u) if !u.trim().is_empty() => SnapshotStrategy::Timestamp {
                updated_at: u.trim().to_string(),
            },
            _ => {
                return Err(invalid(
                    "strategy='timestamp' needs updated_at= (the column that says when a row changed)"
                        .into(),
                ));
            }
        },
        Some("check") => match c.get("check_cols") {
            Some(Json::String(s)) if s.eq_ignore_ascii_case("all") => {
                SnapshotStrategy::Check { columns: None }
            }
            Some(v @ (Json::String(_) | Json::Array(_))) => {
                let columns = strings(Some(v));
                if columns.is_empty() {
                    return Err(invalid("check_cols= lists no columns".into()));
                }
                SnapshotStrategy::Check {
                    columns: Some(columns),
                }
            }
            _ => {
                return Err(invalid(
                    "strategy='check' needs check_cols= ('all' or a list of columns)".into(),
                ));
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "strategy='{other}' is not supported (use timestamp or check)"
            )));
        }
        None => {
            return Err(invalid(
                "a snapshot needs strategy= ('timestamp' or 'check')".into(),
            ));
        }
    };
    let hard_deletes = match c.get("hard_deletes").and_then(Json::as_str) {
        Some("invalidate") => HardDeletes::Invalidate,
        Some("ignore") => HardDeletes::Ignore,
        Some(other) => {
            return Err(invalid(format!(
                "hard_deletes='{other}' is not supported (use ignore or invalidate)"
            )));
        }
        None if c.get("invalidate_hard_deletes").and_then(Json::as_bool) == Some(true) => {
            HardDeletes::Invalidate
        }
        None => HardDeletes::Ignore,
    };
    Ok(SnapshotConfig {
        strategy,
        hard_deletes,
    })
}

/// One `{% snapshot name %} ... {% endsnapshot %}` block of a snapshot file.
struct SnapshotBlock {
    name: String,
    /// The text between the tags, preceded by as many newlines as there are lines before
    /// it in the file, so Jinja and SQL errors point at the file's own line numbers.
    body: String,
}

/// The snapshot blocks of a file, in order. Text outside blocks is ignored, as dbt does.
fn snapshot_blocks(shown: &str, text: &str) -> Result<Vec<SnapshotBlock>> {
    static OPEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%-?\s*snapshot\s+([A-Za-z_][A-Za-z0-9_]*)\s*-?%\}")
            .expect("valid regex")
    });
    static CLOSE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%-?\s*endsnapshot\s*-?%\}").expect("valid regex")
    });
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = OPEN.captures_at(text, at) {
        let (Some(whole), Some(name)) = (open.get(0), open.get(1)) else {
            break;
        };
        let line = text[..whole.start()].matches('\n').count() + 1;
        let Some(close) = CLOSE.find_at(text, whole.end()) else {
            return Err(ModelError::Jinja {
                at: Location::line(shown, Some(line)),
                message: format!("snapshot {} has no {{% endsnapshot %}}", name.as_str()),
            });
        };
        let padding = "\n".repeat(text[..whole.end()].matches('\n').count());
        out.push(SnapshotBlock {
            name: name.as_str().to_string(),
            body: format!("{padding}{}", &text[whole.end()..close.start()]),
        });
        at = close.end();
    }
    Ok(out)
}

fn dedup<T: Clone + Eq + std::hash::Hash>(v: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

/// The line of the first `func('...name...')` call in `raw` naming `name`.
fn line_of_call(raw: &str, func: &str, name: &str) -> Option<usize> {
    for (i, line) in raw.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(func) {
            let after = &rest[at + func.len()..];
            let args = after.trim_start();
            if let Some(args) = args.strip_prefix('(') {
                let close = args.find(')').unwrap_or(args.len());
                let inside = &args[..close];
                if inside.contains(&format!("'{name}'")) || inside.contains(&format!("\"{name}\""))
                {
                    return Some(i + 1);
                }
            }
            rest = after;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_configs_nest_and_tags_accumulate() {
        let tree: Json = serde_json::json!({
            "shop": {
                "+materialized": "view",
                "+tags": ["all"],
                "marts": {"+materialized": "table", "tags": "nightly", "orders": {"+alias": "o"}}
            }
        });
        let c = tree_config(&tree, &["shop".into(), "marts".into(), "orders".into()]);
        assert_eq!(c["materialized"], "table");
        assert_eq!(c["alias"], "o");
        assert_eq!(c["tags"], serde_json::json!(["all", "nightly"]));
    }

    #[test]
    fn finds_the_line_of_a_ref() {
        let raw = "select 1\nfrom {{ ref( 'a') }}\njoin {{ ref(\"b\") }}";
        assert_eq!(line_of_call(raw, "ref", "b"), Some(3));
        assert_eq!(line_of_call(raw, "ref", "a"), Some(2));
        assert_eq!(line_of_call(raw, "ref", "c"), None);
    }
}
