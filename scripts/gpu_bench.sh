#!/usr/bin/env bash
# One call on the GPU machine, after the model is joined at $MODEL: the `cuda` tests, a per-stage profile
# of the decode step, the side-by-side table against llama.cpp's CUDA build and transformers
# (bench/compare_gpu.py), perplexity on the GPU, and peak VRAM per KV policy at long contexts.
# Binaries built on the development machine travel in $C (bin/kvdial, bin/kvdial_cuda_tests,
# bin/libkvdial_cuda.so when the build has the module, lib/libhwy.so.1); llama.cpp's binaries, if any,
# at $LLAMA_BIN (built beside the project, never committed). Run from the repository root:
#   STAGES="tests profile paged kernels compare ppl vram" bash scripts/gpu_bench.sh
# Logs go to $OUT (default ./gpu_out); the summary to stdout.
set -u
C=${C:-.devcarry/gpu}
OUT=${OUT:-./gpu_out}
MODEL=${MODEL:-/root/models/model.gguf}
WIKI=${WIKI:-$C/data/wiki.test.raw}
STAGES=${STAGES:-tests profile compare ppl vram}
REPS=${REPS:-5}
# The GPU cache stores the original format (K = V widths, no rotation): the ladder of dynamic policies too.
KVX=${KVX:---kv-rotate 0 --kv-ladder 2=K2V2g32,4=K4V4g32,8=K8V8g32,16=F16}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$C/lib:$PWD/$C/bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for d in $(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null); do
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
K=$C/bin/kvdial
export KVDIAL_MODEL=$MODEL KVDIAL_SOURCE_DIR=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
log() { echo "$@" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME TIMEOUT CMD...: runs CMD, its output to $OUT/NAME.log, the time to the summary
  local name=$1 t=$2
  shift 2
  log "== $name: $*"
  local t0=$(date +%s%N)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "   rc=$rc in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  return $rc
}
has() { [[ " $STAGES " == *" $1 "* ]]; }
log "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader)"
ldd $K $C/bin/libkvdial_cuda.so | grep -E "not found|cublas" | tee -a "$OUT/summary.txt"

if has tests; then
  step tests 300 $C/bin/kvdial_cuda_tests
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |OK \]|FAILED \]|max \||agrees|attention,|Failure|Expected|Which is|  Actual" \
    "$OUT/tests.log" | head -60 | tee -a "$OUT/summary.txt"
fi

if has profile; then
  # Where a decode step's time goes (events between stages; eager, so the total exceeds the graph's).
  for d in 0 4096; do
    for kv in static:16 static:4; do
      KVDIAL_CUDA_PROFILE=1 step prof_${d}_${kv/:/} 120 $K bench -m $MODEL -dev cuda $KVX -p 0 -n 64 -d $d -r 1 --kv-policy $kv
      grep "cuda profile" "$OUT/prof_${d}_${kv/:/}.log" | tee -a "$OUT/summary.txt"
    done
  done
  # The kernels side by side (graphs): the first decode attention (one block per query head and 64 keys)
  # with in-line append, the per-token-table kernel, and the default (pages of one width, page records
  # on a side stream); previous / tiled prompt attention for pp512 and the fill.
  for v in "old 0 old" "tokens 1 new" "paged 1 new"; do
    set -- $v
    KVDIAL_CUDA_DECODE_ATTN=$1 KVDIAL_CUDA_SIDE_APPEND=$2 KVDIAL_CUDA_PREFILL_ATTN=$3 step graph_$1_$2_$3 240 \
      $K bench -m $MODEL -dev cuda $KVX -p 512 -n 128 -d 0,4096 -r 3 --kv-policy static:16,static:4,static:2
    log "decode attention $1, side append $2, prompt attention $3:"
    grep "|" "$OUT/graph_$1_$2_$3.log" | tee -a "$OUT/summary.txt"
  done
fi

if has paged; then
  # Decode after long contexts, per-token-table kernel vs pages, same run; widths mixed by a pattern too.
  for a in tokens paged; do
    KVDIAL_CUDA_DECODE_ATTN=$a step long_$a 400 $K bench -m $MODEL -dev cuda $KVX -p 0 -n 64 \
      -d ${PAGED_DEPTHS:-4096,16384,32768} -r 3 --kv-policy static:16,static:4,static:2,pattern:2/2/8
    log "decode attention $a:"
    grep "|" "$OUT/long_$a.log" | tee -a "$OUT/summary.txt"
  done
fi

if has kernels; then
  # Decode-attention kernels side by side: the kernel benchmark (synthetic K/V/q, reference-checked) and
  # the whole model after long contexts, per kernel (mma: tensor cores, the default; tiled; paged).
  KB=$C/bin/bench_attention_gpu
  for a in ${KERNELS:-mma tiled paged}; do
    KVDIAL_CUDA_DECODE_ATTN=$a step attn_$a 300 $KB --shapes ${ATTN_SHAPES:-smol,llama8b} \
      --contexts ${ATTN_CONTEXTS:-4096,32768,131072} --widths ${ATTN_WIDTHS:-16,4,2,pattern:2/2/8} \
      --iters 10 --out "$OUT/attn_$a.md" --json "$OUT/attn_$a.json"
    log "decode attention kernel $a:"
    grep "|" "$OUT/attn_$a.log" | tee -a "$OUT/summary.txt"
  done
  for a in ${KERNELS:-mma tiled paged}; do
    KVDIAL_CUDA_DECODE_ATTN=$a step tg_$a 300 $K bench -m $MODEL -dev cuda $KVX -p 0 -n 64 \
      -d ${TG_DEPTHS:-4096,32768} -r 3 --kv-policy static:16,static:4,static:2,pattern:2/2/8
    log "whole model, decode attention $a:"
    grep "|" "$OUT/tg_$a.log" | tee -a "$OUT/summary.txt"
  done
fi

if has compare; then
  extra=()
  [ -x "${LLAMA_BIN:-}/llama-bench" ] && extra+=(--llamacpp "$LLAMA_BIN/llama-bench")
  [ -x "${LLAMA_BIN:-}/llama-batched-bench" ] && extra+=(--llamacpp-batched "$LLAMA_BIN/llama-batched-bench")
  python3 -c "import gguf" 2>/dev/null && extra+=(--hf)
  step compare 540 python3 bench/compare_gpu.py --kvdial $K -m $MODEL -r $REPS --depth 4096 --depth-gen 64 \
    --kv-policies "${POLICIES:-static:16,static:8,static:4,static:2,pattern:2/2/8}" --out "$OUT/compare_gpu.md" \
    --kvdial-version "${KVDIAL_VERSION:-unknown}" --kvdial-args="$KVX" "${extra[@]}"
  cat "$OUT/compare_gpu.md" | tee -a "$OUT/summary.txt"
  grep -E "^failed|Error|error" "$OUT/compare.log" | head -5 | tee -a "$OUT/summary.txt"
fi

if has policies; then
  # Policies that decide after the forward pass (features from the GPU's attention statistics).
  step gen_rule 60 $K generate -m $MODEL -p "The capital of France is" -n 48 --temp 0 -dev cuda $KVX --kv-policy rule
  tail -n 6 "$OUT/gen_rule.log" | tee -a "$OUT/summary.txt"
  step bench_rule 200 $K bench -m $MODEL -dev cuda $KVX -p 512 -n 128 -d 0,4096 -r 3 --kv-policy rule,learned:controllers/sample.json,static:4
  grep "|" "$OUT/bench_rule.log" | tee -a "$OUT/summary.txt"
  if [ -f "$WIKI" ]; then
    step ppl40_rule 200 $K perplexity -m $MODEL -f "$WIKI" -c 512 --chunks 40 -dev cuda $KVX --kv-policy rule
    tail -n 4 "$OUT/ppl40_rule.log" | tee -a "$OUT/summary.txt"
  fi
fi

if has ppl && [ -f "$WIKI" ]; then
  step ppl_all 200 $K perplexity -m $MODEL -f "$WIKI" -c 512 -dev cuda
  tail -n 4 "$OUT/ppl_all.log" | tee -a "$OUT/summary.txt"
fi

if has vram; then
  # Peak VRAM per KV policy after D tokens (the cache filled through the prompt path), one engine each.
  for d in ${VRAM_DEPTHS:-4096 32768}; do
    step vram_$d 300 $K bench -m $MODEL -dev cuda $KVX -p 0 -n 16 -d $d -r 1 -o json \
      --kv-policy "${VRAM_POLICIES:-static:16,static:8,static:4,static:2,pattern:2/2/8}"
    python3 - "$OUT/vram_$d.log" "$d" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
text = open(sys.argv[1]).read()
rows = json.loads(text[text.index("["):])
print(f"| kv @ d{sys.argv[2]} | tg16 t/s | KV MiB stored | KV bits/elem | engine VRAM peak MiB | device VRAM peak MiB |")
for r in rows:
    print(f"| {r['kv_policy']} | {r['avg_ts']:.1f} | {r['kv_bytes']/2**20:.2f} | {r['kv_bits_per_elem']:.2f} | "
          f"{r['vram_engine_peak_bytes']/2**20:.1f} | {r['vram_device_used_peak_bytes']/2**20:.1f} |")
EOF
  done
fi
