// Perplexity on WikiText-2 (needs ../shared/data; skips without it) against the Hugging Face reference
// with the same chunking (tests/fixtures/perplexity_ref.json): the running perplexity after the first
// chunks must be within 1%. The full-file figure is in the README (a benchmark, too slow for a test).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "eval/perplexity.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "policy/policy.h"
#include "test_util.h"

namespace kvd {
namespace {

TEST(Perplexity, FirstChunksMatchHuggingFace) {
  KVD_REQUIRE_MODEL(model_path);
  const std::string data = test::data_dir();
  const std::string wiki = data + "/wikitext-2/wiki.test.raw";
  if (data.empty() || !std::filesystem::exists(wiki)) GTEST_SKIP() << "WikiText-2 absent (../shared/data)";
  const nlohmann::json fx = test::load_json(test::fixture_path("perplexity_ref.json"));
  std::ifstream in(wiki, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto model = Model::load(model_path);
  const std::vector<int32_t> ids = model->tokenizer().encode(ss.str(), true, false);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), fx["smollm_pre"]["n_tokens"].get<int64_t>());
  auto backend = make_backend("cpu", 2);
  const ModelConfig& c = model->config();
  KvCacheOptions o;
  o.max_tokens = 512;
  KvCache cache(KvLayout{c.n_layers, c.n_kv_heads, c.head_dim, 32}, o);
  Session session(*model, *backend, cache);
  auto policy = make_policy("static:16");
  PerplexityOptions po;
  po.n_ctx = 512;
  po.max_chunks = 2;
  std::vector<double> running;
  perplexity(session, *policy, ids, po, [&](int, int, const PerplexityResult& r) { running.push_back(r.ppl()); });
  const auto ref = fx["smollm_pre"]["results"][0]["running_ppl_first5"].get<std::vector<double>>();
  ASSERT_EQ(running.size(), 2u);
  for (size_t i = 0; i < running.size(); ++i) {
    std::printf("chunk %zu: kvdial %.4f, Hugging Face %.4f (%.3f%%)\n", i + 1, running[i], ref[i],
                100.0 * (running[i] / ref[i] - 1));
    EXPECT_NEAR(running[i] / ref[i], 1.0, 0.01) << "chunk " << i + 1;
  }
}

}  // namespace
}  // namespace kvd
