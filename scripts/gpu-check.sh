#!/usr/bin/env bash
# Everything of the stability project that needs a GPU, in one run: at most 8 minutes on
# one H200, with nothing but this repo and pip, no network. Writes logs and one JSON
# summary into the folder given as its argument (docs/performance.md, "GPU check").
#
#   bash scripts/gpu-check.sh OUT
#
# Sections, each timed, each under its own `timeout`, each allowed to fail alone:
#   setup               the interpreter and its packages; installs .whl/*.whl (no index) when
#                       polars is missing and a .whl/ folder is present (an offline device)
#   machine             nvidia-smi name/driver, torch, CUDA, Python -> OUT/machine.json
#   gpu_tests           pytest -m gpu tests/test_gpu.py -> OUT/gpu_tests.xml; the bf16 vs fp32
#                       max-logit check, the kernel max scores vs fp32 probe check (bf16, fp32)
#                       and the CUDA resume check record their numbers there (summary: logit_check)
#   throughput          benchmarks/gpu_throughput.py at ~100M parameters, bf16: tokens/s, MFU
#                       in two FLOP conventions against the datasheet and a measured matmul rate,
#                       monitoring overhead with max logits from the probe and from the kernel
#                       (summary: monitoring_overhead, target <= 2% with the kernel)
#   train_slice         300 steps of a config/gpu.yaml slice (g3, LR 1e-2, qk_ln) on the repo's
#                       own text through `python -m stability train`
#   throughput_compile  the same benchmark with train.compile=true (compilation not timed)
#   fused_sweep         benchmarks/fused_sweep.py --json OUT/fused_sweep.json: combined tokens/s of a
#                       6 LR x 2 seed sweep trained as one program (stability/fused.py) against the
#                       12 runs one at a time, d=32, 64, 256 (its ratio feeds fusion.should_fuse)
# then OUT/summary.json (benchmarks/gpu_check.py summarize).
#
# Environment:
#   PYTHON                          interpreter (default: .venv/bin/python if present, else python3)
#   STABILITY_GPU_CHECK_ALLOW_CPU=1 without CUDA, run every section at tiny sizes on CPU
#                                   (a plumbing check; its numbers say nothing about GPUs)
#   STABILITY_GPU_CHECK_BUDGET_S    total wall budget in seconds (default 450; 900 and every
#                                   timeout doubled in a CPU plumbing run); a section's timeout
#                                   is cut to what is left, and the section skipped below 20 s
#   STABILITY_GPU_CHECK_SECTIONS    comma list: run only these sections (setup and machine always run)
#   STABILITY_GPU_CHECK_SITE        where .whl/ is installed (default /tmp/stability-gpu-check-site)
#   STABILITY_GPU_CHECK_COMMIT      the commit, recorded when the tree has no .git
# Exit status: 0 all sections ok (or skipped by choice), 1 a section failed, 2 no CUDA.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash scripts/gpu-check.sh OUT_DIR" >&2
  exit 64
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 1
OUT=$(cd "$1" && pwd)
cd "$REPO" || exit 1
# Outputs of an earlier run into OUT would be mistaken for this run's.
rm -rf "$OUT/logs" "$OUT/sections" "$OUT/train" "$OUT"/{summary,run,machine,throughput,throughput_compile,fused_sweep}.json \
  "$OUT/gpu_tests.xml"
mkdir -p "$OUT/logs" "$OUT/sections"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stability-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BUDGET=${STABILITY_GPU_CHECK_BUDGET_S:-450}  # doubled below for a CPU plumbing run
RESERVE=15  # seconds kept for the summary
T_START=$(date +%s)
SITE=${STABILITY_GPU_CHECK_SITE:-/tmp/stability-gpu-check-site}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the package from this tree, no install
MAIN_LOG=$OUT/logs/gpu-check.log
: > "$MAIN_LOG"

say() { echo "$*" | tee -a "$MAIN_LOG"; }
now() { date +%s.%N; }
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

record() {  # name status rc wall timeout command
  printf '{"name": "%s", "status": %s, "rc": %s, "wall_s": %s, "timeout_s": %s, "log": "logs/%s.log", "command": %s}\n' \
    "$1" "$(json_str "$2")" "${3:-null}" "${4:-null}" "${5:-null}" "$1" "$(json_str "${6:-}")" > "$OUT/sections/$1.json"
}

wanted() {  # setup and machine always run; the others as STABILITY_GPU_CHECK_SECTIONS says
  [ -z "${STABILITY_GPU_CHECK_SECTIONS:-}" ] || [ "$1" = machine ] && return 0
  case ",$STABILITY_GPU_CHECK_SECTIONS," in *",$1,"*) return 0 ;; esac
  return 1
}

SLOW=1  # timeout multiplier: 2 on CPU
section() {  # name timeout_s command...: run it under timeout, log it, record it
  local name=$1 limit=$(($2 * SLOW))
  shift 2
  if ! wanted "$name"; then record "$name" "skipped: not in STABILITY_GPU_CHECK_SECTIONS"; return; fi
  local left=$((T_START + BUDGET - RESERVE - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    say "== $name: skipped, ${left}s left of the ${BUDGET}s budget"
    record "$name" "skipped: no time left in the ${BUDGET}s budget" "" "" "" "$*"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (timeout ${limit}s): $*"
  local t0 t1 rc status
  t0=$(now)
  # timeout signals the whole process group, so a section's child processes end with it.
  timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  t1=$(now)
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status="failed: exit $rc" ;;
  esac
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  say "   $status in ${wall}s (log: logs/$name.log)"
  record "$name" "$status" "$rc" "$wall" "$limit" "$*"
}

# ---- setup: the interpreter and its packages ------------------------------------------------
setup() {
  echo "python: $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
  if ! "$PYTHON" -c 'import polars' 2>/dev/null; then
    if ls "$REPO"/.whl/*.whl > /dev/null 2>&1; then
      echo "polars missing: installing $(ls "$REPO"/.whl | tr '\n' ' ')into $SITE (no index)"
      if ! timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target "$SITE" "$REPO"/.whl/*.whl; then
        echo "pip failed or is missing; unpacking the wheels directly (they are pure Python or abi3)"
        "$PYTHON" - "$SITE" "$REPO"/.whl/*.whl <<'EOF' || return 1
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
      fi
      export PYTHONPATH="$PYTHONPATH:$SITE"
    else
      echo "polars missing and no .whl/ folder: install the package first (pip install -e '.[dev]')"
    fi
  fi
  "$PYTHON" -c 'import torch, numpy, yaml, polars, pytest; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("polars", polars.__version__)'
}
say "gpu-check: repo $REPO -> $OUT, budget ${BUDGET}s, started $(date -u +%FT%TZ)"
t0=$(now)
setup > "$OUT/logs/setup.log" 2>&1  # a function call: runs in this shell, so its export holds
rc=$?
wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
if [ $rc -eq 0 ]; then status=ok; else status="failed: exit $rc"; fi
say "== setup: $status in ${wall}s (log: logs/setup.log)"
record setup "$status" "$rc" "$wall" 120 "setup (see scripts/gpu-check.sh)"

section machine 60 "$PYTHON" benchmarks/gpu_check.py machine "$OUT/machine.json"

NO_GPU_WHY="no CUDA (torch.cuda.is_available() is False)"
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then  # not a driver problem: say so
  NO_GPU_WHY="torch not importable by $PYTHON (logs/setup.log; install the package, or set PYTHON)"
  MODE=no-cuda
elif "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  MODE=gpu
elif [ "${STABILITY_GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
  MODE=cpu-plumbing
else
  MODE=no-cuda
fi

TP_CPU=()
SLICE_CPU=()
if [ "$MODE" = cpu-plumbing ]; then
  SLOW=2
  [ -z "${STABILITY_GPU_CHECK_BUDGET_S:-}" ] && BUDGET=900
  export STABILITY_GPU_TESTS_ON_CPU=1
  TP_CPU=(--device cpu --scale 64x2x32 --vocab 256 --batch 4 --seq-len 64 --warmup 1 --chunks 2 --chunk 2 --mm-repeats 2)
  SLICE_CPU=(--cpu)
fi

printf '{"mode": "%s", "started": "%s", "budget_s": %s}\n' "$MODE" \
  "$(date -u -d "@$T_START" +%FT%TZ)" "$BUDGET" > "$OUT/run.json"
say "mode: $MODE, budget ${BUDGET}s"

SECTIONS=(gpu_tests throughput train_slice throughput_compile)
if [ "$MODE" = no-cuda ]; then
  for s in "${SECTIONS[@]}"; do record "$s" "skipped: $NO_GPU_WHY"; done
else
  section gpu_tests 240 "$PYTHON" -m pytest tests/test_gpu.py -m gpu -p no:cacheprovider -rA -v \
    -o junit_family=xunit1 --junitxml="$OUT/gpu_tests.xml"
  section throughput 120 "$PYTHON" benchmarks/gpu_throughput.py "${TP_CPU[@]}" --json "$OUT/throughput.json"
  section train_slice 150 "$PYTHON" benchmarks/gpu_check.py train-slice "$OUT" --work "$WORK" "${SLICE_CPU[@]}"
  section throughput_compile 180 "$PYTHON" benchmarks/gpu_throughput.py "${TP_CPU[@]}" --compile \
    --json "$OUT/throughput_compile.json"
fi

# The fused-sweep benchmark (issue 17, part 3); "not built" only on a tree without it.
if [ ! -f benchmarks/fused_sweep.py ]; then
  record fused_sweep "not built"
elif [ "$MODE" = no-cuda ]; then
  record fused_sweep "skipped: $NO_GPU_WHY"
else
  FS_CPU=()
  [ "$MODE" = cpu-plumbing ] && FS_CPU=(--device cpu --quick)
  section fused_sweep 120 "$PYTHON" benchmarks/fused_sweep.py "${FS_CPU[@]}" --json "$OUT/fused_sweep.json"
fi

"$PYTHON" benchmarks/gpu_check.py summarize "$OUT" 2>&1 | tee -a "$MAIN_LOG"
if [ ! -s "$OUT/summary.json" ]; then
  say "gpu-check: could not write $OUT/summary.json; the section records are in $OUT/sections/"
  exit 1
fi
say "gpu-check: finished in $(($(date +%s) - T_START))s"
failed=$("$PYTHON" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["failed_sections"]))' \
  "$OUT/summary.json" 2>/dev/null)
for name in $failed; do  # the end of each failing section's log, here too
  say "---- last lines of logs/$name.log"
  tail -n 25 "$OUT/logs/$name.log" 2>/dev/null | tee -a "$MAIN_LOG"
done
if [ "$MODE" = no-cuda ]; then
  say "gpu-check: $NO_GPU_WHY; nothing ran on a GPU (STABILITY_GPU_CHECK_ALLOW_CPU=1: a CPU plumbing run)"
  exit 2
fi
[ -z "$failed" ] && exit 0
exit 1
