//! identity_stitch against the generator's ground truth: data from
//! `scripts/datagen/gen_customer_data.py --users 20000 --edges-only`, loaded as a CSV table,
//! stitched through a real server, scored pairwise against `truth_clusters.csv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::TestServer;

/// Generates the edges, truth and manifest for `users` users into `out`.
fn generate(users: u32, out: &Path) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/datagen/gen_customer_data.py");
    let status = Command::new("python3")
        .arg(script)
        .args([
            "--users",
            &users.to_string(),
            "--seed",
            "42",
            "--edges-only",
            "--out",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "generator failed");
}

/// Reads a CSV file without quoting (the generator's files have none) as rows of fields.
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("read csv");
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Pairwise precision and recall of `predicted` (identifier -> profile) against `truth`
/// (identifier -> person), over the identifiers in `truth` only.
fn precision_recall(
    predicted: &HashMap<(String, String), String>,
    truth: &HashMap<(String, String), String>,
) -> (f64, f64) {
    let mut both: HashMap<(&str, &str), u64> = HashMap::new();
    let mut pred: HashMap<&str, u64> = HashMap::new();
    let mut real: HashMap<&str, u64> = HashMap::new();
    for (id, person) in truth {
        let profile = predicted
            .get(id)
            .unwrap_or_else(|| panic!("identifier {id:?} missing from the result"));
        *both.entry((profile, person)).or_default() += 1;
        *pred.entry(profile).or_default() += 1;
        *real.entry(person).or_default() += 1;
    }
    let tp: u64 = both.values().map(|&n| pairs(n)).sum();
    let pp: u64 = pred.values().map(|&n| pairs(n)).sum();
    let rp: u64 = real.values().map(|&n| pairs(n)).sum();
    (tp as f64 / pp as f64, tp as f64 / rp as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stitch_matches_ground_truth() {
    let data = tempfile::tempdir().expect("tempdir");
    generate(20_000, data.path());
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.path().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");

    let server = TestServer::start().await;
    let client = server.client().await;
    let csv = data.path().join("identity_edges.csv");
    client
        .batch_execute(&format!(
            "CREATE EXTERNAL TABLE edges (left_type text, left_value text, right_type text, \
             right_value text, event_ts text) STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            csv.display()
        ))
        .await
        .expect("create external table");

    // Default options: precision and recall against the truth, super-node devices excluded
    // (truth_clusters.csv does not list them).
    let rows = client
        .query(
            "SELECT identifier_type, identifier_value, profile_id, profile_size \
             FROM identity_stitch('edges')",
            &[],
        )
        .await
        .expect("identity_stitch");
    let mut predicted = HashMap::new();
    let mut sizes: HashMap<String, (i64, i64)> = HashMap::new();
    for r in &rows {
        let (t, v, p, n): (String, String, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let e = sizes.entry(p.clone()).or_default();
        e.0 += 1;
        e.1 = n;
        predicted.insert((t, v), p);
    }
    assert_eq!(rows.len(), predicted.len(), "one row per identifier");
    assert!(
        sizes.values().all(|(count, size)| count == size),
        "profile_size is the number of rows of the profile"
    );
    let truth: HashMap<(String, String), String> =
        read_csv(&data.path().join("truth_clusters.csv"))
            .into_iter()
            .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
            .collect();
    let (precision, recall) = precision_recall(&predicted, &truth);
    eprintln!("identity_stitch: precision {precision:.5}, recall {recall:.5}");
    assert!(precision >= 0.99, "precision {precision}");
    assert!(recall >= 0.99, "recall {recall}");

    // Super-node devices are kept out of people's profiles: each is a profile of its own.
    for d in manifest["super_node_device_ids"]
        .as_array()
        .expect("super nodes")
    {
        let key = ("device_id".to_string(), d.as_str().expect("id").to_string());
        let p = &predicted[&key];
        assert_eq!(sizes[p].1, 1, "super-node {key:?} merged into a profile");
    }

    // Limits off: plain connected components, as many as the manifest expects.
    let row = client
        .query_one(
            "SELECT count(DISTINCT profile_id), count(*) FROM identity_stitch('edges', \
             '{\"limits\": null, \"max_degree\": null, \"default_blocklist\": false, \"merge_edges\": []}')",
            &[],
        )
        .await
        .expect("unrestricted");
    let components: i64 = row.get(0);
    assert_eq!(
        components,
        manifest["expected_components"]["all_edges"]
            .as_i64()
            .expect("expected count")
    );
    let identifiers: i64 = row.get(1);
    let by_type: i64 = manifest["counts"]["identifiers_by_type"]
        .as_object()
        .expect("counts")
        .values()
        .map(|v| v.as_i64().unwrap_or(0))
        .sum();
    // The manifest's counts by type leave out the super-node devices.
    let super_nodes = manifest["super_node_device_ids"]
        .as_array()
        .map_or(0, |a| a.len() as i64);
    assert_eq!(identifiers, by_type + super_nodes);

    // The same ids again: the function is deterministic across statements, and ids survive
    // appending the later half of the edges for profiles whose representative is unchanged.
    let first_half = client
        .query(
            "SELECT identifier_type, identifier_value, profile_id FROM identity_stitch(\
             'SELECT * FROM edges WHERE event_ts < ''2024-05-15''') WHERE identifier_type = 'user_id'",
            &[],
        )
        .await
        .expect("first half");
    let kept = first_half
        .iter()
        .filter(|r| {
            let key: (String, String) = (r.get(0), r.get(1));
            predicted
                .get(&key)
                .is_some_and(|p| p == r.get::<_, &str>(2))
        })
        .count();
    // A user's profile is named by its earliest user id, which an append rarely changes.
    assert!(
        kept as f64 >= 0.95 * first_half.len() as f64,
        "{kept} of {} user profiles kept their id",
        first_half.len()
    );
}
