#!/usr/bin/env bash
# One call on the GPU machine: checks, tests (label cuda) and benchmarks of the CUDA engine, built on the
# development machine and carried in .devcarry/cuda (bin/, lib/, this script). Usage there, from the
# repository root, with the model at $MODEL and WikiText-2 at $WIKI (optional):
#   bash .devcarry/cuda/cuda_device.sh
# Every step writes its log under $OUT (default ./cuda_out) and the summary goes to stdout.
set -u
C=.devcarry/cuda
OUT=${OUT:-./cuda_out}
MODEL=${MODEL:-/root/models/model.gguf}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$C/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for d in $(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null); do
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
K=$C/bin/kvdial
step() {  # step NAME TIMEOUT CMD...
  local name=$1 t=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$(date +%s%N)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$OUT/summary.txt"
  { echo "==== $name"; cat "$OUT/$name.log"; } >> "$OUT/all_logs.txt"
  rm -f "$OUT/$name.log.keep"
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$OUT/summary.txt"
ldd $K | grep -E "not found|cublas|hwy" | tee -a "$OUT/summary.txt"
export KVDIAL_MODEL=$MODEL KVDIAL_SOURCE_DIR=$PWD
step tests 240 $C/bin/kvdial_cuda_tests
grep -E "^\[  (PASSED|FAILED|SKIPPED) |OK \]|FAILED \]|max \||agrees|attention,|Failure|Expected|Which is|first differing|  Actual" "$OUT/tests.log" | head -60 | tee -a "$OUT/summary.txt"
M="-m $MODEL"
step generate 60 $K generate $M -p "The capital of France is" -n 32 --temp 0 -dev cuda
tail -n 8 "$OUT/generate.log" | tee -a "$OUT/summary.txt"
step bench_f16 120 $K bench $M -p 512 -n 128 -r 3 --kv-policy static:16,static:4,pattern:2/2/8 -dev cuda
cat "$OUT/bench_f16.log" | tee -a "$OUT/summary.txt"
KVDIAL_CUDA_WEIGHTS=q step bench_q 60 $K bench $M -p 0 -n 128 -r 3 --kv-policy static:16,static:4 -dev cuda
grep "|" "$OUT/bench_q.log" | tee -a "$OUT/summary.txt"
KVDIAL_CUDA_GRAPHS=0 step bench_nograph 60 $K bench $M -p 0 -n 128 -r 3 --kv-policy static:16 -dev cuda
grep "|" "$OUT/bench_nograph.log" | tee -a "$OUT/summary.txt"
step bench_d4096 150 $K bench $M -p 0 -n 64 -d 4096 -r 3 --kv-policy static:16,static:8,static:4,static:2,pattern:2/2/8 -dev cuda
cat "$OUT/bench_d4096.log" | tee -a "$OUT/summary.txt"
KVDIAL_CUDA_WEIGHTS=q step bench_d4096_q 90 $K bench $M -p 0 -n 64 -d 4096 -r 3 --kv-policy static:16,static:4 -dev cuda
grep "|" "$OUT/bench_d4096_q.log" | tee -a "$OUT/summary.txt"
if [ -f "${WIKI:-}" ]; then
  for kv in static:16 static:4; do
    step ppl40_${kv/:/} 60 $K perplexity $M -f "$WIKI" -c 512 --chunks 40 --kv-policy $kv -dev cuda
    tail -n 5 "$OUT/ppl40_${kv/:/}.log" | tee -a "$OUT/summary.txt"
  done
  if [ -n "${PPL_ALL:-}" ]; then
    step ppl_all 150 $K perplexity $M -f "$WIKI" -c 512 -dev cuda
    tail -n 6 "$OUT/ppl_all.log" | tee -a "$OUT/summary.txt"
  fi
fi
# Only all_logs.txt and summary.txt come back (the tool returns at most 8 files).
find "$OUT" -name '*.log' -delete
