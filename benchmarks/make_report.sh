#!/usr/bin/env bash
# Regenerate the standard leaderboard (leaderboards/standard.{csv,md}, `advbench leaderboard merge`) and its report
# (leaderboards/report.html, docs/report.md) and the README excerpt from the committed results files: the same files for both, which
# tests/test_report_browser.py checks (the report's rows are standard.csv's).
#   benchmarks/make_report.sh                       # the default set below
#   benchmarks/make_report.sh results/a.jsonl ...   # other files (they must be mergeable: docs/definitions.md)
# The default is every results/*.jsonl except those that cannot or should not join the others:
# - calibration.jsonl: its undefended LoRA cell on portraits, seed 0, is another configuration than the one of
#   meta-defenses.jsonl under the same row label, which `advbench report` (like `leaderboard merge`) refuses;
# - ci.jsonl: the former CI grid, the same cells as freezeasguard.jsonl under other labels (R-30 = R[p=0.3]),
#   which would only repeat those rows;
# - uce.jsonl and uce-probe.jsonl: their undefended and UCE cells on the exposed base were measured again in
#   darkminer.jsonl (which has every such cell of uce.jsonl) under transformers 5.25.0 instead of 5.24.0, where
#   the exposed base trains to other numbers (docs/results.md §5, "Re-measured"): the same cells with different
#   measurements, which `merge` refuses. uce.jsonl's naive-base cells are freezeasguard.jsonl's; uce-probe.jsonl's
#   UCE(add_prompts=true) probes are left out with it (docs/results.md §5 quotes them).
# - worst-case-exposed.jsonl: its searches ran on exposed bases rebuilt on another machine than darkminer.jsonl's
#   for portraits and artworks seeds 0-1 (another final loss), which `merge` refuses to mix; its leaderboard is
#   leaderboards/worst-case-exposed.* (docs/results.md §7);
# - regression-h200-*.jsonl: the regression grid run on a lent GPU (docs/benchmarks.md): the same cells as
#   regression.jsonl on another device, which `merge` refuses to average (device is part of a domain's numerics).
# results/regression.jsonl (the CI regression benchmark, domain `portraits-small`) is in: its cells are the only
# committed ones with thumbnails for every defense, so the report shows each defense's images there.
# Extra options for `advbench report` go in REPORT_ARGS, e.g. REPORT_ARGS="--ratings ratings.csv".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -gt 0 ]; then
    files=("$@")
else
    files=()
    for f in results/*.jsonl; do
        case "$(basename "$f")" in
            calibration.jsonl | ci.jsonl | uce.jsonl | uce-probe.jsonl | worst-case-exposed.jsonl \
                | regression-h200-*.jsonl) ;;
            *) files+=("$f") ;;
        esac
    done
fi
advbench leaderboard merge "${files[@]}" --output-dir leaderboards --name standard > /dev/null
# shellcheck disable=SC2086  # REPORT_ARGS is split into options on purpose
advbench report "${files[@]}" -o leaderboards/report.html \
    --title "advbench: the committed results (tiny world)" ${REPORT_ARGS:-}
# The README's excerpt of standard.csv (its top rows per domain and attack)
python benchmarks/readme_excerpt.py
