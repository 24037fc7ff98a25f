#!/usr/bin/env bash
# The GPU check of issue 18 in one call: install mmtok from carried wheels, run the test suite on CUDA, then the
# GPU rows of BENCHMARKS.md, and write OUT/gpu.json (everything) and OUT/gpu.md (the table).
#
#   bash benchmarks/fetch_wheels.sh     # first, here: wheels for a GPU machine without internet
#   bash benchmarks/gpu.sh OUT          # on the GPU machine (PyTorch installed), from the repository root
#
# Stages (each prints its name and elapsed seconds, runs under `timeout` with its own limit, and is recorded
# with its rc; a failed stage does not stop the script): install, env, tests (MMTOK_TEST_DEVICE=cuda pytest),
# selection (576->64 at batch 1 and 32, 2880->160), profile (llava-1.5-7b, llava-v1.6-vicuna-13b,
# qwen2.5-vl-7b; bf16, random weights built on the GPU), cache (benchmarks/cache.py, if present), summary.
# The whole run stays within GPU_BUDGET_S seconds (default 470, under 8 minutes): a stage gets at most what is
# left, and one that would get under 15 s is recorded as skipped.
#
# Dry mode (no CUDA, or DRY=1): every CUDA stage prints "skipped (no CUDA): ..." and is recorded as skipped;
# env.json, gpu.json and gpu.md are still written, rc 0. The install stage (pip install -e . into $PYTHON's
# environment) is skipped in dry mode when this Python already imports mmtok_cli with transformers >= 5.24 (a
# development venv: it is left alone), and always with NO_INSTALL=1; otherwise it runs.
#
# OUT holds five files at the end (the device tool brings back at most 8): env.json, gpu.json, gpu.md,
# tests.xml (junit, when the tests ran) and raw.tar.gz (every stage's log and JSON). KEEP_RAW=1 keeps OUT/raw/.
# Knobs: PYTHON (default python3), GPU_BUDGET_S, NO_INSTALL, TEST_WORKERS (pytest-xdist workers, default 8; 0 = serial),
# TEST_MAXFAIL (default 25: one call should show every failure, not only the first), SKIP (stage names to leave
# out, e.g. SKIP="tests" to rerun only the benchmarks).
set -euo pipefail

OUT=${1:?usage: bash benchmarks/gpu.sh OUT}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw
rm -rf "$RAW" "$OUT/raw.tar.gz" "$OUT/tests.xml" "$OUT/gpu.json" "$OUT/gpu.md" "$OUT/env.json"
mkdir -p "$RAW"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${GPU_BUDGET_S:-470}
T0=$(date +%s.%N)
STAGES=$RAW/stages.jsonl
: >"$STAGES"

now() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

record() {  # name status rc seconds reason
    printf '{"stage": "%s", "status": "%s", "rc": %s, "seconds": %s, "reason": "%s"}\n' "$1" "$2" "$3" "$4" "$5" \
        >>"$STAGES"
}

DRY_REASON=""
if [[ "${DRY:-0}" == "1" ]]; then
    DRY_REASON="DRY=1"
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    DRY_REASON="torch.cuda.is_available() is False"
fi

# stage NAME LIMIT_S CMD...: run CMD under timeout into raw/NAME.log; record rc and time; never stop the script.
stage() {
    local name=$1 want=$2
    shift 2
    local left limit start rc secs status
    if [[ " ${SKIP:-} " == *" $name "* ]]; then
        echo "== $name: skipped (SKIP)"
        record "$name" skipped null 0 "SKIP"
        return 0
    fi
    left=$(awk -v b="$BUDGET" -v t="$(now)" 'BEGIN { printf "%d", b - t - 5 }')
    limit=$((want < left ? want : left))
    if ((limit < 15)); then
        echo "== $name: skipped (out of time: ${left}s left of GPU_BUDGET_S=$BUDGET)"
        record "$name" skipped null 0 "out of time"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    start=$(date +%s.%N)
    set +e
    timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
    rc=$?
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    status=ok
    if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
    echo "== $name: $status (rc $rc) in ${secs}s"
    if [[ $status != ok ]]; then
        tail -n 25 "$RAW/$name.log" | sed 's/^/   | /'
    fi
    record "$name" "$status" "$rc" "$secs" ""
}

# cuda_stage NAME LIMIT_S CMD...: a stage that needs the GPU; in dry mode it is only recorded as skipped.
cuda_stage() {
    if [[ -n $DRY_REASON ]]; then
        echo "== $1: skipped (no CUDA): ${*:3}"
        record "$1" skipped null 0 "no CUDA: $DRY_REASON"
        return 0
    fi
    stage "$@"
}

echo "mmtok GPU check -> $OUT (budget ${BUDGET}s${DRY_REASON:+; dry mode: $DRY_REASON})"

# -- install: transformers >= 5.24 and mmtok from the carried wheels, nothing from the internet -----------------
# (a script string: `timeout` runs programs, not shell functions)
INSTALL='
if [[ ! -d benchmarks/wheels ]]; then
    echo "no benchmarks/wheels/: run \"bash benchmarks/fetch_wheels.sh\" on a machine with PyPI and carry the folder"
fi
"$PY" -m pip install --no-index --find-links benchmarks/wheels --no-build-isolation -e . && exit 0
echo "editable install failed; falling back to the wheels alone (mmtok then runs from PYTHONPATH=$PWD)"
"$PY" -m pip install --no-index --find-links benchmarks/wheels "transformers>=5.24,<6"
'
export PY
ready() {
    "$PY" - <<'EOF' 2>/dev/null
import mmtok_cli, transformers
major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
raise SystemExit(0 if (major, minor) >= (5, 24) else 1)
EOF
}
if [[ ${NO_INSTALL:-0} == 1 ]]; then
    echo "== install: skipped (NO_INSTALL=1)"
    record install skipped null 0 "NO_INSTALL=1"
elif [[ -n $DRY_REASON ]] && ready; then
    echo "== install: skipped (dry mode; this Python already has mmtok_cli and transformers >= 5.24)"
    record install skipped null 0 "dry mode, requirements present"
else
    stage install 120 bash -c "$INSTALL"
fi

# -- env ------------------------------------------------------------------------------------------------------
stage env 30 "$PY" - "$OUT/env.json" "$DRY_REASON" <<'EOF'
import json, platform, subprocess, sys

env = {"python": platform.python_version(), "dry": bool(sys.argv[2]), "dry_reason": sys.argv[2] or None}
try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    env["nvidia_smi"] = None
import torch

env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
try:
    env["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except (AssertionError, RuntimeError) as exc:
    env["device_name"] = f"error: {exc}"
try:
    import transformers

    env["transformers"] = transformers.__version__
except ImportError as exc:
    env["transformers"] = f"missing: {exc}"
try:
    import mmtok_cli

    env["mmtok"] = mmtok_cli.__version__
except ImportError as exc:
    env["mmtok"] = f"missing: {exc}"
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF
[[ -f $OUT/env.json ]] || printf '{"dry": %s, "dry_reason": "%s", "error": "the env stage failed"}\n' \
    "$([[ -n $DRY_REASON ]] && echo true || echo false)" "$DRY_REASON" >"$OUT/env.json"

# -- tests on CUDA (float32 where exact; bf16 smoke tests); Ray and lmms-eval left out (slow, not GPU code) ------
pytest_args=(-q -p no:cacheprovider --maxfail "${TEST_MAXFAIL:-25}" -k "not ray and not lmms" --junitxml "$OUT/tests.xml")
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then pytest_args+=(--timeout 120); fi
workers=${TEST_WORKERS:-8}
if ((workers > 0)) && "$PY" -c 'import xdist' 2>/dev/null; then pytest_args+=(-n "$workers" --dist loadfile); fi
cuda_stage tests 200 env MMTOK_TEST_DEVICE=cuda "$PY" -m pytest "${pytest_args[@]}"

# -- selection alone (random tensors of real sizes, float32) --------------------------------------------------
cuda_stage selection-576 40 "$PY" benchmarks/selection.py --device cuda --n 576 --k 64 --m 10 --batch 1,32 \
    --json "$RAW/selection-576.json"
cuda_stage selection-2880 30 "$PY" benchmarks/selection.py --device cuda --n 2880 --k 160 --m 10 --d 5120 \
    --batch 1 --json "$RAW/selection-2880.json"

# -- end to end: real architectures, random weights built on the GPU in bf16, 'full' always measured alongside --
profile() {  # ARCH TOKENS BATCHES LIMIT
    cuda_stage "profile-$1" "$4" "$PY" -m mmtok_cli profile --arch "$1" --tokens "$2" --batch-size "$3" \
        --device cuda --dtype bfloat16 --warmup 1 --repeats 3 --json "$RAW/profile-$1.json"
}
profile llava-1.5-7b 576,64 1,16 80
profile llava-v1.6-vicuna-13b 160 1 70
profile qwen2.5-vl-7b 64 1 60

# -- the encode-once cache, on and off ------------------------------------------------------------------------
if [[ -f benchmarks/cache.py ]]; then
    cuda_stage cache 60 "$PY" benchmarks/cache.py --arch llava-1.5-7b --device cuda --dtype bfloat16 \
        --json "$RAW/cache.json"
else
    echo "== cache: skipped: benchmarks/cache.py missing"
    record cache skipped null 0 "benchmarks/cache.py missing"
fi

# -- summary ----------------------------------------------------------------------------------------------------
echo "== summary"
"$PY" benchmarks/gpu_summary.py "$OUT" --total-s "$(now)"
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw
[[ ${KEEP_RAW:-0} == 1 ]] || rm -rf "$RAW"
echo "== done in $(now)s: $OUT/gpu.md, $OUT/gpu.json"
cat "$OUT/gpu.md"
