//! Common table expressions that a query reads more than once are computed once.
//!
//! DataFusion inlines every reference to a CTE, so `WITH e AS (...)` read by three later CTEs
//! and two scalar subqueries scans and filters its tables six times. PostgreSQL (since 12)
//! computes a CTE once when it is referenced more than once, or when it says
//! `AS MATERIALIZED`, and inlines it when it says `AS NOT MATERIALIZED`; tally does the same:
//! - [`mark_hints`] carries `[NOT] MATERIALIZED` from the SQL text into the plan as
//!   [`CteHint`] nodes, because the plan alone no longer names its CTEs' options;
//! - [`ShareCtes`], the last analyzer rule, finds the repeated CTE subtrees (the SQL planner
//!   clones a CTE's plan into every reference, so repeated references are equal subtrees),
//!   replaces each reference with a [`CteRef`] leaf and hangs the bodies under one
//!   [`WithCtes`] node at the top of the query, where the optimizer still optimizes each
//!   body once;
//! - [`exec`] plans them as [`exec::MaterializeCtesExec`] and [`exec::CteScanExec`]: the
//!   first reader runs the body once into memory (spilling to disk past the memory pool),
//!   every reader then scans that.
//!
//! A CTE whose body is only a projection of a table scan stays inlined unless it says
//! `AS MATERIALIZED`: reading the table twice, with each reader's filters pushed into the
//! scan, costs less than buffering it.

pub mod exec;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Result as DFResult};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::sqlparser::ast::{CteAsMaterialized, Query, Statement, Visit, Visitor};

use crate::statements::names::ident;

/// Carries a CTE's `AS MATERIALIZED` (`materialized`) or `AS NOT MATERIALIZED` hint from the
/// SQL text to [`ShareCtes`], which removes it. It wraps each reference to the CTE.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CteHint {
    materialized: bool,
    input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for CteHint {
    fn name(&self) -> &str {
        "CteHint"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let not = if self.materialized { "" } else { "NOT " };
        write!(f, "CteHint: {not}MATERIALIZED")
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        Ok(CteHint {
            materialized: self.materialized,
            input: inputs.swap_remove(0),
        })
    }
}

/// A read of the shared CTE number `id` (named `name`), whose rows [`WithCtes`] computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CteRef {
    id: usize,
    name: String,
    schema: DFSchemaRef,
}

impl PartialOrd for CteRef {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.id, &self.name).partial_cmp(&(other.id, &other.name))
    }
}

impl UserDefinedLogicalNodeCore for CteRef {
    fn name(&self) -> &str {
        "CteRef"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        Vec::new()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CteRef: {} (#{})", self.name, self.id)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        _inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        Ok(self.clone())
    }
}

/// The query (first input) and the bodies of the CTEs it shares (the other inputs, body
/// `i + 1` being CTE number `ids[i]`). Its rows are the query's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WithCtes {
    ids: Vec<usize>,
    inputs: Vec<LogicalPlan>,
}

impl PartialOrd for WithCtes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.ids.partial_cmp(&other.ids)
    }
}

impl WithCtes {
    /// The CTE numbers of the bodies, in input order (after the query).
    pub fn ids(&self) -> &[usize] {
        &self.ids
    }
}

impl UserDefinedLogicalNodeCore for WithCtes {
    fn name(&self) -> &str {
        "WithCtes"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.inputs.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        self.inputs[0].schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WithCtes: shared={:?}", self.ids)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        Ok(WithCtes {
            ids: self.ids.clone(),
            inputs,
        })
    }

    /// The query needs only the columns asked of it; a body needs all of its columns, as
    /// its readers differ.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let mut needed = vec![output_columns.to_vec()];
        for body in &self.inputs[1..] {
            needed.push((0..body.schema().fields().len()).collect());
        }
        Some(needed)
    }
}

/// The CTEs of a statement that say `AS MATERIALIZED` (true) or `AS NOT MATERIALIZED`.
struct HintCollector(HashMap<String, bool>);

impl Visitor for HintCollector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> std::ops::ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                if let Some(m) = &cte.materialized {
                    let materialized = matches!(m, CteAsMaterialized::Materialized);
                    self.0.insert(ident(&cte.alias.name), materialized);
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// The `AS [NOT] MATERIALIZED` hints of a statement's CTEs, by CTE name.
#[derive(Debug, Default)]
pub struct Hints(HashMap<String, bool>);

impl Hints {
    /// Reads the hints of every WITH clause in `stmt`, nested ones included.
    pub fn of(stmt: &Statement) -> Hints {
        let mut hints = HintCollector(HashMap::new());
        let _ = stmt.visit(&mut hints);
        Hints(hints.0)
    }

    /// Wraps every reference to a hinted CTE in `plan` (the statement's plan) in a
    /// [`CteHint`], for [`ShareCtes`] to honour. Without hints the plan is returned as is.
    pub fn mark(&self, plan: LogicalPlan) -> DFResult<LogicalPlan> {
        if self.0.is_empty() {
            return Ok(plan);
        }
        mark_hints(&self.0, plan)
    }
}

fn mark_hints(hints: &HashMap<String, bool>, plan: LogicalPlan) -> DFResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let hint = match &node {
            LogicalPlan::SubqueryAlias(a) => hints.get(a.alias.table()).copied(),
            _ => None,
        };
        Ok(match hint {
            Some(materialized) => Transformed::yes(LogicalPlan::Extension(Extension {
                node: Arc::new(CteHint {
                    materialized,
                    input: node,
                }),
            })),
            None => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

/// The analyzer rule that shares repeated CTEs (see the module documentation). It runs
/// last, after type coercion, so that a shared body's schema is final.
#[derive(Debug, Default)]
pub struct ShareCtes;

/// [`ShareCtes`]'s name, to take it out of a session state whose planner cannot plan
/// [`CteRef`] (delta-rs's MERGE plans with its own).
pub const RULE_NAME: &str = "tally_share_ctes";

impl AnalyzerRule for ShareCtes {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        let plan = match plan {
            // The shared bodies hang under the query a DML statement, a COPY or an EXPLAIN
            // ANALYZE reads, not above the statement itself.
            LogicalPlan::Dml(mut d) => {
                d.input = Arc::new(share(Arc::unwrap_or_clone(d.input))?);
                LogicalPlan::Dml(d)
            }
            LogicalPlan::Copy(mut c) => {
                c.input = Arc::new(share(Arc::unwrap_or_clone(c.input))?);
                LogicalPlan::Copy(c)
            }
            LogicalPlan::Analyze(mut a) => {
                a.input = Arc::new(share(Arc::unwrap_or_clone(a.input))?);
                LogicalPlan::Analyze(a)
            }
            LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::DescribeTable(_) => plan,
            query => share(query)?,
        };
        strip_hints(plan)
    }

    fn name(&self) -> &str {
        RULE_NAME
    }
}

fn strip_hints(plan: LogicalPlan) -> DFResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Extension(e) if e.node.as_any().is::<CteHint>() => {
            let input = e.node.inputs()[0].clone();
            Ok(Transformed::yes(input))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

fn hint_of(node: &LogicalPlan) -> Option<&CteHint> {
    match node {
        LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<CteHint>(),
        _ => None,
    }
}

/// Whether a CTE body is only columns of one table: reading the table again is cheaper
/// than buffering it, and leaves each reader's filters free to reach the scan.
fn is_plain_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => {
            p.expr.iter().all(|e| {
                matches!(e, Expr::Column(_))
                    || matches!(e, Expr::Alias(a) if matches!(*a.expr, Expr::Column(_)))
            }) && is_plain_scan(&p.input)
        }
        LogicalPlan::SubqueryAlias(a) => is_plain_scan(&a.input),
        LogicalPlan::TableScan(t) => t.filters.is_empty() && t.fetch.is_none(),
        _ => false,
    }
}

/// Whether a body reads columns of an enclosing query (a WITH inside a correlated
/// subquery): it differs per outer row, so it cannot be computed once.
fn is_correlated(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        let mut found = false;
        node.apply_expressions(|e| {
            found |= e.exists(|e| Ok(matches!(e, Expr::OuterReferenceColumn(..))))?;
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        Ok(found)
    })
    .unwrap_or(true)
}

/// Shares the repeated CTE references of one query.
fn share(plan: LogicalPlan) -> DFResult<LogicalPlan> {
    let mut counts: HashMap<LogicalPlan, usize> = HashMap::new();
    let mut inline: HashSet<LogicalPlan> = HashSet::new();
    let mut forced: HashSet<LogicalPlan> = HashSet::new();
    plan.apply_with_subqueries(|node| {
        if let Some(hint) = hint_of(node) {
            if hint.materialized {
                forced.insert(hint.input.clone());
            } else {
                inline.insert(hint.input.clone());
            }
        }
        if let LogicalPlan::SubqueryAlias(a) = node {
            // `FROM e AS x` wraps e's alias in another: the inner one is the CTE.
            let wraps_alias = matches!(a.input.as_ref(), LogicalPlan::SubqueryAlias(_))
                || hint_of(&a.input).is_some();
            if !wraps_alias {
                *counts.entry(node.clone()).or_default() += 1;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let mut ids: HashMap<LogicalPlan, usize> = HashMap::new();
    for (node, count) in counts {
        let LogicalPlan::SubqueryAlias(a) = &node else {
            continue;
        };
        let wanted = forced.contains(&node) || (count > 1 && !is_plain_scan(&a.input));
        if wanted && !inline.contains(&node) && !is_correlated(&node) {
            let id = ids.len();
            ids.insert(node, id);
        }
    }
    if ids.is_empty() {
        return Ok(plan);
    }
    let mut rewriter = Rewriter {
        bodies: vec![None; ids.len()],
        ids,
    };
    let main = rewriter.rewrite(plan)?;
    let mut inputs = vec![main];
    let mut body_ids = Vec::new();
    // Every candidate is met while rewriting, in the query or in another body.
    for (id, body) in rewriter.bodies.into_iter().enumerate() {
        if let Some(body) = body {
            body_ids.push(id);
            inputs.push(body);
        }
    }
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(WithCtes {
            ids: body_ids,
            inputs,
        }),
    }))
}

struct Rewriter {
    ids: HashMap<LogicalPlan, usize>,
    bodies: Vec<Option<LogicalPlan>>,
}

impl Rewriter {
    /// Replaces each shared CTE below `plan` (and in its subqueries) with a [`CteRef`],
    /// recording the CTE's body (itself rewritten) the first time it is met.
    fn rewrite(&mut self, plan: LogicalPlan) -> DFResult<LogicalPlan> {
        plan.transform_down_with_subqueries(|node| {
            let Some(&id) = self.ids.get(&node) else {
                return Ok(Transformed::no(node));
            };
            let LogicalPlan::SubqueryAlias(alias) = &node else {
                return Ok(Transformed::no(node));
            };
            let reference = LogicalPlan::Extension(Extension {
                node: Arc::new(CteRef {
                    id,
                    name: alias.alias.to_string(),
                    schema: node.schema().clone(),
                }),
            });
            if self.bodies[id].is_none() {
                let body = node.map_children(|child| self.rewrite(child).map(Transformed::yes))?;
                self.bodies[id] = Some(body.data);
            }
            Ok(Transformed::new(reference, true, TreeNodeRecursion::Jump))
        })
        .map(|t| t.data)
    }
}

/// `state` without [`ShareCtes`], for plans that a planner other than tally's executes:
/// delta-rs's MERGE plans its source with its own planner, which knows no [`CteRef`].
pub fn without_sharing(
    state: datafusion::execution::SessionState,
) -> datafusion::execution::SessionState {
    let rules = state
        .analyzer()
        .rules
        .iter()
        .filter(|r| r.name() != RULE_NAME)
        .cloned()
        .collect();
    datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_analyzer_rules(rules)
        .build()
}
