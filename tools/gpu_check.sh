#!/usr/bin/env bash
# The GPU checks of lthfast as one prepared script, for a session that is lent a GPU
# (the `device` tool's `run`; its command runs in the repository root, results under $OUT).
#
#   bash tools/gpu_check.sh build test      # ~6 min: build for sm_90, smoke + sanitizers, CUDA tests
#   bash tools/gpu_check.sh bench           # ~5 min, right after (the warm machine keeps the build)
#   bash tools/gpu_check.sh imp             # bench imp_round (fasterrcnn_resnet50_fpn) and a short
#                                           # `lthfast imp --device cuda --amp` (need pycocotools)
#
# Stages: build, test (tools/gpu_smoke.py plain and under compute-sanitizer memcheck /
# racecheck, then tests/test_*_cuda.py), bench (threshold, optim, train_step, ticket, conv
# --quick on cuda), imp (bench imp_round, lthfast imp --amp). Every stage has its own time
# limit so one slow step cannot eat the lease. Output: $OUT/summary.txt (also printed last),
# $OUT/logs.txt (every step's output, the bench tables included), $OUT/cuda-<suite>.json,
# $OUT/imp-metrics.json. Only 8 files come back from one call: run bench and imp in separate
# calls. Commit the JSON and tables under bench/results/.
#
# pycocotools is not in the GPU image: for `imp`, carry it as a wheel (see the device
# tool's README): here `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux_2_17_x86_64 -d .whl pycocotools`, then carry `.whl`.
set -u
OUT=${OUT:-/tmp/lthfast-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
LOGS="$OUT/logs.txt"

# step NAME SECONDS CMD...: runs CMD under a time limit, appends its output to logs.txt
# and one line (rc, seconds, last line) to summary.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "===== $name (limit ${limit}s): $*" >>"$LOGS"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/.step.log" 2>&1
  local rc=$?
  cat "$OUT/.step.log" >>"$LOGS"
  local last
  last=$(grep -v '^\s*$' "$OUT/.step.log" | tail -1 | cut -c1-160)
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$last" | tee -a "$SUMMARY"
  rm -f "$OUT/.step.log"
  return $rc
}

stage_build() {
  step nvidia-smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step torch 30 "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  step build 420 "$PY" -m pip install --no-build-isolation --no-deps -e .
  step info 60 "$PY" -m lthfast.info
}

stage_test() {
  step smoke 120 "$PY" tools/gpu_smoke.py
  step memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" tools/gpu_smoke.py
  step racecheck 240 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" tools/gpu_smoke.py
  step cuda-tests 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_threshold_cuda.py \
    tests/test_bitmask_cuda.py tests/test_optim_cuda.py tests/test_masked_conv_cuda.py \
    tests/test_mask_counts.py
}

stage_bench() {
  for suite in threshold optim train_step ticket; do
    step "bench-$suite" 150 "$PY" -m lthfast bench "$suite" --device cuda --json "$OUT/cuda-$suite.json"
  done
  step bench-conv 200 "$PY" -m lthfast bench conv --device cuda --quick --json "$OUT/cuda-conv.json"
}

stage_imp() {
  if ! "$PY" -c "import pycocotools" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
  fi
  step bench-imp_round 240 "$PY" -m lthfast bench imp_round --device cuda \
    --json "$OUT/cuda-imp_round.json"
  step imp-amp 300 "$PY" -m lthfast imp --device cuda --amp --rounds 2 --iters 300 \
    --out "$OUT/imp-run" --quiet
  cp "$OUT/imp-run/metrics.json" "$OUT/imp-metrics.json" 2>/dev/null || true
  rm -rf "$OUT/imp-run"  # only a few files come back from $OUT
}

[ $# -gt 0 ] || set -- build test
for s in "$@"; do
  case $s in
    build | test | bench | imp) "stage_$s" ;;
    *) echo "unknown stage $s (build, test, bench, imp)"; exit 2 ;;
  esac
done
echo
echo "---- summary ($OUT/summary.txt)"
cat "$SUMMARY"
