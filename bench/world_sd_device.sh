#!/usr/bin/env bash
# world-SD training on the lent GPU machine (backend/worldsd/train.py). A training outlasts one device call (10 min),
# so `start` runs it in the background (setsid) under /tmp/world-sd and `wait` follows it from later calls (each made
# within the machine's 30 s warm window); `pack` puts the trained folder into $OUT in pieces the device tool returns
# (at most 8 files of 16 MiB): world-sd.tar.part-* (join with `cat world-sd.tar.part-* | tar x`).
#   start:  bash bench/world_sd_device.sh start 'TRAIN ARGS'
#   wait:   bash bench/world_sd_device.sh wait SECONDS      (returns early when the training has ended)
#   pack:   bash bench/world_sd_device.sh pack
set -u
mode=$1; shift
run=/tmp/world-sd
if [ "$mode" = start ]; then
  [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl || exit 1
  mkdir -p $run
  printf '%s' "$1" > $run/args
  PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 setsid nohup bash -c \
    "eval python3 -m backend.worldsd.train --out $run/train --device cuda \$(cat $run/args) > $run/log 2>&1; echo \$? > $run/rc" \
    >/dev/null 2>&1 &
  sleep 45; tail -5 $run/log; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
elif [ "$mode" = wait ]; then
  deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ] && [ ! -e $run/rc ]; do sleep 10; done
  grep -v 'Warn\|float32' $run/log | tail -4; [ -e $run/rc ] && echo "training ended: rc $(cat $run/rc)"
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
elif [ "$mode" = pack ]; then
  cp $run/log "$OUT/train.log"
  (cd $run/train && tar cf - world-sd status.json) | split -b 15m - "$OUT/world-sd.tar.part-"
  ls -la "$OUT"
fi
