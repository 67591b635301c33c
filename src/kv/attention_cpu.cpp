// Fast attention over the mixed-precision cache. Scores come straight from the packed groups:
// for a group with scale s and minimum m, q.k = s * sum(q_i * c_i) + m * sum(q_i), so K is never
// dequantized; V is accumulated the same way: out_i += (p * s) * c_i + p * m.
// Work is split over (query token, kv head) items; the heads that share a kv head are done together
// so each K/V byte is read once per query token.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kv/attention.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace kvd::cpu {
namespace {

// Branch-free fp16 -> fp32 for finite values (the cache never stores inf/NaN from finite inputs).
inline float half_bits_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float f;
  std::memcpy(&f, &bits, 4);
  f *= 0x1.0p112f;
  return (h & 0x8000u) ? -f : f;
}

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_bits_to_float(h);
}

constexpr int kMaxHeadDim = 256;
constexpr int kMaxQPerKv = 16;

// Dot products of nq query heads (each hd floats, qsum[j][g] = sum of head j's elements in group g)
// with one stored K head slice.
template <int BITS>
inline void score_token(const uint8_t* k, int kvh, int hd, int group, int nq, const float* const* qh,
                        const float (*qsum)[kMaxHeadDim / 4], float* out) {
  if constexpr (BITS == 16) {
    float kf[kMaxHeadDim];
    const uint8_t* src = k + 2 * static_cast<size_t>(kvh) * hd;
    for (int i = 0; i < hd; ++i) kf[i] = load_half(src + 2 * i);
    for (int j = 0; j < nq; ++j) {
      float s = 0;
      for (int i = 0; i < hd; ++i) s += qh[j][i] * kf[i];
      out[j] = s;
    }
  } else {
    const int gb = 4 + group * BITS / 8, groups = hd / group;
    const uint8_t* g0 = k + static_cast<size_t>(kvh) * groups * gb;
    for (int j = 0; j < nq; ++j) out[j] = 0;
    float codes[kMaxHeadDim];
    for (int g = 0; g < groups; ++g) {
      const uint8_t* gp = g0 + g * gb;
      const float scale = load_half(gp), mn = load_half(gp + 2);
      const uint8_t* c = gp + 4;
      constexpr int per_byte = 8 / BITS;
      constexpr int mask = (1 << BITS) - 1;
      for (int i = 0; i < group; ++i)
        codes[i] = static_cast<float>((c[i / per_byte] >> ((i % per_byte) * BITS)) & mask);
      for (int j = 0; j < nq; ++j) {
        const float* q = qh[j] + g * group;
        float s = 0;
        for (int i = 0; i < group; ++i) s += q[i] * codes[i];
        out[j] += scale * s + mn * qsum[j][g];
      }
    }
  }
}

template <int BITS>
inline void accumulate_v(const uint8_t* v, int kvh, int hd, int group, int nq, const float* p, float (*acc)[kMaxHeadDim]) {
  if constexpr (BITS == 16) {
    float vf[kMaxHeadDim];
    const uint8_t* src = v + 2 * static_cast<size_t>(kvh) * hd;
    for (int i = 0; i < hd; ++i) vf[i] = load_half(src + 2 * i);
    for (int j = 0; j < nq; ++j)
      for (int i = 0; i < hd; ++i) acc[j][i] += p[j] * vf[i];
  } else {
    const int gb = 4 + group * BITS / 8, groups = hd / group;
    const uint8_t* g0 = v + static_cast<size_t>(kvh) * groups * gb;
    float codes[kMaxHeadDim];
    for (int g = 0; g < groups; ++g) {
      const uint8_t* gp = g0 + g * gb;
      const float scale = load_half(gp), mn = load_half(gp + 2);
      const uint8_t* c = gp + 4;
      constexpr int per_byte = 8 / BITS;
      constexpr int mask = (1 << BITS) - 1;
      for (int i = 0; i < group; ++i)
        codes[i] = static_cast<float>((c[i / per_byte] >> ((i % per_byte) * BITS)) & mask);
      for (int j = 0; j < nq; ++j) {
        const float ps = p[j] * scale, pm = p[j] * mn;
        float* a = acc[j] + g * group;
        for (int i = 0; i < group; ++i) a[i] += ps * codes[i] + pm;
      }
    }
  }
}

void score_any(int bits, const uint8_t* k, int kvh, int hd, int group, int nq, const float* const* qh,
               const float (*qsum)[kMaxHeadDim / 4], float* out) {
  switch (bits) {
    case 2: score_token<2>(k, kvh, hd, group, nq, qh, qsum, out); break;
    case 4: score_token<4>(k, kvh, hd, group, nq, qh, qsum, out); break;
    case 8: score_token<8>(k, kvh, hd, group, nq, qh, qsum, out); break;
    default: score_token<16>(k, kvh, hd, group, nq, qh, qsum, out); break;
  }
}

void accumulate_any(int bits, const uint8_t* v, int kvh, int hd, int group, int nq, const float* p,
                    float (*acc)[kMaxHeadDim]) {
  switch (bits) {
    case 2: accumulate_v<2>(v, kvh, hd, group, nq, p, acc); break;
    case 4: accumulate_v<4>(v, kvh, hd, group, nq, p, acc); break;
    case 8: accumulate_v<8>(v, kvh, hd, group, nq, p, acc); break;
    default: accumulate_v<16>(v, kvh, hd, group, nq, p, acc); break;
  }
}

struct ItemStats {
  double var_sum = 0, max_sum = 0;
  int64_t count = 0;
};

// One query token at position pos, one kv head and the nq query heads that share it.
void attend_item(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos,
                 int kvh, float* out, std::vector<float>& scores, ItemStats* st, float* received) {
  const KvLayout& lay = cache.layout();
  const int hd = shape.head_dim, group = lay.group, n = pos + 1;
  const int nq = shape.n_heads / shape.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* qh[kMaxQPerKv];
  float qsum[kMaxQPerKv][kMaxHeadDim / 4];
  for (int j = 0; j < nq; ++j) {
    qh[j] = q + (kvh * nq + j) * hd;
    for (int g = 0; g < hd / group; ++g) {
      float s = 0;
      for (int i = 0; i < group; ++i) s += qh[j][g * group + i];
      qsum[j][g] = s;
    }
  }
  scores.resize(static_cast<size_t>(nq) * n);
  float mx[kMaxQPerKv];
  std::fill(mx, mx + nq, -INFINITY);
  float s[kMaxQPerKv];
  for (int t = 0; t < n; ++t) {
    const KvTokenView tok = cache.token(seq, layer, t, pos);
    score_any(tok.bits, tok.k, kvh, hd, group, nq, qh, qsum, s);
    for (int j = 0; j < nq; ++j) {
      const float v = s[j] * scale;
      scores[static_cast<size_t>(j) * n + t] = v;
      mx[j] = std::max(mx[j], v);
    }
  }
  float sum[kMaxQPerKv] = {};
  for (int j = 0; j < nq; ++j) {
    float* sc = scores.data() + static_cast<size_t>(j) * n;
    for (int t = 0; t < n; ++t) {
      sc[t] = std::exp(sc[t] - mx[j]);
      sum[j] += sc[t];
    }
    const float inv = 1.0f / sum[j];
    for (int t = 0; t < n; ++t) sc[t] *= inv;
  }
  float acc[kMaxQPerKv][kMaxHeadDim];
  for (int j = 0; j < nq; ++j) std::fill(acc[j], acc[j] + hd, 0.0f);
  float p[kMaxQPerKv];
  for (int t = 0; t < n; ++t) {
    const KvTokenView tok = cache.token(seq, layer, t, pos);
    for (int j = 0; j < nq; ++j) p[j] = scores[static_cast<size_t>(j) * n + t];
    accumulate_any(tok.bits, tok.v, kvh, hd, group, nq, p, acc);
  }
  for (int j = 0; j < nq; ++j) std::memcpy(out + (kvh * nq + j) * hd, acc[j], sizeof(float) * hd);
  if (st) {
    const double mean = 1.0 / n;
    for (int j = 0; j < nq; ++j) {
      const float* w = scores.data() + static_cast<size_t>(j) * n;
      double var = 0, wmax = 0;
      for (int t = 0; t < n; ++t) {
        var += (w[t] - mean) * (w[t] - mean);
        wmax = std::max(wmax, static_cast<double>(w[t]));
        if (received) received[t] += w[t];
      }
      st->var_sum += var / n;
      st->max_sum += wmax;
      st->count++;
    }
  }
}

}  // namespace

void attend(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0, int n,
            float* out, AttnStats* stats, ThreadPool& pool) {
  KVD_ASSERT(shape.head_dim <= kMaxHeadDim && shape.n_heads / shape.n_kv_heads <= kMaxQPerKv);
  const int n_items = n * shape.n_kv_heads;
  const int stride = shape.n_heads * shape.head_dim;
  std::vector<ItemStats> item_stats(stats ? static_cast<size_t>(n_items) : 0);
  std::atomic<int> next{0};
  // Received-attention sums are per key position: items of one query token add to the same vector,
  // so with stats each kv head item of a token runs on one thread (items of a token are contiguous).
  const bool need_received = stats && stats[0].received;
  pool.run_on_all([&](int, int) {
    std::vector<float> scores;
    for (;;) {
      const int it = need_received ? next.fetch_add(shape.n_kv_heads) : next.fetch_add(1);
      if (it >= n_items) break;
      const int last = need_received ? it + shape.n_kv_heads : it + 1;
      for (int item = it; item < last; ++item) {
        const int i = item / shape.n_kv_heads, kvh = item % shape.n_kv_heads;
        float* recv = need_received ? stats[i].received->data() : nullptr;
        attend_item(cache, seq, layer, shape, q + static_cast<size_t>(i) * stride, pos0 + i, kvh,
                    out + static_cast<size_t>(i) * stride, scores, stats ? &item_stats[item] : nullptr, recv);
      }
    }
  });
  if (stats) {
    for (int item = 0; item < n_items; ++item) {
      AttnStats& s = stats[item / shape.n_kv_heads];
      s.var_sum += item_stats[item].var_sum;
      s.max_weight_sum += item_stats[item].max_sum;
      s.var_count += item_stats[item].count;
    }
  }
}

}  // namespace kvd::cpu
