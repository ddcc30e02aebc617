//! Unit and property tests of the identity graph.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::graph::IdentityGraph;
use super::options::StitchOptions;

type E = (String, String, String, String, i64);
type Map = BTreeMap<(String, String), (String, u64)>;

fn e(lt: &str, lv: &str, rt: &str, rv: &str, ts: i64) -> E {
    (lt.into(), lv.into(), rt.into(), rv.into(), ts)
}

fn batch(edges: &[E]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("left_type", DataType::Utf8, true),
        Field::new("left_value", DataType::Utf8, true),
        Field::new("right_type", DataType::Utf8, true),
        Field::new("right_value", DataType::Utf8, true),
        Field::new(
            "event_ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
    ]));
    let col = |f: fn(&E) -> &str| Arc::new(StringArray::from_iter_values(edges.iter().map(f))) as _;
    RecordBatch::try_new(
        schema,
        vec![
            col(|e| &e.0),
            col(|e| &e.1),
            col(|e| &e.2),
            col(|e| &e.3),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                edges.iter().map(|e| e.4),
            )),
        ],
    )
    .unwrap()
}

/// Applies assignment rows to `out`: a row sets its identifier's profile, a tombstone (null
/// profile id) removes the identifier.
fn apply(out: &mut Map, b: &RecordBatch) {
    let s = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let (t, v, p) = (s(0), s(1), s(2));
    let n = b
        .column(3)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .clone();
    for i in 0..b.num_rows() {
        let key = (t.value(i).to_string(), v.value(i).to_string());
        if p.is_null(i) {
            out.remove(&key);
        } else {
            out.insert(key, (p.value(i).to_string(), n.value(i) as u64));
        }
    }
}

/// Reads the whole assignment of a resolved graph.
fn read(g: &IdentityGraph) -> Map {
    let mut out = Map::new();
    for b in g.assignments(7, None) {
        apply(&mut out, &b.unwrap());
    }
    out
}

fn stitch(edges: &[E], opts: &StitchOptions) -> Map {
    let mut g = IdentityGraph::new(opts.clone());
    for chunk in edges.chunks(5) {
        g.add_edges(&batch(chunk)).unwrap();
    }
    g.resolve();
    read(&g)
}

/// The partition as a set of sets, ids ignored.
fn partition(m: &Map) -> BTreeSet<BTreeSet<(String, String)>> {
    let mut groups: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    for (k, (p, _)) in m {
        groups.entry(p).or_default().insert(k.clone());
    }
    groups.into_values().collect()
}

fn same_profile(m: &Map, a: (&str, &str), b: (&str, &str)) -> bool {
    let pa = &m[&(a.0.to_string(), a.1.to_string())].0;
    let pb = &m[&(b.0.to_string(), b.1.to_string())].0;
    pa == pb
}

#[test]
fn components_and_sizes() {
    let edges = vec![
        e("anonymous_id", "a1", "user_id", "u1", 1),
        e("user_id", "u1", "email", "x@y.z", 2),
        e("anonymous_id", "a2", "device_id", "d2", 3),
    ];
    let m = stitch(&edges, &StitchOptions::default());
    assert_eq!(m.len(), 5);
    assert!(same_profile(&m, ("anonymous_id", "a1"), ("email", "x@y.z")));
    assert!(!same_profile(
        &m,
        ("anonymous_id", "a1"),
        ("anonymous_id", "a2")
    ));
    assert_eq!(m[&("user_id".into(), "u1".into())].1, 3);
    assert_eq!(m[&("device_id".into(), "d2".into())].1, 2);
    // Named after the user id (highest priority): the same id as a lone u1 would get.
    let lone = stitch(
        &[e("user_id", "u1", "user_id", "u1", 0)],
        &StitchOptions::default(),
    );
    assert_eq!(
        m[&("email".into(), "x@y.z".into())].0,
        lone[&("user_id".into(), "u1".into())].0
    );
    assert_eq!(lone[&("user_id".into(), "u1".into())].0.len(), 32);
}

#[test]
fn blocklisted_values_never_merge() {
    let edges = vec![
        e("anonymous_id", "a1", "user_id", "null", 1),
        e("anonymous_id", "a2", "user_id", "NULL", 1),
        e(
            "anonymous_id",
            "a3",
            "device_id",
            "00000000-0000-0000-0000-000000000000",
            1,
        ),
        e(
            "anonymous_id",
            "a4",
            "device_id",
            "00000000-0000-0000-0000-000000000000",
            1,
        ),
        e("anonymous_id", "a5", "email", "test@example.com", 1),
        e("anonymous_id", "a6", "email", "Test@Example.com ", 1),
    ];
    let opts = StitchOptions::from_json(r#"{"blocklist":{"email":["test@example.com"]}}"#).unwrap();
    let m = stitch(&edges, &opts);
    // Blocked identifiers are left out; their partners are singletons.
    assert_eq!(m.len(), 6, "{m:?}");
    assert!(m.values().all(|(_, n)| *n == 1));
    // Without the blocklists everything merges pairwise (case-sensitive values stay apart).
    let open = StitchOptions::from_json(r#"{"default_blocklist":false}"#).unwrap();
    let m = stitch(&edges, &open);
    assert!(same_profile(
        &m,
        ("anonymous_id", "a1"),
        ("user_id", "null")
    ));
    assert!(same_profile(
        &m,
        ("anonymous_id", "a3"),
        ("anonymous_id", "a4")
    ));
    assert!(same_profile(
        &m,
        ("anonymous_id", "a5"),
        ("email", "test@example.com")
    ));
}

#[test]
fn kiosk_shared_by_two_users_does_not_merge_them() {
    let edges = vec![
        e("anonymous_id", "a1", "device_id", "kiosk", 10),
        e("anonymous_id", "a1", "user_id", "alice", 11),
        e("anonymous_id", "a2", "device_id", "kiosk", 20),
        e("anonymous_id", "a2", "user_id", "bob", 21),
    ];
    let opts = StitchOptions::default();
    let m = stitch(&edges, &opts);
    assert!(!same_profile(&m, ("user_id", "alice"), ("user_id", "bob")));
    assert!(same_profile(
        &m,
        ("user_id", "alice"),
        ("anonymous_id", "a1")
    ));
    assert!(same_profile(&m, ("user_id", "bob"), ("anonymous_id", "a2")));
    // The earlier evidence wins the kiosk, whatever the input order.
    assert!(same_profile(
        &m,
        ("user_id", "alice"),
        ("device_id", "kiosk")
    ));
    let mut rev = edges.clone();
    rev.reverse();
    assert_eq!(stitch(&rev, &opts), m);
    // With limits off the kiosk merges them.
    let off = StitchOptions::from_json(r#"{"limits":null}"#).unwrap();
    let m = stitch(&edges, &off);
    assert!(same_profile(&m, ("user_id", "alice"), ("user_id", "bob")));
}

#[test]
fn aliases_are_never_refused_by_limits() {
    let edges = vec![
        e("user_id", "legacy", "user_id", "new", 50),
        e("anonymous_id", "a1", "user_id", "legacy", 1),
        e("anonymous_id", "a1", "user_id", "new", 60),
        e("user_id", "new", "email", "n@x.y", 61),
    ];
    let m = stitch(&edges, &StitchOptions::default());
    assert!(same_profile(&m, ("user_id", "legacy"), ("user_id", "new")));
    assert!(same_profile(&m, ("user_id", "legacy"), ("email", "n@x.y")));
    assert_eq!(m[&("email".into(), "n@x.y".into())].1, 4);
    // Without merge edges the second user id is refused.
    let strict = StitchOptions::from_json(r#"{"merge_edges":[]}"#).unwrap();
    let m = stitch(&edges, &strict);
    assert!(!same_profile(&m, ("user_id", "legacy"), ("user_id", "new")));
}

#[test]
fn email_limit_is_respected() {
    let mut edges = vec![];
    for i in 0..4 {
        edges.push(e("user_id", "u", "email", &format!("e{i}@x"), i));
    }
    let opts = StitchOptions::from_json(r#"{"limits":{"email":2}}"#).unwrap();
    let m = stitch(&edges, &opts);
    assert_eq!(m[&("user_id".into(), "u".into())].1, 3);
    assert!(same_profile(&m, ("user_id", "u"), ("email", "e0@x")));
    assert!(same_profile(&m, ("user_id", "u"), ("email", "e1@x")));
    assert!(!same_profile(&m, ("user_id", "u"), ("email", "e2@x")));
}

#[test]
fn hubs_above_max_degree_stay_alone() {
    let mut edges = vec![];
    for i in 0..5 {
        edges.push(e("anonymous_id", &format!("a{i}"), "device_id", "kiosk", i));
    }
    edges.push(e("anonymous_id", "a0", "device_id", "home", 0));
    let opts = StitchOptions::from_json(r#"{"max_degree":4}"#).unwrap();
    let m = stitch(&edges, &opts);
    assert_eq!(m[&("device_id".into(), "kiosk".into())].1, 1);
    assert!(same_profile(
        &m,
        ("anonymous_id", "a0"),
        ("device_id", "home")
    ));
    assert_eq!(m[&("anonymous_id".into(), "a3".into())].1, 1);
    // Duplicate rows do not make an identifier a hub: degree counts distinct neighbours.
    let mut dup = edges[..4].to_vec();
    dup.extend(edges[..4].iter().cloned());
    let m = stitch(&dup, &opts);
    assert_eq!(m[&("device_id".into(), "kiosk".into())].1, 5);
    // Unbounded: one profile.
    let m = stitch(
        &edges,
        &StitchOptions::from_json(r#"{"max_degree":null}"#).unwrap(),
    );
    assert_eq!(m[&("device_id".into(), "kiosk".into())].1, 7);
}

#[test]
fn ids_are_stable_under_appended_edges() {
    let opts = StitchOptions::default();
    let base = vec![
        e("anonymous_id", "a1", "user_id", "u1", 100),
        e("user_id", "u1", "email", "e1", 100),
    ];
    let before = stitch(&base, &opts);
    let pid = before[&("user_id".into(), "u1".into())].0.clone();
    let mut more = base.clone();
    more.push(e("anonymous_id", "a2", "user_id", "u1", 200));
    more.push(e("user_id", "u1", "phone", "+1", 300));
    let after = stitch(&more, &opts);
    assert!(after.values().all(|(p, n)| *p == pid && *n == 5));
    // An anonymous profile gets a new id when a user id (higher priority) joins.
    let anon = stitch(&[e("anonymous_id", "a9", "device_id", "d9", 5)], &opts);
    let joined = stitch(
        &[
            e("anonymous_id", "a9", "device_id", "d9", 5),
            e("anonymous_id", "a9", "user_id", "u9", 6),
        ],
        &opts,
    );
    assert_ne!(
        anon[&("anonymous_id".into(), "a9".into())].0,
        joined[&("anonymous_id".into(), "a9".into())].0
    );
    assert_eq!(
        joined[&("anonymous_id".into(), "a9".into())].0,
        joined[&("user_id".into(), "u9".into())].0
    );
}

// ----------------------------------------------------------------- random graphs

const TYPES: [&str; 5] = ["user_id", "email", "anonymous_id", "device_id", "phone"];

fn random_edges(rng: &mut StdRng, n_edges: usize, n_values: u32) -> Vec<E> {
    (0..n_edges)
        .map(|_| {
            let lt = TYPES[rng.random_range(0..TYPES.len())];
            let rt = TYPES[rng.random_range(0..TYPES.len())];
            let lv = format!("v{}", rng.random_range(0..n_values));
            let rv = if rng.random_bool(0.03) {
                "undefined".to_string()
            } else {
                format!("v{}", rng.random_range(0..n_values))
            };
            e(lt, &lv, rt, &rv, rng.random_range(0..50))
        })
        .collect()
}

/// Naive reference: breadth-first search over the unblocked edges.
fn reference_components(edges: &[E]) -> BTreeSet<BTreeSet<(String, String)>> {
    let mut adj: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (lt, lv, rt, rv, _) in edges {
        let l = (lt.clone(), lv.clone());
        let r = (rt.clone(), rv.clone());
        let lb = lv == "undefined";
        let rb = rv == "undefined";
        if !lb {
            adj.entry(l.clone()).or_default();
        }
        if !rb {
            adj.entry(r.clone()).or_default();
        }
        if !lb && !rb {
            adj.entry(l.clone()).or_default().push(r.clone());
            adj.entry(r).or_default().push(l);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = BTreeSet::new();
    let mut keys: Vec<_> = adj.keys().cloned().collect();
    keys.sort();
    for k in keys {
        if seen.contains(&k) {
            continue;
        }
        let mut comp = BTreeSet::new();
        let mut q = VecDeque::from([k.clone()]);
        seen.insert(k);
        while let Some(x) = q.pop_front() {
            for y in &adj[&x] {
                if seen.insert(y.clone()) {
                    q.push_back(y.clone());
                }
            }
            comp.insert(x);
        }
        out.insert(comp);
    }
    out
}

#[test]
fn unrestricted_matches_naive_components() {
    let mut opts = StitchOptions::unrestricted();
    opts.default_blocklist = true;
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..200 {
        let n_edges = rng.random_range(0..80);
        let edges = random_edges(&mut rng, n_edges, 40);
        let m = stitch(&edges, &opts);
        let parts = partition(&m);
        assert_eq!(
            parts,
            reference_components(&edges),
            "round {round}: {edges:?}"
        );
        // profile_size is the component size
        for part in &parts {
            for k in part {
                assert_eq!(m[k].1 as usize, part.len());
            }
        }
    }
}

fn limited_options() -> StitchOptions {
    StitchOptions::from_json(
        r#"{"limits":{"user_id":1,"email":2},"max_degree":6,"merge_edges":[["user_id","phone"]]}"#,
    )
    .unwrap()
}

#[test]
fn limits_hold_and_shuffles_give_identical_results() {
    let opts = limited_options();
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..150 {
        let n_edges = rng.random_range(0..120);
        let mut edges = random_edges(&mut rng, n_edges, 30);
        let m = stitch(&edges, &opts);
        // Same partition and ids under shuffles.
        for _ in 0..3 {
            edges.shuffle(&mut rng);
            assert_eq!(stitch(&edges, &opts), m, "round {round}");
        }
        // Every profile lies inside one connected component of the input.
        let reference = reference_components(&edges);
        let comp_of: HashMap<&(String, String), usize> = reference
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.iter().map(move |k| (k, i)))
            .collect();
        for part in partition(&m) {
            let comps: BTreeSet<usize> = part.iter().map(|k| comp_of[k]).collect();
            assert_eq!(comps.len(), 1, "round {round}");
            // Limits hold, except where explicit merges (user_id-phone) can add user ids.
            let emails = part.iter().filter(|(t, _)| t == "email").count();
            assert!(emails <= 2, "round {round}: {part:?}");
            let has_alias_edge = edges.iter().any(|(lt, lv, rt, _, _)| {
                let pair = [lt.as_str(), rt.as_str()];
                pair.contains(&"user_id")
                    && pair.contains(&"phone")
                    && part.contains(&(lt.clone(), lv.clone()))
            }) || edges
                .iter()
                .any(|(lt, _, rt, _, _)| lt == "user_id" && rt == "user_id");
            let users = part.iter().filter(|(t, _)| t == "user_id").count();
            assert!(users <= 1 || has_alias_edge, "round {round}: {part:?}");
        }
    }
}

#[test]
fn incremental_resolution_equals_full() {
    let opts = limited_options();
    let mut rng = StdRng::seed_from_u64(23);
    for round in 0..150 {
        let n_edges = rng.random_range(1..150);
        let edges = random_edges(&mut rng, n_edges, 30);
        let full = stitch(&edges, &opts);
        let mut g = IdentityGraph::new(opts.clone());
        let cuts = {
            let mut c: Vec<usize> = (0..3).map(|_| rng.random_range(0..=edges.len())).collect();
            c.push(edges.len());
            c.sort();
            c
        };
        let mut start = 0;
        for cut in cuts {
            if cut > start {
                g.add_edges(&batch(&edges[start..cut])).unwrap();
            }
            start = cut;
            g.resolve();
        }
        assert_eq!(read(&g), full, "round {round}");
    }
}

#[test]
fn seeded_graph_keeps_ids_and_folds_new_edges() {
    let opts = StitchOptions::default();
    let first = vec![
        e("anonymous_id", "a1", "user_id", "u1", 10),
        e("anonymous_id", "a2", "device_id", "d2", 11),
        e("anonymous_id", "a3", "email", "m3", 12),
    ];
    let mut g = IdentityGraph::new(opts.clone());
    g.add_edges(&batch(&first)).unwrap();
    g.resolve();
    let before = read(&g);
    // A new graph from the stored map alone (without first_seen) gives the same ids.
    let mut stored: Vec<RecordBatch> = g
        .assignments(2, Some(vec![0, 1, 2, 3]))
        .map(|b| b.unwrap())
        .collect();
    let mut g2 = IdentityGraph::new(opts.clone());
    for b in &stored {
        g2.seed_profiles(b).unwrap();
    }
    g2.resolve();
    assert_eq!(read(&g2), before);
    // New edges merge two stored profiles: the user-id profile survives.
    g2.add_edges(&batch(&[e("device_id", "d2", "user_id", "u1", 20)]))
        .unwrap();
    g2.resolve();
    let after = read(&g2);
    let u1 = &before[&("user_id".into(), "u1".into())].0;
    assert_eq!(&after[&("anonymous_id".into(), "a2".into())].0, u1);
    assert_eq!(after[&("anonymous_id".into(), "a2".into())].1, 4);
    let previous: HashMap<(String, String), String> = before
        .iter()
        .map(|(k, (p, _))| (k.clone(), p.clone()))
        .collect();
    let changes: Vec<_> = g2.changed_since(&previous).collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().all(|c| &c.new_profile_id == u1));
    // With first_seen kept, the same holds.
    stored = g.assignments(100, None).map(|b| b.unwrap()).collect();
    let mut g3 = IdentityGraph::new(opts);
    g3.seed_profiles(&stored[0]).unwrap();
    g3.resolve();
    assert_eq!(read(&g3), before);
}

#[test]
fn memory_per_identifier_is_bounded() {
    let mut g = IdentityGraph::new(StitchOptions::default());
    let n = 200_000;
    let mut edges = Vec::with_capacity(4096);
    for i in 0..n / 2 {
        edges.push(e(
            "anonymous_id",
            &format!("a{i}"),
            "user_id",
            &format!("u{}", i / 3),
            i as i64,
        ));
        if edges.len() == 4096 {
            g.add_edges(&batch(&edges)).unwrap();
            edges.clear();
        }
    }
    g.add_edges(&batch(&edges)).unwrap();
    g.resolve();
    let ids = g.identifier_count();
    let string_bytes: usize = (0..n / 2).map(|i| format!("a{i}").len()).sum::<usize>()
        + (0..n / 6).map(|i| format!("u{i}").len()).sum::<usize>();
    let per_id = (g.memory_bytes() - string_bytes) as f64 / ids as f64;
    // Capacity doubling can leave vectors up to half empty; the steady state is ~70.
    assert!(per_id < 140.0, "{per_id} bytes per identifier");
}

/// Base map plus the change rows (tombstones removing) equals the full map: what a
/// persisted graph's merge-on-read view shows after an incremental refresh.
#[test]
fn changed_identifiers_patch_the_base_map_into_the_new_one() {
    let opts = limited_options();
    let mut rng = StdRng::seed_from_u64(41);
    for round in 0..150 {
        let n_edges = rng.random_range(2..150);
        let edges = random_edges(&mut rng, n_edges, 30);
        let cut = rng.random_range(1..edges.len());
        let mut g = IdentityGraph::new(opts.clone());
        g.add_edges(&batch(&edges[..cut])).unwrap();
        g.resolve();
        let mut patched = read(&g);
        let base = g.snapshot();
        g.add_edges(&batch(&edges[cut..])).unwrap();
        g.resolve();
        let changed = g.changed_identifiers(&base, &[]);
        let g = Arc::new(g);
        for b in IdentityGraph::shared_rows(g.clone(), changed, 5) {
            apply(&mut patched, &b.unwrap());
        }
        assert_eq!(patched, read(&g), "round {round}");
    }
}
