//! The dependency graph of a project and node selection.
//!
//! Models and seeds are joined by their `ref()`s; a cycle is an error that names every model
//! in it and its file. Selection follows dbt's syntax for the common cases: `name`,
//! `+name` (with its ancestors), `name+` (with its descendants), `tag:x`, `path:dir`,
//! `source:s` (models reading source `s`), globs with `*`, several selectors separated by
//! spaces (a union), selectors joined by commas (an intersection, as in dbt), and
//! `--exclude` with the same syntax.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::error::{ModelError, Result};
use super::project::{Materialized, Project};

/// Parents and children of every node, by index into `Project::nodes`.
#[derive(Debug, Clone)]
pub struct Graph {
    /// `parents[i]`: the nodes node `i` refs.
    pub parents: Vec<Vec<usize>>,
    /// `children[i]`: the nodes that ref node `i`.
    pub children: Vec<Vec<usize>>,
    /// Nodes in an order where every node comes after its parents.
    pub order: Vec<usize>,
}

impl Graph {
    /// Builds the graph of `project`, failing on a cycle.
    pub fn build(project: &Project) -> Result<Graph> {
        let index: HashMap<&str, usize> = project
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let n = project.nodes.len();
        let mut parents = vec![Vec::new(); n];
        let mut children = vec![Vec::new(); n];
        for (i, node) in project.nodes.iter().enumerate() {
            for r in &node.refs {
                if let Some(&p) = index.get(r.as_str()) {
                    parents[i].push(p);
                    children[p].push(i);
                }
            }
        }
        // Kahn's algorithm; what is left over sits on a cycle or behind one.
        let mut pending: Vec<usize> = parents.iter().map(Vec::len).collect();
        let mut queue: VecDeque<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = queue.pop_front() {
            order.push(i);
            for &c in &children[i] {
                pending[c] -= 1;
                if pending[c] == 0 {
                    queue.push_back(c);
                }
            }
        }
        if order.len() < n {
            let cycle = find_cycle(&parents, &pending);
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| project.nodes[i].name.as_str())
                .collect();
            let mut files: Vec<&str> = cycle
                .iter()
                .take(cycle.len().saturating_sub(1))
                .map(|&i| project.nodes[i].path.as_str())
                .collect();
            files.sort();
            return Err(ModelError::Cycle {
                chain: names.join(" -> "),
                files: files.join(", "),
            });
        }
        Ok(Graph {
            parents,
            children,
            order,
        })
    }

    /// Every ancestor of `i` (not `i` itself).
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        walk(i, &self.parents)
    }

    /// Every descendant of `i` (not `i` itself).
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        walk(i, &self.children)
    }

    /// The nodes that must be built before `i` among `built`: its parents, looking through
    /// ephemeral models (which are never built themselves) to their own parents.
    pub fn built_parents(&self, project: &Project, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<usize> = self.parents[i].clone();
        let mut seen = BTreeSet::new();
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            if project.nodes[p].config.materialized == Materialized::Ephemeral {
                stack.extend(self.parents[p].iter().copied());
            } else {
                out.insert(p);
            }
        }
        out
    }
}

fn walk(i: usize, edges: &[Vec<usize>]) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut stack = edges[i].clone();
    while let Some(x) = stack.pop() {
        if out.insert(x) {
            stack.extend(edges[x].iter().copied());
        }
    }
    out
}

/// A cycle among the nodes Kahn's algorithm could not order, as `a, b, ..., a`.
fn find_cycle(parents: &[Vec<usize>], pending: &[usize]) -> Vec<usize> {
    let Some(start) = (0..parents.len()).find(|&i| pending[i] > 0) else {
        return vec![];
    };
    // Follow unresolved parents until a node repeats: that loop is a cycle.
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let Some(&next) = parents[cur].iter().find(|&&p| pending[p] > 0) else {
            return path;
        };
        if let Some(&at) = pos.get(&next) {
            // path[at..] walks parents; show it in dependency order (parent -> child).
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

/// Splits selector arguments (`--select a,b "c d"`) into single selectors.
fn tokens(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| {
            a.split_whitespace()
                .map(str::trim)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn glob(pattern: &str, s: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == s;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = s;
    for (k, part) in parts.iter().enumerate() {
        if k == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if k == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

fn matches_method(project: &Project, i: usize, method: &str) -> Result<bool> {
    let node = &project.nodes[i];
    Ok(if let Some(tag) = method.strip_prefix("tag:") {
        node.config.tags.iter().any(|t| glob(tag, t))
    } else if let Some(p) = method.strip_prefix("path:") {
        let p = p.trim_end_matches('/');
        node.path == p || node.path.starts_with(&format!("{p}/")) || glob(p, &node.path)
    } else if let Some(s) = method.strip_prefix("source:") {
        let (src, table) = s.split_once('.').unwrap_or((s, "*"));
        node.sources
            .iter()
            .any(|(a, b)| glob(src, a) && glob(table, b))
    } else if let Some(m) = method.strip_prefix("config.materialized:") {
        glob(m, node.config.materialized.as_str())
    } else if let Some(n) = method.strip_prefix("fqn:") {
        glob(n, &node.fqn.join("."))
    } else if method.contains(':') {
        return Err(ModelError::Selector {
            selector: method.to_string(),
            message: "known methods are tag:, path:, source:, fqn:, config.materialized:".into(),
        });
    } else {
        glob(method, &node.name) || glob(method, &node.fqn.join("."))
    })
}

fn select_one(project: &Project, graph: &Graph, selector: &str) -> Result<BTreeSet<usize>> {
    let mut s = selector;
    let up = s.starts_with('+');
    if up {
        s = &s[1..];
    }
    let down = s.ends_with('+');
    if down {
        s = &s[..s.len() - 1];
    }
    if s.is_empty() {
        return Err(ModelError::Selector {
            selector: selector.to_string(),
            message: "nothing to select".into(),
        });
    }
    let mut out = BTreeSet::new();
    for i in 0..project.nodes.len() {
        if matches_method(project, i, s)? {
            out.insert(i);
            if up {
                out.extend(graph.ancestors(i));
            }
            if down {
                out.extend(graph.descendants(i));
            }
        }
    }
    Ok(out)
}

/// One space-separated selector: comma-joined parts intersect, as in dbt
/// (`tag:marts,stg_orders+` is what is both tagged and downstream of stg_orders).
fn select_term(project: &Project, graph: &Graph, term: &str) -> Result<BTreeSet<usize>> {
    let mut parts = term.split(',').map(str::trim).filter(|p| !p.is_empty());
    let Some(first) = parts.next() else {
        return Ok(BTreeSet::new());
    };
    let mut out = select_one(project, graph, first)?;
    for p in parts {
        let other = select_one(project, graph, p)?;
        out.retain(|i| other.contains(i));
    }
    Ok(out)
}

/// The nodes selected by `select` (everything when empty) minus those matched by `exclude`.
/// A selector that matches no node is an error, so a typo does not silently run nothing.
pub fn select(
    project: &Project,
    graph: &Graph,
    select: &[String],
    exclude: &[String],
) -> Result<BTreeSet<usize>> {
    let sel = tokens(select);
    let mut out: BTreeSet<usize> = if sel.is_empty() {
        (0..project.nodes.len()).collect()
    } else {
        let mut out = BTreeSet::new();
        for s in &sel {
            let hit = select_term(project, graph, s)?;
            let is_test = project
                .tests
                .iter()
                .any(|t| glob(s.trim_matches('+'), &t.name));
            if hit.is_empty() && !is_test {
                return Err(ModelError::Selector {
                    selector: s.clone(),
                    message: "matches no model, seed or test of this project".into(),
                });
            }
            out.extend(hit);
        }
        out
    };
    for s in tokens(exclude) {
        for i in select_term(project, graph, &s)? {
            out.remove(&i);
        }
    }
    Ok(out)
}

/// Tests to run for a selection: a test runs when everything it reads is selected (or
/// not a node at all, like a source), or when it is named by a selector itself.
pub fn selected_tests(
    project: &Project,
    selected: &BTreeSet<usize>,
    select: &[String],
    exclude: &[String],
) -> Vec<usize> {
    let index: HashMap<&str, usize> = project
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let sel = tokens(select);
    let excl = tokens(exclude);
    project
        .tests
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            if excl.iter().any(|e| glob(e, &t.name)) {
                return false;
            }
            if sel.iter().any(|s| glob(s, &t.name)) {
                return true;
            }
            let reads: Vec<usize> = t
                .refs
                .iter()
                .filter_map(|r| index.get(r.as_str()).copied())
                .collect();
            if reads.is_empty() {
                // Source-only tests belong to whoever selects everything.
                return sel.is_empty()
                    || sel.iter().any(|s| {
                        t.sources.iter().any(|(a, b)| {
                            s.strip_prefix("source:")
                                .is_some_and(|x| glob(x, a) || glob(x, &format!("{a}.{b}")))
                        })
                    });
            }
            reads.iter().all(|i| selected.contains(i))
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("stg_*", "stg_orders"));
        assert!(glob("*_daily", "users_daily"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("stg_*", "orders"));
        assert!(glob("x", "x"));
    }

    #[test]
    fn cycles_are_shown_in_order() {
        // 0 <- 1 <- 2 <- 0 (parents)
        let parents = vec![vec![2], vec![0], vec![1]];
        let c = find_cycle(&parents, &[1, 1, 1]);
        assert_eq!(c.len(), 4);
        assert_eq!(c.first(), c.last());
    }
}
