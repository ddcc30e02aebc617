#!/usr/bin/env python3
"""Function benchmark: tally's SQL functions against DuckDB's nearest equivalents.

Both engines run on one core over the same in-memory data: tally through the standalone
harness `udfs/examples/bench_udfs.rs` (a DataFusion session with target_partitions = 1 and
`tally_udfs::register_all`, no server, no wire), DuckDB through its Python API with
`SET threads = 1`. Each query aggregates the function's output so that only one row comes
back; the time is the best of 3 runs (1 when a run takes over 5 s).

Data (cached under /tmp/tally-bench-data/): the datagen events
(`../shared/datagen/gen_customer_data.py --users 5000 --seed 7`, about 219,000 events), whose
real values (emails with the generator's dirty ones, phones, user agents with their real
frequencies, IPs, page URLs, event properties) are expanded to --rows rows: row r takes the
(r mod n)-th value of each column, emails get r div n appended to their local part so they
stay distinct, a third of the URLs get UTM parameters, and a free-text note is built from the
row's email, phone and IP.

Usage: scripts/bench-udfs.sh [rows]   (default 10,000,000)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/tmp/tally-bench-data")
DATAGEN = ROOT.parent / "shared" / "datagen" / "gen_customer_data.py"

EMAIL_RE = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"
URL_RE = r"^https?://[^\s/$.?#][^\s]*$"
IPV4_RE = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
BOT_RE = r"(?i)(bot|crawl|spider|slurp|curl|wget|python-requests|headless|monitor)"
SCHEMA = (
    '{"type":"object","required":["product_id"],"properties":'
    '{"product_id":{"type":"string"},"price":{"type":"number"},"quantity":{"type":"integer"}}}'
)

# name, group, tally SQL, DuckDB SQL (nearest equivalent), note on the equivalent
QUERIES: list[tuple[str, str, str, str, str]] = [
    ("baseline: sum(length(email))", "baseline",
     "SELECT sum(length(email)) FROM t",
     "SELECT sum(length(email)) FROM t", "same query"),
    ("is_valid_email", "validation",
     "SELECT count(*) FROM t WHERE is_valid_email(email)",
     f"SELECT count(*) FROM t WHERE regexp_full_match(email, '{EMAIL_RE}')",
     "regexp_full_match with a common email regex"),
    ("normalize_email", "validation",
     "SELECT sum(length(normalize_email(email))) FROM t",
     "SELECT sum(length(lower(trim(email)))) FROM t", "lower(trim())"),
    ("email_domain", "validation",
     "SELECT sum(length(email_domain(email))) FROM t",
     "SELECT sum(length(lower(split_part(trim(email), '@', 2)))) FROM t",
     "lower(split_part(trim(), '@', 2))"),
    ("is_disposable_email", "validation",
     "SELECT count(*) FROM t WHERE is_disposable_email(email)",
     "SELECT count(*) FROM t WHERE lower(split_part(email, '@', 2)) IN (SELECT domain FROM disposable)",
     "semi-join of the domain with the same list as a table"),
    ("is_valid_phone(phone, 'US')", "validation",
     "SELECT count(*) FROM t WHERE is_valid_phone(phone, 'US')",
     r"SELECT count(*) FROM t WHERE regexp_full_match(regexp_replace(phone, '[^0-9+]', '', 'g'), '^\+?1?[2-9][0-9]{9}$')",
     "digits regex (no phone metadata in DuckDB)"),
    ("to_e164(phone, 'US')", "validation",
     "SELECT sum(length(to_e164(phone, 'US'))) FROM t",
     "SELECT sum(length(regexp_replace(phone, '[^0-9+]', '', 'g'))) FROM t",
     "regexp_replace to digits"),
    ("is_valid_url", "validation",
     "SELECT count(*) FROM t WHERE is_valid_url(url)",
     f"SELECT count(*) FROM t WHERE regexp_full_match(url, '{URL_RE}')", "URL regex"),
    ("is_valid_ip", "validation",
     "SELECT count(*) FROM t WHERE is_valid_ip(ip)",
     f"SELECT count(*) FROM t WHERE regexp_full_match(ip, '{IPV4_RE}')", "IPv4 regex"),
    ("is_valid_uuid", "validation",
     "SELECT count(*) FROM t WHERE is_valid_uuid(message_id)",
     "SELECT count(*) FROM t WHERE TRY_CAST(message_id AS UUID) IS NOT NULL", "TRY_CAST AS UUID"),
    ("json_schema_errors", "validation",
     f"SELECT sum(cardinality(json_schema_errors(doc, '{SCHEMA}'))) FROM t",
     "SELECT count(*) FROM t WHERE json_valid(doc) AND json_extract_string(doc, '$.product_id') IS NULL",
     "json_valid + one json_extract_string"),
    ("sha256_hex", "hashing",
     "SELECT sum(length(sha256_hex(email))) FROM t",
     "SELECT sum(length(sha256(email))) FROM t", "sha256 (returns hex)"),
    ("hash_email", "hashing",
     "SELECT sum(length(hash_email(email))) FROM t",
     "SELECT sum(length(sha256(lower(trim(email))))) FROM t", "sha256(lower(trim()))"),
    ("hash_phone", "hashing",
     "SELECT sum(length(hash_phone(phone))) FROM t",
     "SELECT sum(length(sha256(regexp_replace(phone, '[^0-9+]', '', 'g')))) FROM t",
     "sha256(regexp_replace digits)"),
    ("pseudonymize", "hashing",
     "SELECT sum(length(pseudonymize(user_id, 'k3y'))) FROM t",
     "SELECT sum(length(sha256('k3y' || user_id))) FROM t", "sha256(key || value), no HMAC in DuckDB"),
    ("mask_email", "pii",
     "SELECT sum(length(mask_email(email))) FROM t",
     r"SELECT sum(length(regexp_replace(email, '^(.)[^@]*@', '\1***@'))) FROM t", "regexp_replace"),
    ("mask_phone", "pii",
     "SELECT sum(length(mask_phone(phone))) FROM t",
     "SELECT sum(length(regexp_replace(phone, '[0-9](?=.*[0-9]{4})', '*', 'g'))) FROM t",
     "regexp_replace (RE2 has no lookahead: fails)"),
    ("anonymize_ip", "pii",
     "SELECT sum(length(anonymize_ip(ip))) FROM t",
     r"SELECT sum(length(regexp_replace(ip, '\.[0-9]+$', '.0'))) FROM t", "regexp_replace"),
    ("redact_pii", "pii",
     "SELECT sum(length(redact_pii(note))) FROM t",
     r"SELECT sum(length(regexp_replace(regexp_replace(regexp_replace(note, '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}', '[EMAIL]', 'g'), '\+?[0-9][0-9 ().-]{7,}[0-9]', '[PHONE]', 'g'), '([0-9]{1,3}\.){3}[0-9]{1,3}', '[IP]', 'g'))) FROM t",
     "three regexp_replace passes, no checksums"),
    ("parse_user_agent", "transform",
     "SELECT count(*) FROM t WHERE parse_user_agent(ua)['browser'] = 'Chrome'",
     "SELECT count(*) FROM t WHERE regexp_extract(ua, '(Chrome|Firefox|Safari|Edg)/', 1) = 'Chrome'",
     "one regexp_extract"),
    ("is_bot", "transform",
     "SELECT count(*) FROM t WHERE is_bot(ua)",
     f"SELECT count(*) FROM t WHERE regexp_matches(ua, '{BOT_RE}')", "short bot regex"),
    ("sample_by_key(user_id, 0.1)", "transform",
     "SELECT count(*) FROM t WHERE sample_by_key(user_id, 0.1)",
     "SELECT count(*) FROM t WHERE hash(user_id) < 1844674407370955161::UBIGINT", "hash() < threshold"),
    ("parse_url", "transform",
     "SELECT sum(length(parse_url(url)['host'])) FROM t",
     "SELECT sum(length(regexp_extract(url, '^[a-z]+://([^/:?#]+)', 1))) FROM t", "regexp_extract host"),
    ("utm_source", "transform",
     "SELECT count(utm_source(url)) FROM t",
     "SELECT count(NULLIF(regexp_extract(url, '[?&]utm_source=([^&#]*)', 1), '')) FROM t",
     "regexp_extract"),
    ("url_param(url, 'utm_campaign')", "transform",
     "SELECT count(url_param(url, 'utm_campaign')) FROM t",
     "SELECT count(NULLIF(regexp_extract(url, '[?&]utm_campaign=([^&#]*)', 1), '')) FROM t",
     "regexp_extract"),
    ("json_get_str (datafusion-functions-json)", "transform",
     "SELECT count(json_get_str(doc, 'product_id')) FROM t",
     "SELECT count(json_extract_string(doc, '$.product_id')) FROM t", "json_extract_string"),
]


def ensure_data(rows: int, users: int) -> Path:
    import duckdb

    DATA.mkdir(parents=True, exist_ok=True)
    gen = DATA / f"gen{users}"
    events = gen / "events.ndjson"
    if not events.exists():
        print(f"generating datagen events for {users} users ...", file=sys.stderr)
        subprocess.run([sys.executable, str(DATAGEN), "--users", str(users), "--seed", "7",
                        "--out", str(gen)], check=True)
    out = DATA / f"udfs_{users}u_{rows}.parquet"
    if out.exists():
        return out
    print(f"building {out} ...", file=sys.stderr)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"""
        CREATE TABLE ev AS SELECT row_number() OVER () - 1 AS i, json
        FROM read_ndjson_objects('{events}')""")

    def column(name: str, expr: str) -> None:
        con.execute(f"""CREATE TABLE {name} AS SELECT row_number() OVER (ORDER BY i) - 1 AS k, v
                        FROM (SELECT i, {expr} AS v FROM ev) WHERE v IS NOT NULL""")

    column("c_email", "json_extract_string(json, '$.traits.email')")
    column("c_phone", "json_extract_string(json, '$.traits.phone')")
    column("c_ua", "json_extract_string(json, '$.context.userAgent')")
    column("c_ip", "json_extract_string(json, '$.context.ip')")
    column("c_url", "json_extract_string(json, '$.context.page.url')")
    column("c_user", "coalesce(json_extract_string(json, '$.userId'), json_extract_string(json, '$.anonymousId'))")
    column("c_msg", "coalesce(json_extract_string(json, '$.messageId'), 'missing')")
    column("c_doc", "CAST(json_extract(json, '$.properties') AS VARCHAR)")
    counts = {n: con.execute(f"SELECT count(*) FROM {n}").fetchone()[0]
              for n in ["c_email", "c_phone", "c_ua", "c_ip", "c_url", "c_user", "c_msg", "c_doc"]}
    print(f"source values per column: {counts}", file=sys.stderr)
    j = "\n".join(
        f"JOIN {n} ON {n}.k = r.range % {c}" for n, c in counts.items())
    con.execute(f"""
        COPY (
          SELECT
            CASE WHEN position('@' IN c_email.v) > 1
                 THEN regexp_replace(c_email.v, '@', CAST(r.range // {counts['c_email']} AS VARCHAR) || '@')
                 ELSE c_email.v END AS email,
            c_phone.v AS phone,
            c_ua.v AS ua,
            c_ip.v AS ip,
            CASE WHEN r.range % 3 = 0
                 THEN c_url.v || '?utm_source=newsletter&utm_medium=email&utm_campaign=summer-' || CAST(r.range % 97 AS VARCHAR)
                 ELSE c_url.v END AS url,
            c_user.v AS user_id,
            c_msg.v AS message_id,
            c_doc.v AS doc,
            CASE r.range % 4
              WHEN 0 THEN 'Customer ' || c_email.v || ' called from ' || c_phone.v || ' about order ' || CAST(r.range AS VARCHAR)
              WHEN 1 THEN 'Login from ' || c_ip.v || ' failed twice, user agent ' || c_ua.v
              WHEN 2 THEN 'Shipped on 2024-07-01 12:30:45, tracking number pending'
              ELSE 'No personal data in this note, just some words about the order'
            END AS note
          FROM range({rows}) r
          {j}
          ORDER BY r.range
        ) TO '{out}' (FORMAT PARQUET, ROW_GROUP_SIZE 122880)""")
    return out


def run_tally(parquet: Path, repeat: int) -> dict[str, tuple[float, str]]:
    qfile = DATA / "udfs_queries.tsv"
    qfile.write_text("".join(f"{name}\t{sql}\n" for name, _, sql, _, _ in QUERIES))
    exe = os.environ.get("BENCH_UDFS_BIN")
    if not exe:
        subprocess.run(["cargo", "build", "--release", "-p", "tally-udfs", "--example", "bench_udfs"],
                       cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR") or subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, check=True,
            capture_output=True, text=True).stdout.split('"target_directory":"')[1].split('"')[0]
        exe = str(Path(target) / "release" / "examples" / "bench_udfs")
    out = subprocess.run([exe, str(parquet), str(qfile), str(repeat)], check=True,
                         capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    res = {}
    for line in out.stdout.splitlines():
        name, secs, answer = (line.split("\t") + [""])[:3]
        res[name] = (float(secs), answer)
    return res


def run_duckdb(parquet: Path, repeat: int) -> dict[str, tuple[float, str]]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET threads = 1")
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{parquet}')")
    blocklist = ROOT / "udfs" / "data" / "disposable_email_blocklist.conf"
    con.execute(f"CREATE TABLE disposable AS SELECT column0 AS domain FROM read_csv('{blocklist}', header = false, columns = {{'column0': 'VARCHAR'}})")
    res = {}
    for name, _, _, sql, _ in QUERIES:
        best, answer = float("inf"), ""
        for i in range(repeat):
            start = time.perf_counter()
            try:
                row = con.execute(sql).fetchone()
            except duckdb.Error as e:
                answer = f"error: {str(e).splitlines()[0][:60]}"
                best = float("nan")
                break
            secs = time.perf_counter() - start
            best = min(best, secs)
            if i == 0:
                answer = str(row[0])
                if secs > 5:
                    break
        res[name] = (best, answer)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    parquet = ensure_data(args.rows, args.users)
    tally = run_tally(parquet, args.repeat)
    duck = run_duckdb(parquet, args.repeat)
    print(f"\n{args.rows:,} rows, one core each, best of {args.repeat}\n")
    print("| function | group | tally rows/s | DuckDB equivalent | DuckDB rows/s | tally / DuckDB |")
    print("|---|---|---:|---|---:|---:|")
    for name, group, _, _, note in QUERIES:
        ts, ta = tally.get(name, (float("nan"), ""))
        ds, da = duck.get(name, (float("nan"), ""))
        trate = args.rows / ts if ts == ts and ts > 0 else float("nan")
        drate = args.rows / ds if ds == ds and ds > 0 else float("nan")
        ratio = f"{trate / drate:.2f}x" if drate == drate and trate == trate else "n/a"
        dcell = f"{drate:,.0f}" if drate == drate else da
        print(f"| {name} | {group} | {trate:,.0f} | {note} | {dcell} | {ratio} |")
    print("\nanswers (tally / DuckDB):", file=sys.stderr)
    for name, *_ in QUERIES:
        print(f"  {name}: {tally.get(name, ('', ''))[1]} / {duck.get(name, ('', ''))[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
