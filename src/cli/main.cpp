// The kvdial command: generate, perplexity, tokenize (and more subcommands as they arrive).
// Flags follow llama.cpp's spelling where one exists. Errors print one line and exit non-zero.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "cli/bench.h"
#include "cli/collect.h"
#include "cli/common.h"
#include "cli/compare.h"
#include "cli/hellaswag_cmd.h"
#include "cli/info.h"
#include "cli/stats.h"
#include "cli/train.h"
#include "eval/perplexity.h"
#include "gguf/gguf.h"
#include "kv/kv_setting.h"
#include "eval/runner.h"
#include "model/sampler.h"
#include "util/error.h"
#include "util/sysinfo.h"

namespace kvd::cli {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct GenerateArgs {
  EngineOptions eng;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  SamplerOptions sampler;
  bool chat = false;
  bool ignore_eos = false;
};

int run_generate(const GenerateArgs& a) {
  Engine e = make_engine(a.eng);
  const Tokenizer& tok = e.model->tokenizer();
  std::string prompt = a.prompt_file.empty() ? a.prompt : read_file(a.prompt_file);
  if (a.chat) prompt = "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n";
  std::vector<int32_t> ids = tok.encode(prompt, true, true);
  if (ids.empty()) throw Error("the prompt is empty (give -p TEXT or -f FILE)");
  if (static_cast<int>(ids.size()) + a.n_predict > a.eng.ctx)
    throw Error("prompt (" + std::to_string(ids.size()) + " tokens) + -n " + std::to_string(a.n_predict) +
                " exceed the context size " + std::to_string(a.eng.ctx) + " (raise -c)");
  std::fprintf(stderr, "model: %s (%s, %d layers, %s), loaded in %.3f s; %s; kv-policy %s\n",
               e.model->path().c_str(), e.model->config().arch.c_str(), e.model->config().n_layers,
               human_bytes(static_cast<double>(e.model->file_bytes())).c_str(), e.model->load_seconds(),
               e.session->device_name().c_str(), e.policy_name.c_str());
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);

  PolicyRunner runner(*e.session, *e.policy);
  Sampler sampler(a.sampler);
  const auto t_prompt = Clock::now();
  const float* logits = runner.prefill(ids);
  const double prompt_s = seconds_since(t_prompt);
  const int vocab = e.model->config().vocab;
  const auto t_gen = Clock::now();
  int generated = 0;
  for (; generated < a.n_predict; ++generated) {
    const int32_t next = sampler.sample(logits, vocab);
    if (!a.ignore_eos && next == tok.eos()) break;
    const std::string piece = tok.is_control(next) ? "" : tok.token_bytes(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (generated + 1 == a.n_predict) {
      ++generated;
      break;
    }
    logits = runner.step(next);
  }
  const double gen_s = seconds_since(t_gen);
  std::printf("\n");
  std::fprintf(stderr, "\nprompt: %zu tokens in %.3f s (%.1f tokens/s)\n", ids.size(), prompt_s,
               static_cast<double>(ids.size()) / prompt_s);
  std::fprintf(stderr, "generation: %d tokens in %.3f s (%.1f tokens/s)\n", generated, gen_s,
               generated > 1 ? (generated - 1) / gen_s : 0.0);
  std::fprintf(stderr, "%s\n", kv_summary(e.session->kv_stats(), e.session->kv_layout()).c_str());
  if (!e.session->memory_summary().empty()) std::fprintf(stderr, "%s\n", e.session->memory_summary().c_str());
  if (const KvPolicy::DecisionCost dc = e.policy->decision_cost(); dc.calls > 0)
    std::fprintf(stderr, "controller: %.0f ns/token over %lld decisions (%.4f%% of a generation step)\n",
                 dc.ns_per_call(), static_cast<long long>(dc.calls),
                 generated > 0 ? 100.0 * dc.ns_per_call() * 1e-9 / (gen_s / generated) : 0.0);
  std::fprintf(stderr, "peak RSS: %s (model file %s)\n", human_bytes(static_cast<double>(peak_rss_bytes())).c_str(),
               human_bytes(static_cast<double>(e.model->file_bytes())).c_str());
  return 0;
}

struct PerplexityArgs {
  EngineOptions eng;
  std::string file;
  int chunks = 0;
  bool kl = false;
};

int run_perplexity(const PerplexityArgs& a) {
  Engine e = make_engine(a.eng);
  const std::string text = read_file(a.file);
  const auto t_tok = Clock::now();
  const std::vector<int32_t> ids = e.model->tokenizer().encode(text, true, false);
  std::fprintf(stderr, "tokenized %s: %zu tokens in %.2f s; n_ctx %d, %s, kv-policy %s\n", a.file.c_str(),
               ids.size(), seconds_since(t_tok), a.eng.ctx, e.session->device_name().c_str(),
               e.policy_name.c_str());
  PerplexityOptions po;
  po.n_ctx = a.eng.ctx;
  po.max_chunks = a.chunks;
  po.kl_against_fp16 = a.kl;
  const PerplexityResult r = perplexity(*e.session, *e.policy, ids, po, [&](int c, int n, const PerplexityResult& run) {
    if (c <= 3 || c % 10 == 0 || c == n) {
      const double eta = run.seconds / c * (n - c);
      std::fprintf(stderr, "[%d/%d] ppl %.4f%s  %.1f s elapsed, ETA %.0f s\n", c, n, run.ppl(),
                   a.kl ? (" KL " + std::to_string(run.kl_mean())).c_str() : "", run.seconds, eta);
    }
  });
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl(), r.ppl_stderr());
  std::printf("chunks %d x %d tokens, %lld scored, %.1f s (%.1f tokens/s)\n", r.n_chunks, po.n_ctx,
              static_cast<long long>(r.n_scored), r.seconds,
              static_cast<double>(r.n_chunks) * po.n_ctx * (a.kl ? 2 : 1) / r.seconds);
  if (a.kl) std::printf("KL divergence vs 16-bit cache: mean %.6f; same top-1 %.4f\n", r.kl_mean(), r.top1_agree);
  const KvLayout& lay = e.session->kv_layout();
  std::printf("kv-policy %s: avg class %.3f; stored %.3f bits/elem with scales (%s, residual %d)\n",
              e.policy_name.c_str(), r.avg_bits, r.stored_bits, kv_quantizer_id(lay).c_str(), a.eng.kv_residual);
  if (const KvPolicy::DecisionCost dc = e.policy->decision_cost(); dc.calls > 0)
    std::printf("controller: %.0f ns/token over %lld decisions\n", dc.ns_per_call(),
                static_cast<long long>(dc.calls));
  std::printf("peak RSS: %s\n", human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
  if (!e.session->memory_summary().empty()) std::printf("%s\n", e.session->memory_summary().c_str());
  return 0;
}

struct TokenizeArgs {
  std::string model_path;
  std::string prompt;
  bool no_special = false;
  bool show_pieces = false;
};

int run_tokenize(const TokenizeArgs& a) {
  // Only the vocabulary is read (as llama-tokenize's vocab_only): a vocab-only GGUF works too.
  const std::unique_ptr<gguf::File> f = gguf::File::open(a.model_path, true, true);
  const Tokenizer tok(vocab_from_gguf(*f));
  const std::vector<int32_t> ids = tok.encode(a.prompt, true, !a.no_special);
  if (a.show_pieces) {
    for (int32_t id : ids) std::printf("%6d -> '%s'\n", id, tok.token_bytes(id).c_str());
  } else {
    std::printf("[");
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
    std::printf("]\n");
  }
  return 0;
}

}  // namespace
}  // namespace kvd::cli

int main(int argc, char** argv) {
  using namespace kvd::cli;
  CLI::App app{"kvdial: LLM inference with a per-token mixed-precision KV cache"};
  app.require_subcommand(1);

  GenerateArgs gen;
  CLI::App* g = app.add_subcommand("generate", "generate text from a prompt, streaming it");
  add_engine_options(g, gen.eng);
  g->add_option("-p,--prompt", gen.prompt, "prompt text");
  g->add_option("-f,--file", gen.prompt_file, "read the prompt from a file");
  g->add_option("-n,--n-predict", gen.n_predict, "tokens to generate")->check(CLI::Range(0, 1 << 20));
  g->add_option("--temp", gen.sampler.temperature, "temperature (0 = greedy)")->check(CLI::Range(0.0, 100.0));
  g->add_option("--top-k", gen.sampler.top_k, "top-k (0 = off)")->check(CLI::Range(0, 1 << 20));
  g->add_option("--top-p", gen.sampler.top_p, "top-p")->check(CLI::Range(0.0, 1.0));
  g->add_option("-s,--seed", gen.sampler.seed, "sampling seed");
  g->add_flag("--chat", gen.chat, "wrap the prompt in the ChatML template (<|im_start|>user ...)");
  g->add_flag("--ignore-eos", gen.ignore_eos, "keep generating after the end-of-sequence token");

  PerplexityArgs ppl;
  ppl.eng.ctx = 512;
  CLI::App* p = app.add_subcommand("perplexity", "perplexity of a text file, llama-perplexity's chunking");
  add_engine_options(p, ppl.eng);
  p->add_option("-f,--file", ppl.file, "text file (e.g. wiki.test.raw)")->required();
  p->add_option("--chunks", ppl.chunks, "score at most this many chunks (0 = all)")->check(CLI::Range(0, 1 << 24));
  p->add_flag("--kl-divergence", ppl.kl, "also run each chunk with a 16-bit cache and report KL divergence");

  TokenizeArgs tk;
  CLI::App* t = app.add_subcommand("tokenize", "print the token ids of a text");
  t->add_option("-m,--model", tk.model_path, "GGUF file (its tokenizer.ggml.* keys are enough)")->required();
  t->add_option("-p,--prompt", tk.prompt, "text")->required();
  t->add_flag("--no-parse-special", tk.no_special, "treat special-token text as plain text");
  t->add_flag("--show-pieces", tk.show_pieces, "print each id with its text");

  BenchArgs bench;
  CLI::App* bn = app.add_subcommand("bench", "llama-bench-style speed table (pp, tg, depth) per KV policy");
  add_bench_options(bn, bench);
  bn->get_option("--kv-policy")->description("comma-separated policies to compare in one table");

  CollectArgs collect;
  CLI::App* co = app.add_subcommand("collect", "controller training data: features and labels per token");
  add_collect_options(co, collect);

  StatsArgs stats;
  CLI::App* st = app.add_subcommand("stats", "summary of a collected CSV");
  add_stats_options(st, stats);

  InfoArgs info;
  add_info_command(app, info);

  TrainArgs train;
  CLI::App* tr = app.add_subcommand("train", "train a learned KV controller from collected CSVs");
  add_train_options(tr, train);

  HellaSwagArgs hs;
  CLI::App* hsw = app.add_subcommand("hellaswag", "HellaSwag multiple choice (acc, acc_norm) under a KV policy");
  add_hellaswag_options(hsw, hs);

  CompareArgs cmp;
  cmp.argv.assign(argv, argv + argc);
  CLI::App* cm = app.add_subcommand("compare", "every KV policy on the same inputs: quality, memory, latency");
  add_compare_options(cm, cmp);

  // llama.cpp spells the device option -dev; CLI11 takes only one-letter short options.
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::string& s : args)
    if (s == "-dev") s = "--device";
    else if (s.rfind("-dev=", 0) == 0) s = "--device=" + s.substr(5);
  std::reverse(args.begin(), args.end());  // CLI11's vector form takes the arguments last first
  try {
    app.parse(args);
    if (tr->parsed()) return run_train(train);
    if (cm->parsed()) return run_compare(cmp);
    if (hsw->parsed()) return run_hellaswag(hs);
    if (info.cmd->parsed()) return run_info(info);
    if (bn->parsed()) return run_bench(bench);
    if (co->parsed()) return run_collect(collect);
    if (st->parsed()) return run_stats(stats);
    if (g->parsed()) return run_generate(gen);
    if (p->parsed()) return run_perplexity(ppl);
    if (t->parsed()) return run_tokenize(tk);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kvd::Error& e) {
    std::fprintf(stderr, "kvdial: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kvdial: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvdial: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
