// kvdial train: parses the options, trains (controller/train.h), writes the controller file and its
// report, learning curve and the command that plots it.
#include "cli/train.h"

#include <chrono>
#include <cstdio>
#include <sstream>

#include "util/error.h"

namespace kvd::cli {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) out.push_back(part);
  return out;
}

}  // namespace

void add_train_options(CLI::App* app, TrainArgs& a) {
  app->add_option("--csv", a.opt.csvs,
                  "CSV(s) written by kvdial collect (rows split by their `split` column)")
      ->required();
  app->add_option("-o,--output", a.out, "controller file to write (JSON); the report goes beside it")
      ->required();
  app->add_option(
         "--target", a.opt.target,
         "oracle_bits (measured labels), kv_bits (imitate the collecting rule), damage (log-damage per "
         "width), auto (damage and oracle_bits, the higher validation macro-F1 wins)")
      ->capture_default_str();
  app->add_option("--features", a.features,
                  "comma-separated inputs (default: entropy,rarity,attn_var,attn_max,k_norm,v_norm,max_prob,"
                  "position)");
  app->add_option("--hidden", a.hidden, "hidden layer sizes, comma-separated")->capture_default_str();
  app->add_option("--epochs", a.opt.fit.epochs, "most epochs (early stopping on the validation loss)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app->add_option("--patience", a.opt.fit.patience, "epochs without a lower validation loss before stopping")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app->add_option("--seed", a.opt.fit.seed, "initialisation and shuffling seed")->capture_default_str();
  app->add_option("--lr", a.opt.fit.lr, "Adam learning rate")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 10.0));
  app->add_option("--batch", a.opt.fit.batch, "mini-batch size")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--tau", a.opt.tau, "label threshold (nats); default: the CSV sidecar's tau, else 0.004")
      ->check(CLI::Range(1e-12, 1e9));
}

int run_train(TrainArgs a) {
  if (!a.features.empty()) a.opt.features = split_list(a.features);
  a.opt.hidden.clear();
  for (const std::string& h : split_list(a.hidden)) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(h, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (h.empty() || used != h.size() || v < 1 || v > 4096)
      throw Error("--hidden '" + a.hidden +
                  "': layer sizes are integers 1..4096 separated by ',' (e.g. 128,64)");
    a.opt.hidden.push_back(v);
  }
  // The command that made the file, recorded in it (arguments in a fixed order, so it is reproducible).
  std::string cmd = "kvdial train";
  for (const std::string& c : a.opt.csvs) cmd += " --csv " + c;
  cmd += " -o " + a.out + " --target " + a.opt.target;
  if (!a.features.empty()) cmd += " --features " + a.features;
  char buf[160];
  std::snprintf(buf, sizeof buf, " --hidden %s --epochs %d --patience %d --seed %llu --lr %g --batch %d",
                a.hidden.c_str(), a.opt.fit.epochs, a.opt.fit.patience,
                static_cast<unsigned long long>(a.opt.fit.seed), a.opt.fit.lr, a.opt.fit.batch);
  cmd += buf;
  if (a.opt.tau > 0) cmd += " --tau " + std::to_string(a.opt.tau);
  a.opt.command = cmd;

  const auto t0 = std::chrono::steady_clock::now();
  const TrainResult r = train_controller(a.opt, stderr);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_training_outputs(r, a.out);
  std::fputs(r.report_md.c_str(), stdout);
  std::printf("\n%s\n", r.note.c_str());
  std::printf(
      "wrote %s (+ .report.md, .report.json, .curve.csv) in %.1f s; plot: python3 scripts/plot_training.py "
      "%s.curve.csv\n",
      a.out.c_str(), s, a.out.c_str());
  return 0;
}

}  // namespace kvd::cli
