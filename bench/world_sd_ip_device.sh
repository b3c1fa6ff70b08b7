#!/usr/bin/env bash
# world-SD's IP-Adapter on the lent GPU machine (backend/worldsd/train_ip.py), and ISD's ms per step on random SD 1.5 +
# IP-Adapter weights (backend/benchmark.py, prior sd15-ip-random). Modelled on bench/world_sd_device.sh, but each mode
# fits one device call (10 min): the training stops itself by the clock (--stop-after-minutes 6.5; with the wheels'
# install, loading and packing about 8 minutes) and packs what it made.
# Carry the wheels: run(carry=[".whl"]) from a checkout holding .whl/ (diffusers and the rest, installed --no-deps).
#   train:  bash bench/world_sd_ip_device.sh train ['TRAIN ARGS']   -> $OUT/world-sd-ip.tar.part-* and train.log
#           (join with `cat world-sd-ip.tar.part-* | tar x`: world-sd-ip/ and status.json; copy world-sd-ip/ to models/)
#   resume: bash bench/world_sd_ip_device.sh train '--resume ...' needs the same machine (its /tmp): the warm window
#   bench:  bash bench/world_sd_ip_device.sh bench ['BENCH ARGS']   -> $OUT/isd_sd15_ip.json
set -u
mode=$1; shift
args=${1:-}
run=/tmp/world-sd-ip
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
if [ "$mode" = train ]; then
  mkdir -p $run
  # eval: ARGS is one quoted string of flags, as world_sd_device.sh takes them
  eval python3 -m backend.worldsd.train_ip --out $run/train --device cuda --stop-after-minutes 6.5 \
    --checkpoint-every 500 --log-every 50 $args 2>&1 | grep -v 'Warn\|float32' | tee $run/log | tail -25
  rc=${PIPESTATUS[0]}
  cp $run/log "$OUT/train.log"
  [ -d $run/train/world-sd-ip ] && (cd $run/train && tar cf - world-sd-ip status.json) | \
    split -b 15m - "$OUT/world-sd-ip.tar.part-"
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ls -la "$OUT"; exit $rc
elif [ "$mode" = bench ]; then
  # Gaussians at 512 px (DreamGaussian's, BENCHMARKS.md's SD rows); ISD (4 branches) beside SDS (2) on the same prior.
  eval python3 -m backend bench --priors sd15-ip-random --methods isd,sds --representations gaussians \
    --acceleration default --steps 30 --warmup 10 --out "$OUT/isd_sd15_ip.json" $args 2>&1 | grep -v 'Warn' | tail -20
  exit ${PIPESTATUS[0]}
fi
echo "mode must be train or bench" >&2; exit 2
