#!/usr/bin/env bash
# One device call (GPU machine's 16-core CPU): the v2 quantizer's decode speed side by side, its quality
# table, and controller training data. Run from the repo root there, after the model is joined at
# /root/models/model.gguf, with the binaries, libraries and data in .devcarry/run (see README, GPU machine).
#   STAGE=quality  speed + quality table + WikiText-2 collect     STAGE=collect  HellaSwag collect
set -uo pipefail
R=.devcarry/run
export LD_LIBRARY_PATH=$PWD/$R:${LD_LIBRARY_PATH:-}
M=/root/models/model.gguf
W=$R/data/wiki.test.raw
H=$R/data/hellaswag_val_dev600.jsonl
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nproc; lscpu | grep -m1 "Model name"
if [ "${STAGE:-quality}" = quality ]; then
  echo "== speed (2 threads, nothing else running)"
  $R/bench_decode_steps -m $M -d 4096 -n 150 -t 2 \
    --kv-policy "static:16,static:4;rotate=0,static:K5V4g64,static:K3V2g64,static:4,static:4;rotate=1;clip=0,static:2;rotate=0" \
    --out "$OUT/speed_quant_v2.md" 2>&1 | tail -12
  echo "== quality + wiki collect in parallel"
  ( $R/kvdial collect -m $M -f $W --skip-tokens 150000 --chunk 256 --tokens 5000 --jobs 4 -t 1 \
      -o "$OUT/wiki_labels.csv" --force > "$OUT/wiki_collect.log" 2>&1; echo "wiki collect rc $?" ) &
  python3 $R/quality_table.py --kvdial $R/kvdial -m $M -f $W --jobs 6 --threads 2 --ctx "${CTX:-512}" --chunks "${CHUNKS:-40}" \
    --policies "static:16,static:8;rotate=0,static:4;rotate=0,static:2;rotate=0,static:K3V2g64,static:K4V2g64,static:K4V3g64,static:K5V4g64,static:4,static:8,rule" \
    --out "$OUT/quality_v2.md" 2>&1 | tail -50
  wait
  tail -3 "$OUT/wiki_collect.log"
else
  echo "== HellaSwag collect"
  timeout "${LIMIT:-540}" $R/kvdial collect -m $M --data $H --tokens "${TOKENS:-28000}" --jobs 16 -t 1 \
    -o "$OUT/hellaswag_labels.csv" --force 2>&1 | tail -5
  echo "rc $?"; wc -l "$OUT/hellaswag_labels.csv"
fi
