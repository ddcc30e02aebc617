#!/usr/bin/env bash
# Model-runner benchmark: a generated 50-model dbt-style project over generated events,
# timed with `tally models run` (embedded, over a warehouse folder).
#
# Usage: scripts/bench-models.sh [users] [runs]
#   users: people in the generated data (default 100000, about 4.4M events; the issue's
#          5M-event size is about 115000)
#   runs:  timed runs of the whole project after the first (default 3)
# Env: TALLY_BIN to use an existing binary instead of building a release one;
#      BENCH_DIR to keep the data and project (default: a temporary folder).
#
# The project: 4 staging views over the event tables, 20 daily aggregate tables, 20 views
# over them, 5 incremental models and one final table joining several layers: 50 models,
# 5 DAG levels. Prints the wall time of each run, the per-model times of the last run, and
# the runner's overhead (wall time of a run of 50 trivial views, per model).
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-100000}"
runs="${2:-3}"
work="${BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"

if [ -z "${TALLY_BIN:-}" ]; then
  cargo build --release --bin tally
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  TALLY_BIN="$target_dir/release/tally"
fi

data="$work/warehouse"
events="$work/gen/events.ndjson"
if [ ! -f "$events" ]; then
  echo "generating events for $users users..."
  python3 scripts/datagen/gen_customer_data.py --users "$users" --seed 7 --out "$work/gen"
fi

if [ ! -d "$data" ]; then
  echo "loading events into $data..."
  "$TALLY_BIN" sql --data "$data" \
    "CREATE EXTERNAL TABLE raw_events STORED AS JSON LOCATION '$events'" \
    "CREATE SCHEMA web" \
    "CREATE TABLE web.pages AS SELECT \"messageId\" AS message_id, \"userId\" AS user_id, \"anonymousId\" AS anonymous_id, CAST(\"timestamp\" AS timestamptz) AS \"timestamp\", name FROM raw_events WHERE type = 'page'" \
    "CREATE TABLE web.screens AS SELECT \"messageId\" AS message_id, \"userId\" AS user_id, \"anonymousId\" AS anonymous_id, CAST(\"timestamp\" AS timestamptz) AS \"timestamp\", name FROM raw_events WHERE type = 'screen'" \
    "CREATE TABLE web.tracks AS SELECT \"messageId\" AS message_id, \"userId\" AS user_id, \"anonymousId\" AS anonymous_id, CAST(\"timestamp\" AS timestamptz) AS \"timestamp\", event AS event_text FROM raw_events WHERE type = 'track'" \
    "CREATE TABLE web.identifies AS SELECT \"messageId\" AS message_id, \"userId\" AS user_id, \"anonymousId\" AS anonymous_id, CAST(\"timestamp\" AS timestamptz) AS \"timestamp\" FROM raw_events WHERE type = 'identify'" \
    "SELECT (SELECT count(*) FROM web.pages) AS pages, (SELECT count(*) FROM web.screens) AS screens, (SELECT count(*) FROM web.tracks) AS tracks"
fi

project="$work/project"
rm -rf "$project"
python3 - "$project" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(f"{root}/models", exist_ok=True)
os.makedirs(f"{root}/trivial/models", exist_ok=True)
def w(path, text):
    with open(path, "w") as f:
        f.write(text)
w(f"{root}/dbt_project.yml", "name: bench\nconfig-version: 2\nmodels:\n  bench:\n    +materialized: view\n")
w(f"{root}/models/sources.yml", "version: 2\nsources:\n  - name: web\n    tables: [{name: pages}, {name: screens}, {name: tracks}, {name: identifies}]\n")
stg = ["pages", "screens", "tracks", "identifies"]
for t in stg:
    w(f"{root}/models/stg_{t}.sql",
      f"select message_id, user_id, anonymous_id, coalesce(user_id, anonymous_id) as person, \"timestamp\" as at\nfrom {{{{ source('web', '{t}') }}}}\n")
n = 0
aggs = []
for i in range(20):
    t = stg[i % 4]
    grain = ["day", "week", "month", "hour", "day"][i % 5]
    name = f"agg_{t}_{grain}_{i}"
    w(f"{root}/models/{name}.sql",
      "{{ config(materialized='table') }}\n"
      f"select date_trunc('{grain}', at) as period, count(*) as events, count(distinct person) as people,\n"
      f"       count(distinct user_id) as users\nfrom {{{{ ref('stg_{t}') }}}}\nwhere person is not null and length(message_id) > {i % 3}\n"
      "group by 1\n")
    aggs.append(name)
views = []
for i, a in enumerate(aggs):
    name = f"rpt_{i}"
    w(f"{root}/models/{name}.sql",
      f"select period, events, people, users, events * 1.0 / nullif(people, 0) as events_per_person\nfrom {{{{ ref('{a}') }}}}\n")
    views.append(name)
for i in range(5):
    t = stg[i % 4]
    w(f"{root}/models/inc_{t}_{i}.sql",
      "{{ config(materialized='incremental', unique_key='person') }}\n"
      f"select person, max(at) as last_seen, count(*) as events\nfrom {{{{ ref('stg_{t}') }}}}\nwhere person is not null\n"
      "{% if is_incremental() %}and at > (select max(last_seen) from {{ this }}){% endif %}\n"
      "group by person\n")
joins = " union all ".join(f"select '{v}' as report, sum(events) as events from {{{{ ref('{v}') }}}}" for v in views[:10])
w(f"{root}/models/summary.sql", "{{ config(materialized='table') }}\n" + joins + "\n")
# 50 trivial views, for the runner's own overhead.
w(f"{root}/trivial/dbt_project.yml", "name: trivial\nconfig-version: 2\n")
for i in range(50):
    dep = f"select * from {{{{ ref('v{i-1}') }}}}" if i % 5 else "select 1 as x"
    w(f"{root}/trivial/models/v{i}.sql", dep + "\n")
count = len([f for f in os.listdir(f"{root}/models") if f.endswith(".sql")])
print(f"generated {count} models")
PY

run() {
  local start end
  start=$(date +%s.%N)
  "$TALLY_BIN" models run --project "$1" --data "$data" --threads "${THREADS:-4}" "${@:2}" >"$work/last-run.txt"
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')"
}

echo "first run (creates everything): $(run "$project")s"
for i in $(seq "$runs"); do
  echo "run $i: $(run "$project")s"
done
echo "full refresh: $(run "$project" --full-refresh)s"
echo "slowest models of the full refresh:"
grep -E '^(OK|ERROR|SKIP) ' "$work/last-run.txt" | awk '{print $NF, $0}' | sort -rn | cut -d' ' -f2- | head -15 || true
tail -2 "$work/last-run.txt"
trivial=$(run "$project/trivial")
trivial=$(run "$project/trivial")
python3 -c "print(f'runner overhead: 50 trivial views in ${trivial}s = {${trivial} * 1000 / 50:.1f} ms per model')"
if [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
