#!/usr/bin/env bash
# GPU end-to-end check (issue 11), one call on the GPU machine, set-up included, in under 10 min:
#   1. install mmengine / mmdet / pycocotools / ... from the wheels in $DEPS (no registry there)
#      and build mmcv 2.1.0's ops with CUDA from the sdist in $DEPS;
#   2. with BENCH="b1_backbone b8_launch_bound ...", run those benchmarks on $DEVICE ($BENCH_ARGS
#      appended, e.g. "--quick"), each to $OUT/<name>.json;
#   3. run benchmarks/gpu_e2e.py: the layers and the ε-step on CUDA vs float64 references,
#      train_step timing of the Cascade / Faster / Mask R-CNN R-50 triples (baseline, WS, WS+ε)
#      in fp32 and AMP, one profiled iteration, tools/train.py (loss, WeightNormStatsHook) and
#      tools/test.py (COCO metric) on a synthetic set; its rounds fit what is left of BUDGET_S.
#      Writes $OUT/gpu_e2e.{json,md} (with the tables of step 2) and $OUT/gpu_e2e.log.
#
#   .venv/bin/python benchmarks/fetch_gpu_deps.py       # here, once (PyPI): fills .gpu_deps/
#   bash benchmarks/gpu_e2e.sh                          # there, with carry [".gpu_deps"]
#   DEVICE=cpu SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_e2e.sh   # dry run, no install
#   BENCH="b1_backbone b2_optimizer_step b4_inference b8_launch_bound" bash benchmarks/gpu_e2e.sh
#   (COMPILE_BACKEND=aot_eager adds the compiled section to the dry run)
#
# mmcv build (MMCV_BUILD): `full` builds every op for this GPU's architecture only, `minimal`
# builds the CUDA kernels of nms and roi_align only (the ops these detectors run on the GPU;
# benchmarks/mmcv_minimal_ops.py trims a throw-away copy of the sdist), `auto` (default) tries
# `full` for MMCV_FULL_LIMIT_S seconds and then finishes as `minimal`, reusing every object the
# full build compiled. `none` uses the mmcv already importable. torch releases without
# THC/THCAtomics.cuh (every mmcv 2.1 .cu file includes it) get a one-line shim header that
# includes its successor, ATen/cuda/Atomic.cuh. The project's own code uses mmcv unchanged.
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
START=$(date +%s)
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu_e2e}
WORK=${WORK:-/tmp/mmdet_eps_gpu_e2e}
DEPS=${DEPS:-.gpu_deps}
BUDGET_S=${BUDGET_S:-570}            # the whole script; the device allows 600 s a command
MMCV_BUILD=${MMCV_BUILD:-auto}       # auto | full | minimal | none
MMCV_FULL_LIMIT_S=${MMCV_FULL_LIMIT_S:-240}
if [ "$DEVICE" = cpu ]; then INSTALL=${INSTALL:-0}; else INSTALL=${INSTALL:-1}; fi
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
LOG=$OUT/gpu_e2e.log
: > "$LOG"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_e2e $(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

install_wheels() {  # the pure-Python stack (and setuptools < 81 for pkg_resources) into $SITE
  ls "$DEPS"/wheels/*.whl > /dev/null || { log "no wheels in $DEPS/wheels: run fetch_gpu_deps.py"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$DEPS"/wheels/*.whl >> "$LOG" 2>&1
}

pip_build_mmcv() {  # pip_build_mmcv LIMIT_S LOGFILE: in-tree build, so objects survive a retry
  timeout "$1" "$PY" -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir \
    --upgrade --target "$SITE" "$SRC" > "$2" 2>&1
}

build_mmcv() {
  SRC=$WORK/mmcv-src
  rm -rf "$SRC" && mkdir -p "$SRC" && tar xzf "$DEPS"/mmcv-*.tar.gz -C "$SRC" --strip-components=1 || return 1
  local shim=$WORK/shim
  if ! "$PY" -c "import os, sys, torch.utils.cpp_extension as c
sys.exit(not any(os.path.exists(os.path.join(p, 'THC', 'THCAtomics.cuh')) for p in c.include_paths()))"; then
    mkdir -p "$shim/THC"
    echo '#include <ATen/cuda/Atomic.cuh>' > "$shim/THC/THCAtomics.cuh"
    export MMCV_CUDA_ARGS="-I$shim"
    log "torch ships no THC/THCAtomics.cuh: shim in $shim"
  fi
  export MMCV_WITH_OPS=1 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c \
    "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
  log "building mmcv ($MMCV_BUILD): MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  local t0=$SECONDS mode=none rc=1
  if [ "$MMCV_BUILD" = full ] || [ "$MMCV_BUILD" = auto ]; then
    local limit=$MMCV_FULL_LIMIT_S
    [ "$MMCV_BUILD" = full ] && limit=$((BUDGET_S - 60))
    pip_build_mmcv "$limit" "$WORK/mmcv_build_full.log"; rc=$?
    log "full build: exit $rc after $((SECONDS - t0)) s"
    tail -n 30 "$WORK/mmcv_build_full.log" >> "$LOG"
    [ $rc -eq 0 ] && mode=full
  fi
  if [ $rc -ne 0 ] && [ "$MMCV_BUILD" != full ]; then
    "$PY" benchmarks/mmcv_minimal_ops.py "$SRC" --ops nms roi_align 2>&1 | tee -a "$LOG"
    local left=$((BUDGET_S - SECONDS - 150))  # keep 150 s for the benchmarks
    [ $left -lt 60 ] && left=60
    pip_build_mmcv $left "$WORK/mmcv_build_minimal.log"; rc=$?
    log "minimal build: exit $rc after $((SECONDS - t0)) s in all"
    tail -n 30 "$WORK/mmcv_build_minimal.log" >> "$LOG"
    [ $rc -eq 0 ] && mode=minimal
  fi
  printf '{"mode": "%s", "seconds": %d, "exit": %d, "arch": "%s", "max_jobs": %s, "thc_shim": %s}\n' \
    "$mode" $((SECONDS - t0)) $rc "$TORCH_CUDA_ARCH_LIST" "$MAX_JOBS" \
    "$([ -e "$shim/THC" ] && echo true || echo false)" > "$WORK/build.json"
  return $rc
}

if [ "$INSTALL" = 1 ]; then
  SITE=$WORK/site
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  log "installing wheels from $DEPS into $SITE"
  install_wheels || exit 1
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [ "$MMCV_BUILD" != none ]; then
    build_mmcv || { log "mmcv could not be built (logs above)"; exit 1; }
  fi
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  printf '{"mode": "preinstalled", "exit": 0}\n' > "$WORK/build.json"
fi
"$PY" -c "import mmcv, mmcv.ops, mmdet, mmengine, mmdet_eps, torch
print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmengine', mmengine.__version__,
      'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "the stack does not import"; exit 1; }
if [ "$DEVICE" != cpu ]; then  # the two CUDA ops the detectors use, against their CPU kernels
  "$PY" -c "import torch; from mmcv.ops import nms, roi_align
b = torch.rand(200, 4) * 100; b[:, 2:] += b[:, :2]; s = torch.rand(200)
assert torch.equal(nms(b.cuda(), s.cuda(), 0.5)[1].cpu(), nms(b, s, 0.5)[1])
x = torch.rand(1, 8, 32, 32); r = torch.tensor([[0., 2., 3., 20., 25.]])
assert torch.allclose(roi_align(x.cuda(), r.cuda(), 7, 1.0, 2).cpu(), roi_align(x, r, 7, 1.0, 2), atol=1e-5)
print('mmcv CUDA nms and roi_align: OK')" 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { log "mmcv's CUDA ops fail"; exit 1; }
fi

rm -f "$OUT"/b[0-9]_*.json
status=0
for bench in ${BENCH:-}; do
  log "benchmarks/$bench.py --device $DEVICE ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
  "$PY" "benchmarks/$bench.py" --device "$DEVICE" --out "$OUT/$bench.json" ${BENCH_ARGS:-} 2>&1 \
    | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { log "$bench failed"; status=1; }
done

ARGS=(--device "$DEVICE" --out "$OUT" --work "$WORK" --commit "$COMMIT"
      --build-info "$WORK/build.json" --deadline $((START + BUDGET_S)))
[ "$SMOKE" = 1 ] && ARGS+=(--quick)
# the compiled Cascade train_step runs on CUDA by default; COMPILE_BACKEND also turns it on a CPU
[ -n "${COMPILE_BACKEND:-}" ] && ARGS+=(--compile --compile-backend "$COMPILE_BACKEND")
log "benchmarks/gpu_e2e.py ${ARGS[*]}"
"$PY" benchmarks/gpu_e2e.py "${ARGS[@]}" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
log "gpu_e2e.py: exit $status; results in $OUT"
exit "$status"
