#!/usr/bin/env bash
# The whole GPU benchmark in one script, on a CUDA machine with torch, pytorch-lightning and
# torchmetrics but without internet or SpikingJelly (bench-only extras come as wheels).
#
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d bench/wheels -r bench/requirements.txt
#   OUT=/some/folder bash bench/gpu_check.sh       # from the repository root, on the GPU machine
#
# Stages, in order of importance, each under its own time limit and all within LIMIT_S seconds
# (default 340, so the script ends within ~6 minutes): BPTT against SpikingJelly eager (fp32, bf16,
# vgg11 + resnet18, T 4..32); Trainer overhead; OTTT_A / DSR / IDE; IDE peak memory at T=30 vs 100;
# compiled (vgg11 fp32, T 4 8). A stage cut by its limit keeps the rows it measured (speed.json is
# written after every measurement). Results: $OUT/<stage>/, merged into $OUT/speed.{json,md,png}.
# Extra arguments go to every bench/speed.py call (e.g. --backend triton --compile).
set -uo pipefail

OUT=${OUT:-bench/results/gpu}
WHEELS=${WHEELS:-bench/wheels}
SITE=${SITE:-/tmp/lightning-snn-bench-site}
LIMIT_S=${LIMIT_S:-340}
PY=${PYTHON:-python}
EXTRA=("$@")
mkdir -p "$OUT"
START=$SECONDS

if ! "$PY" -c "import spikingjelly" 2>/dev/null; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if ((${#wheels[@]} == 0)); then
        echo "no SpikingJelly and no wheels in $WHEELS: see bench/requirements.txt" >&2
        exit 2
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" || exit 2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PY" -c "import torch, spikingjelly; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"; } > "$OUT/machine.txt" 2>&1

# stage NAME SECONDS COMMAND...: run with at most SECONDS, and never past the overall limit
stage() {
    local name=$1 budget=$2
    shift 2
    local left=$((LIMIT_S - (SECONDS - START)))
    if ((left < 15)); then
        echo "[gpu_check] $name: skipped, time limit reached" | tee -a "$OUT/log.txt"
        return
    fi
    ((budget > left)) && budget=$left
    echo "[gpu_check] $name (<= ${budget}s)" | tee -a "$OUT/log.txt"
    timeout --signal=TERM --kill-after=10 "$budget" "$@" >> "$OUT/$name.log" 2>&1
    echo "[gpu_check] $name: exit $? after $((SECONDS - START))s total" | tee -a "$OUT/log.txt"
}

SPEED=("$PY" bench/speed.py "${EXTRA[@]}")
stage eager 150 "${SPEED[@]}" --modes eager --precisions fp32 bf16 --strategies \
    --warmup 3 --iters 5 --repeats 3 --out "$OUT/eager"
stage trainer_overhead 30 "$PY" bench/trainer_overhead.py --network vgg11 --T 4 --batch 128 \
    --warmup 5 --steps 20 --repeats 3 --out "$OUT/trainer_overhead/result.json"
stage strategies 60 "${SPEED[@]}" --networks --modes eager --precisions fp32 \
    --strategies ottt_a dsr ide --warmup 2 --iters 3 --repeats 3 --out "$OUT/strategies"
stage ide_memory 30 "${SPEED[@]}" --networks --modes eager --precisions fp32 --strategies ide \
    --T 30 100 --warmup 1 --iters 1 --repeats 1 --out "$OUT/ide_memory"
stage compiled 150 "${SPEED[@]}" --networks vgg11 --modes compiled --precisions fp32 --strategies \
    --T 4 8 --warmup 3 --iters 5 --repeats 3 --out "$OUT/compiled"

results=()
for name in eager strategies ide_memory compiled; do
    [[ -f "$OUT/$name/speed.json" ]] && results+=("$OUT/$name/speed.json")
done
if ((${#results[@]})); then
    "$PY" bench/speed_report.py "${results[@]}" --out "$OUT" >> "$OUT/log.txt" 2>&1
fi
cat "$OUT/speed.md" 2>/dev/null
cat "$OUT/trainer_overhead/result.json" 2>/dev/null
echo "[gpu_check] done in $((SECONDS - START))s; results in $OUT"
