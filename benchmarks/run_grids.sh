#!/usr/bin/env bash
# Run several bench specs one after another as one shard of two, so a session starts the long grids once and each
# core goes on to the next spec when its share of one is done (finished cells are skipped, so it resumes).
#   benchmarks/run_grids.sh 1 meta-defenses darkminer worst-case > shard1.log 2>&1 &
#   benchmarks/run_grids.sh 2 meta-defenses darkminer worst-case > shard2.log 2>&1 &
# Each name is benchmarks/<name>.toml; the cache goes to $ADVBENCH_CACHE (default .advbench_cache). Commit the
# results files as cells finish (git add -f results/<name>.jsonl); never the cache. Pause both shards with
# `pkill -STOP -f run_grids.sh; pkill -STOP -f "advbench bench"` and resume with -CONT.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ] || ! [[ "$1" =~ ^[12]$ ]]; then
    echo "usage: benchmarks/run_grids.sh K SPEC... (K = 1 or 2: this process's shard of two)" >&2
    exit 2
fi
shard=$1
shift
for name in "$@"; do
    [ -f "benchmarks/$name.toml" ] || { echo "benchmarks/$name.toml does not exist" >&2; exit 2; }
done
for name in "$@"; do
    echo "== $(date -u +%FT%TZ) $name, shard $shard/2"
    nice -n 10 advbench bench "benchmarks/$name.toml" --shard "$shard/2" --threads 1
done
