#!/usr/bin/env bash
# GPU check: numerics of the grouped WS Function and the ε-shifted step on CUDA, then B1, B2, B4
# and B8 on CUDA. Needs only python + torch with CUDA (no mmcv / mmengine / mmdet, no internet): the
# benchmarks import the package's torch-only files directly (benchmarks/_torch_only.py).
# Budget: well under 8 minutes on one H100 (most of it start-up and cudnn autotuning).
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (or benchmarks/results/gpu)
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_check.sh   # try the script itself on a CPU machine
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
if [ "${SMOKE:-0}" = 1 ]; then
  S1="64"; S2="64"; S3="96x64"; R1=2; R2=2; R3=2; R4=2; R8=2; B16=2
else
  S1="320 512"; S2="512"; S3="1344x800"; R1=30; R2=20; R3=25; R4=40; R8=40; B16=16
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
status=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
step env 60 "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
export MMDET_EPS_BENCH_TORCH_ONLY=1  # the same code path whether or not mmdet is installed

step numerics 120 "$PY" benchmarks/gpu_numerics.py --device "$DEVICE" --out "$OUT/numerics.json"
step B1 150 "$PY" benchmarks/b1_backbone.py --device "$DEVICE" --batch 2 --sizes $S1 \
  --rounds $R1 --out "$OUT/B1.json"
step B1_batch16 120 "$PY" benchmarks/b1_backbone.py --device "$DEVICE" --batch $B16 --sizes $S2 \
  --rounds $R2 --out "$OUT/B1_batch16.json"
step B1_coco 150 "$PY" benchmarks/b1_backbone.py --device "$DEVICE" --batch 2 --sizes $S3 \
  --rounds $R2 --out "$OUT/B1_coco.json"
step B8 150 "$PY" benchmarks/b8_launch_bound.py --device "$DEVICE" --rounds $R8 \
  --out "$OUT/B8.json"
step B8_coco 150 "$PY" benchmarks/b8_launch_bound.py --device "$DEVICE" --width 64 --size $S3 \
  --frozen 1 --rounds $R2 --out "$OUT/B8_coco.json"
step B2 120 "$PY" benchmarks/b2_optimizer_step.py --device "$DEVICE" --rounds $R3 \
  --out "$OUT/B2.json"
step B4 90 "$PY" benchmarks/b4_inference.py --device "$DEVICE" --batch 2 --sizes $S1 \
  --rounds $R4 --out "$OUT/B4.json"

# one markdown file with every table
"$PY" - "$OUT" <<'EOF' || status=1
import json, os, sys
sys.path.insert(0, 'benchmarks')
from _common import format_table
out = sys.argv[1]
parts = []
for name in ('B1', 'B1_batch16', 'B1_coco', 'B2', 'B4', 'B8', 'B8_coco'):
    path = os.path.join(out, f'{name}.json')
    if os.path.exists(path):
        with open(path) as f:
            p = json.load(f)
        env = p['env']
        parts.append(format_table(p['rows'], title=f'{name}: {p["title"]} '
                                  f'({env.get("gpu", "?")}, torch {env["torch"]})'))
        parts += [f'- {n}\n' for n in p.get('notes', [])]
path = os.path.join(out, 'numerics.json')
if os.path.exists(path):
    with open(path) as f:
        n = json.load(f)
    parts.append(f'\nnumerics on {n["device"]}: worst relative error {n["worst_rel_err"]:.2e} '
                 f'({"OK" if n["ok"] else "FAIL"})\n')
with open(os.path.join(out, 'gpu_check.md'), 'w') as f:
    f.write('\n'.join(parts))
print('\n'.join(parts))
EOF
echo "gpu_check: exit $status; results in $OUT" | tee -a "$LOG"
exit $status
