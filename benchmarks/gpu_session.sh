#!/usr/bin/env bash
# Issue 19's next device calls, prepared without a GPU: each stage is one call of the
# device tool, from the repository root, writing its tables under $OUT (default
# benchmarks/results). Each fits one call's 10 minutes with room to spare:
#
#   bash benchmarks/gpu_session.sh variants     # about 5 min
#       the whole forward and backward step of the plan's untimed choices (Plan.transposed,
#       Plan.ahead, Plan.half_exchange, plan(units=32)) against the default, at the goal
#       sizes (bench_step.py), then the kernel with the first three checked against the
#       XLA path on the GPU (bench_gpu.py, no speed rows)
#   bash benchmarks/gpu_session.sh speed [PLAN] # about 5 min
#       the goal rows (LSTM and GRU at B16 and B64 H512, the LSTM at B256 H1024)
#       against torch cuDNN (fp32, fp16), flax and the XLA path, with plan keywords PLAN
#       (e.g. transposed=True,ahead=2: the fastest of the first stage)
#   bash benchmarks/gpu_session.sh rows [PLAN]  # about 6 min
#       likewise, the rows no run has timed yet: B16 H1024, B32 T1024 H256, the 2 x 2
#       stacks at H512 and the GRU at H1024
#
# Append --quick to any stage for a dry run on a CPU (tiny sizes, interpret mode).
set -euo pipefail
stage=${1:?usage: gpu_session.sh variants|speed|rows [PLAN] [--quick]}
shift
plan=""
if [[ "$stage" != variants && $# -gt 0 && "$1" != --* ]]; then
    plan=$1
    shift
fi
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi: not a GPU machine"

case "$stage" in
variants)
    # bench_step.VARIANTS 4-11: the default, transposed, 2 and 3 steps ahead, transposed
    # and 2 ahead, h exchanged in half precision (bf16 only), all three, 32 units a block
    # transposed (bf16 only: in fp32 its weights do not fit on chip)
    python benchmarks/bench_step.py --whole --with-backward --sizes 0,1,2 \
        --variants 4,5,6,7,8,9,10,11 --repeats 10 --budget 240 \
        --out "$out/gpu_step_variants.md" "$@"
    python benchmarks/bench_gpu.py --rows "" --checks 1 \
        --plan transposed=True,ahead=2,half_exchange=True \
        --out "$out/gpu_checks_variants.md" "$@"
    ;;
speed)  # bench_gpu.ROWS 0-4
    python benchmarks/bench_gpu.py --plan "$plan" --checks 1 --check-cases 2 \
        --rows 0,1,2,3,4 --repeats 7 --budget 270 --out "$out/gpu_speed.md" "$@"
    ;;
rows)  # bench_gpu.ROWS 5-11
    python benchmarks/bench_gpu.py --plan "$plan" --checks 0 \
        --rows 5,6,7,8,9,10,11 --repeats 7 --budget 300 --out "$out/gpu_rows.md" "$@"
    ;;
*)
    echo "unknown stage '$stage': variants, speed or rows" >&2
    exit 2
    ;;
esac
