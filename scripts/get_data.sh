#!/usr/bin/env bash
# Fetches the evaluation data into data/ (git-ignored) when ../shared/data is not beside the checkout:
# WikiText-2 raw (test split) and the HellaSwag validation split, from their canonical releases.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/wikitext-2 data/hellaswag
if [ ! -f data/wikitext-2/wiki.test.raw ]; then
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/w.zip" https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip ||
    { echo "get_data: could not download WikiText-2; put wiki.test.raw in data/wikitext-2/" >&2; exit 1; }
  unzip -q -j "$tmp/w.zip" "wikitext-2-raw/wiki.test.raw" -d data/wikitext-2
  rm -rf "$tmp"
fi
if [ ! -f data/hellaswag/hellaswag_val.jsonl ]; then
  curl -fsSL -o data/hellaswag/hellaswag_val.jsonl \
    https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl ||
    { echo "get_data: could not download HellaSwag; put hellaswag_val.jsonl in data/hellaswag/" >&2; exit 1; }
fi
echo "get_data: data/ ready"
