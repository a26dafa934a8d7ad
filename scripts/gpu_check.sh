#!/usr/bin/env bash
# The GPU path, checked in one short run (about 5 min on one H100/H200): the CUDA tests, the adapter benchmark in
# bf16 with grouped_mm on CUDA, a few hundred LALM training steps with bf16 autocast, and the MoE's TFLOP/s as a
# share of the dense arm's at whisper-large-to-7b (goal >= 60%).
#
#   scripts/gpu_check.sh [--dry-run] [OUT]      # OUT defaults to ./gpu-check-out
#
# Python: .venv/bin/python when it sees a GPU, else $PYTHON, else python3 (a machine's CUDA build of torch; the
# repository's src/ goes on PYTHONPATH). Where `make install` can reach the package index it is run first. On a
# machine with no index, carry the few wheels torch images lack (soundfile, soxr, jiwer) and install them first.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
out="${1:-gpu-check-out}"

step() { echo "+ $*"; if [[ $dry_run == 0 ]]; then "$@"; fi; }

python="${PYTHON:-python3}"
if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  python=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

step mkdir -p "$out"
step nvidia-smi -L
step "$python" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())'
step "$python" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider
step "$python" -m audiomoe.cli.main bench adapter --device cuda --dtype bfloat16 --no-hf --repeats 10 \
  --json "$out/bench-adapter-cuda.json"
step "$python" scripts/gpu_train_check.py "$out/train" --steps 300
step "$python" - "$out/bench-adapter-cuda.json" <<'PY'
import json, sys
if len(sys.argv) < 2:
    sys.exit(0)
result = json.load(open(sys.argv[1]))
print(f"machine: {result['machine']}, {result['dtype']}")
for name, shape in result["shapes"].items():
    moe, dense = shape["arms"]["moe"]["tflops"], shape["arms"]["dense"]["tflops"]
    share = shape["moe_tflops_share_of_dense"]
    print(f"{name}: MoE {moe['forward_backward']:.1f} TFLOP/s fwd+bwd vs dense {dense['forward_backward']:.1f}"
          f" = {share['forward_backward']:.0%} (fwd {share['forward']:.0%})")
goal = result["shapes"]["whisper-large-to-7b"]["moe_tflops_share_of_dense"]["forward_backward"]
print(f"goal (MoE >= 60% of dense TFLOP/s at whisper-large-to-7b, fwd+bwd): {'met' if goal >= 0.6 else 'NOT met'} ({goal:.0%})")
PY
