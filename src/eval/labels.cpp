// The label run of kvdial collect: four sequences of a stage-only 16-bit cache (the reference and the
// token at 2, 4, 8 bits) advance together; each token's four windows run as one batched forward.
#include "eval/labels.h"

#include <algorithm>
#include <cmath>

#include "kv/kv_quant.h"
#include "util/fp16.h"

namespace kvd {

double mean_kl(const std::vector<double>& ref_lp, const std::vector<double>& ref_p, const float* run, int w,
               int vocab) {
  double sum = 0;
  for (int j = 0; j < w; ++j) {
    const float* q = run + static_cast<size_t>(j) * vocab;
    const double* lp = ref_lp.data() + static_cast<size_t>(j) * vocab;
    const double* p = ref_p.data() + static_cast<size_t>(j) * vocab;
    const float mx = *std::max_element(q, q + vocab);
    double z = 0, cross = 0;
    for (int i = 0; i < vocab; ++i) {
      z += std::exp(static_cast<double>(q[i]) - mx);
      cross += p[i] * (lp[i] - static_cast<double>(q[i]));
    }
    // KL = sum p (lp - log q) with log q = q - mx - log z.
    sum += std::max(0.0, cross + mx + std::log(z));
  }
  return sum / w;
}

void log_softmax(const float* logits, int w, int vocab, std::vector<double>& lp, std::vector<double>& p) {
  lp.resize(static_cast<size_t>(w) * vocab);
  p.resize(lp.size());
  for (int j = 0; j < w; ++j) {
    const float* l = logits + static_cast<size_t>(j) * vocab;
    const float mx = *std::max_element(l, l + vocab);
    double z = 0;
    for (int i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(l[i]) - mx);
    const double lz = mx + std::log(z);
    for (int i = 0; i < vocab; ++i) {
      const size_t k = static_cast<size_t>(j) * vocab + i;
      lp[k] = static_cast<double>(l[i]) - lz;
      p[k] = std::exp(lp[k]);
    }
  }
}

namespace {

// Mean over layers of |K - Q_b(K)| + |V - Q_b(V)| (L2 norms) of token pos of sequence 0, stage-only.
double quant_error(const KvCache& cache, int pos, int bits) {
  const KvLayout& lay = cache.layout();
  const int d = lay.kv_dim();
  std::vector<uint8_t> rec(lay.max_token_bytes());
  std::vector<float> deq(static_cast<size_t>(d));
  double total = 0;
  for (int l = 0; l < lay.n_layers; ++l) {
    const float* signs = cache.rotation_signs(l);
    for (const bool is_v : {false, true}) {
      const uint16_t* rows = is_v ? cache.staged_v(0, l) : cache.staged_k(0, l);
      const uint16_t* row = rows + static_cast<size_t>(pos - cache.n_arena(0)) * d;
      kv_store_row(lay, bits, is_v, row, signs, rec.data());
      for (int h = 0; h < lay.n_kv_heads; ++h)
        kv_load_head(lay, bits, is_v, rec.data(), h, signs, deq.data() + h * lay.head_dim);
      double sq = 0;
      for (int i = 0; i < d; ++i) {
        const double e = static_cast<double>(fp16_to_float(row[i])) - deq[i];
        sq += e * e;
      }
      total += std::sqrt(sq);
    }
  }
  return total / lay.n_layers;
}

KvCacheOptions label_cache_options(int ctx) {
  KvCacheOptions o;
  o.max_tokens = ctx;
  o.stage_only = true;
  o.n_seqs = 1 + static_cast<int>(kLabelBits.size());
  return o;
}

}  // namespace

LabelRun::LabelRun(const Model& model, Backend& backend, int ctx, const KvLayout& layout, int window, double tau)
    : model_(model),
      backend_(backend),
      window_(window),
      tau_(tau),
      cache_(layout, label_cache_options(ctx)),
      sixteen_(static_cast<size_t>(window) + 1, 16) {}

void LabelRun::copy_token(int dst, int pos) {
  const KvLayout& lay = cache_.layout();
  const int d = lay.kv_dim();
  row_k_.resize(static_cast<size_t>(d));
  row_v_.resize(static_cast<size_t>(d));
  cache_.begin_tokens(dst, 1, sixteen_.data());
  for (int l = 0; l < lay.n_layers; ++l) {
    const uint16_t* k = cache_.staged_k(0, l) + static_cast<size_t>(pos) * d;
    const uint16_t* v = cache_.staged_v(0, l) + static_cast<size_t>(pos) * d;
    // fp16 -> float -> fp16 is exact: the copy holds the same rows (and, decided at 16, the same record).
    for (int i = 0; i < d; ++i) {
      row_k_[i] = fp16_to_float(k[i]);
      row_v_[i] = fp16_to_float(v[i]);
    }
    cache_.write(dst, l, pos, row_k_.data(), row_v_.data());
  }
}

void LabelRun::begin(const std::vector<int32_t>& ids) {
  ids_ = ids;
  for (int s = 0; s < cache_.options().n_seqs; ++s) cache_.clear(s);
  session_ = std::make_unique<Session>(model_, backend_, cache_, 0, window_);  // fresh received()
  session_->track_received(true);
  if (ids_.empty()) return;
  session_->forward(ids_.data(), 1, 1, nullptr, sixteen_.data());
  for (int s = 1; s < cache_.options().n_seqs; ++s) copy_token(s, 0);
}

TokenLabels LabelRun::label(int t, bool measure) {
  const int n = static_cast<int>(ids_.size()), vocab = model_.config().vocab;
  const int w = std::min(window_, n - 1 - t);
  const int32_t* win = ids_.data() + t + 1;
  TokenLabels lab;
  if (w <= 0) return lab;
  // The cache's four sequences hold positions [0, t] at 16 bits; token t takes each label width in its own
  // sequence. The four windows run as one batch, so the reference comes from the same computation as the
  // damaged runs (a width that changes nothing gives zero damage).
  parts_.assign(1, SeqTokens{0, win, w, sixteen_.data()});
  for (size_t bi = 0; bi < kLabelBits.size(); ++bi) {
    const int s = 1 + static_cast<int>(bi);
    cache_.decide(s, t, kLabelBits[bi]);
    parts_.push_back(SeqTokens{s, win, w, sixteen_.data()});
  }
  const float recv0 = session_->received().size() > static_cast<size_t>(t) ? session_->received()[t] : 0;
  const std::vector<float>& logits = session_->forward_parts(parts_, &fwd_stats_);
  if (measure) {
    const ModelConfig& cfg = model_.config();
    lab.recv = (static_cast<double>(session_->received()[t]) - recv0) / (cfg.n_layers * cfg.n_heads);
    log_softmax(logits.data(), w, vocab, ref_lp_, ref_p_);
    for (size_t bi = 0; bi < kLabelBits.size(); ++bi) {
      lab.dmg[bi] =
          mean_kl(ref_lp_, ref_p_, logits.data() + (bi + 1) * static_cast<size_t>(w) * vocab, w, vocab);
      lab.proxy[bi] = lab.recv * quant_error(cache_, t, kLabelBits[bi]);
    }
    for (size_t bi = 0; bi < kLabelBits.size(); ++bi)
      if (lab.dmg[bi] <= tau_) {
        lab.oracle = kLabelBits[bi];
        break;
      }
  }
  // Keep position t + 1 of the reference (computed with 16-bit history) and give it to the other sequences,
  // whose token t goes back to 16 bits.
  cache_.truncate(0, t + 2);
  for (int s = 1; s < cache_.options().n_seqs; ++s) {
    cache_.truncate(s, t + 1);
    cache_.decide(s, t, 16);
    copy_token(s, t + 1);
  }
  return lab;
}

}  // namespace kvd
