#!/usr/bin/env bash
# The main job on the default model: set-up, Release build, a generation, and perplexity on
# WikiText-2 under several KV-cache policies (a few chunks, so it finishes in minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvdial
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

echo "== generate"
build/kvdial generate -m "$MODEL" -p "The three most useful things to pack for a day of hiking are" -n 64 --temp 0

WIKI=../shared/data/wikitext-2/wiki.test.raw
if [ ! -f "$WIKI" ]; then
  WIKI=data/wikitext-2/wiki.test.raw
  bash scripts/get_data.sh
fi
for policy in static:16 static:8 static:4 static:2 rule; do
  echo "== perplexity, --kv-policy $policy (first 20 chunks of 512)"
  build/kvdial perplexity -m "$MODEL" -f "$WIKI" -c 512 --chunks 20 --kv-policy "$policy" --kl-divergence
done
