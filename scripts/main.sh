#!/usr/bin/env bash
# The main job on the default model: set-up, Release build, a generation, perplexity and KL on
# WikiText-2 under several KV-cache policies (a few chunks, so it finishes in minutes), then the
# controller training data over HellaSwag (kvdial collect, 1000 tokens with sensitivity labels) and
# its statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvdial
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

echo "== generate"
build/kvdial generate -m "$MODEL" -p "The three most useful things to pack for a day of hiking are" -n 64 --temp 0

WIKI=../shared/data/wikitext-2/wiki.test.raw
HELLASWAG=../shared/data/hellaswag/hellaswag_val_dev600.jsonl
if [ ! -f "$WIKI" ] || [ ! -f "$HELLASWAG" ]; then
  bash scripts/get_data.sh
  WIKI=data/wikitext-2/wiki.test.raw
  HELLASWAG=data/hellaswag/hellaswag_val.jsonl
fi
for policy in static:16 static:8 static:4 static:2 rule; do
  echo "== perplexity, --kv-policy $policy (first 20 chunks of 512)"
  build/kvdial perplexity -m "$MODEL" -f "$WIKI" -c 512 --chunks 20 --kv-policy "$policy" --kl-divergence
done

echo "== collect: controller training data (1000 tokens of HellaSwag, rule policy, sensitivity labels)"
build/kvdial collect -m "$MODEL" --data "$HELLASWAG" --tokens 1000 --policy rule -o data/controller_training.csv \
  --force --progress
echo "== stats"
build/kvdial stats data/controller_training.csv
