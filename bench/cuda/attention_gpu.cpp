// Decode attention on the GPU over the paged mixed-precision KV cache: per shape, width mix and context,
// the kernel's time (L2 flushed before each call, as when every layer's KV is read once a step; and
// L2-warm), the packed KV bytes it must read (scales and minimums included), the effective bandwidth and
// its share of the read bandwidth measured in the same run, and the result checked against the CPU
// reference while timing. Weights play no part: K, V and q are random (labelled synthetic).
//   bench_attention_gpu --shapes smol,llama8b --contexts 1024,4096,32768 --widths 16,4,2,pattern:2/2/8
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cuda/bandwidth.h"
#include "cuda/gpu_kv.h"
#include "kv/attention.h"
#include "kv/kv_cache.h"
#include "util/error.h"
#include "util/strings.h"

using namespace kvd;

namespace {

struct Shape {
  std::string name;
  int n_heads, n_kv_heads, head_dim;
};

Shape shape_of(const std::string& s) {
  if (s == "smol") return {"SmolLM2-135M (9 q / 3 kv heads, hd 64)", 9, 3, 64};
  if (s == "llama8b") return {"Llama-3-8B (32 q / 8 kv heads, hd 128)", 32, 8, 128};
  if (s == "hd64x8") return {"hd-64 shape (32 q / 8 kv heads, hd 64)", 32, 8, 64};
  throw Error("--shapes: unknown shape '" + s + "' (smol, llama8b, hd64x8)");
}

// "16", "8", "4", "2", "pattern:a/b/c" (cycled by position) or "random" (uniform over 2/4/8/16).
std::vector<uint8_t> widths_of(const std::string& w, int n, uint32_t seed) {
  std::vector<uint8_t> out(static_cast<size_t>(n));
  if (w == "random") {
    std::mt19937 rng(seed);
    const uint8_t all[] = {2, 4, 8, 16};
    for (auto& b : out) b = all[rng() % 4];
    return out;
  }
  std::vector<int> cycle;
  if (w.rfind("pattern:", 0) == 0) {
    for (const std::string& part : split(w.substr(8), '/')) cycle.push_back(std::stoi(part));
  } else {
    cycle.push_back(std::stoi(w));
  }
  for (int c : cycle)
    if (!kv_bits_valid(c)) throw Error("--widths: '" + w + "' has a width other than 2, 4, 8, 16");
  for (int i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(cycle[i % cycle.size()]);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPU decode attention over the paged mixed-precision KV cache (synthetic K, V, q)"};
  std::string shapes = "smol,llama8b", contexts = "1024,4096,16384,32768,131072",
              widths = "16,8,4,2,pattern:2/2/8,random", out_md, out_json;
  int iters = 20;
  bool check = true;
  app.add_option("--shapes", shapes, "smol, llama8b, hd64x8");
  app.add_option("--contexts", contexts, "keys in the cache, comma-separated");
  app.add_option("--widths", widths, "16, 8, 4, 2, pattern:a/b/c, random");
  app.add_option("--iters", iters, "timed calls per case")->check(CLI::Range(1, 100000));
  app.add_flag("!--no-check", check, "skip the CPU reference check");
  app.add_option("--out", out_md, "also write the table (markdown) here");
  app.add_option("--json", out_json, "write the rows as JSON here");
  CLI11_PARSE(app, argc, argv);
  try {
    std::string why;
    if (!cuda::gpu_available(&why)) throw Error("no GPU: " + why);
    const cuda::Bandwidth bw = cuda::measure_bandwidth();
    std::vector<std::string> lines;
    auto emit = [&](const std::string& l) {
      std::printf("%s\n", l.c_str());
      std::fflush(stdout);
      lines.push_back(l);
    };
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "synthetic K/V/q (random); device read bandwidth %.0f GB/s (read-only kernel, 2 GiB), "
                  "copy %.0f GB/s (read + write, cudaMemcpy)",
                  bw.read_gbs, bw.copy_gbs);
    emit(buf);
    emit("");
    emit(
        "| shape | widths | context | stored bits | KV MiB read | µs (L2 cold) | GB/s | % of read bw | "
        "µs (L2 warm) | max rel err |");
    emit("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    nlohmann::json rows = nlohmann::json::array();
    for (const std::string& sname : split(shapes, ',')) {
      const Shape sh = shape_of(sname);
      for (const int ctx : split_ints(contexts, "--contexts")) {
        if (ctx < 1) throw Error("--contexts: " + std::to_string(ctx) + " is not a positive count");
        for (const std::string& w : split(widths, ',')) {
          const KvLayout lay{1, sh.n_kv_heads, sh.head_dim, 32};
          const int total = ctx + 1, kv_dim = lay.kv_dim(), q_dim = sh.n_heads * sh.head_dim;
          const std::vector<uint8_t> bits = widths_of(w, total, 7);
          cuda::KvProbe gpu(lay, sh.n_heads, total, 0, 64);
          KvCacheOptions o;
          o.max_tokens = total;
          std::unique_ptr<KvCache> cpu = check ? std::make_unique<KvCache>(lay, o) : nullptr;
          std::mt19937 rng(11);
          std::normal_distribution<float> nd(0.0f, 1.0f);
          std::vector<float> k, v;
          // ctx keys in batches of 64, then the query's own token alone (the decode path).
          for (int pos = 0; pos < total;) {
            const int n = pos < ctx ? std::min(64, ctx - pos) : 1;
            k.resize(static_cast<size_t>(n) * kv_dim);
            v.resize(k.size());
            for (size_t i = 0; i < k.size(); ++i) {
              k[i] = nd(rng) * (i % 64 == 3 ? 6.0f : 1.0f);
              v[i] = nd(rng);
            }
            gpu.append(k.data(), v.data(), bits.data() + pos, n);
            if (cpu) {
              cpu->begin_tokens(0, n, bits.data() + pos);
              for (int i = 0; i < n; ++i)
                cpu->write(0, 0, pos + i, k.data() + static_cast<size_t>(i) * kv_dim,
                           v.data() + static_cast<size_t>(i) * kv_dim);
              if (pos + n < total) cpu->flush_window(0);  // the query's own key stays fp16 (staged)
            }
            pos += n;
          }
          std::vector<float> q(static_cast<size_t>(q_dim)), out(q.size()), ref(q.size());
          for (auto& x : q) x = nd(rng);
          const double us_warm = gpu.time_attend(0, q.data(), iters, false, out.data());
          const double us = gpu.time_attend(0, q.data(), iters, true, out.data());
          double rel = -1;
          if (cpu) {
            ref::attend(*cpu, 0, 0, AttnShape{sh.n_heads, sh.n_kv_heads, sh.head_dim}, q.data(), ctx,
                        ref.data(), nullptr);
            float mx = 0, diff = 0;
            for (size_t j = 0; j < q.size(); ++j) {
              mx = std::max(mx, std::abs(ref[j]));
              diff = std::max(diff, std::abs(out[j] - ref[j]));
            }
            rel = diff / std::max(mx, 1e-6f);
            // The stored records must be the CPU's, byte for byte (a sample of positions).
            int bad = 0;
            for (int t : {0, 1, ctx / 3, ctx / 2, ctx - 1}) {
              const KvTokenView tv = cpu->token(0, 0, t, total + 1);
              const std::vector<uint8_t> rec = gpu.record(0, t);
              const size_t kb = lay.k_row_bytes(tv.bits), vb = lay.v_row_bytes(tv.bits);
              bad += rec.size() != kb + vb || std::memcmp(rec.data(), tv.k, kb) != 0 ||
                     std::memcmp(rec.data() + kb, tv.v, vb) != 0;
            }
            // As the tests allow: fp32 sums in another order, 1e-4 of the output's scale (at least 1).
            if (bad > 0 || !(diff <= 1e-4f * std::max(mx, 1.0f)))
              throw Error("decode attention differs from the reference: " + sname + " " + w + " at " +
                          std::to_string(ctx) + ": max |diff| " + std::to_string(diff) + " of max |ref| " +
                          std::to_string(mx) + ", " + std::to_string(bad) + " of 5 records differ");
          }
          // What the kernel must read: every key's K and V at its width (one layer), scales included.
          const KvStats st = gpu.stats();
          const double bytes = static_cast<double>(st.bytes_stored);
          const double gbs = bytes / (us * 1e3);
          std::snprintf(buf, sizeof buf, "| %s | %s | %d | %.2f | %.2f | %.2f | %.0f | %.1f | %.2f | %.2g |",
                        sname.c_str(), w.c_str(), ctx, st.effective_bits, bytes / (1 << 20), us, gbs,
                        100.0 * gbs / bw.read_gbs, us_warm, rel);
          emit(buf);
          rows.push_back({{"shape", sname},
                          {"shape_desc", sh.name},
                          {"widths", w},
                          {"context", ctx},
                          {"stored_bits", st.effective_bits},
                          {"kv_bytes", bytes},
                          {"us_cold", us},
                          {"us_warm", us_warm},
                          {"gbs", gbs},
                          {"read_bw_gbs", bw.read_gbs},
                          {"copy_bw_gbs", bw.copy_gbs},
                          {"max_rel_err", rel},
                          {"synthetic", true}});
        }
      }
    }
    if (!out_md.empty()) {
      std::ofstream f(out_md);
      for (const std::string& l : lines) f << l << "\n";
    }
    if (!out_json.empty()) std::ofstream(out_json) << rows.dump(1) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_gpu: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
