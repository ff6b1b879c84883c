#!/usr/bin/env bash
# One prepared script for a lent GPU machine (the device tool: bare, no registry, its own python3 with torch).
# It installs advbench and the packages that image lacks from wheels carried in .whl/, then runs one job and
# leaves everything it measured under $OUT (default ./gpu-out).
#   benchmarks/gpu_session.sh check        # GPU smoke (SD 1.5 size) + the regression grid on cuda vs its leaderboard
#   benchmarks/gpu_session.sh smoke ARGS...  # only benchmarks/gpu_smoke.py ARGS
#   benchmarks/gpu_session.sh precision bf16 fp16  # the regression grid on cuda under mixed precision
#   benchmarks/gpu_session.sh grid SPEC N  # benchmarks/SPEC.toml on cuda in N one-thread shards -> $OUT/SPEC.jsonl
# Wheels to carry (made here, on the CPU machine; Python 3.12 and x86-64 there):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 open_clip_torch ftfy wcwidth clean-fid==0.1.35 \
#       importlib_metadata
# Each stage has its own time limit (GPU_SMOKE_S, GRID_S seconds), so a stuck stage cannot eat the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
job=${1:-check}
export PYTHONUNBUFFERED=1 ADVBENCH_CACHE=${ADVBENCH_CACHE:-/tmp/advbench-cache}

python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target /tmp/site .whl/*.whl . \
    > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nproc
    python3 - <<'EOF'
import importlib.metadata as md, platform
print("python", platform.python_version())
for name in ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy"):
    print(name, md.version(name))
EOF
} | tee "$OUT/device.txt"

shards() {  # shards SPEC N RESULTS [extra bench options]: N one-thread shards of SPEC on cuda, in the background
    local spec=$1 n=$2 results=$3
    shift 3
    for k in $(seq 1 "$n"); do
        timeout "${GRID_S:-420}" advbench bench "benchmarks/$spec.toml" --device cuda --threads 1 \
            --results "$results" --shard "$k/$n" "$@" > "$OUT/$spec-shard$k.log" 2>&1 &
    done
    wait
}

case $job in
check)
    start=$(date +%s)
    timeout "${GPU_SMOKE_S:-180}" python3 benchmarks/gpu_smoke.py --ratios 0.1,0.3,0.5 2>&1 | tee "$OUT/gpu_smoke.txt"
    echo "::gpu_smoke $(( $(date +%s) - start )) s"
    start=$(date +%s)
    GRID_S=${GRID_S:-240} shards regression 7 "$OUT/regression-cuda.jsonl"
    echo "::regression grid on cuda, 7 shards: $(( $(date +%s) - start )) s"
    tail -n 5 "$OUT"/regression-shard*.log | tail -n 40
    timeout 120 advbench bench benchmarks/regression.toml --device cuda --results "$OUT/regression-cuda.jsonl" \
        --check leaderboards/regression.csv --any-change --tolerance 0.02 2>&1 | tee "$OUT/regression-check.txt"
    ;;
smoke)
    shift  # the rest goes to gpu_smoke.py, e.g. --steps 30 --no-gradient-checkpointing
    timeout "${GPU_SMOKE_S:-180}" python3 benchmarks/gpu_smoke.py "$@" 2>&1 | tee -a "$OUT/gpu_smoke.txt"
    ;;
precision)
    shift  # the regression grid on cuda under each named mixed precision (bf16, fp16)
    for mp in "$@"; do
        start=$(date +%s)
        shards regression 7 "$OUT/regression-cuda-$mp.jsonl" --mixed-precision "$mp"
        echo "::regression grid on cuda, $mp: $(( $(date +%s) - start )) s, $(wc -l < "$OUT/regression-cuda-$mp.jsonl") records"
        grep -h -i "error\|Traceback" "$OUT"/regression-shard*.log | head -n 5
    done
    ;;
grid)
    spec=$2
    start=$(date +%s)
    shards "$spec" "${3:-8}" "$OUT/$spec.jsonl"
    echo "::$spec on cuda, ${3:-8} shards: $(( $(date +%s) - start )) s, $(wc -l < "$OUT/$spec.jsonl") records"
    tail -n 3 "$OUT/$spec"-shard*.log | tail -n 60
    ;;
*)
    echo "unknown job $job: check, smoke ARGS..., precision MP... or grid SPEC N" >&2
    exit 2
    ;;
esac
