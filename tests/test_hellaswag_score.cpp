// HellaSwag scoring: lm-evaluation-harness's query and choices on hand-made examples, acc and acc_norm
// (length-normalised) on hand-made log-likelihoods, standard errors and paired differences, and on the
// default model: tokenization (context ids + continuation ids, trailing space moved), the endings'
// scores equal one forward pass over context + ending, and do not depend on the order the endings run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "eval/hellaswag_score.h"
#include "eval/perplexity.h"
#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/forward.h"
#include "policy/policy.h"
#include "test_util.h"
#include "util/error.h"

namespace kvd {
namespace {

HellaSwagExample example() {
  HellaSwagExample ex;
  ex.line = 3;
  ex.activity_label = "Baking";
  ex.ctx_a = "[header] How to bake bread [title] Mix the flour.";
  ex.ctx_b = "aDD THE water";
  ex.ctx = ex.ctx_a + " " + ex.ctx_b;
  ex.has_ctx_parts = true;
  ex.endings = {"and stir  it well.", "[step] a bicycle.", " the moon ", "loud café music."};
  ex.label = 0;
  return ex;
}

TEST(HellaSwagScore, QueryAndChoicesFollowTheHarness) {
  EXPECT_EQ(py_capitalize("aDD THE water"), "Add the water");
  EXPECT_EQ(py_capitalize(""), "");
  EXPECT_EQ(utf8_length("café"), 4u);
  EXPECT_EQ(utf8_length(""), 0u);
  const HellaSwagExample ex = example();
  // "Baking: [header] How to bake bread [title] Mix the flour. Add the water": " [title]" -> ". ",
  // "[header]" removed (leaving two spaces, then one), ctx_b capitalised.
  EXPECT_EQ(hellaswag_query(ex), "Baking: How to bake bread. Mix the flour. Add the water");
  const auto c = hellaswag_choices(ex);
  EXPECT_EQ(c[0], "and stir it well.");
  EXPECT_EQ(c[1], " a bicycle.");  // stripped before the marker goes: its space stays, as in the harness
  EXPECT_EQ(c[2], "the moon");
  EXPECT_EQ(c[3], "loud café music.");
  HellaSwagExample bad = ex;
  bad.has_ctx_parts = false;
  EXPECT_THROW(hellaswag_query(bad), Error);
}

TEST(HellaSwagScore, AccAndAccNormOnHandMadeScores) {
  HellaSwagRow r;
  r.label = 2;
  r.ll = {-10, -12, -30, -9};
  r.chars = {10, 20, 60, 3};
  EXPECT_EQ(r.pred(), 3);       // the largest sum
  EXPECT_EQ(r.pred_norm(), 2);  // -1, -0.6, -0.5, -3 per character
  HellaSwagRow tie;
  tie.ll = {-5, -5, -6, -7};
  tie.chars = {5, 5, 5, 5};
  EXPECT_EQ(tie.pred(), 0);  // first of ties, as numpy's argmax
  std::vector<HellaSwagRow> rows(4, r);
  rows[3].label = 3;  // acc 1/4, acc_norm 3/4
  const HellaSwagSummary s = hellaswag_summary(rows);
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.acc, 0.25);
  EXPECT_DOUBLE_EQ(s.acc_norm, 0.75);
  EXPECT_DOUBLE_EQ(s.acc_se, 0.25);  // sample stddev 0.5 / sqrt(4)
  EXPECT_DOUBLE_EQ(s.acc_norm_se, 0.25);
  for (size_t i = 0; i < rows.size(); ++i) rows[i].line = static_cast<int>(i + 1);
  // Here acc per row is 0,0,0,1 and acc_norm 1,1,1,0; the reference picks ending 0 both ways: all wrong.
  std::vector<HellaSwagRow> ref = rows;
  for (HellaSwagRow& x : ref) x.ll = {-1, -12, -30, -31};
  const HellaSwagPaired p = hellaswag_paired(rows, ref);
  EXPECT_DOUBLE_EQ(p.acc_diff, 0.25);
  EXPECT_DOUBLE_EQ(p.acc_diff_se, 0.25);
  EXPECT_DOUBLE_EQ(p.acc_norm_diff, 0.75);
  EXPECT_DOUBLE_EQ(p.acc_norm_diff_se, 0.25);
  EXPECT_DOUBLE_EQ(p.ll_change_mean, 13.0 / 4.0);  // -9 + 0 + 0 + 22 per row, over 4 endings
  EXPECT_DOUBLE_EQ(p.ll_change_abs_mean, 31.0 / 4.0);
  ref[1].line = 9;
  EXPECT_THROW(hellaswag_paired(rows, ref), Error);
}

class HellaSwagModel : public test::ModelSuite {};

TEST_F(HellaSwagModel, TokenizesContextAndContinuationSeparately) {
  const Tokenizer& tok = model_->tokenizer();
  HellaSwagExample ex = example();
  const HellaSwagItem it = hellaswag_item(tok, ex);
  EXPECT_EQ(it.context, tok.encode("Baking: How to bake bread. Mix the flour. Add the water", true, false));
  EXPECT_EQ(it.endings[0], tok.encode(" and stir it well.", false, false));
  EXPECT_EQ(it.endings[1], tok.encode("  a bicycle.", false, false));
  EXPECT_DOUBLE_EQ(it.chars[3], 16.0);
  // A query that ends in a space (" [title]" last) hands the space to the continuation.
  ex.ctx_b = "then [title]";
  const HellaSwagItem t = hellaswag_item(tok, ex);
  EXPECT_EQ(t.context, tok.encode("Baking: How to bake bread. Mix the flour. Then.", true, false));
  EXPECT_EQ(t.endings[2], tok.encode("  the moon", false, false));
}

struct Rig {
  std::unique_ptr<Backend> backend = make_backend("cpu", 2);
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Session> session;
  Rig(const Model& m, int residual) {
    const ModelConfig& c = m.config();
    KvCacheOptions o;
    o.max_tokens = 256;
    o.residual = residual;
    o.stage_only = residual > 0;  // as kvdial's scoring engines (make_scoring_engine)
    cache = std::make_unique<KvCache>(KvLayout{c.n_layers, c.n_kv_heads, c.head_dim, 32}, o);
    session = std::make_unique<Session>(m, *backend, *cache);
  }
};

TEST_F(HellaSwagModel, EndingScoresEqualOneForwardOverContextAndEnding) {
  const HellaSwagItem it = hellaswag_item(model_->tokenizer(), example());
  Rig s(*model_, 0);
  auto fp16 = make_policy("static:16");
  const HellaSwagRow row = score_hellaswag(*s.session, *fp16, it);
  const int vocab = model_->config().vocab;
  for (size_t e = 0; e < 4; ++e) {
    std::vector<int32_t> all = it.context;
    all.insert(all.end(), it.endings[e].begin(), it.endings[e].end());
    s.cache->clear(0);
    std::vector<uint8_t> bits(all.size(), 16);
    const int n_ctx = static_cast<int>(it.context.size());
    const std::vector<float>& l =
        s.session->forward(all.data(), static_cast<int>(all.size()), n_ctx - 1, nullptr, bits.data());
    double ll = 0;
    for (size_t j = 0; j < it.endings[e].size(); ++j)
      ll -= nll_of(l.data() + j * vocab, vocab, it.endings[e][j]);
    EXPECT_NEAR(row.ll[e], ll, 1e-3 * std::max(1.0, std::fabs(ll))) << "ending " << e;
  }
}

TEST_F(HellaSwagModel, EndingScoresDoNotDependOnTheirOrder) {
  // Each ending runs after the stored context and the cache is truncated back: with a dynamic policy and
  // a residual window the context must be exactly as it was for every ending.
  HellaSwagItem it = hellaswag_item(model_->tokenizer(), example());
  HellaSwagItem rev = it;
  std::reverse(rev.endings.begin(), rev.endings.end());
  std::reverse(rev.chars.begin(), rev.chars.end());
  const std::pair<const char*, int> cases[] = {{"rule", 4}, {"static:4", 4}, {"pattern:2/8", 0}};
  for (const auto& [spec, residual] : cases) {
    {
      Rig s(*model_, residual);
      auto p = make_policy(spec);
      const HellaSwagRow a = score_hellaswag(*s.session, *p, it);
      const HellaSwagRow b = score_hellaswag(*s.session, *p, rev);
      for (size_t e = 0; e < 4; ++e)
        EXPECT_EQ(a.ll[e], b.ll[3 - e]) << spec << " residual " << residual << " ending " << e;
    }
  }
  // Without stage_only a residual window would not survive the truncation: refused.
  Rig s(*model_, 4);
  KvCacheOptions o = s.cache->options();
  o.stage_only = false;
  KvCache plain(s.cache->layout(), o);
  Session session(*model_, *s.backend, plain);
  auto p = make_policy("static:4");
  EXPECT_THROW(score_hellaswag(session, *p, it), Error);
}

}  // namespace
}  // namespace kvd
