#!/usr/bin/env bash
# Quality studies on the lent GPU machine (see bench/quality.py). Installs the carried wheels, compiles gsplat once,
# then starts the given quality.py invocations in the background (setsid) writing under /tmp/quality/<name>, so a
# study longer than one device call survives between calls; `collect` waits for them and copies the results to $OUT.
#   start:   bash bench/device_quality.sh start NAME 'ARGS' [NAME 'ARGS' ...]
#   collect: bash bench/device_quality.sh collect SECONDS
# With several GPUs the studies go round-robin over them (CUDA_VISIBLE_DEVICES), in the order given. `collect`
# packs every study's results into $OUT/quality.tar.gz (the device tool returns at most 8 files).
# MPS=1 runs the studies under CUDA MPS: without it concurrent processes time-slice the GPU, so a dozen small runs
# take as long as one after another (session 5: 12 Gaussian runs at once, 6.5 min each, 35 s alone).
# Keep a lease to about 48 processes at once: session 14 started 90 and 14 failed on MPS's client limit ("CUDA-capable
# device(s) is/are busy or unavailable") and 3 ran out of the GPU's memory.
set -u
mode=$1; shift
if [ "$mode" = start ]; then
  rm -rf /tmp/quality
  # Once per machine: reinstalling gsplat makes it compile its kernels again (70 s).
  [ -d /tmp/site/gsplat ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:. MAX_JOBS=16 PYTHONUNBUFFERED=1
  if [ "${MPS:-0}" = 1 ]; then
    nvidia-cuda-mps-control -d && python3 -c "import torch; print('MPS up:', torch.ones(1, device='cuda').sum().item())" \
      || { echo quit | nvidia-cuda-mps-control; echo "MPS did not start: the studies time-slice the GPU"; }
  fi
  python3 - <<'PY'
import time, torch
from backend.scene.splatting import rasterize
t = time.time()
d = "cuda"
rasterize(torch.zeros(4, 3, device=d), torch.tensor([[1.0, 0, 0, 0]] * 4, device=d), torch.full((4, 3), 0.1, device=d),
          torch.full((4,), 0.5, device=d), torch.rand(4, 3, device=d), torch.eye(4, device=d)[None].clone(),
          torch.tensor([[[32.0, 0, 16], [0, 32, 16], [0, 0, 1]]], device=d), 32, 32, backend="gsplat")
print(f"gsplat ready in {time.time() - t:.0f} s", flush=True)
PY
  mkdir -p /tmp/quality
  # Byte-compile before dozens of processes import the tree at once, so they do not race to write __pycache__. With
  # 40 processes starting together a few failed with ModuleNotFoundError for modules that were there (session 7: 5
  # of 134 runs without this, 1 of 120 with it, so the race is not only there); check each study's `error` rows.
  python3 -m compileall -q backend shared bench >/dev/null
  # Session 15: 4 of 48 runs still failed at import (ModuleNotFoundError for modules that were there; triton's "could
  # not get source code" for a file that was there), so the studies run from a copy on the machine's own /tmp.
  rm -rf /tmp/tree && mkdir -p /tmp/tree && cp -a backend shared bench models pyproject.toml /tmp/tree/ && cd /tmp/tree
  gpus=$(nvidia-smi -L | wc -l); i=0
  while [ $# -ge 2 ]; do
    name=$1; args=$2; shift 2
    printf '%s' "$args" > /tmp/quality/$name.args  # shell words, single-quoted JSON kept whole by eval below
    gpu=$((i % gpus)); i=$((i + 1)); echo "$name on GPU $gpu"
    CUDA_VISIBLE_DEVICES=$gpu setsid nohup bash -c "eval python3 bench/quality.py --out /tmp/quality/$name \$(cat /tmp/quality/$name.args) > /tmp/quality/$name.log 2>&1; echo done > /tmp/quality/$name.done" >/dev/null 2>&1 &
  done
  sleep 5; ls /tmp/quality; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
elif [ "$mode" = collect ]; then
  deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    pending=0
    for log in /tmp/quality/*.log; do [ -e "${log%.log}.done" ] || pending=1; done
    [ $pending = 0 ] && break
    sleep 10
  done
  for log in /tmp/quality/*.log; do
    name=$(basename "${log%.log}")
    echo "== $name: $(wc -l < "$log") lines, done: $([ -e /tmp/quality/$name.done ] && echo yes || echo no)"; tail -3 "$log"
  done
  (cd /tmp/quality && tar czf "$OUT/quality.tar.gz" --exclude='runs' */quality.json */quality.md */contact_sheet*.png *.log 2>/dev/null)
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
fi
