//! The files tally writes into Delta tables: row groups small enough to scan on every core
//! and to skip by their statistics, one file for a small insert, several encoded in
//! parallel for a large one, and the order of a sorted insert kept in the files.

use std::path::{Path, PathBuf};

use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
use deltalake::parquet::file::statistics::Statistics;
use tally::storage::append::ROW_GROUP_ROWS;

use crate::common::TestServer;

/// The Parquet data files of table `name` under the warehouse at `root` (the folder that
/// holds a `_delta_log` and is named after the table).
fn data_files(root: &Path, name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let is_table = path.join("_delta_log").is_dir()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == name || n.starts_with(&format!("{name}-")));
            if is_table {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                    .expect("table folder")
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                    .collect();
                files.sort();
                out.extend(files);
            } else {
                walk(&path, name, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, name, &mut out);
    out
}

/// Per row group of every file: (rows, min, max) of the first column, an int8.
fn row_groups(files: &[PathBuf]) -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    for f in files {
        let reader = SerializedFileReader::new(std::fs::File::open(f).expect("open")).expect("pq");
        for rg in reader.metadata().row_groups() {
            let (min, max) = match rg.column(0).statistics() {
                Some(Statistics::Int64(s)) => (
                    *s.min_opt().expect("min statistic"),
                    *s.max_opt().expect("max statistic"),
                ),
                other => panic!("expected int8 statistics, got {other:?}"),
            };
            out.push((rg.num_rows(), min, max));
        }
    }
    out
}

/// A table loaded with 300,000 rows is written in row groups of at most `ROW_GROUP_ROWS`
/// rows, each with min/max statistics, and reads back whole.
#[tokio::test]
async fn loads_are_written_in_bounded_row_groups() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "CREATE TABLE rg AS SELECT CAST(value AS bigint) AS id, 'user-' || CAST(value AS text) AS name FROM generate_series(1, 300000)",
    )
    .await
    .unwrap();
    let groups = row_groups(&data_files(s.dir.path(), "rg"));
    let rows: i64 = groups.iter().map(|g| g.0).sum();
    assert_eq!(rows, 300_000);
    assert!(groups.len() >= 3, "row groups: {groups:?}");
    assert!(
        groups.iter().all(|g| g.0 as usize <= ROW_GROUP_ROWS),
        "row groups: {groups:?}"
    );
    let r = c
        .query_one(
            "SELECT count(*), sum(id), count(DISTINCT name) FROM rg",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 300_000);
    assert_eq!(r.get::<_, i64>(2), 300_000);
}

/// A small insert is one file, however many partitions the plan reads it with.
#[tokio::test]
async fn small_inserts_write_one_file() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "SET datafusion.execution.target_partitions = 4;
         CREATE TABLE small (id bigint, v text);
         INSERT INTO small SELECT CAST(value AS bigint), 'v' FROM generate_series(1, 5000) WHERE value % 2 = 0;
         INSERT INTO small VALUES (1, 'one'), (3, 'three')",
    )
    .await
    .unwrap();
    assert_eq!(data_files(s.dir.path(), "small").len(), 2);
    let n: i64 = c
        .query_one("SELECT count(*) FROM small", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2502);
    // An insert of no rows changes nothing and still answers INSERT 0 0.
    let n = c
        .execute("INSERT INTO small SELECT * FROM small WHERE id < 0", &[])
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(data_files(s.dir.path(), "small").len(), 2);
}

/// A large insert over several partitions is encoded by several writers, one file each, in
/// one commit: every row is there once.
#[tokio::test]
async fn large_inserts_are_encoded_in_parallel() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "SET datafusion.execution.target_partitions = 2;
         CREATE TABLE big (id bigint);
         INSERT INTO big SELECT CAST(value AS bigint) FROM generate_series(1, 1000000) WHERE value % 7 <> 0",
    )
    .await
    .unwrap();
    let files = data_files(s.dir.path(), "big");
    assert!(files.len() >= 2, "files: {files:?}");
    let groups = row_groups(&files);
    assert_eq!(groups.iter().map(|g| g.0).sum::<i64>(), 857_143);
    let r = c
        .query_one("SELECT count(*), count(DISTINCT id), sum(id) FROM big", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 857_143);
    assert_eq!(r.get::<_, i64>(1), 857_143);
}

/// `INSERT ... ORDER BY` keeps the order in the files: row groups cover disjoint ranges, so
/// a range filter on the sort key skips all but the groups it needs.
#[tokio::test]
async fn sorted_inserts_keep_their_order_in_row_groups() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "SET datafusion.execution.target_partitions = 2;
         CREATE TABLE sorted (id bigint);
         INSERT INTO sorted SELECT CAST(value AS bigint) AS id FROM generate_series(1, 600000) ORDER BY id DESC",
    )
    .await
    .unwrap();
    let mut groups = row_groups(&data_files(s.dir.path(), "sorted"));
    assert!(groups.len() >= 4, "row groups: {groups:?}");
    groups.sort_by_key(|g| g.1);
    for pair in groups.windows(2) {
        assert!(
            pair[0].2 < pair[1].1,
            "overlapping row groups {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}
