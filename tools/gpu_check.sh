#!/usr/bin/env bash
# The GPU checks of lthfast as one prepared script, for a session that is lent a GPU
# (the `device` tool's `run`; its command runs in the repository root, results under $OUT).
#
#   bash tools/gpu_check.sh build test memcheck racecheck   # build for sm_90, smoke, CUDA tests,
#                                                           # smoke under compute-sanitizer
#   bash tools/gpu_check.sh bench     # right after, on the warm machine (it keeps the build);
#                                     # BENCH_SUITES="threshold optim" picks suites
#   bash tools/gpu_check.sh profile   # host vs kernel time of the GPU paths (tools/gpu_profile.py)
#   bash tools/gpu_check.sh imp       # a short `lthfast imp --device cuda --amp`
#   bash tools/gpu_check.sh threshold-tests  # tests/test_threshold_cuda.py alone
#   bash tools/gpu_check.sh kernels   # per-kernel threshold times; the optimizer step's host vs
#                                     # kernel time (tools/gpu_kernel_times.py)
#
# Stages: build (pip install -e . for sm_90, lthfast info), test (tools/gpu_smoke.py: every
# CUDA op against the CPU kernels; every test marked `cuda`; mask_counts; the build test),
# memcheck / racecheck (the smoke script under compute-sanitizer), bench (threshold, optim,
# conv --quick, train_step, imp_round, ticket on cuda, most wanted first), imp. Every step
# has its own time limit so one slow step cannot eat the lease. Output: $OUT/summary.txt
# (also printed last), $OUT/logs.txt (every step's output, the bench tables included),
# $OUT/cuda-<suite>.json, $OUT/imp-metrics.json: at most 8 files come back from one call.
# Commit the JSON and tables under bench/results/.
#
# pycocotools is not in the GPU image (bench imp_round and imp need it): carry it as a wheel
# (see the device tool's README): here `python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 -d .whl
# pycocotools`, then carry `.whl`.
set -u
OUT=${OUT:-/tmp/lthfast-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # scripts under tools/ import this checkout
SUMMARY="$OUT/summary.txt"
LOGS="$OUT/logs.txt"
touch "$LOGS"

# step NAME SECONDS CMD...: runs CMD under a time limit, its output straight into logs.txt
# (so a call cut by its own limit still brings it back), and one line (rc, seconds, last
# line of output) into summary.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "===== $name (limit ${limit}s): $*" >>"$LOGS"
  local from
  from=$(wc -l <"$LOGS")
  timeout --kill-after=10 "$limit" "$@" >>"$LOGS" 2>&1
  local rc=$?
  local last
  last=$(tail -n +"$((from + 1))" "$LOGS" | grep -v '^\s*$' | tail -1 | cut -c1-160)
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$last" | tee -a "$SUMMARY"
  return $rc
}

stage_build() {
  step nvidia-smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step torch 30 "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  step build 420 "$PY" -m pip install --no-build-isolation --no-deps -e .
  step info 60 "$PY" -m lthfast.info
  # the extension must use the shared libstdc++ (a static copy crashed C++ error messages)
  step libstdcxx 20 bash -c 'ldd lthfast/_C*.so | grep libstdc++'
  # built with OpenMP (else every CPU kernel runs on one thread), one runtime in the process
  step openmp 60 "$PY" -c 'import torch, lthfast; assert lthfast.build_info()["openmp"] == torch._C.has_openmp, lthfast.build_info(); print([l.split()[-1] for l in open("/proc/self/maps") if "gomp" in l and "r-xp" in l])'
}

stage_test() {
  step smoke 120 "$PY" tools/gpu_smoke.py
  local par=()  # pytest-xdist and pytest-timeout where the image has them
  "$PY" -c "import xdist" 2>/dev/null && par+=(-n 8)
  "$PY" -c "import pytest_timeout" 2>/dev/null && par+=(--timeout 180)
  step cuda-tests 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda "${par[@]}" \
    --tb=short -rf tests
  LTHFAST_EXPECT_CUDA_BUILD=1 step mask-counts-build 90 "$PY" -m pytest -q -p no:cacheprovider \
    --tb=short -rf tests/test_mask_counts.py tests/test_build.py::test_cuda_kernels_were_compiled
}

# the threshold CUDA tests alone (every path of the kernel), for a short re-check
stage_threshold_tests() {
  local par=()
  "$PY" -c "import xdist" 2>/dev/null && par+=(-n 8)
  step threshold-tests 150 "$PY" -m pytest -q -p no:cacheprovider "${par[@]}" --tb=short -rf \
    tests/test_threshold_cuda.py
}

# compute-sanitizer on the smoke script, checking lthfast's own kernels only (all live in
# namespace lthfast; torch's and cuDNN's run unchecked, which keeps this to minutes), with
# torch's caching allocator off so that an out-of-bounds access lands outside an allocation.
sanitize() {
  local tool=$1 limit=$2 filt=()
  compute-sanitizer --help 2>/dev/null | grep -q -- '--kernel-name ' && filt=(--kernel-name kns=lthfast)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "$tool" "$limit" compute-sanitizer --tool "$tool" \
    "${filt[@]}" --error-exitcode 9 --print-limit 20 "$PY" tools/gpu_smoke.py
}

stage_memcheck() { sanitize memcheck 180; }

stage_racecheck() { sanitize racecheck 200; }

_coco() {
  if ! "$PY" -c "import pycocotools" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

# Most wanted first: a step cut by the call's limit still leaves the earlier JSON in $OUT.
# BENCH_SUITES picks suites (space-separated, in this order by default).
bench_limit() {
  case $1 in threshold | conv) echo 150 ;; imp_round) echo 120 ;; ticket) echo 60 ;; *) echo 90 ;; esac
}

stage_bench() {
  _coco
  local suite extra
  for suite in ${BENCH_SUITES:-threshold optim conv train_step imp_round ticket}; do
    extra=()
    [ "$suite" = conv ] && extra=(--quick)
    step "bench-$suite" "$(bench_limit "$suite")" "$PY" -m lthfast bench "$suite" --device cuda \
      "${extra[@]}" --json "$OUT/cuda-$suite.json"
  done
}

# where the GPU paths spend their time (host vs kernels, launches): tools/gpu_profile.py
stage_profile() {
  step profile 180 "$PY" tools/gpu_profile.py
}

# per-kernel threshold time, optimizer host vs kernel time
stage_kernels() {
  step kernels 150 "$PY" tools/gpu_kernel_times.py
}

stage_imp() {
  _coco
  step imp-amp 300 "$PY" -m lthfast imp --device cuda --amp --rounds 2 --iters 300 \
    --out "$OUT/imp-run" --quiet
  cp "$OUT/imp-run/metrics.json" "$OUT/imp-metrics.json" 2>/dev/null || true
  rm -rf "$OUT/imp-run"  # only a few files come back from $OUT
}

[ $# -gt 0 ] || set -- build test
for s in "$@"; do
  case $s in
    build | test | memcheck | racecheck | bench | profile | imp | kernels) "stage_$s" ;;
    threshold-tests) stage_threshold_tests ;;
    *) echo "unknown stage $s (build, test, threshold-tests, memcheck, racecheck, bench, profile, imp, kernels)"; exit 2 ;;
  esac
done
echo
echo "---- summary ($OUT/summary.txt)"
cat "$SUMMARY"
