// Tests of the matmul kernels: ref::dequantize_row against gguf-py's dequantization (fixture written by
// tools/reference/gen_dequant_fixture.py), the SIMD dequantizer against ref, and cpu::matmul (fp32 and
// int8 activations, decode and GEMM paths, odd shapes, misaligned pointers, 1 vs 2 threads) against ref.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/kernels.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

using gguf::TensorType;

constexpr TensorType kAllTypes[] = {TensorType::F32,  TensorType::F16,    TensorType::BF16,  TensorType::Q4_0,
                                    TensorType::Q4_1, TensorType::Q8_0,   TensorType::Q4_K,  TensorType::Q6_K,
                                    TensorType::Q5_0, TensorType::Q5_1,   TensorType::Q2_K,  TensorType::Q3_K,
                                    TensorType::Q5_K, TensorType::IQ4_NL, TensorType::IQ4_XS};

const char* name(TensorType t) { return gguf::tensor_type_name(t); }

void put_half(uint8_t* p, float v) {
  const uint16_t h = float_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// One random block of `type` at p: random quant bytes, scales valid halves of realistic size.
void random_block(TensorType type, uint8_t* p, std::mt19937& rng) {
  const gguf::BlockInfo bi = gguf::block_info(type);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (uint32_t i = 0; i < bi.bytes; ++i) p[i] = static_cast<uint8_t>(byte(rng));
  const auto scale = [&](float lo, float hi) { return lo * std::pow(hi / lo, u(rng)); };
  switch (type) {
    case TensorType::F32: {
      const float v = normal(rng);
      std::memcpy(p, &v, 4);
      break;
    }
    case TensorType::F16:
      put_half(p, normal(rng));
      break;
    case TensorType::BF16: {
      const float v = normal(rng);
      uint32_t b;
      std::memcpy(&b, &v, 4);
      const uint16_t h = static_cast<uint16_t>(b >> 16);
      std::memcpy(p, &h, 2);
      break;
    }
    case TensorType::Q4_0:
    case TensorType::Q8_0:
    case TensorType::Q5_0:
      put_half(p, (u(rng) < 0.5f ? -1.0f : 1.0f) * scale(1e-3f, 0.05f));
      break;
    case TensorType::IQ4_NL:
      put_half(p, (u(rng) < 0.5f ? -1.0f : 1.0f) * scale(1e-5f, 5e-4f));
      break;
    case TensorType::Q4_1:
    case TensorType::Q5_1:
      put_half(p, scale(1e-3f, 0.05f));
      put_half(p + 2, -scale(1e-2f, 0.4f));
      break;
    case TensorType::Q4_K:
    case TensorType::Q5_K:
      put_half(p, scale(1e-4f, 2e-3f));
      put_half(p + 2, scale(1e-4f, 2e-3f));
      break;
    case TensorType::Q2_K:
      put_half(p + 80, scale(1e-4f, 2e-3f));
      put_half(p + 82, scale(1e-4f, 2e-3f));
      break;
    case TensorType::Q3_K:
      put_half(p + 108, (u(rng) < 0.5f ? -1.0f : 1.0f) * scale(1e-4f, 2e-3f));
      break;
    case TensorType::IQ4_XS:
      put_half(p, (u(rng) < 0.5f ? -1.0f : 1.0f) * scale(1e-6f, 2e-5f));
      break;
    case TensorType::Q6_K:
      put_half(p + 208, scale(1e-4f, 2e-3f));
      break;
  }
}

std::vector<uint8_t> random_matrix(TensorType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const gguf::BlockInfo bi = gguf::block_info(type);
  const int64_t nblocks = rows * cols / bi.elems;
  std::vector<uint8_t> data(static_cast<size_t>(nblocks * bi.bytes));
  for (int64_t b = 0; b < nblocks; ++b) random_block(type, data.data() + b * bi.bytes, rng);
  return data;
}

WeightView view(TensorType type, const uint8_t* data, int64_t rows, int64_t cols) {
  const gguf::BlockInfo bi = gguf::block_info(type);
  return WeightView{type, data, rows, cols, static_cast<size_t>(cols / bi.elems * bi.bytes)};
}

std::vector<float> random_acts(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

// sum_c |W[r, c] x[t, c]| for every (t, r): the scale of the rounding error of any fp32 dot product.
std::vector<float> abs_dot(const WeightView& w, const float* x, int64_t n_tokens) {
  std::vector<float> row(static_cast<size_t>(w.cols)), out(static_cast<size_t>(n_tokens * w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    ref::dequantize_row(w.type, w.data + r * w.row_bytes, row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += std::fabs(static_cast<double>(row[c]) * x[t * w.cols + c]);
      out[t * w.rows + r] = static_cast<float>(s);
    }
  }
  return out;
}

// Tolerance for fp32 paths: |fast - ref| <= kF32Tol * sum|w x|. Both sides accumulate the same exact
// products in fp32 in different orders; ref sums sequentially (error bound ~ cols * 2^-24 * sum|w x|, in
// practice ~sqrt(cols) * 2^-24). 2e-5 covers cols up to ~3000 with a margin of ~10x on typical error and
// still catches any wrong element (one wrong weight moves y by ~1/cols of sum|w x| >= 3e-4 here).
constexpr double kF32Tol = 2e-5;

// -------------------------------------------------------------------------------------------------------
// ref::dequantize_row against gguf-py.

std::vector<uint8_t> from_hex(const std::string& s) {
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return out;
}

TEST(KernelDequant, RefMatchesGgufPyFixture) {
  const char* dir = std::getenv("KVDIAL_SOURCE_DIR");
#ifdef KVDIAL_SOURCE_DIR
  if (dir == nullptr) dir = KVDIAL_SOURCE_DIR;
#endif
  ASSERT_NE(dir, nullptr) << "KVDIAL_SOURCE_DIR not set";
  std::ifstream in(std::string(dir) + "/tests/fixtures/dequant_ref.json");
  ASSERT_TRUE(in) << "missing tests/fixtures/dequant_ref.json";
  const auto doc = nlohmann::json::parse(in);
  int n_cases = 0;
  for (const auto& c : doc.at("cases")) {
    const auto type = static_cast<TensorType>(c.at("type_id").get<uint32_t>());
    const int64_t n = c.at("n").get<int64_t>();
    const auto blocks = from_hex(c.at("blocks_hex").get<std::string>());
    const auto expected_bytes = from_hex(c.at("expected_f32le_hex").get<std::string>());
    ASSERT_EQ(expected_bytes.size(), static_cast<size_t>(n) * 4);
    std::vector<float> got(static_cast<size_t>(n));
    ref::dequantize_row(type, blocks.data(), got.data(), n);
    int off_by_one_ulp = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t e, g;
      std::memcpy(&e, expected_bytes.data() + 4 * i, 4);
      std::memcpy(&g, &got[i], 4);
      float ef;
      std::memcpy(&ef, &e, 4);
      if (std::isnan(ef)) {
        EXPECT_TRUE(std::isnan(got[i])) << c.at("type") << " element " << i;
        continue;
      }
      // Same sign and at most one ulp apart (a compiler may fuse ref's q * d + m into one FMA).
      const int64_t diff = static_cast<int64_t>(e) - static_cast<int64_t>(g);
      EXPECT_TRUE(e == g || ((e ^ g) < 0x80000000u && std::llabs(diff) <= 1))
          << c.at("type") << " element " << i << ": expected " << ef << " got " << got[i];
      off_by_one_ulp += e != g;
    }
    EXPECT_EQ(off_by_one_ulp, 0) << c.at("type") << ": elements 1 ulp off (allowed; note it)";
    ++n_cases;
  }
  EXPECT_EQ(n_cases, 15);
}

// The SIMD dequantizer agrees with ref up to the rounding of q * d + m (FMA vs. mul then add).
TEST(KernelDequant, FastMatchesRef) {
  std::mt19937 rng(7);
  for (TensorType type : kAllTypes) {
    const int64_t n = 4 * 256;
    const auto data = random_matrix(type, 1, n, rng);
    std::vector<float> a(n), b(n);
    ref::dequantize_row(type, data.data(), a.data(), n);
    cpu::dequantize_row_fast(type, data.data(), b.data(), n);
    const int64_t block = gguf::block_info(type).elems;
    for (int64_t i = 0; i < n; i += block) {
      float scale = 0.0f;
      for (int64_t j = i; j < i + block; ++j) scale = std::max(scale, std::fabs(a[j]));
      for (int64_t j = i; j < i + block; ++j)
        ASSERT_LE(std::fabs(a[j] - b[j]), 2.4e-7f * scale) << name(type) << " element " << j;
    }
  }
}

// -------------------------------------------------------------------------------------------------------
// cpu::matmul against ref::matmul.

struct Case {
  TensorType type;
  int64_t rows, cols, n_tokens;
};

// Runs fast and ref on one shape with misaligned weight and activation pointers; returns the largest
// |fast - ref| / sum|w x| seen.
double check_case(const Case& cs, ThreadPool& pool, ActQuant act, std::mt19937& rng) {
  const auto data = random_matrix(cs.type, cs.rows, cs.cols, rng);
  // Copy weights to an odd byte offset and activations to a 4-byte (not vector) aligned address.
  std::vector<uint8_t> wbuf(data.size() + 1);
  std::memcpy(wbuf.data() + 1, data.data(), data.size());
  const WeightView w = view(cs.type, wbuf.data() + 1, cs.rows, cs.cols);
  const auto xs = random_acts(cs.n_tokens * cs.cols + 1, rng);
  const float* x = xs.data() + 1;
  std::vector<float> y_ref(static_cast<size_t>(cs.n_tokens * cs.rows)), y(y_ref.size(), NAN);
  ref::matmul(w, x, y_ref.data(), cs.n_tokens);
  cpu::matmul(w, x, y.data(), cs.n_tokens, pool, act);
  const auto scale = abs_dot(w, x, cs.n_tokens);

  // Q8 activations: x is rounded to xd * round(x / xd), |error| <= xd / 2 per element, so
  // |dy| <= sum_b (xd_b / 2) * sum_{c in b} |w_c|, plus fp32 rounding.
  const bool q8 = act == ActQuant::Q8 && cs.n_tokens < cpu::kGemmMinTokens &&
                  (cs.type == TensorType::Q4_0 || cs.type == TensorType::Q4_1 || cs.type == TensorType::Q8_0);
  std::vector<float> q8_bound(y.size(), 0.0f);
  if (q8) {
    std::vector<float> row(static_cast<size_t>(cs.cols));
    std::vector<int8_t> xq(static_cast<size_t>(cs.cols));
    std::vector<float> xd(static_cast<size_t>(cs.cols / 32)), sx(xd.size());
    for (int64_t t = 0; t < cs.n_tokens; ++t) {
      cpu::quantize_act_q8(x + t * cs.cols, cs.cols, xq.data(), xd.data(), sx.data());
      for (int64_t r = 0; r < cs.rows; ++r) {
        ref::dequantize_row(cs.type, w.data + r * w.row_bytes, row.data(), cs.cols);
        double bound = 0.0;
        for (int64_t c = 0; c < cs.cols; ++c) bound += 0.5 * xd[c / 32] * std::fabs(row[c]);
        q8_bound[t * cs.rows + r] = static_cast<float>(bound);
      }
    }
  }
  double worst = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double err = std::fabs(static_cast<double>(y[i]) - y_ref[i]);
    const double tol = kF32Tol * scale[i] + 1.001 * q8_bound[i] + 1e-30;
    EXPECT_LE(err, tol) << name(cs.type) << " rows " << cs.rows << " cols " << cs.cols << " tokens "
                        << cs.n_tokens << " t " << i / cs.rows << " r " << i % cs.rows << " ref " << y_ref[i]
                        << " fast " << y[i];
    if (err > tol) return 1e9;  // one report per case is enough
    worst = std::max(worst, err / (scale[i] + 1e-30));
  }
  return worst;
}

std::vector<Case> cases_for(TensorType type) {
  const int64_t block = gguf::block_info(type).elems;
  std::vector<int64_t> cols_list = {block, 3 * block, 7 * block};
  if (block == 1) cols_list = {1, 5, 37, 100, 256};
  if (block == 32) cols_list.push_back(576);
  std::vector<Case> out;
  for (int64_t rows : {1, 3, 17, 67})
    for (int64_t cols : cols_list)
      for (int64_t nt : {1, 2, 7, 33, 64}) out.push_back({type, rows, cols, nt});
  return out;
}

class KernelMatmul : public ::testing::TestWithParam<TensorType> {};

TEST_P(KernelMatmul, MatchesRefF32Act) {
  ThreadPool pool(2);
  std::mt19937 rng(1234 + static_cast<int>(GetParam()));
  double worst = 0.0;
  for (const Case& cs : cases_for(GetParam()))
    worst = std::max(worst, check_case(cs, pool, ActQuant::F32, rng));
  RecordProperty("worst_rel_err", std::to_string(worst));
  std::printf("[ %s ] fp32-act worst |fast-ref| / sum|w x| = %.3g\n", name(GetParam()), worst);
}

TEST_P(KernelMatmul, MatchesRefQ8Act) {
  ThreadPool pool(2);
  std::mt19937 rng(999 + static_cast<int>(GetParam()));
  for (const Case& cs : cases_for(GetParam())) check_case(cs, pool, ActQuant::Q8, rng);
}

// Each output is computed by one thread with the same code whatever the split, so results are bitwise equal.
TEST_P(KernelMatmul, OneAndTwoThreadsAgreeBitwise) {
  ThreadPool one(1), two(2);
  std::mt19937 rng(55);
  const TensorType type = GetParam();
  const int64_t cols = 3 * gguf::block_info(type).elems * (gguf::block_info(type).elems == 1 ? 32 : 1);
  for (ActQuant act : {ActQuant::F32, ActQuant::Q8}) {
    for (int64_t nt : {1, 3, 33, 64}) {
      const int64_t rows = 67;
      const auto data = random_matrix(type, rows, cols, rng);
      const WeightView w = view(type, data.data(), rows, cols);
      const auto x = random_acts(nt * cols, rng);
      std::vector<float> y1(static_cast<size_t>(nt * rows)), y2(y1.size());
      cpu::matmul(w, x.data(), y1.data(), nt, one, act);
      cpu::matmul(w, x.data(), y2.data(), nt, two, act);
      ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4)) << name(type) << " tokens " << nt;
    }
  }
}

// The SIMD code exists once per Highway target; the machine running the tests picks one. Force each
// target this CPU supports in turn (AVX-512 VNNI, AVX-512, AVX2, SSE4, SSSE3, emulated 128-bit, scalar)
// so every variant is held to ref, not just the best one.
TEST(KernelTargets, EveryTargetMatchesRef) {
  const int64_t supported = hwy::SupportedTargets();
  int n_targets = 0;
  for (int64_t target = 1; target != 0 && target <= HWY_SCALAR; target <<= 1) {
    if ((supported & target) == 0) continue;
    hwy::SetSupportedTargetsForTest(target);
    ++n_targets;
    ThreadPool pool(2);
    std::mt19937 rng(static_cast<uint32_t>(target % 1000003));
    for (TensorType type : kAllTypes) {
      const int64_t block = gguf::block_info(type).elems;
      const int64_t cols = block == 1 ? 37 : (block == 32 ? 576 : 512);
      for (int64_t nt : {1, 3, 5, 40})
        for (ActQuant act : {ActQuant::F32, ActQuant::Q8}) {
          SCOPED_TRACE(hwy::TargetName(target));
          check_case({type, 17, cols, nt}, pool, act, rng);
        }
      std::vector<float> a(static_cast<size_t>(cols)), b(a.size());
      const auto data = random_matrix(type, 1, cols, rng);
      ref::dequantize_row(type, data.data(), a.data(), cols);
      cpu::dequantize_row_fast(type, data.data(), b.data(), cols);
      float amax = 0.0f;
      for (float v : a) amax = std::max(amax, std::fabs(v));
      for (int64_t i = 0; i < cols; ++i)
        ASSERT_LE(std::fabs(a[i] - b[i]), 2.4e-7f * amax) << hwy::TargetName(target) << " " << name(type);
    }
    std::printf("  target %s: ok\n", hwy::TargetName(target));
  }
  hwy::SetSupportedTargetsForTest(0);  // back to what the CPU supports
  EXPECT_GE(n_targets, 2);
}

// -------------------------------------------------------------------------------------------------------
// Accuracy of the two activation modes on the real model's weights (skipped when the model is absent):
// layer-0 inputs built from real embedding rows and norm weights, plus synthetic activations with outlier
// channels (the hard case for 8-bit activation blocks). Prints the figures; asserts loose bounds.

struct ErrStats {
  double max_abs = 0, max_ref = 0, sq_err = 0, sq_ref = 0;
  void add(const std::vector<float>& ref_y, const std::vector<float>& y) {
    for (size_t i = 0; i < y.size(); ++i) {
      const double e = std::fabs(static_cast<double>(y[i]) - ref_y[i]);
      max_abs = std::max(max_abs, e);
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref_y[i])));
      sq_err += e * e;
      sq_ref += static_cast<double>(ref_y[i]) * ref_y[i];
    }
  }
  double normwise() const { return max_abs / max_ref; }
  double rms() const { return std::sqrt(sq_err / sq_ref); }
};

std::string model_path() {
  if (const char* p = std::getenv("KVDIAL_MODEL")) return p;
  const char* dir = std::getenv("KVDIAL_SOURCE_DIR");
#ifdef KVDIAL_SOURCE_DIR
  if (dir == nullptr) dir = KVDIAL_SOURCE_DIR;
#endif
  return std::string(dir ? dir : ".") + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

WeightView tensor_view(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo& t = f.tensor(name);
  return view(t.type, t.data, static_cast<int64_t>(t.dims[1]), static_cast<int64_t>(t.dims[0]));
}

std::vector<float> f32_tensor(const gguf::File& f, const std::string& name) {
  const gguf::TensorInfo& t = f.tensor(name);
  std::vector<float> v(t.n_elements);
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

// x * gamma / rms(x), per token.
std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& gamma) {
  const size_t d = gamma.size();
  std::vector<float> out(x.size());
  for (size_t t = 0; t < x.size() / d; ++t) {
    double ss = 0;
    for (size_t i = 0; i < d; ++i) ss += static_cast<double>(x[t * d + i]) * x[t * d + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + 1e-5);
    for (size_t i = 0; i < d; ++i) out[t * d + i] = static_cast<float>(x[t * d + i] * inv * gamma[i]);
  }
  return out;
}

TEST(KernelAccuracy, RealWeightsF32VersusQ8Activations) {
  std::unique_ptr<gguf::File> f;
  try {
    f = gguf::File::open(model_path());
  } catch (const std::exception& e) {
    GTEST_SKIP() << "model not available: " << e.what();
  }
  ThreadPool pool(2);
  std::mt19937 rng(2024);
  const int64_t n_tok = 16, dim = 576;
  const WeightView emb = tensor_view(*f, "token_embd.weight");
  // Embedding rows of random tokens: the residual stream entering layer 0.
  std::vector<float> resid(static_cast<size_t>(n_tok * dim));
  std::uniform_int_distribution<int64_t> tok(0, emb.rows - 1);
  for (int64_t t = 0; t < n_tok; ++t)
    ref::dequantize_row(emb.type, emb.data + tok(rng) * emb.row_bytes, resid.data() + t * dim, dim);
  // Synthetic hidden states: N(0, 1) with two outlier channels per token at 30x.
  std::vector<float> synth = random_acts(n_tok * dim, rng);
  std::uniform_int_distribution<int64_t> ch(0, dim - 1);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int k = 0; k < 2; ++k) synth[t * dim + ch(rng)] *= 30.0f;

  // Three ways through cpu::matmul: one token at a time with fp32 and with int8 activations (the decode
  // path), and all tokens at once (the GEMM path, fp32).
  struct Stats {
    ErrStats f32, q8, gemm;
  };
  const auto run = [&](const WeightView& w, const std::vector<float>& x, std::vector<float>* y_ref,
                       Stats* st) {
    const int64_t nt = static_cast<int64_t>(x.size()) / w.cols;
    y_ref->assign(static_cast<size_t>(nt * w.rows), 0.0f);
    ref::matmul(w, x.data(), y_ref->data(), nt);
    std::vector<float> y(y_ref->size());
    for (ActQuant act : {ActQuant::F32, ActQuant::Q8}) {
      for (int64_t t = 0; t < nt; ++t)
        cpu::matmul(w, x.data() + t * w.cols, y.data() + t * w.rows, 1, pool, act);
      (act == ActQuant::F32 ? st->f32 : st->q8).add(*y_ref, y);
    }
    cpu::matmul(w, x.data(), y.data(), nt, pool, ActQuant::F32);
    st->gemm.add(*y_ref, y);
  };
  const auto report = [](const std::string& what, const Stats& st) {
    std::printf("  %-38s max|d|/max|y| (rms|d|/rms|y|): fp32 %.1e (%.1e)  gemm %.1e (%.1e)  q8 %.1e (%.1e)\n",
                what.c_str(), st.f32.normwise(), st.f32.rms(), st.gemm.normwise(), st.gemm.rms(),
                st.q8.normwise(), st.q8.rms());
    EXPECT_LT(st.f32.normwise(), 1e-5) << what;
    EXPECT_LT(st.gemm.normwise(), 1e-5) << what;
    EXPECT_LT(st.q8.normwise(), 3e-2) << what;
  };

  const std::vector<float> x_attn = rms_norm(resid, f32_tensor(*f, "blk.0.attn_norm.weight"));
  const std::vector<float> x_ffn = rms_norm(resid, f32_tensor(*f, "blk.0.ffn_norm.weight"));
  static_assert(16 >= cpu::kGemmMinTokens, "the batched call must take the GEMM path");
  std::vector<float> y_ref, gate, up;
  for (const char* name :
       {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight"}) {
    Stats a, b;
    run(tensor_view(*f, name), x_attn, &y_ref, &a);
    report(std::string(name) + " (real x)", a);
    run(tensor_view(*f, name), synth, &y_ref, &b);
    report(std::string(name) + " (outlier x)", b);
  }
  {
    Stats a, b, c;
    run(tensor_view(*f, "blk.0.ffn_gate.weight"), x_ffn, &gate, &a);
    run(tensor_view(*f, "blk.0.ffn_up.weight"), x_ffn, &up, &b);
    report("blk.0.ffn_gate.weight (real x)", a);
    report("blk.0.ffn_up.weight (real x)", b);
    std::vector<float> h(gate.size());
    for (size_t i = 0; i < h.size(); ++i) h[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    run(tensor_view(*f, "blk.0.ffn_down.weight"), h, &y_ref, &c);
    report("blk.0.ffn_down.weight (real x)", c);
  }
  // Output logits (tied embedding, Q8_0): absolute logit error and argmax agreement.
  const std::vector<float> x_out = rms_norm(synth, f32_tensor(*f, "output_norm.weight"));
  std::vector<float> logits_ref(static_cast<size_t>(n_tok * emb.rows));
  ref::matmul(emb, x_out.data(), logits_ref.data(), n_tok);
  for (ActQuant act : {ActQuant::F32, ActQuant::Q8}) {
    double max_diff = 0, max_logit = 0;
    int argmax_same = 0;
    std::vector<float> logits(static_cast<size_t>(emb.rows));
    for (int64_t t = 0; t < n_tok; ++t) {
      cpu::matmul(emb, x_out.data() + t * dim, logits.data(), 1, pool, act);
      const float* lr = logits_ref.data() + t * emb.rows;
      for (int64_t r = 0; r < emb.rows; ++r) {
        max_diff = std::max(max_diff, std::fabs(static_cast<double>(logits[r]) - lr[r]));
        max_logit = std::max(max_logit, std::fabs(static_cast<double>(lr[r])));
      }
      argmax_same += std::max_element(logits.begin(), logits.end()) - logits.begin() ==
                     std::max_element(lr, lr + emb.rows) - lr;
    }
    std::printf("  output logits %-6s max|d logit| %.3g (max |logit| %.3g), argmax same %d/%d\n",
                act == ActQuant::F32 ? "fp32" : "q8", max_diff, max_logit, argmax_same,
                static_cast<int>(n_tok));
  }
}

INSTANTIATE_TEST_SUITE_P(Kernel, KernelMatmul, ::testing::ValuesIn(kAllTypes),
                         [](const ::testing::TestParamInfo<TensorType>& info) { return name(info.param); });

}  // namespace
}  // namespace kvd
