#!/usr/bin/env bash
# The main job on the default model, the whole pipeline: set-up, Release build, a generation, then
# collect (controller training data with measured damage labels) -> train (the MLP controller) ->
# compare (every policy on the same HellaSwag test rows and WikiText-2 chunks: quality against stored bits,
# latency, memory) -> plots. The compare uses the shipped controller (controllers/smollm2-135m-v2.json,
# trained on the full collection; its report says how) when present, so the numbers match the README;
# the controller trained here from the small collection is reported beside it.
#   bash scripts/main.sh             small: about 10-15 minutes on 2 cores
#   FULL=1 bash scripts/main.sh      full size: all 600 HellaSwag rows + 5,000 WikiText-2 tokens collected with
#                                    every core, compare on the whole test split and 40 WikiText chunks
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvdial
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
FULL=${FULL:-0}
JOBS=$(nproc)

WIKI=../shared/data/wikitext-2/wiki.test.raw
HELLASWAG=../shared/data/hellaswag/hellaswag_val_dev600.jsonl
if [ ! -f "$WIKI" ] || [ ! -f "$HELLASWAG" ]; then
  bash scripts/get_data.sh
  WIKI=data/wikitext-2/wiki.test.raw
  HELLASWAG=data/hellaswag/hellaswag_val.jsonl
fi

echo "== generate (learned controller at the memory of static:4)"
SHIPPED=controllers/smollm2-135m-v2.json
build/kvdial generate -m "$MODEL" -p "The three most useful things to pack for a day of hiking are" -n 48 --temp 0 \
  --kv-policy "learned:$SHIPPED" --kv-budget 5

mkdir -p data
if [ "$FULL" = 1 ]; then
  echo "== collect: all HellaSwag rows and 5,000 WikiText-2 tokens past token 150,000 ($JOBS jobs)"
  build/kvdial collect -m "$MODEL" --data "$HELLASWAG" --tokens 0 --jobs "$JOBS" -t 1 -o data/labels_hellaswag.csv \
    --force --progress
  build/kvdial collect -m "$MODEL" -f "$WIKI" --skip-tokens 150000 --tokens 5000 --jobs "$JOBS" -t 1 \
    -o data/labels_wiki.csv --force --progress
  CSVS=(--csv data/labels_hellaswag.csv --csv data/labels_wiki.csv)
  CONTROLLER=data/controller.json
  LIMIT=0 WIKI_CHUNKS=40 MEM_DEPTH=4096
else
  echo "== collect: 400 HellaSwag tokens with sensitivity labels (small; FULL=1 for all)"
  build/kvdial collect -m "$MODEL" --data "$HELLASWAG" --tokens 400 --jobs "$JOBS" -t 1 \
    -o data/controller_training.csv --force --progress
  CSVS=(--csv data/controller_training.csv)
  CONTROLLER=$SHIPPED
  LIMIT=12 WIKI_CHUNKS=2 MEM_DEPTH=2048
fi
echo "== train"
build/kvdial train "${CSVS[@]}" -o data/controller_small.json | tail -25
[ "$FULL" = 1 ] && cp data/controller_small.json "$CONTROLLER"
[ -f "$CONTROLLER" ] || CONTROLLER=data/controller_small.json

echo "== compare (HellaSwag test split, WikiText-2; controller $CONTROLLER)"
L="learned:$CONTROLLER"
build/kvdial compare -m "$MODEL" --data "$HELLASWAG" --split test --limit "$LIMIT" --wiki "$WIKI" \
  --wiki-chunks "$WIKI_CHUNKS" --mem-depth "$MEM_DEPTH" -t 2 -o results/compare \
  --policies "static:16,static:8,static:4;rotate=0,static:2;rotate=0,static:K3V2g64,static:K4V2g64,static:K4V3g64,static:K5V4g64,rule,rule@5,rule@3,$L@5,$L@4,$L@3.5,$L@3,random@5,random@3"
python3 scripts/plot_compare.py results/compare/compare.json
echo "table: results/compare/compare.md; plots: results/compare/pareto.png results/compare/widths.png results/compare/latency.png"
