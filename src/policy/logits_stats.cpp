// Entropy, top probability and argmax of a logits vector with Highway SIMD (runtime dispatch): this
// runs once per token for every feature-reading policy, over the whole vocabulary, so it must cost a
// small fraction of a decode step (measured by bench_features).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "policy/logits_stats.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include <cmath>
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Returns H = log Z - E[z] (z = logits - max) and writes max probability and argmax.
void LogitsStats(const float* logits, int n, float* entropy, float* max_prob, int* argmax) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  // Pass 1: max (the argmax is found by a scalar scan for the max value, which is cheap).
  auto vmax = hn::Set(d, logits[0]);
  size_t i = 0;
  for (; i + N <= static_cast<size_t>(n); i += N) vmax = hn::Max(vmax, hn::LoadU(d, logits + i));
  float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; i < static_cast<size_t>(n); ++i) mx = logits[i] > mx ? logits[i] : mx;
  int best = 0;
  while (logits[best] != mx) ++best;
  // Pass 2: Z = sum exp(z), S = sum exp(z) * z.
  const auto vm = hn::Set(d, mx);
  auto vz = hn::Zero(d), vs = hn::Zero(d);
  for (i = 0; i + N <= static_cast<size_t>(n); i += N) {
    const auto z = hn::Sub(hn::LoadU(d, logits + i), vm);
    const auto e = hn::Exp(d, z);
    vz = hn::Add(vz, e);
    vs = hn::MulAdd(e, z, vs);
  }
  double Z = hn::GetLane(hn::SumOfLanes(d, vz)), S = hn::GetLane(hn::SumOfLanes(d, vs));
  for (; i < static_cast<size_t>(n); ++i) {
    const double z = static_cast<double>(logits[i]) - mx, e = std::exp(z);
    Z += e;
    S += e * z;
  }
  *entropy = static_cast<float>(std::log(Z) - S / Z);
  *max_prob = static_cast<float>(1.0 / Z);
  *argmax = best;
}

}  // namespace HWY_NAMESPACE
}  // namespace kvd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "policy/features.h"

namespace kvd {
HWY_EXPORT(LogitsStats);

void logits_summary(const float* logits, int vocab, float* entropy, float* max_prob, int32_t* argmax) {
  float h, p;
  int a;
  HWY_DYNAMIC_DISPATCH(LogitsStats)(logits, vocab, &h, &p, &a);
  if (entropy) *entropy = h;
  if (max_prob) *max_prob = p;
  if (argmax) *argmax = a;
}

}  // namespace kvd
#endif
